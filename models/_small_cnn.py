"""``small-cnn``: a small residual net whose depth follows the image size (8×8 to 64×64 and up).

Built for CPU-sized searches: a 3×3 stem (stride 2 above 16 px, where a digit or an object
spans many pixels), one block at the stem's resolution, then strided blocks that halve the
side until it is at most 4, so the last feature map's receptive field covers the whole input
before global pooling. At 8×8 it is the original two-block net.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import BasicBlock, Dropout, Normalize, conv3x3, drop_path_rates, init_weights
from ._registry import register_model

__all__ = ["SmallCNN", "small_cnn_plan"]

_MAX_WIDTH_FACTOR = 4  # channels stop doubling at 4×width: deeper stages stay cheap


def small_cnn_plan(image_size: int) -> tuple[int, list[int]]:
    """(stem stride, stride of each block) for a square input of side `image_size`."""
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size=}")
    stem_stride = 2 if image_size > 16 else 1
    side = -(-image_size // stem_stride)
    strides = [1]
    while side > 4 or len(strides) < 2:
        strides.append(2)
        side = -(-side // 2)
    return stem_stride, strides


class SmallCNN(nn.Module):
    """Stem at ``width``, a block at ``width``, then strided blocks doubling the width (up to
    4×``width``), pooled linear head.

    The default width 16 (~20k parameters at 8×8) reaches ~0.99 validation accuracy on digits
    at about 0.25 s an epoch on one CPU core.
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
        image_size: int = 8,
    ) -> None:
        super().__init__()
        stem_stride, strides = small_cnn_plan(image_size)
        rates = drop_path_rates(drop_path, len(strides))
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            conv3x3(in_channels, width, stride=stem_stride),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        blocks: list[nn.Module] = []
        in_ch = width
        for i, (stride, rate) in enumerate(zip(strides, rates, strict=True)):
            out_ch = width * min(2**i, _MAX_WIDTH_FACTOR)
            blocks.append(BasicBlock(in_ch, out_ch, stride=stride, drop_path=rate))
            in_ch = out_ch
        self.stages = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


register_model("small-cnn", SmallCNN, default_width=16, sized=True)
