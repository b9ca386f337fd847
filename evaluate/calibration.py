"""Verification thresholds that meet a target false-accept rate on a labelled set.

Every pair of faces in the set is scored (squared L2, through the C++ kernels): pairs of one
identity are genuine, all others impostors. The threshold for a target FAR is the largest
distance that accepts at most that fraction of the impostor pairs. The thresholds for several
FARs are stored in the model's metadata (``threshold_table``, JSON {far: threshold}), and the
one for the default FAR as ``threshold``, for the Verifier.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from sdk import kernels, pfe

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
    # squared L2: same person if distance <= threshold; MLS (sdk.pfe.calibrate_mls): if score >= threshold
    threshold: float
    target_far: float
    far: float  # achieved on the impostor pairs
    tar: float  # genuine pairs accepted
    genuine_pairs: int
    impostor_pairs: int


def calibrate(embeddings: np.ndarray, labels: np.ndarray, fars: Sequence[float]) -> list[Calibration]:
    """For each target FAR, the largest squared-L2 threshold with FAR <= far over all pairs of the set."""
    return calibrate_pairwise(kernels.sq_l2(embeddings, embeddings), labels, fars)


def calibrate_pairwise(dissimilarity: np.ndarray, labels: np.ndarray, fars: Sequence[float]) -> list[Calibration]:
    """For each target FAR, the largest threshold on an [n, n] float32 matrix of pairwise
    dissimilarities (same person if <= threshold) with FAR <= far over the pairs i < j."""
    if not all(0 < far < 1 for far in fars):
        raise ValueError(f"every far must be in (0, 1), got {list(fars)}")
    labels = np.asarray(labels)
    if labels.shape != (len(dissimilarity),):
        raise ValueError(f"{labels.shape} labels for {len(dissimilarity)} faces")
    upper = np.triu(np.ones(dissimilarity.shape, bool), k=1)
    same = labels[:, None] == labels[None, :]
    genuine, impostor = dissimilarity[upper & same], np.sort(dissimilarity[upper & ~same])
    if len(genuine) == 0 or len(impostor) == 0:
        raise ValueError("calibration needs identities with at least two images and at least two identities")
    out = []
    for far in fars:
        allowed = int(np.floor(far * len(impostor)))  # impostor pairs we may accept
        if allowed >= len(impostor):
            threshold = float(impostor[-1])
        else:  # just below the first impostor we must reject
            threshold = float(np.nextafter(np.float32(impostor[allowed]), np.float32(-np.inf)))
        out.append(
            Calibration(
                threshold=threshold,
                target_far=far,
                far=float(np.searchsorted(impostor, threshold, side="right") / len(impostor)),
                tar=float(np.mean(genuine <= threshold)),
                genuine_pairs=len(genuine),
                impostor_pairs=len(impostor),
            )
        )
    return out


def calibrate_mls(mu: ArrayLike, sigma_sq: ArrayLike, labels: ArrayLike, fars: Sequence[float]) -> list[Calibration]:
    """For each target FAR, the lowest MLS threshold with FAR <= far over all pairs of the set."""
    if not fars:
        raise ValueError("no far to calibrate for")
    scores = pfe.mls(mu, sigma_sq, mu, sigma_sq)
    # -MLS is a dissimilarity (negation is exact in float32): calibrate it as one, flip back.
    np.negative(scores, out=scores)
    return [replace(c, threshold=-c.threshold) for c in calibrate_pairwise(scores, np.asarray(labels), fars)]


def calibrate_quality(sigma_sq: ArrayLike, reject: Sequence[float]) -> dict[float, float]:
    """{fraction: q}: the quality below which that fraction of these faces falls."""
    if not reject or not all(0 < r < 1 for r in reject):
        raise ValueError(f"every reject fraction must be in (0, 1), got {list(reject)}")
    q = np.asarray(pfe.quality(sigma_sq), np.float64).reshape(-1)
    return {float(r): float(np.quantile(q, r)) for r in reject}
