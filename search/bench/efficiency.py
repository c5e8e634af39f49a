"""`regsearch bench --only pruning | samplers`: what pruning and the sampler buy the default
study, measured on its own space and data (digits, 24 trials, three sampler seeds).

Training every contender's studies for real would take about an hour on 2 CPU cores. Each study
instead runs through the real `Objective` (its sampler, pruner, early stopping, baseline trial
and surplus rule) with a trainer that replays learning curves from a `CurveBank`. The bank
trains a configuration for real, one epoch at a time, the first time any study asks for that
epoch: a configuration and seed give the same curve on the CPU, and stopping early only
truncates it (the learning-rate schedule spans the configured epochs). Every contender thus sees
exactly the values its real study would and the bank trains each configuration only as far as
the furthest contender went. Epoch counts are exact; a contender's wall time is its own Optuna
and objective time, measured in the replay, plus its trials' set-ups and epochs at the bank's
median cost (each epoch was trained once, for whichever contender reached it first).
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import optuna
import torch

from search.bench.runs import study_settings
from search.config.schema import EarlyStoppingConfig, StudyConfig, TrialConfig
from search.core.records import FINISHED, PHASE_ATTR, TIEBREAK_ATTR
from search.data.dataset import Dataset, load_dataset
from search.study.studyfile import load_config
from search.training.train import (
    MAX_EPOCHS,
    EpochCallback,
    Epochs,
    EpochStats,
    TrainResult,
    run_epochs,
)

__all__ = [
    "PRUNERS",
    "SAMPLERS",
    "CurveBank",
    "choose_pruner",
    "prefetch",
    "pruning",
    "replay_study",
    "samplers",
]

SEEDS = (0, 1, 2)  # sampler seeds; every contender runs the same ones
# Validation accuracies on digits that count as "a good model": the 0.98 (the baseline
# recipe, trial 0, reaches it alone) and 0.99, which tells the samplers apart.
TARGETS = (0.98, 0.99)
CHECKPOINTS = (8, 16, 24)  # trial budgets the samplers are compared at
# The pruning contenders: `--set` items on top of the default study. All but the first two keep
# the default early stopping (patience 6) beside the pruner.
PRUNERS: dict[str, list[str]] = {
    "none": ["search.pruner=none", "early_stopping.patience=null"],
    "early_stopping": ["search.pruner=none"],
    "median": ["search.pruner={name: median, n_startup_trials: 4, n_warmup_steps: 4}"],
    "successive-halving": [
        "search.pruner={name: successive-halving, min_resource: 2, reduction_factor: 3}"
    ],
    # Rungs at 4, 8 and 16 epochs keeping the top half, where the one above keeps the top third
    # at 2, 6 and 18.
    "successive-halving-gentle": [
        "search.pruner={name: successive-halving, min_resource: 4, reduction_factor: 2}"
    ],
    "hyperband": [
        "search.pruner={name: hyperband, min_resource: 2, max_resource: 20, reduction_factor: 3}"
    ],
    "wilcoxon": ["search.pruner={name: wilcoxon, p_threshold: 0.1, n_startup_steps: 4}"],
    "patient": [
        "search.pruner={name: patient, patience: 3, n_startup_trials: 4, n_warmup_steps: 4}"
    ],
}
SAMPLERS: dict[str, list[str]] = {
    "tpe": ["search.sampler={name: tpe, seed: SEED}"],
    "random": ["search.sampler={name: random, seed: SEED}"],
    "gp": ["search.sampler={name: gp, seed: SEED}"],
    "cmaes": ["search.sampler={name: cmaes, seed: SEED}"],
    "qmc": ["search.sampler={name: qmc, seed: SEED, scramble: true}"],
}
# Common to every study here: search trials only (the confirm phase is the same whatever the
# search did), no MLflow.
_STUDY = ["search.confirm=none", "tracking.enabled=false"]


_NO_STOPPING = EarlyStoppingConfig(patience=None)


@dataclass
class _Curve:
    """One configuration's epochs so far, and the run that trains the next one (dropped once
    the curve is complete). The run keeps its own torch RNG state, so curves trained in
    turns are the curves trained alone."""

    run: Epochs | None
    epochs: Any  # the run's iterator
    rng: torch.Tensor
    setup_seconds: float
    stats: list[EpochStats] = field(default_factory=list)


class CurveBank:
    """A `Trainer` that trains each configuration once, lazily, and replays it to every study
    that asks (keyed by the whole trial config but its early stopping: regularizers, seed,
    epochs, model; early stopping only decides where a curve is cut, `train.run_epochs`). One
    bank serves one data set."""

    def __init__(self) -> None:
        self._curves: dict[str, _Curve] = {}
        self.trained_seconds = 0.0  # real training done by the bank, all studies together
        self.trained_epochs = 0
        self.used_epochs = 0  # what the studies consumed, replays included
        self._setups: list[float] = []
        self._epochs: list[float] = []

    def _curve(self, cfg: TrialConfig, data: Dataset, device: torch.device | None) -> _Curve:
        key = repr(replace(cfg, early_stopping=_NO_STOPPING))
        curve = self._curves.get(key)
        if curve is None:
            outer = torch.get_rng_state()
            started = time.perf_counter()
            try:
                run = Epochs(cfg, data, device=device)
                curve = _Curve(run, iter(run), torch.get_rng_state(), 0.0)
            finally:
                torch.set_rng_state(outer)
            curve.setup_seconds = time.perf_counter() - started
            self.trained_seconds += curve.setup_seconds
            self._setups.append(curve.setup_seconds)
            self._curves[key] = curve
        return curve

    def _epoch(self, curve: _Curve, index: int) -> EpochStats | None:
        """Epoch `index` (0-based) of the curve, trained now if no study reached it before."""
        while len(curve.stats) <= index and curve.run is not None:
            outer = torch.get_rng_state()
            torch.set_rng_state(curve.rng)
            started = time.perf_counter()
            try:
                stats = next(curve.epochs, None)
            finally:
                curve.rng = torch.get_rng_state()
                torch.set_rng_state(outer)
            seconds = time.perf_counter() - started
            self.trained_seconds += seconds
            if stats is None:
                curve.run = None  # complete: free the model and optimizer
            else:
                self.trained_epochs += 1
                self._epochs.append(seconds)
                curve.stats.append(stats)
        return curve.stats[index] if index < len(curve.stats) else None

    def __call__(
        self,
        cfg: TrialConfig,
        data: Dataset,
        *,
        device: torch.device | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrainResult:
        curve = self._curve(cfg, data, device)

        def epochs() -> Any:
            index = 0
            while (stats := self._epoch(curve, index)) is not None:
                yield stats
                index += 1

        result = TrainResult(stop_reason=MAX_EPOCHS, epochs_trained=0)
        run_epochs(cfg, epochs(), result=result, on_epoch=on_epoch)
        self.used_epochs += result.epochs_trained
        return result

    def costed(self, trace: StudyTrace) -> StudyTrace:
        """`trace` with this bank's median epoch and setup seconds."""
        return replace(
            trace,
            epoch_seconds=statistics.median(self._epochs),
            setup_seconds=statistics.median(self._setups),
        )


@dataclass(frozen=True)
class StudyTrace:
    """What one replayed study did: per trial (in order) its value (None: pruned) and epochs,
    and the seconds of its own Optuna and objective work in the replay. Its wall time counts
    each trial's setup and each epoch at the bank's median (`costed`): the epochs were trained
    once for every contender, on a machine whose load may have changed meanwhile."""

    values: list[float | None]
    epochs: list[int]
    own_seconds: float
    epoch_seconds: float = 0.0  # the bank's median epoch
    setup_seconds: float = 0.0  # the bank's median model + optimizer + data setup
    # Per trial: its params (what `replay_study(enqueue=...)` replays), its phase and its best
    # epoch's validation loss (the tie-break between equal values).
    params: list[dict[str, Any]] = field(default_factory=list)
    phases: list[str | None] = field(default_factory=list)
    tiebreaks: list[float | None] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        return (
            self.own_seconds
            + len(self.values) * self.setup_seconds
            + sum(self.epochs) * self.epoch_seconds
        )

    @property
    def best(self) -> float:
        return max(v for v in self.values if v is not None)

    def best_after(self, trials: int) -> float:
        return max(v for v in self.values[:trials] if v is not None)

    def trials_to(self, target: float) -> int | None:
        """Trials run until the best value first reached `target` (None: never)."""
        best = -float("inf")
        for n, value in enumerate(self.values, 1):
            best = max(best, value if value is not None else best)
            if best >= target:
                return n
        return None


def replay_study(
    config: StudyConfig,
    data: Dataset,
    bank: CurveBank,
    *,
    enqueue: Sequence[Mapping[str, Any]] = (),
    wrap_pruner: Callable[[optuna.pruners.BasePruner], optuna.pruners.BasePruner] | None = None,
) -> StudyTrace:
    """`config`'s study (its `n_trials`) in memory, trained by `bank`. `enqueue`: params its
    search trials take, in order, after its baseline trial (the sampler is then not asked);
    `wrap_pruner`: the study's pruner (`search.study.studies.make_pruner`) is wrapped in this."""
    from search.run.objective import Objective
    from search.study.studies import create_or_resume

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study, _ = create_or_resume(config, optuna.storages.InMemoryStorage())
    for params in enqueue:
        study.enqueue_trial(dict(params))
    if wrap_pruner is not None:
        study.pruner = wrap_pruner(study.pruner)
    objective = Objective(config, data, device=torch.device("cpu"), trainer=bank)
    trained, epochs = bank.trained_seconds, bank.used_epochs
    per_trial: list[int] = []

    def count(_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        per_trial.append(bank.used_epochs - epochs - sum(per_trial))

    started = time.perf_counter()
    study.optimize(objective, n_trials=config.search.n_trials, callbacks=[count])
    wall = time.perf_counter() - started
    own = wall - (bank.trained_seconds - trained)  # the replay's Optuna + objective time
    trials = sorted(study.get_trials(deepcopy=False, states=FINISHED), key=lambda t: t.number)
    values = [t.value if t.state == optuna.trial.TrialState.COMPLETE else None for t in trials]
    return StudyTrace(
        values,
        per_trial,
        own,
        params=[dict(t.params) for t in trials],
        phases=[t.user_attrs.get(PHASE_ATTR) for t in trials],
        tiebreaks=[t.user_attrs.get(TIEBREAK_ATTR) for t in trials],
    )


@cache
def _digits() -> Dataset:
    return load_dataset(load_config().dataset)


def _config(items: list[str], seed: int) -> StudyConfig:
    items = [i.replace("SEED", str(seed)) for i in items]
    if not any(i.startswith("search.sampler=") for i in items):
        items.append(f"search.sampler.seed={seed}")
    return load_config(overrides=[*_STUDY, *items, *study_settings()])


_KINDS = {"pruning": PRUNERS, "samplers": SAMPLERS}
Traces = dict[str, dict[str, list[StudyTrace]]]  # kind -> contender -> one trace per seed


def _seed_job(job: tuple[int, tuple[str, ...]]) -> tuple[int, Traces, int]:
    """Every contender of `kinds` for one sampler seed, in one process with one bank: studies
    with the same seed share their first (random) trials (and the samplers' TPE row is the
    pruning table's default row), studies of other seeds share none."""
    from search.core.memory import retain_freed_memory

    seed, kinds = job
    torch.set_num_threads(1)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # wilcoxon
    warnings.filterwarnings("ignore", "WilcoxonPruner finds steps", UserWarning)
    retain_freed_memory()
    bank = CurveBank()
    traces: Traces = {
        kind: {
            name: [replay_study(_config(items, seed), _digits(), bank)]
            for name, items in _KINDS[kind].items()
        }
        for kind in kinds
    }
    for contenders in traces.values():
        for runs in contenders.values():
            runs[:] = [bank.costed(t) for t in runs]
    return seed, traces, bank.trained_epochs


_traces: Traces = {}
_cost: dict[str, Any] = {}  # kind -> what its replay pool cost


def prefetch(kinds: tuple[str, ...]) -> None:
    """Replay the studies of `kinds` (those not replayed yet) in one pool: one process per
    sampler seed, one thread each (on 2 cores, two one-thread processes train 1.4x the epochs
    per second of one process with two threads)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    kinds = tuple(k for k in kinds if k not in _traces)
    if not kinds:
        return
    started = time.perf_counter()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(len(SEEDS), mp_context=spawn) as pool:
        done = list(pool.map(_seed_job, [(seed, kinds) for seed in SEEDS]))
    cost = {
        "replayed_together": list(kinds),
        "trained_epochs": sum(trained for _, _, trained in done),
        "pool_seconds": round(time.perf_counter() - started, 1),
    }
    for _, traces, _ in sorted(done, key=lambda d: d[0]):
        for kind, contenders in traces.items():
            for name, runs in contenders.items():
                _traces.setdefault(kind, {}).setdefault(name, []).extend(runs)
    for kind in kinds:
        _cost[kind] = cost


def _kind(kind: str) -> dict[str, list[StudyTrace]]:
    prefetch((kind,))
    return _traces[kind]


def pruning() -> dict[str, Any]:
    """Each pruner (with early stopping) against no pruning and no early stopping, over the
    same sampler seeds: epochs and wall time as a share of the unpruned study's, and the best
    value found minus the unpruned best (mean over seeds)."""
    traces = _kind("pruning")
    base = traces["none"]
    base_epochs = sum(sum(t.epochs) for t in base)
    base_seconds = sum(t.seconds for t in base)
    table = {}
    for name, runs in traces.items():
        table[name] = {
            "pruning_epoch_ratio": round(sum(sum(t.epochs) for t in runs) / base_epochs, 3),
            "pruning_best_delta": round(
                statistics.mean(t.best - b.best for t, b in zip(runs, base, strict=True)), 4
            ),
            "wall_ratio": round(sum(t.seconds for t in runs) / base_seconds, 3),
            "best": [round(t.best, 4) for t in runs],
            "pruned": sum(v is None for t in runs for v in t.values),
            "optuna_seconds": round(statistics.mean(t.own_seconds for t in runs), 2),
        }
    default = _default_pruner()
    chosen = choose_pruner(table)
    return {
        "table": table,
        "default": default,
        "default_pruner": load_config().search.pruner.model_dump(),
        "chosen_from_table": chosen,
        "pruning_epoch_ratio": table[default]["pruning_epoch_ratio"],
        "pruning_best_delta": table[default]["pruning_best_delta"],
        "trials": load_config().search.n_trials,
        "seeds": len(SEEDS),
        **_cost["pruning"],
    }


def _default_pruner() -> str:
    """The contender that is the default study (its pruner and early stopping)."""
    default = load_config()
    for name, items in PRUNERS.items():
        config = _config(items, 0)
        if (config.search.pruner, config.early_stopping) == (
            default.search.pruner,
            default.early_stopping,
        ):
            return name
    raise LookupError("the default pruner is none of the contenders: add it to PRUNERS")


def choose_pruner(table: dict[str, dict[str, Any]], *, min_delta: float = -0.005) -> str:
    """The pruner with the fewest epochs among those that lose at most `-min_delta` of best
    value against no pruning (early stopping alone and no pruning are not pruners)."""
    fine = {
        name: row
        for name, row in table.items()
        if name not in ("none", "early_stopping") and row["pruning_best_delta"] >= min_delta
    }
    pool = fine or {n: r for n, r in table.items() if n not in ("none", "early_stopping")}
    return min(pool, key=lambda n: (pool[n]["pruning_epoch_ratio"], -pool[n]["pruning_best_delta"]))


def samplers() -> dict[str, Any]:
    """Each sampler with the default pruner and early stopping, over the same seeds: the mean
    best validation value after 8, 16 and 24 trials and the trials each seed needed to reach
    each of `TARGETS` (None: not within the budget)."""
    table = {}
    for name, runs in _kind("samplers").items():
        table[name] = {
            "best_after": {
                str(k): round(statistics.mean(t.best_after(k) for t in runs), 4)
                for k in CHECKPOINTS
            },
            "trials_to_target": {str(x): [t.trials_to(x) for t in runs] for x in TARGETS},
            "epochs": sum(sum(t.epochs) for t in runs),
        }
    return {
        "table": table,
        "default": load_config().search.sampler.name,
        "targets": list(TARGETS),
        "seeds": len(SEEDS),
        **_cost["samplers"],
    }
