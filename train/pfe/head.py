"""The PFE uncertainty head, the mutual likelihood score (MLS) and the -MLS training loss.

Head (the authors' ``models/uncertainty_module.py``, seasonSH/Probabilistic-Face-Embeddings):

    features -> FC (no bias) -> BN (learned scale, shift) -> ReLU
             -> FC (no bias) -> BN (no scale, no shift) -> gamma * x + beta -> exp -> + 1e-6

gamma and beta are two scalars shared by all dimensions (initialised 1e-4 and -7, as theirs), so
the head starts by predicting the same small variance everywhere and learns how far each face
and dimension deviates from it. Their BN uses epsilon 1e-3 and decay 0.995 (PyTorch momentum
0.005); fully connected layers followed by BN carry no bias (slim's default), as here.

What the head sees: dlib's ResNet-29 ends ``blocks -> global mean pool (256-D) -> fc (128)``.
The paper feeds the feature map before the final embedding layer; here that is the pooled 256-D
vector (the fc's input): the last map is only 256 x 2 x 2, the fc only ever sees its mean, and
the pooled vector lets features be cached compactly (1 KB per chip) for fast training.

MLS (the paper, eq. 3), per pair, over the D dimensions:

    MLS = -1/2 sum_l [(mu1_l - mu2_l)^2 / (s1_l + s2_l) + log(s1_l + s2_l)] - D/2 log(2 pi)

The loss is the mean of -MLS over every genuine pair of a batch (their ``mutual_likelihood_score_
loss`` drops the 1/2 and the constant, which only scales the gradient by 2).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import nn

POOLED_DIM = 256  # dlib ResNet-29's pooled feature width (the fc layer's input)
SIGMA_SQ_FLOOR = 1e-6  # keeps sigma^2 > 0 in float32 even where exp underflows (the authors' epsilon)
BN_EPS = 1e-3
BN_MOMENTUM = 0.005  # = 1 - their decay 0.995


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """dlib ResNet's globally pooled features [N, 256] of float NCHW RGB 0..255 chips.

    The same steps as ``DlibResNet.forward`` up to its fc layer, whose input this is:
    ``backbone.fc(pooled_features(backbone, x)) == backbone(x)``.
    """
    x = (x - backbone.input_mean) * backbone.input_scale
    return backbone.blocks(backbone.stem(x)).mean(dim=(2, 3))


class UncertaintyHead(nn.Module):
    """Pooled backbone features [N, in_features] -> sigma^2 [N, dim], every value > 0."""

    def __init__(
        self, in_features: int = POOLED_DIM, dim: int = 128, gamma_init: float = 1e-4, beta_init: float = -7.0
    ) -> None:
        super().__init__()
        if in_features < 1 or dim < 1:
            raise ValueError(f"in_features and dim must be positive, got {in_features}, {dim}")
        self.in_features, self.dim = in_features, dim
        self.fc1 = nn.Linear(in_features, dim, bias=False)
        self.bn1 = nn.BatchNorm1d(dim, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.fc2 = nn.Linear(dim, dim, bias=False)
        self.bn2 = nn.BatchNorm1d(dim, eps=BN_EPS, momentum=BN_MOMENTUM, affine=False)
        self.gamma = nn.Parameter(torch.tensor(float(gamma_init)))
        self.beta = nn.Parameter(torch.tensor(float(beta_init)))

    def log_sigma_sq(self, features: torch.Tensor) -> torch.Tensor:
        """log sigma^2 before the floor: gamma * BN(FC(ReLU(BN(FC(x))))) + beta."""
        # Not while exporting: the traced graph's input shape is fixed by the exporter.
        if not torch.jit.is_tracing() and (features.ndim != 2 or features.shape[1] != self.in_features):
            raise ValueError(f"features must be [N, {self.in_features}], got {tuple(features.shape)}")
        hidden = torch.relu(self.bn1(self.fc1(features)))
        return self.gamma * self.bn2(self.fc2(hidden)) + self.beta

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.log_sigma_sq(features)) + SIGMA_SQ_FLOOR

    def config(self) -> dict[str, int]:
        return {"in_features": self.in_features, "dim": self.dim}


class PfeNetwork(nn.Module):
    """Frozen dlib ResNet + uncertainty head: float NCHW chips -> (raw embedding [N, 128], sigma^2).

    The raw embedding is the backbone's own output (``export.onnx`` normalises it in the graph,
    as for every model), so mu is exactly the default model's embedding.
    """

    def __init__(self, backbone: nn.Module, head: UncertaintyHead) -> None:
        super().__init__()
        if backbone.fc.in_features != head.in_features or backbone.fc.out_features != head.dim:
            raise ValueError(
                f"head {head.in_features} -> {head.dim} does not fit the backbone "
                f"({backbone.fc.in_features} pooled -> {backbone.fc.out_features})"
            )
        self.backbone, self.head = backbone, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pooled_features(self.backbone, x)
        return self.backbone.fc(pooled), self.head(pooled)


def mutual_likelihood_score(
    mu1: torch.Tensor, sigma_sq1: torch.Tensor, mu2: torch.Tensor, sigma_sq2: torch.Tensor
) -> torch.Tensor:
    """MLS of paired rows [..., D] -> [...]; higher means more likely the same person."""
    total = sigma_sq1 + sigma_sq2
    dim = mu1.shape[-1]
    return -0.5 * ((mu1 - mu2) ** 2 / total + torch.log(total)).sum(dim=-1) - 0.5 * dim * math.log(2 * math.pi)


def genuine_pairs(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices (i, j), i < j, of every pair of rows with the same label."""
    same = labels[:, None] == labels[None, :]
    i, j = torch.nonzero(torch.triu(same, diagonal=1), as_tuple=True)
    return i, j


def mls_loss(mu: torch.Tensor, sigma_sq: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean -MLS over all genuine pairs of the batch (mu [N, D], sigma_sq [N, D], labels [N])."""
    i, j = genuine_pairs(labels)
    if len(i) == 0:
        raise ValueError("the batch has no genuine pair: every label appears once")
    return -mutual_likelihood_score(mu[i], sigma_sq[i], mu[j], sigma_sq[j]).mean()


def save_head(path: str | Path, head: UncertaintyHead, info: dict[str, Any]) -> Path:
    """Checkpoint: the head's weights and BN statistics, its shape, and how it was trained.

    ``info`` holds plain values only (str, numbers, lists, dicts), so the file loads with
    ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"head": head.state_dict(), "config": head.config(), "info": info}, path)
    return path


def load_head(path: str | Path) -> tuple[UncertaintyHead, dict[str, Any]]:
    """(head in eval mode, info) from a checkpoint written by :func:`save_head`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"uncertainty head checkpoint {path} not found; train one with `facesdk train pfe train`")
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(checkpoint, dict) or not {"head", "config"} <= checkpoint.keys():
        raise ValueError(f"{path} is not an uncertainty head checkpoint (keys head, config expected)")
    head = UncertaintyHead(**checkpoint["config"])
    head.load_state_dict(checkpoint["head"])
    return head.eval(), checkpoint.get("info", {})
