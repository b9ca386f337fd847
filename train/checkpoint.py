"""Reading a training checkpoint: what export and the evaluations need, without the trainer
(no data loading, no distributed set-up)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from train.backbones import create_backbone


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """A checkpoint's contents. Tensors and plain data only (``weights_only``): loading a file
    never runs code from it."""
    return torch.load(path, map_location=map_location, weights_only=True)


def backbone_from_state(state: dict[str, Any]) -> nn.Module:
    """The backbone a checkpoint's contents describe, with its weights, in eval mode."""
    model = create_backbone(state["backbone"]["name"], **state["backbone"]["options"])
    model.load_state_dict(state["model"])
    return model.eval()


def load_trained_backbone(checkpoint: str | Path, map_location: str = "cpu") -> nn.Module:
    """The backbone of a training checkpoint, in eval mode."""
    return backbone_from_state(read_checkpoint(checkpoint, map_location))
