"""LFW pairs.txt with the same embedder and different detectors (landmarks): accuracy, TAR at
strict FAR, and McNemar on the same pairs against the first detector.

Each run's pair distances are saved to <out>/<detector>.npz, so a later call with the same
out reuses them. McNemar is exact and two-sided: on the 10-fold accuracy outcomes of all pairs,
and at each FAR on the genuine pairs accepted under each run's own threshold for that FAR.

    facesdk eval detectors yunet yunet+dlib5 --out /tmp/lfw_detectors
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluate.lfw import embed_images, evaluate, pair_distances, read_pairs
from evaluate.paired import changes, mcnemar_p, outcomes
from sdk.detect import detector_from
from sdk.embed import OnnxEmbedder


def distances(detector: str, out: Path, pairs, images: list[Path], model: Path | None = None) -> tuple[np.ndarray, int]:
    """(pair distances, images without a face) of one detector, cached in `out`."""
    cache = out / f"{detector.replace('/', '_')}.npz"  # per detector: one out folder per model
    if cache.is_file():
        saved = np.load(cache)
        return saved["dist"], int(saved["failed"])
    embedded = embed_images(images, detector_from(detector), OnnxEmbedder(model))
    dist = pair_distances(embedded, images, pairs)
    np.savez(cache, dist=dist, failed=int(embedded.failed.sum()))
    return dist, int(embedded.failed.sum())


def compare(detectors: list[str], out: Path, data: Path, fars: list[float], model: Path | None = None) -> list[str]:
    """One line per detector: images without a face, accuracy, TAR at each FAR, and against the
    first detector the pairs gained and lost with McNemar's p."""
    out.mkdir(parents=True, exist_ok=True)
    lfw = data / "lfw"
    pairs = read_pairs(lfw / "pairs.txt", lfw / "images_deepfunneled")
    images = pairs.images()
    base: dict[str, np.ndarray] = {}  # the first detector's outcomes
    lines = []
    for name in detectors:
        first = not base
        dist, failed = distances(name, out, pairs, images, model)
        ok, v = outcomes(dist, pairs)
        line = [f"{name}: no face {failed}/{len(images)}, accuracy {100 * v.accuracy:.2f}%"]
        if not first:
            line.append(_vs(base["accuracy"], ok))
        for far in fars:
            at = evaluate(dist, pairs, far=far)
            accepted = (dist <= at.threshold_at_far)[pairs.same]
            line.append(f"TAR@{far:g} {100 * at.tar_at_far:.2f}%")
            if first:
                base[f"far{far}"] = accepted
            else:
                line.append(_vs(base[f"far{far}"], accepted))
        if first:
            base["accuracy"] = ok
        lines.append(", ".join(line))
    return lines


def _vs(before: np.ndarray, now: np.ndarray) -> str:
    gained, lost = changes(before, now)
    return f"(+{gained} -{lost}, McNemar p {mcnemar_p(gained, lost):.3g})"


def detection_rate(
    data: Path, sides: list[int | None], name: str = "celeba", limit: int | None = None, progress: bool = True
) -> list[dict]:
    """Per YuNet input size (None: the image's own): images of a labelled set (every image holds
    one face) where at least one face is found, and detection ms per image (CPU time of this
    thread, so that the load of a shared machine counts less). ``limit``: the first N images."""
    import time

    import cv2
    from tqdm import tqdm

    from evaluate.calibration import labelled_images
    from sdk.detect import YuNetDetector

    paths, _ = labelled_images(data, name)
    paths = paths[:limit]
    detectors = [YuNetDetector(max_side=side, threads=1) for side in sides]
    found, seconds = [0] * len(sides), [0.0] * len(sides)
    for path in tqdm(paths, desc=f"detect ({name})", unit="img", disable=not progress):
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read {path}")
        for i, detector in enumerate(detectors):  # interleaved: load falls on every size alike
            start = time.thread_time()
            found[i] += bool(detector.detect(image))
            seconds[i] += time.thread_time() - start
    return [
        {"detector": d.name, "max_side": side, "images": len(paths), "found": f, "rate": f / len(paths),
         "cpu_ms_per_image": 1e3 * s / len(paths)}  # fmt: skip
        for d, side, f, s in zip(detectors, sides, found, seconds)
    ]
