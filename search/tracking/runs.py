"""MLflow tracking: one parent run per study, one nested run per trial, the champion model.

Everything goes through `MlflowClient` with explicit run ids (no fluent active-run state), so
several studies or workers never step on each other. Per-epoch metrics are buffered and
written with one `log_batch` every few seconds and at the end of the trial, so logging does
not stall training. The champion is logged in MLflow's torch.export (`pt2`) format with explicit
pip requirements and signature: loading it needs neither `search` nor `models`, and MLflow's
requirement inference (seconds per model) never runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import optuna
from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.exceptions import MlflowException

from search.config.overrides import flatten
from search.config.schema import StudyConfig, safe_study_name
from search.core.errors import UserError, first_line
from search.core.records import (
    BEST_EPOCH_ATTR,
    BEST_VALUE_ATTR,
    EPOCHS_TRAINED_ATTR,
    MODEL_URI_ATTR,
    RUN_ID_ATTR,
    STOP_REASON_ATTR,
    TRACKING_ERROR,
    best_value_of,
)
from search.core.urls import DEFAULT_TRACKING_URI, redact_url, resolve_tracking_uri, sqlite_path
from search.tracking.mlflow_store import create_store, rebuild_if_half_made
from search.tracking.registry import Registry
from search.training.train import COMPILE_SECONDS, EpochStats, TrainResult

__all__ = ["DEFAULT_TRACKING_URI", "Tracker", "resolve_tracking_uri"]

# MLflow 3's UI opens an experiment without this tag in its GenAI view (traces, "Detect
# issues"); with it, on the runs table and their charts.
EXPERIMENT_KIND_TAG, _TRAINING = "mlflow.experimentKind", "custom_model_development"
PARENT_ATTR = "mlflow_parent_run_id"
PARENT_TOKEN_ATTR = "mlflow_parent_token"  # written before the parent run exists; see below
_TOKEN_TAG = "regsearch.parent_token"
_PARENT_LOCK = "mlflow-parent"  # `study_lock` name for finding or creating the parent run
_MAX_METRICS_PER_BATCH = 1000  # MLflow's log_batch limit
CURRENT_PREFIX = "current."  # parent-run tag: a param's value changed by a later launch
SEEN_PREFIX = "seen_"  # a refit's per-epoch `val_*` metrics: on images it trained on
_ENDED = (
    optuna.trial.TrialState.COMPLETE,
    optuna.trial.TrialState.PRUNED,
    optuna.trial.TrialState.FAIL,
)
# MLflow has no "pruned": a pruned trial's run ends KILLED (stopped before its last epoch, not
# a green FINISHED tick in the UI beside the trials that trained to the end); its `state` tag
# says PRUNED.
_RUN_STATUS = {"COMPLETE": "FINISHED", "PRUNED": "KILLED", "FAILED": "FAILED", "KILLED": "KILLED"}
_log = logging.getLogger(__name__)
# MLflow's tqdm bars would interleave with our progress display.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# A tracking server that goes away mid-study costs each call seconds, not MLflow's default
# minutes (7 retries with back-off 2, 120 s timeout); the trial's outcome stands either way.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "3")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _experiment(client: MlflowClient, name: str, local_dir: Path | None) -> str:
    """The study's experiment (named as the study): found, restored if deleted, or created
    with its artifacts beside a local store and the tag that opens the UI on its runs."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if EXPERIMENT_KIND_TAG not in found.tags:  # stores of earlier versions
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, _TRAINING)
        return str(found.experiment_id)
    location = (
        (local_dir / "artifacts" / safe_study_name(name)).resolve().as_uri()
        if local_dir is not None
        else None
    )
    try:
        return str(
            client.create_experiment(
                name,
                artifact_location=location,
                tags={EXPERIMENT_KIND_TAG: _TRAINING},  # the UI opens on training runs
            )
        )
    except MlflowException:  # another worker created it a moment ago
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return str(found.experiment_id)


def _parent_run(
    client: MlflowClient, study: optuna.Study, config: StudyConfig, experiment_id: str
) -> str:
    """Re-attach to the study's parent run (its id is kept in the study) or create it.

    Under the study-wide lock: launches that start a new study at the same moment would
    otherwise each read "no parent yet" and create one, splitting the trial runs between
    them. The first creates it and records its id before letting go; the others read it."""
    from search.study.storage import study_lock

    with study_lock(study, _PARENT_LOCK):
        return _find_or_create_parent(client, study, config, experiment_id)


def _find_or_create_parent(
    client: MlflowClient, study: optuna.Study, config: StudyConfig, experiment_id: str
) -> str:
    run_id = study.user_attrs.get(PARENT_ATTR)  # read from the storage, under the lock
    if run_id:
        try:
            run = client.get_run(run_id)
            if run.info.lifecycle_stage != "deleted":
                if run.info.status != "RUNNING":
                    client.update_run(run_id, status="RUNNING")
                _log_config(client, run, config)
                return str(run_id)
        except MlflowException:
            pass  # the tracking store was reset: start a new parent
    # The run and the study are two stores: a launch killed between creating the run and
    # recording its id would leave a RUNNING parent no study points at. So a token goes into
    # the study first and onto the run as a tag; a relaunch finds the run by it and adopts it.
    token = study.user_attrs.get(PARENT_TOKEN_ATTR)
    if not token:
        token = uuid.uuid4().hex
        study.set_user_attr(PARENT_TOKEN_ATTR, token)
    orphans = client.search_runs(
        [experiment_id], filter_string=f"tags.`{_TOKEN_TAG}` = '{token}'", max_results=1
    )
    if orphans:
        run = orphans[0]
        if run.info.status != "RUNNING":
            client.update_run(run.info.run_id, status="RUNNING")
    else:
        tags = {
            "study": study.study_name,
            "role": "study",
            "optuna.study_id": str(study._study_id),
            _TOKEN_TAG: token,
        }
        run = client.create_run(experiment_id, run_name=study.study_name, tags=tags)
    _log_config(client, run, config)
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    return str(run.info.run_id)


def _log_config(client: MlflowClient, run: Any, config: StudyConfig) -> None:
    """The study's config as the parent run's params. A param a resumed launch changed (the
    budget: `--n-trials`, `confirm --seeds`) cannot be logged again (MLflow never rewrites
    one): its current value is the tag `current.<key>`, rewritten each launch."""
    params = {
        k: json.dumps(v) if isinstance(v, list | dict) else str(v)
        for k, v in flatten(config.portable_dict()).items()
        if not k.startswith("space.") and k != "space"
    }
    params.update({f"space.{k}": json.dumps(v) for k, v in config.space.items()})
    logged = run.data.params  # an adopted run may hold them already
    # What the run shows for a logged key: its `current.` tag, else the param itself.
    shown = {k: run.data.tags.get(CURRENT_PREFIX + k, v) for k, v in logged.items()}
    new = [Param(k, v[:6000]) for k, v in params.items() if k not in logged]
    tags = [
        RunTag(CURRENT_PREFIX + k, v[:5000])
        for k, v in params.items()
        if k in shown and shown[k] != v[:5000] and shown[k] != v[:6000]
    ]
    if new or tags:
        client.log_batch(run.info.run_id, params=new, tags=tags)


class Tracker:
    """A study's MLflow runs: a run per trial under the study's parent run, what each epoch
    logs, and the registry of its models (`registry`)."""

    def __init__(
        self,
        client: MlflowClient,
        *,
        study: optuna.Study,
        config: StudyConfig,
        experiment_id: str,
        parent_run_id: str,
        flush_seconds: float = 5.0,
        prewarm: bool = True,
    ) -> None:
        self.client = client
        self.study_name = study.study_name
        self.config = config
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self._pending: dict[str, list[Metric]] = {}  # epoch metrics not yet written
        self._flushed_at: dict[str, float] = {}
        self.flush_seconds = flush_seconds
        self.registry = Registry(
            client,
            study_name=study.study_name,
            config=config,
            experiment_id=experiment_id,
            prewarm=prewarm,
        )

    # ------------------------------------------------------------------ setup
    @classmethod
    def for_study(
        cls,
        study: optuna.Study,
        config: StudyConfig,
        *,
        tracking_uri: str | None,
        prewarm: bool = True,
    ) -> Tracker:
        """The study's tracker: creates the store, experiment and parent run if needed."""
        uri = resolve_tracking_uri(tracking_uri, config.tracking.uri)
        logging.getLogger("mlflow").setLevel(logging.WARNING)  # no table-creation chatter
        # MLflow logs each database error with its traceback before raising it; whoever
        # catches it reports it in one line (a full disk must not print pages).
        logging.getLogger("mlflow.store.db.utils").setLevel(logging.CRITICAL)
        local_db = sqlite_path(uri)
        local_dir = None if local_db is None else local_db.parent
        try:
            if local_db is not None:
                local_db.parent.mkdir(parents=True, exist_ok=True)
                if local_db.exists():
                    rebuild_if_half_made(local_db)
                create_store(local_db)
            mlflow.set_tracking_uri(uri)
            mlflow.set_registry_uri(uri)
            client = MlflowClient(uri, registry_uri=uri)
            experiment_id = _experiment(client, study.study_name, local_dir)
        except (MlflowException, OSError, Exception) as exc:  # bad scheme, unreachable server…
            raise UserError(
                f"cannot use tracking URI {redact_url(uri)}: {first_line(exc)}"
            ) from None
        parent = _parent_run(client, study, config, experiment_id)
        return cls(
            client,
            study=study,
            config=config,
            experiment_id=experiment_id,
            parent_run_id=parent,
            prewarm=prewarm,
        )

    # ------------------------------------------------------------------ a trial's run
    def start_trial(self, number: int, params: Mapping[str, Any], *, phase: str = "search") -> str:
        run = self.client.create_run(
            self.experiment_id,
            run_name=f"trial-{number}" if phase == "search" else f"trial-{number}-{phase}",
            tags={
                "mlflow.parentRunId": self.parent_run_id,
                "study": self.study_name,
                "trial": str(number),
                "phase": phase,
                "state": "RUNNING",
            },
        )
        run_id = str(run.info.run_id)
        if params:
            self.client.log_batch(run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._pending[run_id] = []
        self._flushed_at[run_id] = time.monotonic()
        return run_id

    def log_epoch(self, run_id: str, stats: EpochStats, *, seen_val: bool = False) -> None:
        """Buffer the epoch's metrics (written every `flush_seconds`). `seen_val`: a refit's,
        whose validation images are training images: its `val_*` are logged as
        `seen_val_*`, so that no run is ranked by a validation score on images it learned."""
        now = int(time.time() * 1000)
        pending = self._pending.setdefault(run_id, [])
        pending.extend(
            Metric(
                SEEN_PREFIX + k if seen_val and k.startswith("val_") else k,
                float(v),
                now,
                stats.epoch,
            )
            for k, v in stats.metrics().items()
        )
        if time.monotonic() - self._flushed_at.get(run_id, 0.0) >= self.flush_seconds:
            self.flush(run_id)

    def end_trial(self, run_id: str, *, state: str, summary: Mapping[str, Any]) -> None:
        """Write the run's last epochs and outcome, then end it. Metric `best_value` is the
        best epoch's value (`best_epoch`) of a complete trial (its `value`) and of a pruned one
        (its `BEST_VALUE_ATTR`: Optuna's value of a pruned trial is its last epoch's)."""
        now = int(time.time() * 1000)
        metrics = self._pending.pop(run_id, [])
        self._flushed_at.pop(run_id, None)
        numbers = {
            "best_value": summary.get("value", summary.get(BEST_VALUE_ATTR)),
            **{k: summary.get(k) for k in (BEST_EPOCH_ATTR, EPOCHS_TRAINED_ATTR, COMPILE_SECONDS)},
        }
        for name, number in numbers.items():
            if isinstance(number, int | float) and not isinstance(number, bool):
                metrics.append(Metric(name, float(number), now, 0))
        optuna_state = "FAIL" if state in ("FAILED", "KILLED") else state
        tags = [RunTag("state", optuna_state)]
        if summary.get(STOP_REASON_ATTR):
            tags.append(RunTag("stop_reason", str(summary[STOP_REASON_ATTR])[:5000]))
        if summary.get(MODEL_URI_ATTR):
            tags.append(RunTag("model_uri", str(summary[MODEL_URI_ATTR])))
        try:
            for start in range(0, max(1, len(metrics)), _MAX_METRICS_PER_BATCH):
                chunk = metrics[start : start + _MAX_METRICS_PER_BATCH]
                self.client.log_batch(run_id, metrics=chunk, tags=tags if start == 0 else [])
        finally:
            self.client.set_terminated(run_id, status=_RUN_STATUS[state])

    def flush(self, run_id: str) -> None:
        """Write the buffered epoch metrics in one call. MLflow's own async queue is not used:
        `set_terminated` shuts its threads down, costing ~1 s per trial."""
        metrics = self._pending.get(run_id)
        self._flushed_at[run_id] = time.monotonic()
        if not metrics:
            return
        self._pending[run_id] = []
        try:
            for start in range(0, len(metrics), _MAX_METRICS_PER_BATCH):
                self.client.log_batch(
                    run_id, metrics=metrics[start : start + _MAX_METRICS_PER_BATCH]
                )
        except MlflowException as exc:  # a lost curve point must not fail the trial
            _log.warning("MLflow logging for run %s failed: %s", run_id, redact_url(str(exc)))

    def save_checkpoint(self, run_id: str, result: TrainResult) -> None:
        self.registry.save_checkpoint(run_id, result)

    # ------------------------------------------------------------------ end of a launch
    def close(self, study: optuna.Study, *, finished: bool) -> bool:
        """Flush, and mark orphaned trial runs KILLED. True when the study is done and no
        other worker still runs a trial: then the caller settles the champion and finishes
        the parent run (`finish_parent`); a launch that stops early marks it KILLED."""
        for run_id in list(self._pending):
            self.flush(run_id)
        self._close_orphans(study)
        running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        if not finished:
            if not running:
                self.client.set_terminated(self.parent_run_id, status="KILLED")
            return False
        return not running  # other workers still run trials: the last one finishes the parent

    def parent_finished(self) -> bool:
        """Whether the parent run is FINISHED: every launch marks it RUNNING as it attaches
        (`_find_or_create_parent`), so at the end of one it means another worker finished it."""
        status = self.client.get_run(self.parent_run_id).info.status
        return bool(status == RunStatus.to_string(RunStatus.FINISHED))

    def finish_parent(self, *, metrics: Mapping[str, float], tags: Mapping[str, str]) -> None:
        """Log the study's outcome (the verdict and its figures) on the parent run and mark
        it FINISHED."""
        now = int(time.time() * 1000)
        self.client.log_batch(
            self.parent_run_id,
            metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
            tags=[RunTag(k, v) for k, v in tags.items()],
        )
        self.client.set_terminated(
            self.parent_run_id, status=RunStatus.to_string(RunStatus.FINISHED)
        )

    def _close_orphans(self, study: optuna.Study) -> None:
        """Close the MLflow runs that were left RUNNING: those of trials whose worker died
        (KILLED) and those whose closing failed during a tracking outage (by trial state),
        with the `best_value` and `best_epoch` that `end_trial` would have logged."""
        for trial in study.get_trials(deepcopy=False, states=_ENDED):
            run_id = trial.user_attrs.get(RUN_ID_ATTR)
            outage = TRACKING_ERROR in trial.user_attrs
            failed = trial.state == optuna.trial.TrialState.FAIL
            if not run_id or not (failed or outage):
                continue
            # A FAIL trial without an outage is one whose worker died: KILLED.
            status = ("FAILED" if outage else "KILLED") if failed else _RUN_STATUS[trial.state.name]
            try:
                if self.client.get_run(run_id).info.status != "RUNNING":
                    continue
                # What `end_trial` would have logged: a pruned trial's best epoch, not the
                # last epoch that Optuna keeps as its value.
                numbers = {
                    "best_value": best_value_of(trial),
                    "best_epoch": trial.user_attrs.get(BEST_EPOCH_ATTR),
                }
                now = int(time.time() * 1000)
                metrics = [
                    Metric(k, float(v), now, 0)
                    for k, v in numbers.items()
                    if isinstance(v, int | float) and not isinstance(v, bool)
                ]
                self.client.log_batch(
                    run_id, metrics=metrics, tags=[RunTag("state", trial.state.name)]
                )
                self.client.set_terminated(run_id, status=status)
            except MlflowException:
                continue
        self._close_unclaimed(study)

    def _close_unclaimed(self, study: optuna.Study) -> None:
        """Close trial runs that no RUNNING trial owns: a worker killed between creating a
        trial's run and storing its id in the trial left a run that no trial points at."""
        alive = {
            str(t.number)
            for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
        }
        try:
            runs = self.client.search_runs(
                [self.experiment_id],
                filter_string="attributes.status = 'RUNNING'",
                max_results=1000,
            )
        except MlflowException:
            return
        for run in runs:
            trial = run.data.tags.get("trial")
            if run.info.run_id == self.parent_run_id or trial is None or trial in alive:
                continue
            with contextlib.suppress(MlflowException):
                self.client.set_terminated(run.info.run_id, status="KILLED")
