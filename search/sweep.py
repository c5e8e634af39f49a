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
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from search.config import StudyConfig
from search.errors import UserError
from search.records import PHASE_ATTR, SEARCH, TRAIN_IMAGES_ATTR, ranking
from search.space import REGULARIZERS
from search.storage import study_lock
from search.study import best_trial

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = [
    "FRACTION_ATTR",
    "SWEEP_ATTR",
    "WARM_START_ATTR",
    "Member",
    "fraction_configs",
    "parse_fractions",
    "sweep_rows",
    "sweep_studies",
    "top_configurations",
    "trends",
    "warm_start",
]

SWEEP_ATTR = "sweep"  # study user attr: the sweep's name
FRACTION_ATTR = "train_fraction"  # study user attr: its fraction of the training split
WARM_START_ATTR = "warm_start_from"  # study attr: the study it was seeded from ("" for none);
# trial attr: the study whose configuration an enqueued warm-start trial retries
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
    return sorted(fractions)


def fraction_study(sweep: str, fraction: float) -> str:
    return f"{sweep}-f{fraction:g}"


def fraction_configs(config: StudyConfig, fractions: Sequence[float]) -> list[StudyConfig]:
    """The sweep's studies, smallest fraction first: `config` renamed `<study>-f<fraction>`,
    training on that fraction (validation and test splits unchanged)."""
    from search.config import safe_study_name

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
    from search.evidence import study_evidence

    order: list[dict[str, Any]] = []
    ev = study_evidence(study)
    if ev is not None and ev.confirm_complete:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        arms = [a for a in ev.arms if not a.baseline and a.interval is not None]
        arms.sort(key=lambda a: -sign * a.interval.mean if a.interval else math.inf)
        if ev.champion is not None and not ev.champion.baseline:
            arms = [ev.champion] + [a for a in arms if a is not ev.champion]
        order = [dict(a.params) for a in arms]
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = [t for t in trials if t.user_attrs.get(PHASE_ATTR, SEARCH) == SEARCH]
    for t in sorted(searched, key=ranking(study.direction)):
        if dict(t.params) not in order:
            order.append(dict(t.params))
    return order[:k]


@dataclass(frozen=True)
class Member:
    """A study's place in a sweep: the sweep's name, its fraction, the previous study."""

    sweep: str
    fraction: float
    previous: str | None = None


def warm_start(study: optuna.Study, member: Member) -> int:
    """Mark `study` as the sweep's study at its fraction and, once (whichever worker comes
    first), enqueue the previous fraction's best configurations as its first search trials.
    Returns how many this call enqueued."""
    with study_lock(study, "warm-start"):
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


def sweep_studies(storage: optuna.storages.BaseStorage, sweep: str) -> list[tuple[float, str]]:
    """(fraction, study name) of the sweep's studies in `storage`, smallest first."""
    found = []
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        attrs = summary.user_attrs
        if attrs.get(SWEEP_ATTR) == sweep and FRACTION_ATTR in attrs:
            found.append((float(attrs[FRACTION_ATTR]), summary.study_name))
    return sorted(found)


def _gap(trial: FrozenTrial | None) -> float | None:
    if trial is None:
        return None
    train, val = trial.user_attrs.get("train_accuracy"), trial.user_attrs.get("val_accuracy")
    return None if train is None or val is None else float(train) - float(val)


def sweep_rows(storage: optuna.storages.BaseStorage, sweep: str) -> list[dict[str, Any]]:
    """One row per fraction: its size, the champion's values and test accuracy, the baseline
    recipe's, the chosen value of each regularizer and its spread over the top
    configurations, the champion's train–validation gap, and trials to the best value."""
    from search.evidence import TEST_ATTR, study_config
    from search.space import SearchSpace
    from search.summary import best_summary

    rows = []
    for fraction, name in sweep_studies(storage, sweep):
        study = optuna.load_study(study_name=name, storage=storage)
        config = study_config(study)
        best = best_summary(study)
        champion = best_trial(study)
        test = study.user_attrs.get(TEST_ATTR) or {}
        values: dict[str, float] = {}
        spread: dict[str, list[float]] = {}
        if config is not None and champion is not None:
            space = SearchSpace.from_config(config)
            fixed = space.fixed_values()
            searched = {e.name for e in space.searched} & set(REGULARIZERS)
            chosen = {**fixed, **(best or {}).get("params", {})}
            values = {k: float(v) for k, v in chosen.items() if k in searched}
            top = [{**fixed, **p} for p in top_configurations(study, k=5)]
            for key in values:
                seen = [values[key]] + [float(p[key]) for p in top if key in p]
                spread[key] = [min(seen), max(seen)]  # the champion's value and the top 5
        rows.append(
            {
                "study": name,
                "fraction": fraction,
                "train_images": study.user_attrs.get(TRAIN_IMAGES_ATTR),
                "trials": len(study.get_trials(deepcopy=False)),
                # The confirmed champion's mean over its seeds; before (or without) a confirm
                # phase, the best trial's value.
                "champion_val": _champion_value(best),
                "champion_test": (test.get("champion") or {}).get("accuracy"),
                "baseline_test": (test.get("baseline") or {}).get("accuracy"),
                "train_val_gap": _gap(champion),
                "regularizers": values,
                "spread": spread,
                # The ablation's answer: the champion's value minus its value with the
                # regularizer off, paired by seed ({name: {mean, low, high, n}}).
                "contributions": (best or {}).get("contributions") or {},
                "warm_start_from": study.user_attrs.get(WARM_START_ATTR) or None,
            }
        )
    return rows


def _champion_value(best: dict[str, Any] | None) -> float | None:
    if best is None:
        return None
    confirmed = (best.get("champion") or {}).get("val") or {}
    mean = confirmed.get("mean")
    return float(mean) if mean is not None else best["value"]


def trends(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per regularizer on how its chosen value moves from the smallest training
    set to the largest ("aug_strength falls from 0.8 at 180 images to 0.3 at 1,078")."""
    if len(rows) < 2:
        return []
    first, last = rows[0], rows[-1]

    def size(row: dict[str, Any]) -> str:
        n = row.get("train_images")
        return f"{n:,} images" if n else f"fraction {row['fraction']:g}"

    out = []
    for key in sorted(set(first["regularizers"]) & set(last["regularizers"])):
        a, b = first["regularizers"][key], last["regularizers"][key]
        a_lo, a_hi = first["spread"].get(key) or (a, a)
        b_lo, b_hi = last["spread"].get(key) or (b, b)
        if a == b or a_lo <= b <= a_hi or b_lo <= a <= b_hi:
            out.append(
                f"{key}: about the same ({_two(a)} at {size(first)}, {_two(b)} at {size(last)}; "
                "each within the other's spread over the top configurations)"
            )
        else:
            way = "falls" if b < a else "rises"
            out.append(f"{key}: {way} from {_two(a)} at {size(first)} to {_two(b)} at {size(last)}")
        ends = [(r.get("contributions") or {}).get(key) or {} for r in (first, last)]
        if all(c.get("mean") is not None for c in ends):
            ca, cb = (100 * float(c["mean"]) for c in ends)
            cost = f"{ca:+.1f} pt at {size(first)}, {cb:+.1f} pt at {size(last)}"
            out[-1] += f"; taking it away costs {cost}"
    return out


def _two(value: float) -> str:
    from search.summary import format_value

    return format_value(value, digits=2)


def sweep_table(storage: optuna.storages.BaseStorage, sweep: str) -> tuple[Any, list[str]]:
    """The sweep as a rich table (a row per fraction) and its one-sentence trends."""
    from rich.table import Table

    from search.summary import format_value

    rows = sweep_rows(storage, sweep)
    names = [k for k in REGULARIZERS if any(k in r["regularizers"] for r in rows)]
    table = Table(
        title=f"sweep {sweep} — the champion at each training-set size", header_style="bold"
    )
    for column in ("study", "train images", "val", "test", "baseline test", "gap", *names):
        table.add_column(column, justify="left" if column == "study" else "right")
    for r in rows:
        table.add_row(
            r["study"],
            format_value(r["train_images"]),
            format_value(r["champion_val"]),
            format_value(r["champion_test"]),
            format_value(r["baseline_test"]),
            format_value(r["train_val_gap"]),
            *(format_value(r["regularizers"].get(k)) for k in names),
        )
    return table, trends(rows)
