"""How long the baseline recipe (and a plain network) keep gaining from a longer budget: each
trained alone on a study's own training split at several `train.min_steps_per_epoch`, scored
on the study's test split (the official 10,000 images for Fashion-MNIST).

    python scripts/recipe_budget.py digits 8,18,36,72
    python scripts/recipe_budget.py fashion-1000 8,26,52 --plain

The first figure of each list is the default (at least 8 steps an epoch: 9 on the digits, 13
on Fashion-MNIST 1,000). Fashion-MNIST needs Debian's `dataset-fashion-mnist`. Prints one line
per run: set, model, steps an epoch, seed, best validation value, test accuracy, seconds. One
torch thread per process, so two can run side by side on 2 cores.
"""

from __future__ import annotations

import argparse
import itertools
import time
from dataclasses import replace

import torch

from search.config.space import space_of
from search.data.dataset import load_dataset
from search.study.studyfile import load_config
from search.training.auto import resolve
from search.training.network import build_model
from search.training.train import epoch_plan, train

SETS = {
    "digits": [],
    "fashion-1000": [
        "dataset.name=fashion-mnist",
        "dataset.root=/usr/share/datasets/fashion-mnist",
        "dataset.subset=1000",
    ],
}
OFF = ("weight_decay", "dropout", "aug_strength", "mixup_alpha", "label_smoothing",
       "cutmix_alpha", "cutout", "drop_path")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("set", choices=sorted(SETS))
    parser.add_argument("steps", help="min_steps_per_epoch values, comma-separated")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--plain", action="store_true", help="also every regularizer off")
    parser.add_argument("--batch", default="", help="batch sizes, comma-separated (default: auto)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="a config override")
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = load_config(None, overrides=[*SETS[args.set], *args.overrides])
    data = load_dataset(config.dataset)
    config = resolve(config, data).config
    space = space_of(config)
    recipe = {**space.fixed_values(), **(space.baseline_values() or {})}
    models = {"recipe": recipe}
    if args.plain:
        models["plain"] = {**recipe, **{k: 0.0 for k in OFF if k in recipe}}
    x = data.test.x.float() / data.max_value
    for label, values in models.items():
        for steps, batch in itertools.product(
            (int(s) for s in args.steps.split(",")),
            [int(b) for b in args.batch.split(",") if b] or [None],
        ):
            for seed in (int(s) for s in args.seeds.split(",")):
                cfg = space.resolve(values)
                update: dict[str, int] = {"min_steps_per_epoch": steps, "seed": seed}
                if batch is not None:
                    update["batch_size"] = batch
                cfg = replace(cfg, train=cfg.train.model_copy(update=update))
                per_epoch = epoch_plan(len(data.train), int(cfg.train.batch_size), steps)[1]
                started = time.perf_counter()
                result = train(cfg, data, keep="best")
                model, _ = build_model(cfg, data)
                model.load_state_dict(result.state_dict)
                model.eval()
                with torch.no_grad():
                    accuracy = (model(x).argmax(1) == data.test.y).float().mean().item()
                print(
                    f"{args.set} {label} batch={cfg.train.batch_size} "
                    f"steps/epoch={per_epoch} seed={seed} "
                    f"val={result.best_value:.3f} test={accuracy:.4f} "
                    f"({len(data.test.y)} images) {time.perf_counter() - started:.0f} s",
                    flush=True,
                )


if __name__ == "__main__":
    main()
