"""LFW pairs.txt with the same embedder and different detectors (landmarks): accuracy, TAR at
strict FAR, and McNemar on the same pairs against the first detector.

Each run's pair distances are saved to <out>/<detector>.npz, so a later call with the same
--out reuses them. McNemar is exact and two-sided: on the 10-fold accuracy outcomes of all pairs,
and at each FAR on the genuine pairs accepted under each run's own threshold for that FAR.

    python -m train.compare_detectors yunet yunet+dlib5 --out /tmp/lfw_detectors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from evaluate.lfw import embed_images, evaluate, pair_distances, read_pairs
from sdk.detect import detector_from
from sdk.embed import OnnxEmbedder, default_model_path
from sdk.paths import data_dir
from train.compare import changes, mcnemar_p, outcomes


def distances(detector: str, out: Path, pairs, images: list[Path]) -> tuple[np.ndarray, int]:
    """(pair distances, images without a face) of one detector, cached in `out`."""
    cache = out / f"{detector.replace('/', '_')}.npz"
    if cache.is_file():
        saved = np.load(cache)
        return saved["dist"], int(saved["failed"])
    embedded = embed_images(images, detector_from(detector), OnnxEmbedder(default_model_path()))
    dist = pair_distances(embedded, images, pairs)
    np.savez(cache, dist=dist, failed=int(embedded.failed.sum()))
    return dist, int(embedded.failed.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detectors", nargs="+", help="names in sdk.detect.DETECTORS; the first is the baseline")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--far", type=float, nargs="+", default=[1e-3, 1e-4])
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    lfw = data_dir() / "lfw"
    pairs = read_pairs(lfw / "pairs.txt", lfw / "images_deepfunneled")
    images = pairs.images()
    base: dict[str, np.ndarray] = {}  # the first detector's outcomes
    for name in args.detectors:
        first = not base
        dist, failed = distances(name, args.out, pairs, images)
        ok, v = outcomes(dist, pairs)
        line = [f"{name}: no face {failed}/{len(images)}, accuracy {100 * v.accuracy:.2f}%"]
        if not first:
            line.append(_vs(base["accuracy"], ok))
        for far in args.far:
            at = evaluate(dist, pairs, far=far)
            accepted = (dist <= at.threshold_at_far)[pairs.same]
            line.append(f"TAR@{far:g} {100 * at.tar_at_far:.2f}%")
            if first:
                base[f"far{far}"] = accepted
            else:
                line.append(_vs(base[f"far{far}"], accepted))
        if first:
            base["accuracy"] = ok
        print(", ".join(line))


def _vs(before: np.ndarray, now: np.ndarray) -> str:
    gained, lost = changes(before, now)
    return f"(+{gained} -{lost}, McNemar p {mcnemar_p(gained, lost):.3g})"


if __name__ == "__main__":
    main()
