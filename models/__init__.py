"""Image classifiers for regsearch, built by name with regularization knobs exposed.

``create_model(name, num_classes=..., in_channels=...)`` returns a module that
takes float images in [0, 1] shaped (N, C, H, W) and returns logits; input
normalization is part of the model. Importing this package registers the
built-in architectures: ``small-cnn``, ``resnet18``, ``wrn-16-4``, ``airbench``. Outside
networks come by name as well: ``timm/<name>``, ``torchvision/<name>`` and a user factory
``package.module:callable`` (`_external`); ``load_weights`` starts one from a weights file.
"""

from __future__ import annotations

from . import _airbench, _resnet, _small_cnn, _wide_resnet  # noqa: F401  (register models)
from ._external import (
    MODEL_SIDE,
    External,
    check_name,
    is_external,
    kind_of,
    pretrained_stats,
    supported,
)
from ._imports import import_callable, is_import_spec
from ._registry import create_model, list_models, register_model
from ._weights import WeightsReport, load_weights, read_weights

__all__ = [
    "MODEL_SIDE",
    "External",
    "WeightsReport",
    "check_name",
    "create_model",
    "import_callable",
    "is_external",
    "is_import_spec",
    "kind_of",
    "list_models",
    "load_weights",
    "pretrained_stats",
    "read_weights",
    "register_model",
    "supported",
]
