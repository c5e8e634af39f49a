"""The idx format of MNIST and Fashion-MNIST (`train-images-idx3-ubyte`, plain or `.gz`), read
into numpy without writing anything next to the user's files.

Written by hand rather than through torchvision's `read_sn3_pascalvincent_tensor` because that
one trusts the header: it reads a gzipped file whole into memory, then a header claiming more
images than the file holds fails deep inside `torch.frombuffer` with a traceback, and
torchvision's `MNIST` class only reads its own `<root>/MNIST/raw` layout and decompresses `.gz`
files next to themselves. This reader checks the header (magic, type, dimensions) and that the
file holds exactly the bytes the header promises before it allocates the array.
"""

from __future__ import annotations

import gzip
import math
from pathlib import Path

import numpy as np

from search.data.images import format_bytes

__all__ = ["IdxError", "read_idx"]

_UBYTE = 0x08  # the only element type MNIST and Fashion-MNIST use
_CHUNK = 1 << 22  # bytes read at a time from a gzip stream


class IdxError(ValueError):
    """A file that is not the idx file it should be; the message is one line."""


def _header(head: bytes, path: Path, ndim: int) -> tuple[int, ...]:
    if len(head) < 4 or head[0] != 0 or head[1] != 0:
        raise IdxError(f"{path} is not an idx file (bad magic number)")
    if head[2] != _UBYTE:
        raise IdxError(
            f"{path} holds idx elements of type 0x{head[2]:02X}; expected 0x08 (unsigned bytes)"
        )
    if head[3] != ndim:
        raise IdxError(f"{path} holds a {head[3]}-dimensional idx array; expected {ndim}")
    if len(head) < 4 + 4 * ndim:
        raise IdxError(f"{path} ends inside its idx header")
    return tuple(int.from_bytes(head[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))


def _claim(path: Path, dims: tuple[int, ...], payload: int) -> IdxError:
    expected = math.prod(dims)
    return IdxError(
        f"{path} claims {' × '.join(f'{d:,}' for d in dims)} = {expected:,} bytes of data "
        f"({format_bytes(expected)}) but holds {payload:,}"
    )


def _read_gz(path: Path, ndim: int) -> tuple[tuple[int, ...], bytearray]:
    """The dims and the payload of a gzipped idx file, read in chunks: a lying header never
    sizes an allocation, only the bytes actually there do (and at most one chunk past the
    promised end)."""
    with gzip.open(path, "rb") as f:
        head = f.read(4 + 4 * ndim)
        dims = _header(head, path, ndim)
        expected = math.prod(dims)
        payload = bytearray()
        while len(payload) <= expected:
            chunk = f.read(min(_CHUNK, expected + 1 - len(payload)))
            if not chunk:
                break
            payload += chunk
    return dims, payload


def read_idx(path: Path, *, ndim: int) -> np.ndarray:
    """The uint8 array of `ndim` dimensions in the idx file `path` (gzipped when its name ends
    in `.gz`); `IdxError` when the header is not that of such an array or the file holds
    another number of bytes than the header promises, or a `.gz` that is truncated or no gzip
    stream. `OSError` passes through for a plain file it cannot read."""
    path = Path(path)
    if path.suffix == ".gz":
        try:
            dims, payload = _read_gz(path, ndim)
        except (EOFError, gzip.BadGzipFile, OSError) as exc:  # truncated, or no gzip at all
            raise IdxError(f"{path}: {exc}") from None
        if len(payload) != math.prod(dims):
            raise _claim(path, dims, len(payload))
        return np.frombuffer(payload, dtype=np.uint8).reshape(dims)
    header = 4 + 4 * ndim
    with open(path, "rb") as f:
        dims = _header(f.read(header), path, ndim)
        payload_size = path.stat().st_size - header
        if payload_size != math.prod(dims):
            raise _claim(path, dims, max(0, payload_size))
        data = f.read()
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)
