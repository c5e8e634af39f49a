"""The champion's refit: once the configuration is chosen, the registered model learns from
all the labelled images, as scikit-learn's search refits its best estimator.

After the confirm phase and the champion's ablation (`search.study.evidence`), the champion's
configuration, and the baseline recipe's when the champion is not the recipe (so the test
comparison stays fair: both trained the same way), are trained once more (phase "refit") on
the training + validation images; the test split stays held out. A refit trains exactly the
epochs the confirm phase found for its configuration (the median, rounded, of the epochs its
retrains trained), on the learning-rate schedule of `train.epochs` as the retrains did, with their
batch size and passes an epoch (`search.training.train.with_passes_of`), with the first
confirm seed, and keeps the last epoch's weights: the validation images are training
images now, so they cannot choose an epoch, stop early or prune. For the same reason a refit
has no validation score of its own: its Optuna value is the confirm phase's mean validation
value of its configuration (user attr `value_from: "confirm mean"`).

Each refit is an enqueued Optuna trial like a retrain (any worker runs it, a killed one is
retried), planned by `plan_refit` from `search.study.evidence.plan` and counted in
`Evidence.pending` until it ends. Once the champion's refit is COMPLETE it is `best_trial`,
so `@champion`, `best`, `status` and the report point at it; the test split then says what
the refit gained over the best-seed retrain it refits (`refit_gain`).

Below `search.study.evidence` (which calls it): this module reads the evidence it is handed and
never imports it.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config.schema import StudyConfig
from search.core.records import (
    ABLATE_ATTR,
    EPOCHS_TRAINED_ATTR,
    OVERRIDES_ATTR,
    PHASE_ATTR,
    REFIT,
    SEED_ATTR,
    SOURCE_ATTR,
    TRAIN_IMAGES_ATTR,
    Planned,
)

if TYPE_CHECKING:
    from search.study.arms import Arm, Evidence

__all__ = [
    "CONFIRM_MEAN",
    "REFIT",
    "REFIT_EPOCHS_ATTR",
    "REFIT_OF_ATTR",
    "REFIT_ROLE_ATTR",
    "REFIT_VALUE_ATTR",
    "VALUE_FROM_ATTR",
    "Refits",
    "champion_refit",
    "plan_refit",
    "refit_epochs",
    "refit_gain",
    "refit_pending",
    "refit_tags",
    "refits",
    "wanted_refits",
]

REFIT_EPOCHS_ATTR = "refit_epochs"  # the epochs a refit trains (the confirm phase's median)
REFIT_OF_ATTR = "refit_of"  # the best-seed retrain whose configuration it refits
REFIT_ROLE_ATTR = "refit_role"  # "champion" or "baseline": which model of the verdict it is
REFIT_VALUE_ATTR = "confirm_mean"  # its Optuna value: the configuration's confirm mean
VALUE_FROM_ATTR = "value_from"
CONFIRM_MEAN = "confirm mean"
_PENDING = (TrialState.WAITING, TrialState.RUNNING)


def refit_epochs(arm: Arm) -> int | None:
    """The epochs the confirm phase found for `arm`: the median of the epochs its retrains
    trained (early stopping included), rounded half up (at least 1); None when none recorded
    them. Not their best epochs: a model stopped at its best validation epoch, mid-schedule,
    is a noisy draw, and on 1,000 Fashion-MNIST images a refit stopped there tested 2.4 pt
    below one trained as long as the retrains (CHANGELOG)."""
    epochs = [
        int(t.user_attrs[EPOCHS_TRAINED_ATTR])
        for t in arm.trials.values()
        if t.user_attrs.get(EPOCHS_TRAINED_ATTR) is not None
    ]
    if not epochs:
        return None
    return max(1, math.floor(statistics.median(epochs) + 0.5))


def _key(attrs: Mapping[str, Any]) -> tuple[Any, ...]:
    """A refit's identity: its configuration (source, ablated regularizer), seed, epochs and
    the confirm mean it stands for (its Optuna value). A confirm phase extended later
    (`regsearch confirm --seeds`) that moves that mean or the epochs plans a new refit: the
    old one's value, MLflow metrics and model tags would contradict the verdict."""
    mean = attrs.get(REFIT_VALUE_ATTR)
    return (
        attrs.get(PHASE_ATTR),
        attrs.get(SOURCE_ATTR),
        attrs.get(SEED_ATTR),
        attrs.get(ABLATE_ATTR),
        attrs.get(REFIT_EPOCHS_ATTR),
        round(float(mean), 12) if isinstance(mean, int | float) else None,
    )


def wanted_refits(
    config: StudyConfig, direction: optuna.study.StudyDirection, ev: Evidence | None
) -> list[Planned]:
    """The refits the study wants now, the champion's first: none until the confirm phase
    and the ablation are complete with a champion, or with `search.confirm.refit: false`.
    Each trains its configuration's params with the overrides of its best-seed retrain (the
    recipe's values, an ablated regularizer off) and the first confirm seed."""
    confirm = config.search.confirm
    if confirm is None or not confirm.refit or ev is None or ev.champion is None:
        return []
    if not ev.ablation_complete or ev.todo:
        return []
    arms: list[tuple[str, Arm]] = [("champion", ev.champion)]
    if ev.baseline is not None and ev.baseline is not ev.champion:
        arms.append(("baseline", ev.baseline))
    seed = ev.seeds[0]
    out: list[Planned] = []
    for role, arm in arms:
        epochs, best = refit_epochs(arm), arm.best_trial(direction)
        if epochs is None or best is None or arm.interval is None:
            continue
        attrs: dict[str, Any] = {
            PHASE_ATTR: REFIT,
            SOURCE_ATTR: arm.source,
            SEED_ATTR: seed,
            REFIT_EPOCHS_ATTR: epochs,
            REFIT_OF_ATTR: best.number,
            REFIT_ROLE_ATTR: role,
            REFIT_VALUE_ATTR: arm.interval.mean,
            VALUE_FROM_ATTR: CONFIRM_MEAN,
        }
        if arm.ablate is not None:
            attrs[ABLATE_ATTR] = arm.ablate
        attrs[OVERRIDES_ATTR] = {**(best.user_attrs.get(OVERRIDES_ATTR) or {}), "seed": seed}
        out.append(Planned(dict(arm.params), attrs))
    return out


def plan_refit(
    trials: Sequence[FrozenTrial],
    config: StudyConfig,
    direction: optuna.study.StudyDirection,
    ev: Evidence | None,
) -> list[Planned]:
    """The refits to enqueue now: those wanted that are not enqueued yet (idempotent, as
    `search.study.evidence.plan`)."""
    exists = {_key(t.user_attrs) for t in trials if t.user_attrs.get(PHASE_ATTR) == REFIT}
    return [p for p in wanted_refits(config, direction, ev) if _key(p.user_attrs) not in exists]


def refit_pending(
    trials: Iterable[FrozenTrial],
    config: StudyConfig,
    direction: optuna.study.StudyDirection,
    ev: Evidence | None,
) -> int:
    """Refits wanted that have not ended (not enqueued yet, waiting or running): what
    `Evidence.pending` adds, so the runner waits for them."""
    ended: set[tuple[Any, ...]] = set()
    running: set[tuple[Any, ...]] = set()
    for t in trials:
        if t.user_attrs.get(PHASE_ATTR) == REFIT:
            (running if t.state in _PENDING else ended).add(_key(t.user_attrs))
    wanted = {_key(p.user_attrs) for p in wanted_refits(config, direction, ev)}
    return len(wanted - (ended - running))


@dataclass(frozen=True)
class Refits:
    """The COMPLETE refits of the study's current answer (None: not run, not ended or not
    wanted). `baseline` is the champion's own refit when the champion is the recipe."""

    champion: FrozenTrial | None = None
    baseline: FrozenTrial | None = None


def refits(
    trials: Iterable[FrozenTrial],
    config: StudyConfig | None,
    direction: optuna.study.StudyDirection,
    ev: Evidence | None,
) -> Refits:
    if config is None:
        return Refits()
    done: dict[tuple[Any, ...], FrozenTrial] = {}
    for t in trials:  # by number: a retried refit's COMPLETE run is the last one
        if t.state == TrialState.COMPLETE and t.user_attrs.get(PHASE_ATTR) == REFIT:
            done[_key(t.user_attrs)] = t
    found = {
        str(p.user_attrs[REFIT_ROLE_ATTR]): done.get(_key(p.user_attrs))
        for p in wanted_refits(config, direction, ev)
    }
    champion = found.get("champion")
    if ev is not None and ev.champion is not None and ev.champion is ev.baseline:
        return Refits(champion, champion)
    return Refits(champion, found.get("baseline"))


def champion_refit(
    trials: Iterable[FrozenTrial],
    config: StudyConfig | None,
    direction: optuna.study.StudyDirection,
    ev: Evidence | None,
) -> FrozenTrial | None:
    """The champion's COMPLETE refit: the study's best trial once there is one."""
    return refits(trials, config, direction, ev).champion


def refit_tags(trial: FrozenTrial) -> dict[str, str]:
    """The registered model version's tags that say it is a refit (empty for any other)."""
    attrs = trial.user_attrs
    if attrs.get(PHASE_ATTR) != REFIT:
        return {}
    images = attrs.get(TRAIN_IMAGES_ATTR)
    return {
        "trained_on": "train+val" + (f" ({int(images)} images)" if images is not None else ""),
        "refit_of": str(attrs.get(REFIT_OF_ATTR)),
        "refit_epochs": str(attrs.get(REFIT_EPOCHS_ATTR)),
    }


def refit_gain(refit: Any, before: Any, data: Any, *, resamples: int = 5000) -> dict[str, Any]:
    """The test split's word on the refit: the model before it (the best-seed retrain it
    refits, trained on the training split alone) as `before_refit` ({accuracy, ece, nll}) and
    the refit's accuracy gain over it as `refit_gain`, with a 95% paired bootstrap interval
    over the test images. Models are `torch.nn.Module`s; `data` a `Dataset`."""
    from search.core.stats import paired_bootstrap
    from search.training.evaluation import evaluate_full

    device = data.test.x.device
    mine = evaluate_full(refit.to(device), data.test, max_value=data.max_value)
    theirs = evaluate_full(before.to(device), data.test, max_value=data.max_value)
    gain, low, high = paired_bootstrap(
        mine.correct.tolist(), theirs.correct.tolist(), resamples=resamples
    )
    return {
        "before_refit": {"accuracy": theirs.accuracy, "ece": theirs.ece, "nll": theirs.loss},
        "refit_gain": {
            "mean": gain,
            "low": low,
            "high": high,
            "method": f"paired bootstrap over {len(data.test)} test images ({resamples} resamples)",
        },
    }
