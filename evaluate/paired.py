"""Two ways of scoring the same LFW pairs, compared pair by pair: which pairs each gets right,
and an exact McNemar test on the pairs where they disagree."""

from __future__ import annotations

import math

import numpy as np

from evaluate.lfw import evaluate


def mcnemar_p(gained: int, lost: int) -> float:
    """Exact two-sided McNemar p: the chance of a split at least this uneven if each is a coin."""
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)


def changes(base: np.ndarray, ok: np.ndarray) -> tuple[int, int]:
    """(pairs right now and wrong before, pairs wrong now and right before)."""
    return int((~base & ok).sum()), int((base & ~ok).sum())


def outcomes(dist: np.ndarray, pairs) -> tuple[np.ndarray, object]:
    """(bool [pairs]: right under its fold's threshold, evaluate.lfw.Verification) of pair distances."""
    v = evaluate(dist, pairs)
    position = np.searchsorted(np.unique(pairs.fold), pairs.fold)  # fold_threshold follows the folds present
    return (dist <= v.fold_threshold[position]) == pairs.same, v


def describe(name: str, ok: np.ndarray, v, base: np.ndarray | None = None) -> str:
    """One line: accuracy, AUC, EER, TAR; with `base`, the pairs gained and lost and McNemar's p."""
    line = f"{name}: accuracy {v.accuracy:.4f} +- {v.accuracy_std:.4f}, AUC {v.auc:.6f}, EER {v.eer:.4f}, " \
           f"TAR@FAR{v.far:g} {v.tar_at_far:.4f}"  # fmt: skip
    if base is not None:
        gained, lost = changes(base, ok)
        line += f" | vs initial: {gained} pairs now right, {lost} now wrong, McNemar p {mcnemar_p(gained, lost):.3f}"
    return line
