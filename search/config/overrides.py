"""Nested study-file mappings: merging a file over the defaults (`deep_merge`), `--set KEY=VALUE`
items (`apply_overrides`, values parsed as YAML) and dotted keys (`flatten`). Plain mappings in,
plain mappings out: validation is `search.config.schema.parse_config`'s.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from search.core.errors import UserError, first_line

__all__ = ["MAX_DEPTH", "apply_overrides", "deep_merge", "flatten", "load_yaml", "shown"]

MAX_DEPTH = 16  # of a key path or a value: the deepest real key is 4 (search.pruner.options.x)
MAX_VALUE_CHARS = 1 << 16  # of one --set value
_SHOWN = 200  # characters of an offending value an error message quotes


def shown(value: Any) -> str:
    """`repr(value)`, cut to about 200 characters: one line, whatever a file holds."""
    text = repr(value)
    return text if len(text) <= _SHOWN else text[: _SHOWN - 1] + "…"


_BOOL, _STR = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:str"


class _NoAliases(yaml.SafeLoader):
    """YAML without aliases (`*name`): a study file never needs them, and nested aliases
    expand exponentially (a few hundred bytes that parse into gigabytes)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(
                None, None, "aliases (*name) are not allowed", self.peek_event().start_mark
            )
        return super().compose_node(parent, index)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        # YAML 1.1 reads a key `yes`, `no`, `on` or `off` as a boolean; a key is a name here,
        # so it stays the word written (`space: {yes: 1}` is then an unknown regularizer
        # `yes`, not "keys should be strings (got True)").
        for key_node, _ in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.tag == _BOOL:
                key_node.tag = _STR
        return super().construct_mapping(node, deep=deep)


# YAML 1.1 (PyYAML) reads `1e-4` and `3E5`, exponents without a dot, as strings: 1.2 and every
# user read them as numbers (`weight_decay: 1e-4`, `choices: [1e-3, 3e-3]`).
_NoAliases.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _depth(value: Any, limit: int) -> int:
    """The nesting depth of `value` (lists and mappings), counted no further than `limit`."""
    stack, deepest = [(value, 1)], 0
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return depth
        deepest = max(deepest, depth)
        if isinstance(node, Mapping):
            stack.extend((v, depth + 1) for v in node.values())
        elif isinstance(node, list):
            stack.extend((v, depth + 1) for v in node)
    return deepest


def load_yaml(text: str) -> Any:
    """`text` as YAML: safe types only, no aliases, nested at most `MAX_DEPTH` deep (a
    `yaml.YAMLError` or `ValueError` otherwise)."""
    try:
        value = yaml.load(text, Loader=_NoAliases)
    except RecursionError:  # PyYAML composes nested collections recursively
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep") from None
    if _depth(value, MAX_DEPTH) > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    return value


def _merges(old: Any, new: Any) -> bool:
    """Whether `new` refines `old` key by key rather than replacing it. A space distribution
    (`type: ...`) or a differently named sampler/pruner (`name: ...`) replaces: a categorical
    must not inherit `low`/`high`, a hyperband pruner must not inherit the median's options."""
    if not (isinstance(old, Mapping) and isinstance(new, Mapping)):
        return False
    return "type" not in new and new.get("name", old.get("name")) == old.get("name")


# Top-level sections a mapping replaces whole: a recipe is a whole (`baseline: {dropout: 0.3}`
# is that recipe, its other regularizers off, not the default recipe with dropout 0.3; `{}`,
# every regularizer off). `--set baseline.dropout=0.3` still edits the one key.
WHOLE = frozenset({"baseline"})


def _seed_of(sampler: Any) -> Any:
    if not isinstance(sampler, Mapping):
        return None
    options = sampler.get("options")
    return sampler.get("seed", options.get("seed") if isinstance(options, Mapping) else None)


def _keeps_seed(key: str, old: Any, value: Any) -> Any:
    """A sampler that replaces another (`sampler: random`, `{name: random}`) keeps the old
    one's seed unless it gives its own: the seed makes a fresh study reproducible, whichever
    sampler draws."""
    seed = _seed_of(old)
    options = value.get("options") if isinstance(value, Mapping) else None
    given = isinstance(value, Mapping) and (
        "seed" in value or (isinstance(options, Mapping) and "seed" in options)
    )
    if key != "sampler" or seed is None or given:  # `seed: null` is a choice too
        return value
    if isinstance(value, str):
        return {"name": value, "seed": seed}
    if isinstance(value, Mapping) and "name" in value:
        return {**value, "seed": seed}
    return value


def deep_merge(
    base: Mapping[str, Any], update: Mapping[str, Any], *, top: bool = True
) -> dict[str, Any]:
    """`update` over `base`, recursively for mappings that refine rather than replace."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        old = merged.get(key)
        if top and key in WHOLE:
            merged[key] = copy.deepcopy(value)
        elif isinstance(old, Mapping) and _merges(old, value):
            merged[key] = deep_merge(old, value, top=False)
        else:
            merged[key] = copy.deepcopy(_keeps_seed(key, old, value))
    return merged


def _parse_assignment(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise UserError(f"--set {shown(item)}: expected KEY.SUB=VALUE")
    if len(raw) > MAX_VALUE_CHARS:
        raise UserError(f"--set {shown(key)}: a value is at most {MAX_VALUE_CHARS:,} characters")
    if key.count(".") >= MAX_DEPTH:
        raise UserError(f"--set {shown(key)}: a key is at most {MAX_DEPTH} levels deep")
    try:
        value = load_yaml(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError) as exc:
        raise UserError(
            f"--set {key}: value {shown(raw)} is not valid YAML ({first_line(exc, limit=200)})"
        ) from None
    return key.split("."), value


def apply_overrides(data: Mapping[str, Any], assignments: Iterable[str]) -> dict[str, Any]:
    """Apply `--set a.b=value` items; values are parsed as YAML (numbers, lists, mappings)."""
    result = copy.deepcopy(dict(data))
    for item in assignments:
        path, value = _parse_assignment(item)
        node: dict[str, Any] = result
        for depth, part in enumerate(path[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise UserError(
                    f"--set {'.'.join(path)}: {'.'.join(path[: depth + 1])} is not a mapping"
                )
            node = child
        if _merges(node.get(path[-1]), value) and not (len(path) == 1 and path[0] in WHOLE):
            node[path[-1]] = deep_merge(node[path[-1]], value, top=False)
        elif _renames(path, node, value):
            # `search.pruner.name=hyperband`: the median's options are not hyperband's. A
            # sampler's seed is every sampler's option, and stays.
            seed = _seed_of(node) if path[-2] == "sampler" else None
            node.clear()
            node["name"] = value
            if seed is not None:
                node["seed"] = seed
        else:
            node[path[-1]] = _keeps_seed(path[-1], node.get(path[-1]), value)
    return result


def _renames(path: list[str], node: Mapping[str, Any], value: Any) -> bool:
    """Whether `--set search.sampler.name=…` / `search.pruner.name=…` picks another class."""
    return (
        len(path) >= 2
        and path[-1] == "name"
        and path[-2] in ("sampler", "pruner")
        and node.get("name") != value
    )


def flatten(
    data: Mapping[str, Any], *, keep: Iterable[str] = (), prefix: str = ""
) -> dict[str, Any]:
    """Dotted keys of a nested mapping (`{"train": {"lr": 1}}` → `{"train.lr": 1}`); the
    mappings at keys in `keep` (dotted) and empty ones stay whole values."""
    keep = frozenset(keep)
    flat: dict[str, Any] = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and path not in keep:
            flat.update(flatten(value, keep=keep, prefix=f"{path}."))
        else:
            flat[path] = value
    return flat
