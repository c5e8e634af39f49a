"""scikit-learn's digits written out in the on-disk formats a user brings: MNIST idx files and
class-per-folder PNGs, upscaled to any size, grayscale or tinted RGB.

The project cannot download a data set, so the real readers (`search.data.dataset`) and the
real-data benchmark (`regsearch bench --only real_data`) are exercised on these: the same 1,797
handwritten digits, but 28×28 or 32×32 as the user's own folder would hold them.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

__all__ = ["digits_images", "write_imagefolder", "write_mnist_idx"]


def digits_images(size: int, *, rgb: bool = False, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 1,797 digits as uint8 (N, C, size, size) in 0..255 and their labels, in a seeded
    random order. `rgb` tints each image: a random ink colour on a random dark background, so
    colour carries no label information."""
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    bunch = load_digits()
    order = np.random.default_rng(seed).permutation(len(bunch.target))
    x = torch.from_numpy(bunch.images[order].astype(np.float32) / 16.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp_(0, 1)
    if rgb:
        rng = np.random.default_rng(seed + 1)
        n = x.shape[0]
        ink = torch.from_numpy(rng.uniform(0.5, 1.0, size=(n, 3, 1, 1)).astype(np.float32))
        ground = torch.from_numpy(rng.uniform(0.0, 0.35, size=(n, 3, 1, 1)).astype(np.float32))
        x = ground + (ink - ground) * x
    pixels = (x * 255.0).round_().to(torch.uint8).numpy()
    return pixels, bunch.target[order].astype(np.int64)


def _idx(array: np.ndarray) -> bytes:
    """The idx format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    head = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape
    )
    return head + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_idx(
    root: Path,
    train: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    *,
    folder: str = "MNIST",
    gz: bool = False,
) -> Path:
    """torchvision's `<root>/<folder>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]`
    from (uint8 (N, 1, H, W) images, labels) pairs; returns `root`."""
    raw = Path(root) / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for split, (x, y) in (("train", train), ("t10k", test)):
        if x.ndim != 4 or x.shape[1] != 1:
            raise ValueError(f"MNIST images are (N, 1, H, W), got {x.shape}")
        for kind, array in (("images-idx3", x[:, 0]), ("labels-idx1", y.astype(np.uint8))):
            name = f"{split}-{kind}-ubyte"
            blob = _idx(array)
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(blob))
            else:
                (raw / name).write_bytes(blob)
    return Path(root)


def write_imagefolder(root: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """One PNG per image in `<root>/<label>/<index>.png` (grayscale for 1 channel, else RGB)."""
    from PIL import Image

    root = Path(root)
    for i, (image, label) in enumerate(zip(x, y, strict=True)):
        folder = root / str(int(label))
        folder.mkdir(parents=True, exist_ok=True)
        array = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        Image.fromarray(np.ascontiguousarray(array)).save(folder / f"{i:05d}.png")
    return root
