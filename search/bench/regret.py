"""`regsearch bench --only regret`: what each pruner kills, measured against every
configuration's full-budget value, on the default digits study, Fashion-MNIST with 1,000
labelled images, and the same 1,000 with a share of the training labels replaced
(`LABEL_NOISE`).

Per data set and sampler seed (`SEEDS`, those of `regsearch bench --only pruning`), one fixed
sequence of configurations: the trials of the default study's TPE search run without pruning
and without early stopping (the `none` contender of `search.bench.efficiency.PRUNERS`, its baseline
trial first), each trained for the full budget; a configuration's full-budget value is that
study's value for it (its best epoch over all epochs). Every pruner contender then replays a
study that runs exactly that sequence (the baseline trial, then the search trials' params
enqueued in order) through the real `Objective`, its curves replayed by the same `CurveBank`:
each contender sees the same configurations and the same curves and only decides where to stop
them. Training the sequences is the whole cost (the replays take seconds).

Per contender and case (data set × seed): `epochs_saved` (1 − epochs it trained ÷ the
full-budget epochs), `killed` (how many of the `TOP` configurations with the best full-budget
values the study did not complete with that value: pruned, or stopped before their best epoch)
and `best_lost` (best full-budget value − the best value among the study's COMPLETE trials).
The rule the default pruner is held to (`MAX_KILLED`, `MIN_SAVED`): at most 1 of the top 3
killed with at least 40 % of the epochs saved, in every case (one sampler seed's sequence decides
little: which contenders pass changes from one seed to the next). `CANDIDATES` are settings
tried beside `PRUNERS`; `SMOOTHED` ones run a pruner on each trial's best value so far instead
of its epoch's own (a bench-only wrapper, `BestSoFarPruner`: `search.study.studies` has no such
option).
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings
from collections.abc import Container, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.bench.efficiency import PRUNERS, SEEDS, StudyTrace, replay_study
from search.core.records import BASELINE

__all__ = [
    "CANDIDATES",
    "EPOCHS",
    "SETS",
    "SMOOTHED",
    "BestSoFarPruner",
    "RegretRow",
    "choose",
    "closest",
    "contenders",
    "pruning_regret",
    "regret",
    "regret_row",
    "summary",
    "top_configurations",
]

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
SUBSET = 1000  # labelled Fashion-MNIST images (the study's 20 % validation split among them)
LABEL_NOISE = 0.4  # share of the training split's labels replaced by another class
_FASHION = [
    "dataset.name=fashion-mnist",
    f"dataset.root={FASHION_ROOT}",
    f"dataset.subset={SUBSET}",
]
SETS: dict[str, list[str]] = {
    "digits": [],
    f"fashion-{SUBSET}": _FASHION,
    f"fashion-{SUBSET}-noise-{LABEL_NOISE:g}": [*_FASHION, f"dataset.label_noise={LABEL_NOISE}"],
}
TOP = 3
MAX_KILLED = 1  # of the TOP
MIN_SAVED = 0.40  # share of the full-budget epochs
WORKERS = 2  # processes, one torch thread each (the development machine's 2 cores)

EPOCHS = 20  # the default study's train.epochs: the budget the shares below are of


def _halving(share: float, reduction_factor: int) -> list[str]:
    """Successive halving with its first rung at `share` of the budget (rungs at that many
    epochs × `reduction_factor`**k), the top 1/`reduction_factor` of a rung going on."""
    return [
        "search.pruner={name: successive-halving, "
        f"min_resource: {round(share * EPOCHS)}, reduction_factor: {reduction_factor}}}"
    ]


# Settings tried beside `PRUNERS` (the default early stopping, patience 6, unless named):
# successive halving with its first rung at 10-30 % of the budget, keeping the top half to the
# top sixth (at 25 % with 4 or 6 the second rung is past the budget: one rung, the top quarter
# or sixth go on; `successive-halving-gentle` of `PRUNERS` is the first rung at 20 %, the top
# half);
# the default's rungs with a shorter early-stopping patience (5, 4, 3 epochs; and 4 with the
# first rung at 15 % or 25 %); a median pruner with a longer warm-up; Wilcoxon at a looser
# threshold.
CANDIDATES: dict[str, list[str]] = {
    "sh-first-10%-rf2": _halving(0.10, 2),
    "sh-first-15%-rf2": _halving(0.15, 2),
    "sh-first-15%-rf4": _halving(0.15, 4),
    "sh-first-20%-rf3": _halving(0.20, 3),
    "sh-first-25%-rf2": _halving(0.25, 2),
    "sh-first-25%-rf3": _halving(0.25, 3),
    "sh-first-25%-rf4": _halving(0.25, 4),
    "sh-first-25%-rf6": _halving(0.25, 6),
    "sh-first-30%-rf2": _halving(0.30, 2),
    "sh-first-30%-rf4": _halving(0.30, 4),
    "median-warmup-5": ["search.pruner={name: median, n_startup_trials: 5, n_warmup_steps: 5}"],
    "sh-default-patience-5": [*_halving(0.20, 2), "early_stopping.patience=5"],
    "sh-default-patience-4": [*_halving(0.20, 2), "early_stopping.patience=4"],
    "sh-default-patience-3": [*_halving(0.20, 2), "early_stopping.patience=3"],
    "sh-first-15%-rf2-patience-4": [*_halving(0.15, 2), "early_stopping.patience=4"],
    "sh-first-25%-rf2-patience-4": [*_halving(0.25, 2), "early_stopping.patience=4"],
    "wilcoxon-p0.2": ["search.pruner={name: wilcoxon, p_threshold: 0.2, n_startup_steps: 4}"],
}
# Run on each trial's best value so far (`BestSoFarPruner`): rungs on a smoothed curve.
SMOOTHED: dict[str, list[str]] = {
    "sh-default-best-so-far": PRUNERS["successive-halving"],
    "sh-gentle-best-so-far": PRUNERS["successive-halving-gentle"],
    "sh-first-15%-rf2-best-so-far": CANDIDATES["sh-first-15%-rf2"],
    "sh-first-25%-rf4-best-so-far": CANDIDATES["sh-first-25%-rf4"],
    "median-warmup-5-best-so-far": CANDIDATES["median-warmup-5"],
}


def top_configurations(
    values: Sequence[float], tiebreaks: Sequence[float | None] = (), *, top: int = TOP
) -> list[int]:
    """Indices of the `top` best values (higher is better), ties broken by the lower tie-break
    (the best epoch's validation loss, as the study ranks), then by the earlier trial."""
    breaks = list(tiebreaks) or [None] * len(values)

    def key(i: int) -> tuple[float, float, int]:
        tb = breaks[i]
        return (-values[i], tb if tb is not None else float("inf"), i)

    return sorted(range(len(values)), key=key)[:top]


@dataclass(frozen=True)
class RegretRow:
    """One contender on one data set, against the full-budget study of the same sequence."""

    epochs: int
    full_epochs: int
    pruned: int  # trials the pruner stopped (PRUNED)
    killed: list[int]  # trial numbers of the top configurations not completed at their value
    best: float  # the best value among the study's COMPLETE trials
    best_lost: float  # best full-budget value − `best`

    @property
    def epochs_saved(self) -> float:
        return 1.0 - self.epochs / self.full_epochs

    def meets(self, *, max_killed: int = MAX_KILLED, min_saved: float = MIN_SAVED) -> bool:
        return len(self.killed) <= max_killed and self.epochs_saved >= min_saved - 1e-9

    def as_dict(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "best": round(self.best, 4),
            "best_lost": round(self.best_lost, 4),
            "epochs_saved": round(self.epochs_saved, 3),
            "meets_rule": self.meets(),
        }


def regret_row(
    full_values: Sequence[float],
    full_epochs: int,
    values: Sequence[float | None],
    epochs: Sequence[int],
    *,
    tiebreaks: Sequence[float | None] = (),
    top: int = TOP,
) -> RegretRow:
    """A study's regret: `values` (per trial of the fixed sequence, None: pruned) and `epochs`
    against the same sequence's `full_values` (every trial to the full budget) and the
    `full_epochs` that took. A top configuration is killed unless the study completed it with
    its full-budget value; the best value lost is that of the study's COMPLETE trials."""
    if len(values) != len(full_values):
        raise ValueError(f"{len(values)} trials replayed for a sequence of {len(full_values)}")
    killed = [
        i
        for i in top_configurations(full_values, tiebreaks, top=top)
        if values[i] is None or values[i] < full_values[i]  # type: ignore[operator]
    ]
    best = max(v for v in values if v is not None)
    return RegretRow(
        epochs=sum(epochs),
        full_epochs=full_epochs,
        pruned=sum(v is None for v in values),
        killed=sorted(killed),
        best=best,
        best_lost=max(full_values) - best,
    )


def regret(full: StudyTrace, trace: StudyTrace, *, top: int = TOP) -> RegretRow:
    """`regret_row` of a replayed study against the full-budget study it replays."""
    if any(v is None for v in full.values):
        raise ValueError("the full-budget study pruned a trial")
    full_values = [v for v in full.values if v is not None]
    return regret_row(
        full_values,
        sum(full.epochs),
        trace.values,
        trace.epochs,
        tiebreaks=full.tiebreaks,
        top=top,
    )


# --------------------------------------------------------------------------- smoothing


def _best_so_far(trial: FrozenTrial, maximize: bool) -> FrozenTrial:
    """`trial` with each step's intermediate value replaced by the best up to that step."""
    pick = max if maximize else min
    smoothed: dict[int, float] = {}
    best: float | None = None
    for step in sorted(trial.intermediate_values):
        value = trial.intermediate_values[step]
        best = value if best is None else pick(best, value)
        smoothed[step] = best
    out = copy.copy(trial)
    out.intermediate_values = smoothed
    return out


class _SmoothedView:
    """The study as the wrapped pruner sees it: every trial's curve is its best so far."""

    def __init__(self, study: optuna.Study, maximize: bool) -> None:
        self._view_study = study
        self._maximize = maximize

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[FrozenTrial]:
        trials = self._view_study.get_trials(deepcopy=False, states=states)
        return [_best_so_far(t, self._maximize) for t in trials]

    @property
    def trials(self) -> list[FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view_study, name)


class BestSoFarPruner(optuna.pruners.BasePruner):
    """`pruner` deciding on each trial's best value so far rather than its latest epoch's:
    a successive-halving rung then compares the trials' best epochs up to the rung, not the
    one noisy epoch at it. Bench-only: `search.study.studies.make_pruner` has no such option."""

    def __init__(self, pruner: optuna.pruners.BasePruner) -> None:
        self.pruner = pruner

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
        view = _SmoothedView(study, maximize)
        return self.pruner.prune(view, _best_so_far(trial, maximize))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the replays


def contenders() -> dict[str, tuple[list[str], bool]]:
    """Every contender: its `--set` items and whether it runs on best-so-far curves."""
    return {
        **{name: (items, False) for name, items in PRUNERS.items()},
        **{name: (items, False) for name, items in CANDIDATES.items()},
        **{name: (items, True) for name, items in SMOOTHED.items()},
    }


def _skip_reason(name: str) -> str | None:
    if name.startswith("fashion") and not FASHION_ROOT.is_dir():
        return f"{FASHION_ROOT} is absent (Debian's dataset-fashion-mnist installs it)"
    return None


def _set_job(job: tuple[str, int]) -> dict[str, Any]:
    """One data set and sampler seed, in its own process with one bank: the full-budget
    study, then every contender on its sequence."""
    import torch

    from search.bench.efficiency import CurveBank, _config
    from search.core.memory import retain_freed_memory
    from search.data.dataset import load_dataset
    from search.training.auto import resolve
    from search.training.network import check_network

    torch.set_num_threads(1)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # wilcoxon, patient
    warnings.filterwarnings("ignore", "WilcoxonPruner finds steps", UserWarning)
    retain_freed_memory()
    name, seed = job
    started = time.perf_counter()
    base = _config([*SETS[name], *PRUNERS["none"]], seed)
    data = load_dataset(base.dataset)

    def config(items: list[str]) -> Any:  # the study as `regsearch run` would store it
        return check_network(
            resolve(_config([*SETS[name], *items], seed), data), data, export=False
        )

    bank = CurveBank()
    full = bank.costed(replay_study(config(PRUNERS["none"]).config, data, bank))
    sequence = [p for p, phase in zip(full.params, full.phases, strict=True) if phase != BASELINE]
    trained = time.perf_counter() - started
    rows: dict[str, dict[str, Any]] = {}
    for contender, (items, smoothed) in contenders().items():
        trace = replay_study(
            config(items).config,
            data,
            bank,
            enqueue=sequence,
            wrap_pruner=BestSoFarPruner if smoothed else None,
        )
        if trace.params != full.params:
            raise RuntimeError(f"{name} seed {seed}, {contender}: other configurations ran")
        rows[contender] = {
            **regret(full, trace).as_dict(),
            "optuna_seconds": round(trace.own_seconds, 2),
        }
    top = top_configurations([v or 0.0 for v in full.values], full.tiebreaks)
    choice = config([])
    return {
        "data": {
            "train": len(data.train),
            "val": len(data.val),
            "test": len(data.test),
            "label_noise": base.dataset.label_noise,
            "model": choice.config.model.name,
            "batch_size": choice.config.train.batch_size,
        },
        "full_budget": {
            "values": [round(v or 0.0, 4) for v in full.values],
            "epochs": sum(full.epochs),
            "top": {str(i): round(full.values[i] or 0.0, 4) for i in top},
            "best": round(max(v or 0.0 for v in full.values), 4),
            "baseline": round(full.values[0] or 0.0, 4),
        },
        "rows": rows,
        "trained_epochs": bank.trained_epochs,
        "epoch_seconds": round(full.epoch_seconds, 3),
        "training_seconds": round(trained, 1),
        "seconds": round(time.perf_counter() - started, 1),
    }


_NOT_PRUNERS = ("none", "early_stopping")


def choose(
    rows: Mapping[str, Mapping[str, Mapping[str, Any]]], default: str
) -> tuple[str | None, list[str]]:
    """(the setting to use, every contender meeting the rule on every set, best first) from
    `rows` (set -> contender -> row): the default when it meets the rule everywhere, else the
    one that meets it saving the most epochs (mean over the sets), fewer kills then less value
    lost breaking ties; None when none meets it. `none` and early stopping alone are not
    pruners."""
    names = list(next(iter(rows.values()))) if rows else []
    passing = [
        n for n in names if n not in _NOT_PRUNERS and all(r[n]["meets_rule"] for r in rows.values())
    ]

    def key(n: str) -> tuple[float, int, float]:
        per_set = [r[n] for r in rows.values()]
        return (
            -statistics.mean(r["epochs_saved"] for r in per_set),
            sum(len(r["killed"]) for r in per_set),
            sum(r["best_lost"] for r in per_set),
        )

    passing.sort(key=key)
    if default in passing:
        return default, passing
    return (passing[0] if passing else None), passing


def closest(rows: Mapping[str, Mapping[str, Mapping[str, Any]]], *, n: int = 3) -> list[str]:
    """The `n` pruners that come nearest the rule: most cases met, then the fewest kills over
    `MAX_KILLED` (summed over the cases: the regret comes first), then the least shortfall of
    epochs saved below `MIN_SAVED` (summed), then the most epochs saved (mean)."""
    names = [c for c in (next(iter(rows.values())) if rows else {}) if c not in _NOT_PRUNERS]

    def key(c: str) -> tuple[int, int, float, float]:
        per_case = [r[c] for r in rows.values()]
        return (
            -sum(r["meets_rule"] for r in per_case),
            sum(max(0, len(r["killed"]) - MAX_KILLED) for r in per_case),
            sum(max(0.0, MIN_SAVED - r["epochs_saved"]) for r in per_case),
            -statistics.mean(r["epochs_saved"] for r in per_case),
        )

    return sorted(names, key=key)[:n]


def _case(name: str, seed: int) -> str:
    return f"{name} seed {seed}"


def _table(case: str, result: dict[str, Any], default: str) -> list[str]:
    d, full = result["data"], result["full_budget"]
    noise = f", {d['label_noise']:.0%} of training labels replaced" if d["label_noise"] else ""
    top = ", ".join(f"#{i} {v:.4f}" for i, v in full["top"].items())
    third = min(full["top"].values())
    tied = sum(v == third for v in full["values"]) - sum(v == third for v in full["top"].values())
    also = f" ({tied} more at {third:.4f})" if tied else ""
    lines = [
        f"{case}: {d['train']:,} train / {d['val']:,} val images{noise}; {d['model']}, "
        f"batch {d['batch_size']}",
        f"  {len(full['values'])} configurations (TPE, no pruning, no early stopping) × "
        f"{EPOCHS} epochs = {full['epochs']} epochs; full-budget top {TOP}: {top}{also}; "
        f"baseline #0 {full['baseline']:.4f}",
        f"  {'contender':<30} {'epochs':>6} {'saved':>6} {'pruned':>6} {'killed':>15} "
        f"{'best':>7} {'lost (val images)':>17}  rule",
    ]
    for contender, row in result["rows"].items():
        mark = "*" if contender == default else " "
        killed = f"{len(row['killed'])}/{TOP}" + (
            f" {','.join(f'#{i}' for i in row['killed'])}" if row["killed"] else ""
        )
        lost = f"{row['best_lost']:.4f} ({round(row['best_lost'] * d['val'])})"
        lines.append(
            f" {mark}{contender:<30} {row['epochs']:>6} {row['epochs_saved']:>6.1%} "
            f"{row['pruned']:>6} {killed:>15} {row['best']:>7.4f} {lost:>17}  "
            f"{'meets' if row['meets_rule'] else '-'}"
        )
    return lines


def summary(rows: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per contender, over every case (set and seed) of `rows`: the cases it meets the rule
    in, its kills (all cases together, and the most in one), its epochs saved (mean and
    least) and the most best value it lost in one case."""
    out: dict[str, dict[str, Any]] = {}
    for contender in next(iter(rows.values())) if rows else {}:
        per_case = [r[contender] for r in rows.values()]
        out[contender] = {
            "cases_meeting_rule": sum(r["meets_rule"] for r in per_case),
            "cases": len(per_case),
            "killed": sum(len(r["killed"]) for r in per_case),
            "killed_most": max(len(r["killed"]) for r in per_case),
            "saved_mean": round(statistics.mean(r["epochs_saved"] for r in per_case), 3),
            "saved_least": round(min(r["epochs_saved"] for r in per_case), 3),
            "lost_most": round(max(r["best_lost"] for r in per_case), 4),
        }
    return out


def _summary_table(table: dict[str, dict[str, Any]], default: str) -> list[str]:
    cases = next(iter(table.values()))["cases"] if table else 0
    lines = [
        f"all {cases} cases (data set × sampler seed):",
        f"  {'contender':<30} {'meets':>7} {'killed':>8} {'most':>5} {'saved':>6} "
        f"{'least':>6} {'most lost':>9}",
    ]
    for contender, s in table.items():
        mark = "*" if contender == default else " "
        lines.append(
            f" {mark}{contender:<30} {s['cases_meeting_rule']:>3}/{s['cases']:<3} "
            f"{s['killed']:>3}/{TOP * s['cases']:<4} {s['killed_most']:>5} "
            f"{s['saved_mean']:>6.1%} {s['saved_least']:>6.1%} {s['lost_most']:>9.4f}"
        )
    return lines


def pruning_regret() -> dict[str, Any]:
    """Every contender's regret on every data set (those whose files are here) and sampler
    seed, one process per case, `WORKERS` at a time, and the verdict on the default pruner."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from search.bench.efficiency import _default_pruner

    started = time.perf_counter()
    skipped = {name: reason for name in SETS if (reason := _skip_reason(name)) is not None}
    jobs = [(n, seed) for n in SETS if n not in skipped for seed in SEEDS]
    jobs.sort(key=lambda job: job[0] == "digits")  # the long sets first, digits fills in
    with ProcessPoolExecutor(WORKERS, mp_context=multiprocessing.get_context("spawn")) as pool:
        done = dict(zip(jobs, pool.map(_set_job, jobs), strict=True))
    cases = {_case(n, seed): done[n, seed] for n in SETS for seed in SEEDS if (n, seed) in done}
    default = _default_pruner()
    rows = {case: r["rows"] for case, r in cases.items()}
    chosen, passing = choose(rows, default)
    near = closest(rows)
    meets = {case: r[default]["meets_rule"] for case, r in rows.items()}
    rule = (
        f"killed ≤ {MAX_KILLED} of the full-budget top {TOP} and ≥ {MIN_SAVED:.0%} of epochs saved"
    )
    if all(meets.values()):
        verdict = f"the default ({default}) meets the rule ({rule}) in every case: keep it"
    else:
        verdict = (
            f"the default ({default}) fails the rule ({rule}) in "
            f"{sum(not ok for ok in meets.values())} of {len(meets)} cases; "
            + (
                f"meeting it in every case: {', '.join(passing)}; recommended: {chosen}"
                if chosen
                else "no contender meets it in every case; closest: " + ", ".join(near)
            )
        )
    table = summary(rows)
    lines: list[str] = []
    for case, result in cases.items():
        lines += [*_table(case, result, default), ""]
    for name, reason in skipped.items():
        lines += [f"{name}: skipped: {reason}", ""]
    lines += [*_summary_table(table, default), "", f"verdict: {verdict}"]
    return {
        "tables": "\n".join(lines),
        "verdict": verdict,
        "default": default,
        "default_meets_rule": meets,
        "meeting_rule_in_every_case": passing,
        "recommended": chosen,
        "closest": near,
        "summary": table,
        "rule": {"top": TOP, "max_killed": MAX_KILLED, "min_epochs_saved": MIN_SAVED},
        "contenders": {
            n: {"set": items, "best_so_far": s} for n, (items, s) in contenders().items()
        },
        "cases": cases,
        "skipped": skipped,
        "seeds": list(SEEDS),
        "workers": WORKERS,
        "trained_epochs": sum(r["trained_epochs"] for r in cases.values()),
        "seconds": round(time.perf_counter() - started, 1),
    }
