"""``airbench``: a fast airbench-style CIFAR net (after Keller Jordan's airbench94).

Few, wide layers with early max-pooling make it train to good CIFAR-10
accuracy in seconds, which suits a hyperparameter search. Differences from
the original: a plain 3x3 stem instead of a whitening conv, and the second
conv of each block sits on a residual branch so ``drop_path`` (stochastic
depth) has something to drop, like in the other models.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import Dropout, DropPath, Normalize, conv3x3, drop_path_rates, init_weights
from ._registry import register_model

__all__ = ["AirBench", "AirBlock"]


class AirBlock(nn.Module):
    """conv-maxpool-BN-GELU, then ``x + drop_path(conv-BN-GELU(x))``; halves spatial size."""

    def __init__(self, in_ch: int, out_ch: int, drop_path: float = 0.0) -> None:
        super().__init__()
        self.down = nn.Sequential(
            conv3x3(in_ch, out_ch),
            nn.MaxPool2d(2),  # pool before BN/GELU: 4x cheaper, same result for max-pool
            nn.BatchNorm2d(out_ch),
            nn.GELU(),
        )
        self.branch = nn.Sequential(conv3x3(out_ch, out_ch), nn.BatchNorm2d(out_ch), nn.GELU())
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = self.down(x)
        return x + self.drop_path(self.branch(x))


class AirBench(nn.Module):
    """Stem, blocks at ``width``/``4*width``/``4*width`` (64/256/256), global max pool, head.
    Needs inputs of at least 8x8 (three 2x max-pools)."""

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        dropout: float = 0.0,
        drop_path: float = 0.0,
        width: int = 64,
    ) -> None:
        super().__init__()
        widths = (width, 4 * width, 4 * width)
        stem_ch = max(1, round(24 * width / 64))  # airbench94 uses 24 stem channels
        rates = drop_path_rates(drop_path, len(widths))
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(conv3x3(in_channels, stem_ch), nn.BatchNorm2d(stem_ch), nn.GELU())
        blocks: list[nn.Module] = []
        in_ch = stem_ch
        for out_ch, rate in zip(widths, rates, strict=True):
            blocks.append(AirBlock(in_ch, out_ch, rate))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.stem(self.normalize(x)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


register_model("airbench", AirBench, default_width=64)
