"""Study files in, a checked `StudyConfig` out: the defaults, the YAML file, `--set`
overrides and flags merged, then validated whole, search space, sampler and pruner included.
Above `config`, `space` and `study` (which this reaches into), so nothing below points back."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from search.config.overrides import apply_overrides, deep_merge, load_yaml
from search.config.schema import DEFAULTS, StudyConfig, parse_config
from search.core.errors import UserError, first_line

__all__ = ["load_config", "read_study_file", "validate_config"]


def validate_config(data: Mapping[str, Any], *, check_model: bool = True) -> StudyConfig:
    """`parse_config`, then the search space, the sampler and the pruner: a bad space entry or
    an unknown constructor option fails here, before any storage exists."""
    from search.config.space import space_of
    from search.study.studies import smoke_test

    config = parse_config(data, check_model=check_model)
    space_of(config)  # parsed once, kept on the config; a bad entry is a UserError naming it
    smoke_test(config)  # builds the sampler and the pruner, then runs them on dummy trials
    return config


MAX_FILE_BYTES = 1 << 20  # a study file is a page of YAML; 1 MiB is far beyond any


def read_study_file(path: Path) -> dict[str, Any]:
    try:
        if path.is_file() and path.stat().st_size > MAX_FILE_BYTES:
            raise UserError(
                f"study file {path} is {path.stat().st_size:,} bytes; a study file is at most "
                f"{MAX_FILE_BYTES:,}"
            )
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"study file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read study file {path}: {first_line(exc)}") from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        pos = f" line {where.line + 1}" if where is not None else ""
        raise UserError(
            f"{path}:{pos} is not valid YAML ({getattr(exc, 'problem', None) or 'syntax error'})"
        ) from None
    except ValueError as exc:
        raise UserError(f"{path}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(
            f"{path}: a study file must be a mapping of keys, got {type(data).__name__}"
        )
    return data


def _code_beside(data: dict[str, Any], path: Path) -> None:
    """A `package.module:callable` model or data set is imported from the study file's folder
    when it is not on sys.path: that folder becomes `model.path` / `dataset.path` (unless
    set), stored in the study, so every worker and resume looks there too."""
    from search.config.schema import DatasetConfig

    for section in ("model", "dataset"):
        node = data.get(section)
        if section == "dataset" and "path" not in DatasetConfig.model_fields:
            continue
        if isinstance(node, dict) and ":" in str(node.get("name", "")) and not node.get("path"):
            node["path"] = str(path.expanduser().resolve().parent)


def load_config(
    path: Path | None = None,
    *,
    overrides: Iterable[str] = (),
    flags: Mapping[str, Any] | None = None,
    base: Mapping[str, Any] | None = None,
) -> StudyConfig:
    """Defaults (or `base` over them: a study's stored config), then the study file, then
    `--set` overrides, then dedicated command-line flags (`{"search.n_trials": 5}`; None
    values are ignored); validated."""
    data = deep_merge(DEFAULTS, base or {})
    data = deep_merge(data, read_study_file(path) if path else {})
    data = apply_overrides(data, overrides)
    if path is not None:
        _code_beside(data, path)
    for dotted, value in (flags or {}).items():
        if value is not None:
            *parents, last = dotted.split(".")
            node = data
            for part in parents:
                if not isinstance(node.get(part), dict):  # absent, or off (`sweep: null`)
                    node[part] = {}
                node = node[part]
            node[last] = value
    return validate_config(data)
