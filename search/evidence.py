"""The confirm phase and the study's answer: which configuration is really best, by how much
it beats the baseline recipe, and what each of its regularizers contributed.

After the search budget, the `top_k` best distinct configurations and the baseline recipe are
retrained with `seeds` fresh training seeds (phase "confirm"); the champion is the one with the
best *mean* validation value, which undoes most of the luck in a maximum over noisy trials.
Then the champion is retrained with each active regularizer switched off, with the same seeds
(phase "ablation"): the paired difference per seed is that regularizer's contribution. Every
retrain is an enqueued Optuna trial, so any worker on any machine runs them, a killed one is
retried like any trial, and the dashboard shows them. Intervals are Student-t 95% intervals
over seeds (paired by seed); the held-out test gain is a paired bootstrap over test images.

The planning and the arithmetic here are pure functions of the study's trials, so every
worker, `best`, the report and the dashboard compute the same answer from the same store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config import StudyConfig
from search.records import (
    BASELINE,
    CONFIG_ATTR,
    OVERRIDES_ATTR,
    PHASE_ATTR,
    SEARCH,
    TIEBREAK_ATTR,
    baseline_trial,
    ranking,
)
from search.space import REGULARIZERS, SearchSpace
from search.stats import Interval, mean_interval, paired_bootstrap

__all__ = [
    "ABLATE_ATTR",
    "ABLATION",
    "CONFIRM",
    "SEED_ATTR",
    "SOURCE_ATTR",
    "Arm",
    "Evidence",
    "confirm_seeds",
    "confirmed_champion",
    "enqueue_plan",
    "evidence",
    "plan",
    "study_evidence",
]

CONFIRM, ABLATION = "confirm", "ablation"
SOURCE_ATTR = "source"  # the trial whose configuration a confirm/ablation trial retrains
SEED_ATTR = "seed"  # its training seed
ABLATE_ATTR = "ablate"  # the regularizer an ablation trial switches off
_PENDING = (TrialState.WAITING, TrialState.RUNNING)
_SEED_OFFSET = 1000  # confirm seeds are train.seed + 1000 + i: never the search's own seed


def confirm_seeds(config: StudyConfig, n: int) -> list[int]:
    return [config.train.seed + _SEED_OFFSET + i for i in range(n)]


# --------------------------------------------------------------------------- the phase
@dataclass
class Arm:
    """One configuration of the confirm phase and its retrains, by seed."""

    source: int  # the search (or baseline) trial it came from
    params: dict[str, Any]
    baseline: bool
    values: dict[int, float] = field(default_factory=dict)  # seed → value (COMPLETE)
    trials: dict[int, FrozenTrial] = field(default_factory=dict)  # seed → COMPLETE trial
    search_value: float | None = None
    interval: Interval | None = None

    def best_trial(self, direction: optuna.study.StudyDirection) -> FrozenTrial | None:
        done = list(self.trials.values())
        return min(done, key=ranking(direction)) if done else None


@dataclass
class Evidence:
    """The confirm phase's state and answer. `complete`: every planned retrain has ended."""

    arms: list[Arm]
    seeds: list[int]
    champion: Arm | None = None
    baseline: Arm | None = None
    gain: Interval | None = None  # champion − baseline over seeds (positive: better)
    contributions: dict[str, Interval] = field(default_factory=dict)
    confirm_complete: bool = False
    ablation_complete: bool = False
    pending: int = 0  # planned retrains not yet ended


def _sign(direction: optuna.study.StudyDirection) -> float:
    return 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0


def _key(params: Mapping[str, Any]) -> str:
    """A configuration's identity: its params without a searched training seed."""
    return json.dumps({k: v for k, v in params.items() if k != "seed"}, sort_keys=True, default=str)


def _candidates(
    trials: Sequence[FrozenTrial], direction: optuna.study.StudyDirection, top_k: int
) -> list[FrozenTrial]:
    """The baseline trial, then the `top_k` best distinct configurations of the search."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    base = [t for t in complete if t.user_attrs.get(PHASE_ATTR) == BASELINE][:1]
    chosen: list[FrozenTrial] = []
    seen = {_key(t.params) for t in base}
    for t in sorted(complete, key=ranking(direction)):
        if t.user_attrs.get(PHASE_ATTR, SEARCH) != SEARCH or _key(t.params) in seen:
            continue
        seen.add(_key(t.params))
        chosen.append(t)
        if len(chosen) == top_k:
            break
    return base + chosen


def _effective(space: SearchSpace, trial: FrozenTrial) -> dict[str, Any]:
    """A trial's regularizer values as trained: params, fixed values and its overrides."""
    values = {**space.fixed_values(), **trial.params}
    if trial.user_attrs.get(PHASE_ATTR) == BASELINE:
        values.update(space.baseline_values() or {})
    values.update(trial.user_attrs.get(OVERRIDES_ATTR) or {})
    return {k: v for k, v in values.items() if k in REGULARIZERS}


@dataclass(frozen=True)
class Planned:
    params: dict[str, Any]
    user_attrs: dict[str, Any]


def _planned_key(attrs: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        attrs.get(PHASE_ATTR),
        attrs.get(SOURCE_ATTR),
        attrs.get(SEED_ATTR),
        attrs.get(ABLATE_ATTR),
    )


def evidence(
    trials: Sequence[FrozenTrial], config: StudyConfig, direction: optuna.study.StudyDirection
) -> Evidence | None:
    """The confirm phase as far as it has run (None when the study has none: `confirm: none`,
    or a grid study, which runs its grid only, as it has no baseline trial)."""
    confirm = config.search.confirm
    if confirm is None or config.search.sampler.name == "grid":
        return None
    space = SearchSpace.from_config(config)
    seeds = confirm_seeds(config, confirm.seeds)
    sign = _sign(direction)
    by_source: dict[int, FrozenTrial] = {t.number: t for t in trials}
    arms = [
        Arm(
            source=t.number,
            params=dict(t.params),
            baseline=t.user_attrs.get(PHASE_ATTR) == BASELINE,
            search_value=t.value,
        )
        for t in _candidates(trials, direction, confirm.top_k)
    ]
    ev = Evidence(arms=arms, seeds=seeds)
    arm_of = {a.source: a for a in arms}
    ablated: dict[str, dict[int, float]] = {}
    ended: set[tuple[Any, ...]] = set()
    pending: set[tuple[Any, ...]] = set()
    for t in trials:
        phase = t.user_attrs.get(PHASE_ATTR)
        if phase not in (CONFIRM, ABLATION):
            continue
        key = _planned_key(t.user_attrs)
        if t.state in _PENDING:
            pending.add(key)
            continue
        ended.add(key)
        if t.state != TrialState.COMPLETE or t.value is None or not math.isfinite(t.value):
            continue
        seed, source = t.user_attrs.get(SEED_ATTR), t.user_attrs.get(SOURCE_ATTR)
        if phase == CONFIRM and source in arm_of and seed in seeds:
            arm = arm_of[source]
            if seed not in arm.trials or ranking(direction)(t) < ranking(direction)(
                arm.trials[seed]
            ):
                arm.values[seed], arm.trials[seed] = float(t.value), t
        elif phase == ABLATION and seed in seeds:
            ablated.setdefault(f"{source}:{t.user_attrs.get(ABLATE_ATTR)}", {})[seed] = float(
                t.value
            )
    ended -= pending
    wanted = {(CONFIRM, a.source, s, None) for a in arms for s in seeds}
    # Configurations are compared on the seeds every one of them completed: a retrain that
    # failed for good (its retries spent) must not leave one mean over 2 seeds against
    # another over 3.
    scored_seeds = [set(a.values) for a in arms if a.values]
    shared = set.intersection(*scored_seeds) if scored_seeds else set()
    for arm in arms:
        arm.values = {s: v for s, v in arm.values.items() if s in shared}
        arm.trials = {s: t for s, t in arm.trials.items() if s in shared}
        arm.interval = mean_interval(list(arm.values.values()))
    ev.baseline = next((a for a in arms if a.baseline), None)
    ev.confirm_complete = wanted <= ended
    scored = [a for a in arms if a.interval is not None]
    if ev.confirm_complete and scored:

        def order(a: Arm) -> tuple[float, float, int]:
            assert a.interval is not None
            attrs = [t.user_attrs.get(TIEBREAK_ATTR) for t in a.trials.values()]
            losses = [float(v) for v in attrs if v is not None]
            loss = math.fsum(losses) / len(losses) if losses else math.inf
            return -sign * a.interval.mean, loss, a.source  # best mean; then lower val loss

        ev.champion = min(scored, key=order)
    champion = ev.champion
    if champion is not None and ev.baseline is not None and champion is not ev.baseline:
        common = sorted(set(champion.values) & set(ev.baseline.values))
        ev.gain = mean_interval(
            [sign * (champion.values[s] - ev.baseline.values[s]) for s in common]
        )
    elif champion is not None and champion is ev.baseline:
        ev.gain = Interval(0.0, 0.0, 0.0, len(champion.values))
    abl_wanted: set[tuple[Any, ...]] = set()
    if champion is not None and confirm.ablation:
        source_trial = by_source[champion.source]
        for name, value in _effective(space, source_trial).items():
            if float(value) == 0.0:
                continue  # already off: nothing to take away
            abl_wanted |= {(ABLATION, champion.source, s, name) for s in seeds}
            runs = ablated.get(f"{champion.source}:{name}", {})
            common = sorted(set(runs) & set(champion.values))
            diff = mean_interval([sign * (champion.values[s] - runs[s]) for s in common])
            if diff is not None:
                ev.contributions[name] = diff
    ev.ablation_complete = ev.confirm_complete and abl_wanted <= ended
    todo = (wanted | abl_wanted) - ended
    ev.pending = len(todo)
    return ev


def plan(
    trials: Sequence[FrozenTrial], config: StudyConfig, direction: optuna.study.StudyDirection
) -> list[Planned]:
    """The retrains to enqueue now: those of the confirm phase not yet enqueued, and, once
    every one of them has ended, the champion's ablation. Idempotent: a second call (another
    worker, a later launch) plans only what is missing; a larger `top_k` or `seeds` plans
    the difference."""
    confirm = config.search.confirm
    ev = evidence(trials, config, direction)
    if confirm is None or ev is None:
        return []
    space = SearchSpace.from_config(config)
    baseline_values = space.baseline_values() or {}
    exists = {
        _planned_key(t.user_attrs)
        for t in trials
        if t.user_attrs.get(PHASE_ATTR) in (CONFIRM, ABLATION)
    }
    out: list[Planned] = []

    def add(phase: str, arm: Arm, seed: int, overrides: dict[str, Any], ablate: str | None):
        attrs = {PHASE_ATTR: phase, SOURCE_ATTR: arm.source, SEED_ATTR: seed}
        if ablate is not None:
            attrs[ABLATE_ATTR] = ablate
        if _planned_key(attrs) in exists:
            return
        attrs[OVERRIDES_ATTR] = {**overrides, "seed": seed}
        out.append(Planned(dict(arm.params), attrs))

    for arm in ev.arms:
        for seed in ev.seeds:
            add(CONFIRM, arm, seed, dict(baseline_values) if arm.baseline else {}, None)
    if ev.confirm_complete and ev.champion is not None and confirm.ablation:
        champion = ev.champion
        by_number = {t.number: t for t in trials}
        base = dict(baseline_values) if champion.baseline else {}
        for name, value in _effective(space, by_number[champion.source]).items():
            if float(value) == 0.0:
                continue
            for seed in ev.seeds:
                add(ABLATION, champion, seed, {**base, name: 0.0}, name)
    return out


def enqueue_plan(study: optuna.Study, config: StudyConfig) -> dict[str, int]:
    """Enqueue what `plan` says, under the study's lock (workers that finish the search
    together enqueue each retrain once); how many were added, by phase."""
    from search.storage import study_lock

    with study_lock(study, "confirm"):
        todo = plan(study.get_trials(deepcopy=False), config, study.direction)
        for item in todo:
            study.enqueue_trial(item.params, user_attrs=item.user_attrs, skip_if_exists=False)
    added: dict[str, int] = {}
    for item in todo:
        phase = item.user_attrs[PHASE_ATTR]
        added[phase] = added.get(phase, 0) + 1
    return added


def pending_retrains(trials: Iterable[FrozenTrial]) -> int:
    """Confirm-phase trials enqueued or running."""
    return sum(
        t.state in _PENDING and t.user_attrs.get(PHASE_ATTR) in (CONFIRM, ABLATION) for t in trials
    )


_CONFIGS: dict[str, StudyConfig] = {}


def study_config(study: optuna.Study) -> StudyConfig | None:
    """The study's stored config, validated once per distinct config in this process."""
    from search.config import parse_config

    stored = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(stored, dict):
        return None
    key = json.dumps(stored, sort_keys=True, default=str)
    if key not in _CONFIGS:
        _CONFIGS[key] = parse_config(stored, check_model=False)
    return _CONFIGS[key]


def study_evidence(study: optuna.Study) -> Evidence | None:
    config = study_config(study)
    if config is None:
        return None
    return evidence(study.get_trials(deepcopy=False), config, study.direction)


def confirmed_champion(study: optuna.Study) -> FrozenTrial | None:
    """The best-seed retrain of the confirmed champion (None until the confirm phase is
    complete, or without one)."""
    ev = study_evidence(study)
    if ev is None or ev.champion is None:
        return None
    return ev.champion.best_trial(study.direction)


# --------------------------------------------------------------------------- held-out test
TEST_ATTR = "test_evidence"  # study user attr: the once-only test-split evaluation
BOOTSTRAP_RESAMPLES = 5000


def held_out(champion: Any, baseline: Any | None, data: Any) -> dict[str, Any]:
    """Evaluate the champion (and the baseline recipe's model) once on the test split:
    accuracy, ECE (15 bins) and NLL of each, and the accuracy gain with a 95% paired
    bootstrap interval over the test images. Models are `torch.nn.Module`s."""
    from search.evaluation import evaluate_full

    def one(model: Any) -> tuple[dict[str, float], Any]:
        ev = evaluate_full(model.to(data.test.x.device), data.test, max_value=data.max_value)
        return {"accuracy": ev.accuracy, "ece": ev.ece, "nll": ev.loss}, ev.correct

    out: dict[str, Any] = {"images": len(data.test)}
    out["champion"], correct = one(champion)
    if baseline is not None:
        out["baseline"], base_correct = one(baseline)
        gain, low, high = paired_bootstrap(
            correct.tolist(), base_correct.tolist(), resamples=BOOTSTRAP_RESAMPLES
        )
        out["gain"] = {
            "mean": gain,
            "low": low,
            "high": high,
            "method": f"paired bootstrap over {len(data.test)} test images "
            f"({BOOTSTRAP_RESAMPLES} resamples)",
        }
    return out


def baseline_model_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial whose weights stand for the baseline recipe on the test split: its best-seed
    retrain once the confirm phase is complete, else the baseline trial."""
    ev = study_evidence(study)
    if ev is not None and ev.champion is not None and ev.baseline is not None:
        chosen = ev.baseline.best_trial(study.direction)
        if chosen is not None:
            return chosen
    return baseline_trial(study)


def epochs_saved(study: optuna.Study, config: StudyConfig | None) -> float | None:
    """The share of the search's epochs that pruning and early stopping did not train:
    1 − epochs trained ÷ (finished search trials × `train.epochs`)."""
    if config is None:
        return None
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.user_attrs.get(PHASE_ATTR, SEARCH) == SEARCH
    ]
    full = sum(int(t.params.get("epochs", config.train.epochs)) for t in done)
    trained = sum(int(t.user_attrs.get("epochs_trained") or 0) for t in done)
    return None if full == 0 else 1.0 - trained / full
