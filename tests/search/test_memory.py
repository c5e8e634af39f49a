"""`retain_freed_memory`: training steps stop paying page faults for their temporaries."""

from __future__ import annotations

import subprocess
import sys

import pytest

_SCRIPT = """
import resource, torch
from search.training.augment import BatchTransform
from search.config.schema import Regularization
from search.core.memory import retain_freed_memory

augment = BatchTransform(
    Regularization(aug_strength=1.0, cutout=0.25, mixup_alpha=0.0),
    num_classes=10, allow_flip=True, colour=True,
)
x, y = torch.rand(256, 3, 32, 32), torch.zeros(256, dtype=torch.long)

def page_faults():
    for _ in range(3):
        augment(x, y)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        augment(x, y)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = page_faults()
applied = retain_freed_memory()
print(applied, before, page_faults())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_augmentation_batches_reuse_freed_memory() -> None:
    # In a fresh process: the setting is process-wide and the counts must not mix with others.
    out = subprocess.run(
        [sys.executable, "-c", _SCRIPT], capture_output=True, text=True, check=True
    ).stdout.split()
    applied, before, after = out[0] == "True", int(out[1]), int(out[2])
    if not applied:
        pytest.skip("this C library has no mallopt (not glibc)")
    assert after * 5 < before, f"page faults for 20 batches: {before} before, {after} after"
