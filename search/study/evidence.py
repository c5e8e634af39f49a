"""The confirm phase and the study's answer: which configuration is really best, by how much
it beats the baseline recipe, and what each of its regularizers contributed.

After the search budget, the `top_k` best distinct configurations and the baseline recipe are
retrained with up to `seeds` fresh training seeds (phase "confirm"), a seed at a time for all
of them; with racing, from the second seed on, a configuration that could not catch up with the
leader even if the remaining seeds went its way at the 97.5 % bound of their noise stops
(`_race`). The champion is the best *mean* of those still in the race, which undoes most of the
luck in a maximum over noisy trials. With a small validation split each seed retrains on its
own train/validation split (`SPLIT_ATTR`), and configurations tied at the top join the race.
Then the champion is retrained with each active regularizer switched off, with the same seeds,
seed by seed while it could still matter (phase "ablation"): the paired difference per seed is
that regularizer's contribution, and an ablated configuration that beats the champion beyond
its interval replaces it. Every retrain is an enqueued Optuna trial, so any worker on any
machine runs them, a killed one is retried like any trial, and the dashboard shows them.
Intervals are Student-t 95% intervals over seeds, paired by seed, from the noise pooled over
the phase's configurations (with racing or without); the held-out test gain is a paired
bootstrap over test images.

The planning and the arithmetic here are pure functions of the study's trials, so every
worker, `best`, the report and the dashboard compute the same answer from the same store.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.config.schema import StudyConfig
from search.config.space import REGULARIZERS, SearchSpace, space_of
from search.core.records import (
    ABLATE_ATTR,
    BASELINE,
    CONFIG_ATTR,
    EPOCHS_TRAINED_ATTR,
    OVERRIDES_ATTR,
    PHASE_ATTR,
    SEARCH,
    SEED_ATTR,
    SOURCE_ATTR,
    TIEBREAK_ATTR,
    VAL_IMAGES_ATTR,
    Planned,
    baseline_trial,
    ranking,
)
from search.core.stats import Interval, _t975, mean_interval, paired_bootstrap
from search.study.arms import Arm, Evidence

__all__ = [
    "ABLATE_ATTR",
    "ABLATION",
    "CONFIRM",
    "SEED_ATTR",
    "SOURCE_ATTR",
    "SPLIT_ATTR",
    "Arm",
    "Evidence",
    "confirm_seeds",
    "confirmed_champion",
    "enqueue_plan",
    "evidence",
    "plan",
    "planned_key",
    "study_evidence",
]

CONFIRM, ABLATION = "confirm", "ablation"
SPLIT_ATTR = "split"  # the train/validation split it trains on (0: the study's own)
_PENDING = (TrialState.WAITING, TrialState.RUNNING)
_SEED_OFFSET = 1000  # confirm seeds are train.seed + 1000 + i: never the search's own seed


def confirm_seeds(config: StudyConfig, n: int) -> list[int]:
    return [config.train.seed + _SEED_OFFSET + i for i in range(n)]


# --------------------------------------------------------------------------- the phase
MIN_ROUNDS = 2  # racing drops a configuration only once every one has run this many seeds


def _catch_up(noise: float, df: int, remaining: int) -> float:
    """How far the `remaining` seeds could move a sum of paired differences an arm's way: the
    one-sided 97.5 % bound of that sum, t(df) × noise × √remaining (each seed's difference
    has the pooled `noise` as its standard deviation; their sum, √remaining times it)."""
    return _t975(df) * noise * math.sqrt(remaining)


def _sign(direction: optuna.study.StudyDirection) -> float:
    return 1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else -1.0


def _key(space: SearchSpace, trial: FrozenTrial) -> str:
    """A configuration's identity: the values it trains with but a training seed (the
    recipe's fixed regularizers are overrides, not params: the same searched values with
    another fixed value are another configuration)."""
    values = _trained(space, trial)
    return json.dumps({k: v for k, v in values.items() if k != "seed"}, sort_keys=True, default=str)


def _candidates(
    trials: Sequence[FrozenTrial],
    direction: optuna.study.StudyDirection,
    top_k: int,
    space: SearchSpace,
    *,
    ties: bool = False,
) -> list[FrozenTrial]:
    """The baseline trial, then the `top_k` best distinct configurations of the search; with
    `ties` (a small validation split), also those tied with the last of them, up to
    2 × `top_k`: the confirm phase breaks the tie, not the order trials happened to run in."""
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None]
    base = [t for t in complete if t.user_attrs.get(PHASE_ATTR) == BASELINE][:1]
    chosen: list[FrozenTrial] = []
    seen = {_key(space, t) for t in base}
    for t in sorted(complete, key=ranking(direction)):
        if t.user_attrs.get(PHASE_ATTR, SEARCH) != SEARCH or _key(space, t) in seen:
            continue
        if len(chosen) >= top_k and not (
            ties and len(chosen) < 2 * top_k and t.value == chosen[-1].value
        ):
            break
        seen.add(_key(space, t))
        chosen.append(t)
    return base + chosen


def _trained(space: SearchSpace, trial: FrozenTrial) -> dict[str, Any]:
    """A trial's values as trained: fixed values, params and its overrides."""
    values = {**space.fixed_values(), **trial.params}
    if trial.user_attrs.get(PHASE_ATTR) == BASELINE:
        values.update(space.baseline_values() or {})
    values.update(trial.user_attrs.get(OVERRIDES_ATTR) or {})
    return values


def _effective(space: SearchSpace, trial: FrozenTrial) -> dict[str, Any]:
    """A trial's regularizer values as trained."""
    return {k: v for k, v in _trained(space, trial).items() if k in REGULARIZERS}


def planned_key(attrs: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        attrs.get(PHASE_ATTR),
        attrs.get(SOURCE_ATTR),
        attrs.get(SEED_ATTR),
        attrs.get(ABLATE_ATTR),
    )


def resplits(config: StudyConfig, val_images: int | None) -> bool:
    """Whether the confirm phase retrains each seed on its own split: the validation split
    has fewer than `search.confirm.resplit_below` images."""
    confirm = config.search.confirm
    return bool(
        confirm is not None and val_images is not None and val_images < confirm.resplit_below
    )


def _paired(a: Arm, b: Arm, sign: float, seeds: Iterable[int]) -> list[float]:
    """`a` − `b` (positive: `a` better) on the seeds both completed among `seeds`."""
    return [sign * (a.values[s] - b.values[s]) for s in seeds if s in a.values and s in b.values]


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values)


def _noise(
    leader: Arm, others: Sequence[Arm], sign: float, seeds: Sequence[int], floor: float
) -> tuple[float | None, int]:
    """The pooled standard deviation of a paired difference on one seed (leader − other,
    around each pair's own mean) and its degrees of freedom; None with no pair of two seeds.
    Never below `floor` (one validation image: the resolution of an accuracy)."""
    squares, df = 0.0, 0
    for arm in others:
        diffs = _paired(leader, arm, sign, seeds)
        if len(diffs) >= 2:
            m = _mean(diffs)
            squares += math.fsum((d - m) ** 2 for d in diffs)
            df += len(diffs) - 1
    if df == 0:
        return None, 0
    return max(math.sqrt(squares / df), floor), df


def pooled_interval(diffs: Sequence[float], noise: float, df: int) -> Interval:
    """Mean of paired differences with a 95% interval from the pooled `noise` (its `df`)."""
    m = _mean(diffs)
    half = _t975(df) * noise / math.sqrt(len(diffs))
    return Interval(m, m - half, m + half, len(diffs))


def _order(sign: float) -> Callable[[Arm], tuple[float, float, int]]:
    def order(a: Arm) -> tuple[float, float, int]:
        assert a.interval is not None
        attrs = [t.user_attrs.get(TIEBREAK_ATTR) for t in a.trials.values()]
        losses = [float(v) for v in attrs if v is not None]
        loss = math.fsum(losses) / len(losses) if losses else math.inf
        return -sign * a.interval.mean, loss, a.source  # best mean; then lower val loss

    return order


def _race(
    alive: list[Arm], seeds: Sequence[int], remaining: int, sign: float, floor: float
) -> tuple[list[Arm], float | None, int]:
    """After a round: the arms still in the race, and the pooled noise. An arm stops when it
    can no longer change the verdict: even if the `remaining` seeds went its way at the 97.5 %
    bound of their noise, its paired mean would still be behind the leader's (the best mean
    over the seeds run): Σ (leader − arm) > t(df) × noise × √remaining (`_catch_up`)."""
    for arm in alive:
        arm.interval = mean_interval([arm.values[s] for s in seeds if s in arm.values])
    scored = [a for a in alive if a.interval is not None]
    if len(scored) < 2:
        return alive, None, 0
    leader = min(scored, key=_order(sign))
    others = [a for a in scored if a is not leader]
    noise, df = _noise(leader, others, sign, seeds, floor)
    if noise is None:
        return alive, None, 0
    keep = [a for a in alive if a not in others]
    for arm in others:
        diffs = _paired(leader, arm, sign, seeds)
        if not diffs or math.fsum(diffs) <= _catch_up(noise, df, remaining):
            keep.append(arm)
        else:
            arm.dropped_after = len(seeds)
    return [a for a in alive if a in keep], noise, df


def _ablation_settled(diffs: Sequence[float], n: int, noise: float, df: int) -> bool:
    """Whether an ablation's remaining seeds can no longer make the ablated configuration
    beat the champion beyond the interval of `n` seeds: even if they went its way at the
    97.5 % bound of their noise (`_catch_up`), Σ (champion − ablated) would stay above
    −n × t(df) × noise ÷ √n."""
    best_case = math.fsum(diffs) - _catch_up(noise, df, n - len(diffs))
    return best_case >= -n * _t975(df) * noise / math.sqrt(n)


def evidence(
    trials: Sequence[FrozenTrial],
    config: StudyConfig,
    direction: optuna.study.StudyDirection,
    *,
    val_images: int | None = None,
) -> Evidence | None:
    """The confirm phase as far as it has run (None when the study has none: `confirm: none`,
    or a grid study, which runs its grid only, as it has no baseline trial).

    Seeds run in rounds. With racing, once every configuration has run `MIN_ROUNDS` seeds,
    one that is clearly behind the leader (`_race`) is not retrained again, and the phase
    ends when one configuration is left or the seeds are spent. The champion is the best mean
    of those still in the race over the seeds they share. Its ablation runs seed by seed too:
    a regularizer whose contribution is clearly positive after a seed is settled; one that is
    unclear, or whose removal looks better, runs the champion's next seed. An ablated
    configuration that beats the champion beyond its interval replaces it (the verdict says
    which regularizer hurt). `val_images`: the validation split's size (the resplit rule and
    the noise floor)."""
    confirm = config.search.confirm
    if confirm is None or config.search.sampler.name == "grid":
        return None
    space = space_of(config)
    seeds = confirm_seeds(config, confirm.seeds)
    sign = _sign(direction)
    floor = 1.0 / val_images if val_images else 0.0
    by_source: dict[int, FrozenTrial] = {t.number: t for t in trials}
    resplit = resplits(config, val_images)
    arms = [
        Arm(
            source=t.number,
            params=dict(t.params),
            baseline=t.user_attrs.get(PHASE_ATTR) == BASELINE,
            search_value=t.value,
        )
        for t in _candidates(trials, direction, confirm.top_k, space, ties=resplit)
    ]
    ev = Evidence(arms=arms, seeds=seeds, resplit=resplit)
    arm_of = {a.source: a for a in arms}
    ablated: dict[tuple[int, str], Arm] = {}
    ended: set[tuple[Any, ...]] = set()
    pending: set[tuple[Any, ...]] = set()
    better = ranking(direction)
    for t in trials:
        phase = t.user_attrs.get(PHASE_ATTR)
        if phase not in (CONFIRM, ABLATION):
            continue
        key = planned_key(t.user_attrs)
        if t.state in _PENDING:
            pending.add(key)
            continue
        ended.add(key)
        if t.state != TrialState.COMPLETE or t.value is None or not math.isfinite(t.value):
            continue
        seed, source = t.user_attrs.get(SEED_ATTR), t.user_attrs.get(SOURCE_ATTR)
        if seed not in seeds:
            continue
        if phase == CONFIRM and source in arm_of:
            arm = arm_of[source]
        elif phase == ABLATION and isinstance(source, int):
            name = str(t.user_attrs.get(ABLATE_ATTR))
            arm = ablated.setdefault(
                (source, name),
                Arm(source, dict(t.params), baseline=False, ablate=name),
            )
        else:
            continue
        if seed not in arm.trials or better(t) < better(arm.trials[seed]):
            arm.values[seed], arm.trials[seed] = float(t.value), t
    ended -= pending
    wanted: set[tuple[Any, ...]] = set()

    # The confirm phase, round by round.
    alive = list(arms)
    complete = True
    if not confirm.racing:  # every seed of every configuration at once
        wanted = {(CONFIRM, a.source, s, None) for a in arms for s in seeds}
    for r, seed in enumerate(seeds, 1):
        wanted |= {(CONFIRM, a.source, seed, None) for a in alive}
        if any((CONFIRM, a.source, seed, None) not in ended for a in alive):
            complete = False
            break
        if confirm.racing and MIN_ROUNDS <= r < len(seeds) and len(alive) > 1:
            alive, ev.noise, ev.noise_df = _race(alive, seeds[:r], len(seeds) - r, sign, floor)
            if len(alive) == 1:
                break
    # Configurations still in the race are compared on the seeds every one of them completed:
    # a retrain that failed for good (its retries spent) must not leave one mean over 2 seeds
    # against another over 3. Those dropped keep their own seeds (shown, not compared).
    scored_seeds = [set(a.values) for a in alive if a.values]
    shared = set.intersection(*scored_seeds) if scored_seeds else set()
    for arm in arms:
        if arm in alive:
            arm.values = {s: v for s, v in arm.values.items() if s in shared}
            arm.trials = {s: t for s, t in arm.trials.items() if s in shared}
        arm.interval = mean_interval(list(arm.values.values()))
    ev.baseline = next((a for a in arms if a.baseline), None)
    ev.confirm_complete = complete
    ev.alive = alive
    scored = [a for a in alive if a.interval is not None]
    if ev.confirm_complete and scored:
        ev.champion = min(scored, key=_order(sign))
        # The noise of the whole phase, pooled over its configurations, for the gain's and
        # the contributions' intervals: with racing or without, so that both answer alike (a
        # difference that came out the same on three seeds is not a certainty).
        others = [a for a in arms if a is not ev.champion]
        noise, df = _noise(ev.champion, others, sign, seeds, floor)
        if noise is not None:
            ev.noise, ev.noise_df = noise, df
    champion = ev.champion

    # The champion's ablation, seed by seed.
    abl_wanted: set[tuple[Any, ...]] = set()
    candidates: list[Arm] = []
    if champion is not None and confirm.ablation:
        source_trial = by_source[champion.source]
        champion_seeds = sorted(champion.values)
        for name, value in _effective(space, source_trial).items():
            if float(value) == 0.0:
                continue  # already off: nothing to take away
            arm = ablated.get((champion.source, name)) or Arm(
                champion.source, dict(champion.params), baseline=False, ablate=name
            )
            if not confirm.racing:
                abl_wanted |= {(ABLATION, champion.source, s, name) for s in champion_seeds}
            for seed in champion_seeds:
                abl_wanted.add((ABLATION, champion.source, seed, name))
                if (ABLATION, champion.source, seed, name) not in ended:
                    break
                diffs = _paired(champion, arm, sign, [s for s in champion_seeds if s <= seed])
                if (
                    confirm.racing
                    and ev.noise is not None
                    and diffs
                    and _ablation_settled(diffs, len(champion_seeds), ev.noise, ev.noise_df)
                ):
                    break  # it cannot replace the champion any more: its contribution stands
            diffs = _paired(champion, arm, sign, champion_seeds)
            if diffs:
                ev.contributions[name] = (
                    pooled_interval(diffs, ev.noise, ev.noise_df)
                    if ev.noise is not None
                    else mean_interval(diffs)  # type: ignore[assignment]
                )
            arm.values = {s: v for s, v in arm.values.items() if s in champion.values}
            arm.trials = {s: t for s, t in arm.trials.items() if s in champion.values}
            arm.interval = mean_interval(list(arm.values.values()))
            candidates.append(arm)
    ev.ablation_complete = ev.confirm_complete and abl_wanted <= ended
    if champion is not None and ev.ablation_complete:
        # Feedback: an ablated configuration whose mean beats the champion's beyond the
        # interval of its contribution is a confirmed candidate, and the best one wins.
        beaten = [
            a
            for a in candidates
            if a.ablate in ev.contributions
            and (ev.contributions[a.ablate].high is not None)
            and ev.contributions[a.ablate].high < 0  # type: ignore[operator]
            and len(a.values) == len(champion.values)
        ]
        if beaten:
            winner = min(beaten, key=lambda a: ev.contributions[str(a.ablate)].mean)
            ev.replaced, ev.champion = champion, winner
            champion = winner
    if champion is not None and ev.baseline is not None and champion is not ev.baseline:
        diffs = _paired(champion, ev.baseline, sign, seeds)
        # The pooled noise of the whole phase: more degrees of freedom than the baseline's
        # own seeds (racing may have stopped it after two).
        ev.gain = (
            pooled_interval(diffs, ev.noise, ev.noise_df)
            if ev.noise is not None and diffs
            else mean_interval(diffs)
        )
    elif champion is not None and champion is ev.baseline:
        ev.gain = Interval(0.0, 0.0, 0.0, len(champion.values))
    todo = (wanted | abl_wanted) - ended
    ev.pending = len(todo)
    ev.retrains = len((wanted | abl_wanted) & ended)
    ev.todo = todo
    if ev.confirm_complete:
        ablations = len({k[3] for k in abl_wanted}) if confirm.ablation else 0
        ev.full_retrains = (len(arms) + ablations) * len(seeds)
    from search.study.refit import (
        refit_pending,  # the refits after the ablation (`search.study.refit`)
    )

    ev.pending += refit_pending(trials, config, direction, ev)
    return ev


def _split_of(ev: Evidence, seed: int) -> int:
    """The split a retrain with `seed` trains on: its own (1, 2, …) when resplitting."""
    return ev.seeds.index(seed) + 1 if ev.resplit else 0


def plan(
    trials: Sequence[FrozenTrial],
    config: StudyConfig,
    direction: optuna.study.StudyDirection,
    *,
    val_images: int | None = None,
) -> list[Planned]:
    """The retrains to enqueue now: those the confirm phase wants that are not enqueued yet
    (the next round of seeds of the configurations still in the race; then the champion's
    ablation, seed by seed). Idempotent: a second call (another worker, a later launch) plans
    only what is missing; a larger `top_k` or `seeds` plans the difference."""
    confirm = config.search.confirm
    ev = evidence(trials, config, direction, val_images=val_images)
    if confirm is None or ev is None:
        return []
    space = space_of(config)
    baseline_values = space.baseline_values() or {}
    exists = {
        planned_key(t.user_attrs)
        for t in trials
        if t.user_attrs.get(PHASE_ATTR) in (CONFIRM, ABLATION)
    }
    arm_of = {a.source: a for a in ev.arms}
    champion = ev.replaced or ev.champion
    out: list[Planned] = []
    for key in sorted(ev.todo, key=str):
        if key in exists:
            continue
        phase, source, seed, ablate = key
        arm = arm_of.get(source) if phase == CONFIRM else champion
        if arm is None:
            continue
        base = dict(baseline_values) if arm.baseline else {}
        attrs: dict[str, Any] = {PHASE_ATTR: phase, SOURCE_ATTR: arm.source, SEED_ATTR: seed}
        overrides: dict[str, Any] = dict(base)
        if ablate is not None:
            attrs[ABLATE_ATTR] = ablate
            overrides[ablate] = 0.0
        attrs[OVERRIDES_ATTR] = {**overrides, "seed": seed}
        if ev.resplit:
            attrs[SPLIT_ATTR] = _split_of(ev, seed)
        out.append(Planned(dict(arm.params), attrs))
    from search.study.refit import (
        plan_refit,  # the refits after the ablation (`search.study.refit`)
    )

    return out + plan_refit(trials, config, direction, ev)


def enqueue_plan(study: optuna.Study, config: StudyConfig) -> dict[str, int]:
    """Enqueue what `plan` says, under the study's lock (workers that finish the search
    together enqueue each retrain once); how many were added, by phase."""
    from search.study.storage import study_lock

    with study_lock(study, "confirm"):
        todo = plan(
            study.get_trials(deepcopy=False),
            config,
            study.direction,
            val_images=study.user_attrs.get(VAL_IMAGES_ATTR),
        )
        for item in todo:
            study.enqueue_trial(item.params, user_attrs=item.user_attrs, skip_if_exists=False)
    added: dict[str, int] = {}
    for item in todo:
        phase = item.user_attrs[PHASE_ATTR]
        added[phase] = added.get(phase, 0) + 1
    return added


def pending_retrains(trials: Iterable[FrozenTrial]) -> int:
    """Confirm-phase trials enqueued or running."""
    return sum(
        t.state in _PENDING and t.user_attrs.get(PHASE_ATTR) in (CONFIRM, ABLATION) for t in trials
    )


_CONFIGS: dict[str, StudyConfig] = {}


def study_config(study: optuna.Study) -> StudyConfig | None:
    """The study's stored config, validated once per distinct config in this process."""
    from search.config.schema import parse_config

    stored = study.user_attrs.get(CONFIG_ATTR)
    if not isinstance(stored, dict):
        return None
    key = json.dumps(stored, sort_keys=True, default=str)
    if key not in _CONFIGS:
        _CONFIGS[key] = parse_config(stored, check_model=False)
    return _CONFIGS[key]


def study_evidence(study: optuna.Study) -> Evidence | None:
    config = study_config(study)
    if config is None:
        return None
    return evidence(
        study.get_trials(deepcopy=False),
        config,
        study.direction,
        val_images=study.user_attrs.get(VAL_IMAGES_ATTR),
    )


def confirmed_champion(study: optuna.Study) -> FrozenTrial | None:
    """The best-seed retrain of the confirmed champion (None until the confirm phase is
    complete, or without one)."""
    ev = study_evidence(study)
    if ev is None or ev.champion is None:
        return None
    return ev.champion.best_trial(study.direction)


# --------------------------------------------------------------------------- held-out test
TEST_ATTR = "test_evidence"  # study user attr: the once-only test-split evaluation
BOOTSTRAP_RESAMPLES = 5000


def held_out(champion: Any, baseline: Any | None, data: Any) -> dict[str, Any]:
    """Evaluate the champion (and the baseline recipe's model) once on the test split:
    accuracy, ECE (15 bins) and NLL of each, and the accuracy gain with a 95% paired
    bootstrap interval over the test images. Models are `torch.nn.Module`s."""
    from search.training.evaluation import evaluate_full

    def one(model: Any) -> tuple[dict[str, float], Any]:
        ev = evaluate_full(model.to(data.test.x.device), data.test, max_value=data.max_value)
        return {"accuracy": ev.accuracy, "ece": ev.ece, "nll": ev.loss}, ev.correct

    out: dict[str, Any] = {"images": len(data.test)}
    out["champion"], correct = one(champion)
    if baseline is not None:
        out["baseline"], base_correct = one(baseline)
        gain, low, high = paired_bootstrap(
            correct.tolist(), base_correct.tolist(), resamples=BOOTSTRAP_RESAMPLES
        )
        out["gain"] = {
            "mean": gain,
            "low": low,
            "high": high,
            "method": f"paired bootstrap over {len(data.test)} test images "
            f"({BOOTSTRAP_RESAMPLES} resamples)",
        }
    return out


def baseline_model_trial(study: optuna.Study) -> FrozenTrial | None:
    """The trial whose weights stand for the baseline recipe on the test split: its best-seed
    retrain once the confirm phase is complete, else the baseline trial."""
    ev = study_evidence(study)
    if ev is not None and ev.champion is not None and ev.baseline is not None:
        chosen = ev.baseline.best_trial(study.direction)
        if chosen is not None:
            return chosen
    return baseline_trial(study)


def epochs_saved(study: optuna.Study, config: StudyConfig | None) -> float | None:
    """The share of the search's epochs that pruning and early stopping did not train:
    1 − epochs trained ÷ (finished search trials, the baseline's included, × `train.epochs`),
    as the report's header counts them."""
    if config is None:
        return None
    done = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
        if t.user_attrs.get(PHASE_ATTR, SEARCH) in (SEARCH, BASELINE)  # the search's budget
    ]
    full = sum(int(t.params.get("epochs", config.train.epochs)) for t in done)
    trained = sum(int(t.user_attrs.get(EPOCHS_TRAINED_ATTR) or 0) for t in done)
    return None if full == 0 else 1.0 - trained / full
