"""The mutual likelihood score kernels (sdk.kernels.mls, mls_match, mls_topk) against a
float64 numpy reference, on every instruction set this CPU runs: random and extreme
variances, awkward shapes, exactness of match / top-k against the score matrix,
symmetry, determinism across batch sizes and thread counts, and bad input."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from conftest import REPO
from test_kernels import isa  # noqa: F401 (the fixture: once per instruction set)
from sdk import kernels

ISAS = kernels.available_isas()
FLOAT32_MAX = float(np.finfo(np.float32).max)
ULP = 2.0**-24  # float32 unit roundoff


def mls_reference(q_mu, q_sigma_sq, g_mu, g_sigma_sq) -> tuple[np.ndarray, np.ndarray]:
    """The exact MLS of the float32 inputs, in float64, ``[nq, ng]``, and R, the magnitude the
    kernels' documented error bound scales with: sum_d [diff^2/t + |log t|] + D/2 log(2 pi)."""
    qm, qs, gm, gs = (np.asarray(a, np.float32).astype(np.float64) for a in (q_mu, q_sigma_sq, g_mu, g_sigma_sq))
    t = qs[:, None, :] + gs[None, :, :]
    diff = qm[:, None, :] - gm[None, :, :]
    quad = diff * diff / t
    log_t = np.log(t)
    constant = 0.5 * qm.shape[1] * math.log(2 * math.pi)
    return -0.5 * (quad + log_t).sum(-1) - constant, (quad + np.abs(log_t)).sum(-1) + constant


def error_bound(dim: int, magnitude: np.ndarray) -> np.ndarray:
    """The documented guarantee: |score - exact| <= (ceil(D/8) + 16) * 2^-24 * R."""
    return (math.ceil(dim / 8) + 16) * ULP * magnitude


def assert_close_to_reference(got: np.ndarray, q_mu, q_s, g_mu, g_s) -> None:
    ref, magnitude = mls_reference(q_mu, q_s, g_mu, g_s)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert not np.isnan(got).any()
    # -inf only where the sum of (mu1 - mu2)^2 / t overflows float32, i.e. far below -FLT_MAX / 2.
    overflow = np.isneginf(got)
    assert np.all(ref[overflow] < -0.5 * FLOAT32_MAX * (1 - 1e-4))
    err = np.abs(got[~overflow] - ref[~overflow])
    assert np.all(err <= error_bound(np.shape(q_mu)[1], magnitude[~overflow]))


def gaussians(
    rng: np.random.Generator, n: int, dim: int, scale: float = 0.05, spread: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """Unit mu and float32 variances log-uniform in [scale e^-spread, scale e^spread]."""
    mu = rng.standard_normal((n, dim), dtype=np.float32)
    mu /= np.maximum(np.linalg.norm(mu, axis=1, keepdims=True), 1e-12)
    sigma_sq = (scale * np.exp(rng.uniform(-spread, spread, (n, dim)))).astype(np.float32)
    return mu, sigma_sq


SHAPES = [  # (queries, gallery, dim): empty, tiny, SIMD-awkward (8 / 16 lanes) and realistic
    (0, 5, 128),
    (5, 0, 128),
    (0, 0, 3),
    (1, 1, 1),
    (3, 50, 1),
    (1, 100, 127),
    (2, 33, 128),
    (7, 129, 128),
    (13, 100, 127),
    (4, 31, 15),
    (4, 31, 17),
    (3, 9, 33),
    (25, 1000, 128),
    (16, 300, 512),
    (5, 17, 3),
]


@pytest.mark.parametrize("nq,ng,dim", SHAPES)
def test_mls_matches_reference(isa, nq, ng, dim):
    rng = np.random.default_rng(nq * 1000 + ng + dim)
    (qm, qs), (gm, gs) = gaussians(rng, nq, dim), gaussians(rng, ng, dim)
    assert_close_to_reference(kernels.mls(qm, qs, gm, gs), qm, qs, gm, gs)


@pytest.mark.parametrize("scale", [1e-30, 1e-12, 1e-3, 1.0, 1e12, 1e30])
@pytest.mark.parametrize("nq,ng,dim", [(3, 40, 7), (2, 37, 128), (1, 21, 513)])
def test_mls_tiny_and_huge_variances(isa, scale, nq, ng, dim):
    rng = np.random.default_rng(int(dim + nq + 100 + math.log10(scale)))
    (qm, qs), (gm, gs) = gaussians(rng, nq, dim, scale), gaussians(rng, ng, dim, scale)
    assert_close_to_reference(kernels.mls(qm, qs, gm, gs), qm, qs, gm, gs)


def test_mls_variances_spanning_the_whole_range(isa):
    """Each row mixes variances from 1e-37 to 1e37 and means up to 1e3."""
    rng = np.random.default_rng(11)
    dim = 67
    qs = np.float32(10.0) ** rng.uniform(-37, 37, (5, dim)).astype(np.float32)
    gs = np.float32(10.0) ** rng.uniform(-37, 37, (90, dim)).astype(np.float32)
    qm = rng.uniform(-1e3, 1e3, (5, dim)).astype(np.float32)
    gm = rng.uniform(-1e3, 1e3, (90, dim)).astype(np.float32)
    got = kernels.mls(qm, qs, gm, gs)
    assert_close_to_reference(got, qm, qs, gm, gs)
    assert np.isneginf(got).any() and np.isfinite(got).any()  # both regimes were exercised


def test_mls_at_the_ends_of_the_accepted_range(isa):
    dim = 19
    zero = np.zeros((1, dim), np.float32)
    constant = 0.5 * dim * math.log(2 * math.pi)
    for s in (kernels.MLS_MIN_VARIANCE, kernels.MLS_MAX_VARIANCE):
        sigma_sq = np.full((1, dim), s, np.float32)
        expected = -0.5 * dim * math.log(2 * s) - constant
        assert kernels.mls(zero, sigma_sq, zero, sigma_sq)[0, 0] == pytest.approx(expected, rel=1e-6)


def test_a_known_score(isa):
    # D = 2, (0,0) vs (3,4), s1 + s2 = 1: -1/2 (9 + 16) - log(2 pi).
    got = kernels.mls([[0.0, 0.0]], [[0.5, 0.5]], [[3.0, 4.0]], [[0.5, 0.5]])
    assert got[0, 0] == pytest.approx(-12.5 - math.log(2 * math.pi), abs=1e-5)


def test_overflow_gives_minus_inf_and_still_ranks(isa):
    """A score below -FLT_MAX is -inf (never NaN), and top-k still returns its index."""
    dim = 8
    s = np.full((2, dim), kernels.MLS_MIN_VARIANCE, np.float32)
    q = np.full((1, dim), 3e38, np.float32)
    g = np.stack([-q[0], q[0]])
    scores = kernels.mls(q, s[:1], g, s)
    assert np.isneginf(scores[0, 0]) and np.isfinite(scores[0, 1])
    idx, top = kernels.mls_topk(q, s[:1], g, s, 3)
    np.testing.assert_array_equal(idx, [[1, 0, -1]])
    assert np.isneginf(top[0, 1:]).all()


@pytest.mark.parametrize("nq,ng,dim", SHAPES)
@pytest.mark.parametrize("k", [1, 5])
def test_topk_is_the_argsort_of_the_matrix(isa, nq, ng, dim, k):
    rng = np.random.default_rng(nq * 7 + ng + dim)
    (qm, qs), (gm, gs) = gaussians(rng, nq, dim), gaussians(rng, ng, dim)
    idx, top = kernels.mls_topk(qm, qs, gm, gs, k)
    assert idx.shape == top.shape == (nq, k)
    assert idx.dtype == np.int64 and top.dtype == np.float32
    full = kernels.mls(qm, qs, gm, gs)
    kk = min(k, ng)
    expected = np.argsort(-full, axis=1, kind="stable")[:, :kk]  # highest first, ties to the lower index
    np.testing.assert_array_equal(idx[:, :kk], expected)
    np.testing.assert_array_equal(top[:, :kk], np.take_along_axis(full, expected, 1))
    assert np.all(idx[:, kk:] == -1) and np.all(np.isneginf(top[:, kk:]))


@pytest.mark.parametrize("nq,ng,dim", SHAPES)
def test_match_is_the_filter_of_the_matrix(isa, nq, ng, dim):
    rng = np.random.default_rng(nq + ng * 3 + dim)
    (qm, qs), (gm, gs) = gaussians(rng, nq, dim), gaussians(rng, ng, dim)
    full = kernels.mls(qm, qs, gm, gs)
    threshold = float(np.float32(np.median(full))) if full.size else 0.0  # exactly a float32
    m = kernels.mls_match(qm, qs, gm, gs, threshold)
    rows, cols = np.nonzero(full >= threshold)  # row-major: sorted by (query, gallery)
    np.testing.assert_array_equal(m.query, rows)
    np.testing.assert_array_equal(m.gallery, cols)
    np.testing.assert_array_equal(m.score, full[rows, cols])
    assert m.query.dtype == m.gallery.dtype == np.int64 and m.score.dtype == np.float32
    # Against the float64 truth, only pairs within the error bound of the threshold may differ.
    ref, magnitude = mls_reference(qm, qs, gm, gs)
    disagree = (full >= threshold) != (ref >= threshold)
    assert np.all(np.abs(ref - threshold)[disagree] <= error_bound(dim, magnitude)[disagree])


def test_match_thresholds_inclusive_and_infinite(isa):
    rng = np.random.default_rng(3)
    (qm, qs), (gm, gs) = gaussians(rng, 4, 20), gaussians(rng, 30, 20)
    full = kernels.mls(qm, qs, gm, gs)
    exact = float(full[2, 7])
    m = kernels.mls_match(qm, qs, gm, gs, exact)
    assert (2, 7) in set(zip(m.query.tolist(), m.gallery.tolist()))  # >=, not >
    assert len(kernels.mls_match(qm, qs, gm, gs, float("-inf")).query) == full.size
    assert len(kernels.mls_match(qm, qs, gm, gs, float("inf")).query) == 0


def test_symmetric_to_the_last_bit(isa):
    rng = np.random.default_rng(4)
    (am, as_), (bm, bs) = gaussians(rng, 37, 127, spread=6), gaussians(rng, 53, 127, spread=6)
    np.testing.assert_array_equal(kernels.mls(am, as_, bm, bs), kernels.mls(bm, bs, am, as_).T)


def test_self_score_is_the_closed_form(isa):
    rng = np.random.default_rng(5)
    mu, sigma_sq = gaussians(rng, 30, 128)
    diag = np.diagonal(kernels.mls(mu, sigma_sq, mu, sigma_sq)).astype(np.float64)
    log_2s = np.log(2 * sigma_sq.astype(np.float64))
    expected = -0.5 * log_2s.sum(1) - 64 * math.log(2 * math.pi)
    magnitude = np.abs(log_2s).sum(1) + 64 * math.log(2 * math.pi)
    assert np.all(np.abs(diag - expected) <= error_bound(128, magnitude))


def test_typical_accuracy_is_a_few_ulps_of_r(isa):
    """The documented bound is a worst case; on ordinary inputs the error is ~2 ulps of R."""
    rng = np.random.default_rng(15)
    (qm, qs), (gm, gs) = gaussians(rng, 8, 128, spread=6), gaussians(rng, 500, 128, spread=6)
    ref, magnitude = mls_reference(qm, qs, gm, gs)
    assert np.max(np.abs(kernels.mls(qm, qs, gm, gs) - ref) / magnitude) <= 4 * ULP


def test_ties_go_to_the_lower_index(isa):
    mu, sigma_sq = gaussians(np.random.default_rng(6), 3, 16)
    g_mu, g_s = np.repeat(mu, 40, axis=0), np.repeat(sigma_sq, 40, axis=0)  # 40 copies of 3 rows
    idx, _ = kernels.mls_topk(mu, sigma_sq, g_mu, g_s, 5)
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3, 4], [40, 41, 42, 43, 44], [80, 81, 82, 83, 84]])


def test_one_query_and_a_batch_give_the_same_bits(isa):
    """No separate small-batch path: a pair's score does not depend on its batch."""
    rng = np.random.default_rng(7)
    (qm, qs), (gm, gs) = gaussians(rng, 40, 128), gaussians(rng, 3000, 128)
    batch = kernels.mls(qm, qs, gm, gs)
    for i in range(0, 40, 13):
        np.testing.assert_array_equal(kernels.mls(qm[i : i + 1], qs[i : i + 1], gm, gs)[0], batch[i])
    np.testing.assert_array_equal(kernels.mls(qm, qs, gm[1234:1235], gs[1234:1235])[:, 0], batch[:, 1234])


def test_large_gallery_crosses_tiles_and_threads(isa):
    """Enough rows for many cache tiles and every thread; merged results stay exact."""
    rng = np.random.default_rng(8)
    (qm, qs), (gm, gs) = gaussians(rng, 3, 128), gaussians(rng, 20_011, 128)
    full = kernels.mls(qm, qs, gm, gs)
    assert_close_to_reference(full, qm, qs, gm, gs)
    idx, top = kernels.mls_topk(qm, qs, gm, gs, 4)
    np.testing.assert_array_equal(idx, np.argsort(-full, axis=1, kind="stable")[:, :4])
    threshold = float(np.float32(np.quantile(full, 0.9)))
    m = kernels.mls_match(qm, qs, gm, gs, threshold)
    rows, cols = np.nonzero(full >= threshold)
    np.testing.assert_array_equal(m.query, rows)
    np.testing.assert_array_equal(m.gallery, cols)


_THREADS_SCRIPT = """
import sys
import numpy as np
from sdk import kernels

rng = np.random.default_rng(9)
q_mu, g_mu = rng.standard_normal((5, 96), dtype=np.float32), rng.standard_normal((9001, 96), dtype=np.float32)
q_s = np.exp(rng.uniform(-5, 1, (5, 96))).astype(np.float32)
g_s = np.exp(rng.uniform(-5, 1, (9001, 96))).astype(np.float32)
out = {}
for isa in kernels.available_isas():
    kernels.set_isa(isa)
    full = kernels.mls(q_mu, q_s, g_mu, g_s)
    out[isa + "_mls"] = full
    out[isa + "_idx"], out[isa + "_top"] = kernels.mls_topk(q_mu, q_s, g_mu, g_s, 7)
    m = kernels.mls_match(q_mu, q_s, g_mu, g_s, float(np.float32(np.median(full))))
    out[isa + "_match"] = np.stack([m.query, m.gallery, m.score.view(np.int32)])
np.savez(sys.argv[1], **out)
"""


def test_results_do_not_depend_on_the_thread_count(tmp_path):
    """The same bits from 1, 2, 3 and 8 OpenMP threads, on every instruction set."""
    results = {}
    for threads in (1, 2, 3, 8):
        path = tmp_path / f"threads{threads}.npz"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        run = subprocess.run(
            [sys.executable, "-c", _THREADS_SCRIPT, str(path)], cwd=REPO, env=env, capture_output=True, text=True
        )
        assert run.returncode == 0, run.stderr
        with np.load(path) as data:
            results[threads] = dict(data)
    assert set(results[1]) == {f"{isa}_{part}" for isa in ISAS for part in ("mls", "idx", "top", "match")}
    for threads in (2, 3, 8):
        for name, value in results[1].items():
            np.testing.assert_array_equal(results[threads][name], value, err_msg=f"{name}, {threads} threads")


def test_many_python_threads_give_the_serial_results():
    rng = np.random.default_rng(10)
    gm, gs = gaussians(rng, 8000, 128)
    batches = [gaussians(rng, n, 128) for n in (1, 2, 3, 17, 64, 1, 5)]
    serial = [(kernels.mls_topk(qm, qs, gm, gs, 3), kernels.mls_match(qm, qs, gm, gs, 200.0)) for qm, qs in batches]

    def both(batch):
        qm, qs = batch
        return kernels.mls_topk(qm, qs, gm, gs, 3), kernels.mls_match(qm, qs, gm, gs, 200.0)

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(2):
            for (topk_s, match_s), (topk_t, match_t) in zip(serial, pool.map(both, batches)):
                for a, b in zip(topk_s + tuple(match_s), topk_t + tuple(match_t)):
                    np.testing.assert_array_equal(a, b)


def test_conversions_float64_integers_and_views(isa):
    rng = np.random.default_rng(12)
    (qm, qs), (gm, gs) = gaussians(rng, 6, 32), gaussians(rng, 50, 32)
    base = kernels.mls(qm, qs, gm, gs)
    as64 = [a.astype(np.float64) for a in (qm, qs, gm, gs)]
    np.testing.assert_array_equal(kernels.mls(*as64), base)
    np.testing.assert_array_equal(kernels.mls(qm, qs, np.asfortranarray(gm), np.asfortranarray(gs)), base)
    wide = np.ones((50, 64), np.float32)
    wide[:, ::2] = gs
    np.testing.assert_array_equal(kernels.mls(qm, qs, gm, wide[:, ::2]), base)  # strided view
    ints = np.arange(1, 13, dtype=np.int32).reshape(4, 3)
    ref, _ = mls_reference(ints, ints, ints, ints)
    np.testing.assert_allclose(kernels.mls(ints, ints, ints, ints), ref, rtol=1e-6)


_Z = np.zeros((2, 3), np.float32)
_ONE = np.ones((2, 3), np.float32)
BAD_INPUTS = [
    (lambda: kernels.mls(None, _ONE, _Z, _ONE), TypeError, "q_mu"),
    (lambda: kernels.mls(_Z, _ONE, _Z, None), TypeError, "g_sigma_sq"),
    (lambda: kernels.mls(np.zeros(3), _ONE, _Z, _ONE), ValueError, "q_mu must be 2-D"),
    (lambda: kernels.mls(_Z, _ONE[:1], _Z, _ONE), ValueError, "q_mu and q_sigma_sq differ in shape"),
    (lambda: kernels.mls(_Z, _ONE, _Z, np.ones((2, 4))), ValueError, "g_mu and g_sigma_sq differ in shape"),
    (lambda: kernels.mls(_Z, _ONE, np.zeros((2, 4)), np.ones((2, 4))), ValueError, "differ in dim"),
    (lambda: kernels.mls(np.zeros((2, 0)), np.zeros((2, 0)), _Z, _ONE), ValueError, "dim >= 1"),
    (lambda: kernels.mls(_Z, np.array([["a"] * 3] * 2), _Z, _ONE), TypeError, "real numbers"),
    (lambda: kernels.mls(_Z, _ONE.astype(complex), _Z, _ONE), TypeError, "real numbers"),
    (lambda: kernels.mls_topk(_Z, _ONE, _Z, _ONE, 0), ValueError, "k must be >= 1"),
    (lambda: kernels.mls_topk(_Z, _ONE, _Z, _ONE, 1.5), TypeError, "k must be an integer"),
    (lambda: kernels.mls_topk(_Z, _ONE, _Z, _ONE, True), TypeError, "k must be an integer"),
    (lambda: kernels.mls_match(_Z, _ONE, _Z, _ONE, float("nan")), ValueError, "NaN"),
    (lambda: kernels.mls_match(_Z, _ONE, _Z, _ONE, "1.0"), TypeError, "threshold"),
    (lambda: kernels.mls_match(_Z, _ONE, _Z, _ONE, True), TypeError, "threshold"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


@pytest.mark.parametrize("bad", [0.0, -1.0, 1e-39, 1e38, np.inf, np.nan])  # 1e-39: a float32 subnormal
@pytest.mark.parametrize("ng,row", [(500, 321), (60_000, 40_321)])  # one thread; several
def test_bad_variances_are_rejected_naming_the_row(isa, bad, ng, row):
    rng = np.random.default_rng(13)
    (qm, qs), (gm, gs) = gaussians(rng, 3, 16), gaussians(rng, ng, 16)
    gs[row, 5] = bad
    for call in (
        lambda: kernels.mls_topk(qm, qs, gm, gs, 2),
        lambda: kernels.mls_match(qm, qs, gm, gs, 0.0),
        lambda: kernels.mls_topk(qm[:0], qs[:0], gm, gs, 2),  # checked even without queries
    ):
        with pytest.raises(ValueError, match=rf"G_s \(gallery sigma\^2\) row {row} has .* at dim 5"):
            call()
    qs[1, 2] = bad
    with pytest.raises(ValueError, match=r"Q_s \(query sigma\^2\) row 1 has .* at dim 2: variances must be"):
        kernels.mls(qm, qs, gm[:10], gs[:10])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_means_are_rejected_naming_the_row(isa, bad):
    rng = np.random.default_rng(14)
    (qm, qs), (gm, gs) = gaussians(rng, 3, 16), gaussians(rng, 60_000, 16)
    gm[40_321, 0] = bad
    with pytest.raises(ValueError, match=r"G_mu \(gallery mu\) row 40321 contains NaN or Inf"):
        kernels.mls_topk(qm, qs, gm, gs, 1)
    qm[2, 15] = bad
    with pytest.raises(ValueError, match=r"Q_mu \(query mu\) row 2 contains NaN or Inf"):
        kernels.mls(qm, qs, gm[:5], gs[:5])


finite_mu = st.floats(-1e3, 1e3, allow_nan=False, width=32)
variance = st.floats(kernels.MLS_MIN_VARIANCE, kernels.MLS_MAX_VARIANCE, width=32)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), nq=st.integers(0, 6), ng=st.integers(0, 40), dim=st.integers(1, 40), k=st.integers(1, 8))
def test_property_kernels_agree_with_each_other_and_the_reference(data, nq, ng, dim, k):
    qm = data.draw(hnp.arrays(np.float32, (nq, dim), elements=finite_mu))
    gm = data.draw(hnp.arrays(np.float32, (ng, dim), elements=finite_mu))
    qs = data.draw(hnp.arrays(np.float32, (nq, dim), elements=variance))
    gs = data.draw(hnp.arrays(np.float32, (ng, dim), elements=variance))
    threshold = data.draw(st.floats(-1e4, 1e4, allow_nan=False))
    before = kernels.isa()
    try:
        for isa in ISAS:
            kernels.set_isa(isa)
            full = kernels.mls(qm, qs, gm, gs)
            assert_close_to_reference(full, qm, qs, gm, gs)
            np.testing.assert_array_equal(kernels.mls(gm, gs, qm, qs), full.T)
            idx, _ = kernels.mls_topk(qm, qs, gm, gs, k)
            kk = min(k, ng)
            np.testing.assert_array_equal(idx[:, :kk], np.argsort(-full, axis=1, kind="stable")[:, :kk])
            m = kernels.mls_match(qm, qs, gm, gs, threshold)
            rows, cols = np.nonzero(full >= np.float32(threshold))
            np.testing.assert_array_equal(m.query, rows)
            np.testing.assert_array_equal(m.gallery, cols)
    finally:
        kernels.set_isa(before)
