"""What a trial's optimizer does: AdamW or SGD with weight decay on kernels only, the
learning-rate schedules (warm-up, then cosine, constant or one-cycle) and the early-stopping
rule (patience, with the validation loss breaking ties of accuracy).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from search.config.schema import TrainConfig, TrialConfig

__all__ = ["EarlyStopping", "make_optimizer", "make_scheduler"]


def _no_decay_names(model: nn.Module) -> set[str]:
    """Parameters a module says take no weight decay (`no_weight_decay()`, timm's convention
    for position embeddings, class tokens and relative-position tables), by full name."""
    names: set[str] = set()
    for prefix, module in model.named_modules():
        method = getattr(module, "no_weight_decay", None)
        if callable(method):
            names |= {f"{prefix}.{n}" if prefix else str(n) for n in method()}
    return names


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weight matrices and kernels only: never on biases or normalisation
    parameters (all of which are 1-D), nor on those a module's `no_weight_decay()` names."""
    skip = _no_decay_names(model)

    def decays(name: str, p: nn.Parameter) -> bool:
        named = name in skip or any(name.startswith(f"{s}.") for s in skip)
        return p.ndim > 1 and not named

    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in params if decays(n, p)]
    no_decay = [p for n, p in params if not decays(n, p)]
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


_OPTIMIZERS: dict[str, Callable[[list[dict[str, Any]], TrainConfig], torch.optim.Optimizer]] = {
    "adamw": lambda groups, t: torch.optim.AdamW(groups, lr=t.lr, betas=(t.momentum, 0.999)),
    # Nesterov needs a momentum: torch refuses it at 0 (a searched or fixed 0 failed every trial).
    "sgd": lambda groups, t: torch.optim.SGD(
        groups, lr=t.lr, momentum=t.momentum, nesterov=t.momentum > 0
    ),
}


def make_optimizer(model: nn.Module, cfg: TrialConfig) -> torch.optim.Optimizer:
    groups = _param_groups(model, cfg.regularization.weight_decay)
    return _OPTIMIZERS[cfg.train.optimizer](groups, cfg.train)


def make_scheduler(
    optimizer: torch.optim.Optimizer, t: TrainConfig, total_steps: int, warmup_steps: int
) -> Any:
    """`train.schedule`'s learning-rate schedule, stepped once per optimizer step."""
    return _SCHEDULES[t.schedule](optimizer, total_steps, warmup_steps, t.lr)


def _warmup_cosine(total: int, warmup: int) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def _warmup_constant(total: int, warmup: int) -> Callable[[int], float]:
    return lambda step: (step + 1) / warmup if step < warmup else 1.0


_SCHEDULES: dict[str, Callable[[torch.optim.Optimizer, int, int, float], Any]] = {
    "cosine": lambda opt, total, warmup, lr: torch.optim.lr_scheduler.LambdaLR(
        opt, _warmup_cosine(total, warmup)
    ),
    "constant": lambda opt, total, warmup, lr: torch.optim.lr_scheduler.LambdaLR(
        opt, _warmup_constant(total, warmup)
    ),
    # torch's OneCycleLR: its own ramp from lr/25 over the warm-up (at least 5 % of the
    # steps), then a cosine to lr/25e4. `cycle_momentum` off: it would overwrite AdamW's β₁ and
    # SGD's momentum (0.95 → 0.85 → 0.95), and `train.momentum` would do nothing.
    "onecycle": lambda opt, total, warmup, lr: torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=lr,
        total_steps=total,
        pct_start=min(max(warmup / total, 0.05), 0.95),
        cycle_momentum=False,
    ),
}


class EarlyStopping:
    """The usual patience rule: stop after `patience` epochs without an improvement of more
    than `min_delta` in the monitored value.

    An optional tie-break (lower is better: the validation loss when the metric is accuracy)
    decides between epochs of equal value. On a small validation split accuracy moves in
    steps of 1/N and stalls for many epochs while the model still improves; without it the
    earliest, least-trained epoch of a plateau would win and patience would end the run."""

    def __init__(self, *, patience: int | None, min_delta: float, maximize: bool) -> None:
        self.patience, self.min_delta, self.maximize = patience, min_delta, maximize
        self.best: float | None = None
        self.best_tiebreak = math.inf
        self.bad_epochs = 0

    def improved(self, value: float, tiebreak: float | None = None) -> bool:
        """Record `value` (and its tie-break); True when it is a new best."""
        better = self.best is None or (
            value > self.best + self.min_delta
            if self.maximize
            else value < self.best - self.min_delta
        )
        tied = self.best is not None and value == self.best
        if better or (tied and tiebreak is not None and tiebreak < self.best_tiebreak):
            self.best, self.bad_epochs = value, 0
            self.best_tiebreak = math.inf if tiebreak is None else tiebreak
            return True
        self.bad_epochs += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.bad_epochs >= self.patience
