"""Verification thresholds that meet a target false-accept rate on a labelled set.

Every pair of faces in the set is scored (squared L2, through the C++ kernels): pairs of one
identity are genuine, all others impostors. The threshold is the largest distance that accepts
at most `far` of the impostor pairs; it is stored in the model's metadata for the Verifier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sdk import kernels

# Labelled sets in the data folder. Calibrate on these, never on LFW's test pairs, so that the
# LFW figures stay honest: CelebA is another dataset; LFW's View 1 training people do appear in
# View 2 folds, which only matters if one reports TAR at this threshold on pairs.txt.
SETS = ("celeba", "lfw-devtrain")


def labelled_images(data: Path, name: str) -> tuple[list[Path], np.ndarray]:
    """(image paths, integer identity labels) of a labelled set in the data folder."""
    if name == "celeba":
        root = data / "celeba_subset"
        rows = [line.split() for line in (root / "identities.txt").read_text().splitlines() if line.strip()]
        paths = [root / rel for _, rel in rows]
        names = [identity for identity, _ in rows]
    elif name == "lfw-devtrain":
        root = data / "lfw"
        lines = (root / "peopleDevTrain.txt").read_text().split("\n")[1:]
        paths, names = [], []
        for person, count in (line.split() for line in lines if line.strip()):
            for i in range(1, int(count) + 1):
                paths.append(root / "images_deepfunneled" / person / f"{person}_{i:04d}.jpg")
                names.append(person)
    else:
        raise ValueError(f"unknown labelled set {name!r}; choose from {', '.join(SETS)}")
    _, labels = np.unique(names, return_inverse=True)
    return paths, labels


@dataclass(frozen=True)
class Calibration:
    threshold: float  # squared L2: same person if distance <= threshold
    target_far: float
    far: float  # achieved on the impostor pairs
    tar: float  # genuine pairs accepted
    genuine_pairs: int
    impostor_pairs: int


def calibrate(embeddings: np.ndarray, labels: np.ndarray, far: float) -> Calibration:
    """The largest threshold with FAR <= far over all pairs of the set."""
    if not 0 < far < 1:
        raise ValueError(f"far must be in (0, 1), got {far}")
    labels = np.asarray(labels)
    dist = kernels.sq_l2(embeddings, embeddings)
    upper = np.triu(np.ones(dist.shape, bool), k=1)
    same = labels[:, None] == labels[None, :]
    genuine, impostor = dist[upper & same], dist[upper & ~same]
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("calibration needs identities with at least two images and at least two identities")
    allowed = int(np.floor(far * len(impostor)))  # impostor pairs we may accept
    if allowed >= len(impostor):
        threshold = float(impostor.max())
    else:
        kth = float(np.partition(impostor, allowed)[allowed])  # the first impostor we must reject
        threshold = float(np.nextafter(np.float32(kth), np.float32(0)))
    return Calibration(
        threshold=threshold,
        target_far=far,
        far=float(np.mean(impostor <= threshold)),
        tar=float(np.mean(genuine <= threshold)),
        genuine_pairs=len(genuine),
        impostor_pairs=len(impostor),
    )
