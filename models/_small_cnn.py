"""``small-cnn``: a tiny residual net for tiny images (e.g. scikit-learn digits, 1x8x8).

Two stages of one basic block each keep it fast on CPU so many trials fit in a
search budget; adaptive pooling lets it accept any input of at least 8x8.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import BasicBlock, Normalize, conv3x3, drop_path_rates, init_weights
from ._registry import register_model

__all__ = ["SmallCNN"]


class SmallCNN(nn.Module):
    """Stem (``width``), block at ``width``, strided block at ``2*width``, pooled linear head.

    The default width 16 (~20k parameters) reaches ~0.99 validation accuracy on digits at about
    0.25 s an epoch on one CPU core; width 32 costs 3x the time for no measurable gain there.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        dropout: float = 0.0,
        drop_path: float = 0.0,
        width: int = 16,
    ) -> None:
        super().__init__()
        rates = drop_path_rates(drop_path, 2)
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        self.stages = nn.Sequential(
            BasicBlock(width, width, stride=1, drop_path=rates[0]),
            BasicBlock(width, 2 * width, stride=2, drop_path=rates[1]),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * width, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


register_model("small-cnn", SmallCNN, default_width=16)
