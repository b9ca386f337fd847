"""The LFW verification benchmark: the official pairs files and 10-fold protocol.

``pairs.txt`` (View 2) holds 10 folds of 300 matched then 300 mismatched pairs; the
accuracy of fold k uses the squared-L2 threshold that maximises accuracy on the
other 9 folds. ``pairsDevTest.txt`` (View 1, 500 + 500 pairs) is one set: it is
split into 10 folds the same way for a quick run. Also reported over all pairs:
ROC, AUC, EER and TAR at FAR <= 1e-3 (VAL@FAR).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Pairs:
    """LFW pairs: image paths, same-person labels and fold of each pair."""

    left: list[Path]
    right: list[Path]
    same: np.ndarray  # bool [P]
    fold: np.ndarray  # int [P], 0..9

    def __len__(self) -> int:
        return len(self.same)

    def images(self) -> list[Path]:
        """Every image the pairs use, once, in first-use order."""
        return list(dict.fromkeys(self.left + self.right))


def image_path(root: Path, name: str, number: str) -> Path:
    return root / name / f"{name}_{int(number):04d}.jpg"


def read_pairs(pairs_file: Path, images: Path) -> Pairs:
    """Parse pairs.txt / pairsDevTrain.txt / pairsDevTest.txt; `images` holds <Name>/ folders.

    Files with one header number (View 1) become 10 folds by splitting the matched and the
    mismatched pairs into 10 consecutive parts each.
    """
    lines = [line.split() for line in Path(pairs_file).read_text().splitlines() if line.strip()]
    if not lines or not all(x.isdigit() for x in lines[0]) or len(lines[0]) not in (1, 2):
        raise ValueError(f"{pairs_file}: not an LFW pairs file (bad header {lines[:1]})")
    header, rows = [int(x) for x in lines[0]], lines[1:]
    folds, per_class = (header[0], header[1]) if len(header) == 2 else (1, header[0])
    if len(rows) != folds * 2 * per_class:
        raise ValueError(f"{pairs_file}: header promises {folds * 2 * per_class} pairs, found {len(rows)}")
    left, right, same, fold = [], [], [], []
    for i, row in enumerate(rows):
        if len(row) == 3:
            a, b = image_path(images, row[0], row[1]), image_path(images, row[0], row[2])
        elif len(row) == 4:
            a, b = image_path(images, row[0], row[1]), image_path(images, row[2], row[3])
        else:
            raise ValueError(f"{pairs_file}: line {i + 2} is not a pair: {' '.join(row)}")
        block, pos = divmod(i, 2 * per_class)
        is_same = pos < per_class
        if (len(row) == 3) != is_same:
            raise ValueError(f"{pairs_file}: line {i + 2}: a {'matched' if is_same else 'mismatched'} pair expected")
        left.append(a)
        right.append(b)
        same.append(is_same)
        # View 1 has one block: its 10 folds are tenths of each class.
        fold.append(block if folds > 1 else (pos % per_class) * 10 // per_class)
    return Pairs(left, right, np.array(same), np.array(fold))


@dataclass(frozen=True)
class Verification:
    """Results of the 10-fold protocol and of the ROC over all pairs."""

    fold_accuracy: np.ndarray  # [10]
    fold_threshold: np.ndarray  # [10], chosen on the other nine folds
    threshold: float  # the accuracy-maximising threshold on all pairs
    auc: float
    eer: float
    tar_at_far: float  # TAR at FAR <= far, on all pairs
    far: float
    threshold_at_far: float
    roc_far: np.ndarray
    roc_tar: np.ndarray

    @property
    def accuracy(self) -> float:
        return float(self.fold_accuracy.mean())

    @property
    def accuracy_std(self) -> float:
        return float(self.fold_accuracy.std())


def best_threshold(dist: np.ndarray, same: np.ndarray) -> float:
    """The squared-L2 threshold (same if dist <= t) with the highest accuracy; ties to the
    middle of the best run of candidate thresholds, which are the gaps between sorted distances."""
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    # Accepting the first i pairs: correct = genuine among them + impostors after them.
    correct = np.concatenate([[0], np.cumsum(s)]) + np.concatenate([[(~s).sum()], (~s).sum() - np.cumsum(~s)])
    cuts = np.concatenate([[d[0] - 1e-6], (d[:-1] + d[1:]) / 2, [d[-1] + 1e-6]])
    valid = np.concatenate([[True], d[:-1] < d[1:], [True]])  # no cut between equal distances
    correct = np.where(valid, correct, -1)
    best = np.flatnonzero(correct == correct.max())
    return float(cuts[best[len(best) // 2]])


def roc(dist: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, threshold) at every distinct distance, threshold increasing."""
    order = np.argsort(dist, kind="stable")
    d, s = dist[order], same[order]
    last = np.concatenate([d[:-1] < d[1:], [True]])  # accept ties together
    tar = np.cumsum(s)[last] / max(s.sum(), 1)
    far = np.cumsum(~s)[last] / max((~s).sum(), 1)
    return np.concatenate([[0.0], far]), np.concatenate([[0.0], tar]), np.concatenate([[-np.inf], d[last]])


def evaluate(dist: np.ndarray, pairs: Pairs, far: float = 1e-3) -> Verification:
    """10-fold accuracy (threshold from the other 9 folds) and ROC figures over all pairs."""
    dist = np.asarray(dist, np.float64)
    if dist.shape != pairs.same.shape:
        raise ValueError(f"{dist.shape[0]} distances for {len(pairs)} pairs")
    if not np.isfinite(dist).all():
        raise ValueError("distances must be finite (count failed images, do not drop them)")
    folds = np.unique(pairs.fold)
    fold_acc, fold_thr = [], []
    for k in folds:
        test = pairs.fold == k
        t = best_threshold(dist[~test], pairs.same[~test]) if len(folds) > 1 else best_threshold(dist, pairs.same)
        fold_thr.append(t)
        fold_acc.append(np.mean((dist[test] <= t) == pairs.same[test]))
    f, t, thr = roc(dist, pairs.same)
    auc = float(np.trapezoid(t, f))
    eer_i = int(np.argmin(np.abs(f - (1 - t))))
    ok = np.flatnonzero(f <= far)
    at = ok[-1]
    return Verification(
        fold_accuracy=np.array(fold_acc),
        fold_threshold=np.array(fold_thr),
        threshold=best_threshold(dist, pairs.same),
        auc=auc,
        eer=float((f[eer_i] + 1 - t[eer_i]) / 2),
        tar_at_far=float(t[at]),
        far=far,
        threshold_at_far=float(thr[at]),
        roc_far=f,
        roc_tar=t,
    )
