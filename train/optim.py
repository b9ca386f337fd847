"""Optimisers and learning-rate schedules, by the names a training config uses."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from train.config import Config, OptimizerConfig

# Optimiser names -> factory(trainable parameters or groups, the config's optimizer section).
OPTIMIZERS: dict[str, Callable[[list[Any], OptimizerConfig], torch.optim.Optimizer]] = {
    "adagrad": lambda params, o: torch.optim.Adagrad(params, lr=o.lr, weight_decay=o.weight_decay),
    "adamw": lambda params, o: torch.optim.AdamW(params, lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas)),
    "sgd": lambda params, o: torch.optim.SGD(params, lr=o.lr, momentum=0.9, weight_decay=o.weight_decay),
}
SCHEDULES = ("cosine", "step", "constant")


class LRFactor:
    """The schedule as a factor of the base lr at step t (a class: LambdaLR saves its fields)."""

    def __init__(self, name: str, steps: int, warmup: int, min_ratio: float, milestones: list[int], gamma: float) -> None:
        self.name, self.steps, self.warmup, self.min_ratio = name, steps, warmup, min_ratio
        self.milestones, self.gamma = list(milestones), gamma

    def __call__(self, t: int) -> float:
        if t < self.warmup:
            return (t + 1) / self.warmup
        if self.name == "cosine":
            progress = min(1.0, (t - self.warmup) / max(1, self.steps - self.warmup))
            return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if self.name == "step":
            return self.gamma ** sum(t >= m for m in self.milestones)
        return 1.0


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    o = config.optimizer
    trainable: list[Any] = [p for p in model.parameters() if p.requires_grad]
    if o.relative_lr:  # one group per tensor, lr scaled by its RMS (LambdaLR keeps each group's base)
        trainable = [{"params": [p], "lr": o.lr * float(p.detach().pow(2).mean().sqrt())} for p in trainable]
    return OPTIMIZERS[o.name](trainable, o)


def make_scheduler(optimizer: torch.optim.Optimizer, config: Config) -> torch.optim.lr_scheduler.LambdaLR:
    s = config.schedule
    factor = LRFactor(s.name, config.steps, s.warmup_steps, s.min_lr_ratio, s.milestones, s.gamma)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
