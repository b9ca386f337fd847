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

import os

# Idle OpenMP threads sleep (as in train.__main__): spinning ones starve a training run beside it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
from torch import nn  # noqa: E402

from evaluate.paired import outcomes  # noqa: E402
from train.trainer import LfwEvaluation, embed_chips  # noqa: E402


def pair_outcomes(evaluation: LfwEvaluation, model: nn.Module, flip: bool = False) -> tuple[np.ndarray, object]:
    """:func:`outcomes` of `model` on the evaluation's pairs."""
    unit = embed_chips(model, evaluation.aligned.chips)
    if flip:
        unit = unit + embed_chips(model, np.ascontiguousarray(evaluation.aligned.chips[:, :, ::-1]))
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    return outcomes(evaluation.distances(unit), evaluation.pairs)
