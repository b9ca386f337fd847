"""Did fine-tuning help? LFW verification of checkpoints against the network they started from.

    facesdk train compare RUN/checkpoint.pt [MORE.pt ...] [--pairs pairs.txt] [--flip]

Each model is evaluated on the same chips with evaluate.lfw's 10-fold protocol (accuracy, AUC, EER,
TAR at FAR 1e-3), and each checkpoint is paired with the initial network of its config (for the
dlib backbone: dlib's model as converted): how many pairs it now gets right that the initial one
got wrong, the reverse, and the exact two-sided McNemar p of that split. The 10-fold accuracy
moves by a few pairs whenever a fold's threshold moves, so read the split next to AUC and EER,
which need no threshold. --flip adds the initial network with test-time flip averaging (the
embedding of the chip and of its mirror, summed), the reference the ``distill.flip_mean`` target
aims at.
"""

from __future__ import annotations

import math
import os

# Idle OpenMP threads sleep (as in train.__main__): spinning ones starve a training run beside it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from train.trainer import LfwEvaluation, embed_chips  # noqa: E402


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
    from evaluate.lfw import evaluate

    v = evaluate(dist, pairs)
    position = np.searchsorted(np.unique(pairs.fold), pairs.fold)  # fold_threshold follows the folds present
    return (dist <= v.fold_threshold[position]) == pairs.same, v


def pair_outcomes(evaluation: LfwEvaluation, model: nn.Module, flip: bool = False) -> tuple[np.ndarray, object]:
    """:func:`outcomes` of `model` on the evaluation's pairs."""
    unit = embed_chips(model, evaluation.aligned.chips)
    if flip:
        unit = unit + embed_chips(model, np.ascontiguousarray(evaluation.aligned.chips[:, :, ::-1]))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return outcomes(evaluation.distances(unit), evaluation.pairs)


def describe(name: str, ok: np.ndarray, v, base: np.ndarray | None = None) -> str:
    """One line: accuracy, AUC, EER, TAR; with `base`, the pairs gained and lost and McNemar's p."""
    line = f"{name}: accuracy {v.accuracy:.4f} +- {v.accuracy_std:.4f}, AUC {v.auc:.6f}, EER {v.eer:.4f}, " \
           f"TAR@FAR{v.far:g} {v.tar_at_far:.4f}"  # fmt: skip
    if base is not None:
        gained, lost = changes(base, ok)
        line += f" | vs initial: {gained} pairs now right, {lost} now wrong, McNemar p {mcnemar_p(gained, lost):.3f}"
    return line
