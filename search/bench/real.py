"""`regsearch bench --only real_data`: the default study on data it was not tuned for.

scikit-learn's digits are written out as a user would bring them (`search.data.sample`):
28×28 grayscale MNIST idx files, 32×32 tinted RGB PNGs in an ImageFolder, and only 30 images
per class of the 28×28 set (tested on the other 1,497). Each runs `regsearch run` with every
default (as a new user would: only the data set named) in a scratch folder; the figure is the
champion's accuracy on the held-out test split and the wall time. The small set is also run
with the baseline recipe (three training seeds, best on validation, like a study picks)
so the search's gain over it shows. About 15 minutes on 2 CPU cores; not part of a plain
`regsearch bench`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from search.core.records import CONFIG_ATTR, TEST_ACCURACY_ATTR

__all__ = ["BASELINE_RECIPE", "real_data"]

# The baseline recipe: AdamW weight decay 0.01, dropout 0.5, medium augmentation,
# MixUp 0.2, label smoothing 0.1.
BASELINE_RECIPE = (
    "space={weight_decay: 0.01, dropout: 0.5, aug_strength: 0.5, mixup_alpha: 0.2, "
    "label_smoothing: 0.1, seed: {type: categorical, choices: [0, 1, 2]}}"
)


def _write_sets(root: Path) -> dict[str, list[str]]:
    """The data sets on disk and the `--set` items that point a study at each."""
    from search.data.sample import digits_images, write_imagefolder, write_mnist_idx

    x, y = digits_images(28)
    write_mnist_idx(root / "mnist28", (x[:1437], y[:1437]), (x[1437:], y[1437:]))
    few = np.concatenate([np.flatnonzero(y == c)[:30] for c in range(10)])
    rest = np.setdiff1d(np.arange(len(y)), few)
    write_mnist_idx(root / "small28", (x[few], y[few]), (x[rest], y[rest]))
    rgb, labels = digits_images(32, rgb=True)
    write_imagefolder(root / "rgb32", rgb, labels)
    return {
        "digits8": [],
        "mnist28": ["dataset.name=mnist", f"dataset.root={root / 'mnist28'}"],
        "rgb32": ["dataset.name=imagefolder", f"dataset.root={root / 'rgb32'}"],
        "small28": ["dataset.name=mnist", f"dataset.root={root / 'small28'}"],
    }


def _run(cwd: Path, study: str, sets: list[str]) -> dict[str, Any]:
    import optuna

    from search.bench.runs import run_cli
    from search.study.studies import best_trial

    args = ["--study", study]
    for item in sets:
        args += ["--set", item]
    try:
        seconds = run_cli(cwd, args)
    except RuntimeError as exc:
        return {"error": str(exc).splitlines()[-1]}
    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{cwd}/studies/regsearch.db")
    best = best_trial(loaded)
    assert best is not None
    config = loaded.user_attrs.get(CONFIG_ATTR, {})
    return {
        "test_accuracy": round(float(loaded.user_attrs[TEST_ACCURACY_ATTR]), 4),
        "val_accuracy": round(float(best.value or 0.0), 4),
        "seconds": round(seconds, 1),
        "trials": len(loaded.trials),
        "model": config.get("model", {}).get("name"),
        "batch_size": config.get("train", {}).get("batch_size"),
        "channels": config.get("dataset", {}).get("channels"),
        "best_params": {
            k: round(v, 4) if isinstance(v, float) else v for k, v in best.params.items()
        },
    }


def real_data(*, names: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Default studies on the 8×8 digits, 28×28 MNIST files, 32×32 RGB folder and 300 images;
    and the hand-set recipe on the 300."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sets = _write_sets(root / "data")
        for name, items in sets.items():
            if names and name not in names:
                continue
            out[name] = _run(root, name, items)
        if not names or "small28" in names:
            baseline = _run(
                root,
                "small28-recipe",
                [*sets["small28"], BASELINE_RECIPE, "search.sampler=grid", "search.n_trials=3"],
            )
            out["small28_recipe"] = baseline
            if "test_accuracy" in baseline and "test_accuracy" in out.get("small28", {}):
                out["small28_gain_over_recipe"] = round(
                    out["small28"]["test_accuracy"] - baseline["test_accuracy"], 4
                )
    return out
