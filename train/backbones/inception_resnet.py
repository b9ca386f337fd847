"""A small Inception-ResNet-v1: FaceNet's NN family (Szegedy et al. 2016, as facenet ports use it).

The layout of Inception-ResNet-v1 with fewer channels and blocks:

    stem:        3x3/2, 3x3, 3x3, max 3x3/2, 1x1, 3x3, 3x3/2
    Block35 xA   (Inception-ResNet-A, residual scale 0.17)
    ReductionA
    Block17 xB   (Inception-ResNet-B: 1x7 and 7x1 branches, scale 0.10)
    ReductionB
    Block8  xC   (Inception-ResNet-C: 1x3 and 3x1 branches, scale 0.20; the last without ReLU)
    global average pool, dropout, linear 128 (no bias), batch norm

``width`` scales every channel count of v1 (1.0 = v1's 256/896/1792 trunk); ``blocks`` gives the
repeats (v1: 5, 10, 5). The default (width 0.5, blocks 2/4/2, 112 px) has ~3.2 M parameters.
Convolutions use "same" padding, so at 112 px the trunk runs at 14, 7 and 4 pixels.
"""

from __future__ import annotations

import torch
from torch import nn

from train.backbones._common import CHIP_SCHEME, CHIP_SIZE, ChipInput, make_divisible


class BasicConv(nn.Module):
    """Convolution (no bias), batch norm (eps 1e-3 as in v1), ReLU."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple[int, int], stride: int = 1) -> None:
        super().__init__()
        k = (kernel, kernel) if isinstance(kernel, int) else kernel
        self.conv = nn.Conv2d(cin, cout, k, stride, (k[0] // 2, k[1] // 2), bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=1e-3)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Block35(nn.Module):
    """Inception-ResNet-A: 1x1 | 1x1-3x3 | 1x1-3x3-3x3, concatenated, 1x1 back, scaled residual."""

    def __init__(self, channels: int, branch: int, scale: float = 0.17) -> None:
        super().__init__()
        self.scale = scale
        self.b0 = BasicConv(channels, branch, 1)
        self.b1 = nn.Sequential(BasicConv(channels, branch, 1), BasicConv(branch, branch, 3))
        self.b2 = nn.Sequential(BasicConv(channels, branch, 1), BasicConv(branch, branch, 3), BasicConv(branch, branch, 3))
        self.up = nn.Conv2d(3 * branch, channels, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.cat([self.b0(x), self.b1(x), self.b2(x)], 1))
        return self.relu(x + self.scale * y)


class Block17(nn.Module):
    """Inception-ResNet-B: 1x1 | 1x1-1x7-7x1, concatenated, 1x1 back, scaled residual."""

    def __init__(self, channels: int, branch: int, scale: float = 0.10) -> None:
        super().__init__()
        self.scale = scale
        self.b0 = BasicConv(channels, branch, 1)
        self.b1 = nn.Sequential(
            BasicConv(channels, branch, 1), BasicConv(branch, branch, (1, 7)), BasicConv(branch, branch, (7, 1))
        )
        self.up = nn.Conv2d(2 * branch, channels, 1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.cat([self.b0(x), self.b1(x)], 1))
        return self.relu(x + self.scale * y)


class Block8(nn.Module):
    """Inception-ResNet-C: 1x1 | 1x1-1x3-3x1, concatenated, 1x1 back, scaled residual."""

    def __init__(self, channels: int, branch: int, scale: float = 0.20, relu: bool = True) -> None:
        super().__init__()
        self.scale = scale
        self.b0 = BasicConv(channels, branch, 1)
        self.b1 = nn.Sequential(
            BasicConv(channels, branch, 1), BasicConv(branch, branch, (1, 3)), BasicConv(branch, branch, (3, 1))
        )
        self.up = nn.Conv2d(2 * branch, channels, 1)
        self.relu = nn.ReLU() if relu else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.up(torch.cat([self.b0(x), self.b1(x)], 1))
        return self.relu(x + self.scale * y)


class ReductionA(nn.Module):
    """3x3/2 | 1x1-3x3-3x3/2 | max pool 3x3/2, concatenated."""

    def __init__(self, cin: int, k: int, l: int, m: int, n: int) -> None:
        super().__init__()
        self.b0 = BasicConv(cin, n, 3, 2)
        self.b1 = nn.Sequential(BasicConv(cin, k, 1), BasicConv(k, l, 3), BasicConv(l, m, 3, 2))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.channels = n + m + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1(x), self.pool(x)], 1)


class ReductionB(nn.Module):
    """1x1-3x3/2 (twice, different widths) | 1x1-3x3-3x3/2 | max pool 3x3/2, concatenated."""

    def __init__(self, cin: int, a: int, b: int, c: int) -> None:
        super().__init__()
        self.b0 = nn.Sequential(BasicConv(cin, a, 1), BasicConv(a, b, 3, 2))
        self.b1 = nn.Sequential(BasicConv(cin, a, 1), BasicConv(a, c, 3, 2))
        self.b2 = nn.Sequential(BasicConv(cin, a, 1), BasicConv(a, c, 3), BasicConv(c, c, 3, 2))
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.channels = b + 2 * c + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1(x), self.b2(x), self.pool(x)], 1)


class InceptionResNetSmall(nn.Module):
    """150 px canonical chips (float NCHW RGB 0..255) -> raw 128-D embeddings."""

    input_size = (CHIP_SIZE, CHIP_SIZE)
    chip_scheme = CHIP_SCHEME

    def __init__(
        self,
        image_size: int = 112,
        width: float = 0.5,
        blocks: tuple[int, int, int] = (2, 4, 2),
        dropout: float = 0.0,
        embedding_dim: int = 128,
    ) -> None:
        super().__init__()
        if not width > 0:
            raise ValueError(f"width must be > 0, got {width}")
        if len(blocks) != 3 or min(blocks) < 1:
            raise ValueError(f"blocks must be three repeat counts >= 1, got {blocks}")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.image_size = image_size

        def c(channels: int) -> int:
            return make_divisible(channels * width)

        self.input = ChipInput(image_size)
        self.stem = nn.Sequential(
            BasicConv(3, c(32), 3, 2),
            BasicConv(c(32), c(32), 3),
            BasicConv(c(32), c(64), 3),
            nn.MaxPool2d(3, 2, 1),
            BasicConv(c(64), c(80), 1),
            BasicConv(c(80), c(192), 3),
            BasicConv(c(192), c(256), 3, 2),
        )
        trunk = c(256)
        stages: list[nn.Module] = [Block35(trunk, c(32)) for _ in range(blocks[0])]
        reduction_a = ReductionA(trunk, c(192), c(192), c(256), c(384))
        stages.append(reduction_a)
        trunk = reduction_a.channels
        stages += [Block17(trunk, c(128)) for _ in range(blocks[1])]
        reduction_b = ReductionB(trunk, c(256), c(384), c(256))
        stages.append(reduction_b)
        trunk = reduction_b.channels
        stages += [Block8(trunk, c(192)) for _ in range(blocks[2] - 1)]
        stages.append(Block8(trunk, c(192), relu=False))
        self.trunk = nn.Sequential(*stages)
        self.dropout = nn.Dropout(dropout)
        self.last_linear = nn.Linear(trunk, embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_dim, eps=1e-3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.trunk(self.stem(self.input(x)))
        return self.last_bn(self.last_linear(self.dropout(x.mean(dim=(2, 3)))))


def inception_resnet_small(
    image_size: int = 112,
    width: float = 0.5,
    blocks: tuple[int, int, int] | list[int] = (2, 4, 2),
    dropout: float = 0.0,
    embedding_dim: int = 128,
) -> InceptionResNetSmall:
    """A small Inception-ResNet-v1 at `image_size` px, v1's channels scaled by `width`."""
    return InceptionResNetSmall(image_size, width, tuple(blocks), dropout, embedding_dim)  # type: ignore[arg-type]
