"""Face clustering: exactness against naive references, edge cases, the pairwise metric, real faces."""

from __future__ import annotations

from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evaluate.clustering import DEFAULT_THRESHOLD, lfw_people, model_threshold, pairwise_precision_recall
from sdk.clustering import METHODS, cluster_embeddings


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def blobs(people: int, per_person: int, noise: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit embeddings around random centres (far apart in 128-D), in shuffled order."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((people, 128)))
    labels = rng.permutation(np.repeat(np.arange(people), per_person))
    return unit(centres[labels] + noise * rng.standard_normal((len(labels), 128))), labels


def canonical(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0.. by first appearance, to compare partitions."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse]


def naive_average_linkage(x: np.ndarray, threshold: float) -> np.ndarray:
    """Textbook agglomerative clustering: merge the closest pair of clusters by mean pairwise
    squared L2 over the full distance matrix, one pair at a time, while it is <= threshold."""
    x = x.astype(np.float64)
    dist = ((x[:, None] - x[None]) ** 2).sum(-1)
    clusters = [[i] for i in range(len(x))]
    while len(clusters) > 1:
        link, i, j = min((dist[np.ix_(a, b)].mean(), i, j) for (i, a), (j, b) in combinations(enumerate(clusters), 2))
        if link > threshold:
            break
        clusters[i] += clusters.pop(j)
    labels = np.empty(len(x), np.int64)
    for k, members in enumerate(clusters):
        labels[members] = k
    return canonical(labels)


def naive_single_linkage(x: np.ndarray, threshold: float) -> np.ndarray:
    """Connected components of the threshold graph, by flood fill over the full distance matrix."""
    x = x.astype(np.float64)
    near = ((x[:, None] - x[None]) ** 2).sum(-1) <= threshold
    labels = np.full(len(x), -1)
    for start in range(len(x)):
        if labels[start] < 0:
            labels[start] = start
            stack = [start]
            while stack:
                for j in np.flatnonzero(near[stack.pop()] & (labels < 0)):
                    labels[j] = start
                    stack.append(j)
    return canonical(labels)


@pytest.mark.parametrize("method", METHODS)
def test_recovers_well_separated_people(method: str) -> None:
    x, truth = blobs(people=12, per_person=15, noise=0.01, seed=0)  # within ~0.01, across ~2
    labels = cluster_embeddings(x, 0.5, method)
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, canonical(truth))


def scattered(seed: int) -> np.ndarray:
    """40 random unit vectors in 3-D: distances of every size, so merges interleave in many orders."""
    return unit(np.random.default_rng(seed).standard_normal((40, 3)))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.5])
def test_average_linkage_is_exact_with_all_neighbours(seed: int, threshold: float) -> None:
    x = scattered(seed)
    expected = naive_average_linkage(x, threshold)
    np.testing.assert_array_equal(cluster_embeddings(x, threshold, neighbours=len(x)), expected)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("threshold", [0.02, 0.05, 0.1, 0.2])
def test_single_linkage_is_connected_components(seed: int, threshold: float) -> None:
    x = scattered(seed)
    np.testing.assert_array_equal(cluster_embeddings(x, threshold, "single"), naive_single_linkage(x, threshold))


@pytest.mark.parametrize("method", METHODS)
def test_deterministic_and_independent_of_input_order(method: str) -> None:
    x, _ = blobs(people=30, per_person=20, noise=0.08, seed=1)
    labels = cluster_embeddings(x, 0.8, method)
    assert 1 < labels.max() + 1 < len(x)  # a real partition, not a trivial one
    np.testing.assert_array_equal(cluster_embeddings(x.copy(), 0.8, method), labels)
    order = np.random.default_rng(2).permutation(len(x))
    shuffled = np.empty_like(labels)
    shuffled[order] = cluster_embeddings(x[order], 0.8, method)
    np.testing.assert_array_equal(canonical(shuffled), labels)


@pytest.mark.parametrize("method", METHODS)
def test_edge_cases(method: str) -> None:
    assert cluster_embeddings(np.zeros((0, 128), np.float32), 0.2, method).shape == (0,)
    np.testing.assert_array_equal(cluster_embeddings(np.ones((1, 4)), 0.2, method), [0])
    same = np.tile(unit(np.ones((1, 128))), (6, 1))
    for threshold in (0.0, 0.2):
        np.testing.assert_array_equal(cluster_embeddings(same, threshold, method), np.zeros(6))
    # Threshold 0: duplicates together, every distinct face alone.
    x, _ = blobs(people=4, per_person=1, noise=0.0, seed=3)
    np.testing.assert_array_equal(cluster_embeddings(x[[0, 1, 0, 2, 3, 1]], 0.0, method), [0, 1, 0, 2, 3, 1])


def test_rejects_bad_arguments() -> None:
    x = unit(np.ones((3, 8)))
    for threshold in (-0.1, float("nan"), float("inf"), True, "0.2"):
        with pytest.raises(ValueError, match="threshold"):
            cluster_embeddings(x, threshold)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method"):
        cluster_embeddings(x, 0.2, "complete")
    with pytest.raises(ValueError, match="neighbours"):
        cluster_embeddings(x, 0.2, neighbours=0)
    with pytest.raises(ValueError, match="2-D"):
        cluster_embeddings(np.ones(8), 0.2)
    with pytest.raises(ValueError, match="NaN|Inf|finite"):
        cluster_embeddings(np.array([[0.0, np.nan]]), 0.2)


def brute_force_precision_recall(truth: list[int], pred: list[int]) -> tuple[float, float, float]:
    pairs = list(combinations(range(len(truth)), 2))
    together = sum(pred[i] == pred[j] for i, j in pairs)
    same = sum(truth[i] == truth[j] for i, j in pairs)
    both = sum(pred[i] == pred[j] and truth[i] == truth[j] for i, j in pairs)
    precision = both / together if together else 1.0
    recall = both / same if same else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(-2, 5)), max_size=40))
def test_precision_recall_matches_brute_force(rows: list[tuple[int, int]]) -> None:
    truth, pred = [t for t, _ in rows], [p for _, p in rows]
    assert pairwise_precision_recall(np.array(truth, int), np.array(pred, int)) == pytest.approx(
        brute_force_precision_recall(truth, pred)
    )


def test_precision_recall_known_values() -> None:
    truth = ["ann", "ann", "bob", "bob"]  # any labels, not only integers
    assert pairwise_precision_recall(truth, [7, 7, 3, 3]) == (1.0, 1.0, 1.0)
    assert pairwise_precision_recall(truth, [0, 0, 0, 0]) == pytest.approx((2 / 6, 1.0, 0.5))
    assert pairwise_precision_recall(truth, [0, 1, 2, 3]) == (1.0, 0.0, 0.0)
    with pytest.raises(ValueError, match="length"):
        pairwise_precision_recall([0, 1], [0])


def test_threshold_from_the_model_else_the_default() -> None:
    assert model_threshold({"threshold": "0.140188", "model_name": "m"})[0] == 0.140188
    value, source = model_threshold({"model_name": "m"})
    assert value == DEFAULT_THRESHOLD and "no calibrated threshold" in source


def test_lfw_people_counts(data: Path) -> None:
    paths, labels, names = lfw_people(data / "lfw", min_images=10)
    assert (len(names), len(paths), len(np.unique(labels))) == (158, 4324, 158)
    assert all(path.is_file() for path in paths)


def test_clusters_real_lfw_faces(default_onnx: Path, data: Path) -> None:
    """The first 5 images of the first 10 LFW people with >= 10 images, through the default
    detector and model: average linkage separates them, single linkage chains some together."""
    from sdk.detect import default_detector
    from sdk.embed import OnnxEmbedder
    from evaluate.lfw import embed_images

    paths, labels, names = lfw_people(data / "lfw", min_images=10)
    keep = np.concatenate([np.flatnonzero(labels == person)[:5] for person in range(10)])
    detector, _ = default_detector()
    embedded = embed_images([paths[i] for i in keep], detector, OnnxEmbedder(default_onnx), progress=False)
    truth = labels[keep]
    # 0.16: the best threshold of `facesdk eval clustering --lfw-min-images 10` (F1 0.991 on 4,324 faces).
    average = pairwise_precision_recall(truth, cluster_embeddings(embedded.embeddings, 0.16))[2]
    single = pairwise_precision_recall(truth, cluster_embeddings(embedded.embeddings, 0.16, "single"))[2]
    assert average >= 0.9
    assert single < average
