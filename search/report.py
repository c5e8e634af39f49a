"""`regsearch report`: one self-contained HTML page (plotly.js inlined once, works offline) with
Optuna's interactive figures, plus PNG figures (matplotlib, Agg) saved next to it and embedded:
the train/validation gap against each searched regularizer (and, for grid studies over several
regularizers, per setting), learning curves, and the epochs saved by pruning and early stopping.

The report reads a snapshot of the study's finished trials (COMPLETE and PRUNED), so it can be
made while workers are still running. Every file is written atomically (temp file + rename).
"""

from __future__ import annotations

import base64
import contextlib
import functools
import html
import io
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.champion import model_uri_of
from search.files import write_atomic
from search.records import STOP_REASON_ATTR, is_budget_trial
from search.space import REGULARIZERS
from search.study import best_trial
from search.summary import format_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from rich.console import Console

    from search.config import StudyConfig

__all__ = ["ReportResult", "regularizer_figure", "settings_figure", "snapshot", "write_report"]

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
# Few enough distinct values (a grid) to draw the mean per value as a line.
_MAX_LEVELS = 10
_MAX_PRUNED_CURVES = 5
_MAX_SETTINGS = 8
_STOP_COLOURS = {"max_epochs": "#4c72b0", "early_stopping": "#55a868", "pruned": "#dd8452"}


class _Skip(Exception):
    """A section that cannot be drawn for this study; the message becomes a note in the page."""


@dataclass
class ReportResult:
    index: Path
    pngs: list[Path] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)  # section title → why it is missing
    seconds: dict[str, float] = field(default_factory=dict)  # section title → render time


@dataclass(frozen=True)
class _Section:
    title: str
    render: Callable[[], str]  # an HTML fragment; raises _Skip


# --------------------------------------------------------------------------- data


def snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of the study's finished search trials: RUNNING (and FAIL) trials and
    the confirm phase's retrains are left out (the verdict section shows those), and the
    figures all see the same trials even while workers keep adding more."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "A new study created in memory"
    try:
        copy = optuna.create_study(direction=study.direction, study_name=study.study_name)
    finally:
        optuna.logging.set_verbosity(verbosity)
    copy.add_trials(
        [t for t in study.get_trials(deepcopy=False, states=FINISHED) if is_budget_trial(t)]
    )
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    return copy


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _searched_regularizers(trials: Sequence[FrozenTrial]) -> list[str]:
    """The regularizers sampled as Optuna params (fixed ones are not params), in contract order."""
    names = {name for t in trials for name in t.params}
    return [name for name in REGULARIZERS if name in names]


# --------------------------------------------------------------------------- matplotlib


def _new_figure(width: float, height: float, *, rows: int = 1) -> tuple[Figure, Any]:
    """A figure on the Agg canvas, without pyplot: no global state, no GUI backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True) if rows > 1 else fig.subplots()
    return fig, axes


def _png(fig: Figure, *, dpi: int = 100) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def regularizer_figure(name: str, trials: Sequence[FrozenTrial], *, dpi: int = 100) -> bytes:
    """Final train and validation accuracy (at the best epoch) and their gap against one
    regularizer's value: the overfitting picture the search is about. Pruned trials are drawn
    hollow (their accuracies are from a truncated run); with few distinct values (a grid) the
    mean of the completed trials per value is joined by a line."""
    points: list[tuple[float, float, float, bool]] = []
    for t in trials:
        x = _number(t.params.get(name))
        train = _number(t.user_attrs.get("train_accuracy"))
        val = _number(t.user_attrs.get("val_accuracy"))
        if x is not None and train is not None and val is not None:
            points.append((x, train, val, t.state == TrialState.COMPLETE))
    if not points:
        raise _Skip(f"no trial with a numeric {name} and train/val accuracy attributes")

    fig, (top, bottom) = _new_figure(6.4, 5.0, rows=2)
    series = (("train", 1, "#4c72b0", "o"), ("validation", 2, "#dd8452", "s"))
    for label, index, colour, marker in series:
        for complete in (True, False):
            xs = [p[0] for p in points if p[3] is complete]
            ys = [p[index] for p in points if p[3] is complete]
            if xs:
                top.scatter(
                    xs,
                    ys,
                    marker=marker,
                    s=36,
                    label=label if complete else f"{label} (pruned)",
                    color=colour if complete else "none",
                    edgecolors=colour,
                    alpha=0.9 if complete else 0.6,
                    zorder=3,
                )
    gaps = [(p[0], p[1] - p[2], p[3]) for p in points]
    bottom.axhline(0.0, color="#999999", linewidth=0.8)
    for complete in (True, False):
        xs = [g[0] for g in gaps if g[2] is complete]
        if xs:
            bottom.scatter(
                xs,
                [g[1] for g in gaps if g[2] is complete],
                marker="D",
                s=30,
                color="#55a868" if complete else "none",
                edgecolors="#55a868",
                label="train − validation" + ("" if complete else " (pruned)"),
                zorder=3,
            )
    levels = sorted({p[0] for p in points if p[3]})
    if 1 < len(levels) <= _MAX_LEVELS:

        def mean_at(x: float, column: Callable[[tuple[float, float, float, bool]], float]) -> float:
            values = [column(p) for p in points if p[3] and p[0] == x]
            return sum(values) / len(values)

        top.plot(levels, [mean_at(x, lambda p: p[1]) for x in levels], color="#4c72b0", lw=1)
        top.plot(levels, [mean_at(x, lambda p: p[2]) for x in levels], color="#dd8452", lw=1)
        bottom.plot(levels, [mean_at(x, lambda p: p[1] - p[2]) for x in levels], color="#55a868")
    if name == "weight_decay" and all(p[0] > 0 for p in points):
        bottom.set_xscale("log")
    top.set_ylabel("accuracy at best epoch")
    top.legend(fontsize="small", loc="best")
    top.grid(alpha=0.3)
    bottom.set_ylabel("gap (train − val)")
    xlabel = name + (" (log scale)" if bottom.get_xscale() == "log" else "")
    if 1 < len(levels) <= _MAX_LEVELS:
        xlabel += " — lines: mean of completed trials per value"
    bottom.set_xlabel(xlabel)
    bottom.grid(alpha=0.3)
    fig.suptitle(f"{name}: train vs validation accuracy ({len(points)} trials)")
    return _png(fig, dpi=dpi)


def settings_figure(names: Sequence[str], trials: Sequence[FrozenTrial]) -> bytes:
    """Mean train and validation accuracy and gap per combination of the searched regularizers'
    values (other params, e.g. seeds, averaged over; dots are single trials): for grid studies
    where one parameter's figure mixes the others, e.g. none / MixUp / CutMix / both."""
    groups: dict[tuple[float, ...], list[tuple[float, float]]] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        values = [_number(t.params.get(n)) for n in names]
        train = _number(t.user_attrs.get("train_accuracy"))
        val = _number(t.user_attrs.get("val_accuracy"))
        key = tuple(v for v in values if v is not None)
        if len(key) == len(names) and train is not None and val is not None:
            groups.setdefault(key, []).append((train, val))
    if not 2 <= len(groups) <= _MAX_SETTINGS:
        raise _Skip(f"{len(groups)} settings: drawn for 2 to {_MAX_SETTINGS}")
    keys = sorted(groups)
    labels = [
        "\n".join(f"{n}={format_value(v)}" for n, v in zip(names, k, strict=True)) for k in keys
    ]
    fig, (top, bottom) = _new_figure(max(6.4, 1.3 * len(keys) + 1.5), 5.4, rows=2)
    xs = range(len(keys))
    for offset, index, label, colour in (
        (-0.2, 0, "train", "#4c72b0"),
        (0.2, 1, "validation", "#dd8452"),
    ):
        means = [sum(r[index] for r in groups[k]) / len(groups[k]) for k in keys]
        top.bar([x + offset for x in xs], means, width=0.38, color=colour, alpha=0.8, label=label)
        for x, k in zip(xs, keys, strict=True):
            top.scatter(
                [x + offset] * len(groups[k]),
                [r[index] for r in groups[k]],
                s=12,
                color="black",
                zorder=3,
            )
    lowest = min(r[i] for k in keys for r in groups[k] for i in (0, 1))
    top.set_ylim(max(0.0, lowest - 0.02), 1.005)
    top.set_ylabel("accuracy at best epoch")
    top.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    top.grid(axis="y", alpha=0.3)
    gaps = [[r[0] - r[1] for r in groups[k]] for k in keys]
    bottom.bar(list(xs), [sum(g) / len(g) for g in gaps], width=0.5, color="#55a868", alpha=0.8)
    for x, g in zip(xs, gaps, strict=True):
        bottom.scatter([x] * len(g), g, s=12, color="black", zorder=3)
    bottom.axhline(0.0, color="#999999", linewidth=0.8)
    bottom.set_ylabel("gap (train − val)")
    bottom.grid(axis="y", alpha=0.3)
    bottom.set_xticks(list(xs), labels, fontsize="small")
    n = sum(len(g) for g in groups.values())
    fig.suptitle(f"settings compared: bars are means, dots single trials ({n} completed)")
    return _png(fig)


def _discrete(trials: Sequence[FrozenTrial], names: Sequence[str]) -> bool:
    """Whether the parameters take a few chosen values (categorical or stepped), as in a grid."""
    from optuna.distributions import FloatDistribution

    # Categorical and int distributions are discrete; floats only with a step.
    for t in trials:
        for name in names:
            dist = t.distributions.get(name)
            if isinstance(dist, FloatDistribution) and dist.step is None:
                return False
    return True


def _spread(items: Sequence[FrozenTrial], k: int) -> list[FrozenTrial]:
    if len(items) <= k:
        return list(items)
    return [items[round(i * (len(items) - 1) / (k - 1))] for i in range(k)]


def _learning_curves(
    trials: Sequence[FrozenTrial], best: FrozenTrial | None, metric: str, budget: int | None
) -> bytes:
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        raise _Skip("no trial reported intermediate values")
    from matplotlib.ticker import MaxNLocator

    pruned = _spread([t for t in curves if t.state == TrialState.PRUNED], _MAX_PRUNED_CURVES)
    fig, ax = _new_figure(6.4, 4.0)
    for t in curves:  # context: the other completed trials, faint
        if t.state == TrialState.COMPLETE and t is not best:
            steps = sorted(t.intermediate_values)
            ax.plot(steps, [t.intermediate_values[s] for s in steps], color="#bbbbbb", lw=0.8)
    for t in pruned:
        steps = sorted(t.intermediate_values)
        values = [t.intermediate_values[s] for s in steps]
        (line,) = ax.plot(steps, values, ls="--", lw=1.2, label=f"trial {t.number} (pruned)")
        ax.plot(steps[-1:], values[-1:], marker="x", ms=8, color=line.get_color())
    if best is not None and best.intermediate_values:
        steps = sorted(best.intermediate_values)
        ax.plot(
            steps,
            [best.intermediate_values[s] for s in steps],
            color="black",
            lw=2.2,
            label=f"trial {best.number} (best)",
        )
    if budget:
        ax.set_xlim(0.5, budget + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="best")
    ax.set_title("learning curves: best trial, pruned trials (×), other completed (grey)")
    return _png(fig)


@dataclass(frozen=True)
class _EpochTotals:
    trained: int
    budget: int
    saved_by: dict[str, int]  # stop reason → epochs not trained


def _epochs_trained(t: FrozenTrial) -> int:
    value = t.user_attrs.get("epochs_trained")
    return int(value) if isinstance(value, int) else len(t.intermediate_values)


def _epoch_totals(
    trials: Sequence[FrozenTrial], budget_of: Callable[[FrozenTrial], int]
) -> _EpochTotals:
    saved: dict[str, int] = {}
    trained = budget = 0
    for t in trials:
        n, b = _epochs_trained(t), budget_of(t)
        trained, budget = trained + n, budget + b
        if b > n:
            reason = str(
                t.user_attrs.get(STOP_REASON_ATTR, "pruned" if t.state.name == "PRUNED" else "?")
            )
            saved[reason] = saved.get(reason, 0) + b - n
    return _EpochTotals(trained, budget, saved)


def _epochs_figure(
    trials: Sequence[FrozenTrial], budget_of: Callable[[FrozenTrial], int], totals: _EpochTotals
) -> bytes:
    if not trials:
        raise _Skip("no finished trial")
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, ax = _new_figure(max(6.4, 0.22 * len(trials) + 2.0), 3.6)
    numbers = [t.number for t in trials]
    trained = [_epochs_trained(t) for t in trials]
    reasons = [str(t.user_attrs.get(STOP_REASON_ATTR, t.state.name.lower())) for t in trials]
    colours = [_STOP_COLOURS.get(r, "#8c8c8c") for r in reasons]
    ax.bar(numbers, trained, color=colours, width=0.8)
    saved = [max(0, budget_of(t) - n) for t, n in zip(trials, trained, strict=True)]
    ax.bar(
        numbers, saved, bottom=trained, color="none", edgecolor="#999999", hatch="///", width=0.8
    )
    handles = [Patch(color=c, label=r.replace("_", " ")) for r, c in _STOP_COLOURS.items()]
    handles.append(Patch(facecolor="none", edgecolor="#999999", hatch="///", label="saved"))
    ax.legend(handles=handles, fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("trial")
    ax.set_ylabel("epochs")
    share = 1.0 - totals.trained / totals.budget if totals.budget else 0.0
    by = ", ".join(f"{r.replace('_', ' ')} {n}" for r, n in sorted(totals.saved_by.items()))
    ax.set_title(
        f"epochs trained: {totals.trained} of {totals.budget}, {share:.0%} saved"
        + (f" ({by})" if by else ""),
        fontsize="medium",
    )
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if len(numbers) <= 30:
        ax.set_xticks(numbers)
    return _png(fig)


# --------------------------------------------------------------------------- plotly


def _plotly_html(fig: Any, *, height: int = 480) -> str:
    fig.update_layout(height=height, margin={"l": 60, "r": 30, "t": 50, "b": 50})
    return str(
        fig.to_html(
            full_html=False,
            include_plotlyjs=False,  # inlined once in the page head
            config={"displaylogo": False, "responsive": True},
        )
    )


def _importances(snap: optuna.Study, n_complete: int) -> str:
    import optuna.visualization as vis

    if n_complete < 2:
        raise _Skip(f"needs at least 2 completed trials, the study has {n_complete}")
    # fANOVA with 16 trees rather than Optuna's 64: measured on 2 cores, 0.04 s vs 0.16 s for a
    # 20-trial study and 1.3 s vs 4.7 s for 300 trials, with the same leading parameters.
    evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=0)
    try:
        fig = vis.plot_param_importances(snap, evaluator=evaluator)
    except Exception as exc:  # e.g. all params constant, or a single distinct value
        raise _Skip(f"parameter importances failed: {exc}") from None
    why = (
        "<p>fANOVA (Optuna's <code>FanovaImportanceEvaluator</code>, 16 trees, seed 0) over the "
        "search trials: how much of the variance of the objective across the searched range "
        "each parameter explains. It is not the same question as the ablation in the verdict "
        "(what switching a regularizer off costs <i>the champion</i>), which is the answer to "
        '"which regularizer mattered"; optuna-dashboard\'s own importance chart uses '
        "another method and may rank differently.</p>"
    )
    return why + _plotly_html(fig, height=360)


def _intermediate_values(snap: optuna.Study) -> str:
    import optuna.visualization as vis

    if not any(t.intermediate_values for t in snap.get_trials(deepcopy=False)):
        raise _Skip("no trial reported intermediate values")
    return _plotly_html(vis.plot_intermediate_values(snap))


def _needs_complete(n_complete: int, make: Callable[[], Any], *, height: int = 480) -> str:
    if n_complete < 1:
        raise _Skip("no completed trial yet")
    return _plotly_html(make(), height=height)


# --------------------------------------------------------------------------- HTML


def _table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(format_value(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def contributions_figure(
    contributions: Mapping[str, Mapping[str, Any]], metric: str, *, dpi: int = 100
) -> bytes:
    """Each regularizer's contribution to the champion (its ablation: the champion's value
    minus the value with it off, paired by seed) with its 95% interval over seeds."""
    scale, unit = (100.0, "points") if metric.endswith("accuracy") else (1.0, metric)
    items = sorted(contributions.items(), key=lambda kv: kv[1]["mean"])
    fig, ax = _new_figure(7.2, 1.2 + 0.45 * max(1, len(items)))
    names = [name for name, _ in items]
    means = [scale * c["mean"] for _, c in items]
    low = [scale * (c["mean"] - c["low"]) if c["low"] is not None else 0.0 for _, c in items]
    high = [scale * (c["high"] - c["mean"]) if c["high"] is not None else 0.0 for _, c in items]
    colours = ["#3a7d44" if m > 0 else "#b5533c" for m in means]
    ax.barh(names, means, xerr=[low, high], color=colours, capsize=4, height=0.6)
    ax.axvline(0.0, color="#444", linewidth=0.8)
    n = max((c["n"] for _, c in items), default=0)
    ax.set_xlabel(f"champion − champion with it off: {metric} ({unit}); 95% interval, {n} seeds")
    ax.set_title("What each regularizer contributed to the champion")
    return _png(fig, dpi=dpi)


def _verdict_section(best: Mapping[str, Any] | None, metric: str) -> str:
    """The study's answer: the same line as `run`, `best` and the dashboard note, then the
    configurations the confirm phase compared and the held-out test evaluation."""
    from search.summary import verdict

    if best is None:
        return "<p class='note'>No completed trial yet.</p>"
    parts = [f"<p class='verdict'><b>{html.escape(verdict(dict(best), metric))}</b></p>"]
    champion, test = best.get("champion"), best.get("test")
    if champion is None:
        parts.append(
            "<p class='note'>No confirm phase yet (or `search.confirm: none`): the best trial "
            "is one trial with one seed, scored on the split it was chosen on. "
            "<code>regsearch confirm STUDY</code> retrains the top configurations with fresh "
            "seeds.</p>"
        )
    rows: list[tuple[str, Any]] = []
    if champion is not None:
        val = champion["val"]
        interval = "" if val["low"] is None else f" [{val['low']:.4f}, {val['high']:.4f}]"
        rows.append(("champion configuration", f"of trial {champion['source']}"))
        rows.append((f"{metric}, mean over seeds", f"{val['mean']:.4f}{interval} (n={val['n']})"))
        rows.append(("seeds", ", ".join(map(str, champion["seeds"]))))
        if best.get("gain_interval"):
            g = best["gain_interval"]
            shown = f"{g['mean']:+.4f}" + (
                "" if g["low"] is None else f" [{g['low']:+.4f}, {g['high']:+.4f}]"
            )
            rows.append((f"gain over the baseline on {metric} (paired by seed)", shown))
    if test is not None:
        for who in ("champion", "baseline"):
            if test.get(who):
                t = test[who]
                rows.append(
                    (
                        f"test: {who}",
                        f"accuracy {t['accuracy']:.4f}, ECE {t['ece']:.4f}, NLL {t['nll']:.4f}",
                    )
                )
        if test.get("gain"):
            g = test["gain"]
            rows.append(
                (
                    "test gain (95% interval)",
                    f"{g['mean']:+.4f} [{g['low']:+.4f}, {g['high']:+.4f}] — {g['method']}",
                )
            )
    rows.append(("champion model", best.get("champion_uri") or best.get("model_uri") or "–"))
    parts.append(_table(rows))
    return "".join(parts)


def _best_table(
    best: FrozenTrial | None, metric: str, budget: int | None, model_uri: str | None = None
) -> str:
    if best is None:
        return "<p class='note'>No completed trial yet.</p>"
    attrs = best.user_attrs
    rows: list[tuple[str, Any]] = [
        ("trial", best.number),
        (metric, best.value),
        ("best epoch", attrs.get("best_epoch")),
        ("epochs trained", f"{_epochs_trained(best)}" + (f" of {budget}" if budget else "")),
        ("stop reason", attrs.get("stop_reason")),
        ("train accuracy", attrs.get("train_accuracy")),
        ("val accuracy", attrs.get("val_accuracy")),
        ("model URI", model_uri or attrs.get("model_uri") or "(not registered)"),
        ("MLflow run", attrs.get("mlflow_run_id")),
    ]
    rows += [(f"param: {k}", v) for k, v in best.params.items()]
    return _table(rows)


def _image(name: str, data: bytes, alt: str) -> str:
    encoded = base64.b64encode(data).decode("ascii")
    return (
        f"<a href='{html.escape(name)}'><img alt='{html.escape(alt)}' "
        f"src='data:image/png;base64,{encoded}'></a>"
        f"<p class='file'>{html.escape(name)}</p>"
    )


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { text-align: left; padding: .2em .8em; border-bottom: 1px solid #eee; font-size: .92em; }
th { font-weight: 600; color: #555; } img { max-width: 100%; }
.note { color: #8a6d3b; background: #fcf8e3; padding: .4em .8em; }
.file { color: #888; font-size: .8em; margin-top: 0; }
"""


def _page(title: str, head_rows: str, sections: Sequence[tuple[str, str]]) -> str:
    from plotly.offline import get_plotlyjs

    parts = [
        "<!DOCTYPE html>",
        "<html lang='en'><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{_CSS}</style>",
        f"<script type='text/javascript'>{get_plotlyjs()}</script>",
        "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
        head_rows,
    ]
    for heading, fragment in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>{fragment}</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- progress


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


# --------------------------------------------------------------------------- the report


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
        else str(study.user_attrs.get("objective_metric", "value"))
    )
    budget = config.train.epochs if config else None

    def budget_of(t: FrozenTrial) -> int:
        searched = t.params.get("epochs")
        if isinstance(searched, int):
            return searched
        return budget if budget is not None else max(map(_epochs_trained, trials), default=0)

    totals = _epoch_totals(trials, budget_of)
    result = ReportResult(index=out_dir / "index.html")

    def png_section(name: str, alt: str, make: Callable[[], bytes]) -> Callable[[], str]:
        def render() -> str:
            data = make()
            write_atomic(out_dir / name, data)
            result.pngs.append(out_dir / name)
            return _image(name, data, alt)

        return render

    import optuna.visualization as vis

    from search.summary import best_summary

    summary = best_summary(study)
    sections = [_Section("Verdict", lambda: _verdict_section(summary, metric))]
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
            lambda: _best_table(
                champion, metric, budget, model_uri_of(snap, champion) if champion else None
            ),
        ),
        _Section(
            "Optimization history",
            lambda: _needs_complete(len(complete), lambda: vis.plot_optimization_history(snap)),
        ),
        _Section(
            "Parameter importances (fANOVA, search trials)",
            lambda: _importances(snap, len(complete)),
        ),
    ]
    for name in _searched_regularizers(trials):
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
    searched = _searched_regularizers(trials)
    combos = {tuple(t.params.get(n) for n in searched) for t in complete}
    if len(searched) > 1 and _discrete(trials, searched) and 2 <= len(combos) <= _MAX_SETTINGS:
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
                lambda: _learning_curves(trials, best, metric, budget),
            ),
        ),
        _Section(
            "Epochs trained and saved",
            png_section(
                "epochs.png", "epochs per trial", lambda: _epochs_figure(trials, budget_of, totals)
            ),
        ),
        _Section(
            "Parallel coordinates",
            lambda: _needs_complete(len(complete), lambda: vis.plot_parallel_coordinate(snap)),
        ),
        _Section(
            "Slices",
            lambda: _needs_complete(len(complete), lambda: vis.plot_slice(snap), height=420),
        ),
        _Section("Intermediate values", lambda: _intermediate_values(snap)),
    ]

    rendered: list[tuple[str, str]] = []
    with _Progress([s.title for s in sections], console) as progress:
        for section in sections:
            started = time.perf_counter()
            with progress.step(section.title):
                try:
                    fragment = section.render()
                except _Skip as skip:
                    result.notes[section.title] = str(skip)
                    fragment = f"<p class='note'>Not shown: {html.escape(str(skip))}</p>"
            result.seconds[section.title] = time.perf_counter() - started
            rendered.append((section.title, fragment))

    page = _page(
        f"regsearch report — study {study.study_name}",
        _header(study, config, totals),
        rendered,
    )
    write_atomic(result.index, page.encode("utf-8"))
    return result


def _header(study: optuna.Study, config: StudyConfig | None, totals: _EpochTotals) -> str:
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
        fixed = _fixed_regularizers(config.space)
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
    return _table(rows)


def _fixed_regularizers(space: Mapping[str, Any]) -> dict[str, Any]:
    fixed = {}
    for key, value in space.items():
        name = str(key).rpartition(".")[2]
        if name in REGULARIZERS and not isinstance(value, Mapping):
            fixed[name] = value
    return fixed
