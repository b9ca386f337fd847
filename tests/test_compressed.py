"""Compressed galleries (fp16, int8): the formats, the error bound, and top-k / match that equal
the float32 calls bit for bit (rows, distances, ties, threshold edges) on every instruction set
this CPU runs, on random and real faces; bad input; and Gallery(precision=...)."""

from __future__ import annotations

import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk import kernels
from test_kernels import isa  # noqa: F401 (the fixture: once per instruction set)
from sdk.errors import GalleryError, InvalidArgumentError
from sdk.gallery import Gallery

COMPRESSED = ("fp16", "int8")


@pytest.fixture(params=COMPRESSED)
def precision(request):
    return request.param


def unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def widened(c: kernels.CompressedGallery) -> np.ndarray:
    """The float32 rows the kernels scan, computed independently in numpy."""
    if c.precision == "fp16":
        return c.codes.view(np.float16).astype(np.float32)
    return c.codes.astype(np.float32) * c.scale[:, None]


def assert_same_topk(q, g, c, k):
    got = kernels.topk(q, c, k, exact=g)
    ref = kernels.topk(q, g, k)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1].view(np.uint32), ref[1].view(np.uint32))  # the very bits


def assert_same_match(q, g, c, threshold):
    got = kernels.match(q, c, threshold, exact=g)
    ref = kernels.match(q, g, threshold)
    for a, b in zip(got, ref):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


# ---- the formats and the bound ---------------------------------------------------------------


def test_fp16_codes_are_ieee_half_round_to_nearest_even():
    rng = np.random.default_rng(0)
    special = np.array([0.0, -0.0, 65504.0, -65504.0, 6e-8, 3e-8, 2.9e-8, 6.1e-5, 6.0e-5, 1 + 2**-11, 1 + 3 * 2**-11,
                        2049.0, 2051.0, 65519.0, 1e-30], np.float32)  # fmt: skip
    g = np.concatenate([special, rng.standard_normal(4096).astype(np.float32) * 10.0 ** rng.integers(-8, 4, 4096)])
    g = g[np.abs(g) <= 65504].reshape(-1, 1).astype(np.float32)
    c = kernels.compress(g, "fp16")
    np.testing.assert_array_equal(c.codes, g.astype(np.float16).view(np.uint16))


@pytest.mark.parametrize("scale", [1.0, 1e-3, 300.0])
def test_error_bounds_hold(precision, scale):
    rng = np.random.default_rng(1)
    g = unit(rng, 2000, 128) * scale
    g[5] = 0  # a zero row: scale 0, error 0
    c = kernels.compress(g, precision)
    w = widened(c).astype(np.float64)
    true_error = np.linalg.norm(g.astype(np.float64) - w, axis=1)
    assert np.all(true_error <= c.error) and c.error.max() <= c.max_error
    assert np.all(c.error <= true_error * (1 + 1e-6) + 1e-30)  # tight, not merely safe
    norms = np.maximum(np.linalg.norm(g.astype(np.float64), axis=1), np.linalg.norm(w, axis=1))
    assert norms.max() <= c.max_norm
    assert c.error[5] == 0
    if precision == "int8":
        assert c.codes.dtype == np.int8 and np.abs(c.codes.astype(int)).max() == 127
        np.testing.assert_array_equal(c.scale, np.abs(g).max(1) / np.float32(127))
        # Symmetric rounding to nearest: at most half a step per value.
        assert np.all(np.abs(g - w) <= c.scale[:, None] / 2 * (1 + 1e-6))
    assert c.nbytes == c.codes.nbytes + c.scale.nbytes + c.error.nbytes + c.norm.nbytes
    np.testing.assert_allclose(c.norm, (w * w).sum(1), rtol=1e-6)


def test_memory_is_a_half_and_a_quarter_plus_a_few_floats_per_row():
    g = unit(np.random.default_rng(2), 1000, 128)
    assert kernels.compress(g, "fp16").nbytes == 1000 * (128 * 2 + 4 + 4)  # + error, norm
    assert kernels.compress(g, "int8").nbytes == 1000 * (128 + 4 + 4 + 4)  # + scale, error, norm


# ---- exactly float32's answers -----------------------------------------------------------------

SHAPES = [(0, 5, 128), (5, 0, 128), (1, 1, 1), (2, 33, 128), (3, 50, 1), (7, 129, 128), (13, 100, 127), (25, 1000, 128),
          (1, 3000, 128), (64, 300, 512)]  # fmt: skip


@pytest.mark.parametrize("nq,ng,dim", SHAPES)
def test_topk_and_match_equal_float32(isa, precision, nq, ng, dim):
    rng = np.random.default_rng(nq * 1000 + ng + dim)
    g = unit(rng, ng, dim)
    # Queries near gallery rows (close neighbours compete) and random ones.
    near = g[rng.integers(0, max(ng, 1), nq)] + 0.05 * unit(rng, nq, dim) if ng else unit(rng, nq, dim)
    q = np.where(rng.random((nq, 1)) < 0.5, near, unit(rng, nq, dim)).astype(np.float32)
    c = kernels.compress(g, precision)
    for k in (1, 5, 40):
        assert_same_topk(q, g, c, k)
    full = kernels.sq_l2(q, g)
    thresholds = [0.0, 0.5, 1.0, float("inf")]
    if full.size:  # threshold edges: exactly a pair's distance (inclusive), and the float below it
        edge = float(np.sort(full, axis=None)[full.size // 3])
        thresholds += [edge, float(np.nextafter(np.float32(edge), np.float32(0)))]
    for t in thresholds:
        assert_same_match(q, g, c, t)


def test_ties_and_near_ties_resolve_as_float32(isa, precision):
    """Rows that compress to the same codes but differ in float32 (by an ulp), and exact
    duplicates: the re-rank orders them by their float32 distances, ties to the lower index."""
    rng = np.random.default_rng(3)
    base = unit(rng, 6, 128)
    g = np.repeat(base, 12, axis=0)
    bumped = g.copy()
    bumped[1::3, 7] = np.nextafter(bumped[1::3, 7], np.float32(2))  # an ulp away: same codes
    bumped[2::3, 9] = np.nextafter(bumped[2::3, 9], np.float32(-2))
    for rows in (g, bumped):
        c = kernels.compress(rows, precision)
        q = rows[::12] + 1e-3 * unit(rng, 6, 128)
        for nq in (1, 2, 6):  # the one- and two-query path and the packed path
            for k in (1, 7, 30):
                assert_same_topk(q[:nq], rows, c, k)
            full = kernels.sq_l2(q[:nq], rows)
            for t in np.unique(full)[:5]:
                assert_same_match(q[:nq], rows, c, float(t))
    # Exact duplicates go to the lower index, as float32's do.
    idx, _ = kernels.topk(g[[0, 12]], kernels.compress(g, precision), 3, exact=g)
    np.testing.assert_array_equal(idx, [[0, 1, 2], [12, 13, 14]])


def test_large_galleries_split_across_threads_stay_exact(isa, precision):
    rng = np.random.default_rng(4)
    g = unit(rng, 60_000, 128)
    q = g[rng.choice(60_000, 20, replace=False)] + 0.1 * unit(rng, 20, 128)
    c = kernels.compress(g, precision)
    for nq in (1, 20):
        assert_same_topk(q[:nq], g, c, 4)
        assert_same_match(q[:nq], g, c, 0.9)


def test_unnormalised_and_tiny_rows_stay_exact(precision):
    rng = np.random.default_rng(5)
    g = unit(rng, 500, 64) * rng.uniform(1e-6, 50, (500, 1)).astype(np.float32)
    q = (g[:9] * 1.01).astype(np.float32)
    c = kernels.compress(g, precision)
    assert_same_topk(q, g, c, 3)
    assert_same_match(q, g, c, 1.0)


def test_exact_rows_is_asked_once_for_few_rows():
    """The re-rank reads only the candidates (distinct, ascending): a handful, not the gallery."""
    rng = np.random.default_rng(6)
    g = unit(rng, 20_000, 128)
    q = g[:8] + 0.05 * unit(rng, 8, 128)
    for precision in COMPRESSED:
        asked = []
        kernels.topk(q, kernels.compress(g, precision), 1, exact=lambda rows: asked.append(rows.copy()) or g[rows])
        assert len(asked) == 1
        rows = asked[0]
        assert np.all(np.diff(rows) > 0) and set(range(8)) <= set(rows.tolist()) and len(rows) < 8 * 20


def test_concurrent_calls_give_the_serial_results(precision):
    rng = np.random.default_rng(7)
    g = unit(rng, 20_000, 128)
    c = kernels.compress(g, precision)
    batches = [unit(rng, n, 128) for n in (1, 2, 3, 17, 1, 64)]
    serial = [kernels.topk(q, c, 3, exact=g) + tuple(kernels.match(q, c, 1.6, exact=g)) for q in batches]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda q: kernels.topk(q, c, 3, exact=g) + tuple(kernels.match(q, c, 1.6, exact=g)), batches))
    for s, r in zip(serial, results):
        for a, b in zip(s, r):
            np.testing.assert_array_equal(a, b)


finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=60, deadline=None)
@given(data=st.data(), nq=st.integers(0, 9), ng=st.integers(0, 70), dim=st.integers(1, 40), k=st.integers(1, 8),
       precision=st.sampled_from(COMPRESSED))  # fmt: skip
def test_property_compressed_answers_equal_float32(data, nq, ng, dim, k, precision):
    q = data.draw(hnp.arrays(np.float32, (nq, dim), elements=finite))
    g = data.draw(hnp.arrays(np.float32, (ng, dim), elements=finite))
    c = kernels.compress(g, precision)
    assert_same_topk(q, g, c, k)
    full = kernels.sq_l2(q, g)
    threshold = float(data.draw(st.sampled_from(full.ravel().tolist()))) if full.size else 1.0
    assert_same_match(q, g, c, threshold)
    assert_same_match(q, g, c, data.draw(st.floats(0, 4e6, allow_nan=False)))


# ---- real faces --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def faces(default_onnx, data) -> np.ndarray:
    """Real embeddings of the default model: every 25th LFW/CelebA person, at most 3 images each."""
    from evaluate import openset
    from sdk.embed import OnnxEmbedder

    persons = openset.people(data, per_person=3)[::25]
    embedded = openset.embed_people(persons, embedder=OnnxEmbedder(default_onnx), progress=False)
    return np.stack(list(embedded.values())).astype(np.float32)


def test_real_faces_decisions_equal_float32(faces, precision, isa):
    g, q = faces[::2], faces[1::2]
    c = kernels.compress(g, precision)
    for nq in (1, 2, len(q)):
        for k in (1, 5):
            assert_same_topk(q[:nq], g, c, k)
        for t in (0.0611, 0.1036, 0.1402, 0.2):  # the default model's calibrated thresholds, and a loose one
            assert_same_match(q[:nq], g, c, t)


# ---- bad input ---------------------------------------------------------------------------------

G = unit(np.random.default_rng(8), 10, 4)
C = kernels.compress(G, "int8")
BAD_INPUTS = [
    (lambda: kernels.compress(G, "int4"), ValueError, "precision must be"),
    (lambda: kernels.compress(np.array([["a"]]), "fp16"), TypeError, "real numbers"),
    (lambda: kernels.compress(G[0], "fp16"), ValueError, "2-D"),
    (lambda: kernels.compress(np.where(np.arange(40).reshape(10, 4) == 13, np.nan, G), "int8"), ValueError, "G row 3 holds NaN"),
    (lambda: kernels.compress(np.full((2, 3), np.inf), "fp16"), ValueError, "G row 0"),
    (lambda: kernels.compress(np.full((2, 3), 7e4), "fp16"), ValueError, "fp16's range"),
    (lambda: kernels.topk(G, C, 1), TypeError, "needs exact="),
    (lambda: kernels.topk(G, C, 0, exact=G), ValueError, "k must be >= 1"),
    (lambda: kernels.topk(G[:, :3], C, 1, exact=G), ValueError, "differ in dim"),
    (lambda: kernels.topk(np.full((1, 4), np.nan), C, 1, exact=G), ValueError, "Q row 0 contains NaN"),
    (lambda: kernels.topk(G, C, 1, exact=G[:5]), ValueError, "float32 rows"),
    (lambda: kernels.topk(G, C, 1, exact=lambda rows: G[rows][:, :2]), ValueError, "exact_rows returned"),
    (lambda: kernels.topk(G, C, 1, exact=lambda rows: 1 / 0), ZeroDivisionError, "division by zero"),
    (lambda: kernels.topk(G, C._replace(codes=C.codes.astype(np.int16)), 1, exact=G), TypeError, "int8 codes"),
    (lambda: kernels.topk(G, C._replace(scale=C.scale[:3]), 1, exact=G), ValueError, "scale must be"),
    (lambda: kernels.topk(G, C._replace(precision="bf16"), 1, exact=G), ValueError, "precision must be"),
    (lambda: kernels.match(G, C, float("nan"), exact=G), ValueError, "non-negative"),
    (lambda: kernels.match(G, C, -1.0, exact=G), ValueError, "non-negative"),
]


@pytest.mark.parametrize("call,error,message", BAD_INPUTS)
def test_bad_input_gets_a_clear_error(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---- Gallery(precision=...) --------------------------------------------------------------------

MODEL = {"model_name": "m", "model_version": "1", "dim": 32}


def test_gallery_precisions_answer_as_float32(tmp_path: Path):
    rng = np.random.default_rng(9)
    vectors = unit(rng, 900, 32)
    names = [f"p{i % 300:03d}" for i in range(900)]
    queries = vectors[::7] + 0.1 * unit(rng, 129, 32)
    path = tmp_path / "g.db"
    with Gallery(path, **MODEL) as g:
        g.add_many(names, vectors)
    galleries = {p: Gallery(path, **MODEL, precision=p) for p in kernels.PRECISIONS}
    try:
        for step in range(3):
            ref = galleries["fp32"]
            expect = [ref.search(queries, k=3), ref.search(queries[:1], k=1), ref.within(queries, 0.8)]
            for p in COMPRESSED:
                got = [galleries[p].search(queries, k=3), galleries[p].search(queries[:1], k=1), galleries[p].within(queries, 0.8)]
                for (n1, d1), (n2, d2) in zip(expect[:2], got[:2]):
                    assert n1 == n2
                    np.testing.assert_array_equal(d1.view(np.uint32), d2.view(np.uint32))
                assert got[2] == expect[2]
            # Each gallery enrols and removes the same (its own writes update its snapshot; the
            # others' show as changes in the file and reload).
            writer = galleries[COMPRESSED[step % 2]]
            if step == 0:
                writer.add("newcomer", queries[:3] + 0.01)
            else:
                writer.remove(f"p{step:03d}")
        n = len(galleries["fp32"]._current().labels)
        assert galleries["fp32"]._current().vectors.nbytes == n * 32 * 4
        assert galleries["fp16"]._current().vectors.nbytes == n * (32 * 2 + 8)
        assert galleries["int8"]._current().vectors.nbytes == n * (32 + 4 + 4 + 4)
        # The file keeps float32: what a compressed gallery stores reads back exactly.
        np.testing.assert_array_equal(galleries["int8"].embeddings("p000").vectors, vectors[[0, 300, 600]])
    finally:
        for g in galleries.values():
            g.close()


def test_gallery_precision_is_checked_and_mls_needs_float32(rng=np.random.default_rng(10)):
    with pytest.raises(InvalidArgumentError, match="precision must be one of"):
        Gallery(None, **MODEL, precision="int4")
    with Gallery(None, **MODEL, precision="int8") as g:
        v = unit(rng, 2, 32)
        g.add("a", v, sigma_sq=np.ones_like(v))
        assert "precision='int8'" in repr(g)
        with pytest.raises(GalleryError, match="precision='fp32'"):
            g.search_mls(v, np.ones_like(v))


def test_compressed_search_reads_back_only_rows_that_are_still_its_own(tmp_path: Path):
    """A row removed (its id maybe taken by a newer row) after the snapshot was taken is never
    read back as the snapshot's: the search starts again on a fresh snapshot."""
    from sdk.gallery import _StaleSnapshot

    rng = np.random.default_rng(11)
    vectors = unit(rng, 50, 32)
    path = tmp_path / "g.db"
    with Gallery(path, **MODEL) as g:
        g.add_many([f"p{i:02d}" for i in range(50)], vectors)
    with Gallery(path, **MODEL, precision="int8") as a, Gallery(path, **MODEL) as b:
        snap = a._current()
        b.remove("p49")  # the last row: SQLite may give its id to the next one
        b.add("x", -vectors[49:50])
        read = a._exact_rows(snap)
        np.testing.assert_array_equal(read(np.array([0, 7])), vectors[[0, 7]])
        with pytest.raises(_StaleSnapshot):
            read(np.array([49]))
        for q in (vectors[49:50], -vectors[49:50]):
            (n1, d1), (n2, d2) = a.search(q, k=2), b.search(q, k=2)
            assert n1 == n2
            np.testing.assert_array_equal(d1, d2)


def test_verifier_with_an_int8_gallery_decides_as_float32(default_onnx, data, tmp_path: Path):
    from sdk.verifier import Verifier

    people = sorted((data / "att").glob("s*"))[:6]
    answers = {}
    for precision in ("fp32", "int8"):
        v = Verifier(default_onnx, detector="yunet", gallery=tmp_path / f"{precision}.sqlite", gallery_precision=precision)
        for person in people:
            v.enroll_each(person.name, sorted(person.glob("*.pgm"))[:3])
        probes = [p for person in people for p in sorted(person.glob("*.pgm"))[3:5]]
        answers[precision] = [v.identify(p, k=3) for p in probes]
    assert answers["int8"] == answers["fp32"]
    assert all(len(a) == 3 for a in answers["fp32"])  # three enrolled identities ranked per probe
    with pytest.raises(InvalidArgumentError, match="gallery_precision='fp32'"):
        Verifier(default_onnx, gallery=None, scoring="mls", gallery_precision="int8")


def test_replica_batches_update_a_compressed_snapshot_as_float32(tmp_path: Path):
    """Gallery.apply (a site replica's batch: adds and removes in one transaction) keeps a
    compressed snapshot's rows and file ids in step, so its answers stay float32's."""
    rng = np.random.default_rng(12)
    vectors = unit(rng, 60, 32)
    queries = vectors + 0.05 * unit(rng, 60, 32)
    galleries = {p: Gallery(tmp_path / f"{p}.db", **MODEL, precision=p) for p in ("fp32", "int8")}
    try:
        for g in galleries.values():
            g.add_many([f"p{i:02d}" for i in range(20)], vectors[:20])
            g.search(queries[:1])  # a snapshot to update in place
            g.apply([("add", "a", vectors[20:30], None, None), ("remove", "p03"),
                     ("add", [f"q{i}" for i in range(30)], vectors[30:], None, None), ("remove", "p19")])  # fmt: skip
        # Updated in place (no reload), with each row's id in the file.
        snap = galleries["int8"]._snapshot
        with sqlite3.connect(tmp_path / "int8.db") as db:
            file_ids = [r[0] for r in db.execute("SELECT id FROM embeddings ORDER BY id")]
        np.testing.assert_array_equal(snap.ids, file_ids)
        (n1, d1), (n2, d2) = galleries["fp32"].search(queries, k=3), galleries["int8"].search(queries, k=3)
        assert n1 == n2
        np.testing.assert_array_equal(d1, d2)
        assert galleries["int8"].within(queries, 0.3) == galleries["fp32"].within(queries, 0.3)
    finally:
        for g in galleries.values():
            g.close()
