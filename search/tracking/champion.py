"""The `@champion` alias: moved only for a trial Optuna has recorded COMPLETE, one worker at a
time, and repaired on the next launch when a kill came in between.

The order for a trial that may be a new study best: its weights are saved as a checkpoint in
its MLflow run *before* Optuna records the outcome (so they survive a kill after it), then,
from an Optuna callback *after* the outcome is stored, under a study-wide lock, the study is
read again and the model is registered only if this trial is still `best_trial` — so the alias
never points at a trial that ends FAIL, two workers never interleave their read and write, and
a worker's first trial registers nothing unless it is the study's best. A kill between the
two steps leaves a COMPLETE best trial without the alias; `repair` registers it from its
checkpoint at the next launch and when the study finishes, so `best` and `@champion` agree
once the study is idle.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import optuna

from search.core.records import (
    CHAMPION_ATTR,
    CHAMPION_URI_ATTR,
    MODEL_URI_ATTR,
    PHASE_ATTR,
    REFIT,
    RUN_ID_ATTR,
    TEST_ACCURACY_ATTR,
    TIEBREAK_ATTR,
)
from search.study.refit import refit_tags
from search.study.storage import study_lock
from search.study.studies import best_trial

if TYPE_CHECKING:
    from search.data.dataset import Dataset
    from search.tracking.registry import Registry
    from search.tracking.runs import Tracker
    from search.training.train import TrainResult

__all__ = [
    "CHAMPION_ATTR",
    "Candidate",
    "champion_uri",
    "evaluate_on_test",
    "model_uri_of",
    "promote",
    "repair",
    "settle",
]

_log = logging.getLogger(__name__)
# CHAMPION_ATTR, the study's record of the champion's version: a finished trial's own
# attributes can no longer be written when the alias moves.
_LOCK = "champion"


def model_uri_of(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> str | None:
    """The registered model version of `trial`, if it is (or was) the champion."""
    champion = study.user_attrs.get(CHAMPION_ATTR) or {}
    if champion.get("trial") == trial.number:
        return str(champion["uri"])
    return trial.user_attrs.get(MODEL_URI_ATTR)  # studies of earlier versions


def _record(tracker: Tracker, study: optuna.Study, number: int, run_id: str, uri: str) -> None:
    """The study's record of the version `@champion` points at (called once it does): `best`
    names the alias from the first champion on, not only once the study has ended."""
    study.set_user_attr(CHAMPION_ATTR, {"trial": number, "uri": uri})
    study.set_user_attr(CHAMPION_URI_ATTR, champion_uri(tracker.study_name))
    tracker.client.set_tag(run_id, "model_uri", uri)


@dataclass(frozen=True)
class Candidate:
    """A trial that was the study's best when it ended, its checkpoint saved, waiting for
    Optuna to record it COMPLETE."""

    number: int
    run_id: str
    value: float
    result: TrainResult


def promote(
    tracker: Tracker, study: optuna.Study, candidate: Candidate, data: Dataset
) -> str | None:
    """Register the candidate (already COMPLETE) and move the alias to it, if it is still the
    study's best when read under the lock; its URI, or None."""
    with study_lock(study, _LOCK):
        best = best_trial(study)
        if best is None or best.number != candidate.number:
            return None  # another worker's trial is better by now
        # A refit's value is its configuration's confirm mean, which the alias's rule for
        # values of one training run (`Registry.move_alias`) cannot weigh: it is the best
        # trial, read under the lock, so the alias moves.
        tags = refit_tags(best)
        tracker.flush(candidate.run_id)  # the run's curve before its model version
        uri = tracker.registry.register(
            candidate.run_id,
            number=candidate.number,
            value=candidate.value,
            result=candidate.result,
            data=data,
            checkpoint=False,
            # Another study's model holding the alias is no rival: its value is not this
            # study's to weigh.
            force=bool(tags) or _foreign_alias(tracker, study),
            tiebreak=math.inf if tags else None,  # a refit has no validation loss of its own
        )
        if uri:
            if tags:
                tracker.registry.tag_version(uri, tags)
            # Registered, but the alias stays where it is when it holds a refit whose confirm
            # mean outranks this value (a study extended past its confirm phase): the study
            # records the version `@champion` points at, never one it does not.
            if tracker.registry.champion_run() == candidate.run_id:
                _record(tracker, study, candidate.number, candidate.run_id, uri)
        return uri


def _foreign_alias(tracker: Tracker, study: optuna.Study) -> bool:
    """Whether `@champion` holds a model of no trial of this study (one of another study of
    the same name: the registered model is named after the study)."""
    held = tracker.registry.champion_run()
    if held is None:
        return False
    return all(t.user_attrs.get(RUN_ID_ATTR) != held for t in study.get_trials(deepcopy=False))


def repair(tracker: Tracker, study: optuna.Study, data: Dataset) -> str | None:
    """Point the alias at `best_trial` if it does not (a kill came between the trial's outcome
    and the alias); the repaired URI, or None when nothing needed doing or could be done."""
    if not tracker.config.tracking.register_model:
        return None
    with study_lock(study, _LOCK):
        best = best_trial(study)
        if best is None or best.value is None:
            return None
        current, held, held_run = tracker.registry.champion()
        run_id = best.user_attrs.get(RUN_ID_ATTR)
        if current == best.number and held_run == run_id:
            recorded = study.user_attrs.get(CHAMPION_ATTR) or {}
            if held and run_id and recorded.get("trial") != best.number:
                _record(tracker, study, best.number, run_id, held)  # the record lagged
                return held
            return None
        if not run_id:
            return None
        uri = tracker.registry.point_at(best.number, run_id)  # registered before: moved back
        if uri:
            _record(tracker, study, best.number, run_id, uri)
            _log.warning(
                "@champion pointed at trial %s, not the best trial %d: moved", current, best.number
            )
            return uri
        try:
            result = tracker.registry.checkpoint_result(run_id)
        except Exception:  # never a candidate (no checkpoint): nothing to register
            return None
        tracker.flush(run_id)
        tags = refit_tags(best)
        uri = tracker.registry.register(
            run_id,
            number=best.number,
            value=float(best.value),
            result=result,
            data=data,
            checkpoint=False,
            force=True,
            tiebreak=math.inf if tags else best.user_attrs.get(TIEBREAK_ATTR),
        )
        if uri:
            if tags:
                tracker.registry.tag_version(uri, tags)
            _record(tracker, study, best.number, run_id, uri)
            _log.warning(
                "@champion pointed at trial %s, not the best trial %d: moved", current, best.number
            )
        return uri


def champion_uri(study_name: str) -> str:
    """`models:/<study>@champion`: the URI MLflow loads the study's champion from."""
    from search.tracking.registry import CHAMPION

    return f"models:/{study_name}@{CHAMPION}"


def settle(tracker: Tracker, study: optuna.Study, data: Dataset) -> str | None:
    """The end of a finished study: the alias repaired (`repair`), then the champion's and
    the baseline recipe's one evaluation on the test split (`evaluate_on_test`, from their
    checkpoints: also with `tracking.register_model: false`), kept in the study as
    `test_accuracy` and, with a registered model, `champion_uri`; the champion's URI, or None
    without one."""
    repair(tracker, study, data)
    test = evaluate_on_test(tracker.registry, study, data)
    if test is None:
        return None
    study.set_user_attr(TEST_ACCURACY_ATTR, test["champion"]["accuracy"])
    if not tracker.config.tracking.register_model:
        return None
    uri = champion_uri(tracker.study_name)
    study.set_user_attr(CHAMPION_URI_ATTR, uri)
    return uri


def evaluate_on_test(
    registry: Registry, study: optuna.Study, data: Dataset
) -> dict[str, Any] | None:
    """The champion's and the baseline recipe's one evaluation on the test split
    (`search.study.evidence.held_out`), kept in the study; computed again only when the
    champion or the baseline's model changes (a study extended later). A refit champion
    (`search.study.refit`) is compared with the recipe's refit, and with the best-seed retrain it
    refits (`before_refit`, `refit_gain`)."""
    # Workers that finish together evaluate once: the second reads the first's result.
    with study_lock(study, "test-evidence"):
        return _test_evidence(registry, study, data)


def _test_evidence(registry: Registry, study: optuna.Study, data: Dataset) -> dict[str, Any] | None:
    from mlflow.exceptions import MlflowException

    from search.study.evidence import (
        BOOTSTRAP_RESAMPLES,
        TEST_ATTR,
        baseline_model_trial,
        held_out,
    )
    from search.study.refit import refit_gain
    from search.tracking.registry import load_checkpoint

    champion = best_trial(study)
    if champion is None or not champion.user_attrs.get(RUN_ID_ATTR):
        return None
    base = baseline_model_trial(study)
    before = None
    if champion.user_attrs.get(PHASE_ATTR) == REFIT:
        base, before = _refit_comparison(study, champion, base)
    key = {
        "champion_trial": champion.number,
        "baseline_trial": None if base is None else base.number,
        "before_refit_trial": None if before is None else before.number,
    }
    stored = study.user_attrs.get(TEST_ATTR)
    if isinstance(stored, dict) and all(stored.get(k) == v for k, v in key.items()):
        return stored
    try:
        model = load_checkpoint(registry.client, champion.user_attrs[RUN_ID_ATTR])
    except (MlflowException, OSError) as exc:
        _log.warning("champion not evaluated on the test split: %s", exc)
        return None
    base_model = None
    if base is not None and base.number != champion.number:
        try:
            base_model = load_checkpoint(registry.client, base.user_attrs[RUN_ID_ATTR])
        except (KeyError, MlflowException, OSError):  # e.g. a run of an older version
            base_model = None
    result = {**key, **held_out(model, base_model, data)}
    if base is not None and base.number == champion.number:  # the recipe won
        result["baseline"] = dict(result["champion"])
        result["gain"] = {"mean": 0.0, "low": 0.0, "high": 0.0, "method": "same model"}
    note = ""
    if before is not None:
        try:
            before_model = load_checkpoint(registry.client, before.user_attrs[RUN_ID_ATTR])
        except (KeyError, MlflowException, OSError) as exc:
            _log.warning("the model before the refit not evaluated on the test split: %s", exc)
        else:
            result.update(refit_gain(model, before_model, data, resamples=BOOTSTRAP_RESAMPLES))
        tags = refit_tags(champion)
        note = (
            f"A refit on {tags['trained_on'].replace('+', ' + ')}, {tags['refit_epochs']} "
            f"epochs, of trial {tags['refit_of']}'s configuration (its value: that "
            "configuration's mean over the confirm phase's seeds)."
        )
    study.set_user_attr(TEST_ATTR, result)
    if registry.config.tracking.register_model:
        registry.describe_champion(
            result["champion"]["accuracy"],
            len(data.test),
            run_id=champion.user_attrs[RUN_ID_ATTR],
            note=note,
            tags=refit_tags(champion),
        )
    return result


def _refit_comparison(
    study: optuna.Study, champion: optuna.trial.FrozenTrial, base: optuna.trial.FrozenTrial | None
) -> tuple[optuna.trial.FrozenTrial | None, optuna.trial.FrozenTrial | None]:
    """For a refit champion: the baseline recipe's model, its refit when that ran (trained
    the same way; the champion itself when the recipe won) else `base`; and the best-seed
    retrain the champion refits (trained on the training split alone)."""
    from search.study.evidence import study_config, study_evidence
    from search.study.refit import REFIT_OF_ATTR, refits

    trials = study.get_trials(deepcopy=False)
    found = refits(trials, study_config(study), study.direction, study_evidence(study))
    by_number = {t.number: t for t in trials}
    return found.baseline or base, by_number.get(champion.user_attrs.get(REFIT_OF_ATTR, -1))
