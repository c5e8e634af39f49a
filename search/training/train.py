"""The training loop of one trial. It knows nothing of Optuna or MLflow: once per epoch it
calls `on_epoch(stats)`, which may return a stop reason (the objective uses that to prune).

Data stays on the device as uint8; each step slices a batch with a device-side permutation,
converts it to float in [0, 1] and augments it in batch (`search.training.augment`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from search.config.schema import TrainConfig, TrialConfig
from search.data.dataset import Dataset, ImageSet
from search.training.augment import BatchTransform
from search.training.auto import AUTO, batch_size_for, epoch_plan, steps_per_pass
from search.training.evaluation import autocast, batch, evaluate, evaluate_full, uses_channels_last
from search.training.network import build_model
from search.training.optim import EarlyStopping, make_optimizer, make_scheduler

__all__ = [
    "COMPILE_SECONDS",
    "PLANNED_EPOCHS",
    "EarlyStopping",
    "EpochStats",
    "Epochs",
    "Keep",
    "TrainResult",
    "Trainer",
    "batches_of",
    "build_model",
    "epoch_plan",
    "make_optimizer",
    "resolve_device",
    "run_epochs",
    "train",
    "train_one_epoch",
    "with_passes_of",
]

# Why a trial stopped; also the `stop_reason` user attribute of its Optuna trial.
MAX_EPOCHS, EARLY_STOPPING, NONFINITE = "max_epochs", "early_stopping", "nonfinite"
PLANNED_EPOCHS = "planned_epochs"  # `stop_after` epochs done (a refit)
# `TrainResult.compile_seconds`, as a trial's user attribute and MLflow metric.
COMPILE_SECONDS = "compile_seconds"


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    train_loss: float  # on a clean (un-augmented) subset of the training split
    train_accuracy: float  # idem: with val_accuracy, the overfitting gap
    val_loss: float
    val_accuracy: float
    fit_loss: float  # mean loss of the augmented/mixed batches the optimizer saw
    lr: float
    epoch_seconds: float
    val_ece: float = math.nan  # expected calibration error on the validation split (15 bins)

    def metrics(self) -> dict[str, float]:
        return {k: v for k, v in asdict(self).items() if k != "epoch"}


@dataclass
class TrainResult:
    stop_reason: str
    epochs_trained: int
    best_epoch: int | None = None
    best_value: float | None = None
    best_stats: EpochStats | None = None
    history: list[EpochStats] = field(default_factory=list)
    state_dict: dict[str, torch.Tensor] | None = None  # best-epoch weights, on the CPU
    model_kwargs: dict[str, Any] = field(default_factory=dict)  # create_model(**model_kwargs)
    # With `train.compile`: seconds of the first optimizer step, where `torch.compile` traces
    # and generates code. A worker pays it once: later trials of the same architecture and
    # batch shape reuse the compiled graph, and their first step is an ordinary one.
    compile_seconds: float | None = None


EpochCallback = Callable[[EpochStats], str | None]
# Which epoch's weights a run returns: the best by the objective metric on the validation
# split, or the last (a refit: its validation images are training images).
Keep = Literal["best", "last"]


class Trainer(Protocol):
    """What trains a trial for the objective: `train`, or a replay of recorded curves."""

    def __call__(
        self,
        cfg: TrialConfig,
        data: Dataset,
        *,
        device: torch.device | None = None,
        on_epoch: EpochCallback | None = None,
    ) -> TrainResult: ...


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA, then MPS, then CPU."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but CUDA is not available")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise RuntimeError(f"device {name!r} requested but MPS is not available")
    return device


def _batches(
    n: int, batch_size: int, device: torch.device, passes: int = 1
) -> Iterator[torch.Tensor]:
    """`passes` shuffled passes over `n` images in batches of `batch_size`."""
    for _ in range(passes):
        perm = torch.randperm(n, device=device)
        for start in range(0, n, batch_size):
            idx = perm[start : start + batch_size]
            if idx.numel() > 1 or n == 1:  # a batch of one breaks BatchNorm
                yield idx


def batches_of(t: TrainConfig, n_train: int) -> tuple[int, int, int]:
    """(batch size, passes an epoch, optimizer steps an epoch) of `t` on `n_train` training
    images: `train.batch_size` (`auto`: `batch_size_for`) and `epoch_plan`."""
    batch_size = batch_size_for(n_train) if t.batch_size == AUTO else int(t.batch_size)
    return (batch_size, *epoch_plan(n_train, batch_size, t.min_steps_per_epoch))


def with_passes_of(t: TrainConfig, n_train: int, n_refit: int) -> TrainConfig:
    """`t` for a refit on `n_refit` images (training + validation) that keeps the batch size
    and the passes an epoch `t` has on the `n_train` training images it refits: by
    `min_steps_per_epoch` alone the larger split would get fewer passes (6,000 Fashion-MNIST
    images: 1 pass of 47 steps where 4,800 had 2 of 38), and the refit less training than the
    configuration it stands for."""
    batch_size, passes, _ = batches_of(t, n_train)
    steps = passes * steps_per_pass(n_refit, batch_size)
    return t.model_copy(update={"batch_size": batch_size, "min_steps_per_epoch": steps})


@dataclass
class _Loop:
    """What a trial's optimizer steps use, built once per trial (`_loop`)."""

    model: nn.Module  # the weights, in eval for the epoch-end metrics
    step_model: nn.Module  # the same, compiled with `train.compile`
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    transform: BatchTransform
    batch_size: int
    passes: int  # passes over the training split an epoch (several for a tiny split)
    smoothing: float
    channels_last: bool
    train: TrainConfig
    epoch_lr: float = math.nan  # the mean learning rate of the epoch's steps (`lr` metric)


def _loop(cfg: TrialConfig, data: Dataset, device: torch.device) -> tuple[_Loop, dict[str, Any]]:
    """The model on `device` (channels_last and compiled as configured), its optimizer and
    learning-rate schedule over all the trial's steps, and the batch augmentation; with the
    kwargs that rebuild the model."""
    t = cfg.train
    torch.manual_seed(t.seed)
    model, model_kwargs = build_model(cfg, data)
    channels_last = uses_channels_last(device, t.memory_format)
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model: nn.Module = torch.compile(model) if t.compile else model  # type: ignore[assignment]
    optimizer = make_optimizer(model, cfg)
    n_train = len(data.train)
    batch_size, passes, steps_per_epoch = batches_of(t, n_train)
    total_steps = t.epochs * steps_per_epoch
    warmup_steps = min(total_steps, max(1, round(t.warmup_epochs * steps_per_epoch)))
    transform = BatchTransform(
        cfg.regularization,
        num_classes=data.num_classes,
        allow_flip=data.allow_flip,
        colour=data.shape[0] == 3,
    )
    loop = _Loop(
        model=model,
        step_model=step_model,
        optimizer=optimizer,
        scheduler=make_scheduler(optimizer, t, total_steps, warmup_steps),
        transform=transform,
        batch_size=batch_size,
        passes=passes,
        smoothing=cfg.regularization.label_smoothing,
        channels_last=channels_last,
        train=t,
    )
    return loop, model_kwargs


def train_one_epoch(loop: _Loop, images: ImageSet, max_value: float, result: TrainResult) -> float:
    """One epoch of optimizer steps on augmented batches of `images`; the mean loss of those
    batches (not finite: the run diverged). Nothing syncs with the host inside the loop but,
    with `train.compile`, the trial's first step, timed into `result.compile_seconds`."""
    device = images.x.device
    loop.model.train()
    loss_sum = torch.zeros((), device=device)
    seen = 0
    lr_sum, steps = 0.0, 0
    for idx in _batches(len(images), loop.batch_size, device, loop.passes):
        first_step = loop.train.compile and result.compile_seconds is None
        step_started = time.perf_counter() if first_step else 0.0
        x, targets = loop.transform(*batch(images, idx, max_value, loop.channels_last))
        with autocast(device, loop.train.precision):
            logits = loop.step_model(x)
        loss = F.cross_entropy(logits.float(), targets, label_smoothing=loop.smoothing)
        loop.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr_sum += loop.optimizer.param_groups[0]["lr"]
        steps += 1
        loop.optimizer.step()
        loop.scheduler.step()
        loss_sum += loss.detach() * idx.numel()
        seen += idx.numel()
        if first_step:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            result.compile_seconds = time.perf_counter() - step_started
    loop.epoch_lr = lr_sum / max(1, steps)
    return loss_sum.item() / max(1, seen)


def _epoch_stats(
    loop: _Loop,
    clean_train: ImageSet,
    data: Dataset,
    *,
    epoch: int,
    fit_loss: float,
    started: float,
) -> EpochStats:
    """The epoch-end metrics: loss and accuracy on the clean training subset, then loss,
    accuracy and calibration on the validation split."""
    t = loop.train
    options: dict[str, Any] = {
        "max_value": data.max_value,
        "batch_size": t.eval_batch_size,
        "precision": t.precision,
        "memory_format": t.memory_format,
    }
    train_loss, train_acc = evaluate(loop.model, clean_train, **options)
    val = evaluate_full(loop.model, data.val, **options)
    return EpochStats(
        epoch=epoch,
        train_loss=train_loss,
        train_accuracy=train_acc,
        val_loss=val.loss,
        val_accuracy=val.accuracy,
        fit_loss=fit_loss,
        lr=loop.epoch_lr,
        epoch_seconds=time.perf_counter() - started,
        val_ece=val.ece,
    )


class Epochs:
    """A trial's epochs, each trained when the next is asked for: a consumer that stops asking
    stops training. `train` is one consumer; `regsearch bench --only pruning` replays many
    pruners over the same curves with another. A non-finite fit loss ends the run with a last
    `EpochStats` whose metrics are NaN (no epoch-end evaluation is spent on a diverged model).
    """

    def __init__(self, cfg: TrialConfig, data: Dataset, *, device: torch.device | None = None):
        t = cfg.train
        self.cfg, self.data = cfg, data
        self.device = device or data.train.x.device
        self.loop, model_kwargs = _loop(cfg, data, self.device)
        # A fixed clean subset of the training split, for the train-vs-val gap.
        g = torch.Generator().manual_seed(t.seed)
        subset = torch.randperm(len(data.train), generator=g)[: t.train_eval_size]
        subset = subset.to(self.device)
        self.clean_train = ImageSet(data.train.x[subset], data.train.y[subset])
        self.result = TrainResult(
            stop_reason=MAX_EPOCHS, epochs_trained=0, model_kwargs=model_kwargs
        )

    @property
    def model(self) -> nn.Module:
        return self.loop.model

    def __iter__(self) -> Iterator[EpochStats]:
        data = self.data
        for epoch in range(1, self.cfg.train.epochs + 1):
            started = time.perf_counter()
            fit_loss = train_one_epoch(self.loop, data.train, data.max_value, self.result)
            if not math.isfinite(fit_loss):
                nan = math.nan
                yield EpochStats(epoch, nan, nan, nan, nan, fit_loss, nan, nan)
                return
            yield _epoch_stats(
                self.loop, self.clean_train, data, epoch=epoch, fit_loss=fit_loss, started=started
            )


def train(
    cfg: TrialConfig,
    data: Dataset,
    *,
    device: torch.device | None = None,
    on_epoch: EpochCallback | None = None,
    stop_after: int | None = None,
    keep: Keep = "best",
) -> TrainResult:
    """Train one model; return the best epoch's value and weights (by the objective metric).

    `data` should already live on `device` (`Dataset.to`), so the loop never copies images
    from the host. `on_epoch` may return a stop reason (e.g. "pruned") to end the run.
    `stop_after` and `keep` as in `run_epochs` (a refit: `search.study.refit`).
    """
    run = Epochs(cfg, data, device=device)
    return run_epochs(
        cfg,
        run,
        result=run.result,
        model=run.model,
        on_epoch=on_epoch,
        stop_after=stop_after,
        keep=keep,
    )


def run_epochs(
    cfg: TrialConfig,
    epochs: Iterable[EpochStats],
    *,
    result: TrainResult,
    model: nn.Module | None = None,
    on_epoch: EpochCallback | None = None,
    stop_after: int | None = None,
    keep: Keep = "best",
) -> TrainResult:
    """Consume `epochs` as a trial does: keep the best epoch (with `model`'s weights at it),
    call `on_epoch`, stop on its reason, on patience or on a non-finite value.

    `stop_after`: end after that many epochs (stop reason `planned_epochs`), the learning-rate
    schedule still the one over `train.epochs`. `keep="last"`: the last epoch's value and
    weights, whatever the validation split says, and no early stopping (a refit, whose
    validation images are training images)."""
    if keep == "last":
        return _run_to_last(
            cfg, epochs, result=result, model=model, on_epoch=on_epoch, stop=stop_after
        )
    metric = cfg.objective.metric
    stopper = EarlyStopping(
        patience=cfg.early_stopping.patience,
        min_delta=cfg.early_stopping.min_delta,
        maximize=cfg.objective.direction == "maximize",
    )
    for stats in epochs:
        result.epochs_trained = stats.epoch
        if not math.isfinite(stats.fit_loss):
            result.stop_reason = NONFINITE
            break
        result.history.append(stats)
        value = getattr(stats, metric)
        if not math.isfinite(value):
            result.stop_reason = NONFINITE
            break
        tiebreak = stats.val_loss if metric == "val_accuracy" else None
        if stopper.improved(value, tiebreak):
            result.best_epoch, result.best_value, result.best_stats = stats.epoch, value, stats
            if model is not None:
                result.state_dict = {
                    k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
                }
        reason = on_epoch(stats) if on_epoch is not None else None
        if reason:
            result.stop_reason = reason
            break
        if stopper.should_stop and stats.epoch < cfg.train.epochs:  # the last epoch: max
            result.stop_reason = EARLY_STOPPING
            break
        if stop_after is not None and stats.epoch >= stop_after:
            result.stop_reason = PLANNED_EPOCHS
            break
    return result


def _run_to_last(
    cfg: TrialConfig,
    epochs: Iterable[EpochStats],
    *,
    result: TrainResult,
    model: nn.Module | None,
    on_epoch: EpochCallback | None,
    stop: int | None,
) -> TrainResult:
    """`run_epochs` with `keep="last"`: each epoch is the one kept until the next comes; the
    weights are copied once, after the last."""
    metric = cfg.objective.metric
    for stats in epochs:
        result.epochs_trained = stats.epoch
        value = getattr(stats, metric)
        if not (math.isfinite(stats.fit_loss) and math.isfinite(value)):
            result.stop_reason = NONFINITE
            result.best_epoch = result.best_value = result.best_stats = None
            return result
        result.history.append(stats)
        result.best_epoch, result.best_value, result.best_stats = stats.epoch, value, stats
        reason = on_epoch(stats) if on_epoch is not None else None
        if reason:
            result.stop_reason = reason
            break
        if stop is not None and stats.epoch >= stop:
            result.stop_reason = PLANNED_EPOCHS
            break
    if model is not None and result.best_stats is not None:
        result.state_dict = {
            k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()
        }
    return result
