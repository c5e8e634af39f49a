"""`regsearch bench --only real_data`: the default study on data it was not tuned for.

scikit-learn's digits are written out as a user would bring them (`search.data.sample`):
28×28 grayscale MNIST idx files, 32×32 tinted RGB PNGs in an ImageFolder, and only 30 images
per class of the 28×28 set (tested on the other 1,497). Each runs `regsearch run` with every
default (as a new user would: only the data set named) in a scratch folder; the figure is the
champion's accuracy on the held-out test split and the wall time, beside the baseline recipe's
as the study itself trained it (its retrains and, like the champion, its refit on training +
validation) and the paired gain over it. About 25 minutes on 2 CPU cores; not part of a plain
`regsearch bench`.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from search.core.records import CONFIG_ATTR, TEST_ACCURACY_ATTR

__all__ = ["real_data"]


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
    from search.report.summary import best_summary
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
    # The recipe as the study trained it: compared with a refit champion, a recipe trained
    # apart (on the training split alone) would credit the search with the refit's gain.
    test = (best_summary(loaded) or {}).get("test") or {}
    recipe, gain = test.get("baseline") or {}, test.get("gain") or {}
    return {
        "test_accuracy": round(float(loaded.user_attrs[TEST_ACCURACY_ATTR]), 4),
        "recipe_test_accuracy": None
        if recipe.get("accuracy") is None
        else round(float(recipe["accuracy"]), 4),
        "test_gain_over_recipe": {
            k: round(float(gain[k]), 4) for k in ("mean", "low", "high") if gain.get(k) is not None
        },
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
    """Default studies on the 8×8 digits, 28×28 MNIST files, 32×32 RGB folder and 300 images,
    each with its champion's and its baseline recipe's test accuracy."""
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
    return out
