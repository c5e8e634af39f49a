"""`regsearch bench --only fashion`: the default study on a public benchmark, Fashion-MNIST,
as a user with 1,000 or 6,000 labelled images would run it.

Each size is a stratified subset of the official 60,000 training images (`dataset.subset`);
the study splits its own validation images out of it, and every model is tested once on the
official 10,000 test images. Three models per size, each from `regsearch run` with only the
data set named (a fresh process, a scratch folder):

- the champion of the default study (search, confirm phase, ablation, refit);
- the baseline recipe, trained the same way (the study's own baseline arm);
- a plain network: the same model with every regularizer off, trained the same way (a
  study with nothing to search: its confirm phase retrains it and picks the best seed).

Test accuracies carry 95% intervals (Wilson, 10,000 images); the differences a paired
bootstrap over the test images. Beside them, published full-data (60,000 images) results
from the data set's own benchmark table. About 20 minutes at 1,000 images and an hour at
6,000 on 2 CPU cores; the full 60,000 is a GPU command (`--sizes 60000`).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["PUBLISHED", "fashion", "fashion_root", "selection", "set_items", "wilson"]

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
SIZES = (1000, 6000)
# Test accuracy with all 60,000 training images, from the benchmark table of
# github.com/zalandoresearch/fashion-mnist (README, "Benchmark"): reference points, not
# contenders (other models, other budgets, all the data).
PUBLISHED: dict[str, float] = {
    "human, crowd-sourced, no fashion expertise": 0.835,
    "2 Conv + pooling, no augmentation (Keras)": 0.876,
    "MLP 256-128-100": 0.883,
    "2 Conv + pooling + BN": 0.934,
    "ResNet18, flips, translation, rotation": 0.949,
    "WRN-28-10 + Random Erasing": 0.963,
}
# A plain network: every regularizer off, and nothing to search (the baseline recipe is the
# same plain configuration, so the confirm phase retrains just it).
PLAIN = [
    "space={weight_decay: 0.0, dropout: 0.0, aug_strength: 0.0, mixup_alpha: 0.0, "
    "label_smoothing: 0.0, cutmix_alpha: 0.0, cutout: 0.0, drop_path: 0.0}",
    "baseline={}",
    "search.n_trials=1",
]


def fashion_root() -> Path | None:
    """Where the four official idx files lie (`$REGSEARCH_FASHION_ROOT`, else Debian's
    folder), or None when they are not there."""
    root = Path(os.environ.get("REGSEARCH_FASHION_ROOT") or DEFAULT_ROOT)
    wanted = ("train-images-idx3-ubyte", "t10k-images-idx3-ubyte")
    found = all((root / f).exists() or (root / f"{f}.gz").exists() for f in wanted)
    return root if found else None


def wilson(correct: int, n: int) -> tuple[float, float]:
    """The 95% Wilson interval of an accuracy of `correct` out of `n`."""
    z = 1.959963984540054
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def _run(cwd: Path, study: str, items: Sequence[str]) -> dict[str, Any]:
    """`regsearch run --study STUDY --set ITEM …` in `cwd`: its seconds, or its last line."""
    from search.bench.runs import run_cli

    args = ["--study", study]
    for item in items:
        args += ["--set", item]
    try:
        return {"seconds": round(run_cli(cwd, args), 1)}
    except RuntimeError as exc:
        return {"error": str(exc).splitlines()[-1]}


def _outcome(cwd: Path, study: str) -> dict[str, Any]:
    """What the study says: its verdict summary (`best --json`) and its models' per-image
    correctness on the test split (the champion's and the baseline recipe's)."""
    import optuna

    from search.report.summary import best_summary

    loaded = optuna.load_study(study_name=study, storage=f"sqlite:///{cwd}/studies/regsearch.db")
    best = best_summary(loaded)
    assert best is not None and best.get("test") is not None, f"{study}: no test evaluation"
    return best


def _correct(cwd: Path, study: str, data: Any) -> Any:
    """The registered champion of `study`, loaded as a user would (`models:/<study>@champion`:
    the exported program, already in eval mode), on the test images: a boolean per image."""
    import torch

    from search.api import load_champion

    model = load_champion(study, tracking_uri=f"sqlite:///{cwd}/mlruns/mlflow.db")
    correct = []
    with torch.no_grad():
        for start in range(0, len(data.test), 1000):
            x = data.test.x[start : start + 1000].float() / data.max_value
            correct.append(model(x).argmax(1) == data.test.y[start : start + 1000])
    return torch.cat(correct)


def _size(work: Path, root: Path, size: int) -> dict[str, Any]:
    from search.config.schema import DatasetConfig
    from search.core.stats import paired_bootstrap
    from search.data.dataset import load_dataset

    data = ["dataset.name=fashion-mnist", f"dataset.root={root}", f"dataset.subset={size}"]
    out: dict[str, Any] = {"images": size}
    searched, plain = f"fashion-{size}", f"fashion-{size}-plain"
    for name, items in ((searched, data), (plain, [*data, *PLAIN])):
        cwd = work / name
        cwd.mkdir(parents=True)
        ran = _run(cwd, name, items)
        if "error" in ran:
            return {**out, "error": f"{name}: {ran['error']}"}
        out[name] = ran
    best = _outcome(work / searched, searched)
    test = best["test"]
    images = int(test["images"])
    dataset = load_dataset(DatasetConfig(name="fashion-mnist", root=root, subset=size))
    champion = _correct(work / searched, searched, dataset)
    flat = _correct(work / plain, plain, dataset)

    def accuracy(value: float) -> dict[str, Any]:
        low, high = wilson(round(value * images), images)
        return {"accuracy": round(value, 4), "low": round(low, 4), "high": round(high, 4)}

    out["champion"] = accuracy(test["champion"]["accuracy"])
    out["champion"]["name"] = best["champion_name"]
    out["recipe"] = accuracy(test.get("baseline", test["champion"])["accuracy"])
    out["plain"] = accuracy(float(flat.sum()) / len(flat))
    gain, low, high = paired_bootstrap(champion.tolist(), flat.tolist())
    out["gain_over_plain"] = {"mean": round(gain, 4), "low": round(low, 4), "high": round(high, 4)}
    g = test.get("gain") or {"mean": 0.0, "low": 0.0, "high": 0.0}
    out["gain_over_recipe"] = {k: round(float(g[k]), 4) for k in ("mean", "low", "high")}
    assert abs(float(champion.sum()) / len(champion) - test["champion"]["accuracy"]) < 1e-9, (
        "the registered champion reproduces the study's test accuracy"
    )
    refit = test.get("refit_gain") or test.get("before_refit")
    if refit is not None:
        out["refit"] = refit
    verdict = best.get("champion") or {}
    out["retrains"] = verdict.get("retrains")
    out["retrains_without_racing"] = verdict.get("retrains_without_racing")
    out["seconds"] = out[searched]["seconds"]
    out["plain_seconds"] = out[plain]["seconds"]
    return out


def fashion(*, sizes: Sequence[int] = SIZES, work: Path | None = None) -> dict[str, Any]:
    """The three models at each of `sizes`, and the published reference points; a one-line
    `skipped` where the data set is not installed. `work`: keep the studies there (else a
    temporary folder)."""
    root = fashion_root()
    if root is None:
        return {
            "skipped": "Fashion-MNIST is not installed: apt-get install dataset-fashion-mnist, "
            "or set REGSEARCH_FASHION_ROOT to a folder with its four idx files"
        }
    out: dict[str, Any] = {"root": str(root), "published_full_data": PUBLISHED}
    with tempfile.TemporaryDirectory() as tmp:
        for size in sizes:
            out[str(size)] = _size(work or Path(tmp), root, size)
    return out


def set_items(items: Sequence[str]) -> list[str] | None:
    """A bench set's `--set` items with `ROOT` made the Fashion-MNIST folder; None when the
    set needs it and it is not installed."""
    if not any("ROOT" in i for i in items):
        return list(items)
    root = fashion_root()
    return None if root is None else [i.replace("ROOT", str(root)) for i in items]


# Today's confirm phase before small-data selection: one split, every seed, no refit.
BEFORE = [
    "search.confirm.racing=false",
    "search.confirm.resplit_below=0",
    "search.confirm.refit=false",
]
SELECTION_SETS: dict[str, list[str]] = {
    "digits-300": ["dataset.subset=300"],
    "fashion-1000": ["dataset.name=fashion-mnist", "dataset.root=ROOT", "dataset.subset=1000"],
}


def selection(
    *, sets: Sequence[str] = ("digits-300",), split_seeds: Sequence[int] = (0, 1, 2, 3, 4)
) -> dict[str, Any]:
    """How often the confirmed champion beats the baseline recipe on the test split, with
    the confirm phase before small-data selection (one split, every seed, no refit) and
    after it (a split per seed, racing, refit): the default study on each set, once per
    `split_seed` (another draw of the user's labelled images and of their split)."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in sets:
            items = set_items(SELECTION_SETS[name])
            if items is None:
                out[name] = {"skipped": "Fashion-MNIST is not installed"}
                continue
            rows: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
            for seed in split_seeds:
                for arm, extra in (("before", BEFORE), ("after", [])):
                    study = f"{name}-{arm}-{seed}"
                    cwd = Path(tmp) / study
                    cwd.mkdir()
                    ran = _run(cwd, study, [*items, f"dataset.split_seed={seed}", *extra])
                    if "error" in ran:
                        rows[arm].append({"split_seed": seed, **ran})
                        continue
                    test = _outcome(cwd, study)["test"]
                    champion = test["champion"]["accuracy"]
                    recipe = test.get("baseline", test["champion"])["accuracy"]
                    rows[arm].append(
                        {
                            "split_seed": seed,
                            "champion": round(champion, 4),
                            "recipe": round(recipe, 4),
                            "seconds": ran["seconds"],
                        }
                    )
            summary = {}
            for arm, runs in rows.items():
                done = [r for r in runs if "champion" in r]
                summary[arm] = {
                    "beats_recipe": sum(r["champion"] > r["recipe"] for r in done),
                    "ties": sum(r["champion"] == r["recipe"] for r in done),
                    "runs": len(done),
                    "mean_gain": round(
                        sum(r["champion"] - r["recipe"] for r in done) / max(1, len(done)), 4
                    ),
                    "seconds": round(sum(r["seconds"] for r in done), 1),
                    "rows": runs,
                }
            out[name] = summary
    return out
