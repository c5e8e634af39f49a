"""The training loop of one trial on a tiny synthetic data set: it learns, reports every epoch,
stops for pruning, early stopping and non-finite losses, and keeps the best weights."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from models import create_model
from search.config.schema import (
    DatasetConfig,
    EarlyStoppingConfig,
    ModelConfig,
    ObjectiveConfig,
    Regularization,
    TrainConfig,
    TrialConfig,
)
from search.data.dataset import Dataset, load_dataset
from search.training.evaluation import evaluate
from search.training.train import (
    EARLY_STOPPING,
    MAX_EPOCHS,
    NONFINITE,
    EarlyStopping,
    EpochStats,
    build_model,
    make_optimizer,
    resolve_device,
    train,
)

NUM_CLASSES = 3


@pytest.fixture(scope="session")  # kept while xdist interleaves modules
def data() -> Dataset:
    return load_dataset(
        DatasetConfig(
            name="synthetic", num_samples=300, image_size=8, channels=1, num_classes=NUM_CLASSES
        )
    )


def _cfg(
    *,
    regularization: Regularization | None = None,
    patience: int | None = None,
    min_delta: float = 0.0,
    metric: str = "val_accuracy",
    width: int = 8,
    model: str = "small-cnn",
    **train_kwargs: Any,
) -> TrialConfig:
    # min_steps_per_epoch: the tiny sets here train at the former budget, not the default 45
    t: dict[str, Any] = {
        "epochs": 5, "batch_size": 32, "lr": 1e-2, "device": "cpu", "min_steps_per_epoch": 8
    }  # fmt: skip
    t.update(train_kwargs)
    return TrialConfig(
        model=ModelConfig(name=model, width=width),
        # lr unvalidated: the loop's own handling of a diverging lr (1e30) is tested too.
        train=TrainConfig(**{k: v for k, v in t.items() if k != "lr"}).model_copy(
            update={"lr": t["lr"]}
        ),
        regularization=regularization or Regularization(),
        early_stopping=EarlyStoppingConfig(patience=patience, min_delta=min_delta),
        objective=ObjectiveConfig(metric=metric),  # type: ignore[arg-type]
    )


def _check_stats(stats: EpochStats, max_lr: float = 1e-2) -> None:
    for name, value in stats.metrics().items():
        assert math.isfinite(value), (name, value)
    assert 0.0 <= stats.train_accuracy <= 1.0
    assert 0.0 <= stats.val_accuracy <= 1.0
    assert stats.train_loss >= 0.0
    assert stats.val_loss >= 0.0
    assert stats.fit_loss >= 0.0
    assert 0.0 < stats.lr <= max_lr + 1e-12  # an epoch's mean rate: above 0 to the end
    assert stats.epoch_seconds >= 0.0


# --------------------------------------------------------------------------- learning


def test_train_learns_the_synthetic_task(data: Dataset) -> None:
    result = train(_cfg(epochs=5), data)
    chance = 1.0 / NUM_CLASSES
    assert result.stop_reason == MAX_EPOCHS
    assert result.epochs_trained == 5
    assert len(result.history) == 5
    assert result.best_value is not None
    assert result.best_value > chance + 0.25
    assert result.history[-1].train_accuracy > chance + 0.25
    assert result.history[-1].val_loss < result.history[0].val_loss
    # The best epoch is the one with the highest val_accuracy (the first, on ties).
    accuracies = [s.val_accuracy for s in result.history]
    assert result.best_value == max(accuracies)
    assert result.best_epoch == accuracies.index(max(accuracies)) + 1
    assert result.best_stats == result.history[result.best_epoch - 1]
    assert result.state_dict is not None
    assert all(v.device.type == "cpu" for v in result.state_dict.values())


def test_val_loss_objective_keeps_the_lowest_loss(data: Dataset) -> None:
    result = train(_cfg(epochs=4, metric="val_loss"), data)
    losses = [s.val_loss for s in result.history]
    assert result.best_value == min(losses)
    assert result.best_epoch == losses.index(min(losses)) + 1


def test_same_seed_same_run(data: Dataset) -> None:
    reg = Regularization(aug_strength=0.5, mixup_alpha=0.2, dropout=0.1)
    a = train(_cfg(epochs=2, seed=3, regularization=reg), data)
    b = train(_cfg(epochs=2, seed=3, regularization=reg), data)
    key = [(s.val_loss, s.val_accuracy, s.fit_loss) for s in a.history]
    assert key == [(s.val_loss, s.val_accuracy, s.fit_loss) for s in b.history]
    c = train(_cfg(epochs=2, seed=4, regularization=reg), data)
    assert key != [(s.val_loss, s.val_accuracy, s.fit_loss) for s in c.history]


def test_best_weights_reproduce_the_best_epoch(data: Dataset) -> None:
    result = train(_cfg(epochs=4, lr=3e-2), data)
    assert result.state_dict is not None and result.best_stats is not None
    model = create_model(**result.model_kwargs)
    model.load_state_dict(result.state_dict)
    val_loss, val_acc = evaluate(model, data.val, max_value=data.max_value)
    assert val_acc == result.best_stats.val_accuracy
    assert val_loss == pytest.approx(result.best_stats.val_loss, rel=1e-5)


def test_model_kwargs_describe_the_trained_model(data: Dataset) -> None:
    cfg = _cfg(epochs=1, regularization=Regularization(dropout=0.3, drop_path=0.1), width=4)
    result = train(cfg, data)
    kwargs = result.model_kwargs
    assert kwargs["name"] == "small-cnn"
    assert kwargs["num_classes"] == NUM_CLASSES
    assert kwargs["in_channels"] == 1
    assert kwargs["dropout"] == 0.3
    assert kwargs["drop_path"] == 0.1
    assert kwargs["width"] == 4
    assert len(kwargs["mean"]) == len(kwargs["std"]) == 1


@pytest.mark.parametrize(
    "reg",
    [
        Regularization(weight_decay=0.05, dropout=0.2, label_smoothing=0.1),
        Regularization(aug_strength=1.0, cutout=0.25, drop_path=0.1),
        Regularization(mixup_alpha=0.4, cutmix_alpha=1.0, label_smoothing=0.1),
    ],
)
def test_every_regularizer_trains(data: Dataset, reg: Regularization) -> None:
    result = train(_cfg(epochs=2, regularization=reg), data)
    assert result.stop_reason == MAX_EPOCHS
    for stats in result.history:
        _check_stats(stats)


def test_colour_images_with_flips_and_jitter() -> None:
    data = load_dataset(
        DatasetConfig(name="synthetic", num_samples=120, image_size=8, channels=3, num_classes=3)
    )
    reg = Regularization(aug_strength=1.0, mixup_alpha=0.2)
    result = train(_cfg(epochs=2, regularization=reg), data)
    assert result.epochs_trained == 2
    assert result.model_kwargs["in_channels"] == 3
    for stats in result.history:
        _check_stats(stats)


@pytest.mark.parametrize(("schedule", "optimizer"), [("cosine", "sgd"), ("constant", "adamw")])
def test_schedules_and_optimizers(data: Dataset, schedule: str, optimizer: str) -> None:
    result = train(_cfg(epochs=3, schedule=schedule, optimizer=optimizer), data)
    assert result.epochs_trained == 3
    for stats in result.history:
        _check_stats(stats)
    lrs = [s.lr for s in result.history]
    # MLflow's `lr`: the mean rate of the epoch's steps, not the next step's (which read the
    # peak after a one-epoch warm-up and 0 after the last epoch of a cosine schedule).
    if schedule == "constant":
        assert lrs[0] < lrs[1] == lrs[2] == pytest.approx(1e-2)
    else:
        assert lrs[0] < 1e-2 and lrs[1] > lrs[2] > 0.0


def test_onecycle_schedule(data: Dataset) -> None:
    result = train(_cfg(epochs=3, schedule="onecycle"), data)
    assert result.epochs_trained == 3
    assert result.history[-1].lr < result.history[0].lr


@pytest.mark.parametrize(("epochs", "warmup"), [(1, 1.0), (2, 5.0)])
def test_onecycle_with_warmup_as_long_as_training(
    data: Dataset, epochs: int, warmup: float
) -> None:
    result = train(_cfg(epochs=epochs, schedule="onecycle", warmup_epochs=warmup), data)
    assert result.epochs_trained == epochs


# --------------------------------------------------------------------------- callback


def test_on_epoch_called_once_per_epoch(data: Dataset) -> None:
    seen: list[EpochStats] = []
    result = train(_cfg(epochs=4), data, on_epoch=seen.append)
    assert [s.epoch for s in seen] == [1, 2, 3, 4]
    assert seen == result.history
    for stats in seen:
        _check_stats(stats)
    assert set(seen[0].metrics()) == {
        "train_loss",
        "train_accuracy",
        "val_loss",
        "val_accuracy",
        "fit_loss",
        "lr",
        "epoch_seconds",
        "val_ece",
    }
    assert all(0.0 <= s.val_ece <= 1.0 for s in seen)


def test_callback_can_prune(data: Dataset) -> None:
    calls: list[int] = []

    def on_epoch(stats: EpochStats) -> str | None:
        calls.append(stats.epoch)
        return "pruned" if stats.epoch == 2 else None

    result = train(_cfg(epochs=6), data, on_epoch=on_epoch)
    assert result.stop_reason == "pruned"
    assert result.epochs_trained == 2
    assert calls == [1, 2]
    assert len(result.history) == 2
    assert result.best_epoch in (1, 2)


# --------------------------------------------------------------------------- early stopping


@pytest.mark.parametrize(("metric", "min_delta"), [("val_accuracy", 1.0), ("val_loss", 1e6)])
def test_early_stopping_when_nothing_can_improve(
    data: Dataset, metric: str, min_delta: float
) -> None:
    seen: list[int] = []
    cfg = _cfg(epochs=8, lr=1e-9, patience=1, min_delta=min_delta, metric=metric)
    result = train(cfg, data, on_epoch=lambda s: seen.append(s.epoch))
    assert result.stop_reason == EARLY_STOPPING
    assert result.epochs_trained == 2 < 8
    assert seen == [1, 2]
    assert result.best_epoch == 1
    assert result.best_epoch <= result.epochs_trained
    assert result.state_dict is not None
    assert result.best_stats == result.history[0]


def test_early_stopping_patience(data: Dataset) -> None:
    result = train(_cfg(epochs=10, patience=3, min_delta=1.0), data)
    assert result.stop_reason == EARLY_STOPPING
    assert result.epochs_trained == 4
    assert result.best_epoch == 1


def test_no_patience_runs_all_epochs(data: Dataset) -> None:
    result = train(_cfg(epochs=3, lr=1e-9, patience=None, min_delta=1.0), data)
    assert result.stop_reason == MAX_EPOCHS
    assert result.epochs_trained == 3


@pytest.mark.parametrize(
    ("maximize", "min_delta", "values", "improved"),
    [
        (True, 0.0, [0.5, 0.6, 0.6, 0.4, 0.61], [True, True, False, False, True]),
        (True, 0.1, [0.5, 0.55, 0.6, 0.61, 0.72], [True, False, False, True, True]),
        (False, 0.0, [1.0, 0.9, 0.9, 1.1, 0.89], [True, True, False, False, True]),
        (False, 0.1, [1.0, 0.95, 0.9, 0.85, 0.7], [True, False, False, True, True]),
        (True, 0.0, [math.inf], [True]),
    ],
)
def test_early_stopping_min_delta(
    maximize: bool, min_delta: float, values: list[float], improved: list[bool]
) -> None:
    stopper = EarlyStopping(patience=None, min_delta=min_delta, maximize=maximize)
    assert [stopper.improved(v) for v in values] == improved
    assert not stopper.should_stop  # no patience: never stops


def test_early_stopping_counts_bad_epochs_since_the_best() -> None:
    stopper = EarlyStopping(patience=2, min_delta=0.0, maximize=True)
    assert stopper.improved(0.5)
    assert not stopper.improved(0.4)
    assert not stopper.should_stop
    assert stopper.improved(0.7)  # a new best resets the count
    assert stopper.bad_epochs == 0
    assert not stopper.improved(0.7)
    assert not stopper.should_stop
    assert not stopper.improved(0.69)
    assert stopper.should_stop
    assert stopper.best == 0.7


# --------------------------------------------------------------------------- non-finite


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_diverging_run_stops_nonfinite(data: Dataset, optimizer: str) -> None:
    seen: list[EpochStats] = []
    result = train(_cfg(epochs=5, lr=1e30, optimizer=optimizer), data, on_epoch=seen.append)
    assert result.stop_reason == NONFINITE
    assert result.epochs_trained < 5
    assert all(math.isfinite(v) for s in seen for v in s.metrics().values())
    if result.best_epoch is None:
        assert result.state_dict is None
        assert result.best_value is None


# --------------------------------------------------------------------------- optimizer


@pytest.mark.parametrize(("model", "width"), [("small-cnn", 8), ("resnet18", 16), ("wrn-16-4", 16)])
@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_weight_decay_only_on_weights(model: str, width: int, optimizer: str) -> None:
    cfg = _cfg(
        model=model,
        width=width,
        optimizer=optimizer,
        regularization=Regularization(weight_decay=0.05),
    )
    net = create_model(
        model, num_classes=10, in_channels=3, width=width, mean=[0.5] * 3, std=[0.25] * 3
    )
    opt = make_optimizer(net, cfg)
    decay = [g for g in opt.param_groups if g["weight_decay"] == 0.05]
    no_decay = [g for g in opt.param_groups if g["weight_decay"] == 0.0]
    assert len(decay) == len(no_decay) == 1
    decay_ids = {id(p) for p in decay[0]["params"]}
    no_decay_ids = {id(p) for p in no_decay[0]["params"]}
    params = [p for p in net.parameters() if p.requires_grad]
    assert decay_ids | no_decay_ids == {id(p) for p in params}
    assert not decay_ids & no_decay_ids
    for p in params:
        assert (id(p) in decay_ids) == (p.ndim >= 2)
    # Biases and normalisation parameters are all in the no-decay group.
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm | nn.LayerNorm | nn.GroupNorm):
            for p in module.parameters(recurse=False):
                assert id(p) in no_decay_ids
        bias = getattr(module, "bias", None)
        if isinstance(bias, nn.Parameter):
            assert id(bias) in no_decay_ids
    for group in opt.param_groups:
        assert group["lr"] == cfg.train.lr


def test_optimizer_settings(data: Dataset) -> None:
    cfg = _cfg(optimizer="sgd", lr=0.2, momentum=0.8)
    model, _ = build_model(cfg, data)
    opt = make_optimizer(model, cfg)
    assert isinstance(opt, torch.optim.SGD)
    assert all(g["momentum"] == 0.8 and g["nesterov"] for g in opt.param_groups)
    cfg = _cfg(optimizer="adamw", momentum=0.85)
    opt = make_optimizer(build_model(cfg, data)[0], cfg)
    assert isinstance(opt, torch.optim.AdamW)
    assert all(g["betas"][0] == 0.85 for g in opt.param_groups)
    # Plain SGD: torch refuses Nesterov without momentum (every trial failed).
    cfg = _cfg(optimizer="sgd", momentum=0.0)
    opt = make_optimizer(build_model(cfg, data)[0], cfg)
    assert all(g["momentum"] == 0.0 and not g["nesterov"] for g in opt.param_groups)


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_onecycle_leaves_the_momentum_as_set(data: Dataset, optimizer: str) -> None:
    """torch's OneCycleLR cycles β₁ / momentum by default (0.95 → 0.85): `train.momentum`
    did nothing with it."""
    from search.training.optim import make_scheduler

    cfg = _cfg(optimizer=optimizer, momentum=0.5, schedule="onecycle")
    opt = make_optimizer(build_model(cfg, data)[0], cfg)
    scheduler = make_scheduler(opt, cfg.train, 100, 10)
    for _ in range(30):
        opt.step()
        scheduler.step()
    key = "betas" if optimizer == "adamw" else "momentum"
    assert all((g[key][0] if key == "betas" else g[key]) == 0.5 for g in opt.param_groups)


def test_the_schedule_ends_where_training_ends_when_a_batch_of_one_is_dropped() -> None:
    """1,025 images in batches of 128 leave a last batch of one, which the loop drops: the
    plan counted it, so the cosine stopped short of zero (a factor 0.03 at the end; 0.54 for
    129 images) and an epoch held fewer steps than `min_steps_per_epoch`."""
    from search.data.dataset import load_dataset
    from search.training.train import Epochs, epoch_plan

    assert epoch_plan(1025, 128, 8) == (1, 8) and epoch_plan(129, 128, 8) == (8, 8)
    assert epoch_plan(1, 16, 8) == (8, 8) and epoch_plan(17, 16, 8) == (8, 8)
    digits = load_dataset(DatasetConfig(name="digits", subset=163))  # 97 training images
    n = len(digits.train)
    run = Epochs(_cfg(epochs=2, batch_size=n - 1, warmup_epochs=0.5), digits)
    list(run)
    assert run.loop.scheduler.last_epoch == 2 * 8  # 8 steps an epoch, as planned
    assert run.loop.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)


# --------------------------------------------------------------------------- helpers


def test_evaluate_restores_training_mode(data: Dataset) -> None:
    model, _ = build_model(_cfg(), data)
    model.train()
    loss, acc = evaluate(model, data.val, max_value=data.max_value, batch_size=7)
    assert model.training
    assert math.isfinite(loss) and 0.0 <= acc <= 1.0
    model.eval()
    assert evaluate(model, data.val, max_value=data.max_value)[1] == pytest.approx(acc)
    assert not model.training


def test_resolve_device_cpu() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    expected = (
        "cuda"
        if torch.cuda.is_available()
        else "mps"
        if torch.backends.mps.is_available()
        else "cpu"
    )
    assert resolve_device("auto").type == expected, "auto: CUDA, then MPS, then the CPU"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_resolve_device_without_cuda() -> None:
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_equal_accuracy_goes_to_the_epoch_with_the_lower_loss() -> None:
    """A small validation split's accuracy plateaus while its loss still falls: the later,
    better-fitting epoch is the best one, and the plateau does not use up patience."""
    stopper = EarlyStopping(patience=2, min_delta=0.0, maximize=True)
    assert stopper.improved(0.9, 0.50)
    assert stopper.improved(0.9, 0.40), "same accuracy, lower loss: a new best"
    assert not stopper.improved(0.9, 0.45)
    assert stopper.improved(0.9, 0.30) and stopper.bad_epochs == 0
    assert not stopper.improved(0.85, 0.10), "a lower accuracy never wins on loss"
    assert not stopper.improved(0.9, None), "no tie-break: a tie is not an improvement"
    assert stopper.should_stop


# --------------------------------------------------------------------------- CUDA paths, on the CPU


def test_bf16_autocast_and_channels_last_train_and_keep_float32_weights(data: Dataset) -> None:
    """The mixed-precision, channels_last path CUDA takes by default, run on the CPU: it learns,
    its curves are finite, and its best weights are float32 that a plain contiguous fp32
    model reproduces (the champion is served that way)."""
    reg = Regularization(dropout=0.2, drop_path=0.1, aug_strength=0.5, mixup_alpha=0.2)
    cfg = _cfg(epochs=4, precision="bf16", memory_format="channels_last", regularization=reg)
    result = train(cfg, data)
    for stats in result.history:
        _check_stats(stats)
    assert result.best_value is not None and result.best_value > 1.0 / NUM_CLASSES + 0.2
    assert result.state_dict is not None and result.best_stats is not None
    assert all(v.dtype in (torch.float32, torch.int64) for v in result.state_dict.values())
    model = create_model(**result.model_kwargs)
    model.load_state_dict(result.state_dict)
    _, fp32_accuracy = evaluate(model, data.val, max_value=data.max_value)
    assert fp32_accuracy == pytest.approx(result.best_stats.val_accuracy, abs=0.05)


def test_compile_pays_once_a_worker_whatever_rates_the_trials_sample(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`train.compile`: the first trial compiles; later trials with other dropout and
    stochastic-depth rates reuse the graph. (Torch's dropout modules hold the rate as a float
    that dynamo specialises on: every trial recompiled, and past dynamo's recompile limit of 8
    the rest of a study silently ran uncompiled.)

    Whether a trial recompiles is dynamo's decision (its guards), whatever backend then turns
    the graph into code; the test uses `aot_eager` (dynamo + AOTAutograd, forward and backward)
    instead of inductor, whose C++ build of every kernel takes a minute on one CPU thread. The
    GPU checks (tests/search/test_cuda.py) compile with inductor."""
    import functools

    from torch._dynamo.utils import counters

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))

    data = load_dataset(
        DatasetConfig(name="synthetic", num_samples=200, image_size=16, channels=3, num_classes=4)
    )
    torch._dynamo.reset()
    compiled = []
    for dropout, drop_path in [(0.1, 0.0), (0.3, 0.1), (0.05, 0.2)]:
        reg = Regularization(dropout=dropout, drop_path=drop_path)
        result = train(_cfg(epochs=1, compile=True, regularization=reg), data)
        assert result.best_value is not None
        assert result.compile_seconds is not None
        compiled.append(counters["frames"]["ok"])
    assert compiled[0] >= 1
    assert compiled[1:] == [compiled[0]] * 2, f"graphs compiled after each trial: {compiled}"


def test_parameters_a_module_exempts_from_weight_decay_get_none() -> None:
    """timm's `no_weight_decay()` names position embeddings and class tokens: multi-dimensional,
    so the kernel rule alone would decay them."""
    from search.training.optim import _param_groups

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
            self.proj = nn.Linear(8, 8)

        def no_weight_decay(self) -> set[str]:
            return {"pos_embed"}

    model = nn.Sequential(Tokens(), nn.Linear(8, 2))
    decay, no_decay = _param_groups(model, 0.05)
    pos_embed = model[0].pos_embed
    assert any(p is pos_embed for p in no_decay["params"])
    assert not any(p is pos_embed for p in decay["params"])
    assert any(p is model[0].proj.weight for p in decay["params"])
