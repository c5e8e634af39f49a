"""Live progress of `regsearch run`: trials done, the current trial's epoch, best so far.

On a terminal it is a rich progress display; elsewhere (CI logs, pipes) one line per finished
trial, so logs stay readable.
"""

from __future__ import annotations

import contextlib
import math
from types import TracebackType
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from search.core.records import (
    ABLATE_ATTR,
    BEST_EPOCH_ATTR,
    EPOCHS_TRAINED_ATTR,
    FINISHED,
    PHASE_ATTR,
    SEED_ATTR,
    SOURCE_ATTR,
    STOP_REASON_ATTR,
    SURPLUS,
    best_value_of,
)
from search.study.studies import count_trials
from search.training.train import EpochStats

__all__ = ["RunProgress"]


class RunProgress:
    def __init__(
        self, *, n_trials: int, metric: str, console: Console, quiet: bool = False
    ) -> None:
        self.console = console
        self.metric = metric
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            disable=not self.live,
            transient=False,
        )
        self._trials = self._progress.add_task("trials", total=n_trials, info="")
        self._epochs = self._progress.add_task("epoch ", total=1, info="", visible=False)
        self._best: float | None = None

    def __enter__(self) -> RunProgress:
        self._progress.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.__exit__(exc_type, exc, tb)

    def start(self, study: optuna.Study) -> None:
        done = count_trials(study, FINISHED)
        self._progress.update(self._trials, completed=done)
        try:
            self._best = study.best_value
        except ValueError:
            self._best = None
        self._progress.update(self._trials, info=self._best_text())

    def _best_text(self) -> str:
        return f"best {self.metric} {self._best:.4f}" if self._best is not None else ""

    # RunListener
    def trial_started(self, number: int, epochs: int) -> None:
        self._progress.reset(self._epochs, total=epochs, visible=True)
        self._progress.update(self._epochs, description=f"trial {number}", info="")

    def epoch_done(self, number: int, stats: EpochStats) -> None:
        info = f"{self.metric} {getattr(stats, self.metric):.4f}"
        self._progress.update(self._epochs, completed=stats.epoch, info=info)

    # Optuna callback, after each trial
    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if trial.user_attrs.get(STOP_REASON_ATTR) == SURPLUS:
            return  # not a real trial: the budget was spent by other workers
        # Between trials there is no epoch to show: a stale "trial 7 epoch 12/20" misleads.
        self._progress.update(self._epochs, visible=False)
        if trial.state == TrialState.COMPLETE and trial.value is not None:
            with contextlib.suppress(ValueError):
                self._best = study.best_value
        self._progress.update(
            self._trials, completed=count_trials(study, FINISHED), info=self._best_text()
        )
        if not self.quiet:
            # markup off: "[confirm: retrain of #3, seed 1000]" is no rich tag to swallow
            self.console.print(self._line(trial), highlight=False, markup=False)

    def _line(self, trial: FrozenTrial) -> str:
        attrs: dict[str, Any] = trial.user_attrs
        value = trial.value
        shown = f" {self.metric}={value:.4f}" if value is not None and math.isfinite(value) else ""
        best = best_value_of(trial) if trial.state == TrialState.PRUNED else None
        if best is not None:  # Optuna's value of a pruned trial is its last epoch's
            shown = f" {self.metric}={best:.4f} (best, epoch {attrs.get(BEST_EPOCH_ATTR)})"
        epochs = attrs.get(EPOCHS_TRAINED_ATTR)
        reason = attrs.get(STOP_REASON_ATTR, "")
        params = " ".join(
            f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in trial.params.items()
        )
        head = f"trial {trial.number:>3} {trial.state.name:<8}{shown}"
        phase = attrs.get(PHASE_ATTR)
        source, seed = attrs.get(SOURCE_ATTR), attrs.get(SEED_ATTR)
        if phase in ("confirm", "ablation"):  # a retrain: say of what, and with which seed
            what = f"{attrs.get(ABLATE_ATTR)} off" if phase == "ablation" else "retrain"
            params = f"[{phase}: {what} of #{source}, seed {seed}]"
        elif phase == "refit":  # its params are the source's: an ablated one's override is not
            off = f" with {attrs[ABLATE_ATTR]} off" if attrs.get(ABLATE_ATTR) else ""
            params = f"[refit of #{source}{off} on train + validation, seed {seed}]"
        trained = "" if epochs is None else f" epochs={epochs}"  # none: it failed first
        return f"{head}{trained} ({reason}) {params}"
