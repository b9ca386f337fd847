"""Clustering faces by identity: one embedding per face in, one integer label per face out.

The default method is agglomerative clustering with *average linkage*, cut at a threshold: two
clusters merge while the mean squared L2 distance over all pairs of faces across them is
<= threshold, closest first. Single linkage (connected components of the graph of pairs within
the threshold) is kept for comparison: one chance match joins two people, so on real faces it
chains everything into a few clusters at any threshold near the verification one.

Why average linkage: pairwise F1 on the default pipeline's embeddings (YuNet, dlib's ResNet),
thresholds 0.04..0.22 in steps of 0.01: the best, and at 0.14 (the threshold `facesdk calibrate`
finds for the default model at FAR 1e-3 on CelebA):

    faces (identities)                  average linkage     single linkage      Chinese whispers
    LFW, people with >= 10 images       0.991 @0.16, 0.983  0.970 @0.09, 0.055  0.989 @0.12, 0.950
      4,324 (158)
    LFW, everyone: 13,233 (5,749)       0.969 @0.14, 0.969  0.896 @0.07, 0.007  0.968 @0.09, 0.399
    CelebA subset: 5,093 (239)          0.880 @0.16, 0.861  0.775 @0.09, 0.010  0.861 @0.12, 0.819

Average linkage is the best of the three everywhere, and near its best over a wide band around
the verification threshold (within 5% of it from 0.13 to 0.17 on all three sets). Chinese whispers
(dlib's face clustering; measured with a seeded Python version, not shipped) comes close only at
a lower threshold, collapses just above it, and is randomised.

How average linkage runs in near-linear memory:

* For squared L2 the mean over the |A|·|B| cross pairs is ``s_A + s_B - 2 μ_A·μ_B`` (μ: mean
  embedding, s: mean squared norm), so a cluster is summarised by (size, Σx, Σ|x|²) and the
  link between two clusters costs O(dim); no distance matrix is kept.
* Only clusters joined by a candidate edge are compared. Merging at mean <= t needs a cross pair
  <= t (a minimum is at most the mean), and the link of A∪B to C is a weighted mean of the links
  of A and of B to C, so the candidate edges of a merged cluster are those of its parts. The
  starting edges are each face's ``neighbours`` nearest faces within the threshold
  (``kernels.topk``). With every face as a neighbour the result is exact average linkage; with
  32 (the default) pairwise F1 on the first and third sets stayed within 0.002 of exact at every
  threshold tried, 20-30x faster (64 matched exact, 1.7x slower than 32).
* Merges are made in rounds: every pair of clusters that are each other's nearest candidate is
  merged at once (reciprocal nearest neighbours). Average linkage is reducible (a merge never
  brings a cluster closer to a third), so this gives the clusters of merging the closest pair
  one at a time (exactly so with the complete graph: the tests check it against a naive
  implementation), with numpy work per round over the edge list, not Python work per merge.

Identical embeddings always share a cluster (they are merged first, at distance 0, even at
threshold 0).
"""

from __future__ import annotations

import argparse
import json
import numbers
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from numpy.typing import ArrayLike

from sdk import kernels

__all__ = ["METHODS", "cluster", "cluster_embeddings", "pairwise_precision_recall", "lfw_people"]

METHODS = ("average", "single")
_BLOCK = 256  # query rows per kernels.match call: bounds the pairs held at once
_CHUNK = 1 << 15  # edges per link computation: bounds the gathered [chunk, dim] copies


def cluster_embeddings(
    embeddings: ArrayLike, threshold: float, method: str = "average", neighbours: int = 32
) -> np.ndarray:
    """Cluster labels int64 [n] of embeddings [n, dim], numbered 0.. in order of first appearance.

    ``threshold`` is in squared L2. The verification threshold is a good choice for "average":
    with the default model, F1 was within 5% of its best from 0.13 to 0.17 on LFW and CelebA, and
    its calibrated threshold at FAR 1e-3 is 0.14. ``method``: "average" (see the module docstring)
    or "single" (its cost grows with the number of pairs within the threshold). ``neighbours``:
    candidate edges per face for "average". The result is deterministic: no randomness, and the
    same for any number of threads.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [n, dim], got shape {x.shape}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < np.inf:
        raise ValueError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, numbers.Integral) or neighbours < 1:
        raise ValueError(f"neighbours must be a positive integer, got {neighbours!r}")
    if len(x) == 0:
        return np.zeros(0, np.int64)
    # Distinct rows only, each with its count: duplicates join at distance 0 whatever the rounding.
    unique, inverse, counts = np.unique(
        np.ascontiguousarray(x, np.float32), axis=0, return_inverse=True, return_counts=True
    )
    if method == "single":
        root = _single_linkage(unique, float(threshold))
    else:
        root = _average_linkage(unique, counts, float(threshold), int(neighbours))
    return _first_appearance(root[inverse.ravel()])


def cluster(items, threshold: float | None = None, verifier=None, method: str = "average") -> np.ndarray:
    """``sdk.cluster``: group faces by identity.

    items: embeddings [n, D] (a 2-D float array), or images (paths or BGR arrays), whose
    largest faces are embedded by ``verifier`` (default: a Verifier on the default model with
    no gallery); an image without a face gets label -1. threshold: squared L2, by default the
    verifier's (the model's calibrated threshold).
    """
    if isinstance(items, np.ndarray) and items.ndim == 2 and items.dtype.kind == "f":
        if threshold is None:
            if verifier is None:
                raise ValueError("clustering embeddings needs a threshold (or a verifier to take it from)")
            threshold = verifier.threshold
        return cluster_embeddings(items, threshold, method)
    from sdk.verifier import NoFaceError, Verifier

    images = list(items)
    own = verifier is None
    verifier = Verifier(gallery=None) if own else verifier
    try:
        vectors, rows = [], []
        for i, image in enumerate(images):
            try:
                vectors.append(verifier.embed_largest(image))
            except NoFaceError:
                continue
            rows.append(i)
        labels = np.full(len(images), -1, np.int64)
        if vectors:
            limit = verifier.threshold if threshold is None else threshold
            labels[rows] = cluster_embeddings(np.array(vectors), limit, method)
        return labels
    finally:
        if own:
            verifier.close()


def _first_appearance(root: np.ndarray) -> np.ndarray:
    _, first, inverse = np.unique(root, return_index=True, return_inverse=True)
    rank = np.empty(len(first), np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse]


def _flatten(parent: np.ndarray) -> np.ndarray:
    """Every node's root, by pointer jumping (parents always have lower ids: no cycles)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return parent
        parent = grand


def _single_linkage(x: np.ndarray, threshold: float) -> np.ndarray:
    """Root of each row's connected component in the graph of pairs within the threshold."""
    parent = np.arange(len(x))
    for start in range(0, len(x), _BLOCK):
        m = kernels.match(x[start : start + _BLOCK], x, threshold)
        a, b = m.query + start, m.gallery
        while True:  # hook each edge's higher root under its lower one until the edges agree
            ra, rb = parent[a], parent[b]
            differ = ra != rb
            if not differ.any():
                break
            np.minimum.at(parent, np.maximum(ra, rb)[differ], np.minimum(ra, rb)[differ])
            parent = _flatten(parent)
    return parent


def _average_linkage(x: np.ndarray, counts: np.ndarray, threshold: float, neighbours: int) -> np.ndarray:
    """Root of each row's cluster under average linkage cut at the threshold."""
    n = len(x)
    size = counts.astype(np.float64)
    total = x.astype(np.float64) * size[:, None]  # Σx over each cluster
    total_sq = (x.astype(np.float64) ** 2).sum(1) * size  # Σ|x|² over each cluster
    idx, dist = kernels.topk(x, x, min(neighbours + 1, n))  # +1: a row is its own nearest
    a = np.repeat(np.arange(n), idx.shape[1])
    b, d = idx.ravel(), dist.ravel()
    near = d <= threshold
    a, b, link = _relabel(a[near], b[near], d[near].astype(np.float64), n)
    parent = np.arange(n)
    # Clusters whose links must be (re)computed; all at first, so that every link comes from
    # the cluster sums in float64, not from the kernels' float32 distances.
    merged = np.ones(n, bool)
    while True:
        touched = merged[a] | merged[b]
        link[touched] = _links(a[touched], b[touched], size, total, total_sq)
        close = link <= threshold
        a, b, link = a[close], b[close], link[close]
        if len(a) == 0:
            return _flatten(parent)
        # Each cluster's nearest candidate is its first edge in (link, a, b) order; ties broken
        # by ids make the order total, so the closest edge overall is always reciprocal.
        order = np.lexsort((b, a, link))
        a, b, link = a[order], b[order], link[order]
        rank = np.arange(len(a))
        first = np.full(n, len(a))
        np.minimum.at(first, a, rank)
        np.minimum.at(first, b, rank)
        mutual = (first[a] == rank) & (first[b] == rank)
        keep, gone = a[mutual], b[mutual]  # a < b: the merged cluster keeps the lower id
        size[keep] += size[gone]
        total[keep] += total[gone]
        total_sq[keep] += total_sq[gone]
        parent[gone] = keep
        merged[:] = False
        merged[keep] = True
        a, b, link = _relabel(parent[a], parent[b], link, n)


def _relabel(a: np.ndarray, b: np.ndarray, link: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Undirected edges as (lower, higher) id pairs, once each, without self-edges. After a round
    of merges, the links of edges touching a merged cluster are recomputed, so which copy of a
    duplicate is kept does not matter."""
    inside = a == b
    a, b, link = a[~inside], b[~inside], link[~inside]
    key, first = np.unique(np.minimum(a, b) * n + np.maximum(a, b), return_index=True)
    return key // n, key % n, link[first]


def _links(a: np.ndarray, b: np.ndarray, size: np.ndarray, total: np.ndarray, total_sq: np.ndarray) -> np.ndarray:
    """Mean squared L2 over all cross pairs of clusters a and b: s_a + s_b - 2 μ_a·μ_b."""
    out = np.empty(len(a))
    for start in range(0, len(a), _CHUNK):
        i, j = a[start : start + _CHUNK], b[start : start + _CHUNK]
        dot = np.einsum("ij,ij->i", total[i], total[j]) / (size[i] * size[j])
        out[start : start + _CHUNK] = total_sq[i] / size[i] + total_sq[j] / size[j] - 2 * dot
    return np.maximum(out, 0.0)


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


# --- evaluation on LFW: python -m sdk.clustering --lfw-min-images 10 ------------------------------------

DEFAULT_THRESHOLD = 0.19  # when the model has no calibrated one: most same-person pairs lie below it
SWEEP = (0.10, 0.12, 0.14, 0.16, 0.19, 0.22, 0.25)


def lfw_people(lfw_root: Path, min_images: int) -> tuple[list[Path], np.ndarray, list[str]]:
    """(image paths, identity labels, names) of every LFW person with at least min_images images."""
    from sdk.lfw import image_path

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
    from sdk.data import data_dir
    from sdk.detect import default_detector
    from sdk.embed import OnnxEmbedder, default_model_path
    from sdk.lfw import embed_images

    parser = argparse.ArgumentParser(prog="python -m sdk.clustering", description=__doc__.splitlines()[0])
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
