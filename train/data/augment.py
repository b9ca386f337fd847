"""Augmentations for aligned face chips, in torch, on uint8 NHWC chips in and float NCHW out.

Aligned chips already fix the pose, so only small changes keep them realistic: a horizontal flip
(faces are roughly symmetric; the aligner's template is too), a small random scale and translation
(and an optional small rotation) that imitate landmark noise of the detector, and colour jitter
(brightness, contrast, saturation) for lighting and cameras. The geometric part is one bilinear
``grid_sample`` per batch; pixels pulled from outside the chip are black, as the aligner makes them.

Every random draw comes from the ``torch.Generator`` passed in, so a batch is reproducible from
the generator's seed (the trainer seeds it from (seed, step, rank)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


def chips_to_input(chips: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 chips [N, H, W, 3] RGB -> float32 [N, 3, H, W] in 0..255, what the backbones take."""
    if isinstance(chips, np.ndarray):  # memory-mapped chips are read-only: copy those
        chips = np.ascontiguousarray(chips) if chips.flags.writeable else np.array(chips)
    x = torch.from_numpy(chips) if isinstance(chips, np.ndarray) else chips
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"chips must be uint8 [N, H, W, 3] RGB, got {x.dtype} {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2).to(torch.float32).contiguous()


@dataclass(frozen=True)
class FaceAugment:
    """Random flip, scale/translation/rotation jitter and colour jitter of face chips.

    flip: probability of a horizontal flip; scale: relative zoom range (0.05 = 0.95..1.05);
    translate: shift range as a fraction of the chip side (0.04 = +-6 px at 150); rotate: degrees;
    brightness / contrast / saturation: factor ranges 1 +- value (0 turns one off).
    """

    flip: float = 0.5
    scale: float = 0.05
    translate: float = 0.04
    rotate: float = 0.0
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2

    def __post_init__(self) -> None:
        if not 0 <= self.flip <= 1:
            raise ValueError(f"flip is a probability in [0, 1], got {self.flip}")
        for name in ("scale", "translate", "brightness", "contrast", "saturation"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if not 0 <= self.rotate <= 45:
            raise ValueError(f"rotate must be in [0, 45] degrees, got {self.rotate}")

    def __call__(self, chips: np.ndarray | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """uint8 chips [N, H, W, 3] -> augmented float32 [N, 3, H, W] in 0..255."""
        x = chips_to_input(chips)
        n = x.shape[0]
        if n == 0:
            return x

        # Draws on the CPU (where the generator lives), then moved: the same batch on any device.
        def uniform(spread: float) -> torch.Tensor:  # n draws in [-spread, spread]
            return ((torch.rand(n, generator=generator) * 2 - 1) * spread).to(x.device)

        # Geometry: output pixel -> input position, in grid_sample's [-1, 1] coordinates.
        flip = torch.where(torch.rand(n, generator=generator) < self.flip, -1.0, 1.0).to(x.device)
        zoom = 1 / (1 + uniform(self.scale))
        angle = uniform(math.radians(self.rotate))
        shift_x, shift_y = uniform(2 * self.translate), uniform(2 * self.translate)
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack(
            [torch.stack([cos * flip, -sin, shift_x], 1), torch.stack([sin * flip, cos, shift_y], 1)], 1
        )
        if self.flip or self.scale or self.translate or self.rotate:
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

        # Colour, in the order of torchvision's ColorJitter (brightness, contrast, saturation).
        brightness = 1 + uniform(self.brightness)
        contrast = 1 + uniform(self.contrast)
        saturation = 1 + uniform(self.saturation)
        x = x * brightness.view(n, 1, 1, 1)
        gray_weights = torch.tensor([0.299, 0.587, 0.114], device=x.device).view(1, 3, 1, 1)
        mean = (x * gray_weights).sum(1, keepdim=True).mean(dim=(2, 3), keepdim=True)
        x = (x - mean) * contrast.view(n, 1, 1, 1) + mean
        gray = (x * gray_weights).sum(1, keepdim=True)
        x = (x - gray) * saturation.view(n, 1, 1, 1) + gray
        return x.clamp_(0, 255)
