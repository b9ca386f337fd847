"""Pieces every small backbone shares: the canonical chip input and its resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sdk.chips import DEFAULT_CHIP

# Every backbone takes the SDK's one chip.
CHIP_SCHEME = str(DEFAULT_CHIP)
CHIP_SIZE = DEFAULT_CHIP.size


def make_divisible(channels: float, divisor: int = 8) -> int:
    """Round a scaled channel count to a multiple of `divisor` (at least `divisor`)."""
    return max(divisor, int(channels + divisor / 2) // divisor * divisor)


class ChipInput(nn.Module):
    """float NCHW RGB 0..255 150 px chip -> the network's resolution, centred and scaled to about [-1, 1].

    The chip is always the canonical 150 px one; a network that runs at `image_size` pixels sees
    it bilinearly resized here (a plain Resize in ONNX, opset 17), so the exported model still
    takes 150 px chips and the runtime's aligner serves it unchanged.
    """

    def __init__(self, image_size: int) -> None:
        super().__init__()
        if not 32 <= image_size <= CHIP_SIZE:
            raise ValueError(f"image_size must be in [32, {CHIP_SIZE}], got {image_size}")
        self.image_size = image_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Decided at construction, not from x.shape: a traced (ONNX) graph has no shape branches.
        if self.image_size != CHIP_SIZE:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
        return (x - 127.5) * (1.0 / 128.0)
