"""sdk.gallery: the SQLite enrolment gallery (file checks, atomic writes, distinct-identity
search against a brute-force reference, threads, a SIGKILL in the middle of an add, export)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from sdk.errors import GalleryError, ModelMismatchError
from sdk.gallery import MAX_NAME_LENGTH, SCHEMA_VERSION, Gallery

REPO = Path(__file__).resolve().parents[1]
MODEL = {"model_name": "dlib_resnet_v1", "model_version": "1", "dim": 16}


def unit(rng: np.random.Generator, n: int, dim: int = MODEL["dim"]) -> np.ndarray:
    x = rng.standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def raw(path: Path) -> contextlib.closing[sqlite3.Connection]:
    """A plain SQLite connection (autocommit, foreign keys off), as any other tool would open."""
    return contextlib.closing(sqlite3.connect(path, isolation_level=None))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def reference(
    queries: np.ndarray, vectors: np.ndarray, owners: list[str], k: int
) -> tuple[list[list[str | None]], np.ndarray]:
    """Brute force in float64: each identity's nearest row, ranked by (distance, row)."""
    d = ((queries[:, None, :].astype(np.float64) - vectors[None, :, :]) ** 2).sum(-1)
    names, dists = [], np.full((len(queries), k), np.inf)
    for i, row in enumerate(d):
        best: dict[str, tuple[float, int]] = {}
        for j, (dist, owner) in enumerate(zip(row, owners)):
            best[owner] = min(best.get(owner, (np.inf, j)), (dist, j))
        ranked = sorted(best, key=best.__getitem__)[:k]
        names.append(ranked + [None] * (k - len(ranked)))
        dists[i, : len(ranked)] = [best[name][0] for name in ranked]
    return names, dists


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def gallery_file(tmp_path: Path, rng: np.random.Generator) -> Path:
    """A closed gallery file with three identities."""
    path = tmp_path / "gallery.db"
    with Gallery(path, **MODEL) as g:
        for name, k in (("alice", 3), ("bob", 2), ("carol", 1)):
            g.add(name, unit(rng, k))
    return path


# ------------------------------------------------------------------ round trip


def test_round_trip_and_reopen(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "g.db"
    alice, bob = unit(rng, 3), unit(rng, 2)
    sigma = rng.uniform(0.1, 1.0, (3, MODEL["dim"])).astype(np.float32)
    with Gallery(path, **MODEL) as g:
        sources = ["a.jpg", None, "c.jpg"]
        quality = [0.9, 0.8, 0.7]
        assert g.add("alice", alice, sigma_sq=sigma, quality=quality, sources=sources) == 3
        assert g.add("bob", bob) == 2
        assert g.add("alice", alice[:1]) == 1  # appends to an existing identity
        counts = len(g), g.count("alice"), g.count("bob"), g.count("nobody")
        assert g.identities() == ["alice", "bob"] and counts == (6, 4, 2, 0)
    with Gallery(path, **MODEL) as g:
        assert g.identities() == ["alice", "bob"] and len(g) == 6
        meta = g.meta()
        keys = ("schema_version", "model_name", "model_version", "embedding_dim")
        assert [meta[key] for key in keys] == [str(SCHEMA_VERSION), "dlib_resnet_v1", "1", "16"]
        names, dist = g.search(np.vstack([alice[1], bob[0]]), k=2)
        assert names == [["alice", "bob"], ["bob", "alice"]]
        assert dist[:, 0] == pytest.approx([0, 0], abs=1e-6)
    # The documented layout, read without the SDK: float32 little-endian blobs, no pickle.
    with raw(path) as db:
        rows = db.execute(
            "SELECT vector, sigma_sq, quality, source FROM embeddings ORDER BY id"
        ).fetchall()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    np.testing.assert_array_equal(np.frombuffer(rows[0][0], "<f4"), alice[0])
    np.testing.assert_array_equal(np.frombuffer(rows[2][1], "<f4"), sigma[2])
    assert rows[1][2:] == (0.8, None) and rows[3][1:] == (None, None, None)


def test_in_memory_gallery_and_closing(rng: np.random.Generator) -> None:
    g = Gallery(None, **MODEL)
    assert (g.identities(), len(g)) == ([], 0)
    names, dist = g.search(unit(rng, 2), k=2)  # empty gallery: padded
    assert names == [[None, None], [None, None]] and np.isinf(dist).all()
    assert g.within(unit(rng, 1), 4.0) == [[]]
    g.add("x", unit(rng, 1))
    assert g.search(unit(rng, 1), k=2)[0] == [["x", None]]
    g.close()
    with Gallery(":memory:", **MODEL) as m:  # SQLite's spelling: no file of that name appears
        assert m.path is None and not Path(":memory:").exists()
    g.close()  # idempotent
    for call in (lambda: g.add("y", unit(rng, 1)), g.identities, lambda: g.search(unit(rng, 1))):
        with pytest.raises(GalleryError, match="closed"):
            call()


def test_empty_file_becomes_a_gallery(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "empty.db"
    path.touch()  # e.g. from tempfile.NamedTemporaryFile: nothing in it to lose
    with Gallery(path, **MODEL) as g:
        g.add("a", unit(rng, 1))
    with Gallery(path, **MODEL) as g:
        assert g.identities() == ["a"]


def test_bad_constructor_arguments(tmp_path: Path) -> None:
    with pytest.raises(GalleryError, match="directory"):
        Gallery(tmp_path, **MODEL)
    with pytest.raises(GalleryError, match="cannot open"):
        Gallery(tmp_path / "no" / "such" / "dir" / "g.db", **MODEL)
    bad_arguments = [{"dim": 0}, {"dim": True}, {"dim": 1.5}, {"model_name": " "}]
    for bad in [*bad_arguments, {"model_version": None}]:
        with pytest.raises(ValueError):
            Gallery(None, **{**MODEL, **bad})


# ---------------------------------------------------- mismatched, foreign, corrupt


@pytest.mark.parametrize(
    "change",
    [{"model_name": "facenet"}, {"model_version": "2"}, {"dim": 128}],
    ids=["name", "version", "dim"],
)
def test_model_mismatch(gallery_file: Path, change: dict) -> None:
    before = sha256(gallery_file)
    with pytest.raises(ModelMismatchError) as err:
        Gallery(gallery_file, **{**MODEL, **change})
    message = str(err.value)
    assert "'dlib_resnet_v1' version '1' (dim 16)" in message  # what the file holds
    asked = {**MODEL, **change}
    name, version, dim = asked["model_name"], asked["model_version"], asked["dim"]
    assert f"{name!r} version {version!r} (dim {dim})" in message
    assert sha256(gallery_file) == before
    with Gallery(gallery_file, **MODEL) as g:  # still opens with the right model
        assert len(g) == 6


def _text(path: Path) -> None:
    path.write_text("name,vector\nalice,0.1 0.2\n" * 200)


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(16384))


def _sqlite_header_then_garbage(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\x00" + np.random.default_rng(2).bytes(8192))


def _other_sqlite(path: Path) -> None:
    with raw(path) as db:
        db.execute("CREATE TABLE people(id INTEGER PRIMARY KEY, name TEXT)")
        db.execute("INSERT INTO people(name) VALUES ('alice')")


def _our_tables_no_meta(path: Path) -> None:
    with raw(path) as db:
        for table in ("meta", "identities", "embeddings"):
            db.execute(f"CREATE TABLE {table}(key TEXT PRIMARY KEY, value TEXT)")


def _newer_schema(path: Path) -> None:
    Gallery(path, **MODEL).close()
    with raw(path) as db:
        db.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")


def _truncated_gallery(path: Path) -> None:
    with Gallery(path, **MODEL) as g:
        rng = np.random.default_rng(3)
        for i in range(40):
            g.add(f"person{i}", unit(rng, 50))
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize(
    "make",
    [
        _text,
        _random_bytes,
        _sqlite_header_then_garbage,
        _other_sqlite,
        _our_tables_no_meta,
        _newer_schema,
        _truncated_gallery,
    ],
)
def test_foreign_or_corrupt_file_is_refused_and_untouched(
    tmp_path: Path, make: Callable[[Path], None]
) -> None:
    path = tmp_path / "file.db"
    make(path)
    before = sha256(path), path.stat().st_mtime_ns
    with pytest.raises(GalleryError) as err:
        Gallery(path, **MODEL)
    assert not isinstance(err.value, ModelMismatchError)
    assert str(path) in str(err.value)
    assert (sha256(path), path.stat().st_mtime_ns) == before
    # SQLite may add its side files beside a WAL-mode file it read, nothing else.
    assert {p.name for p in tmp_path.iterdir()} <= {"file.db", "file.db-wal", "file.db-shm"}


# --------------------------------------------------------------- adding, removing


BAD_BATCHES = {
    "nan in last row": lambda e: {"embeddings": np.vstack([e, [np.nan] * 16])},
    "inf": lambda e: {"embeddings": np.vstack([e, [np.inf] * 16])},
    "beyond float32": lambda e: {"embeddings": np.vstack([e, [1e39] * 16])},
    "squared norm overflows": lambda e: {"embeddings": np.vstack([e, [1e19] * 16])},
    "wrong dim": lambda e: {"embeddings": e[:, :15]},
    "1-D": lambda e: {"embeddings": e[0]},
    "strings": lambda e: {"embeddings": e.astype(str)},
    "objects": lambda e: {"embeddings": np.array([[None] * 16] * 3)},
    "ragged": lambda e: {"embeddings": [[0.0] * 16, [0.0] * 15]},
    "empty": lambda e: {"embeddings": e[:0]},
    "negative sigma": lambda e: {"embeddings": e, "sigma_sq": -np.ones_like(e)},
    "sigma rows": lambda e: {"embeddings": e, "sigma_sq": np.ones_like(e[:2])},
    "quality length": lambda e: {"embeddings": e, "quality": [1.0]},
    "quality nan": lambda e: {"embeddings": e, "quality": [1.0, np.nan, 1.0]},
    "one source str": lambda e: {"embeddings": e, "sources": "abc"},
    "source type": lambda e: {"embeddings": e, "sources": ["a", 2, "c"]},
}


@pytest.mark.parametrize("bad", BAD_BATCHES, ids=list(BAD_BATCHES))
def test_bad_batch_writes_nothing(gallery_file: Path, rng: np.random.Generator, bad: str) -> None:
    with Gallery(gallery_file, **MODEL) as g:
        for name in ("alice", "dave"):  # an enrolled identity and a new one
            with pytest.raises(ValueError):
                g.add(name, **BAD_BATCHES[bad](unit(rng, 3)))
        assert (g.identities(), len(g), g.count("alice")) == (["alice", "bob", "carol"], 6, 3)


def test_identity_names(rng: np.random.Generator) -> None:
    with Gallery(None, **MODEL) as g:
        g.add("alice", unit(rng, 1))
        g.add("x" * MAX_NAME_LENGTH, unit(rng, 1))
        g.add("Zoë 张", unit(rng, 1))
        assert g.identities() == ["Zoë 张", "alice", "x" * MAX_NAME_LENGTH]  # by code point
        # Surrounding whitespace is refused, never stripped into another identity (lookups too).
        for bad in (" alice\t", "alice "):
            with pytest.raises(ValueError, match="surrounding whitespace"):
                g.add(bad, unit(rng, 1))
            with pytest.raises(ValueError, match="surrounding whitespace"):
                g.count(bad)
        for bad in ("", "  \n", "x" * (MAX_NAME_LENGTH + 1), "alice\nbob"):
            with pytest.raises(ValueError, match="empty|characters|unprintable"):
                g.add(bad, unit(rng, 1))
        # Unicode NFC: a decomposed "Zoë" is the composed one.
        assert g.add("Zoe\u0308 张", unit(rng, 1)) == 1 and g.count("Zoë 张") == 2
        for bad in (None, 7, b"bob"):
            with pytest.raises(TypeError, match="must be a str"):
                g.add(bad, unit(rng, 1))
        assert len(g) == 4


def test_remove(gallery_file: Path, rng: np.random.Generator) -> None:
    with Gallery(gallery_file, **MODEL) as g:
        probe = unit(rng, 4)
        assert {n for row in g.search(probe, k=3)[0] for n in row} == {"alice", "bob", "carol"}
        with pytest.raises(ValueError, match="surrounding whitespace"):
            g.remove(" alice ")
        assert g.remove("alice") is True
        assert g.remove("alice") is False
        assert (g.identities(), len(g), g.count("alice")) == (["bob", "carol"], 3, 0)
        assert all(row[2] is None and "alice" not in row for row in g.search(probe, k=3)[0])
        assert g.add("alice", unit(rng, 1)) == 1 and g.count("alice") == 1  # enrols afresh
    with raw(gallery_file) as db:  # the cascade removed the rows, no orphans
        assert db.execute(
            "SELECT count(*) FROM embeddings WHERE identity_id NOT IN (SELECT id FROM identities)"
        ).fetchone() == (0,)


# ---------------------------------------------------------------------- search


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_search_matches_brute_force_with_ties(data: st.DataObject) -> None:
    """Small integer coordinates: distances are exact in float32 and ties are common, so the
    ranking (distance, then the identity's first-enrolled nearest image) is checked exactly.
    Identities are enrolled interleaved (a, b, a, ...): enrolment order is not name order."""
    dim = data.draw(st.integers(1, 5))
    owners = [f"id{i}" for i in data.draw(st.lists(st.integers(0, 6), min_size=1, max_size=24))]
    coords = st.integers(-2, 2).map(float)
    vectors = data.draw(hnp.arrays(np.float32, (len(owners), dim), elements=coords))
    n_queries = data.draw(st.integers(1, 4))
    queries = data.draw(hnp.arrays(np.float32, (n_queries, dim), elements=coords))
    k = data.draw(st.integers(1, len(set(owners)) + 2))
    with Gallery(None, **{**MODEL, "dim": dim}) as g:
        start = 0
        for name, run in itertools.groupby(owners):
            stop = start + len(list(run))
            g.add(name, vectors[start:stop])
            start = stop
        names, dist = g.search(queries, k=k)
        ref_names, ref_dist = reference(queries, vectors, owners, k)
        assert names == ref_names
        np.testing.assert_array_equal(dist, ref_dist.astype(np.float32))
        # within() ranks the same way: with a threshold above every distance it heads with search's.
        hits = g.within(queries, threshold=1e6)
        expected = [
            [(n, d) for n, d in zip(row, drow) if n] for row, drow in zip(names, dist.tolist())
        ]
        assert [row[:k] for row in hits] == expected


def test_search_random_embeddings(rng: np.random.Generator) -> None:
    """Realistic data: many identities with 1..8 images, k up to past the end, many queries."""
    counts = rng.integers(1, 9, 300)
    vectors = unit(rng, int(counts.sum()), 128)
    owners = [f"p{i:03d}" for i, c in enumerate(counts) for _ in range(c)]
    near = vectors[rng.integers(0, len(vectors), 20)] + 0.05 * unit(rng, 20, 128)
    queries = np.vstack([near, unit(rng, 5, 128)])
    with Gallery(None, **{**MODEL, "dim": 128}) as g:
        start = 0
        for i, c in enumerate(counts):
            g.add(f"p{i:03d}", vectors[start : start + c])
            start += c
        all_names, all_dist = reference(queries, vectors, owners, len(counts))
        # Names must agree wherever the float64 reference has no near-tie (1e-4 on both sides).
        gap_before = np.diff(all_dist, axis=1, prepend=-np.inf)
        gap_after = np.diff(all_dist, axis=1, append=np.inf)
        clear = (gap_before > 1e-4) & (gap_after > 1e-4)
        for k in (1, 2, 7, 300, 302):
            names, dist = g.search(queries, k=k)
            found = min(k, len(counts))
            np.testing.assert_allclose(dist[:, :found], all_dist[:, :found], rtol=0, atol=1e-5)
            assert np.isinf(dist[:, found:]).all()
            assert all(row[found:] == [None] * (k - found) for row in names)
            for i, j in zip(*np.nonzero(clear[:, :found])):
                assert names[i][j] == all_names[i][j]
            assert all(len(set(row[:found])) == found for row in names)  # distinct
        hits = g.within(queries, threshold=0.5)
        assert [len(row) for row in hits] == (all_dist <= 0.5).sum(1).tolist()


def test_search_input_validation(rng: np.random.Generator) -> None:
    with Gallery(None, **MODEL) as g:
        g.add("a", unit(rng, 2))
        for bad in (unit(rng, 1, 15), unit(rng, 1)[0], [[np.nan] * 16], np.array([["x"] * 16])):
            with pytest.raises(ValueError):
                g.search(bad)
        with pytest.raises(ValueError):
            g.search(unit(rng, 1), k=0)
        for k in (True, 1.0, "1"):
            with pytest.raises(TypeError):
                g.search(unit(rng, 1), k=k)
        with pytest.raises(ValueError):
            g.within(unit(rng, 1), threshold=-1.0)
        names, dist = g.search(unit(rng, 1)[:0], k=2)
        assert names == [] and dist.shape == (0, 2)


def test_snapshot_is_reused_and_refreshed_on_change(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    path = tmp_path / "g.db"
    with Gallery(path, **MODEL) as reader, Gallery(path, **MODEL) as writer:
        reader.add("a", unit(rng, 1))
        reader.search(unit(rng, 1))
        first = reader._snapshot  # white box: which snapshot object searches use
        reader.search(unit(rng, 1))
        assert reader._snapshot is first  # nothing changed: no reload
        reader.add("b", unit(rng, 1))  # own write: generation counter
        assert sorted(n for n in reader.search(unit(rng, 1), k=3)[0][0] if n) == ["a", "b"]
        second = reader._snapshot
        assert second is not first
        writer.add("c", unit(rng, 1))  # another connection: PRAGMA data_version
        assert sorted(n for n in reader.search(unit(rng, 1), k=3)[0][0] if n) == ["a", "b", "c"]
        assert reader._snapshot is not second
        writer.remove("a")
        assert sorted(n for n in reader.search(unit(rng, 1), k=3)[0][0] if n) == ["b", "c"]


# --------------------------------------------------------- threads and crashes


def test_matching_does_not_wait_for_another_writer(
    gallery_file: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """WAL: while another connection holds a write transaction, this gallery opens and
    searches the committed state; its own write gives up after the busy timeout. The other
    connection has foreign keys off (SQLite's default): the rows it orphans are ignored,
    and the next identity does not inherit them (ids are never reused)."""
    monkeypatch.setattr("sdk.gallery.BUSY_TIMEOUT_S", 0.2)
    with raw(gallery_file) as other:
        other.execute("BEGIN IMMEDIATE")
        other.execute("DELETE FROM identities WHERE name = 'carol'")  # the highest id
        with Gallery(gallery_file, **MODEL) as g:
            probe = unit(rng, 2)
            assert g.identities() == ["alice", "bob", "carol"]
            assert all("carol" in row for row in g.search(probe, k=3)[0])
            with pytest.raises(GalleryError, match="locked"):
                g.add("dave", unit(rng, 1))
            other.execute("COMMIT")
            assert all("carol" not in row for row in g.search(probe, k=3)[0])
            assert (len(g), g.count("carol")) == (5, 0)
            assert g.add("dave", unit(rng, 1)) == 1
            assert (len(g), g.count("dave")) == (6, 1)


def test_concurrent_searches_while_enrolling(tmp_path: Path, rng: np.random.Generator) -> None:
    """Searches from 4 threads while a 5th enrols and removes: results for the identities present
    at the start are exactly a serial run's (new identities lie far away: norm 10)."""
    path = tmp_path / "g.db"
    vectors = unit(rng, 800, 64)
    queries = vectors[::5] + 1e-3 * unit(rng, 160, 64)
    g = Gallery(path, **{**MODEL, "dim": 64})
    for i in range(400):
        g.add(f"p{i:03d}", vectors[2 * i : 2 * i + 2])
    ref_names, ref_dist = g.search(queries, k=3)
    done = threading.Event()

    def enrol() -> None:
        try:
            for i in range(60):
                g.add(f"new{i:02d}", 10 * unit(np.random.default_rng(i), 1 + i % 3, 64))
                if i % 3 == 0:
                    g.remove(f"new{i:02d}")
        finally:
            done.set()

    def search() -> set[int]:
        generations = set()
        while not done.is_set():
            names, dist = g.search(queries, k=3)
            assert names == ref_names
            np.testing.assert_array_equal(dist, ref_dist)
            generations.add(g._snapshot.generation)
        return generations

    with ThreadPoolExecutor(5) as pool:
        searchers = [pool.submit(search) for _ in range(4)]
        pool.submit(enrol).result()
        seen = set().union(*(f.result() for f in searchers))
    assert len(seen) > 1  # the searches did run across snapshot swaps
    assert len(g.identities()) == 440
    g.close()
    with raw(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


CHILD = """
import sys
import numpy as np
from sdk.gallery import Gallery
g = Gallery(sys.argv[1], model_name="m", model_version="1", dim=64)
batch = np.random.default_rng(0).standard_normal((20000, 64)).astype(np.float32)
i = len(g.identities())
while True:
    print("begin", i, flush=True)
    g.add(f"id{i:04d}", batch)
    print("done", i, flush=True)
    i += 1
"""


def test_sigkill_during_add_leaves_gallery_intact(tmp_path: Path) -> None:
    """An add of 20,000 rows (5 MB, more than SQLite's page cache, so it spills into the WAL
    before committing) takes ~130 ms here; each child commits one, begins the next and is
    killed 30-100 ms into it. Three crashes on one file, each resumed by the next process."""
    path = tmp_path / "g.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for seed in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, text=True, env=env
        )
        assert child.stdout is not None
        committed = None
        for line in child.stdout:
            event, i = line.split()
            if event == "done":
                committed = int(i) + 1
            elif committed is not None:  # the second add is under way: kill it mid-write
                threading.Event().wait(random.Random(seed).uniform(0.03, 0.1))
                break
        assert committed is not None, "the child exited before committing an add"
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with Gallery(path, model_name="m", model_version="1", dim=64) as g:
            names = g.identities()
            assert names == [f"id{i:04d}" for i in range(len(names))]
            assert len(names) in (committed, committed + 1)
            assert all(g.count(name) == 20000 for name in names)  # all or nothing
        with raw(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# ---------------------------------------------------------------------- export


def test_export_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    alice, bob = unit(rng, 2), unit(rng, 3)
    sigma = np.full((2, 16), 0.25, np.float32)
    with Gallery(tmp_path / "g.db", **MODEL) as g:
        g.add("bob", bob, quality=[1, 2, 3], sources=["b0", None, "b2"])
        g.add("alice", alice, sigma_sq=sigma)
        out = g.export(tmp_path / "gallery.export", sources=True)  # the name is kept as given
        assert out == tmp_path / "gallery.export"
        assert out.stat().st_mode & 0o777 == 0o600  # biometric data
        with np.load(g.export(tmp_path / "plain.npz"), allow_pickle=False) as z:
            assert "source" not in z.files  # where faces came from only when asked
        queries = unit(rng, 10)
        expected = g.search(queries, k=2)
    with np.load(out, allow_pickle=False) as z:
        data = {key: z[key] for key in z.files}
    assert set(data) == {"names", "identity", "vectors", "sigma_sq", "quality", "source", "meta"}
    assert data["names"].tolist() == ["alice", "bob"]
    assert data["identity"].tolist() == [1, 1, 1, 0, 0]  # enrolment order
    np.testing.assert_array_equal(data["vectors"], np.vstack([bob, alice]))
    assert data["vectors"].dtype == np.float32
    assert np.isnan(data["sigma_sq"][:3]).all()
    np.testing.assert_array_equal(data["sigma_sq"][3:], sigma)
    np.testing.assert_array_equal(data["quality"], [1, 2, 3, np.nan, np.nan])
    assert data["source"].tolist() == ["b0", "", "b2", "", ""]
    meta = json.loads(str(data["meta"]))
    assert (meta["model_name"], meta["embedding_dim"]) == ("dlib_resnet_v1", "16")
    with Gallery(None, **MODEL) as copy:  # an export rebuilds an equal gallery, in one import
        assert copy.import_npz(out) == 5
        assert copy.search(queries, k=2)[0] == expected[0]
        np.testing.assert_array_equal(copy.search(queries, k=2)[1], expected[1])
        np.testing.assert_array_equal(copy.embeddings("alice").sigma_sq, sigma)
        assert copy.embeddings("bob").sigma_sq is None and copy.embeddings("bob").sources == ["b0", None, "b2"]
        np.testing.assert_array_equal(copy.embeddings("bob").quality, [1, 2, 3])
    other = {**MODEL, "model_version": "2"}
    with Gallery(None, **other) as g, pytest.raises(ModelMismatchError):
        g.import_npz(out)
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
    with Gallery(None, **MODEL) as g, pytest.raises(GalleryError, match="not a gallery export"):
        g.import_npz(tmp_path / "junk.npz")
    with Gallery(None, **MODEL) as g:
        g.export(tmp_path / "e.npz")
    with np.load(tmp_path / "e.npz", allow_pickle=False) as z:
        assert (z["vectors"].shape, z["names"].shape) == ((0, 16), (0,))
        assert "sigma_sq" not in z.files


# ------------------------------------------------------------ PFE: sigma_sq and MLS search


def reference_mls(
    queries: np.ndarray, q_sigma: np.ndarray, vectors: np.ndarray, sigma: np.ndarray, owners: list[str], k: int
) -> tuple[list[list[str | None]], np.ndarray, np.ndarray]:
    """Brute force in float64: each identity's best-MLS row, ranked by (-score, row)."""
    from sdk.pfe import mls_reference

    scores = mls_reference(queries, q_sigma, vectors, sigma)
    names, best_scores, best_rows = [], np.full((len(queries), k), -np.inf), np.full((len(queries), k), -1)
    for i, row in enumerate(scores):
        best: dict[str, tuple[float, int]] = {}
        for j, (score, owner) in enumerate(zip(row, owners)):
            best[owner] = min(best.get(owner, (np.inf, j)), (-score, j))
        ranked = sorted(best, key=best.__getitem__)[:k]
        names.append(ranked + [None] * (k - len(ranked)))
        best_scores[i, : len(ranked)] = [-best[name][0] for name in ranked]
        best_rows[i, : len(ranked)] = [best[name][1] for name in ranked]
    return names, best_scores, best_rows


def variances(rng: np.random.Generator, n: int) -> np.ndarray:
    return np.exp(rng.uniform(-5, -1, (n, MODEL["dim"]))).astype(np.float32)


def test_search_mls_matches_brute_force(rng: np.random.Generator) -> None:
    owners = [f"id{i}" for i in rng.integers(0, 12, 80)]
    vectors, sigma = unit(rng, 80), variances(rng, 80)
    with Gallery(None, **MODEL) as g:
        for name in dict.fromkeys(owners):
            rows = [i for i, o in enumerate(owners) if o == name]
            g.add(name, vectors[rows], sigma_sq=sigma[rows])
        order = [i for name in dict.fromkeys(owners) for i, o in enumerate(owners) if o == name]
        vectors, sigma, owners = vectors[order], sigma[order], [owners[i] for i in order]  # enrolment order
        queries = np.vstack([unit(rng, 5), vectors[3:5]])
        q_sigma = variances(rng, 7)
        for k in (1, 3, 20):
            names, scores, dist = g.search_mls(queries, q_sigma, k=k)
            ref_names, ref_scores, ref_rows = reference_mls(queries, q_sigma, vectors, sigma, owners, k)
            assert names == ref_names
            np.testing.assert_allclose(scores, ref_scores.astype(np.float32), rtol=1e-5, atol=1e-3)
            found = ref_rows >= 0
            l2 = ((queries[:, None, :].astype(np.float64) - vectors[np.where(found, ref_rows, 0)]) ** 2).sum(-1)
            np.testing.assert_allclose(dist[found], l2[found], atol=1e-5)
            assert np.isinf(dist[~found]).all() and np.isneginf(scores[~found]).all()
        # within_mls: every identity at or above a threshold, best first, its head = search_mls's answer.
        threshold = float(np.median(scores[:, :3]))
        hits = g.within_mls(queries, q_sigma, threshold)
        for i, row in enumerate(hits):
            expected = [(n, s) for n, s in zip(ref_names[i], ref_scores[i]) if n is not None and s >= threshold + 1e-2]
            got = dict(row)
            assert all(n in got and got[n] == pytest.approx(s, rel=1e-5) for n, s in expected)
            assert [s for _, s in row] == sorted((s for _, s in row), reverse=True)
            if row:
                assert row[0][0] == names[i][0]


def test_sigma_is_stored_returned_and_required_for_mls(rng: np.random.Generator, tmp_path: Path) -> None:
    path = tmp_path / "pfe.db"
    mu, sigma = unit(rng, 3), variances(rng, 3)
    with Gallery(path, **MODEL) as g:
        g.add("alice", mu, sigma_sq=sigma, quality=[1.0, 2.0, 3.0], sources=["a.jpg", None, "c.jpg"])
    with Gallery(path, **MODEL) as g:
        stored = g.embeddings("alice")
        np.testing.assert_array_equal(stored.vectors, mu)
        np.testing.assert_array_equal(stored.sigma_sq, sigma)
        assert stored.quality.tolist() == [1.0, 2.0, 3.0] and stored.sources == ["a.jpg", None, "c.jpg"]
        names, scores, _ = g.search_mls(mu[:1], sigma[:1])
        assert names == [["alice"]] and np.isfinite(scores).all()
        with pytest.raises(KeyError, match="'bob' is not enrolled"):
            g.embeddings("bob")
        with pytest.raises(ValueError, match="sigma_sq must be positive"):
            g.search_mls(mu[:1], -sigma[:1])
        with pytest.raises(ValueError, match="shaped like the queries"):
            g.search_mls(mu[:2], sigma[:1])
        g.add("bob", unit(rng, 1))  # an L2-only face: the snapshot reloads and MLS refuses it
        bob = g.embeddings("bob")
        assert bob.sigma_sq is None and np.isnan(bob.quality).all() and bob.sources == [None]
        assert g.search(mu[:1])[0] == [["alice"]]
        with pytest.raises(GalleryError, match="1 of 4 embeddings have no sigma_sq"):
            g.search_mls(mu[:1], sigma[:1])
        with pytest.raises(GalleryError, match="no sigma_sq"):
            g.within_mls(mu[:1], sigma[:1], 0.0)
        g.remove("bob")
        assert g.search_mls(mu[:1], sigma[:1], k=2)[0] == [["alice", None]]


# --- the snapshot kept in memory by this object's own writes -----------------------------------------


def as_reloaded(g: Gallery) -> tuple:
    """(vectors, row owners, sigma_sq or None, rows without sigma) as a reload from the file has them."""
    g._generation += 1  # white box: force a full reload
    snap = g._current()
    owners = [snap.names[i] for i in snap.labels.tolist()]
    return snap.vectors.copy(), owners, None if snap.sigma_sq is None else snap.sigma_sq.copy(), snap.without_sigma


def test_own_writes_update_the_snapshot_as_a_reload_would(tmp_path: Path, rng: np.random.Generator, monkeypatch) -> None:
    g = Gallery(tmp_path / "g.sqlite", **MODEL)
    g.add("seed", unit(rng, 2))
    g.search(unit(rng, 1))  # the first snapshot: one load
    loads = []
    real_load = Gallery._load
    monkeypatch.setattr(Gallery, "_load", lambda self, conn: loads.append(1) or real_load(self, conn))
    steps = [("alice", 3, False), ("bob", 1, True), ("alice", 2, True), ("carol", 4, False), ("-seed", 0, False),
             ("bob", 2, False), ("-alice", 0, False), ("alice", 1, False), ("-nobody", 0, False)]  # fmt: skip
    for name, k, with_sigma in steps:
        if name.startswith("-"):
            g.remove(name[1:])
        else:
            sigma = rng.uniform(0.1, 2, (k, MODEL["dim"])).astype(np.float32) if with_sigma else None
            g.add(name, unit(rng, k), sigma_sq=sigma)
        snap = g._snapshot
        names, _ = g.search(snap.vectors[:1], k=1)  # served from memory
        assert not loads, f"a search reloaded the gallery after {name!r}"
        mine = (snap.vectors.copy(), [snap.names[i] for i in snap.labels.tolist()], snap.sigma_sq, snap.without_sigma)
        reloaded = as_reloaded(g)
        loads.clear()
        np.testing.assert_array_equal(mine[0], reloaded[0])
        assert mine[1] == reloaded[1] and mine[3] == reloaded[3]
        if reloaded[2] is None:
            assert mine[2] is None or np.isnan(mine[2]).all()
        else:
            np.testing.assert_array_equal(mine[2], reloaded[2])
        assert snap.max_per_identity == max(mine[1].count(n) for n in set(mine[1]))
        assert names[0][0] == mine[1][0]
    g.close()


def test_many_enrolments_append_in_place(rng: np.random.Generator) -> None:
    with Gallery(None, **MODEL) as g:
        g.add("first", unit(rng, 1))
        g.search(unit(rng, 1))
        storage = g._snapshot.rows
        for i in range(200):
            g.add(f"p{i}", unit(rng, 1))
        assert g._snapshot.rows is storage, "1,024 rows of room: no copy for 200 more"
        assert len(g._snapshot.labels) == 201 and g._snapshot.sigma_sq is None  # no NaN array without PFE
        earlier = g._snapshot
        g.add("p0", unit(rng, 1))
        assert earlier.vectors.shape[0] == 201 and not earlier.vectors.flags.writeable  # views never change


def test_a_damaged_row_is_left_out_and_repaired(tmp_path: Path, rng: np.random.Generator, caplog) -> None:
    path = tmp_path / "g.sqlite"
    vectors = unit(rng, 4)
    with Gallery(path, **MODEL) as g:
        for name, v in zip(["a", "b", "c", "d"], vectors):
            g.add(name, v[None], sigma_sq=np.ones((1, MODEL["dim"]), np.float32))
    with raw(path) as conn:  # what a broken tool or an attacker might write
        conn.execute("PRAGMA ignore_check_constraints = ON")
        nan, huge = np.full(16, np.nan, "<f4").tobytes(), np.full(16, 1e30, "<f4").tobytes()
        conn.execute("UPDATE embeddings SET vector = ? WHERE id = 1", (nan,))
        conn.execute("UPDATE embeddings SET vector = ? WHERE id = 2", (huge,))
        conn.execute("UPDATE embeddings SET vector = ? WHERE id = 3", (b"short",))
        conn.execute("UPDATE embeddings SET sigma_sq = ? WHERE id = 4", (np.full(16, -1, "<f4").tobytes(),))
    with Gallery(path, **MODEL) as g, caplog.at_level("WARNING", logger="sdk"):
        names, dist = g.search(vectors, k=1)  # nothing left to match, but no error
        assert names == [[None]] * 4 and "4 embedding(s) left out" in caplog.text
        g.add("e", unit(rng, 1), sigma_sq=np.ones((1, 16), np.float32))
        assert g.search(vectors[:1], k=1)[0] == [["e"]]
        found = g.check()
        assert [(b.row, b.identity) for b in found] == [(1, "a"), (2, "b"), (3, "c"), (4, "d")]
        assert "NaN, Inf or values too large" in found[0].reason and "5 bytes, expected 64" in found[2].reason
        assert "not positive finite variances" in found[3].reason
        assert g.repair() == found and g.check() == [] and g.count() == 1


def test_add_many_enrols_in_one_transaction(tmp_path: Path, rng: np.random.Generator) -> None:
    vectors = unit(rng, 6)
    with Gallery(tmp_path / "g.db", **MODEL) as g:
        g.add("bob", unit(rng, 1))
        g.search(vectors[:1])
        assert g.add_many(["ann", "bob", "ann", "cy", "dee", "bob"], vectors) == 6
        assert g.identities() == ["ann", "bob", "cy", "dee"] and g.count("bob") == 3
        assert g.search(vectors, k=1)[0] == [["ann"], ["bob"], ["ann"], ["cy"], ["dee"], ["bob"]]
        with pytest.raises(ValueError, match="6 str"):
            g.add_many(["a"], vectors)
        with pytest.raises(ValueError):
            g.add_many(["a"] * 5 + [" "], vectors)  # one bad name: nothing written
        assert g.count() == 7


def test_gallery_files_are_private(tmp_path: Path, rng: np.random.Generator) -> None:
    old = os.umask(0o022)
    try:
        with Gallery(tmp_path / "g.db", **MODEL) as g:
            g.add("a", unit(rng, 1))
            files = [p for p in tmp_path.iterdir() if p.name.startswith("g.db")]
            assert {p.name for p in files} >= {"g.db", "g.db-wal"}
            assert all(p.stat().st_mode & 0o777 == 0o600 for p in files), [oct(p.stat().st_mode) for p in files]
    finally:
        os.umask(old)


def test_the_sdk_home_is_private(tmp_path: Path) -> None:
    from sdk.paths import private_dir

    old = os.umask(0o022)
    try:
        made = private_dir(tmp_path / "home" / "models")
    finally:
        os.umask(old)
    assert (made.stat().st_mode & 0o777, made.parent.stat().st_mode & 0o777) == (0o700, 0o700)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv to act as another user")
def test_a_gallery_in_a_read_only_directory_opens_read_only(rng: np.random.Generator) -> None:
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="facesdk-ro-"))
    try:
        with Gallery(folder / "g.db", **MODEL) as g:
            g.add("alice", unit(rng, 1))
        (folder / "g.db").chmod(0o644)
        folder.chmod(0o555)  # nobody (the user below) may read, not write, and no -shm can be made
        code = (
            "import sys, numpy as np\nsys.path.insert(0, sys.argv[1])\nfrom sdk.gallery import Gallery\n"
            f"g = Gallery(sys.argv[2], **{MODEL!r})\n"
            "print(g.read_only, g.identities(), g.search(np.ones((1, 16), np.float32))[0])\n"
            "try:\n    g.add('bob', np.ones((1, 16), np.float32))\nexcept Exception as e:\n    print(type(e).__name__)\n"
        )
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c"]
        probe = subprocess.run([*as_nobody, "import sys; sys.path.insert(0, sys.argv[1]); import sdk.gallery", str(REPO)],
                               capture_output=True, text=True, timeout=60)  # fmt: skip
        if probe.returncode != 0:
            pytest.skip(f"another user cannot run this checkout's Python here: {probe.stderr.strip()[-200:]}")
        out = subprocess.run([*as_nobody, code, str(REPO), str(folder / "g.db")], capture_output=True, text=True, timeout=60)
        assert out.stdout.split("\n")[:2] == ["True ['alice'] [['alice']]", "GalleryError"], out.stderr
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder)
