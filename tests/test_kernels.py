"""The matching kernels (sdk.kernels) against a float64 numpy reference, on every
instruction set this CPU runs, plus properties, bad input and threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk import kernels

ISAS = kernels.available_isas()


@pytest.fixture(params=ISAS)
def isa(request):
    """Runs a test once per instruction set, restoring the default after."""
    before = kernels.isa()
    kernels.set_isa(request.param)
    yield request.param
    kernels.set_isa(before)


def reference(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    q64, g64 = q.astype(np.float64), g.astype(np.float64)
    return ((q64[:, None, :] - g64[None, :, :]) ** 2).sum(-1)


def tolerance(q: np.ndarray, g: np.ndarray) -> np.ndarray:
    """float32 error bound of |q|^2 + |g|^2 - 2 q.g: a few ulps of the norms, growing with dim."""
    qn = (q.astype(np.float64) ** 2).sum(1)
    gn = (g.astype(np.float64) ** 2).sum(1)
    return 4 * q.shape[1] * np.finfo(np.float32).eps * (qn[:, None] + gn[None, :]) + 1e-30


def embeddings(rng: np.random.Generator, n: int, dim: int, unit: bool = True) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    if unit:
        x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x


SHAPES = [  # (queries, gallery, dim): empty, tiny, SIMD-awkward and realistic
    (0, 5, 128),
    (5, 0, 128),
    (0, 0, 3),
    (1, 1, 1),
    (3, 50, 1),
    (1, 100, 127),
    (2, 33, 128),
    (7, 129, 128),
    (13, 100, 127),
    (25, 1000, 128),
    (64, 300, 512),
    (5, 17, 3),
]


@pytest.mark.parametrize("nq,ng,dim", SHAPES)
def test_sq_l2_matches_reference(isa, nq, ng, dim):
    rng = np.random.default_rng(nq * 1000 + ng + dim)
    q, g = embeddings(rng, nq, dim), embeddings(rng, ng, dim)
    got = kernels.sq_l2(q, g)
    assert got.shape == (nq, ng) and got.dtype == np.float32
    assert np.all(np.abs(got - reference(q, g)) <= tolerance(q, g))
    assert np.all(got >= 0)


@pytest.mark.parametrize("nq,ng,dim", SHAPES)
@pytest.mark.parametrize("k", [1, 5])
def test_topk_matches_reference(isa, nq, ng, dim, k):
    rng = np.random.default_rng(nq * 7 + ng + dim)
    q, g = embeddings(rng, nq, dim), embeddings(rng, ng, dim)
    idx, dist = kernels.topk(q, g, k)
    assert idx.shape == dist.shape == (nq, k)
    assert idx.dtype == np.int64 and dist.dtype == np.float32
    full = kernels.sq_l2(q, g)
    ref = reference(q, g)
    kk = min(k, ng)
    # Exactly the k smallest of the kernels' own distances, ties to the lower index...
    expected = np.argsort(full, axis=1, kind="stable")[:, :kk]
    np.testing.assert_array_equal(idx[:, :kk], expected)
    np.testing.assert_array_equal(dist[:, :kk], np.take_along_axis(full, expected, 1))
    # ...which are the true nearest up to float32 rounding.
    true_kth = np.sort(ref, axis=1)[:, :kk]
    assert np.all(np.abs(dist[:, :kk] - true_kth) <= tolerance(q, g)[:, :kk].max(initial=0) + 1e-30)
    # Missing neighbours when the gallery is short.
    assert np.all(idx[:, kk:] == -1) and np.all(np.isinf(dist[:, kk:]))


@pytest.mark.parametrize("nq,ng,dim", SHAPES)
def test_match_matches_reference(isa, nq, ng, dim):
    rng = np.random.default_rng(nq + ng * 3 + dim)
    q, g = embeddings(rng, nq, dim), embeddings(rng, ng, dim)
    full = kernels.sq_l2(q, g)
    threshold = float(np.median(full)) if full.size else 1.0
    m = kernels.match(q, g, threshold)
    rows, cols = np.nonzero(full <= threshold)  # row-major: sorted by (query, gallery)
    np.testing.assert_array_equal(m.query, rows)
    np.testing.assert_array_equal(m.gallery, cols)
    np.testing.assert_array_equal(m.distance, full[rows, cols])
    # Against the float64 truth, only pairs within rounding of the threshold may differ.
    ref = reference(q, g)
    disagree = (full <= threshold) != (ref <= threshold)
    assert np.all(np.abs(ref - threshold)[disagree] <= tolerance(q, g)[disagree])


def test_self_distance_is_exactly_zero(isa):
    x = embeddings(np.random.default_rng(0), 40, 128, unit=False) * 3
    assert np.all(np.diagonal(kernels.sq_l2(x, x)) == 0)
    assert np.all(kernels.sq_l2(x[:1], x[:1]) == 0)  # the one-query path too
    idx, dist = kernels.topk(x, x, 1)
    np.testing.assert_array_equal(idx[:, 0], np.arange(40))
    assert np.all(dist == 0)


def test_ties_go_to_the_lower_index(isa):
    g = np.repeat(embeddings(np.random.default_rng(1), 3, 16), 40, axis=0)  # 40 copies of 3 rows
    q = g[[0, 40, 80]]
    idx, _ = kernels.topk(q, g, 5)
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3, 4], [40, 41, 42, 43, 44], [80, 81, 82, 83, 84]])


def test_threshold_is_inclusive_and_infinite_threshold_takes_all(isa):
    x = np.eye(4, dtype=np.float32)
    m = kernels.match(x, x, 2.0)  # orthonormal: every off-diagonal distance is exactly 2
    assert len(m.query) == 16
    assert len(kernels.match(x, x, np.nextafter(np.float32(2), np.float32(0))).query) == 4
    assert len(kernels.match(x, x, float("inf")).query) == 16


def test_paths_agree_across_batch_sizes(isa):
    """The batched path and the one-query path give the same neighbours."""
    rng = np.random.default_rng(2)
    g = embeddings(rng, 2000, 128)
    q = g[rng.choice(2000, 40, replace=False)] + 0.05 * embeddings(rng, 40, 128)
    idx_batch, dist_batch = kernels.topk(q, g, 3)
    for i in range(0, 40, 7):
        idx_one, dist_one = kernels.topk(q[i : i + 1], g, 3)
        np.testing.assert_array_equal(idx_one[0], idx_batch[i])
        np.testing.assert_allclose(dist_one[0], dist_batch[i], atol=1e-5)


def test_large_inputs_use_threads_and_stay_exact(isa):
    """Big enough to split the gallery across threads; merged results stay exact."""
    rng = np.random.default_rng(3)
    q, g = embeddings(rng, 40, 128), embeddings(rng, 60_000, 128)
    idx, dist = kernels.topk(q, g, 4)
    full = kernels.sq_l2(q, g)
    expected = np.argsort(full, axis=1, kind="stable")[:, :4]
    np.testing.assert_array_equal(idx, expected)
    m = kernels.match(q, g, 1.6)
    rows, cols = np.nonzero(full <= 1.6)
    np.testing.assert_array_equal(m.query, rows)
    np.testing.assert_array_equal(m.gallery, cols)


def test_many_threads_give_the_serial_results():
    rng = np.random.default_rng(4)
    g = embeddings(rng, 20_000, 128)
    batches = [embeddings(rng, n, 128) for n in (1, 2, 3, 17, 64, 1, 130, 5)]
    serial = [(kernels.topk(q, g, 3), kernels.match(q, g, 1.7)) for q in batches]
    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(3):
            results = list(pool.map(lambda q: (kernels.topk(q, g, 3), kernels.match(q, g, 1.7)), batches))
            for (topk_s, match_s), (topk_t, match_t) in zip(serial, results):
                for a, b in zip(topk_s + tuple(match_s), topk_t + tuple(match_t)):
                    np.testing.assert_array_equal(a, b)


def test_conversions_float64_integers_and_views(isa):
    rng = np.random.default_rng(5)
    q, g = embeddings(rng, 6, 32), embeddings(rng, 50, 32)
    base = kernels.sq_l2(q, g)
    np.testing.assert_array_equal(kernels.sq_l2(q.astype(np.float64), g.astype(np.float64)), base)
    np.testing.assert_array_equal(kernels.sq_l2(q, np.asfortranarray(g)), base)
    wide = np.zeros((50, 64), np.float32)
    wide[:, ::2] = g
    np.testing.assert_array_equal(kernels.sq_l2(q, wide[:, ::2]), base)  # strided view
    ints = np.arange(12, dtype=np.int32).reshape(4, 3)
    np.testing.assert_array_equal(kernels.sq_l2(ints, ints[:1]), [[0], [27], [108], [243]])
    np.testing.assert_array_equal(kernels.sq_l2([[0.0, 0.0]], [[3.0, 4.0]]), [[25.0]])


BAD_INPUTS = [
    (lambda: kernels.sq_l2(None, np.zeros((2, 3))), TypeError, "queries"),
    (lambda: kernels.sq_l2(np.zeros((2, 3)), None), TypeError, "gallery"),
    (lambda: kernels.sq_l2(np.zeros(3), np.zeros((2, 3))), ValueError, "queries must be 2-D"),
    (lambda: kernels.sq_l2(np.zeros((2, 3)), np.zeros((2, 3, 1))), ValueError, "gallery must be 2-D"),
    (lambda: kernels.sq_l2(np.zeros((2, 3)), np.zeros((2, 4))), ValueError, "differ in dim"),
    (lambda: kernels.sq_l2(np.zeros((2, 0)), np.zeros((2, 0))), ValueError, "dim >= 1"),
    (lambda: kernels.sq_l2(np.array([["a"]]), np.zeros((1, 1))), TypeError, "real numbers"),
    (lambda: kernels.sq_l2(np.zeros((1, 2), complex), np.zeros((1, 2))), TypeError, "real numbers"),
    (lambda: kernels.sq_l2(np.zeros((1, 2), bool), np.zeros((1, 2))), TypeError, "real numbers"),
    (lambda: kernels.sq_l2([[1.0], [1.0, 2.0]], np.zeros((1, 2))), TypeError, "queries"),
    (lambda: kernels.topk(np.zeros((1, 2)), np.zeros((3, 2)), 0), ValueError, "k must be >= 1"),
    (lambda: kernels.topk(np.zeros((1, 2)), np.zeros((3, 2)), -2), ValueError, "k must be >= 1"),
    (lambda: kernels.topk(np.zeros((1, 2)), np.zeros((3, 2)), 1.5), TypeError, "k must be an integer"),
    (lambda: kernels.topk(np.zeros((1, 2)), np.zeros((3, 2)), True), TypeError, "k must be an integer"),
    (lambda: kernels.match(np.zeros((1, 2)), np.zeros((3, 2)), -0.1), ValueError, "non-negative"),
    (lambda: kernels.match(np.zeros((1, 2)), np.zeros((3, 2)), float("nan")), ValueError, "non-negative"),
    (lambda: kernels.match(np.zeros((1, 2)), np.zeros((3, 2)), "1.0"), TypeError, "threshold"),
    (lambda: kernels.set_isa("sse9"), ValueError, "not available"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf, 1e30])
@pytest.mark.parametrize("nq", [0, 1, 9])
@pytest.mark.parametrize("ng,row", [(500, 321), (60_000, 40_321)])  # one thread; several
def test_non_finite_embeddings_are_rejected(isa, bad, nq, ng, row):
    rng = np.random.default_rng(6)
    q, g = embeddings(rng, max(nq, 1), 16), embeddings(rng, ng, 16)
    g[row, 5] = bad
    with pytest.raises(ValueError, match=f"G row {row} contains NaN or Inf"):
        kernels.topk(q[:nq], g, 2)
    with pytest.raises(ValueError, match=f"G row {row}"):
        kernels.match(q[:nq], g, 1.0)
    q[0, 3] = bad
    with pytest.raises(ValueError, match="Q row 0 contains NaN or Inf"):
        kernels.sq_l2(q, g[:10])


finite32 = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(
    data=st.data(),
    nq=st.integers(0, 9),
    ng=st.integers(0, 70),
    dim=st.integers(1, 40),
    k=st.integers(1, 8),
)
def test_property_kernels_agree_with_each_other_and_the_reference(data, nq, ng, dim, k):
    q = data.draw(hnp.arrays(np.float32, (nq, dim), elements=finite32))
    g = data.draw(hnp.arrays(np.float32, (ng, dim), elements=finite32))
    full = kernels.sq_l2(q, g)
    assert np.all(np.abs(full - reference(q, g)) <= tolerance(q, g))
    idx, dist = kernels.topk(q, g, k)
    kk = min(k, ng)
    np.testing.assert_array_equal(idx[:, :kk], np.argsort(full, axis=1, kind="stable")[:, :kk])
    threshold = data.draw(st.floats(0, 4e6, allow_nan=False))
    m = kernels.match(q, g, threshold)
    rows, cols = np.nonzero(full <= np.float32(threshold))
    np.testing.assert_array_equal(m.query, rows)
    np.testing.assert_array_equal(m.gallery, cols)
