"""What regsearch adds to optuna-dashboard: a learning-curve figure per trial (an Optuna
artifact, shown on the trial's page), a Markdown note on the best trial, and a read-only guard
for the served dashboard (`read_only`).

Both are cheap and self-contained, meant to be called from the objective or the runner:
`upload_learning_curve` renders with matplotlib's Agg canvas directly (no pyplot, no global
state, safe in worker threads) at a small size.

Pruned trials. The dashboard's *Value* column is the value Optuna stores, which for a pruned
trial is its last reported epoch's, the epoch it was pruned at (optuna 5.1,
`optuna/study/_tell.py`, `_tell_with_warning`: "Register the last intermediate value if present
as the value of the trial"), and Optuna refuses a value told with the PRUNED state
(`_check_state_and_values`). regsearch neither writes that value behind Optuna's back nor
reports a made-up last epoch. Instead, for a pruned trial to be compared with completed ones:

- every COMPLETE and PRUNED trial has the user attr `best_value` (`search.core.records.
  BEST_VALUE_ATTR`, the objective metric at its best epoch, `best_epoch`). optuna-dashboard
  (0.21) shows each user attr as a column of its trial table ("UserAttribute best_value",
  sortable, its values being numbers) and in the "User Attributes" of the trial's page;
- each trial's learning-curve figure (`upload_learning_curve`, uploaded before the objective
  raises `TrialPruned`) draws a dashed line at its best epoch, pruned trials included;
- the study note (`study_note_markdown`) of a study with a pruner says so.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import tempfile
import threading
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.core.records import (
    BEST_EPOCH_ATTR,
    CHAMPION_URI_ATTR,
    EPOCHS_TRAINED_ATTR,
    OBJECTIVE_METRIC_ATTR,
    PHASE_ATTR,
    RUN_ID_ATTR,
    SEARCH,
    TRAIN_ACCURACY_ATTR,
    VAL_ACCURACY_ATTR,
)

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment
    from optuna.artifacts._protocol import ArtifactStore

    from search.training.train import EpochStats

__all__ = ["learning_curve_png", "read_only", "upload_learning_curve", "write_best_note"]


class _CurveCanvas:
    """One figure built once per process and re-used: creating the axes and their ticks is
    most of matplotlib's cost for a figure this small (measured for 20 epochs: ~90 ms of CPU a
    figure built afresh, ~55 ms re-used with few ticks). A lock keeps threads from sharing it."""

    def __init__(self) -> None:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator

        self.figure = fig = Figure(figsize=(6.4, 2.5))
        FigureCanvasAgg(fig)
        self.acc, self.loss = fig.subplots(1, 2)
        self.lines = {
            "train_accuracy": self.acc.plot([], [], marker=".")[0],
            "val_accuracy": self.acc.plot([], [], marker=".")[0],
            "train_loss": self.loss.plot([], [], marker=".", label="train (clean)")[0],
            "val_loss": self.loss.plot([], [], marker=".", label="validation")[0],
            "fit_loss": self.loss.plot([], [], ls=":", color="grey", label="fit (augmented)")[0],
        }
        # The epoch whose weights the trial kept (its value, its checkpoint).
        self.best = [
            ax.axvline(1, color="#3a7d44", ls="--", lw=1, alpha=0.8) for ax in (self.acc, self.loss)
        ]
        self.best[1].set_label("best epoch")
        self.loss.legend(fontsize="x-small", loc="upper right")
        self.acc.set_ylabel("accuracy")
        self.loss.set_ylabel("loss")
        for ax in (self.acc, self.loss):
            ax.set_xlabel("epoch")
            # Few ticks: every tick label is text to lay out, the bulk of the drawing time.
            ax.xaxis.set_major_locator(MaxNLocator(nbins=5, integer=True))
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
            ax.grid(alpha=0.3)
        # A fixed layout: constrained/tight layout would double the cost.
        fig.subplots_adjust(left=0.09, right=0.98, bottom=0.18, top=0.88, wspace=0.3)
        self.title = fig.suptitle("", fontsize="medium")
        self.lock = threading.Lock()

    def png(self, history: Sequence[EpochStats], title: str, best_epoch: int | None) -> bytes:
        epochs = [s.epoch for s in history]
        with self.lock:
            for key, line in self.lines.items():
                line.set_data(epochs, [getattr(s, key) for s in history])
            for marker in self.best:
                marker.set_visible(best_epoch is not None)
                marker.set_xdata([best_epoch or 1] * 2)
            for ax in (self.acc, self.loss):
                ax.relim()
                ax.autoscale_view()
            self.title.set_text(title)
            buf = io.BytesIO()
            self.figure.savefig(buf, format="png", dpi=DPI)
        return buf.getvalue()


DPI = 110  # 704 × 275 px: legible on the dashboard's trial page


@functools.cache
def _canvas() -> _CurveCanvas:
    return _CurveCanvas()


def learning_curve_png(
    history: Sequence[EpochStats], *, title: str = "", best_epoch: int | None = None
) -> bytes:
    """Train vs validation accuracy (left) and loss (right) per epoch, as a PNG, with a dashed
    line at `best_epoch` (the epoch the trial's value and weights come from). Train values are
    on a clean (un-augmented) subset; the loss panel also shows `fit_loss`, the loss of the
    augmented/mixed batches the optimizer saw."""
    return _canvas().png(history, title, best_epoch)


def upload_learning_curve(
    study: optuna.Study,
    trial: optuna.Trial | FrozenTrial,
    history: Sequence[EpochStats],
    *,
    artifact_store: ArtifactStore,
    best_epoch: int | None = None,
) -> str | None:
    """Render the trial's learning curve and attach it to the trial as an Optuna artifact
    (optuna-dashboard shows it on the trial's page). Returns the artifact id, or None for an
    empty history. The trial must still be running (call it from the objective, before it
    returns or raises `TrialPruned`): Optuna refuses to change a finished trial
    (`UpdateFinishedTrialError`, raised before anything is written). `study` supplies the
    storage when `trial` is a `FrozenTrial`."""
    if not history:
        return None
    # Optuna 5.1 writes the artifact's file before it checks the trial: check first, so a
    # finished trial leaves no orphaned file in the store.
    storage = trial.storage if isinstance(trial, optuna.Trial) else study._storage
    state = storage.get_trial(trial._trial_id).state
    if state.is_finished():
        raise optuna.exceptions.UpdateFinishedTrialError(
            f"trial {trial.number} is already {state.name}: its learning curve is not attached"
        )
    data = learning_curve_png(
        history,
        title=f"study {study.study_name} — trial {trial.number}",
        best_epoch=best_epoch,
    )
    # `upload_artifact` takes a file path (the artifact's file name comes from it).
    with tempfile.TemporaryDirectory(prefix="regsearch-curve-") as tmp:
        path = Path(tmp) / f"learning-curve-trial-{trial.number}.png"
        path.write_bytes(data)
        return optuna.artifacts.upload_artifact(
            artifact_store=artifact_store,
            file_path=os.fspath(path),
            study_or_trial=trial,
            # A live Trial knows its storage; a FrozenTrial needs the study's.
            storage=None if isinstance(trial, optuna.Trial) else study._storage,
            mimetype="image/png",
        )


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return f"`{value}`" if isinstance(value, str) else str(value)


def best_note_markdown(
    study: optuna.Study,
    best: FrozenTrial,
    *,
    test_accuracy: float | None = None,
    model_uri: str | None = None,
) -> str:
    from search.report.summary import (
        REFIT_VALUE,
        best_summary,
        refit_trained_on,
        trained_params,
        verdict,
    )

    metric = study.user_attrs.get(OBJECTIVE_METRIC_ATTR, "validation value")
    attrs = best.user_attrs
    # A refit trains on the validation images: no validation score, no best epoch of its own.
    trained_on = refit_trained_on(best)
    refit = trained_on is not None
    rows: list[tuple[str, Any]] = [
        (f"{metric} ({REFIT_VALUE if refit else 'validation'})", best.value)
    ]
    if refit:
        rows.append(("trained on", trained_on))
    if test_accuracy is not None:
        rows.append(("test accuracy (held-out split)", test_accuracy))
    for key, label in (
        (BEST_EPOCH_ATTR, "best epoch"),
        (EPOCHS_TRAINED_ATTR, "epochs trained"),
        (TRAIN_ACCURACY_ATTR, "train accuracy at best epoch"),
        (VAL_ACCURACY_ATTR, "val accuracy at best epoch"),
    ):
        if attrs.get(key) is not None and not (
            refit and key in (BEST_EPOCH_ATTR, VAL_ACCURACY_ATTR)
        ):
            rows.append((label, attrs[key]))
    rows.append(("MLflow model", model_uri or "(not registered)"))
    if attrs.get(RUN_ID_ATTR):
        rows.append(("MLflow run", attrs[RUN_ID_ATTR]))
    summary = best_summary(study)
    confirmed = summary is not None and summary.get("champion") is not None
    what = "refit on train + validation" if refit else "best seed"
    heading = (
        f"## Champion of study `{study.study_name}`: #{best.number} ({what} of trial "
        f"{summary['champion']['source']}'s configuration)"
        if confirmed and summary is not None
        else f"## Best trial of study `{study.study_name}`: #{best.number}"
    )
    contributions = (summary or {}).get("contributions") or {}
    lines = [
        heading,
        "",
        *([verdict(summary, metric), ""] if summary is not None else []),
        *(
            [
                "### Contributions (ablation: champion − regularizer off, 95% interval over seeds)",
                "",
                "| regularizer | contribution | interval |",
                "|---|---|---|",
                *(
                    f"| {name} | {_fmt(c['mean'])} | "
                    + ("–" if c["low"] is None else f"[{_fmt(c['low'])}, {_fmt(c['high'])}]")
                    + " |"
                    for name, c in contributions.items()
                ),
                "",
            ]
            if contributions
            else []
        ),
        f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by regsearch; a later best trial gets "
        "its own note.",
        "",
        "| | |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in rows),
        "",
        "### Parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *(f"| {k} | {_fmt(v)} |" for k, v in trained_params(best).items()),
    ]
    return "\n".join(lines) + "\n"


def write_best_note(
    study: optuna.Study,
    *,
    test_accuracy: float | None = None,
    model_uri: str | None = None,
) -> int | None:
    """Write a Markdown note (optuna-dashboard's trial note) on the study's best trial: params,
    validation value, test accuracy and MLflow model URI. Returns the trial number, or None
    when no trial has completed. `model_uri` defaults to the trial's `model_uri` attribute."""
    from search.study.studies import best_trial

    best = best_trial(study)
    if best is None:
        return None
    from search.tracking.champion import model_uri_of

    uri = model_uri or model_uri_of(study, best) or study.user_attrs.get(CHAMPION_URI_ATTR)
    body = best_note_markdown(study, best, test_accuracy=test_accuracy, model_uri=uri)
    before = study.user_attrs.get(NOTE_TRIAL_ATTR)
    trials = study.get_trials(deepcopy=False)
    if isinstance(before, int) and before != best.number and before < len(trials):
        # The trial that carried the champion's note: it is the champion no more.
        former = trials[before]
        _save_kept(
            _live_trial(study, former),
            f"## Former champion of study `{study.study_name}`: #{before}\n\n"
            f"Superseded by {_trial_link(study, best.number)}, whose note has the verdict.\n",
        )
    _save_kept(_live_trial(study, best), body)
    _save_kept(study, study_note_markdown(study, best))
    study.set_user_attr(NOTE_TRIAL_ATTR, best.number)
    return best.number


NOTE_TRIAL_ATTR = "note_trial"  # study user attr: the trial whose note is the champion's
# The line under regsearch's part of a note: what a user writes below it is kept.
_YOURS = "*Notes below this line are yours: regsearch rewrites only what is above it.*"


def _save_kept(target: optuna.Study | optuna.Trial, body: str) -> None:
    """Save regsearch's `body` as the note of `target`, keeping what a user wrote: below the
    `_YOURS` line, or the whole note when it is no note of regsearch's (no such line, not
    written by regsearch). Notes are the one thing the dashboard lets users edit."""
    from optuna_dashboard import get_note, save_note

    current = get_note(target) or ""
    if _YOURS in current:
        theirs = current.split(_YOURS, 1)[1].strip("\n")
    elif "by regsearch" in current or current.startswith("## Former champion"):
        theirs = ""  # an earlier version's note, all of it regsearch's
    else:
        theirs = current.strip("\n")
    save_note(target, f"{body.rstrip()}\n\n---\n{_YOURS}\n\n{theirs}".rstrip() + "\n")


def _trial_link(study: optuna.Study, number: int) -> str:
    """A Markdown link to a trial's page in the dashboard (its route, served at the root)."""
    return f"[trial {number}](/dashboard/studies/{study._study_id}/trials?numbers={number})"


def study_note_markdown(study: optuna.Study, best: FrozenTrial) -> str:
    """The study's note (shown on its page): the verdict, the champion named as everywhere
    with a link to its trial, and — where optuna-dashboard's own "Best Trial" (the largest
    value of any trial) is another trial — why that one is not the champion."""
    from search.report.summary import best_summary, verdict

    summary = best_summary(study)
    metric = str(study.user_attrs.get(OBJECTIVE_METRIC_ATTR, "value"))
    lines = [f"## Verdict of study `{study.study_name}`", ""]
    if summary is not None:
        lines += [verdict(summary, metric), ""]
        uri = summary.get("champion_uri") or summary.get("model_uri") or "(not registered)"
        lines += [
            f"**Champion:** {summary['champion_name']} — {_trial_link(study, best.number)} "
            f"(its note has the params), `{uri}`.",
            "",
        ]
    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None
    ]
    if complete:
        sign = 1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else -1.0
        top = max(complete, key=lambda t: (sign * float(t.value or 0.0), -t.number))
        if top.number != best.number:
            lines += [
                f"The dashboard's *Best Trial* badge is on {_trial_link(study, top.number)} "
                f"({metric} {_fmt(top.value)}, phase {top.user_attrs.get(PHASE_ATTR, SEARCH)}): "
                "the single largest value of any trial, one seed, scored on the split it was "
                "chosen on. The champion is the configuration with the best mean over the "
                "confirm phase's fresh seeds, never a single lucky run or an ablation retrain.",
                "",
            ]
    if _may_prune(study):
        lines += [
            "**Pruned trials:** their *Value* is the value reported at the epoch they were "
            "pruned at (Optuna keeps a pruned trial's last reported value). The column "
            "*UserAttribute best_value* has every finished trial's value at its best epoch "
            "(*best_epoch*), pruned ones included, and each trial's learning curve marks that "
            "epoch.",
            "",
        ]
    lines.append(f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by regsearch.")
    return "\n".join(lines) + "\n"


def _may_prune(study: optuna.Study) -> bool:
    """Whether the study has pruned trials or a pruner that may prune some."""
    from search.study.evidence import study_config

    if study.get_trials(deepcopy=False, states=(TrialState.PRUNED,)):
        return True
    config = study_config(study)
    return config is not None and config.search.pruner.name != "none"


def _live_trial(study: optuna.Study, frozen: FrozenTrial) -> optuna.Trial:
    """`save_note` takes a Study or a live `optuna.Trial` (it reads `trial.storage`). Building one
    runs `sampler.before_trial`, which some samplers (grid) use to write system attributes, so
    it is built on a copy of the study with a side-effect-free RandomSampler."""
    quiet = optuna.load_study(
        study_name=study.study_name,
        storage=study._storage,
        sampler=optuna.samplers.RandomSampler(),
    )
    return optuna.Trial(quiet, frozen._trial_id)


# What the served dashboard may change: study and trial notes (PUT /api/studies/<id>/note,
# PUT /api/studies/<id>/<trial id>/note), the same paths optuna-dashboard's routes match.
_NOTE = re.compile(r"/api/studies/\d+(?:/\d+)?/note")
_READS = frozenset({"GET", "HEAD"})


def read_only(app: WSGIApplication) -> WSGIApplication:
    """optuna-dashboard's app, unable to delete or change a study or a trial.

    Its API lets any visitor delete a study with all its trials, create or rename (copy, then
    delete) studies, tell a trial's state and values, set trial user attrs, upload or delete
    artifacts (the learning curves), record preferences and upgrade the storage's schema; with
    `--host 0.0.0.0` anyone on the network could. An allow-list rather than a list of those
    routes, so that a route a later optuna-dashboard adds is refused too: GET and HEAD of
    anything, and PUT of notes, which stay writable: the note editor is where people write
    down what they make of a trial, a note lives in the study's system attrs beside the trials
    (never in them), and a conflicting edit is refused by the note's version. Everything else
    gets 403 with a JSON `reason`, which the dashboard shows in its error pop-up."""

    def guarded(environ: WSGIEnvironment, start_response: StartResponse) -> Any:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        # optuna-dashboard strips trailing slashes before routing; so does the check.
        path = str(environ.get("PATH_INFO", "")).rstrip("/")
        if method in _READS or (method == "PUT" and _NOTE.fullmatch(path)):
            return app(environ, start_response)
        reason = (
            f"regsearch serves this dashboard read-only (notes excepted): {method} {path} is "
            "refused; change studies with the regsearch or optuna commands"
        )
        body = json.dumps({"reason": reason}).encode()
        headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("403 Forbidden", headers)
        return [body]

    return guarded
