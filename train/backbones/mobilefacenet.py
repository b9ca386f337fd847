"""MobileFaceNet-like backbone: depthwise separable inverted bottlenecks for edge devices.

After Chen et al., "MobileFaceNets: Efficient CNNs for Accurate Real-Time Face Verification on
Mobile Devices" (2018): a 3x3/2 convolution and a depthwise 3x3, then MobileNetV2 bottlenecks
(expansion t, channels c, repeats n, first stride s)

    (2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)

a 1x1 convolution to 512, a global depthwise convolution (GDConv: one k x k filter per channel
over the whole final map, where the paper's point is that faces are not translation invariant
enough for global average pooling), and a linear 1x1 to the 128-D embedding with batch norm.
PReLU activations. ``width`` scales the channels (the paper's net is width 1.0 at 112 px,
~0.99 M parameters, ~0.22 GMACs); ``image_size`` sets the resolution (the 150 px chip is resized
in the forward pass, see ``_common.ChipInput``).
"""

from __future__ import annotations

import torch
from torch import nn

from train.backbones._common import CHIP_SCHEME, CHIP_SIZE, ChipInput, make_divisible

# (expansion, channels, repeats, stride of the first)
BOTTLENECKS = ((2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1))


class ConvBN(nn.Module):
    """Convolution, batch norm, then PReLU unless linear."""

    def __init__(
        self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1, linear: bool = False, padding: int | None = None
    ) -> None:
        super().__init__()
        padding = kernel // 2 if padding is None else padding
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.Identity() if linear else nn.PReLU(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 linear projection; residual when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.body = nn.Sequential(
            ConvBN(cin, hidden, 1),
            ConvBN(hidden, hidden, 3, stride, groups=hidden),
            ConvBN(hidden, cout, 1, linear=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class MobileFaceNet(nn.Module):
    """150 px canonical chips (float NCHW RGB 0..255) -> raw 128-D embeddings."""

    input_size = (CHIP_SIZE, CHIP_SIZE)
    chip_scheme = CHIP_SCHEME

    def __init__(self, image_size: int = 112, width: float = 1.0, embedding_dim: int = 128) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        self.image_size = image_size
        self.input = ChipInput(image_size)
        c64 = make_divisible(64 * width)
        layers: list[nn.Module] = [ConvBN(3, c64, 3, 2), ConvBN(c64, c64, 3, 1, groups=c64)]
        cin, size = c64, (image_size + 1) // 2
        for expansion, channels, repeats, stride in BOTTLENECKS:
            cout = make_divisible(channels * width)
            for i in range(repeats):
                s = stride if i == 0 else 1
                layers.append(Bottleneck(cin, cout, s, expansion))
                cin = cout
                size = (size + 1) // 2 if s == 2 else size
        c512 = make_divisible(512 * width)
        layers.append(ConvBN(cin, c512, 1))
        self.features = nn.Sequential(*layers)
        # GDConv: a depthwise filter as large as the final map (7x7 at 112 px).
        self.gdconv = ConvBN(c512, c512, size, groups=c512, linear=True, padding=0)
        self.embedding = nn.Sequential(nn.Conv2d(c512, embedding_dim, 1, bias=False), nn.BatchNorm2d(embedding_dim))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [N, D, 1, 1] -> [N, D] by indexing: keeps D static in an exported ONNX graph (Flatten does not).
        return self.embedding(self.gdconv(self.features(self.input(x))))[:, :, 0, 0]


def mobilefacenet(image_size: int = 112, width: float = 1.0, embedding_dim: int = 128) -> MobileFaceNet:
    """MobileFaceNet at `image_size` px (the 150 px chip is resized inside), channels scaled by `width`."""
    return MobileFaceNet(image_size=image_size, width=width, embedding_dim=embedding_dim)
