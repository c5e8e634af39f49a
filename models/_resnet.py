"""``resnet18``: CIFAR-style ResNet-18, the standard baseline for 32x32 images.

3x3 stride-1 stem and no max-pool, because the ImageNet stem (7x7 stride 2 +
max-pool) would throw away most of a 32x32 image before the first block.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import BasicBlock, Dropout, Normalize, conv3x3, drop_path_rates, init_weights
from ._registry import register_model

__all__ = ["ResNet"]


class ResNet(nn.Module):
    """Basic-block ResNet; stage ``s`` has ``width * 2**s`` channels, later stages stride 2."""

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
        blocks: tuple[int, ...] = (2, 2, 2, 2),
    ) -> None:
        super().__init__()
        rates = iter(drop_path_rates(drop_path, sum(blocks)))
        self.normalize = Normalize(mean, std)
        self.stem = nn.Sequential(
            conv3x3(in_channels, width), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        in_ch = width
        for stage, n in enumerate(blocks):
            out_ch = width * 2**stage
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                layers.append(BasicBlock(in_ch, out_ch, stride, drop_path=next(rates)))
                in_ch = out_ch
        self.stages = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.stem(self.normalize(x)))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


register_model("resnet18", ResNet, default_width=64, blocks=(2, 2, 2, 2))
