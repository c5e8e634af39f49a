"""Your own network on a public benchmark: the default study with a torchvision or timm network
on Fashion-MNIST as a user with 1,000 labelled images has it (100 a class, drawn from the
official training set), scored on the official 10,000 test images, against the same network
trained with the baseline recipe (the study's trial 0, retrained with the same seeds in the
confirm phase and scored on the same test images).

    python scripts/own_network_fashion.py [--model torchvision/resnet18] [--out DIR]

Needs the official files (`apt-get install dataset-fashion-mnist` puts them in
/usr/share/datasets/fashion-mnist; `--data` points elsewhere). Prints one JSON object; about
an hour on 2 CPU cores for resnet18. Everything it writes is under `--out`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import time
from pathlib import Path

import numpy as np

from search.api import run
from search.data.sample import write_mnist_idx


def _idx(path: Path) -> np.ndarray:
    blob = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = blob[3]
    dims = [int.from_bytes(blob[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _official(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    def find(kind: str) -> Path:
        for name in (f"{split}-{kind}-ubyte.gz", f"{split}-{kind}-ubyte"):
            if (folder / name).is_file():
                return folder / name
        raise SystemExit(f"no {split}-{kind}-ubyte[.gz] in {folder}")

    return _idx(find("images-idx3"))[:, None], _idx(find("labels-idx1")).astype(np.int64)


def subset(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """`per_class` indices of each class, drawn with `seed` (stratified, sorted)."""
    rng = np.random.default_rng(seed)
    keep = [rng.permutation(np.flatnonzero(y == c))[:per_class] for c in np.unique(y)]
    return np.sort(np.concatenate(keep))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="torchvision/resnet18")
    parser.add_argument("--data", type=Path, default=Path("/usr/share/datasets/fashion-mnist"))
    parser.add_argument("--out", type=Path, default=Path("runs/own-network-fashion"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()

    x, y = _official(args.data, "train")
    test = _official(args.data, "t10k")
    keep = subset(y, args.per_class, args.seed)
    root = write_mnist_idx(args.out / "data", (x[keep], y[keep]), test, folder="FashionMNIST")
    study = f"fashion{len(keep)}-{args.model.replace('/', '-').replace(':', '-')}"
    started = time.perf_counter()
    result = run(
        {"study": study, "dataset": {"name": "fashion-mnist", "root": str(root)}},
        overrides=[f"model.name={args.model}", *args.overrides],
        storage=f"sqlite:///{args.out.resolve()}/studies.db",
        tracking_uri=f"sqlite:///{args.out.resolve()}/mlflow.db",
        quiet=False,
    )
    seconds = time.perf_counter() - started
    best = result.best or {}
    print(
        json.dumps(
            {
                "study": study,
                "model": args.model,
                "train_images": len(keep),
                "test_images": len(test[1]),
                "seconds": round(seconds, 1),
                "verdict": result.verdict,
                "test": best.get("test"),
                "champion": best.get("champion"),
                "baseline": best.get("baseline"),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
