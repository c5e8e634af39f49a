"""The Optuna objective: sample a `TrialConfig`, train, report every epoch, record the outcome.

Thin on purpose: the space, the loop, the tracker and the progress display are separate pieces
that meet here.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import optuna
import torch
from optuna.trial import TrialState

from search.config.schema import StudyConfig, TrialConfig
from search.config.space import space_of
from search.core.errors import first_line
from search.core.records import (
    BASELINE,
    BEST_EPOCH_ATTR,
    BEST_VALUE_ATTR,
    CHAMPION_ERROR_ATTR,
    EPOCHS_TRAINED_ATTR,
    OVERRIDES_ATTR,
    PHASE_ATTR,
    REFIT,
    RUN_ID_ATTR,
    SEARCH,
    STOP_REASON_ATTR,
    SURPLUS,
    TIEBREAK_ATTR,
    TRACKING_ERROR,
    TRAIN_ACCURACY_ATTR,
    TRAIN_IMAGES_ATTR,
    VAL_ACCURACY_ATTR,
    WORKER_ATTR,
    is_budget_trial,
)
from search.core.signals import absorbing_interrupts
from search.data.dataset import Dataset
from search.study.evidence import ABLATION, CONFIRM, SPLIT_ATTR
from search.study.refit import REFIT_EPOCHS_ATTR, REFIT_VALUE_ATTR
from search.study.storage import describe_storage_error, enqueue_retry, storage_error_of
from search.study.studies import beats_best
from search.tracking.champion import Candidate, promote
from search.training.train import (
    COMPILE_SECONDS,
    NONFINITE,
    EpochStats,
    Trainer,
    TrainResult,
    train,
    with_passes_of,
)

if TYPE_CHECKING:
    from optuna.artifacts._protocol import ArtifactStore

    from search.tracking.runs import Tracker

__all__ = [
    "Objective",
    "RunListener",
    "SurplusTrial",
    "report_epoch",
]

_log = logging.getLogger(__name__)
PRUNED, INTERRUPTED = "pruned", "interrupted"
OUT_OF_MEMORY, STORAGE_ERROR = "out_of_memory", "storage_error"


def _is_out_of_memory(exc: BaseException) -> bool:
    """CUDA raises `torch.OutOfMemoryError`; the CPU allocator a plain RuntimeError."""
    return isinstance(exc, torch.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc)
    )


class SurplusTrial(Exception):
    """Workers that start a trial at the same moment may overshoot `n_trials`; the trial that
    finds `n_trials` finished-or-running trials numbered below it gives way (FAIL, untrained)."""


class RunListener(Protocol):
    """Live progress (the rich display, the process title)."""

    def trial_started(self, number: int, epochs: int) -> None: ...

    def epoch_done(self, number: int, stats: EpochStats) -> None: ...


def report_epoch(trial: optuna.Trial, value: float, step: int, *, can_prune: bool) -> bool:
    """Report one epoch's value; True when the pruner says stop. A study without a pruner
    skips the question, which costs a storage read."""
    trial.report(value, step)
    return can_prune and math.isfinite(value) and trial.should_prune()


class Objective:
    def __init__(
        self,
        config: StudyConfig,
        data: Dataset,
        *,
        device: torch.device,
        tracker: Tracker | None = None,
        listeners: Sequence[RunListener] = (),
        artifact_store: ArtifactStore | None = None,
        trainer: Trainer | None = None,
    ) -> None:
        self.config = config
        # None: `search.training.train.train`, looked up per trial; the pruning benchmark replays
        # recorded curves instead.
        self.trainer = trainer
        self.space = space_of(config)
        self.data = data.to(device)  # once per worker, not once per trial
        self._splits: dict[int, Dataset] = {0: self.data}  # the confirm phase's, by index
        self._refit: Dataset | None = None  # training + validation images, for refits
        self.device = device
        self.tracker = tracker
        self.listeners = tuple(listeners)
        self.artifact_store = artifact_store  # learning-curve figures for optuna-dashboard
        # Trials whose checkpoint is saved, waiting for Optuna's tell; `after_tell` takes them.
        self._candidates: dict[int, Candidate] = {}
        # The trial this worker runs, until Optuna has stored its outcome (`after_tell`).
        self.running_trial_id: int | None = None
        self._run_id: str | None = None  # the running trial's MLflow run
        # With `train.compile`: each trial's first-step seconds, in the order this worker ran
        # them (the first holds the compilation; `compile_note` says so once per worker).
        self.compile_seconds: list[float] = []

    def compile_note(self) -> str | None:
        """One line on what `torch.compile` cost this worker, or None without compile."""
        if not self.compile_seconds:
            return None
        first, *rest = self.compile_seconds
        later = f"; the next {len(rest)} reused it (first step ≤ {max(rest):.1f} s)" if rest else ""
        return f"torch.compile: {first:.1f} s in this worker's first trial{later}"

    def __call__(self, trial: optuna.Trial) -> float:
        if self._is_surplus(trial):
            trial.set_user_attr(STOP_REASON_ATTR, SURPLUS)
            raise SurplusTrial(f"trial {trial.number}: the study's n_trials is already reached")
        self.running_trial_id = trial._trial_id
        trial.set_user_attr(WORKER_ATTR, f"{socket.gethostname()}:{os.getpid()}")
        phase = trial.user_attrs.get(PHASE_ATTR)
        if phase is None:
            phase = SEARCH
            trial.set_user_attr(PHASE_ATTR, phase)
        self._run_id = None
        try:
            return self._trial(trial, phase)
        except KeyboardInterrupt:
            self._interrupted(trial)
            raise

    def _interrupted(self, trial: optuna.Trial) -> None:
        """Ctrl+C / SIGTERM at any point of a trial (training, or writing its outcome): the
        next launch reruns it, with the same params, phase and seed — a confirm retrain, an
        ablation or the baseline would otherwise be lost for good. The retry is enqueued
        first, and a second signal meanwhile is absorbed: a terminal's Ctrl+C reaches every
        worker, and `run_workers` passes it on to them too."""
        with absorbing_interrupts():
            with contextlib.suppress(Exception):  # the storage may be what went away
                enqueue_retry(trial.study, trial._trial_id)
            with contextlib.suppress(Exception):
                self._finish(trial, self._run_id, "KILLED", {STOP_REASON_ATTR: INTERRUPTED})

    def _trial(self, trial: optuna.Trial, phase: str) -> float:
        run_id: str | None = None
        try:  # everything that can fail is inside: every FAIL records its reason
            cfg, params = self._trial_config(trial, phase)
            if self.tracker:
                run_id = self._run_id = self.tracker.start_trial(trial.number, params, phase=phase)
                trial.set_user_attr(RUN_ID_ATTR, run_id)
            for listener in self.listeners:
                listener.trial_started(trial.number, cfg.train.epochs)
            # The baseline and the confirm phase's retrains are yardsticks: never pruned.
            result = self._train(trial, cfg, run_id, can_prune=phase == SEARCH)
        except Exception as exc:
            if _is_out_of_memory(exc):
                # The failed trial's tensors die with its frames; hand the cached blocks back
                # so the next trial starts from a clean device.
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                reason = f"{OUT_OF_MEMORY}: {first_line(exc)}"
            elif storage_error_of(exc) is not None:
                reason = f"{STORAGE_ERROR}: {describe_storage_error(exc)}"
            else:
                reason = f"error: {first_line(exc, typed=True)}"
            failure = {STOP_REASON_ATTR: reason[:500]}
            try:
                self._finish(trial, run_id, "FAILED", failure)
            except Exception as finish_exc:  # the storage is down: the cause is what counts
                _log.warning("trial %d: outcome not recorded: %s", trial.number, finish_exc)
            raise

        self._upload_curve(trial, result)
        summary: dict[str, Any] = {
            STOP_REASON_ATTR: result.stop_reason,
            EPOCHS_TRAINED_ATTR: result.epochs_trained,
            BEST_EPOCH_ATTR: result.best_epoch,
        }
        if result.compile_seconds is not None:
            summary[COMPILE_SECONDS] = round(result.compile_seconds, 3)
            self.compile_seconds.append(result.compile_seconds)
        if result.best_stats is not None:
            summary[TRAIN_ACCURACY_ATTR] = result.best_stats.train_accuracy
            if phase != REFIT:  # a refit trained on its validation images: no score on them
                summary[VAL_ACCURACY_ATTR] = result.best_stats.val_accuracy
                summary[TIEBREAK_ATTR] = result.best_stats.val_loss
        if result.stop_reason in (PRUNED, NONFINITE) or result.best_value is None:
            # Optuna stores a pruned trial's value as its last reported epoch's (optuna 5.1:
            # `study/_tell.py`, `_tell_with_warning`) and refuses a value told with PRUNED:
            # the best epoch's value is kept beside it, as a user attr and in MLflow.
            if result.best_value is not None and math.isfinite(result.best_value):
                summary[BEST_VALUE_ATTR] = float(result.best_value)
            self._finish(trial, run_id, "PRUNED", summary)
            raise optuna.TrialPruned(f"{result.stop_reason} at epoch {result.epochs_trained}")

        value = float(result.best_value)
        if phase == REFIT:  # no held-out validation: its configuration's confirm mean
            value = float(trial.user_attrs[REFIT_VALUE_ATTR])
        tiebreak = summary.get(TIEBREAK_ATTR)
        # The baseline, confirm and ablation retrains keep their weights: the confirmed
        # champion (an ablated configuration when it beat the champion) and the recipe it is
        # compared with are evaluated on the test split from them.
        keep = phase in (BASELINE, CONFIRM, ABLATION, REFIT) or (
            phase == SEARCH and beats_best(trial.study, value, tiebreak)
        )
        if run_id is not None and self.tracker and keep:
            # Weights first, while the trial runs: the model is registered only once Optuna
            # has recorded the trial COMPLETE (`after_tell`), and from this checkpoint by
            # `search.tracking.champion.repair` if the process dies in between.
            try:
                self.tracker.save_checkpoint(run_id, result)
                self._candidates[trial.number] = Candidate(trial.number, run_id, value, result)
            except Exception as exc:  # the trial trained fine: keep it, report the loss
                summary[CHAMPION_ERROR_ATTR] = first_line(exc, typed=True)
                _log.warning("trial %d: checkpoint not saved: %s", trial.number, exc)
        summary["value"] = value
        self._finish(trial, run_id, "COMPLETE", summary)
        return value

    def _trial_config(self, trial: optuna.Trial, phase: str) -> tuple[TrialConfig, dict[str, Any]]:
        """The trial's config and the values it trains with (what MLflow records): sampled or
        enqueued params, then the trial's overrides (the baseline recipe; a retrain's seed and
        the regularizer its ablation switches off)."""
        overrides = dict(trial.user_attrs.get(OVERRIDES_ATTR) or {})
        if not overrides and phase == BASELINE:  # studies from before overrides were stored
            overrides = dict(self.space.baseline_values() or {})
        seed = overrides.pop("seed", None)
        cfg = self.space.sample(trial, overrides)
        params = {**self.space.fixed_values(), **trial.params, **overrides}
        if seed is not None:
            cfg = replace(cfg, train=cfg.train.model_copy(update={"seed": int(seed)}))
            params["seed"] = int(seed)
        return cfg, params

    def after_tell(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Optuna callback (the trial's outcome is stored): a COMPLETE candidate becomes the
        champion if it is still the study's best. Never raises: the trial's outcome stands."""
        self.running_trial_id = None
        candidate = self._candidates.pop(trial.number, None)
        if candidate is None or self.tracker is None or trial.state != TrialState.COMPLETE:
            return
        try:
            promote(self.tracker, study, candidate, self.data)
        except Exception as exc:
            reason = first_line(exc, typed=True)
            _log.warning("trial %d: champion not registered: %s", trial.number, reason)
            with contextlib.suppress(Exception):
                study.set_user_attr(CHAMPION_ERROR_ATTR, f"trial {trial.number}: {reason}")

    def _upload_curve(self, trial: optuna.Trial, result: TrainResult) -> None:
        """Attach the learning curve while the trial still runs (Optuna refuses later)."""
        if self.artifact_store is None or not result.history:
            return
        from search.report.dashboard import upload_learning_curve

        try:
            upload_learning_curve(
                trial.study,
                trial,
                result.history,
                artifact_store=self.artifact_store,
                best_epoch=result.best_epoch,
            )
        except Exception as exc:  # a missing figure must not fail the trial
            _log.warning("trial %d: learning-curve upload failed: %s", trial.number, exc)

    def _is_surplus(self, trial: optuna.Trial) -> bool:
        """A search trial beyond the budget (a confirm-phase retrain never is)."""
        if trial.user_attrs.get(PHASE_ATTR, SEARCH) != SEARCH:
            return False
        states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
        ahead = trial.study.get_trials(deepcopy=False, states=states)
        below = sum(t.number < trial.number and is_budget_trial(t) for t in ahead)
        return below >= self.config.search.n_trials

    def _train(
        self, trial: optuna.Trial, cfg: TrialConfig, run_id: str | None, *, can_prune: bool
    ) -> TrainResult:
        metric = cfg.objective.metric
        can_prune = can_prune and self.config.search.pruner.name != "none"
        refit = trial.user_attrs.get(PHASE_ATTR) == REFIT

        def on_epoch(stats: EpochStats) -> str | None:
            stop = report_epoch(trial, getattr(stats, metric), stats.epoch, can_prune=can_prune)
            if self.tracker and run_id is not None:
                self.tracker.log_epoch(run_id, stats, seen_val=refit)
            for listener in self.listeners:
                listener.epoch_done(trial.number, stats)
            return PRUNED if stop else None

        if refit:  # `search.study.refit`
            data = self._refit_data()
            trial.set_user_attr(TRAIN_IMAGES_ATTR, len(data.train))
            epochs = int(trial.user_attrs[REFIT_EPOCHS_ATTR])
            # The passes an epoch of the training the refit stands for, over more images.
            budget = with_passes_of(cfg.train, len(self.data.train), len(data.train))
            return train(
                replace(cfg, train=budget),
                data,
                device=self.device,
                on_epoch=on_epoch,
                stop_after=epochs,
                keep="last",
            )
        trainer = self.trainer or train
        return trainer(cfg, self._split(trial), device=self.device, on_epoch=on_epoch)

    def _refit_data(self) -> Dataset:
        """A refit's data: training + validation images (the test split held out)."""
        if self._refit is None:
            self._refit = self.data.with_val_in_train()
        return self._refit

    def _split(self, trial: optuna.Trial) -> Dataset:
        """The data a trial trains on: the study's split, or the confirm phase's own split for
        its seed (`search.study.evidence`, small validation splits), made once per worker."""
        index = int(trial.user_attrs.get(SPLIT_ATTR) or 0)
        if index not in self._splits:
            self._splits[index] = self.data.resplit(index)
        return self._splits[index]

    def _finish(
        self, trial: optuna.Trial, run_id: str | None, state: str, summary: Mapping[str, Any]
    ) -> None:
        for key, value in summary.items():
            if key != "value" and value is not None:
                trial.set_user_attr(key, value)
        if state == "COMPLETE" and summary.get("value") is not None:
            # The best-value attr on every finished trial, so that optuna-dashboard's column
            # of it (`search.report.dashboard`) compares pruned trials with complete ones.
            trial.set_user_attr(BEST_VALUE_ATTR, summary["value"])
        if self.tracker and run_id is not None:
            try:
                self.tracker.end_trial(run_id, state=state, summary=summary)
            except Exception as exc:  # a tracking outage must not undo a trained trial
                reason = first_line(exc, typed=True)
                trial.set_user_attr(TRACKING_ERROR, reason)
                _log.warning("trial %d: MLflow run not closed: %s", trial.number, reason)
