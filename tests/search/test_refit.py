"""The champion's refit on training + validation images (`search.study.refit`): planned once the
confirm phase and the ablation have ended, for the epochs the confirm phase found, trained to
the last epoch, and registered as `@champion` with what the test split says of it."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState, create_trial
from torch import nn

from search.config.schema import (
    DatasetConfig,
    EarlyStoppingConfig,
    ModelConfig,
    ObjectiveConfig,
    Regularization,
    TrainConfig,
    TrialConfig,
)
from search.core.records import BASELINE, CONFIG_ATTR, PHASE_ATTR, REFIT, SEARCH
from search.study.evidence import SEED_ATTR, SOURCE_ATTR, confirm_seeds, evidence, plan
from search.study.refit import (
    CONFIRM_MEAN,
    REFIT_EPOCHS_ATTR,
    REFIT_OF_ATTR,
    REFIT_VALUE_ATTR,
    VALUE_FROM_ATTR,
    plan_refit,
    refit_pending,
)
from search.study.studies import best_trial
from search.study.studyfile import load_config
from search.training.train import (
    MAX_EPOCHS,
    PLANNED_EPOCHS,
    EpochStats,
    TrainResult,
    run_epochs,
    train,
)
from tests.helpers import regsearch

# --------------------------------------------------------------------------- planning
_DISTS = {"dropout": FloatDistribution(0.0, 0.6)}
_SPACE = (
    "space={dropout: {type: float, low: 0.0, high: 0.6}, weight_decay: 0.0, aug_strength: 0.0,"
    " mixup_alpha: 0.0, label_smoothing: 0.0}"
)


def _config(**confirm: object):
    settings = {"top_k": 1, "seeds": 3, "racing": False, "ablation": False, **confirm}
    sets = [f"search.confirm.{k}={str(v).lower()}" for k, v in settings.items()]
    return load_config(overrides=[*sets, _SPACE, "baseline={dropout: 0.5}"])


def _study(config) -> optuna.Study:
    study = optuna.create_study(direction="maximize")
    study.set_user_attr(CONFIG_ATTR, config.portable_dict())
    return study


def _add(study, value, params, state=TrialState.COMPLETE, **attrs) -> int:
    study.add_trial(
        create_trial(
            state=state,
            value=value if state == TrialState.COMPLETE else None,
            params=params,
            distributions=_DISTS,
            user_attrs=attrs,
        )
    )
    return study.trials[-1].number


def _confirmed(study, config) -> tuple[int, int]:
    """A baseline and a searched configuration, each retrained with 3 seeds: the searched one
    wins (0.95 mean), its retrains trained 3, 5 and 4 epochs; the recipe's 2, 2 and 3."""
    base = _add(study, 0.90, {"dropout": 0.5}, **{PHASE_ATTR: BASELINE})
    a = _add(study, 0.96, {"dropout": 0.1}, **{PHASE_ATTR: SEARCH})
    values = {base: [0.90, 0.91, 0.89], a: [0.94, 0.95, 0.96]}
    epochs = {base: [2, 2, 3], a: [3, 5, 4]}
    seeds = confirm_seeds(config, 3)
    for item in plan(study.get_trials(), config, study.direction):
        source, i = item.user_attrs[SOURCE_ATTR], seeds.index(item.user_attrs[SEED_ATTR])
        attrs = {**item.user_attrs, "epochs_trained": epochs[source][i]}
        _add(study, values[source][i], item.params, **attrs)
    return base, a


def test_the_refit_is_planned_once_for_the_champion_and_the_recipe_with_the_median_epoch() -> None:
    config = _config()
    study = _study(config)
    base, a = _confirmed(study, config)
    ev = evidence(study.get_trials(), config, study.direction)
    assert ev is not None and ev.champion is not None and ev.champion.source == a
    assert ev.pending == 2, "the two refits are wanted and not run yet"
    planned = plan(study.get_trials(), config, study.direction)
    assert [p.user_attrs[PHASE_ATTR] for p in planned] == [REFIT, REFIT]
    champion, recipe = planned
    first_seed = confirm_seeds(config, 3)[0]
    assert champion.params == {"dropout": 0.1}
    assert champion.user_attrs[SOURCE_ATTR] == a and champion.user_attrs[SEED_ATTR] == first_seed
    assert champion.user_attrs[REFIT_EPOCHS_ATTR] == 4, "median of 3, 5, 4"
    assert champion.user_attrs[REFIT_VALUE_ATTR] == pytest.approx(0.95)
    assert champion.user_attrs[VALUE_FROM_ATTR] == CONFIRM_MEAN
    assert champion.user_attrs["overrides"] == {"seed": first_seed}
    best_seed = max(
        (t for t in study.trials if t.user_attrs.get(SOURCE_ATTR) == a),
        key=lambda t: t.value,
    )
    assert champion.user_attrs[REFIT_OF_ATTR] == best_seed.number
    assert recipe.user_attrs[SOURCE_ATTR] == base and recipe.user_attrs[REFIT_EPOCHS_ATTR] == 2
    retrain = next(t for t in study.trials if t.user_attrs.get(SOURCE_ATTR) == base)
    assert recipe.user_attrs["overrides"] == {**retrain.user_attrs["overrides"], "seed": first_seed}
    assert recipe.user_attrs["overrides"]["dropout"] == 0.5, "the recipe's values"

    # Enqueued, the same plan adds nothing; both count as pending until they end.
    for item in planned:
        study.enqueue_trial(item.params, user_attrs=item.user_attrs)
    trials = study.get_trials()
    assert plan(trials, config, study.direction) == []
    assert plan_refit(trials, config, study.direction, ev) == []
    assert refit_pending(trials, config, study.direction, ev) == 2
    assert best_trial(study).number == best_seed.number, "before the refit ends"


def test_the_champion_s_completed_refit_is_the_best_trial() -> None:
    config = _config()
    study = _study(config)
    _confirmed(study, config)
    champion, recipe = plan(study.get_trials(), config, study.direction)
    _add(study, 0.95, recipe.params, **recipe.user_attrs)
    assert best_trial(study).user_attrs[PHASE_ATTR] != REFIT, "the recipe's refit is not it"
    refit = _add(study, 0.95, champion.params, **champion.user_attrs)
    assert best_trial(study).number == refit
    ev = evidence(study.get_trials(), config, study.direction)
    assert ev is not None and ev.pending == 0


def test_an_extended_confirm_phase_refits_again_with_the_new_mean() -> None:
    """`regsearch confirm --seeds 4` moves the confirm mean: the refit of 3 seeds (the same
    epochs) would keep the old mean as the champion's value, in MLflow and on the model."""
    config = _config()
    study = _study(config)
    _base, a = _confirmed(study, config)
    for item in plan(study.get_trials(), config, study.direction):  # the two refits
        _add(study, item.user_attrs[REFIT_VALUE_ATTR], item.params, **item.user_attrs)
    assert plan(study.get_trials(), config, study.direction) == []
    longer = _config(seeds=4)
    study.set_user_attr(CONFIG_ATTR, longer.portable_dict())
    for item in plan(study.get_trials(), longer, study.direction):  # the fourth seed
        attrs = {**item.user_attrs, "epochs_trained": 4 if item.user_attrs[SOURCE_ATTR] == a else 2}
        _add(study, 0.99 if item.user_attrs[SOURCE_ATTR] == a else 0.94, item.params, **attrs)
    again = plan(study.get_trials(), longer, study.direction)
    assert [p.user_attrs[PHASE_ATTR] for p in again] == [REFIT, REFIT]
    assert again[0].user_attrs[REFIT_EPOCHS_ATTR] == 4, "median of 3, 5, 4, 4: the same epochs"
    assert again[0].user_attrs[REFIT_VALUE_ATTR] == pytest.approx((0.94 + 0.95 + 0.96 + 0.99) / 4)
    for item in again:
        _add(study, item.user_attrs[REFIT_VALUE_ATTR], item.params, **item.user_attrs)
    assert best_trial(study).value == pytest.approx(0.96)


def test_while_an_extended_confirm_phase_runs_the_refit_it_chose_stays_the_champion() -> None:
    """`regsearch confirm --seeds 4` leaves the phase without a champion until the fourth
    seed ends: the best trial (and `@champion`, repaired to it at launch) went back to the
    best search trial, trained on the training split alone, and stayed there if the
    extension was interrupted."""
    config = _config()
    study = _study(config)
    _confirmed(study, config)
    for item in plan(study.get_trials(), config, study.direction):  # the two refits
        _add(study, item.user_attrs[REFIT_VALUE_ATTR], item.params, **item.user_attrs)
    refit = best_trial(study)
    assert refit is not None and refit.user_attrs[PHASE_ATTR] == REFIT
    study.set_user_attr("champion", {"trial": refit.number, "uri": "models:/x/3"})
    study.set_user_attr(CONFIG_ATTR, _config(seeds=4).portable_dict())
    assert plan(study.get_trials(), _config(seeds=4), study.direction), "the fourth seed"
    assert best_trial(study).number == refit.number


def test_no_refit_is_planned_with_refit_false_nor_before_the_ablation_ends() -> None:
    config = _config(refit=False)
    study = _study(config)
    _confirmed(study, config)
    assert plan(study.get_trials(), config, study.direction) == []
    ev = evidence(study.get_trials(), config, study.direction)
    assert ev is not None and ev.pending == 0
    assert best_trial(study).user_attrs[PHASE_ATTR] == "confirm"

    config = _config(ablation=True)
    study = _study(config)
    _confirmed(study, config)
    planned = plan(study.get_trials(), config, study.direction)
    assert planned and {p.user_attrs[PHASE_ATTR] for p in planned} == {"ablation"}


# --------------------------------------------------------------------------- training
class _Epochs:
    """Epochs whose model weight is the epoch's number and whose validation accuracy falls
    after the first: the best epoch is 1, the last is the last trained."""

    def __init__(self, model: nn.Linear, epochs: int) -> None:
        self.model, self.epochs, self.trained = model, epochs, 0

    def __iter__(self):
        for epoch in range(1, self.epochs + 1):
            self.trained = epoch
            with torch.no_grad():
                self.model.weight.fill_(float(epoch))
            yield EpochStats(epoch, 0.1, 0.9, 0.5, 1.0 / epoch, 0.1, 0.01, 0.0)


def _cfg(epochs: int) -> TrialConfig:
    return TrialConfig(
        model=ModelConfig(name="small-cnn", width=8),
        train=TrainConfig(epochs=epochs, batch_size=32, device="cpu"),
        regularization=Regularization(),
        early_stopping=EarlyStoppingConfig(patience=None),
        objective=ObjectiveConfig(metric="val_accuracy"),
    )


def test_keep_last_stops_after_the_refit_epochs_with_the_last_weights() -> None:
    cfg = _cfg(5)
    model = nn.Linear(1, 1)
    epochs = _Epochs(model, 5)
    result = run_epochs(
        cfg,
        epochs,
        result=TrainResult(MAX_EPOCHS, 0),
        model=model,
        stop_after=3,
        keep="last",
    )
    assert epochs.trained == 3 and result.epochs_trained == 3
    assert result.stop_reason == PLANNED_EPOCHS and result.best_epoch == 3
    assert result.best_value == pytest.approx(1 / 3), "the last epoch's, not the best"
    assert result.state_dict is not None and float(result.state_dict["weight"]) == 3.0
    # The default keeps the best epoch, as before.
    model = nn.Linear(1, 1)
    result = run_epochs(cfg, _Epochs(model, 5), result=TrainResult(MAX_EPOCHS, 0), model=model)
    assert result.best_epoch == 1 and result.epochs_trained == 5
    assert result.state_dict is not None and float(result.state_dict["weight"]) == 1.0


def test_a_refit_trains_on_the_schedule_of_train_epochs_and_stops_after_its_own() -> None:
    from search.data.dataset import load_dataset

    data = load_dataset(
        DatasetConfig(name="synthetic", num_samples=300, image_size=8, channels=1, num_classes=3)
    )
    full = train(_cfg(3), data)
    refit = train(_cfg(3), data, stop_after=2, keep="last")
    assert full.epochs_trained == 3 and refit.epochs_trained == 2
    assert refit.stop_reason == PLANNED_EPOCHS and refit.best_epoch == 2
    # The same first two epochs: the schedule spans train.epochs, not the refit's 2.
    assert [s.lr for s in refit.history] == [s.lr for s in full.history[:2]]
    assert [s.train_loss for s in refit.history] == [s.train_loss for s in full.history[:2]]
    assert refit.history[-1].lr > full.history[-1].lr
    merged = data.with_val_in_train()
    assert len(merged.train) == len(data.train) + len(data.val)
    assert merged.test is data.test and merged.val is data.val


@pytest.mark.parametrize(
    ("n_train", "n_refit", "batch", "passes"),
    [(4_800, 6_000, 128, 2), (800, 1_000, 64, 4), (1_077, 1_437, 128, 5), (180, 240, 16, 4)],
)
def test_a_refit_keeps_the_passes_an_epoch_of_the_training_it_stands_for(
    n_train: int, n_refit: int, batch: int, passes: int
) -> None:
    """45 steps an epoch is 2 passes over 4,800 Fashion-MNIST images but 1 over the 6,000 of
    train + validation: a refit planned by the steps alone trained half the passes of the
    configuration it stands for, and scored 1.4 points below it on the test split."""
    from search.training.train import batches_of, with_passes_of

    t = TrainConfig(batch_size="auto", min_steps_per_epoch=45)
    assert batches_of(t, n_train)[:2] == (batch, passes)
    refit = with_passes_of(t, n_train, n_refit)
    size, refit_passes, steps = batches_of(refit, n_refit)
    assert (size, refit_passes) == (batch, passes), "the same batches, the same passes"
    assert steps > batches_of(t, n_train)[2], "more images: more steps an epoch, not fewer"


# --------------------------------------------------------------------------- end to end
SMALL = (
    "--set", "train.epochs=2",
    "--set", "search.pruner=none",
    "--set", "early_stopping.patience=null",
    "--set", "space={dropout: {type: float, low: 0.0, high: 0.5}, weight_decay: 0.0, "
    "aug_strength: 0.0, mixup_alpha: 0.0, label_smoothing: 0.0}",
    "--set", "baseline={dropout: 0.5}",
    "--set", "search.confirm={top_k: 1, seeds: 2, ablation: false}",
    "--quiet",
)  # fmt: skip


@pytest.mark.slow
def test_the_registered_champion_is_the_refit_on_train_and_validation(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from search.core.records import TRAIN_IMAGES_ATTR, VAL_IMAGES_ATTR
    from search.data.dataset import load_dataset
    from search.study.evidence import study_config

    proc = regsearch("run", "--study", "r", "--n-trials", "2", *SMALL, cwd=tmp_path, confirm=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    study = optuna.load_study(study_name="r", storage=f"sqlite:///{tmp_path}/studies/regsearch.db")
    assert not [t for t in study.trials if t.state != TrialState.COMPLETE]
    refits = [t for t in study.trials if t.user_attrs.get(PHASE_ATTR) == REFIT]
    best = best_trial(study)
    assert best is not None and best in refits
    labelled = study.user_attrs[TRAIN_IMAGES_ATTR] + study.user_attrs[VAL_IMAGES_ATTR]
    for t in refits:
        assert t.user_attrs[TRAIN_IMAGES_ATTR] == labelled, "trained on train + validation"
        assert t.user_attrs["epochs_trained"] == t.user_attrs[REFIT_EPOCHS_ATTR]
        assert t.user_attrs["stop_reason"] == PLANNED_EPOCHS
    assert best.value == pytest.approx(best.user_attrs[REFIT_VALUE_ATTR])
    before = study.trials[best.user_attrs[REFIT_OF_ATTR]]
    assert before.user_attrs[PHASE_ATTR] == "confirm"
    assert before.user_attrs[SOURCE_ATTR] == best.user_attrs[SOURCE_ATTR]

    out = json.loads(regsearch("best", "r", "--json", cwd=tmp_path).stdout)
    assert out["trial"] == best.number and out["phase"] == REFIT
    refit = out["refit"]
    assert refit["trial"] == best.number and refit["of"] == before.number
    assert refit["train_images"] == labelled and refit["epochs"] == best.user_attrs["best_epoch"]
    test = out["test"]
    assert test["champion_trial"] == best.number and test["before_refit_trial"] == before.number
    gain = test["refit_gain"]
    assert gain["low"] <= gain["mean"] <= gain["high"]
    assert gain["mean"] == pytest.approx(
        test["champion"]["accuracy"] - test["before_refit"]["accuracy"]
    )
    if len(refits) == 2:  # the recipe did not win: it is compared refit against refit
        assert test["baseline_trial"] in {t.number for t in refits} - {best.number}
    line = regsearch("best", "r", cwd=tmp_path).stdout.splitlines()[0]
    assert f"refit on train + validation ({labelled:,} images, {refit['epochs']} epoch" in line
    assert "over the same configuration trained on the training split alone" in line

    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    client = MlflowClient(uri, registry_uri=uri)
    version = client.get_model_version_by_alias("r", "champion")
    assert version.tags["trial"] == str(best.number)
    assert version.tags["trained_on"] == f"train+val ({labelled} images)"
    assert version.tags["refit_of"] == str(before.number)
    assert version.tags["refit_epochs"] == str(refit["epochs"])
    assert "refit on train + val" in version.description.lower()
    recorded = float(version.tags["test_accuracy"])
    assert recorded == study.user_attrs["test_accuracy"] == out["test_accuracy"]

    # Its validation images were training images: no run of it, no trial attribute and no
    # version tag scores it on them under the name of a held-out score.
    assert version.tags["val_loss"] == "inf"
    assert "val_accuracy" not in best.user_attrs and "val_loss" not in best.user_attrs
    run = client.get_run(best.user_attrs["mlflow_run_id"])
    assert "seen_val_accuracy" in run.data.metrics and "val_accuracy" not in run.data.metrics
    held = client.get_run(before.user_attrs["mlflow_run_id"])
    assert "val_accuracy" in held.data.metrics and "seen_val_accuracy" not in held.data.metrics

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    model = mlflow.pytorch.load_model("models:/r@champion")
    config = study_config(study)
    assert config is not None
    data = load_dataset(config.dataset)
    with torch.no_grad():
        logits = model(data.test.x.float().div(data.max_value))
    accuracy = int((logits.argmax(dim=1) == data.test.y).sum()) / len(data.test)
    assert abs(accuracy - recorded) < 1e-9
