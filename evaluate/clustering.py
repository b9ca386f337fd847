"""Clustering on real faces: pairwise precision / recall / F1 against the true identities, and
the LFW run behind the README's clustering figures (``facesdk eval clustering``)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from sdk.clustering import cluster_embeddings


def pairwise_precision_recall(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[float, float, float]:
    """Pairwise (precision, recall, F1) of a clustering against the true identities.

    Over all unordered pairs of faces: precision = pairs put together that are one person / pairs
    put together; recall = pairs of one person put together / pairs of one person. Counted from
    the contingency table, O(n log n). A clustering with no pairs together has precision 1; data
    with no same-person pair gives recall 1 (nothing to miss).
    """
    t = np.asarray(labels_true)
    p = np.asarray(labels_pred)
    if t.ndim != 1 or t.shape != p.shape:
        raise ValueError(f"labels must be 1-D and of one length, got shapes {t.shape} and {p.shape}")
    t_code = np.unique(t, return_inverse=True)[1].ravel()
    p_code = np.unique(p, return_inverse=True)[1].ravel()

    def pairs(codes: np.ndarray) -> int:
        counts = np.unique(codes, return_counts=True)[1].astype(np.int64)
        return int((counts * (counts - 1) // 2).sum())

    together = pairs(t_code * (p_code.max(initial=0) + 1) + p_code)  # cells of the contingency table
    pred, true = pairs(p_code), pairs(t_code)
    precision = together / pred if pred else 1.0
    recall = together / true if true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


# --- evaluation on LFW: facesdk eval clustering --lfw-min-images 10 ------------------------------------

DEFAULT_THRESHOLD = 0.19  # when the model has no calibrated one: most same-person pairs lie below it
SWEEP = (0.10, 0.12, 0.14, 0.16, 0.19, 0.22, 0.25)


def lfw_people(lfw_root: Path, min_images: int) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, identity labels, names) of every LFW person with at least min_images images."""
    from evaluate.lfw import image_path

    paths: list[Path] = []
    labels: list[int] = []
    names: list[str] = []
    for line in (lfw_root / "lfw-names.txt").read_text().splitlines():
        if not line.strip():
            continue
        name, count = line.split()
        if int(count) >= min_images:
            paths += [image_path(lfw_root / "images_deepfunneled", name, str(i)) for i in range(1, int(count) + 1)]
            labels += [len(names)] * int(count)
            names.append(name)
    return paths, np.array(labels, np.int64), names


def model_threshold(metadata: Mapping[str, str]) -> tuple[float, str]:
    """The model's calibrated threshold, else DEFAULT_THRESHOLD; and which of the two it is."""
    if "threshold" in metadata:
        return float(metadata["threshold"]), "the model's calibrated metadata threshold"
    return DEFAULT_THRESHOLD, "default; the model has no calibrated threshold"


def _scored(embeddings: np.ndarray, labels: np.ndarray, threshold: float, method: str) -> dict[str, float]:
    start = time.perf_counter()
    predicted = cluster_embeddings(embeddings, threshold, method)
    seconds = time.perf_counter() - start
    precision, recall, f1 = pairwise_precision_recall(labels, predicted)
    clusters = int(predicted.max(initial=-1)) + 1
    return dict(threshold=threshold, clusters=clusters, precision=precision, recall=recall, f1=f1, seconds=seconds)
