"""FaceNet's triplet loss on squared L2 distances, over mined index triplets.

``loss = max(0, |x_a - x_p|^2 - |x_a - x_n|^2 + margin)`` for each triplet ``(a, p, n)`` of index
tensors, as returned by ``train.mining.mine_triplets`` (or any pytorch-metric-learning miner).
Unlike ``torch.nn.TripletMarginLoss`` (which uses the non-squared distance), the distances here are
squared, as in the FaceNet paper, so the margin (0.2) means the same as the mining margin.
"""

from __future__ import annotations

from typing import Literal

import torch

REDUCTIONS = ("mean", "sum", "mean_active")


def _check(embeddings: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor) -> None:
    if embeddings.dim() != 2:
        raise ValueError(f"embeddings must be [B, D], got shape {tuple(embeddings.shape)}")
    if not (a.shape == p.shape == n.shape) or a.dim() != 1:
        shapes = ", ".join(str(tuple(t.shape)) for t in (a, p, n))
        raise ValueError(f"a, p, n must be 1-D and of one length, got {shapes}")


def triplet_losses(
    embeddings: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.2
) -> torch.Tensor:
    """The loss of every triplet, [T]: ``relu(d(a,p) - d(a,n) + margin)`` on squared L2.

    With few triplets the rows are gathered and subtracted ([T, D] memory); with more triplets
    than that costs (batch_all can return millions), the distances are read from the [B, B]
    matrix ``|x|^2 + |y|^2 - 2 x.y`` instead, so memory stays O(B^2 + T), not O(T * D).
    """
    _check(embeddings, a, p, n)
    batch, dim = embeddings.shape
    if len(a) * dim <= batch * batch:
        anchor = embeddings[a]
        d_ap = (anchor - embeddings[p]).pow(2).sum(dim=1)
        d_an = (anchor - embeddings[n]).pow(2).sum(dim=1)
    else:
        norms = embeddings.pow(2).sum(dim=1)
        dist = (norms[:, None] + norms[None, :] - 2 * embeddings @ embeddings.T).clamp(min=0)
        d_ap, d_an = dist[a, p], dist[a, n]
    return torch.relu(d_ap - d_an + margin)


def triplet_loss(
    embeddings: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    n: torch.Tensor,
    margin: float = 0.2,
    reduction: Literal["mean", "sum", "mean_active"] = "mean",
) -> torch.Tensor:
    """FaceNet's triplet loss, reduced over the triplets.

    reduction: "mean" over all triplets (FaceNet's sum, scaled), "sum", or "mean_active" over the
    triplets with positive loss (pytorch-metric-learning's AvgNonZeroReducer), which keeps the
    gradient from fading as more triplets are satisfied. No triplet gives 0, still connected to
    the graph so that ``backward()`` works.
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}")
    losses = triplet_losses(embeddings, a, p, n, margin)
    if losses.numel() == 0:
        return embeddings.sum() * 0.0 + 0.0  # + 0.0: never -0.0 in the logs
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses.sum() / (losses > 0).sum().clamp(min=1)  # mean_active


def active_fraction(
    embeddings: torch.Tensor, a: torch.Tensor, p: torch.Tensor, n: torch.Tensor, margin: float = 0.2
) -> float:
    """Fraction of the triplets with positive loss (0.0 when there are none): a training monitor."""
    with torch.no_grad():
        losses = triplet_losses(embeddings, a, p, n, margin)
    return float((losses > 0).float().mean()) if losses.numel() else 0.0
