"""`regsearch bench --only racing`: what racing saves in the confirm phase, and whether it
picks the champion the full phase picks.

Per data set, the default study runs once through `regsearch run` with `racing: false`: every
seed of every configuration and of every ablation is retrained. Racing is then replayed on
those retrains (`search.study.evidence` is a pure function of the trials, and racing only ever
runs a subset of what the full phase runs), round by round as a live race plans them: the
retrains it would have run, and the champion it would have chosen, against the full phase's.
The default study with racing on then runs too, for the wall time before and after (its own
retrains and champion beside them).
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["RACING_SETS", "racing", "replay"]

RACING_SETS: dict[str, list[str]] = {
    "digits": [],
    "fashion-1000": ["dataset.name=fashion-mnist", "dataset.root=ROOT", "dataset.subset=1000"],
}


def _name(arm: Any) -> str | None:
    if arm is None:
        return None
    return f"trial {arm.source}" + (f" with {arm.ablate} off" if arm.ablate else "")


def _raced_trials(
    trials: Sequence[Any], raced: Any, direction: Any, val_images: int | None
) -> list[Any]:
    """The trials a live study with racing would hold: its search, then round after round
    the retrains racing plans (`search.study.evidence.plan`), each taken from the full
    phase's trials. Evidence over all the full phase's retrains would not do: a dropped
    configuration's later seeds and the seeds after the race ended would enter the pooled
    noise, the champion's seeds and the ablation's settling."""
    from search.core.records import PHASE_ATTR
    from search.study.evidence import ABLATION, CONFIRM, plan, planned_key

    retrains = {
        planned_key(t.user_attrs): t
        for t in trials
        if t.user_attrs.get(PHASE_ATTR) in (CONFIRM, ABLATION)
    }
    kept = [t for t in trials if t.user_attrs.get(PHASE_ATTR) not in (CONFIRM, ABLATION)]
    while True:
        planned = [
            retrains.get(planned_key(p.user_attrs))
            for p in plan(kept, raced, direction, val_images=val_images)
            if p.user_attrs.get(PHASE_ATTR) in (CONFIRM, ABLATION)
        ]
        found = [t for t in planned if t is not None]
        if not found:  # done, or racing wants what the full phase never ran
            return sorted(kept, key=lambda t: t.number)
        kept += found


def replay(study: Any) -> dict[str, Any]:
    """Racing replayed on a `racing: false` study's retrains: the retrains it runs of the
    full phase's, and its champion beside the full phase's."""
    from search.core.records import VAL_IMAGES_ATTR
    from search.study.evidence import evidence, study_config

    config = study_config(study)
    assert config is not None and config.search.confirm is not None, "a confirm phase"
    assert not config.search.confirm.racing, "replay a study that ran without racing"
    trials = study.get_trials(deepcopy=False)
    val_images = study.user_attrs.get(VAL_IMAGES_ATTR)
    confirm = config.search.confirm.model_copy(update={"racing": True})
    search = config.search.model_copy(update={"confirm": confirm})
    raced = config.model_copy(update={"search": search})
    full = evidence(trials, config, study.direction, val_images=val_images)
    race = evidence(
        _raced_trials(trials, raced, study.direction, val_images),
        raced,
        study.direction,
        val_images=val_images,
    )
    assert full is not None and race is not None
    return {
        "val_images": val_images,
        "full_retrains": full.retrains,
        "raced_retrains": race.retrains,
        "share": round(race.retrains / full.retrains, 3) if full.retrains else None,
        "full_champion": _name(full.champion),
        "raced_champion": _name(race.champion),
        "same_champion": _name(full.champion) == _name(race.champion),
        # False when racing's champion is another configuration, whose ablation the full
        # phase never ran: its count then leaves that ablation out.
        "replay_complete": race.ablation_complete,
        "dropped": {_name(a): a.dropped_after for a in race.arms if a.dropped_after},
    }


def racing(*, sets: Sequence[str] = tuple(RACING_SETS), work: Path | None = None) -> dict[str, Any]:
    """Per set: the `racing: false` study's wall time and racing replayed on its retrains;
    the default study's wall time, retrains and champion. A Fashion-MNIST set skips with one
    line where the data set is not installed. `work`: keep the studies there (else a
    temporary folder)."""
    import optuna

    from search.bench.fashion import _outcome, _run, set_items

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            items = set_items(RACING_SETS[name])
            if items is None:
                out[name] = {"skipped": "Fashion-MNIST is not installed"}
                continue
            row: dict[str, Any] = {}
            for arm, extra in (("full", ["search.confirm.racing=false"]), ("racing", [])):
                study = f"{name}-{arm}"
                cwd = (work or Path(tmp)) / study
                cwd.mkdir()
                ran = _run(cwd, study, [*items, *extra])
                if "error" in ran:
                    row[arm] = ran
                    continue
                best = _outcome(cwd, study)
                verdict = best.get("champion") or {}
                row[arm] = {
                    "seconds": ran["seconds"],
                    "champion": best["champion_name"],
                    "retrains": verdict.get("retrains"),
                    "test": round(best["test"]["champion"]["accuracy"], 4),
                }
                if arm == "full":
                    storage = f"sqlite:///{cwd}/studies/regsearch.db"
                    row["replay"] = replay(optuna.load_study(study_name=study, storage=storage))
            out[name] = row
    return out
