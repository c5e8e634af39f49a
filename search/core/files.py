"""Files that appear complete or not at all: written beside their path, fsynced, renamed over
it. For caches and reports that a killed process or a full disk must never leave half-written."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_file", "write_atomic"]


@contextlib.contextmanager
def atomic_file(path: Path, *, mode: int = 0o644) -> Iterator[IO[bytes]]:
    """A binary file that appears at `path` complete or not at all: a temporary file in the
    same folder, fsynced, given `mode` (a report is meant to be shared; mkstemp makes 0600),
    then renamed over `path`, and the rename made durable. Readers never see a partial file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def write_atomic(path: Path, data: bytes) -> None:
    """`data` at `path`, complete or not at all (`atomic_file`)."""
    with atomic_file(path) as f:
        f.write(data)
