"""The report's matplotlib figures (Agg canvas, no pyplot state), as PNG bytes: the train/val
gap against each regularizer, per grid setting, learning curves, epochs saved, contributions."""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from optuna.trial import FrozenTrial, TrialState

from search.core.records import STOP_REASON_ATTR, TRAIN_ACCURACY_ATTR, VAL_ACCURACY_ATTR
from search.report.data import (
    MAX_LEVELS,
    MAX_PRUNED_CURVES,
    MAX_SETTINGS,
    EpochTotals,
    Skip,
    epochs_trained,
    finite_number,
    spread,
)
from search.report.summary import format_value

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "contributions_figure",
    "epochs_figure",
    "learning_curves",
    "new_figure",
    "png",
    "regularizer_figure",
    "settings_figure",
]


_STOP_COLOURS = {"max_epochs": "#4c72b0", "early_stopping": "#55a868", "pruned": "#dd8452"}


def new_figure(width: float, height: float, *, rows: int = 1) -> tuple[Figure, Any]:
    """A figure on the Agg canvas, without pyplot: no global state, no GUI backend."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 1, sharex=True) if rows > 1 else fig.subplots()
    return fig, axes


def png(fig: Figure, *, dpi: int = 100) -> bytes:
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
        x = finite_number(t.params.get(name))
        train = finite_number(t.user_attrs.get(TRAIN_ACCURACY_ATTR))
        val = finite_number(t.user_attrs.get(VAL_ACCURACY_ATTR))
        if x is not None and train is not None and val is not None:
            points.append((x, train, val, t.state == TrialState.COMPLETE))
    if not points:
        raise Skip(f"no trial with a numeric {name} and train/val accuracy attributes")

    fig, (top, bottom) = new_figure(6.4, 5.0, rows=2)
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
    if 1 < len(levels) <= MAX_LEVELS:

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
    if 1 < len(levels) <= MAX_LEVELS:
        xlabel += " — lines: mean of completed trials per value"
    bottom.set_xlabel(xlabel)
    bottom.grid(alpha=0.3)
    fig.suptitle(f"{name}: train vs validation accuracy ({len(points)} trials)")
    return png(fig, dpi=dpi)


def settings_figure(names: Sequence[str], trials: Sequence[FrozenTrial]) -> bytes:
    """Mean train and validation accuracy and gap per combination of the searched regularizers'
    values (other params, e.g. seeds, averaged over; dots are single trials): for grid studies
    where one parameter's figure mixes the others, e.g. none / MixUp / CutMix / both."""
    groups: dict[tuple[float, ...], list[tuple[float, float]]] = {}
    for t in trials:
        if t.state != TrialState.COMPLETE:
            continue
        values = [finite_number(t.params.get(n)) for n in names]
        train = finite_number(t.user_attrs.get(TRAIN_ACCURACY_ATTR))
        val = finite_number(t.user_attrs.get(VAL_ACCURACY_ATTR))
        key = tuple(v for v in values if v is not None)
        if len(key) == len(names) and train is not None and val is not None:
            groups.setdefault(key, []).append((train, val))
    if not 2 <= len(groups) <= MAX_SETTINGS:
        raise Skip(f"{len(groups)} settings: drawn for 2 to {MAX_SETTINGS}")
    keys = sorted(groups)
    labels = [
        "\n".join(f"{n}={format_value(v)}" for n, v in zip(names, k, strict=True)) for k in keys
    ]
    fig, (top, bottom) = new_figure(max(6.4, 1.3 * len(keys) + 1.5), 5.4, rows=2)
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
    return png(fig)


def learning_curves(
    trials: Sequence[FrozenTrial], best: FrozenTrial | None, metric: str, budget: int | None
) -> bytes:
    curves = [t for t in trials if t.intermediate_values]
    if not curves:
        raise Skip("no trial reported intermediate values")
    from matplotlib.ticker import MaxNLocator

    pruned = spread([t for t in curves if t.state == TrialState.PRUNED], MAX_PRUNED_CURVES)
    fig, ax = new_figure(6.4, 4.0)
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
    return png(fig)


def epochs_figure(
    trials: Sequence[FrozenTrial], budget_of: Callable[[FrozenTrial], int], totals: EpochTotals
) -> bytes:
    if not trials:
        raise Skip("no finished trial")
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, ax = new_figure(max(6.4, 0.22 * len(trials) + 2.0), 3.6)
    numbers = [t.number for t in trials]
    trained = [epochs_trained(t) for t in trials]
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
    return png(fig)


def contributions_figure(
    contributions: Mapping[str, Mapping[str, Any]], metric: str, *, dpi: int = 100
) -> bytes:
    """Each regularizer's contribution to the champion (its ablation: the champion's value
    minus the value with it off, paired by seed) with its 95% interval over seeds."""
    scale, unit = (100.0, "points") if metric.endswith("accuracy") else (1.0, metric)
    items = sorted(contributions.items(), key=lambda kv: kv[1]["mean"])
    fig, ax = new_figure(7.2, 1.2 + 0.45 * max(1, len(items)))
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
    return png(fig, dpi=dpi)
