"""User code by import path (`package.module:callable`) for `model.name` and `dataset.name`:
`models`' importer, with its one-line errors as `UserError`s (exit 2, no traceback)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from models import import_callable as _import_callable
from models import is_import_spec
from search.core.errors import UserError

__all__ = ["import_callable", "is_import_spec"]


def import_callable(spec: str, *, key: str, folders: Iterable[Path] = ()) -> Callable[..., Any]:
    """The callable `spec` names, imported from `sys.path`, then from `folders`; a `UserError`
    naming `key` when it cannot be had (`models._imports`)."""
    try:
        return _import_callable(spec, key=key, folders=folders)
    except ValueError as exc:
        raise UserError(str(exc)) from None
