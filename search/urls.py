"""Password-free rendering of database and tracking URLs."""

from __future__ import annotations

import re

__all__ = ["redact_url"]

# scheme://user:password@host → scheme://user:***@host. A regex rather than SQLAlchemy's URL
# parser so that it also works on http(s) URLs and on strings that do not parse. The password
# may hold anything but '@' (users do not always percent-encode '/'): when in doubt, hide more.
_USERINFO = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):(?P<pw>[^@\s]*)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|token)=)[^&\s]*", re.IGNORECASE)


def redact_url(text: str) -> str:
    """Replace every password in `text` (a URL or a message holding URLs) with ***."""
    text = _USERINFO.sub(r"\g<head>:***@", text)
    return _QUERY_SECRET.sub(r"\g<key>***", text)
