"""Optuna study lifecycle: samplers and pruners from config, create-or-resume with the config
stored in the study, and the shared trial budget."""

from __future__ import annotations

import copy
import hashlib
import inspect
import threading
import time
import warnings
from collections.abc import Callable, Container
from typing import Any

import optuna
from optuna.trial import TrialState

from search.config.overrides import flatten
from search.config.schema import StudyConfig, parse_config
from search.config.space import space_of
from search.core.errors import UserError
from search.core.records import (
    BASELINE,
    CHAMPION_ATTR,
    CONFIG_ATTR,
    OVERRIDES_ATTR,
    PHASE_ATTR,
    TIEBREAK_ATTR,
    is_budget_trial,
    outranks,
    ranking,
)
from search.study.wilcoxon import WilcoxonPruner

__all__ = [
    "SnapshotPruner",
    "beats_best",
    "best_trial",
    "count_trials",
    "create_or_resume",
    "load_existing",
    "make_pruner",
    "make_sampler",
    "sampler_seed",
    "stored_config",
    "study_exists",
]

# Keys that may differ between launches of one study: budget and per-machine settings.
_MAY_DIFFER = {
    "search.n_trials",
    "search.timeout",  # no longer stored (a launch's own): studies stored before still hold it
    "search.confirm",  # `regsearch confirm --top-k/--seeds` extends the phase
    "search.confirm.top_k",
    "search.confirm.seeds",
    "search.confirm.ablation",
    "search.confirm.refit",
    "search.confirm.racing",
    "search.confirm.resplit_below",
    "train.device",
    "storage",
    "tracking.uri",
    "dataset.root",  # where this machine keeps the files
    "dataset.download",
    "dataset.path",  # where this machine keeps a user loader's module
    "model.path",  # where this machine keeps a user factory's module
}


def sampler_seed(seed: int, *, worker_index: int = 0, trials_before: int = 0) -> int:
    """The seed of one launch's sampler. A fresh study's first worker uses `seed` itself
    (reproducible); other workers add their index (one seed would propose the same points),
    and a launch that joins a study with trials mixes in their count, so resuming never
    replays an earlier launch's proposals."""
    if trials_before == 0:
        return seed + worker_index
    digest = hashlib.sha256(f"{seed}:{worker_index}:{trials_before}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def make_sampler(
    config: StudyConfig, *, worker_index: int = 0, trials_before: int = 0
) -> optuna.samplers.BaseSampler:
    """The configured sampler, seeded by `sampler_seed` when the config gives a seed."""
    options = dict(config.search.sampler.options)
    name = config.search.sampler.name
    if options.get("seed") is not None:
        options["seed"] = sampler_seed(
            int(options["seed"]), worker_index=worker_index, trials_before=trials_before
        )
    factories: dict[str, Callable[..., optuna.samplers.BaseSampler]] = {
        "tpe": optuna.samplers.TPESampler,
        "random": optuna.samplers.RandomSampler,
        "cmaes": optuna.samplers.CmaEsSampler,
        "qmc": optuna.samplers.QMCSampler,
        "gp": optuna.samplers.GPSampler,
        "grid": lambda **kw: optuna.samplers.GridSampler(space_of(config).grid(), **kw),
    }
    return _construct(f"search.sampler ({name})", factories[name], options)


class _StudyView:
    """The study as a pruner sees it: `get_trials` answers from a snapshot, the rest is the
    study itself."""

    def __init__(self, study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> None:
        self._view_study = study
        self._view_trials = trials

    def get_trials(
        self, deepcopy: bool = True, states: Container[TrialState] | None = None
    ) -> list[optuna.trial.FrozenTrial]:
        trials = [t for t in self._view_trials if states is None or t.state in states]
        return copy.deepcopy(trials) if deepcopy else trials

    @property
    def trials(self) -> list[optuna.trial.FrozenTrial]:
        return self.get_trials()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._view_study, name)


class SnapshotPruner(optuna.pruners.BasePruner):
    """Wraps a pruner so that its view of the study's trials is read from storage once per
    trial and then at most every `max_age` seconds, instead of at every `should_prune`.

    Median, percentile and successive-halving pruners read every trial of the study at every
    step; on short trials that read cost more than the rest of the service's storage work
    (`regsearch bench`, `storage_ms_per_trial`). The decisions are Optuna's; the only
    difference is that a trial finished by another worker less than `max_age` seconds ago may
    not count yet. Every trial finished before this one started counts, and the trial being
    judged is always fresh (Optuna passes it in).
    """

    def __init__(self, pruner: optuna.pruners.BasePruner, *, max_age: float = 1.0) -> None:
        if max_age < 0:
            raise ValueError(f"{max_age=} must be non-negative")
        self.pruner = pruner
        self._max_age = max_age
        self._lock = threading.Lock()
        self._key: tuple[int, int] | None = None  # (study id, trial number) of the snapshot
        self._taken = 0.0
        self._trials: list[optuna.trial.FrozenTrial] = []

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        key = (study._study_id, trial.number)
        with self._lock:
            if key != self._key or time.monotonic() - self._taken > self._max_age:
                self._trials = study.get_trials(deepcopy=False)
                self._key, self._taken = key, time.monotonic()
            trials = self._trials
        return self.pruner.prune(_StudyView(study, trials), trial)  # type: ignore[arg-type]


def make_pruner(config: StudyConfig) -> optuna.pruners.BasePruner:
    """The configured pruner, wrapped in a `SnapshotPruner` (`none` needs no wrapping)."""
    options = dict(config.search.pruner.options)
    name = config.search.pruner.name

    def patient(
        *,
        patience: int = 3,
        min_delta: float = 0.0,
        n_startup_trials: int = 5,
        n_warmup_steps: int = 0,
        interval_steps: int = 1,
        n_min_trials: int = 1,
    ) -> optuna.pruners.BasePruner:
        # Patient pruning around a median pruner: prune only after `patience` flat epochs.
        median = optuna.pruners.MedianPruner(
            n_startup_trials=n_startup_trials,
            n_warmup_steps=n_warmup_steps,
            interval_steps=interval_steps,
            n_min_trials=n_min_trials,
        )
        with warnings.catch_warnings():  # experimental since Optuna 2.8
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.pruners.PatientPruner(median, patience=patience, min_delta=min_delta)

    factories: dict[str, Callable[..., optuna.pruners.BasePruner]] = {
        "median": optuna.pruners.MedianPruner,
        "percentile": optuna.pruners.PercentilePruner,
        "hyperband": optuna.pruners.HyperbandPruner,
        "successive-halving": optuna.pruners.SuccessiveHalvingPruner,
        "wilcoxon": WilcoxonPruner,  # Optuna's, with a fast exact test (search/study/wilcoxon.py)
        "patient": patient,
        "threshold": optuna.pruners.ThresholdPruner,
        "none": optuna.pruners.NopPruner,
    }
    pruner = _construct(f"search.pruner ({name})", factories[name], options)
    return pruner if name == "none" else SnapshotPruner(pruner)


def _construct(where: str, factory: Callable[..., Any], options: dict[str, Any]) -> Any:
    """`factory(**options)`; options it does not take are named in a `UserError`."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: let the call say
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params):
        takes = [p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]
        unknown = sorted(set(options) - set(takes))
        if unknown:
            raise UserError(
                f"{where}: unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
                f"; it takes {', '.join(takes) or 'no options'}"
            )
        for p in params:
            if p.name in options and not _fits_default(options[p.name], p.default):
                kind = type(p.default).__name__
                raise UserError(f"{where}: {p.name} must be {kind}, got {options[p.name]!r}")
    try:
        with warnings.catch_warnings():  # "experimental" (wilcoxon, qmc): not the user's error
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return factory(**options)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


def _fits_default(value: Any, default: Any) -> bool:
    """Whether `value` has the kind of a constructor's scalar default (an option Optuna would
    only trip over inside the first trial: `n_startup_trials: abc`). Defaults of other kinds
    (None, a str such as "auto") say nothing."""
    if value is None:
        return True
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, int | float) and not isinstance(value, bool)
    return True  # a str default is often "auto" beside numbers (`min_resource`)


def smoke_test(config: StudyConfig) -> None:
    """Run the configured sampler and pruner through a few dummy trials in memory: an option
    value Optuna accepts at construction but fails on (`hyperband` with `min_resource: 0`)
    stops the launch here, not in every trial. A grid sampler samples only its own grid: its
    construction checks it (every searched entry finite), before any data is read."""
    import math

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0.0, 1.0)
        for step in range(1, 4):
            trial.report(math.sin(step * x), step)
            if trial.should_prune():
                raise optuna.TrialPruned
        return x

    checks: list[tuple[str, optuna.samplers.BaseSampler, optuna.pruners.BasePruner]] = [
        ("search.pruner", optuna.samplers.RandomSampler(seed=0), make_pruner(config))
    ]
    configured = make_sampler(config)  # a grid's construction checks its grid
    if config.search.sampler.name != "grid":
        checks.insert(0, ("search.sampler", configured, optuna.pruners.NopPruner()))
    for what, sampler, pruner in checks:
        name = getattr(config.search, what.split(".")[1]).name
        verbosity = optuna.logging.get_verbosity()
        # Not even Optuna's warning of the failed trial, with its traceback: the one line below.
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                study = optuna.create_study(sampler=sampler, pruner=pruner)
                study.optimize(objective, n_trials=4)
        except Exception as exc:
            raise UserError(f"{what} ({name}): fails on its first trials: {exc!r}") from None
        finally:
            optuna.logging.set_verbosity(verbosity)


def _differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    a, b = flatten(stored, keep=["space"]), flatten(current, keep=["space"])
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k) and k not in _MAY_DIFFER)


def _normalised(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config as this version would store it: keys added since get their defaults,
    so upgrading regsearch does not make every existing study "different"."""
    try:
        return parse_config(stored).portable_dict()
    except UserError:
        return stored  # no longer valid: compared as is, so the user sees what differs


def study_exists(storage: optuna.storages.BaseStorage, name: str) -> bool:
    try:
        storage.get_study_id_from_name(name)
    except KeyError:
        return False
    return True


def create_or_resume(
    config: StudyConfig,
    storage: optuna.storages.BaseStorage,
    *,
    worker_index: int = 0,
) -> tuple[optuna.Study, bool]:
    """(study, created). A resumed study must have the same config except for the budget and
    per-machine keys; otherwise the user gets an error naming the differing keys."""
    pruner = make_pruner(config)
    portable = config.portable_dict()
    if study_exists(storage, config.study):
        study_id = storage.get_study_id_from_name(config.study)
        before = len(storage.get_all_trials(study_id, deepcopy=False))
        sampler = make_sampler(config, worker_index=worker_index, trials_before=before)
        study = optuna.load_study(
            study_name=config.study, storage=storage, sampler=sampler, pruner=pruner
        )
        stored = study.user_attrs.get(CONFIG_ATTR)
        if stored is not None:
            diff = _differences(_normalised(stored), portable)
            if diff:
                shown = ", ".join(diff[:5]) + (" …" if len(diff) > 5 else "")
                raise UserError(
                    f"study {config.study!r} exists with a different config ({shown}); "
                    "use the same file, another --study name, or "
                    f"`regsearch worker {config.study}` to join it with its stored config"
                )
            if stored != portable:  # only the budget changed: keep the stored copy current
                study.set_user_attr(CONFIG_ATTR, portable)
        else:
            # Created, but killed before its config was stored (or created by plain Optuna):
            # complete it now, so workers can join and a different config is refused later.
            expected = optuna.study.StudyDirection[str(config.objective.direction).upper()]
            if study.direction != expected:
                raise UserError(
                    f"study {config.study!r} exists and {study.direction.name.lower()}s its "
                    f"objective; {config.objective.metric} is {config.objective.direction}d"
                )
            _describe(study, config, portable)
        return study, False
    sampler = make_sampler(config, worker_index=worker_index)
    study = optuna.create_study(
        study_name=config.study,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction=config.objective.direction,
        load_if_exists=True,  # another worker may have created it a moment ago
    )
    _describe(study, config, portable)
    return study, True


def _describe(study: optuna.Study, config: StudyConfig, portable: dict[str, Any]) -> None:
    """Store the config and the metric name in the study (what makes it a regsearch study),
    and enqueue its baseline trial."""
    study.set_user_attr(CONFIG_ATTR, portable)
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2; the dashboard shows it
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([config.objective.metric])
    enqueue_baseline(study, config)


def enqueue_baseline(study: optuna.Study, config: StudyConfig) -> bool:
    """Enqueue the study's baseline recipe once (under the study's lock: workers that create
    the study together enqueue it once). Grid studies run their grid only. True if added."""
    from search.study.storage import study_lock

    space = space_of(config)
    params = space.baseline_params()
    if params is None or config.search.sampler.name == "grid":
        return False
    with study_lock(study, "baseline"):
        if any(t.user_attrs.get(PHASE_ATTR) == BASELINE for t in study.get_trials(deepcopy=False)):
            return False
        # What it trains with beyond its params (a regularizer fixed in the space, say).
        recipe = space.baseline_values() or {}
        study.enqueue_trial(params, user_attrs={PHASE_ATTR: BASELINE, OVERRIDES_ATTR: recipe})
    return True


def stored_config(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    """The config a study was created with, as stored (None: no such study, or not ours)."""
    if not study_exists(storage, name):
        return None
    study_id = storage.get_study_id_from_name(name)
    stored = storage.get_study_user_attrs(study_id).get(CONFIG_ATTR)
    return copy.deepcopy(stored) if isinstance(stored, dict) else None


def load_existing(
    name: str, storage: optuna.storages.BaseStorage
) -> tuple[optuna.Study, StudyConfig | None]:
    """An existing study and its stored config (None for studies regsearch did not create)."""
    if not study_exists(storage, name):
        from search.study.sweep import SWEEP_ATTR

        summaries = optuna.get_all_study_summaries(storage, include_best_trial=False)
        known = [s.study_name for s in summaries]
        sweeps = sorted(
            {str(s.user_attrs[SWEEP_ATTR]) for s in summaries if SWEEP_ATTR in s.user_attrs}
        )
        hint = f"; known: {', '.join(known[:10])}" if known else ""
        hint += f"; size sweeps: {', '.join(sweeps[:10])}" if sweeps else ""
        raise UserError(f"unknown study {name!r}{hint}")
    study = optuna.load_study(study_name=name, storage=storage)
    stored = study.user_attrs.get(CONFIG_ATTR)
    if stored is None:
        return study, None
    # Complete (stored by `create_or_resume`) and checked then; workers check again.
    return study, parse_config(stored, check_model=False)


def best_trial(study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    """The study's best trial: once its confirm phase is complete, the champion's refit on
    training + validation images once that is COMPLETE (`search.study.refit`), else the champion's
    best-seed retrain (`search.study.evidence`); before, the best COMPLETE search or baseline trial
    by `ranking`. While a confirm phase that chose a champion is extended (`confirm --seeds`,
    `--top-k`, more search trials) and has not chosen again, the champion it chose (the
    trial `@champion` holds) stays the answer. On a small validation split many trials
    reach the same accuracy (60 images: steps of 1/60, often 1.0); Optuna's own `best_trial`
    takes the first of them, which is no better than a random pick. `best`, `status`, the
    report, the dashboard note and the `@champion` alias all use this one."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if any(not is_budget_trial(t) for t in complete):  # a confirm phase has run
        from search.study.evidence import study_config, study_evidence
        from search.study.refit import champion_refit

        ev = study_evidence(study)
        if ev is not None and ev.champion is not None:
            refit = champion_refit(complete, study_config(study), study.direction, ev)
            champion = refit or ev.champion.best_trial(study.direction)
            if champion is not None:
                return champion
        held = (study.user_attrs.get(CHAMPION_ATTR) or {}).get("trial")
        if ev is not None and ev.champion is None:
            for t in complete:
                if t.number == held and not is_budget_trial(t):
                    return t
    searched = [t for t in complete if is_budget_trial(t)]
    return min(searched, key=ranking(study.direction)) if searched else None


def beats_best(study: optuna.Study, value: float, tiebreak: float | None) -> bool:
    """Whether a trial with `value` (and `tiebreak`) would be the new `best_trial`."""
    best = best_trial(study)
    if best is None or best.value is None:
        return True
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    return outranks(
        value, tiebreak, best.value, best.user_attrs.get(TIEBREAK_ATTR), maximize=maximize
    )


def count_trials(study: optuna.Study, states: tuple[TrialState, ...]) -> int:
    """Trials in `states` that count against the search budget (`is_budget_trial`)."""
    return sum(map(is_budget_trial, study.get_trials(deepcopy=False, states=states)))
