"""A size sweep: one study per training-set fraction, smallest first, each warm-started with
the previous fraction's best configurations, and the answer to "how much regularization for
how much data" read across them.

The study at fraction f of a sweep named S is `S-f<f>` (`digits-f0.25`; its MLflow experiment
and registered model follow). Each carries the user attrs `sweep` (S) and `train_fraction`, so
`report S` and `status S` find them in the storage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config.schema import StudyConfig, fraction_label, repeated_name
from search.core.errors import UserError
from search.core.records import PHASE_ATTR, SEARCH, ranking
from search.study.storage import study_lock

__all__ = [
    "FRACTION_ATTR",
    "SWEEP_ATTR",
    "SWEEP_CONFIG_ATTR",
    "WARM_START_ATTR",
    "Member",
    "fraction_configs",
    "parse_fractions",
    "remember_sweep",
    "stored_sweep",
    "sweep_studies",
    "top_configurations",
    "warm_start",
]

SWEEP_ATTR = "sweep"  # study user attr: the sweep's name
FRACTION_ATTR = "train_fraction"  # study user attr: its fraction of the training split
WARM_START_ATTR = "warm_start_from"  # study attr: the study it was seeded from ("" for none);
# trial attr: the study whose configuration an enqueued warm-start trial retries
SWEEP_CONFIG_ATTR = "sweep_config"  # study user attr: the sweep's config as the user gave it
# (`auto` values unresolved, its `sweep.fractions`): what `run --study SWEEP` resumes
_WARM_STARTS = 3  # configurations carried from one fraction to the next


def parse_fractions(values: Sequence[float] | str) -> list[float]:
    """Fractions of the training split, ascending, each in (0, 1], from `0.1,0.25,1` or a
    list; a `UserError` names the bad one."""
    items = values.split(",") if isinstance(values, str) else list(values)
    fractions: list[float] = []
    for item in items:
        try:
            fraction = float(item)
        except (TypeError, ValueError):
            raise UserError(f"--fractions: {str(item).strip()!r} is not a number") from None
        if not 0.0 < fraction <= 1.0 or not math.isfinite(fraction):
            raise UserError(f"--fractions: {fraction:g} is not in (0, 1]")
        fractions.append(fraction)
    if not fractions:
        raise UserError("--fractions: give at least one fraction, e.g. 0.1,0.25,0.5,1")
    if len(set(fractions)) != len(fractions):
        raise UserError(f"--fractions: {', '.join(f'{f:g}' for f in fractions)} repeats one")
    clash = repeated_name(fractions)
    if clash is not None:
        raise UserError(f"--fractions: {clash}")
    return sorted(fractions)


def fraction_study(sweep: str, fraction: float) -> str:
    return f"{sweep}-f{fraction_label(fraction)}"


def fraction_configs(config: StudyConfig, fractions: Sequence[float]) -> list[StudyConfig]:
    """The sweep's studies, smallest fraction first: `config` renamed `<study>-f<fraction>`,
    training on that fraction (validation and test splits unchanged)."""
    from search.config.schema import safe_study_name

    out = []
    for fraction in fractions:
        dataset = config.dataset.model_copy(update={"train_fraction": fraction})
        name = fraction_study(config.study, fraction)
        try:
            safe_study_name(name)  # derived names are checked before anything is created
        except UserError:
            raise UserError(
                f"--fractions: the sweep's study {name[:40]}… would be {len(name)} characters; "
                "a study name is at most 128 (use a shorter --study)"
            ) from None
        update = {"study": name, "dataset": dataset}
        out.append(config.model_copy(update={**update, "sweep": None}))
    return out


def top_configurations(study: optuna.Study, k: int = _WARM_STARTS) -> list[dict[str, Any]]:
    """The study's best distinct search configurations, best first: in the order of the
    confirm phase's means when it is complete (the confirmed champion first), then by
    validation value."""
    from search.study.evidence import study_evidence

    order: list[dict[str, Any]] = []

    def add(params: dict[str, Any]) -> None:
        if params not in order:
            order.append(params)

    ev = study_evidence(study)
    if ev is not None and ev.confirm_complete:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        arms = [a for a in ev.arms if not a.baseline and a.interval is not None]
        arms.sort(key=lambda a: -sign * a.interval.mean if a.interval else math.inf)
        champion = ev.champion
        if champion is not None and champion.ablate is not None:
            # An ablated configuration that replaced the champion: its params are the
            # replaced one's, the regularizer it switched off is not. Only a searched one can
            # be enqueued as it trained (a fixed value would train switched on again), and
            # not one of the recipe (every study has the recipe as its trial 0).
            replaced = ev.replaced
            if (
                champion.ablate in champion.params
                and not (replaced and replaced.baseline)
                and _holds_zero(study, champion.ablate)
            ):
                add({**champion.params, champion.ablate: 0.0})
        elif champion is not None and not champion.baseline:
            add(dict(champion.params))
        for arm in arms:
            add(dict(arm.params))
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = [t for t in trials if t.user_attrs.get(PHASE_ATTR, SEARCH) == SEARCH]
    for t in sorted(searched, key=ranking(study.direction)):
        add(dict(t.params))
    return order[:k]


def _holds_zero(study: optuna.Study, name: str) -> bool:
    """Whether the study's search space takes 0 for the searched `name` (a log-scaled range
    does not: switched off, the configuration cannot be enqueued as it trained)."""
    from search.config.space import space_of
    from search.study.evidence import study_config

    config = study_config(study)
    if config is None:
        return False
    entry = next((e for e in space_of(config).searched if e.name == name), None)
    return entry is not None and entry.value.contains(0)  # type: ignore[union-attr]


@dataclass(frozen=True)
class Member:
    """A study's place in a sweep: the sweep's name, its fraction, the previous study, and the
    sweep's config as given (`SWEEP_CONFIG_ATTR`)."""

    sweep: str
    fraction: float
    previous: str | None = None
    config: dict[str, Any] | None = None


def warm_start(study: optuna.Study, member: Member) -> int:
    """Mark `study` as the sweep's study at its fraction and, once (whichever worker comes
    first), enqueue the previous fraction's best configurations as its first search trials.
    Returns how many this call enqueued."""
    with study_lock(study, "warm-start"):
        if member.config is not None and study.user_attrs.get(SWEEP_CONFIG_ATTR) != member.config:
            study.set_user_attr(SWEEP_CONFIG_ATTR, member.config)
        if WARM_START_ATTR in study.user_attrs:
            return 0
        study.set_user_attr(SWEEP_ATTR, member.sweep)
        study.set_user_attr(FRACTION_ATTR, member.fraction)
        configs: list[dict[str, Any]] = []
        if member.previous is not None:
            previous = optuna.load_study(study_name=member.previous, storage=study._storage)
            configs = top_configurations(previous)
        for params in configs:
            study.enqueue_trial(
                params, user_attrs={WARM_START_ATTR: member.previous}, skip_if_exists=True
            )
        study.set_user_attr(WARM_START_ATTR, member.previous or "")
        return len(configs)


def _members(
    storage: optuna.storages.BaseStorage, sweep: str
) -> list[tuple[float, str, dict[str, Any]]]:
    """(fraction, study name, study user attrs) of the sweep's studies, smallest first."""
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if attrs.get(SWEEP_ATTR) == sweep and FRACTION_ATTR in attrs:
            found.append((float(attrs[FRACTION_ATTR]), summary.study_name, attrs))
    return sorted(found, key=lambda m: (m[0], m[1]))


def sweep_studies(storage: optuna.storages.BaseStorage, sweep: str) -> list[tuple[float, str]]:
    """(fraction, study name) of the sweep's studies in `storage`, smallest first."""
    return [(fraction, name) for fraction, name, _ in _members(storage, sweep)]


def remember_sweep(
    storage: optuna.storages.BaseStorage, sweep: str, config: dict[str, Any]
) -> None:
    """Keep `config` (the sweep's, as given) in every study the sweep `sweep` has."""
    for _, name, attrs in _members(storage, sweep):
        if attrs.get(SWEEP_CONFIG_ATTR) != config:
            study_id = storage.get_study_id_from_name(name)
            storage.set_study_user_attr(study_id, SWEEP_CONFIG_ATTR, config)


def stored_sweep(storage: optuna.storages.BaseStorage, sweep: str) -> dict[str, Any] | None:
    """The config the sweep `sweep` was last launched with (`SWEEP_CONFIG_ATTR` of its
    largest fraction's study that holds one), its `sweep.fractions` every fraction it has a
    study for and every fraction it was launched with; None when there is no such sweep."""
    members = _members(storage, sweep)
    stored: dict[str, Any] | None = None
    fractions = {fraction for fraction, _, _ in members}
    for _, _, attrs in members:
        config = attrs.get(SWEEP_CONFIG_ATTR)
        if isinstance(config, dict):
            stored = config
            fractions |= set((config.get("sweep") or {}).get("fractions") or [])
    if stored is None:
        return None
    return {**stored, "sweep": {**(stored.get("sweep") or {}), "fractions": sorted(fractions)}}
