"""`regsearch report`: one self-contained HTML page (plotly.js inlined once, works offline) with
Optuna's interactive figures, plus PNG figures (matplotlib, Agg) saved next to it and embedded:
the train/validation gap against each searched regularizer (and, for grid studies over several
regularizers, per setting), learning curves, and the epochs saved by pruning and early stopping.

The report reads a snapshot of the study's finished trials (COMPLETE and PRUNED), so it can be
made while workers are still running. Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import contextlib
import functools
import html
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config.space import space_of
from search.core.files import write_atomic
from search.core.records import OBJECTIVE_METRIC_ATTR
from search.report.data import (
    MAX_SETTINGS,
    EpochTotals,
    Skip,
    discrete,
    epoch_totals,
    epochs_trained,
    searched_regularizers,
    snapshot,
)
from search.report.figures import (
    contributions_figure,
    epochs_figure,
    learning_curves,
    regularizer_figure,
    settings_figure,
)
from search.report.markup import best_table, image, page_html, table, verdict_section
from search.report.plots import importances, intermediate_values, needs_complete
from search.report.summary import format_value
from search.study.studies import best_trial
from search.tracking.champion import model_uri_of

if TYPE_CHECKING:
    from rich.console import Console

    from search.config.schema import StudyConfig

__all__ = [
    "ReportResult",
    "write_report",
]


@dataclass
class ReportResult:
    index: Path
    pngs: list[Path] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # section title → why it is missing
    seconds: dict[str, float] = field(default_factory=dict)  # section title → render time


@dataclass(frozen=True)
class _Section:
    title: str
    render: Callable[[], str]  # an HTML fragment; raises Skip


class _Progress:
    """One task per figure: a rich progress display on a terminal, one line per figure in
    logs, nothing without a console."""

    def __init__(self, titles: Sequence[str], console: Console | None) -> None:
        self.console = console
        self._live = None
        self._tasks: dict[str, Any] = {}
        if console is not None and console.is_terminal:
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            self._live = Progress(
                SpinnerColumn(finished_text="[green]✓"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                transient=False,
            )
            self._tasks = {t: self._live.add_task(t, total=1, start=False) for t in titles}

    def __enter__(self) -> _Progress:
        if self._live is not None:
            self._live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._live is not None:
            self._live.stop()

    @contextlib.contextmanager
    def step(self, title: str) -> Iterator[None]:
        started = time.perf_counter()
        if self._live is not None:
            self._live.start_task(self._tasks[title])
        yield
        if self._live is not None:
            self._live.update(self._tasks[title], completed=1)
        elif self.console is not None:
            self.console.print(f"report: {title} ({time.perf_counter() - started:.1f} s)")


def write_report(
    study: optuna.Study,
    out_dir: Path,
    *,
    config: StudyConfig | None = None,
    console: Console | None = None,
) -> ReportResult:
    """Render `out_dir/index.html` and its PNG figures; returns what was written.

    `config` (the study's stored config) supplies the epoch budget, the objective metric and
    the fixed regularizers; without it they are inferred from the trials.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    snap = snapshot(study)
    trials = snap.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best = best_trial(snap) if complete else None  # of the search (curves, figures)
    champion = best_trial(study)  # the confirmed champion's retrain once there is one
    metric = (
        config.objective.metric
        if config
        else str(study.user_attrs.get(OBJECTIVE_METRIC_ATTR, "value"))
    )
    budget = config.train.epochs if config else None

    def budget_of(t: FrozenTrial) -> int:
        searched = t.params.get("epochs")
        if isinstance(searched, int):
            return searched
        return budget if budget is not None else max(map(epochs_trained, trials), default=0)

    totals = epoch_totals(trials, budget_of)
    result = ReportResult(index=out_dir / "index.html")

    def png_section(name: str, alt: str, make: Callable[[], bytes]) -> Callable[[], str]:
        def render() -> str:
            data = make()
            write_atomic(out_dir / name, data)
            result.pngs.append(out_dir / name)
            return image(name, data, alt)

        return render

    import optuna.visualization as vis

    from search.report.summary import best_summary

    summary = best_summary(study)
    grid = config is not None and config.search.sampler.name == "grid"
    sections = [_Section("Verdict", lambda: verdict_section(summary, metric, grid=grid))]
    if summary is not None and summary.get("contributions"):
        contributions = summary["contributions"]
        sections.append(
            _Section(
                "Contributions (ablation of the champion)",
                png_section(
                    "contributions.png",
                    "each regularizer's contribution with its interval",
                    lambda: contributions_figure(contributions, metric),
                ),
            )
        )
    sections += [
        _Section(
            "Champion trial",
            lambda: best_table(
                champion, metric, budget, model_uri_of(snap, champion) if champion else None
            ),
        ),
        _Section(
            "Optimization history",
            lambda: needs_complete(len(complete), lambda: vis.plot_optimization_history(snap)),
        ),
        _Section(
            "Parameter importances (fANOVA, search trials)",
            lambda: importances(snap, len(complete)),
        ),
    ]
    for name in searched_regularizers(trials):
        file = f"regularizer-{name}.png"
        sections.append(
            _Section(
                f"Regularizer: {name}",
                png_section(
                    file,
                    f"{name}: train/val accuracy and gap",
                    functools.partial(regularizer_figure, name, trials),
                ),
            )
        )
    searched = searched_regularizers(trials)
    combos = {tuple(t.params.get(n) for n in searched) for t in complete}
    if len(searched) > 1 and discrete(trials, searched) and 2 <= len(combos) <= MAX_SETTINGS:
        sections.append(
            _Section(
                "Regularizer settings compared",
                png_section(
                    "settings.png",
                    "train/val accuracy per setting",
                    functools.partial(settings_figure, searched, trials),
                ),
            )
        )
    sections += [
        _Section(
            "Learning curves",
            png_section(
                "learning-curves.png",
                "learning curves",
                lambda: learning_curves(trials, best, metric, budget),
            ),
        ),
        _Section(
            "Epochs trained and saved",
            png_section(
                "epochs.png", "epochs per trial", lambda: epochs_figure(trials, budget_of, totals)
            ),
        ),
        _Section(
            "Parallel coordinates",
            lambda: needs_complete(len(complete), lambda: vis.plot_parallel_coordinate(snap)),
        ),
        _Section(
            "Slices",
            lambda: needs_complete(len(complete), lambda: vis.plot_slice(snap), height=420),
        ),
        _Section("Intermediate values", lambda: intermediate_values(snap)),
    ]

    rendered: list[tuple[str, str]] = []
    with _Progress([s.title for s in sections], console) as progress:
        for section in sections:
            started = time.perf_counter()
            with progress.step(section.title):
                try:
                    fragment = section.render()
                except Skip as skip:
                    result.notes[section.title] = str(skip)
                    fragment = f"<p class='note'>Not shown: {html.escape(str(skip))}</p>"
            result.seconds[section.title] = time.perf_counter() - started
            rendered.append((section.title, fragment))

    page = page_html(
        f"regsearch report — study {study.study_name}",
        _header(study, config, totals),
        rendered,
    )
    write_atomic(result.index, page.encode("utf-8"))
    return result


def _header(study: optuna.Study, config: StudyConfig | None, totals: EpochTotals) -> str:
    states: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        states[t.state.name] = states.get(t.state.name, 0) + 1
    rows: list[tuple[str, Any]] = [
        ("direction", study.direction.name.lower()),
        ("trials", ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items())) or "none"),
        ("generated", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
    ]
    if states.get("RUNNING"):
        rows.append(("note", f"{states['RUNNING']} running trial(s) are not included"))
    if config is not None:
        rows += [
            ("dataset", config.dataset.name),
            ("model", config.model.name),
            ("epochs (budget per trial)", config.train.epochs),
            ("sampler / pruner", f"{config.search.sampler.name} / {config.search.pruner.name}"),
        ]
        fixed = _fixed_regularizers(config)
        if fixed:
            rows.append(
                (
                    "fixed regularizers",
                    ", ".join(f"{k}={format_value(v)}" for k, v in fixed.items()),
                )
            )
    if totals.budget:
        saved = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in sorted(totals.saved_by.items()))
        rows.append(
            (
                "epochs trained",
                f"{totals.trained} of {totals.budget}" + (f" (saved: {saved})" if saved else ""),
            )
        )
    return table(rows)


def _fixed_regularizers(config: StudyConfig) -> dict[str, Any]:
    entries = space_of(config).entries
    return {e.name: e.value for e in entries if e.section == "regularization" and not e.searched}
