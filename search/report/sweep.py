"""The answer of a size sweep, drawn: against training-set size (log axis), the champion's and
the baseline recipe's test accuracy, the chosen value of each searched regularizer with its
spread over the top configurations, and the champion's train–validation gap; one sentence
per regularizer; the table as CSV and JSON. Written by `regsearch report SWEEP`."""

from __future__ import annotations

import csv
import html
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna

from search.config.space import REGULARIZERS, space_of
from search.core.files import write_atomic
from search.core.records import (
    PHASE_ATTR,
    REFIT,
    TRAIN_ACCURACY_ATTR,
    TRAIN_IMAGES_ATTR,
    VAL_ACCURACY_ATTR,
)
from search.report.figures import new_figure, png
from search.report.summary import best_summary, format_value
from search.study.evidence import TEST_ATTR, study_config
from search.study.refit import REFIT_OF_ATTR
from search.study.studies import best_trial
from search.study.sweep import WARM_START_ATTR, sweep_studies, top_configurations

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

__all__ = [
    "SweepReport",
    "sweep_figure",
    "sweep_rows",
    "sweep_table",
    "trends",
    "write_sweep_report",
]


@dataclass(frozen=True)
class SweepReport:
    index: Path
    figure: Path
    csv: Path
    json: Path


def _x(row: dict[str, Any]) -> float:
    return float(row["train_images"] or row["fraction"])


def sweep_figure(rows: Sequence[dict[str, Any]], *, dpi: int = 100) -> bytes:
    """Four panels sharing a log x axis of training images: test accuracy (champion and
    baseline recipe); each searched regularizer's chosen value (bars: min–max over the top
    configurations); each one's contribution by ablation (bars: 95% interval over seeds);
    the champion's train − validation accuracy gap."""
    fig, (acc, reg, contrib, gap) = new_figure(7.0, 10.0, rows=4)
    xs = [_x(r) for r in rows]
    for key, label, style in (
        ("champion_test", "champion", "o-"),
        ("baseline_test", "baseline recipe", "s--"),
    ):
        points = [(x, r[key]) for x, r in zip(xs, rows, strict=True) if r[key] is not None]
        if points:
            acc.plot(*zip(*points, strict=True), style, label=label)
    acc.set_ylabel("test accuracy")
    if acc.get_legend_handles_labels()[0]:  # none before a study has a test evaluation
        acc.legend(loc="lower right", fontsize=8)
    acc.grid(alpha=0.3)
    names = sorted({k for r in rows for k in r["regularizers"]})
    for name in names:
        _bars(reg, xs, [_chosen(r, name) for r in rows], label=name)
    reg.set_ylabel("chosen value")
    reg.set_yscale("symlog", linthresh=0.01)
    if names:
        reg.legend(loc="best", fontsize=7, ncols=2)
    reg.grid(alpha=0.3)
    ablated = sorted({k for r in rows for k in r.get("contributions", {})})
    scale, unit = _scale(rows)
    for name in ablated:
        _bars(contrib, xs, [_contribution(r, name, scale) for r in rows], label=name)
    contrib.axhline(0.0, color="grey", lw=0.8)
    contrib.set_ylabel(f"contribution ({unit})")
    contrib.set_title("ablation: champion − champion without it (95% interval)", fontsize=8)
    if ablated:
        contrib.legend(loc="best", fontsize=7, ncols=2)
    contrib.grid(alpha=0.3)
    points = [(x, r["train_val_gap"]) for x, r in zip(xs, rows, strict=True)]
    points = [p for p in points if p[1] is not None]
    if points:
        gap.plot(*zip(*points, strict=True), "o-", color="tab:red")
    gap.axhline(0.0, color="grey", lw=0.8)
    gap.set_ylabel("train − val accuracy")
    gap.set_xlabel("training images (log)")
    gap.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, NullFormatter

    gap.set_xticks(xs)  # a tick at each study's size, and only there
    gap.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    gap.xaxis.set_minor_formatter(NullFormatter())
    gap.grid(alpha=0.3)
    fig.suptitle("How much regularization for how much data")
    return png(fig, dpi=dpi)


Bar = tuple[float, float, float] | None  # (value, low, high)


def _chosen(row: dict[str, Any], name: str) -> Bar:
    if name not in row["regularizers"]:
        return None
    value = float(row["regularizers"][name])
    low, high = row["spread"].get(name) or (value, value)
    return value, float(low), float(high)


def _scale(rows: Sequence[dict[str, Any]]) -> tuple[float, str]:
    """(factor, unit) of the contributions: accuracy points, else the metric's own units."""
    metric = next((r["metric"] for r in rows if r.get("metric")), "val_accuracy")
    return (100.0, "pt") if str(metric).endswith("accuracy") else (1.0, str(metric))


def _contribution(row: dict[str, Any], name: str, scale: float) -> Bar:
    c = (row.get("contributions") or {}).get(name) or {}
    if c.get("mean") is None:
        return None
    mean = scale * float(c["mean"])
    low = scale * float(c["low"]) if c.get("low") is not None else mean
    high = scale * float(c["high"]) if c.get("high") is not None else mean
    return mean, low, high


def _bars(ax: Any, xs: Sequence[float], bars: Sequence[Bar], *, label: str) -> None:
    """A line through the values with error bars from low to high, skipping gaps."""
    points = [(x, b) for x, b in zip(xs, bars, strict=True) if b is not None]
    if not points:
        return
    x = [p[0] for p in points]
    y = [p[1][0] for p in points]
    below = [max(0.0, p[1][0] - p[1][1]) for p in points]
    above = [max(0.0, p[1][2] - p[1][0]) for p in points]
    ax.errorbar(x, y, yerr=[below, above], marker="o", capsize=3, label=label)


_COLUMNS = (
    "study",
    "fraction",
    "train_images",
    "trials",
    "champion_val",
    "champion_test",
    "baseline_test",
    "train_val_gap",
    "warm_start_from",
)


def _csv(rows: Sequence[dict[str, Any]]) -> bytes:
    names = sorted({k for r in rows for k in r["regularizers"]})
    out = io.StringIO()
    writer = csv.writer(out)
    spreads = [f"{n}_{end}" for n in names for end in ("low", "high")]
    ablated = sorted({k for r in rows for k in r.get("contributions", {})})
    contributions = [f"contribution_{n}" for n in ablated]
    writer.writerow([*_COLUMNS, *names, *spreads, *contributions])
    for r in rows:
        spread = [(r["spread"].get(n) or [None, None])[i] for n in names for i in (0, 1)]
        writer.writerow(
            [
                *("" if r[c] is None else r[c] for c in _COLUMNS),
                *("" if r["regularizers"].get(n) is None else r["regularizers"][n] for n in names),
                *("" if v is None else v for v in spread),
                *((r.get("contributions", {}).get(n) or {}).get("mean", "") for n in ablated),
            ]
        )
    return out.getvalue().encode()


def write_sweep_report(
    storage: optuna.storages.BaseStorage, sweep: str, out: Path
) -> SweepReport | None:
    """index.html, sweep.png, sweep.csv and sweep.json of the sweep in `out`; None when the
    storage holds no study of a sweep named `sweep`."""
    rows = sweep_rows(storage, sweep)
    if not rows:
        return None
    sentences = trends(rows)
    paths = SweepReport(
        out / "index.html", out / "sweep.png", out / "sweep.csv", out / "sweep.json"
    )
    write_atomic(paths.figure, sweep_figure(rows))
    write_atomic(paths.csv, _csv(rows))
    write_atomic(
        paths.json,
        json.dumps({"sweep": sweep, "rows": rows, "trends": sentences}, indent=2).encode(),
    )
    table = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(format_value(r[c]))}</td>"
            for c in ("study", "train_images", "champion_val", "champion_test", "baseline_test")
        )
        + f"<td>{html.escape(format_value(r['train_val_gap']))}</td></tr>"
        for r in rows
    )
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>sweep {html.escape(sweep)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem}}
td,th{{padding:.2rem .6rem;text-align:right}}td:first-child{{text-align:left}}</style></head>
<body><h1>Sweep {html.escape(sweep)}: how much regularization for how much data</h1>
<ul>{"".join(f"<li>{html.escape(s)}</li>" for s in sentences)}</ul>
<p><img src="sweep.png" alt="test accuracy, chosen regularization and train–val gap against
training-set size" width="700"></p>
<table><tr><th>study</th><th>train images</th><th>val</th><th>test</th><th>baseline test</th>
<th>train − val</th></tr>{table}</table>
<p>How to read it: each point is one study of the sweep, trained on that many images and
validated and tested on the same images as the others. A regularizer whose chosen value moves
beyond the bars (the spread over each study's top configurations) is one whose need depends on
the amount of data. The table is in <a href="sweep.csv">sweep.csv</a> and
<a href="sweep.json">sweep.json</a>.</p></body></html>
"""
    write_atomic(paths.index, page.encode())
    return paths


def _gap(study: optuna.Study, trial: FrozenTrial | None) -> float | None:
    """The champion's train − validation accuracy: of its best-seed retrain when the
    registered model is the refit (which trained on the validation images too)."""
    if trial is not None and trial.user_attrs.get(PHASE_ATTR) == REFIT:
        trial = study.trials[int(trial.user_attrs[REFIT_OF_ATTR])]
    if trial is None:
        return None
    train, val = trial.user_attrs.get(TRAIN_ACCURACY_ATTR), trial.user_attrs.get(VAL_ACCURACY_ATTR)
    return None if train is None or val is None else float(train) - float(val)


def sweep_rows(storage: optuna.storages.BaseStorage, sweep: str) -> list[dict[str, Any]]:
    """One row per fraction: its size, the champion's values and test accuracy, the baseline
    recipe's, the chosen value of each regularizer and its spread over the top
    configurations, the champion's train–validation gap, and trials to the best value."""
    rows = []
    for fraction, name in sweep_studies(storage, sweep):
        study = optuna.load_study(study_name=name, storage=storage)
        config = study_config(study)
        best = best_summary(study)
        champion = best_trial(study)
        test = study.user_attrs.get(TEST_ATTR) or {}
        values: dict[str, float] = {}
        spread: dict[str, list[float]] = {}
        if config is not None and champion is not None:
            space = space_of(config)
            fixed = space.fixed_values()
            searched = {e.name for e in space.searched} & set(REGULARIZERS)
            chosen = {**fixed, **(best or {}).get("params", {})}
            values = {k: float(v) for k, v in chosen.items() if k in searched}
            top = [{**fixed, **p} for p in top_configurations(study, k=5)]
            for key in values:
                seen = [values[key]] + [float(p[key]) for p in top if key in p]
                spread[key] = [min(seen), max(seen)]  # the champion's value and the top 5
        rows.append(
            {
                "study": name,
                "fraction": fraction,
                "train_images": study.user_attrs.get(TRAIN_IMAGES_ATTR),
                "trials": len(study.get_trials(deepcopy=False)),
                "metric": config.objective.metric if config is not None else None,
                # The confirmed champion's mean over its seeds; before (or without) a confirm
                # phase, the best trial's value.
                "champion_val": _champion_value(best),
                "champion_test": (test.get("champion") or {}).get("accuracy"),
                "baseline_test": (test.get("baseline") or {}).get("accuracy"),
                "train_val_gap": _gap(study, champion),
                "regularizers": values,
                "spread": spread,
                # The ablation's answer: the champion's value minus its value with the
                # regularizer off, paired by seed ({name: {mean, low, high, n}}).
                "contributions": (best or {}).get("contributions") or {},
                "warm_start_from": study.user_attrs.get(WARM_START_ATTR) or None,
            }
        )
    return rows


def _champion_value(best: dict[str, Any] | None) -> float | None:
    if best is None:
        return None
    confirmed = (best.get("champion") or {}).get("val") or {}
    mean = confirmed.get("mean")
    return float(mean) if mean is not None else best["value"]


def trends(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One sentence per regularizer on how its chosen value moves from the smallest training
    set to the largest ("aug_strength falls from 0.8 at 180 images to 0.3 at 1,078")."""
    if len(rows) < 2:
        return []
    first, last = rows[0], rows[-1]

    def size(row: dict[str, Any]) -> str:
        n = row.get("train_images")
        return f"{n:,} images" if n else f"fraction {row['fraction']:g}"

    scale, unit = _scale(rows)
    out = []
    for key in sorted(set(first["regularizers"]) & set(last["regularizers"])):
        a, b = first["regularizers"][key], last["regularizers"][key]
        a_lo, a_hi = first["spread"].get(key) or (a, a)
        b_lo, b_hi = last["spread"].get(key) or (b, b)
        if a == b or (a_lo <= b <= a_hi and b_lo <= a <= b_hi):
            out.append(
                f"{key}: about the same ({_two(a)} at {size(first)}, {_two(b)} at {size(last)}; "
                "each within the other's spread over the top configurations)"
            )
        else:
            way = "falls" if b < a else "rises"
            out.append(f"{key}: {way} from {_two(a)} at {size(first)} to {_two(b)} at {size(last)}")
            if a_lo <= b_hi and b_lo <= a_hi:
                out[-1] += " (the spreads over the top configurations overlap)"
        ends = [(r.get("contributions") or {}).get(key) or {} for r in (first, last)]
        if all(c.get("mean") is not None for c in ends):
            ca, cb = (scale * float(c["mean"]) for c in ends)
            digits = ".1f" if unit == "pt" else ".4g"
            cost = f"{ca:+{digits}} {unit} at {size(first)}, {cb:+{digits}} {unit} at {size(last)}"
            out[-1] += f"; taking it away costs {cost}"
    return out


def _two(value: float) -> str:
    return format_value(value, digits=2)


def sweep_table(storage: optuna.storages.BaseStorage, sweep: str) -> tuple[Any, list[str]]:
    """The sweep as a rich table (a row per fraction) and its one-sentence trends."""
    from rich.table import Table

    rows = sweep_rows(storage, sweep)
    names = [k for k in REGULARIZERS if any(k in r["regularizers"] for r in rows)]
    table = Table(
        title=f"sweep {sweep} — the champion at each training-set size", header_style="bold"
    )
    for column in ("study", "train images", "val", "test", "baseline test", "gap", *names):
        table.add_column(column, justify="left" if column == "study" else "right")
    for r in rows:
        table.add_row(
            r["study"],
            format_value(r["train_images"]),
            format_value(r["champion_val"]),
            format_value(r["champion_test"]),
            format_value(r["baseline_test"]),
            format_value(r["train_val_gap"]),
            *(format_value(r["regularizers"].get(k)) for k in names),
        )
    return table, trends(rows)
