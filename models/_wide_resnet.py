"""``wrn-16-4``: WideResNet, depth 16, widen factor 4 (Zagoruyko & Komodakis, 2016).

Pre-activation blocks; regularization is dropout before the classifier and
stochastic depth on residual branches (not the paper's in-block dropout), so
the ``dropout``/``drop_path`` knobs mean the same thing for every model.
"""

from __future__ import annotations

from torch import Tensor, nn

from ._layers import Dropout, DropPath, Normalize, conv3x3, drop_path_rates, init_weights
from ._registry import register_model

__all__ = ["PreActBlock", "WideResNet"]


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv; on shape change a 1x1 shortcut sees the pre-activated input."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, drop_path: float = 0.0) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = conv3x3(in_ch, out_ch, stride)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = conv3x3(out_ch, out_ch)
        self.act = nn.ReLU(inplace=False)  # x is reused by the identity shortcut
        self.drop_path = DropPath(drop_path)
        # Structural flag, fixed at construction: safe for torch.export.
        self.project = stride != 1 or in_ch != out_ch
        self.shortcut: nn.Module = (
            nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)
            if self.project
            else nn.Identity()
        )

    def forward(self, x: Tensor) -> Tensor:
        o = self.act(self.bn1(x))
        shortcut = self.shortcut(o) if self.project else x
        y = self.conv2(self.act(self.bn2(self.conv1(o))))
        return shortcut + self.drop_path(y)


class WideResNet(nn.Module):
    """16-channel stem, three groups of ``(depth - 4) // 6`` blocks at ``width``, 2x, 4x.
    ``width`` is the first group's width: 16 * widen factor 4 = 64 for WRN-16-4."""

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
        depth: int = 16,
    ) -> None:
        super().__init__()
        if (depth - 4) % 6 != 0 or depth < 10:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth=}")
        n = (depth - 4) // 6
        rates = iter(drop_path_rates(drop_path, 3 * n))
        self.normalize = Normalize(mean, std)
        self.stem = conv3x3(in_channels, 16)  # pre-activation: first block's BN follows
        layers: list[nn.Module] = []
        in_ch = 16
        for group, stride in enumerate((1, 2, 2)):
            out_ch = width * 2**group
            for i in range(n):
                layers.append(PreActBlock(in_ch, out_ch, stride if i == 0 else 1, next(rates)))
                in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        self.final = nn.Sequential(nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = Dropout(dropout)
        self.classifier = nn.Linear(in_ch, num_classes)
        init_weights(self)

    def forward(self, x: Tensor) -> Tensor:
        x = self.final(self.blocks(self.stem(self.normalize(x))))
        return self.classifier(self.dropout(self.pool(x).flatten(1)))


register_model("wrn-16-4", WideResNet, default_width=64, depth=16)
