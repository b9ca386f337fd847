"""The LFW verification benchmark: the official pairs files and 10-fold protocol.

``pairs.txt`` (View 2) holds 10 folds of 300 matched then 300 mismatched pairs; the
accuracy of fold k uses the squared-L2 threshold that maximises accuracy on the
other 9 folds. ``pairsDevTest.txt`` (View 1, 500 + 500 pairs) is one set: it is
split into 10 folds the same way for a quick run. Also reported over all pairs:
ROC, AUC, EER and TAR at FAR <= 1e-3 (VAL@FAR).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdk.chips import DEFAULT_CHIP, ChipScheme, central_chip, central_face, cut


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


# --- running a face pipeline over the pairs -------------------------------------------------------


@dataclass
class Embedded:
    """Embeddings of a list of images, which of them had no face found, and time per stage."""

    embeddings: np.ndarray  # float32 [N, D]
    failed: np.ndarray  # bool [N]: no detection; aligned with the mean landmarks instead
    seconds: dict[str, float]  # stage -> total seconds

    def ms_per_face(self) -> dict[str, float]:
        n = max(len(self.failed), 1)
        per_stage = {stage: s / n * 1e3 for stage, s in self.seconds.items()}
        per_stage["total"] = sum(per_stage.values())
        return per_stage


def embed_images(paths: list[Path], detector, embedder, batch: int = 32, progress: bool = True) -> Embedded:
    """Detect, align and embed the central face of every image, streaming in batches.

    Images where the detector finds no face are counted as failed and aligned with the mean
    landmarks of the images where it did (LFW images are centred, so this is a fixed crop):
    every detector and model is treated the same way, and no pair is dropped.
    """
    import cv2
    from tqdm import tqdm

    scheme = ChipScheme.parse(embedder.metadata["chip_scheme"])
    seconds = dict.fromkeys(("decode", "detect", "align", "embed"), 0.0)
    rows: list[int] = []  # image index of each embedded chip, in embedding order
    chips: list[np.ndarray] = []
    parts: list[np.ndarray] = []

    def decode(path: Path) -> np.ndarray:
        with _timed(seconds, "decode"):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        return image

    def add(index: int, image: np.ndarray, landmarks: np.ndarray) -> None:
        with _timed(seconds, "align"):
            chips.append(cut(image, landmarks, detector.scheme, scheme))
        rows.append(index)
        if len(chips) == batch:
            flush()

    def flush() -> None:
        if chips:
            with _timed(seconds, "embed"):
                parts.append(embedder.embed(np.stack(chips)))
            chips.clear()

    failed: list[int] = []
    landmark_sum, found = 0.0, 0
    for i, path in enumerate(tqdm(paths, desc=f"faces ({detector.name})", unit="img", disable=not progress)):
        image = decode(path)
        with _timed(seconds, "detect"):
            face = central_face(detector.detect(image), image.shape)
        if face is None:
            failed.append(i)
            continue
        landmark_sum, found = landmark_sum + face.landmarks, found + 1
        add(i, image, face.landmarks)
    if found == 0:
        raise RuntimeError(f"{detector.name} found no face in any of {len(paths)} images")
    for i in failed:  # second pass, now that the mean landmarks are known
        add(i, decode(paths[i]), landmark_sum / found)
    flush()
    embeddings = np.empty((len(paths), parts[0].shape[1]), np.float32)
    embeddings[rows] = np.concatenate(parts)
    is_failed = np.zeros(len(paths), bool)
    is_failed[failed] = True
    return Embedded(embeddings, is_failed, seconds)


def lfw_chips(data: Path, count: int, detector: Any = None, scheme: ChipScheme = DEFAULT_CHIP) -> np.ndarray:
    """Chips [N, size, size, 3] of up to ``count`` LFW people (first image of each, sorted by name),
    cut by the SDK's detector (default: ``default_detector``) and ``sdk.chips``; images without a
    face are skipped."""
    import cv2

    from sdk.detect import default_detector

    detector = detector if detector is not None else default_detector()[0]
    root = data / "lfw" / "images_deepfunneled"
    if not root.is_dir():
        raise FileNotFoundError(f"LFW images not found at {root} (set FACESDK_DATA)")
    chips = []
    for person in sorted(p.name for p in root.iterdir() if p.is_dir()):
        if len(chips) == count:
            break
        image = cv2.imread(str(root / person / f"{person}_0001.jpg"), cv2.IMREAD_COLOR)
        found = central_chip(image, detector, scheme) if image is not None else None
        if found is not None:
            chips.append(found[0])
    if not chips:
        raise RuntimeError(f"no face found in LFW images under {root}")
    return np.stack(chips)


@contextlib.contextmanager
def _timed(seconds: dict[str, float], stage: str):
    """Adds the block's wall time to seconds[stage]."""
    start = time.perf_counter()
    try:
        yield
    finally:
        seconds[stage] += time.perf_counter() - start


def embed_images_dlib(paths: list[Path], upsample: int = 1, progress: bool = True) -> Embedded:
    """dlib's own pipeline, for comparison: HOG detector (upsampled once, as dlib's examples
    do), 5-point shape predictor, compute_face_descriptor with dlib's own chip. Failed images
    get the mean landmarks, exactly as in embed_images. Needs dlib-bin (a reference, not a
    runtime dependency)."""
    import dlib
    from tqdm import tqdm

    from sdk.dlib_format import dlib_model_path

    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
    describe = dlib.face_recognition_model_v1(str(dlib_model_path()))
    seconds = dict.fromkeys(("decode", "detect", "landmarks", "embed"), 0.0)
    images, shapes = [], []
    for path in tqdm(paths, desc="dlib detect", unit="img", disable=not progress):
        with _timed(seconds, "decode"):
            image = dlib.load_rgb_image(str(path))
        with _timed(seconds, "detect"):
            boxes = list(detector(image, upsample))
        images.append(image)
        if not boxes:
            shapes.append(None)
            continue
        cy, cx = image.shape[0] / 2, image.shape[1] / 2
        box = min(boxes, key=lambda b: (b.center().x - cx) ** 2 + (b.center().y - cy) ** 2)
        with _timed(seconds, "landmarks"):
            shapes.append(predictor(image, box))
    failed = np.array([s is None for s in shapes])
    if failed.all():
        raise RuntimeError(f"dlib found no face in any of {len(paths)} images")
    points = np.mean([[(p.x, p.y) for p in s.parts()] for s in shapes if s is not None], axis=0)
    boxes = np.mean([[s.rect.left(), s.rect.top(), s.rect.right(), s.rect.bottom()] for s in shapes if s], axis=0)
    mean_shape = dlib.full_object_detection(
        dlib.rectangle(*(int(round(v)) for v in boxes)), [dlib.point(int(round(x)), int(round(y))) for x, y in points]
    )
    out = []
    for image, shape in tqdm(list(zip(images, shapes)), desc="dlib embed", unit="img", disable=not progress):
        with _timed(seconds, "embed"):
            out.append(np.array(describe.compute_face_descriptor(image, shape or mean_shape), np.float32))
    return Embedded(np.stack(out), failed, seconds)


def pair_distances(embedded: Embedded, images: list[Path], pairs: Pairs) -> np.ndarray:
    """Squared L2 distance of every pair."""
    row = {path: i for i, path in enumerate(images)}
    left = embedded.embeddings[[row[p] for p in pairs.left]].astype(np.float64)
    right = embedded.embeddings[[row[p] for p in pairs.right]].astype(np.float64)
    return ((left - right) ** 2).sum(1)
