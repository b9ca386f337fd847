"""Clustering faces by identity: one embedding per face in, one integer label per face out.

The default method is agglomerative clustering with *average linkage*, cut at a threshold: two
clusters merge while the mean squared L2 distance over all pairs of faces across them is
<= threshold, closest first. Single linkage (connected components of the graph of pairs within
the threshold) is kept for comparison: one chance match joins two people, so on real faces it
chains everything into a few clusters at any threshold near the verification one.

Why average linkage: on the default pipeline's embeddings it had the best pairwise F1 of the
three methods tried (average, single, Chinese whispers) on LFW and the CelebA subset, and stays
near its best over a wide band around the verification threshold (README, "Clustering", has the
figures; ``python -m evaluate.clustering`` measures them).

How average linkage runs in near-linear memory:

* For squared L2 the mean over the |A|·|B| cross pairs is ``s_A + s_B - 2 μ_A·μ_B`` (μ: mean
  embedding, s: mean squared norm), so a cluster is summarised by (size, Σx, Σ|x|²) and the
  link between two clusters costs O(dim); no distance matrix is kept.
* Only clusters joined by a candidate edge are compared. Merging at mean <= t needs a cross pair
  <= t (a minimum is at most the mean), and the link of A∪B to C is a weighted mean of the links
  of A and of B to C, so the candidate edges of a merged cluster are those of its parts. The
  starting edges are each face's ``neighbours`` nearest faces within the threshold
  (``kernels.topk``). With every face as a neighbour the result is exact average linkage; the
  default of 32 measured as close to exact and much faster (README, "Clustering").
* Merges are made in rounds: every pair of clusters that are each other's nearest candidate is
  merged at once (reciprocal nearest neighbours). Average linkage is reducible (a merge never
  brings a cluster closer to a third), so this gives the clusters of merging the closest pair
  one at a time (exactly so with the complete graph: the tests check it against a naive
  implementation), with numpy work per round over the edge list, not Python work per merge.

Identical embeddings always share a cluster (they are merged first, at distance 0, even at
threshold 0).
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable

import numpy as np
from numpy.typing import ArrayLike

from sdk import kernels
from sdk.errors import InvalidArgumentError, InvalidImageError

__all__ = ["METHODS", "cluster", "cluster_embeddings", "pairwise_precision_recall", "lfw_people"]

METHODS = ("average", "single")
_BLOCK = 256  # query rows per kernels.match call: bounds the pairs held at once
_CHUNK = 1 << 15  # edges per link computation: bounds the gathered [chunk, dim] copies


def cluster_embeddings(
    embeddings: ArrayLike, threshold: float, method: str = "average", neighbours: int = 32
) -> np.ndarray:
    """Cluster labels int64 [n] of embeddings [n, dim], numbered 0.. in order of first appearance.

    ``threshold`` is in squared L2. The model's verification threshold is a good choice for
    "average" (README, "Clustering"). ``method``: "average" (see the module docstring)
    or "single" (its cost grows with the number of pairs within the threshold). ``neighbours``:
    candidate edges per face for "average". The result is deterministic: no randomness, and the
    same for any number of threads.
    """
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise InvalidArgumentError(f"embeddings must be 2-D [n, dim], got shape {x.shape}")
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real) or not 0 <= threshold < np.inf:
        raise InvalidArgumentError(f"threshold must be a finite number >= 0, got {threshold!r}")
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(neighbours, bool) or not isinstance(neighbours, numbers.Integral) or neighbours < 1:
        raise InvalidArgumentError(f"neighbours must be a positive integer, got {neighbours!r}")
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


def cluster(
    items, threshold: float | None = None, verifier=None, method: str = "average", *, color: str = "bgr"
) -> np.ndarray:
    """``sdk.cluster``: group faces by identity.

    items: embeddings [n, D] (a 2-D float array), or images (paths, arrays, PIL images; arrays
    in the channel order ``color``, "bgr" or "rgb"), whose largest faces are embedded by
    ``verifier`` (default: a Verifier on the default model with no gallery); an image without a
    face gets label -1. threshold: squared L2, by default the verifier's (the model's calibrated
    threshold).
    """
    from sdk.images import check_color, is_pil_image

    check_color(color)
    if method not in METHODS:  # before any image is read
        raise InvalidArgumentError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if isinstance(items, np.ndarray) and items.ndim == 2 and items.dtype.kind == "f":
        if threshold is None:
            if verifier is None:
                raise InvalidArgumentError("clustering embeddings needs a threshold (or a verifier to take it from)")
            threshold = verifier.threshold
        return cluster_embeddings(items, threshold, method)
    from sdk.verifier import NoFaceError, Verifier

    single = isinstance(items, (str, os.PathLike, bytes, dict)) or is_pil_image(items)
    if items is None or single or not isinstance(items, Iterable):
        raise InvalidImageError(f"items must be a list of images or an embeddings array, got {type(items).__name__}")
    images = list(items)
    own = verifier is None
    verifier = Verifier(gallery=None) if own else verifier
    try:
        vectors, rows = [], []
        for i, image in enumerate(images):
            try:
                vectors.append(verifier.embed_largest(image, color=color))
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
