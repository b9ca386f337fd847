"""Clustering on real faces: pairwise precision / recall / F1 against the true identities, and
the LFW run behind the README's clustering figures (``python -m evaluate.clustering``)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from sdk.clustering import METHODS, cluster_embeddings


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


# --- evaluation on LFW: python -m evaluate.clustering --lfw-min-images 10 ------------------------------------

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


def main(argv: list[str] | None = None) -> int:
    from sdk.paths import data_dir
    from sdk.detect import default_detector
    from sdk.embed import OnnxEmbedder, default_model_path
    from evaluate.lfw import embed_images

    parser = argparse.ArgumentParser(prog="python -m evaluate.clustering", description=__doc__.splitlines()[0])
    parser.add_argument("--lfw-min-images", type=int, default=10, help="LFW people with at least this many images")
    parser.add_argument("--threshold", type=float, help="squared L2 (default: the model's calibrated one, else 0.19)")
    parser.add_argument("--method", choices=METHODS, default="average")
    parser.add_argument("--data", type=Path, default=data_dir(), help="data folder holding lfw/")
    parser.add_argument("--model", type=Path, default=None, help="ONNX embedding model (default: the default model)")
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    if not (args.data / "lfw" / "lfw-names.txt").is_file():
        parser.error(f"LFW not found: no {args.data / 'lfw' / 'lfw-names.txt'} (set --data or FACESDK_DATA)")
    paths, labels, names = lfw_people(args.data / "lfw", args.lfw_min_images)
    if not names:
        parser.error(f"no LFW person has {args.lfw_min_images} images")
    detector, _ = default_detector()
    embedder = OnnxEmbedder(args.model or default_model_path())
    print(f"LFW people with >= {args.lfw_min_images} images: {len(names)} identities, {len(paths):,} faces")
    print(f"model {embedder.name} ({embedder.path}), detector {detector.name}")
    start = time.perf_counter()
    embedded = embed_images(paths, detector, embedder)
    embed_seconds = time.perf_counter() - start
    no_face = int(embedded.failed.sum())
    print(f"embedded in {embed_seconds:.1f} s; no face found in {no_face} images (aligned with the mean landmarks)")

    if args.threshold is None:
        threshold, source = model_threshold(embedder.metadata)
    else:
        threshold, source = args.threshold, "--threshold"
    result = _scored(embedded.embeddings, labels, threshold, args.method)
    print(f"threshold {threshold:.4f} ({source}), method {args.method}")
    print(
        f"true identities {len(names)}, clusters {result['clusters']}, pairwise precision {result['precision']:.4f}, "
        f"recall {result['recall']:.4f}, F1 {result['f1']:.4f}, clustering time {result['seconds']:.2f} s"
    )
    sweep = [_scored(embedded.embeddings, labels, t, args.method) for t in sorted({*SWEEP, threshold})]
    print("\n| threshold | clusters | precision | recall | F1 | seconds |\n|---:|---:|---:|---:|---:|---:|")
    for row in sweep:
        print(
            f"| {row['threshold']:.4f} | {row['clusters']} | {row['precision']:.4f} | {row['recall']:.4f} "
            f"| {row['f1']:.4f} | {row['seconds']:.2f} |"
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        summary = {
            "min_images": args.lfw_min_images,
            "identities": len(names),
            "faces": len(paths),
            "no_face": no_face,
            "model": str(embedder.path),
            "detector": detector.name,
            "method": args.method,
            "threshold_source": source,
            "embed_seconds": embed_seconds,
            **result,
            "sweep": sweep,
        }
        args.json.write_text(json.dumps(summary, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
