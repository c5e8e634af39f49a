"""The report page's HTML: key/value tables, the verdict and best-trial sections, embedded PNG
figures and the page around them (plotly.js inlined once, so the page works offline).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from typing import Any

from optuna.trial import FrozenTrial

from search.core.records import (
    BEST_EPOCH_ATTR,
    MODEL_URI_ATTR,
    RUN_ID_ATTR,
    STOP_REASON_ATTR,
    TRAIN_ACCURACY_ATTR,
    VAL_ACCURACY_ATTR,
)
from search.report.data import epochs_trained
from search.report.summary import format_value

__all__ = ["best_table", "image", "page_html", "table", "verdict_section"]


def table(rows: Sequence[tuple[str, Any]]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(format_value(v))}</td></tr>"
        for k, v in rows
    )
    return f"<table>{body}</table>"


def verdict_section(best: Mapping[str, Any] | None, metric: str, *, grid: bool = False) -> str:
    """The study's answer: the same line as `run`, `best` and the dashboard note, then the
    configurations the confirm phase compared and the held-out test evaluation. `grid`: a
    grid study, which runs its grid only (no baseline recipe, no confirm phase)."""
    from search.report.summary import verdict

    if best is None:
        return "<p class='note'>No completed trial yet.</p>"
    parts = [f"<p class='verdict'><b>{html.escape(verdict(dict(best), metric))}</b></p>"]
    champion, test = best.get("champion"), best.get("test")
    confirm = best.get("confirm") or {}
    if champion is None and confirm.get("started") and confirm.get("pending"):
        parts.append(
            f"<p class='note'>The confirm phase is under way ({confirm['pending']} to go): "
            "until it ends, the best trial is one trial with one seed. "
            "<code>regsearch run STUDY</code> (or <code>regsearch confirm STUDY</code>) "
            "finishes it.</p>"
        )
    elif champion is None and grid:
        parts.append(
            "<p class='note'>A grid study runs its grid only: no baseline recipe and no "
            "confirm phase. The best trial is one trial with one seed, scored on the split it "
            "was chosen on.</p>"
        )
    elif champion is None:
        parts.append(
            "<p class='note'>No confirm phase yet (or `search.confirm: none`): the best trial "
            "is one trial with one seed, scored on the split it was chosen on. "
            "<code>regsearch confirm STUDY</code> retrains the top configurations with fresh "
            "seeds.</p>"
        )
    rows: list[tuple[str, Any]] = [("champion", best.get("champion_name") or "–")]
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
    parts.append(table(rows))
    return "".join(parts)


def best_table(
    best: FrozenTrial | None, metric: str, budget: int | None, model_uri: str | None = None
) -> str:
    if best is None:
        return "<p class='note'>No completed trial yet.</p>"
    from search.report.summary import REFIT_VALUE, refit_trained_on, trained_params

    attrs = best.user_attrs
    # A refit trains on the validation images: it has no validation score of its own.
    trained_on = refit_trained_on(best)
    refit = trained_on is not None
    rows: list[tuple[str, Any]] = [
        ("trial", best.number),
        (f"{metric} ({REFIT_VALUE})" if refit else metric, best.value),
    ]
    if refit:
        rows.append(("trained on", trained_on))
    else:  # a refit keeps its last epoch
        rows.append(("best epoch", attrs.get(BEST_EPOCH_ATTR)))
    rows += [
        ("epochs trained", f"{epochs_trained(best)}" + (f" of {budget}" if budget else "")),
        ("stop reason", attrs.get(STOP_REASON_ATTR)),
        ("train accuracy", attrs.get(TRAIN_ACCURACY_ATTR)),
        ("val accuracy", "– (trained on)" if refit else attrs.get(VAL_ACCURACY_ATTR)),
        ("model URI", model_uri or attrs.get(MODEL_URI_ATTR) or "(not registered)"),
        ("MLflow run", attrs.get(RUN_ID_ATTR)),
    ]
    rows += [(f"param: {k}", v) for k, v in trained_params(best).items()]
    return table(rows)


def image(name: str, data: bytes, alt: str) -> str:
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


def page_html(title: str, head_rows: str, sections: Sequence[tuple[str, str]]) -> str:
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
