"""Image classifiers for regsearch, built by name with regularization knobs exposed.

``create_model(name, num_classes=..., in_channels=...)`` returns a module that
takes float images in [0, 1] shaped (N, C, H, W) and returns logits; input
normalization is part of the model. Importing this package registers the
built-in architectures: ``small-cnn``, ``resnet18``, ``wrn-16-4``, ``airbench``.
"""

from __future__ import annotations

from . import _airbench, _resnet, _small_cnn, _wide_resnet  # noqa: F401  (register models)
from ._registry import create_model, list_models, register_model

__all__ = ["create_model", "list_models", "register_model"]
