"""`auto` settings chosen from the data: the model, the batch size, the channels and the image
size.

A study stores the concrete choice (`resolve`), so every worker and every resume trains the
same network, and the choice is printed and logged where the user looks. The rules are small
on purpose; docs/study-files.md (`auto`: models and budgets that fit the data) says what they give.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from search.config.schema import StudyConfig
    from search.data.dataset import Dataset

__all__ = ["AutoChoice", "batch_size_for", "epoch_plan", "model_for", "resolve", "steps_per_pass"]

AUTO = "auto"
MIN_BATCH, MAX_BATCH = 16, 128
# Colour images of CIFAR scale get airbench (the fast CIFAR net); everything else small-cnn,
# which adds stages with the image size.
_LARGE_SET = 20_000


def batch_size_for(n_train: int) -> int:
    """A power of two giving about 8 or more optimizer steps an epoch, between 16 and 128: the
    default digits split (1,078 images) keeps 128; 180 images get 16 (12 steps, not 2)."""
    target = max(1, n_train // 8)
    size = 1 << (target.bit_length() - 1)  # the largest power of two <= target
    return max(MIN_BATCH, min(MAX_BATCH, size))


def model_for(shape: tuple[int, int, int], n_train: int) -> tuple[str, int | None, str]:
    """(model name, width or None for the model's default, why) for images of `shape`
    (C, H, W) and a training split of `n_train` images."""
    channels, height, width = shape
    side = max(height, width)
    if channels == 3 and 24 <= side <= 64 and n_train >= _LARGE_SET:
        return "airbench", None, f"colour {side} px, {n_train:,} training images"
    wide = n_train >= _LARGE_SET
    why = f"{side} px, {channels} channel{'s' if channels > 1 else ''}, {n_train:,} training images"
    return "small-cnn", (32 if wide else None), why


def steps_per_pass(n: int, batch_size: int) -> int:
    """The batches `search.training.train` yields in one pass over `n` images: a last batch of
    one image is dropped (it breaks BatchNorm) unless it is the only one."""
    full, rest = divmod(n, batch_size)
    return max(1, full + (rest > 1 or (rest == 1 and full == 0)))


def epoch_plan(n_train: int, batch_size: int, min_steps: int) -> tuple[int, int]:
    """(passes over the training split per epoch, optimizer steps per epoch): enough passes
    that an epoch holds at least `min_steps` steps. The learning-rate schedule is planned over
    these steps, so they are the steps taken (`steps_per_pass`)."""
    per_pass = steps_per_pass(n_train, batch_size)
    passes = max(1, -(-min_steps // per_pass))
    return passes, passes * per_pass


def _plan(n_train: int, batch_size: int, config: StudyConfig) -> str:
    """What an epoch holds at `batch_size`: "9 steps a pass over 1,077 images, 5 passes an
    epoch" (`train.min_steps_per_epoch`), or "47 steps an epoch on 6,000 images"."""
    passes, steps = epoch_plan(n_train, batch_size, config.train.min_steps_per_epoch)
    if passes == 1:
        return f"{steps} steps an epoch on {n_train:,} images"
    return f"{steps // passes} steps a pass over {n_train:,} images, {passes} passes an epoch"


@dataclass(frozen=True)
class AutoChoice:
    config: StudyConfig  # with every `auto` replaced by its value
    notes: tuple[str, ...]  # one line per choice (and per loader note), for console and MLflow
    # Model-side regularizers the network cannot take, left out of the search: (name, why).
    left_out: tuple[tuple[str, str], ...] = ()

    @property
    def summary(self) -> str:
        return "; ".join(self.notes)


def resolve(config: StudyConfig, data: Dataset) -> AutoChoice:
    """`config` with `model.name`, `train.batch_size`, `dataset.channels` and
    `dataset.image_size` made concrete for `data` (already loaded with the configured channels
    and size)."""
    notes: list[str] = []
    n_train = len(data.train)
    update_model: dict[str, Any] = {}
    update_train: dict[str, Any] = {}
    update_data: dict[str, Any] = {}
    if config.model.name == AUTO:
        # By the whole training split: the studies of a size sweep (`train_fraction`) compare
        # one network on more and more of the data, not small-cnn on a quarter, airbench on all.
        name, width, why = model_for(data.shape, data.full_train or n_train)
        if data.full_train:
            why += f" in the whole training split ({n_train:,} at this fraction)"
        update_model["name"] = name
        if config.model.width is None and width is not None:
            update_model["width"] = width
        shown = name + (f" width {width}" if "width" in update_model else "")
        notes.append(f"model {shown} (auto: {why})")
    if config.train.batch_size == AUTO:
        size = batch_size_for(n_train)
        update_train["batch_size"] = size
        notes.append(f"batch size {size} (auto: {_plan(n_train, size, config)})")
    if config.dataset.channels == AUTO:
        update_data["channels"] = data.shape[0]
        notes.append(f"channels {data.shape[0]} (auto: {data.channel_note})")
    if config.dataset.image_size == AUTO:
        update_data["image_size"] = data.shape[1]
        notes.append(f"image size {data.shape[1]} (auto: {data.size_note})")
    notes.extend(data.notes)  # what the loader did at that size (imagefolder: the decode)
    resolved = config.model_copy(
        update={
            "model": config.model.model_copy(update=update_model),
            "train": config.train.model_copy(update=update_train),
            "dataset": config.dataset.model_copy(update=update_data),
        }
    )
    return AutoChoice(resolved, tuple(notes))
