"""User code by import path: `package.module:callable`, as `model.name` (a model factory) and
`dataset.name` (a data loader) take it.

The module is imported from `sys.path` first, then from the folders given (the study file's
folder, stored in the study so that every worker and resume looks there too). A module that
cannot be imported, or a name it does not define, is a `ValueError` with one line naming the
key and the spec (`search.core.imports` makes it a `UserError`: the launch and every worker stop
at start-up with that line, not trial by trial).
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["import_callable", "is_import_spec"]

# `package.module:attr` (dotted module, dotted attribute); a Windows drive is not one.
_SPEC = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")


def is_import_spec(name: str) -> bool:
    """Whether `name` is `package.module:callable` (not a registered name or `timm/…`)."""
    return bool(_SPEC.fullmatch(name))


def _import(module: str, folders: Iterable[Path]) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only a miss of the module itself (or a parent package) falls through to the
        # folders; a module that exists but imports something missing is reported as it is.
        if exc.name is None or not module.startswith(exc.name):
            raise
        missing: BaseException = exc
    for folder in folders:
        folder = Path(folder).expanduser()
        if not folder.is_dir():
            continue
        entry = str(folder.resolve())
        added = entry not in sys.path
        if added:
            sys.path.append(entry)  # after sys.path: an installed package of that name wins
        try:
            return importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not module.startswith(exc.name):
                raise
            missing = exc
            if added:
                sys.path.remove(entry)
    raise missing


def import_callable(spec: str, *, key: str, folders: Iterable[Path] = ()) -> Callable[..., Any]:
    """The callable `spec` (`package.module:name`) names, imported from `sys.path` or `folders`;
    a `ValueError` naming `key` when it cannot be had."""
    if not is_import_spec(spec):
        raise ValueError(f"{key}: {spec!r} is not of the form package.module:callable")
    module_name, _, attr = spec.partition(":")
    folders = list(folders)
    try:
        obj: Any = _import(module_name, folders)
    except Exception as exc:  # ModuleNotFoundError, SyntaxError, whatever the module raises
        where = ", ".join(str(f) for f in folders)
        look = f" (looked on sys.path and in {where})" if where else " (looked on sys.path)"
        raise ValueError(
            f"{key}: cannot import {module_name!r} for {spec!r}: {_line(exc)}"
            + (look if isinstance(exc, ModuleNotFoundError) else "")
        ) from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{key}: module {module_name!r} has no {attr!r} (in {spec!r})")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ValueError(f"{key}: {spec!r} is a {type(obj).__name__}, not a callable")
    return obj


def _line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0][:300] if lines else ''}".rstrip(": ")
