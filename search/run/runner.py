"""One worker's run of a study: data, device, storage, tracking, then trials until the study's
shared budget of finished trials is spent (or the timeout passes)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial, TrialState

from search.config.schema import StudyConfig
from search.core.errors import StorageFailure, UserError
from search.core.records import (
    FINISHED,
    INPUT_ATTR,
    OBJECTIVE_METRIC_ATTR,
    STOP_REASON_ATTR,
    SURPLUS,
    TEST_ACCURACY_ATTR,
    TRAIN_IMAGES_ATTR,
    VAL_IMAGES_ATTR,
    is_budget_trial,
)
from search.core.signals import sigterm_interrupts
from search.data.dataset import Dataset, load_dataset
from search.run.objective import STORAGE_ERROR, Objective
from search.run.proctitle import TrialTitle
from search.study.storage import (
    describe_storage_error,
    fail_and_retry,
    fail_stale_trials,
    make_artifact_dir,
    storage_error_of,
)
from search.study.studies import count_trials, create_or_resume
from search.study.sweep import warm_start
from search.training.auto import AutoChoice, resolve
from search.training.network import input_contract
from search.training.train import resolve_device

if TYPE_CHECKING:
    import torch
    from rich.console import Console

    from search.run.options import RunOptions
    from search.tracking.runs import Tracker

__all__ = ["prepare", "record_choice", "run_study"]


_log = logging.getLogger(__name__)
_WAIT_S = 2.0  # how often a launch looks again at trials running elsewhere


class TooManyFailures(RuntimeError):
    pass


def _heartbeats_and_patience(study: optuna.Study) -> tuple[int, float]:
    """(the heartbeat interval, 0 without heartbeats; how long trials running elsewhere are
    waited for without any change: a dead worker's trial is failed, and retried, by then; a
    live one in a long trial finishes on its own)."""
    # `study._storage` is Optuna's `_CachedStorage` around the `RDBStorage`: both heartbeat.
    storage = study._storage
    heartbeats = (isinstance(storage, BaseHeartbeat) and storage.get_heartbeat_interval()) or 0
    backend = getattr(storage, "_backend", storage)
    patience = (getattr(backend, "grace_period", None) or 4 * heartbeats) + 2 * heartbeats
    return heartbeats, patience


def _failures_after(ran: list[FrozenTrial], failures: int, limit: int, what: str) -> int:
    """The count of consecutive failed trials after this worker's last one (a surplus trial
    is not a failure); at `limit`, `StorageFailure` when the store failed, else
    `TooManyFailures`."""
    last = ran[-1] if ran else None
    if (
        last is None
        or last.state != TrialState.FAIL
        or last.user_attrs.get(STOP_REASON_ATTR) == SURPLUS
    ):
        return 0
    failures += 1
    if failures >= limit:
        reason = last.user_attrs.get(STOP_REASON_ATTR, "see the trial")
        if reason.startswith(f"{STORAGE_ERROR}:"):  # the store, not the trials
            raise StorageFailure(
                f"storage failed: {failures} trials in a row could not be recorded; "
                f"last: {reason.removeprefix(f'{STORAGE_ERROR}: ')}"
            )
        raise TooManyFailures(f"{failures} {what} in a row failed; last: {reason}")
    return failures


_TIMED_OUT = (
    "the timeout ({timeout:g} s) has passed: this launch starts no new trial; launch again to go on"
)


def _waiting(numbers: list[int], patience: float) -> str:
    """Why a launch is idle: what it waits for, and for how long at most."""
    shown = ", ".join(str(n) for n in numbers[:5]) + (" …" if len(numbers) > 5 else "")
    what = f"trial{'s' if len(numbers) != 1 else ''} {shown}"
    return (
        f"waiting for {what}, running elsewhere: a live worker finishes it; a dead worker's "
        f"trial is failed and retried here once its heartbeat is stale (at most {patience:.0f} s)"
    )


def _optimize_until_done(
    study: optuna.Study,
    objective: Objective,
    *,
    n_trials: int,
    timeout: float | None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    max_consecutive_failures: int,
    say: Callable[[str], None] = lambda line: None,
) -> None:
    """Run trials while the study's finished (COMPLETE + PRUNED) and running trials are fewer
    than `n_trials`: the budget is the study's, shared by every worker.

    With heartbeats, stale trials (their worker died) are failed, and retried, before the
    budget is counted; while the only trials left are running elsewhere this launch waits
    for them, so a dead worker's last trial is retried here rather than left RUNNING."""
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    ran: list[FrozenTrial] = []  # this worker's trials (callbacks see every end state)
    callbacks = [*callbacks, lambda _study, trial: ran.append(trial)]
    heartbeats, patience = _heartbeats_and_patience(study)
    waited_for: tuple[int, list[int]] | None = None
    waiting_since = 0.0
    while True:
        if heartbeats:  # a dead worker's RUNNING trial must not count against the budget
            fail_stale_trials(study)
        finished = count_trials(study, FINISHED)
        running_now = [
            t.number
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            if is_budget_trial(t)
        ]
        running = len(running_now)
        if deadline is not None and time.monotonic() >= deadline:
            say(_TIMED_OUT.format(timeout=timeout))
            return
        if finished >= n_trials or (finished + running >= n_trials and not heartbeats):
            return
        if finished + running >= n_trials:
            # Alive elsewhere (they finish) or dead (failed once their heartbeat is stale).
            state = (finished, running_now)
            if state != waited_for:
                waited_for, waiting_since = state, time.monotonic()
                say(_waiting(running_now, patience))
            elif time.monotonic() - waiting_since > patience:
                return  # e.g. a trial without heartbeats: it cannot go stale
            time.sleep(min(float(heartbeats), _WAIT_S))
            continue
        ran.clear()
        study.optimize(
            objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=False
        )
        if ran and ran[-1].user_attrs.get(STOP_REASON_ATTR) == SURPLUS:
            return  # other workers took the last trials of the budget
        failures = _failures_after(ran, failures, max_consecutive_failures, "trials")


def _confirm_until_done(
    study: optuna.Study,
    objective: Objective,
    config: StudyConfig,
    *,
    deadline: float | None,
    callbacks: list[Callable[[optuna.Study, FrozenTrial], None]],
    max_consecutive_failures: int,
    on_plan: Callable[[dict[str, int]], None] = lambda added: None,
    say: Callable[[str], None] = lambda line: None,
) -> bool:
    """The confirm phase (`search.study.evidence`): enqueue its retrains, run them with the other
    workers, enqueue the champion's ablation once they have ended, run that. True when every
    planned retrain has ended (False: the deadline came first)."""
    from search.study.evidence import enqueue_plan, evidence, plan

    heartbeats, patience = _heartbeats_and_patience(study)
    failures = 0
    ran: list[FrozenTrial] = []
    callbacks = [*callbacks, lambda _study, trial: ran.append(trial)]
    waited_for: tuple[int, ...] | None = None
    waiting_since = 0.0
    while True:
        if heartbeats:
            fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        val_images = study.user_attrs.get(VAL_IMAGES_ATTR)
        if plan(trials, config, study.direction, val_images=val_images):  # first without the lock
            added = enqueue_plan(study, config)
            if added:
                on_plan(added)
            trials = study.get_trials(deepcopy=False)
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        running = tuple(t.number for t in trials if t.state == TrialState.RUNNING)
        if deadline is not None and time.monotonic() >= deadline:
            say(_TIMED_OUT.format(timeout=config.search.timeout))
            return False
        if not waiting:
            ev = evidence(trials, config, study.direction, val_images=val_images)
            if ev is None or ev.pending == 0:
                return True
            if not running or not heartbeats:  # nothing that can still end: stop here
                return False
            if running != waited_for:
                waited_for, waiting_since = running, time.monotonic()
                say(_waiting(list(running), patience))
            elif time.monotonic() - waiting_since > patience:
                return False
            time.sleep(min(float(heartbeats), _WAIT_S))
            continue
        ran.clear()
        study.optimize(
            objective, n_trials=1, catch=(Exception,), callbacks=callbacks, gc_after_trial=False
        )
        failures = _failures_after(ran, failures, max_consecutive_failures, "retrains")


def prepare(config: StudyConfig, *, export: bool = True) -> tuple[AutoChoice, Dataset]:
    """The data set and the config with every `auto` chosen for it and the regularizers its
    network cannot take left out (what the study stores), after building the network once
    (`search.training.network.check_network`; `export`: an outside network is exported
    untrained)."""
    from search.training.network import check_network

    data = load_dataset(config.dataset)
    return check_network(resolve(config, data), data, export=export), data


def _arms_line(study: optuna.Study, config: StudyConfig) -> str:
    """What the confirm phase retrains, as counted: the search's best distinct configurations
    (fewer than `top_k` when fewer completed) and the baseline recipe, once."""
    from search.study.evidence import evidence

    ev = evidence(
        study.get_trials(deepcopy=False),
        config,
        study.direction,
        val_images=study.user_attrs.get(VAL_IMAGES_ATTR),
    )
    arms = ev.alive if ev is not None else []
    others = sum(not a.baseline for a in arms)
    what = f"the {others} best configuration{'s' if others != 1 else ''} of the search"
    if ev is not None and len(ev.alive) < len(ev.arms):
        what += " still in the race"
    return what + (" and the baseline recipe" if any(a.baseline for a in arms) else "")


def record_choice(study: optuna.Study, tracker: Tracker | None, choice: AutoChoice) -> None:
    """What was chosen for the data and the network: on the MLflow parent run (`auto`), and
    the regularizers left out on the study and the parent run (`left_out`)."""
    from search.training.network import LEFT_OUT_ATTR

    left = dict(choice.left_out)
    if left:
        study.set_user_attr(LEFT_OUT_ATTR, left)
    if tracker is not None:
        if choice.notes:
            tracker.client.set_tag(tracker.parent_run_id, "auto", choice.summary)
        if left:
            why = "; ".join(f"{k}: {v}" for k, v in left.items())
            tracker.client.set_tag(tracker.parent_run_id, LEFT_OUT_ATTR, why)


def user_device(name: str) -> torch.device:
    """The device `name` names; one line naming `train.device` when this machine has none."""
    try:
        return resolve_device(name)
    except RuntimeError as exc:
        raise UserError(f"train.device: {exc}") from None


def run_study(config: StudyConfig, options: RunOptions, *, console: Console) -> optuna.Study:
    """Create or resume the study and run this worker's share of its trials."""
    from search.run.progress import RunProgress

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    device = user_device(options.device or config.train.device)
    choice, data = prepare(config, export=options.export_check)
    config = choice.config
    if choice.notes and not options.quiet:
        for note in choice.notes:
            console.print(f"{config.study}: {note}")
    artifacts = make_artifact_dir(options.storage_url, options.artifacts)
    storage = options.storage(config.search)  # opened once per process (`RunOptions.storage`)
    study, _created = create_or_resume(config, storage, worker_index=options.worker_index)
    study.set_user_attr(OBJECTIVE_METRIC_ATTR, config.objective.metric)
    study.set_user_attr(TRAIN_IMAGES_ATTR, len(data.train))
    study.set_user_attr(VAL_IMAGES_ATTR, len(data.val))
    study.set_user_attr(INPUT_ATTR, input_contract(data))
    if options.sweep is not None:
        warm_start(study, options.sweep)
    finished = count_trials(study, FINISHED)
    if finished >= config.search.n_trials and not options.quiet:
        from search.study.evidence import study_evidence

        ev = study_evidence(study)
        if ev is not None and ev.pending:  # a launch cut off in its confirm phase
            console.print(
                f"study {config.study!r} has spent its search budget ({finished} trials); "
                "this launch finishes its confirm phase"
            )
        else:  # `--n-trials` is the study's total, not "this many more"
            console.print(
                f"study {config.study!r} already has {finished} finished trials (n_trials is "
                f"the study's total); use --n-trials {finished + 6} to run 6 more"
            )

    tracker: Tracker | None = None
    if config.tracking.enabled:
        from search.tracking.runs import Tracker

        tracker = Tracker.for_study(study, config, tracking_uri=options.tracking_uri)
    record_choice(study, tracker, choice)
    if tracker is not None:
        from search.tracking.champion import repair

        repair(tracker, study, data)  # a kill between a trial's outcome and its alias

    progress = RunProgress(
        n_trials=config.search.n_trials,
        metric=config.objective.metric,
        console=console,
        quiet=options.quiet,
    )
    from optuna.artifacts import FileSystemArtifactStore

    objective = Objective(
        config,
        data,
        device=device,
        tracker=tracker,
        listeners=(progress, TrialTitle(options.title)) if options.title else (progress,),
        artifact_store=FileSystemArtifactStore(str(artifacts)),
    )
    deadline = None if config.search.timeout is None else time.monotonic() + config.search.timeout

    def say(line: str) -> None:
        if not options.quiet:
            console.print(f"{config.study}: {line}", soft_wrap=True)

    max_failures = max(3, config.search.max_retry + 2)
    confirmed = config.search.confirm is None
    try:
        with sigterm_interrupts(), progress:
            progress.start(study)
            _optimize_until_done(
                study,
                objective,
                n_trials=config.search.n_trials,
                timeout=config.search.timeout,
                callbacks=[objective.after_tell, progress],
                max_consecutive_failures=max_failures,
                say=say,
            )
            if not confirmed and count_trials(study, FINISHED) >= config.search.n_trials:

                def announce(added: dict[str, int]) -> None:
                    if options.quiet:
                        return
                    confirm = config.search.confirm
                    assert confirm is not None
                    if added.get("confirm"):
                        how = (
                            "a seed at a time; one clearly behind after 2 seeds stops"
                            if confirm.racing
                            else f"{confirm.seeds} fresh seeds each"
                        )
                        n = added["confirm"]
                        console.print(
                            f"{config.study}: confirm phase — {n} retrain{'s' if n != 1 else ''}: "
                            f"{_arms_line(study, config)}, {how}, unpruned"
                        )
                    if added.get("ablation"):
                        n = added["ablation"]
                        console.print(
                            f"{config.study}: ablation — {n} retrain{'s' if n != 1 else ''} of the "
                            "champion, each active regularizer off in turn, the same seeds"
                            + (" (a seed at a time while unclear)" if confirm.racing else "")
                        )

                confirmed = _confirm_until_done(
                    study,
                    objective,
                    config,
                    deadline=deadline,
                    callbacks=[objective.after_tell, progress],
                    max_consecutive_failures=max_failures,
                    on_plan=announce,
                    say=say,
                )
    except TooManyFailures as exc:
        _close_quietly(tracker, study)
        raise UserError(f"study {config.study!r} stopped: {exc}") from None
    except StorageFailure:
        _close_quietly(tracker, study)
        raise
    except Exception as exc:
        if storage_error_of(exc) is None:
            _close_quietly(tracker, study)
            raise
        raise _storage_failed(study, objective, tracker, exc) from None
    except BaseException:
        _close_quietly(tracker, study)
        raise
    compiled = objective.compile_note()
    if compiled and not options.quiet:
        console.print(f"{config.study}: {compiled}")
    try:
        done = count_trials(study, FINISHED) >= config.search.n_trials and confirmed
        if tracker is not None:
            close_tracking(tracker, study, finished=done, data=data)
    except Exception as exc:
        if storage_error_of(exc) is None:
            raise
        raise _storage_failed(study, objective, tracker, exc) from None
    if done:
        from search.report.dashboard import write_best_note

        write_best_note(study, test_accuracy=study.user_attrs.get(TEST_ACCURACY_ATTR))
    return study


def close_tracking(
    tracker: Tracker, study: optuna.Study, *, finished: bool, data: Dataset | None = None
) -> None:
    """End a launch's MLflow bookkeeping (`Tracker.close`); the last worker of a finished
    study settles the champion (`search.tracking.champion.settle`: the alias, the test
    evidence) and finishes the parent run with the verdict and its figures."""
    if not tracker.close(study, finished=finished):
        return
    from search.study.storage import study_lock

    # Workers that end together each see no trial running: one settles and finishes.
    with study_lock(study, "mlflow-finish"):
        if tracker.parent_finished():
            return  # another worker of this launch did, after this one attached to the run
        _settle_and_finish(tracker, study, data)


def _settle_and_finish(tracker: Tracker, study: optuna.Study, data: Dataset | None) -> None:
    from search.report.summary import best_summary, verdict, verdict_metrics
    from search.tracking.champion import settle

    tags: dict[str, str] = {}
    if data is not None:
        uri = settle(tracker, study, data)
        if uri is not None:
            tags["champion_uri"] = uri
    metrics: dict[str, float] = {}
    best = best_summary(study)
    if best is not None:
        metrics = verdict_metrics(best)
        tags["verdict"] = verdict(best, tracker.config.objective.metric)[:5000]
        tags["champion"] = best["champion_name"]
    tracker.finish_parent(metrics=metrics, tags=tags)


def _close_quietly(tracker: Tracker | None, study: optuna.Study) -> None:
    """End-of-launch bookkeeping on the way out of a failed launch: never the error shown."""
    if tracker is None:
        return
    try:
        tracker.close(study, finished=False)
    except Exception as exc:
        _log.warning("MLflow runs not closed: %s", describe_storage_error(exc))


def _storage_failed(
    study: optuna.Study, objective: Objective, tracker: Tracker | None, exc: BaseException
) -> StorageFailure:
    """A store failed mid-run (an outage, a full disk): record the cut-off trial as FAIL
    with its reason and enqueue its retry where the storage still takes the writes (else the
    next launch fails it as stale and retries it), close what can be closed, and say so in
    one line."""
    reason = describe_storage_error(exc)
    trial_id = objective.running_trial_id
    if trial_id is not None:  # the same retry as a stale trial's (same params, phase)
        with contextlib.suppress(Exception):
            fail_and_retry(study, trial_id, f"{STORAGE_ERROR}: {reason}")
    _close_quietly(tracker, study)
    return StorageFailure(
        f"storage failed: {reason}; what was recorded stays, and the next `regsearch run` "
        f"retries the trial that was cut off"
    )
