"""The enrolment gallery: identities and their embeddings in one SQLite file.

::

    with Gallery("gallery.db", model_name="dlib_resnet_v1", model_version="1", dim=128) as g:
        g.add("alice", embeddings)                      # [k, 128], one transaction
        names, dist = g.search(queries, k=3)            # best 3 *distinct* identities per query
        hits = g.within(queries, threshold=0.6)         # every identity within a distance
        g.add("bob", mu, sigma_sq=sigma_sq, quality=q)  # a PFE model's faces
        names, mls, dist = g.search_mls(mu_q, sigma_q, k=3)   # by mutual likelihood score
        g.embeddings("bob")                             # vectors, sigma_sq, quality, sources

The file
    A gallery belongs to one embedding model: ``meta`` stores the schema version,
    model name, model version and embedding dimension, and opening the file with
    another model raises :class:`~sdk.errors.ModelMismatchError`. A file that is
    not SQLite, or SQLite without our schema, or that fails ``PRAGMA quick_check``
    raises :class:`~sdk.errors.GalleryError`; it is first checked over a read-only
    connection, so such a file is never written. (Reading a WAL-mode file, SQLite
    may leave its side files beside it: an empty ``-wal`` and a 32 KiB ``-shm``
    index; the file itself stays byte for byte.) An empty (0-byte) file is
    initialised as a new gallery.

    Tables::

        meta(key TEXT PRIMARY KEY, value TEXT)  -- schema_version, model_name, model_version,
                                                -- embedding_dim, created (ISO 8601, UTC)
        identities(id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT UNIQUE NOT NULL, created REAL)
        embeddings(id INTEGER PRIMARY KEY,
                   identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
                   vector BLOB NOT NULL,        -- float32 little-endian, dim * 4 bytes
                   sigma_sq BLOB NULL,          -- PFE variance, same layout
                   quality REAL NULL, source TEXT NULL, created REAL)

    Plain values only (no pickle): the file can be read from any language. The
    journal is WAL, so other processes can match while one enrols; commits are
    ``synchronous=FULL``, so a killed process (or a power cut, on storage that
    honours fsync) loses at most the transaction in flight, never a committed one.

Threads
    One connection, shared by all threads behind a lock (``check_same_thread=False``):
    every SQL statement runs under the lock, the matching kernels run outside it
    (they release the GIL), so searches from many threads proceed in parallel.
    An ``add``/``remove`` on this object holds the lock for its transaction, so
    searches wait for it (milliseconds for an enrolment); enrolment from another
    process does not block matching here (WAL).

Matching
    Searches run over an in-memory snapshot (vectors float32 ``[n, dim]``, row ->
    identity label, names) loaded on first use and reloaded only when the database
    changed: this object's own writes bump a generation counter, other connections'
    commits show in ``PRAGMA data_version``. A snapshot is an immutable tuple
    replaced by one assignment, so a search holds a consistent one throughout.

    :meth:`Gallery.search` returns the ``k`` best *distinct* identities, each
    ranked by its nearest image (ties: the image enrolled first). It runs
    :func:`sdk.kernels.topk` for ``k' = (k - 1) * m + 1`` rows, ``m`` the most
    images any identity has: ``k - 1`` identities hold at most ``(k - 1) * m``
    rows, so those ``k'`` nearest rows hold at least ``k`` identities, and the
    first ``k`` distinct ones in that order are the answer. Top-1 is exactly one
    top-1 kernel call whatever ``m`` is; for ``k > 1`` the cost grows with ``m``.

    Rows that fail the checks ``add`` makes (a damaged or hand-edited file: NaN, Inf, huge or
    wrong-length vectors, bad variances) are left out of the snapshot with a warning, so the
    others stay searchable; :meth:`Gallery.check` lists them and :meth:`Gallery.repair`
    deletes them. This object's own ``add`` and ``remove`` update the snapshot in memory
    (appending in place, or copying the rest), off the lock: searches never wait for a reload
    of the whole gallery after an enrolment here; a change made by another connection is
    read by a reload.

    ``precision="fp16"|"int8"`` keeps the snapshot's rows compressed (:func:`sdk.kernels.compress`:
    264 or 140 bytes per 128-D row instead of 512) with each row's id in the file; a search scans
    them and reads the few candidate rows back from the file, which always keeps float32, so its
    answers are exactly float32's (``docs/compressed_galleries.md``). A row read back must still
    compress to the snapshot's codes, else (another connection removed it) the search starts
    again on a fresh snapshot.

    :meth:`Gallery.search_mls` does the same with the mutual likelihood score of
    Probabilistic Face Embeddings (highest first, :func:`sdk.pfe.mls_topk`) over the
    stored ``sigma_sq``; :meth:`Gallery.within_mls` is :meth:`within` for MLS. Both
    need every row enrolled with a sigma_sq (GalleryError otherwise).
"""

from __future__ import annotations

import itertools
import json
import logging
import operator
import os
import sqlite3
import threading
import time
import unicodedata
import zipfile
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from sdk import kernels, pfe
from sdk.errors import GalleryError, InvalidArgumentError, ModelMismatchError

__all__ = ["Gallery", "Enrolled", "BadRow", "SCHEMA_VERSION", "MAX_NAME_LENGTH"]

log = logging.getLogger("sdk")

SCHEMA_VERSION = 1
MAX_NAME_LENGTH = 256
BUSY_TIMEOUT_S = 10.0
# A stored row's squared norm must stay well inside float32, or every later
# search would fail in the kernels' overflow check (which sums in float32).
_MAX_SQ_NORM = float(np.finfo(np.float32).max) / 4
_LOAD_CHUNK = 8192  # rows per fetch when loading the snapshot: bounds the extra memory
_IDS_PER_SELECT = 500  # ids per SELECT ... IN (...) when a compressed search reads its candidates
_STALE_RETRIES = 5


class _StaleSnapshot(Exception):
    """A compressed snapshot's rows changed in the file before a search read them back."""

_TABLES = ("meta", "identities", "embeddings")
# The embeddings that count. The join skips rows orphaned by a tool that deleted an
# identity with foreign keys off (SQLite's default), where the cascade does not run.
_ROWS = "FROM embeddings JOIN identities ON identities.id = embeddings.identity_id"

T = TypeVar("T")
# A damaged file may hold text that is not UTF-8: sqlite3 raises UnicodeDecodeError reading it.
_SQL_ERRORS = (sqlite3.Error, UnicodeDecodeError)


def _schema(dim: int) -> str:
    nbytes = 4 * dim
    return f"""
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE identities(
        id INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: no one inherits orphaned rows
        name TEXT UNIQUE NOT NULL,
        created REAL);
    CREATE TABLE embeddings(
        id INTEGER PRIMARY KEY,
        identity_id INTEGER NOT NULL REFERENCES identities(id) ON DELETE CASCADE,
        vector BLOB NOT NULL CHECK (length(vector) = {nbytes}),
        sigma_sq BLOB NULL CHECK (sigma_sq IS NULL OR length(sigma_sq) = {nbytes}),
        quality REAL NULL,
        source TEXT NULL,
        created REAL);
    CREATE INDEX embeddings_identity ON embeddings(identity_id);
    """


class Enrolled(NamedTuple):
    """The stored faces of one identity (:meth:`Gallery.embeddings`)."""

    vectors: np.ndarray  # float32 [k, dim]
    sigma_sq: np.ndarray | None  # float32 [k, dim] (NaN rows where absent); None when no row has one
    quality: np.ndarray  # float64 [k], NaN where absent
    sources: list[str | None]


class BadRow(NamedTuple):
    """A stored embedding that cannot be matched (a damaged or hand-edited file)."""

    row: int  # embeddings.id
    identity: str
    reason: str


class _Rows:
    """Growable storage that snapshots view: rows (vectors, labels, variances) and identities
    (names, rows per identity). Both are only appended past everything a published snapshot
    shows (``filled``, ``named``), so a snapshot's views never change under a search; only the
    writer, one at a time, appends. ``counts`` is the writer's, never read by a search.

    Vectors are kept in the gallery's precision: float32 as stored, or compressed (fp16, int8)
    with each row's id in the file, whose float32 row re-ranks a compressed search's candidates."""

    def __init__(self, dim: int, capacity: int, with_sigma: bool, names: int, precision: str = "fp32") -> None:
        self.precision = precision
        if precision == "fp32":
            self.vectors, self.ids = np.empty((capacity, dim), np.float32), None
        else:
            self.codes = np.empty((capacity, dim), np.uint16 if precision == "fp16" else np.int8)
            self.scale = np.empty(capacity if precision == "int8" else 0, np.float32)
            self.error, self.norm = np.empty(capacity, np.float32), np.empty(capacity, np.float32)
            self.ids = np.empty(capacity, np.int64)
            self.max_error = self.max_norm = 0.0
        self.labels = np.empty(capacity, np.intp)
        self.sigma_sq = np.full((capacity, dim), np.nan, np.float32) if with_sigma else None
        self.names = np.empty(_capacity(names), object)
        self.counts = np.zeros(len(self.names), np.int64)
        self.filled = self.named = 0
        self.index: dict[str, int] | None = None  # name -> label, built on the first write

    def put(self, at: int, vectors: np.ndarray, ids: np.ndarray | None) -> None:
        """Rows ``[at, at + len(vectors))``: ``vectors`` (float32, checked) with their ids in the file."""
        stop = at + len(vectors)
        if self.ids is None:
            self.vectors[at:stop] = vectors
            return
        packed = kernels.compress(vectors, self.precision)
        self.codes[at:stop], self.error[at:stop], self.norm[at:stop] = packed.codes, packed.error, packed.norm
        self.ids[at:stop] = ids
        if self.precision == "int8":
            self.scale[at:stop] = packed.scale
        # Maxima never shrink: after a removal they still bound every row left.
        self.max_error, self.max_norm = max(self.max_error, packed.max_error), max(self.max_norm, packed.max_norm)

    def copy_rows(self, other: _Rows, n: int, keep: np.ndarray | slice = slice(None)) -> None:
        """The first rows here: ``other``'s first ``n`` rows (those selected by ``keep``)."""
        if self.ids is None:
            picked = other.vectors[:n][keep]
            self.vectors[: len(picked)] = picked
            return
        picked = other.codes[:n][keep]
        k = len(picked)
        self.codes[:k], self.error[:k], self.norm[:k] = picked, other.error[:n][keep], other.norm[:n][keep]
        self.ids[:k] = other.ids[:n][keep]
        if self.precision == "int8":
            self.scale[:k] = other.scale[:n][keep]
        self.max_error, self.max_norm = other.max_error, other.max_norm

    def matrix(self, n: int) -> np.ndarray | kernels.CompressedGallery:
        """What searches scan: the first ``n`` rows, as read-only views."""
        if self.ids is None:
            return _frozen(self.vectors[:n])
        scale = self.scale[:n] if self.precision == "int8" else self.scale
        return kernels.CompressedGallery(self.precision, _frozen(self.codes[:n]), _frozen(scale),
                                         _frozen(self.error[:n]), _frozen(self.norm[:n]), self.max_error,
                                         self.max_norm)  # fmt: skip

    def room_for_names(self, count: int) -> None:
        """Grow the identity arrays to hold ``count`` (copies, as the row arrays never need to)."""
        if count > len(self.names):
            names, counts = np.empty(_capacity(count), object), np.zeros(_capacity(count), np.int64)
            names[: self.named], counts[: self.named] = self.names[: self.named], self.counts[: self.named]
            self.names, self.counts = names, counts


def _frozen(view: np.ndarray) -> np.ndarray:
    view.flags.writeable = False
    return view


class _Snapshot(NamedTuple):
    generation: int  # the gallery's generation when this was taken
    rows: _Rows  # the storage the arrays below view
    # [n, dim] in enrolment order, read-only: float32 C-contiguous, or compressed (precision=)
    vectors: np.ndarray | kernels.CompressedGallery
    labels: np.ndarray  # intp [n]: row -> index into names
    names: np.ndarray  # object [m], read-only: identities with at least one usable embedding, by id
    max_per_identity: int  # most rows any one identity holds (0 when empty)
    sigma_sq: np.ndarray | None  # float32 [n, dim], PFE variances (NaN rows where absent); None: no row has one
    without_sigma: int  # rows enrolled without sigma_sq (MLS search needs none)
    bad: tuple[BadRow, ...]  # rows left out, with the reason
    ids: np.ndarray | None = None  # int64 [n]: each row's id in the file (compressed precisions)


def _capacity(n: int) -> int:
    """Room for the rows and some growth, so the next enrolments append without a copy."""
    return n + max(n // 16, 1024)


def _published(generation: int, rows: _Rows, n: int, m: int, most: int, without_sigma: int,
               bad: tuple[BadRow, ...]) -> _Snapshot:  # fmt: skip
    """A snapshot of ``rows``' first ``n`` rows and ``m`` identities, as read-only views."""
    rows.filled, rows.named = max(rows.filled, n), max(rows.named, m)
    sigma = _frozen(rows.sigma_sq[:n]) if rows.sigma_sq is not None else None
    ids = _frozen(rows.ids[:n]) if rows.ids is not None else None
    return _Snapshot(generation, rows, rows.matrix(n), _frozen(rows.labels[:n]), _frozen(rows.names[:m]), most,
                     sigma, without_sigma, bad, ids)  # fmt: skip


def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a transaction is exactly one call.
    return sqlite3.connect(
        target, uri=uri, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
    )


def clean_name(identity: object) -> str:
    """An identity name as the gallery stores and looks it up: Unicode NFC (a composed and a
    decomposed "é" are one identity), or InvalidArgumentError: not a str, empty, surrounding
    whitespace, control characters, too long. Whitespace is refused rather than stripped, so
    that "  Tony_Blair  " never silently adds to (or removes) "Tony_Blair"."""
    if not isinstance(identity, str):
        raise InvalidArgumentError(f"identity name must be a str, got {type(identity).__name__}")
    if not identity.strip():
        raise InvalidArgumentError("identity name is empty (or only whitespace)")
    if identity != identity.strip():
        raise InvalidArgumentError(
            f"identity name {identity[:40]!r} has surrounding whitespace: pass {identity.strip()[:40]!r} if that is meant"
        )
    # Control characters (NUL, newlines) break logs and `gallery list`; lone surrogates cannot be stored.
    # (isprintable() is a fast "none of them" for the usual name: it refuses a superset.)
    bad = None if identity.isprintable() else next((c for c in identity if unicodedata.category(c) in ("Cc", "Cs")), None)
    if bad is not None:
        raise InvalidArgumentError(f"identity name {identity[:40]!r} holds the unprintable character {bad!r}")
    name = unicodedata.normalize("NFC", identity)
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidArgumentError(
            f"identity name has {len(name)} characters, at most {MAX_NAME_LENGTH} allowed"
        )
    return name


def _matrix(x: object, what: str, dim: int) -> np.ndarray:
    """``x`` as float32 C-contiguous ``[rows, dim]``, every row finite and safe, or ValueError."""
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as e:  # ragged nesting and the like
        raise InvalidArgumentError(f"{what} cannot be read as an array: {e}") from e
    if arr.dtype.kind not in "fiu":
        raise InvalidArgumentError(f"{what} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidArgumentError(f"{what} must have shape [rows, {dim}], got {arr.shape}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf and are reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    # One test catches NaN, Inf and overflow: NaN compares false, Inf squares to inf.
    sq_norms = np.einsum("ij,ij->i", out, out, dtype=np.float64)
    bad = np.flatnonzero(~(sq_norms <= _MAX_SQ_NORM))
    if bad.size:
        raise InvalidArgumentError(
            f"{what} rows {bad[:5].tolist()} hold NaN, Inf or values too large for float32"
        )
    return out


def _blobs(blobs: list[object], dim: int, what: str, variances: bool = False) -> tuple[np.ndarray, list[str | None]]:
    """Stored rows as float32 ``[len, dim]`` and, per row, why it cannot be used (None: it can;
    a missing variance is allowed). The same checks as ``_matrix``, row by row."""
    nbytes = 4 * dim
    problems: list[str | None] = [None] * len(blobs)
    sized = [i for i, blob in enumerate(blobs) if type(blob) is bytes and len(blob) == nbytes]
    if len(sized) == len(blobs):  # the usual case: one copy, no per-row indexing
        out = np.frombuffer(b"".join(blobs), "<f4").reshape(-1, dim).copy()  # type: ignore[arg-type]
        block = out
    else:
        out = np.full((len(blobs), dim), np.nan if variances else 0.0, np.float32)  # NaN: no variance stored
        for i, blob in enumerate(blobs):
            if not (type(blob) is bytes and len(blob) == nbytes) and not (blob is None and variances):
                size = f"{len(blob)} bytes" if isinstance(blob, bytes) else f"a {type(blob).__name__}"
                problems[i] = f"{what} is {size}, expected {nbytes} bytes"
        if sized:
            out[sized] = np.frombuffer(b"".join(blobs[i] for i in sized), "<f4").reshape(-1, dim)  # type: ignore[misc]
        block = out[sized]
    if len(block):
        if variances:
            usable = np.isfinite(block).all(1) & (block > 0).all(1)
            message = f"{what} holds values that are not positive finite variances"
        else:
            usable = np.einsum("ij,ij->i", block, block, dtype=np.float64) <= _MAX_SQ_NORM  # NaN compares false
            message = f"{what} holds NaN, Inf or values too large for float32"
        for i in np.asarray(sized)[~usable].tolist():
            problems[i] = message
    return out, problems


def _index(snap: _Snapshot) -> dict[str, int]:
    """name -> label (index into ``names``) of a snapshot, kept with its storage: names of one
    ``_Rows`` only ever grow at the end, so a map of the same length is this snapshot's."""
    index = snap.rows.index
    if index is None or len(index) != len(snap.names):
        index = snap.rows.index = {n: i for i, n in enumerate(snap.names.tolist())}
    return index


def _create_private(path: Path) -> None:
    """An empty file readable by its owner only (0600, whatever the umask), unless one exists."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        return
    except OSError as e:
        raise GalleryError(f"cannot open gallery {path}: cannot create it: {e.strerror}") from e
    os.fchmod(fd, 0o600)
    os.close(fd)


def _checked_k(k: object) -> int:
    if isinstance(k, bool):
        raise InvalidArgumentError("k must be an integer, got bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise InvalidArgumentError(f"k must be an integer, got {type(k).__name__}") from None
    if k < 1:
        raise InvalidArgumentError(f"k must be >= 1, got {k}")
    return k


def _checked_threshold(value: object, minimum: float = -np.inf) -> float:
    if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
        raise InvalidArgumentError(f"threshold must be a number, got {type(value).__name__}")
    if not (np.isfinite(value) and value >= minimum):
        raise InvalidArgumentError(f"threshold must be a finite number >= {minimum}, got {value}")
    return float(value)


def _distinct(labels: np.ndarray, found: int) -> tuple[np.ndarray, np.ndarray]:
    """Columns ``[q, found]`` of each query's first ``found`` distinct identities in a ranked
    ``[q, rows]`` label matrix (best first), and those identities' labels."""
    # Mark each identity's first (best) column per query: a stable sort keeps the columns
    # of one identity in rank order, so the first of a run is its best.
    order = np.argsort(labels, axis=1, kind="stable")
    ranked = np.take_along_axis(labels, order, axis=1)
    first_in_run = np.ones(labels.shape, bool)
    first_in_run[:, 1:] = ranked[:, 1:] != ranked[:, :-1]
    first = np.empty_like(first_in_run)
    np.put_along_axis(first, order, first_in_run, axis=1)
    keep = first & (np.cumsum(first, axis=1) <= found)
    cols = np.nonzero(keep)[1].reshape(len(labels), found)
    return cols, np.take_along_axis(labels, cols, axis=1)


def _read_meta(conn: sqlite3.Connection, where: str) -> dict[str, str]:
    """The meta table of a gallery file, or GalleryError when it is not one (of this schema)."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    missing = [t for t in _TABLES if t not in tables]
    if missing:
        raise GalleryError(
            f"{where} is an SQLite file but not a gallery: no table {', '.join(missing)} "
            f"(it holds {sorted(tables) or 'no tables'})"
        )
    meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise GalleryError(
            f"{where} has gallery schema version {meta.get('schema_version')!r}; "
            f"this SDK reads version {SCHEMA_VERSION}"
        )
    return meta


class Gallery:
    """Enrolled identities and their embeddings for one model, in an SQLite file or in memory.

    ``path=None`` (or ``":memory:"``) keeps the gallery in memory (tests, tools).
    Opening an existing file checks it and raises :class:`GalleryError` (corrupt,
    foreign, newer schema) or :class:`ModelMismatchError` (another model, version or dim).
    ``precision`` ("fp32", "fp16", "int8") is the in-memory rows' format (the file keeps float32;
    decisions are float32's at every precision). Thread-safe; usable as a context manager
    (closes on exit).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None,
        *,
        model_name: str,
        model_version: str,
        dim: int,
        network: tuple[str, str] | None = None,
        read_only: bool = False,
        precision: str = "fp32",
    ) -> None:
        for label, value in (("model_name", model_name), ("model_version", model_version)):
            if not isinstance(value, str) or not value.strip():
                raise InvalidArgumentError(f"{label} must be a non-empty str, got {value!r}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise InvalidArgumentError(f"dim must be an int >= 1, got {dim!r}")
        if precision not in kernels.PRECISIONS:
            raise InvalidArgumentError(f"precision must be one of {', '.join(kernels.PRECISIONS)}, got {precision!r}")
        self.model_name, self.model_version, self.dim = model_name, model_version, dim
        self.precision = precision  # of the in-memory rows searches scan; the file keeps float32
        # (precision, SHA-256 of the network's graph): the first recorded for a precision is the
        # only one accepted, so another network under the same name and version is refused.
        self.network = network
        self.path: Path | None = None  # in memory, for None and SQLite's own ":memory:"
        if path is not None and os.fspath(path) != ":memory:":
            self.path = Path(path)
        self._where = ":memory:" if self.path is None else str(self.path)
        # An existing file we may not write (or was asked not to) is opened read-only: matching
        # works, enrolment raises GalleryError.
        self.read_only = self.path is not None and self.path.is_file() and (
            read_only or not (os.access(self.path, os.W_OK) and os.access(self.path.parent, os.W_OK))
        )
        self._lock = threading.RLock()  # the connection and the snapshot pointer
        self._writer = threading.Lock()  # this object's writes, one at a time
        self._generation = 0  # bumped after every change this object knows of
        self._data_version: int | None = None  # last PRAGMA data_version seen
        self._snapshot: _Snapshot | None = None
        self._conn: sqlite3.Connection | None = self._open()

    # ----------------------------------------------------------------- opening

    def _open(self) -> sqlite3.Connection:
        fresh = True  # nothing there yet (or an empty file): we may have to write the schema
        if self.path is None:
            target = ":memory:"
        else:
            if self.path.is_dir():
                raise GalleryError(f"{self.path} is a directory, not a gallery file")
            if self.path.exists() and self.path.stat().st_size > 0:
                self._check_read_only()
                fresh = False
            else:
                _create_private(self.path)  # biometric data: SQLite gives its side files the same mode
            target = str(self.path)
        if self.read_only:
            return self._open_read_only()
        try:
            conn = _connect(target)
        except _SQL_ERRORS as e:
            raise GalleryError(f"cannot open gallery {self._where}: {e}") from e
        try:
            conn.execute("PRAGMA foreign_keys = ON")  # the cascade from identities to embeddings
            conn.execute("PRAGMA synchronous = FULL")  # a commit is on disk when add() returns
            # IMMEDIATE only when creating: two processes creating one file then take turns,
            # while opening an existing gallery never waits for another process's enrolment.
            conn.execute("BEGIN IMMEDIATE" if fresh else "BEGIN")
            try:
                if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                    self._create(conn)
                meta = _read_meta(conn, self._where)
                self._check_model(meta)
                if self.network is not None and f"network_sha256:{self.network[0]}" not in meta:
                    conn.execute("INSERT INTO meta(key, value) VALUES (?, ?)", (f"network_sha256:{self.network[0]}", self.network[1]))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            # After the checks: switching a foreign file to WAL would rewrite its header.
            conn.execute("PRAGMA journal_mode = WAL")
        except _SQL_ERRORS as e:
            conn.close()
            raise GalleryError(f"cannot open gallery {self._where}: {e}") from e
        except BaseException:
            conn.close()
            raise
        return conn

    def _read_only_uri(self) -> str:
        assert self.path is not None
        uri = self.path.resolve().as_uri() + "?mode=ro"
        # SQLite reads a WAL file through a -shm index beside it; where none can be made (a
        # read-only directory), the file is read as immutable: others' later changes are unseen.
        return uri if os.access(self.path.parent, os.W_OK) else uri + "&immutable=1"

    def _open_read_only(self) -> sqlite3.Connection:
        try:
            conn = _connect(self._read_only_uri(), uri=True)
            conn.execute("BEGIN")
            self._check_model(_read_meta(conn, self._where))
            conn.execute("COMMIT")
        except _SQL_ERRORS as e:
            raise GalleryError(f"cannot open gallery {self._where} read-only: {e}") from e
        return conn

    def _check_read_only(self) -> None:
        """Checks an existing file over a read-only connection: a foreign one is never written."""
        assert self.path is not None
        try:
            ro = _connect(self._read_only_uri(), uri=True)
        except _SQL_ERRORS as e:
            raise GalleryError(f"cannot open gallery {self.path}: {e}") from e
        try:
            meta = _read_meta(ro, str(self.path))
            problems = [r[0] for r in ro.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise GalleryError(f"{self.path} is corrupt: {'; '.join(problems[:3])}")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise GalleryError(f"{self.path} is not a readable gallery: {e}") from e
        finally:
            ro.close()
        self._check_model(meta)

    def _create(self, conn: sqlite3.Connection) -> None:
        for statement in _schema(self.dim).split(";"):
            if statement.strip():
                conn.execute(statement)
        meta = {
            "schema_version": str(SCHEMA_VERSION),
            "model_name": self.model_name,
            "model_version": self.model_version,
            "embedding_dim": str(self.dim),
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)", meta.items())

    def _check_model(self, meta: dict[str, str]) -> None:
        held = (meta.get("model_name"), meta.get("model_version"), meta.get("embedding_dim"))
        asked = (self.model_name, self.model_version, str(self.dim))
        if held != asked:
            raise ModelMismatchError(
                f"{self._where} holds embeddings of model {held[0]!r} version {held[1]!r} "
                f"(dim {held[2]}), but model {asked[0]!r} version {asked[1]!r} (dim {asked[2]}) "
                "was asked for; use a gallery enrolled with this model, or re-enrol"
            )
        if self.network is not None:
            precision, digest = self.network
            enrolled = meta.get(f"network_sha256:{precision}")
            if enrolled is not None and enrolled != digest:
                raise ModelMismatchError(
                    f"{self._where} was enrolled with another {precision} network under the name {self.model_name!r} "
                    f"version {self.model_version!r} (graph sha256 {enrolled[:12]}..., this file's {digest[:12]}...): "
                    "a replaced or tampered model file; use the model the gallery was enrolled with, or re-enrol"
                )

    # ---------------------------------------------------------------- plumbing

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise GalleryError(f"gallery {self._where} is closed")
        return self._conn

    def _write(
        self,
        sql_steps: Callable[[sqlite3.Connection], T],
        update: Callable[[_Snapshot, T], _Snapshot] | None = None,
    ) -> T:
        """``sql_steps(conn)`` in one IMMEDIATE transaction (all or nothing); returns its result.

        ``update(snapshot, result)`` gives the in-memory snapshot after the change. It runs after
        the commit and off the lock, so searches go on over the old snapshot meanwhile instead of
        waiting for a reload of the whole gallery; without it, the next search reloads.
        """
        if self.read_only:
            raise GalleryError(f"gallery {self._where} is opened read-only (no write permission there, or read_only=True)")
        with self._writer:
            with self._lock:
                conn = self._connection()
                try:
                    base = self._snapshot_if_current(conn)
                    conn.execute("BEGIN IMMEDIATE")
                    try:
                        result = sql_steps(conn)
                        conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:  # a failed COMMIT may have rolled back already
                            conn.execute("ROLLBACK")
                        raise
                except _SQL_ERRORS as e:
                    raise GalleryError(f"gallery {self._where}: write failed: {e}") from e
                if update is None or base is None:
                    self._generation += 1
                    return result
                generation = self._generation
            snapshot = update(base, result)
            with self._lock:
                # Unless a search reloaded meanwhile (another process committed): that reload
                # read this change from the file already.
                if self._generation == generation:
                    self._generation += 1
                    self._snapshot = snapshot._replace(generation=self._generation)
            return result

    def _read(self, sql_steps: Callable[[sqlite3.Connection], T]) -> T:
        """Runs ``sql_steps(conn)`` in one read transaction, so its queries see one state."""
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN")
                try:
                    return sql_steps(conn)
                finally:
                    conn.execute("COMMIT")
            except _SQL_ERRORS as e:
                raise GalleryError(f"gallery {self._where}: read failed: {e}") from e

    # ---------------------------------------------------------------- enrolment

    def add(
        self,
        identity: str,
        embeddings: ArrayLike,
        *,
        sigma_sq: ArrayLike | None = None,
        quality: ArrayLike | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> int:
        """Adds ``embeddings [k, dim]`` to ``identity`` (created if new); returns ``k``.

        One transaction: every row is validated first (finite, right dim, real
        numbers; ``sigma_sq`` positive, same shape; ``quality`` k finite numbers;
        ``sources`` k str or None), and any bad row raises ``InvalidArgumentError`` (a ValueError) with
        nothing written.
        """
        name = clean_name(identity)
        vectors = _matrix(embeddings, "embeddings", self.dim)
        return self._insert([name] * len(vectors), vectors, sigma_sq, quality, sources)

    def add_many(
        self,
        names: Sequence[str],
        embeddings: ArrayLike,
        *,
        sigma_sq: ArrayLike | None = None,
        quality: ArrayLike | None = None,
        sources: Sequence[str | None] | None = None,
    ) -> int:
        """Bulk enrolment: row i of ``embeddings`` (and of the other arrays) for ``names[i]``
        (names may repeat), validated as :meth:`add` does and written in one transaction."""
        vectors = _matrix(embeddings, "embeddings", self.dim)
        if isinstance(names, str) or len(names) != len(vectors):
            raise InvalidArgumentError(f"names must be a sequence of {len(vectors)} str, one per embedding")
        return self._insert([clean_name(n) for n in names], vectors, sigma_sq, quality, sources)

    def apply(self, changes: Sequence[tuple], meta: dict[str, str] | None = None, *,
              extra: Callable[[sqlite3.Connection], T] | None = None) -> T | None:  # fmt: skip
        """Applies a batch of changes in order, in one transaction, for a replica
        (:mod:`sdk.replica`): ``("add", name, embeddings, sigma_sq, quality)`` (``name`` a str, or
        one per row) and ``("remove", name)``; ``meta`` keys are written in the same transaction
        (the replica's applied version), and ``extra(conn)`` runs in it last (the replica's own
        bookkeeping; its result is returned). All or nothing: an invalid row raises before
        anything is written."""
        prepared = []
        for change in changes:
            if change[0] == "add":
                _, name, embeddings, sigma_sq, quality = change
                vectors = _matrix(embeddings, "embeddings", self.dim)
                names = [clean_name(name)] * len(vectors) if isinstance(name, str) else [clean_name(n) for n in name]
                if len(names) != len(vectors):
                    raise InvalidArgumentError(f"an add of {len(vectors)} embeddings names {len(names)} identities")
                prepared.append(self._prepared_insert(names, vectors, sigma_sq, quality, None))
            elif change[0] == "remove":
                name = clean_name(change[1])
                prepared.append((
                    lambda conn, name=name: conn.execute("DELETE FROM identities WHERE name = ?", (name,)),
                    lambda snap, _, name=name: self._without(snap, name),
                ))  # fmt: skip
            else:
                raise InvalidArgumentError(f"unknown change {change[0]!r}: expected 'add' or 'remove'")

        def steps(conn: sqlite3.Connection) -> T | None:
            for sql_steps, _ in prepared:
                sql_steps(conn)
            conn.executemany("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (meta or {}).items())
            return None if extra is None else extra(conn)

        def update(snap: _Snapshot, _: object) -> _Snapshot:
            for _, change in prepared:
                snap = change(snap, None)
            return snap

        return self._write(steps, update)

    def import_npz(self, path: str | os.PathLike[str]) -> int:
        """Enrols every row of a file written by :meth:`export` (of a gallery of this model), in
        one transaction; returns the rows added. Rows without a variance stay without one."""
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {key: f[key] for key in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise GalleryError(f"{path} is not a gallery export (.npz): {e}") from e
        missing = [key for key in ("names", "identity", "vectors", "meta") if key not in arrays]
        if missing:
            raise GalleryError(f"{path} is not a gallery export: it lacks {', '.join(missing)}")
        try:
            meta = json.loads(str(arrays["meta"]))
            self._check_model(meta)
            names, identity = arrays["names"], arrays["identity"]
            if identity.ndim != 1 or identity.dtype.kind not in "iu" or len(identity) and not (
                0 <= identity.min() and identity.max() < len(names)
            ):
                raise ValueError("its identity column does not index its names")
            row_names = [clean_name(str(n)) for n in names[identity].tolist()]
        except (ValueError, TypeError) as e:
            raise GalleryError(f"{path}: {e}") from e
        vectors = _matrix(arrays["vectors"], "vectors", self.dim)
        sigma = arrays.get("sigma_sq")
        quality = arrays.get("quality")
        quality = None if quality is None or np.isnan(quality).all() else np.nan_to_num(quality, nan=0.0)
        sources = arrays.get("source")
        sources = None if sources is None else [s or None for s in sources.tolist()]
        return self._insert(row_names, vectors, sigma, quality, sources, absent_sigma=True)

    def _insert(
        self,
        names: list[str],
        vectors: np.ndarray,
        sigma_sq: ArrayLike | None,
        quality: ArrayLike | None,
        sources: Sequence[str | None] | None,
        absent_sigma: bool = False,
    ) -> int:
        """Rows ``vectors`` (validated) for ``names`` (clean), in one transaction. With
        ``absent_sigma``, a ``sigma_sq`` row of NaN means "no variance" (the export format)."""
        return self._write(*self._prepared_insert(names, vectors, sigma_sq, quality, sources, absent_sigma))

    def _prepared_insert(
        self,
        names: list[str],
        vectors: np.ndarray,
        sigma_sq: ArrayLike | None,
        quality: ArrayLike | None,
        sources: Sequence[str | None] | None,
        absent_sigma: bool = False,
    ) -> tuple[Callable[[sqlite3.Connection], int], Callable[[_Snapshot, int], _Snapshot]]:
        """The SQL steps and the snapshot update of an insert (``_write``'s arguments), its
        arguments validated first."""
        k = len(vectors)
        if k == 0:
            raise InvalidArgumentError("embeddings is empty: nothing to add")
        sigma = None
        if sigma_sq is not None:
            sigma = np.asarray(sigma_sq)
            absent = np.isnan(sigma).all(axis=1) if absent_sigma and sigma.ndim == 2 else np.zeros(len(sigma), bool)
            sigma = _matrix(np.where(absent[:, None], 1.0, sigma), "sigma_sq", self.dim)
            if len(sigma) != k:
                raise InvalidArgumentError(f"sigma_sq has {len(sigma)} rows, embeddings {k}")
            if not (sigma > 0).all():
                raise InvalidArgumentError("sigma_sq must be positive (variances)")
            sigma[absent] = np.nan
        quality_rows: list[float | None] = [None] * k
        if quality is not None:
            q = np.asarray(quality)
            if q.dtype.kind not in "fiu" or q.shape != (k,) or not np.isfinite(q).all():
                raise InvalidArgumentError(f"quality must be {k} finite numbers, got {quality!r}")
            quality_rows = q.astype(float).tolist()
        source_rows: list[str | None] = [None] * k
        if sources is not None:
            source_rows = [] if isinstance(sources, str) else list(sources)  # one str is not k
            valid = all(s is None or isinstance(s, str) for s in source_rows)
            if len(source_rows) != k or not valid:
                raise InvalidArgumentError(f"sources must be {k} str (or None), got {sources!r}")
        data, width = vectors.astype("<f4", copy=False).tobytes(), 4 * self.dim
        blobs = [data[i : i + width] for i in range(0, len(data), width)]
        sigma_rows = [None] * k if sigma is None else [None if np.isnan(r[0]) else r.tobytes() for r in sigma.astype("<f4", copy=False)]
        unique = list(dict.fromkeys(names))  # first appearance: the order the ids are given in
        row_ids: list[np.ndarray] = []  # the rows' ids in the file, for a compressed snapshot (steps sets them)

        def steps(conn: sqlite3.Connection) -> int:
            now = time.time()
            (last,) = conn.execute("SELECT coalesce(max(id), 0) FROM identities").fetchone()
            conn.executemany(
                "INSERT INTO identities(name, created) VALUES (?, ?) ON CONFLICT(name) DO NOTHING",
                [(name, now) for name in unique],
            )
            # The names just created have the ids past `last`; the others are looked up one by one.
            ids = {name: i for i, name in conn.execute("SELECT id, name FROM identities WHERE id > ?", (last,))}
            for name in unique:
                if name not in ids:
                    ids[name] = conn.execute("SELECT id FROM identities WHERE name = ?", (name,)).fetchone()[0]
            (last_row,) = conn.execute("SELECT coalesce(max(id), 0) FROM embeddings").fetchone()
            conn.executemany(
                "INSERT INTO embeddings(identity_id, vector, sigma_sq, quality, source, created) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                zip((ids[n] for n in names), blobs, sigma_rows, quality_rows, source_rows, itertools.repeat(now)),
            )
            if self.precision != "fp32":
                # The rows' ids, for a compressed snapshot's re-rank: past the largest before, in order.
                found = conn.execute("SELECT id FROM embeddings WHERE id > ? ORDER BY id", (last_row,)).fetchall()
                row_ids.append(np.array(found, np.int64).reshape(-1))
            return k

        return steps, lambda snap, _: self._with_rows(snap, names, vectors, sigma, row_ids[-1] if row_ids else None)

    def remove(self, identity: str) -> bool:
        """Removes an identity and all its embeddings; False when it was not enrolled."""
        name = clean_name(identity)
        return self._write(
            lambda conn: conn.execute("DELETE FROM identities WHERE name = ?", (name,)).rowcount > 0,
            lambda snap, _: self._without(snap, name),
        )

    # ------------------------------------------------------------------ queries

    def identities(self) -> list[str]:
        """Enrolled identity names, sorted."""
        return self._read(
            lambda conn: [r[0] for r in conn.execute("SELECT name FROM identities ORDER BY name")]
        )

    def identity_count(self) -> int:
        """How many identities a search compares with (the N of 1:N): those with a usable face,
        from the in-memory snapshot every search uses (no query on the hot path)."""
        return len(self._current().names)

    def face_count(self) -> int:
        """How many faces a search compares with, from the in-memory snapshot (no query)."""
        return len(self._current().labels)

    def count(self, identity: str | None = None) -> int:
        """Embeddings in the gallery, or of one identity (0 when it is not enrolled)."""
        if identity is None:
            return self._read(lambda conn: conn.execute(f"SELECT count(*) {_ROWS}").fetchone()[0])
        name = clean_name(identity)
        return self._read(
            lambda conn: conn.execute(
                f"SELECT count(*) {_ROWS} WHERE name = ?", (name,)
            ).fetchone()[0]
        )

    def __len__(self) -> int:
        return self.count()

    def embeddings(self, identity: str) -> Enrolled:
        """What is stored for one identity, in enrolment order; KeyError when it is not enrolled."""
        name = clean_name(identity)

        def steps(conn: sqlite3.Connection) -> list[tuple]:
            return conn.execute(
                f"SELECT vector, sigma_sq, quality, source {_ROWS} WHERE name = ? ORDER BY embeddings.id",
                (name,),
            ).fetchall()

        rows = self._read(steps)
        if not rows:
            raise KeyError(f"{name!r} is not enrolled in {self._where}")
        try:
            return self._enrolled(rows)
        except (ValueError, TypeError) as e:
            raise GalleryError(f"{self._where} is corrupt: the embeddings of {name!r} cannot be read ({e})") from e

    def _enrolled(self, rows: list[tuple]) -> Enrolled:
        dim = self.dim
        if any(len(r[0]) != 4 * dim or (r[1] is not None and len(r[1]) != 4 * dim) for r in rows):
            raise ValueError(f"a stored vector is not {dim} float32")
        vectors = np.frombuffer(b"".join(r[0] for r in rows), "<f4").astype(np.float32).reshape(-1, dim)
        sigma = None
        if any(r[1] is not None for r in rows):
            nan_row = np.full(dim, np.nan, "<f4").tobytes()
            blob = b"".join(nan_row if r[1] is None else r[1] for r in rows)
            sigma = np.frombuffer(blob, "<f4").astype(np.float32).reshape(-1, dim)
        quality = np.array([np.nan if r[2] is None else r[2] for r in rows], np.float64)
        return Enrolled(vectors, sigma, quality, [r[3] for r in rows])

    def meta(self) -> dict[str, str]:
        """The meta table: schema_version, model_name, model_version, embedding_dim, created."""
        return self._read(lambda conn: dict(conn.execute("SELECT key, value FROM meta").fetchall()))

    # ----------------------------------------------------------------- matching

    def _current(self) -> _Snapshot:
        """A snapshot of the committed gallery, reloaded if anything changed since it was taken.

        While the lock is busy (this object writing, reloading, or another search checking) a
        search takes the snapshot it has rather than wait: the holder's change is not in memory
        yet either way, and the next search checks again."""
        if self._snapshot is not None and not self._lock.acquire(blocking=False):
            if self._conn is None:
                raise GalleryError(f"gallery {self._where} is closed")
            return self._snapshot
        if self._snapshot is None:
            self._lock.acquire()
        try:
            conn = self._connection()
            snapshot = self._snapshot_if_current(conn)
            if snapshot is None:
                snapshot = self._read(self._load)
                self._snapshot = snapshot  # one assignment: searches see old or new, never half
            return snapshot
        except _SQL_ERRORS as e:
            raise GalleryError(f"gallery {self._where}: read failed: {e}") from e
        finally:
            self._lock.release()

    def _snapshot_if_current(self, conn: sqlite3.Connection) -> _Snapshot | None:
        """The snapshot, unless something changed since it was taken (under the lock)."""
        version = conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:  # another connection committed
            self._data_version = version
            self._generation += 1
        snapshot = self._snapshot
        return snapshot if snapshot is not None and snapshot.generation == self._generation else None

    def _with_rows(self, snap: _Snapshot, row_names: list[str], vectors: np.ndarray, sigma_sq: np.ndarray | None,
                   row_ids: np.ndarray | None) -> _Snapshot:  # fmt: skip
        """``snap`` with ``vectors`` appended, row i for ``row_names[i]`` (``sigma_sq`` NaN rows:
        no variance; ``row_ids`` their ids in the file), as a reload would load them."""
        n, m, k, rows = len(snap.labels), len(snap.names), len(vectors), snap.rows
        index = _index(snap)
        if rows.filled != n or rows.named != m or len(rows.labels) < n + k or (sigma_sq is not None and rows.sigma_sq is None):
            grown = _Rows(self.dim, _capacity(n + k), snap.sigma_sq is not None or sigma_sq is not None, m + k, self.precision)
            grown.copy_rows(rows, n)
            grown.labels[:n], grown.names[:m] = snap.labels, snap.names
            grown.counts[:m] = rows.counts[:m]
            if snap.sigma_sq is not None:
                grown.sigma_sq[:n] = snap.sigma_sq
            grown.index = index = dict(index)
            rows = grown
        new: list[str] = []  # identities new to the snapshot have the highest ids: they come last
        labels = np.empty(k, np.intp)
        for i, name in enumerate(row_names):
            label = index.get(name)
            if label is None:
                label = index[name] = m + len(new)
                new.append(name)
            labels[i] = label
        rows.room_for_names(m + len(new))
        rows.names[m : m + len(new)] = new
        np.add.at(rows.counts, labels, 1)
        rows.put(n, vectors, row_ids)
        rows.labels[n : n + k] = labels
        if rows.sigma_sq is not None:
            rows.sigma_sq[n : n + k] = np.nan if sigma_sq is None else sigma_sq
        most = max(snap.max_per_identity, int(rows.counts[labels].max()))
        absent = k if sigma_sq is None else int(np.isnan(sigma_sq[:, 0]).sum())
        return _published(snap.generation, rows, n + k, m + len(new), most, snap.without_sigma + absent, snap.bad)

    def _without(self, snap: _Snapshot, name: str) -> _Snapshot:
        """``snap`` without ``name``'s rows (a copy of the rest)."""
        label = _index(snap).get(name)
        bad = tuple(b for b in snap.bad if b.identity != name)
        if label is None:
            return snap._replace(bad=bad)
        keep = snap.labels != label
        n, m = int(keep.sum()), len(snap.names) - 1
        rows = _Rows(self.dim, _capacity(n), snap.sigma_sq is not None, m, self.precision)
        rows.copy_rows(snap.rows, len(keep), keep)
        labels = snap.labels[keep]
        labels -= labels > label
        rows.labels[:n] = labels
        rows.names[:m] = np.delete(snap.names, label)
        rows.counts[:m] = np.bincount(labels, minlength=m)
        without = snap.without_sigma
        if snap.sigma_sq is not None:
            rows.sigma_sq[:n] = snap.sigma_sq[keep]
            without -= int(np.isnan(snap.sigma_sq[~keep, 0]).sum())
        else:
            without = n
        most = int(rows.counts[:m].max()) if m else 0
        return _published(snap.generation, rows, n, m, most, without, bad)

    def _load(self, conn: sqlite3.Connection) -> _Snapshot:
        """Every usable row, in enrolment order; rows that fail the checks ``add`` makes are left
        out and listed (``bad``), so one damaged row does not stop matching the others."""
        # Damage that PRAGMA quick_check does not see (an index that disagrees with its table,
        # a name of the wrong type) shows here as numpy errors.
        try:
            return self._load_rows(conn)
        except (ValueError, TypeError, KeyError, IndexError) as e:
            raise GalleryError(f"{self._where} is corrupt: its embeddings cannot be read ({e})") from e

    def _load_rows(self, conn: sqlite3.Connection) -> _Snapshot:
        dim = self.dim
        (n,) = conn.execute(f"SELECT count(*) {_ROWS}").fetchone()
        with_sigma = conn.execute(f"SELECT 1 {_ROWS} WHERE sigma_sq IS NOT NULL LIMIT 1").fetchone() is not None
        (m,) = conn.execute("SELECT count(*) FROM identities").fetchone()
        rows = _Rows(dim, _capacity(n), with_sigma, m, self.precision)
        identity_ids = np.empty(n, np.int64)
        bad: list[BadRow] = []
        kept, without_sigma = 0, 0
        cursor = conn.execute(f"SELECT embeddings.id, identity_id, name, vector, sigma_sq {_ROWS} ORDER BY embeddings.id")
        while chunk := cursor.fetchmany(_LOAD_CHUNK):
            vectors, vector_problems = _blobs([r[3] for r in chunk], dim, "vector")
            problems = vector_problems
            if with_sigma:
                sigma, sigma_problems = _blobs([r[4] for r in chunk], dim, "sigma_sq", variances=True)
                problems = [v or s for v, s in zip(vector_problems, sigma_problems)]
            good = [i for i, problem in enumerate(problems) if problem is None]
            bad += [BadRow(chunk[i][0], chunk[i][2], problem) for i, problem in enumerate(problems) if problem]
            stop = kept + len(good)
            rows.put(kept, vectors[good], np.array([chunk[i][0] for i in good], np.int64))
            identity_ids[kept:stop] = [chunk[i][1] for i in good]
            if with_sigma:
                rows.sigma_sq[kept:stop] = sigma[good]
            without_sigma += sum(chunk[i][4] is None for i in good)
            kept = stop
        if bad:
            shown = "; ".join(f"row {b.row} of {b.identity!r}: {b.reason}" for b in bad[:3])
            log.warning("gallery %s: %d embedding(s) left out of matching (%s); `facesdk gallery check --repair` "
                        "removes them", self._where, len(bad), shown)  # fmt: skip
        names_by_id = dict(conn.execute("SELECT id, name FROM identities").fetchall())
        if not all(isinstance(name, str) for name in names_by_id.values()):
            raise TypeError("an identity name is not text")
        present, labels = np.unique(identity_ids[:kept], return_inverse=True)
        rows.labels[:kept] = labels
        m = len(present)
        rows.room_for_names(m)
        rows.names[:m] = [names_by_id[i] for i in present.tolist()]
        rows.counts[:m] = np.bincount(labels, minlength=m)
        most = int(rows.counts[:m].max()) if m else 0
        return _published(self._generation, rows, kept, m, most, without_sigma, tuple(bad))

    def check(self) -> list[BadRow]:
        """Rows that cannot be matched (NaN, Inf, huge or wrong-length vectors, bad variances),
        read afresh from the file; matching leaves them out."""
        with self._lock:
            self._connection()
            self._generation += 1  # a fresh load, whatever the snapshot holds
            self._snapshot = snapshot = self._read(self._load)
        return list(snapshot.bad)

    def repair(self) -> list[BadRow]:
        """Deletes the rows :meth:`check` finds, in one transaction; returns them."""
        bad = self.check()
        if bad:
            self._write(lambda conn: conn.executemany("DELETE FROM embeddings WHERE id = ?", [(b.row,) for b in bad]))
        return bad

    def search(
        self, queries: ArrayLike, k: int = 1
    ) -> tuple[list[list[str | None]], np.ndarray]:
        """The ``k`` nearest distinct identities of each query ``[q, dim]``, nearest first.

        Returns ``(names, distances)``: ``names[i][j]`` is a str, or None where the
        gallery holds fewer than ``k`` identities; ``distances`` float32 ``[q, k]``
        (squared L2 to the identity's nearest image; inf where names is None).
        """
        k = _checked_k(k)
        q = _matrix(queries, "queries", self.dim)
        snap = self._current()
        names: list[list[str | None]] = [[None] * k for _ in range(len(q))]
        distances = np.full((len(q), k), np.inf, np.float32)
        if min(k, len(snap.names)) == 0 or len(q) == 0:
            return names, distances

        def nearest(snap: _Snapshot) -> tuple[np.ndarray, np.ndarray]:
            rows = min(len(snap.labels), (k - 1) * snap.max_per_identity + 1)
            return kernels.topk(q, snap.vectors, rows, exact=self._exact_rows(snap))

        snap, (idx, dist) = self._scan(snap, nearest)
        found = min(k, len(snap.names))  # every query gets exactly this many identities
        if found == k == 1:  # the nearest face is the nearest identity (a door's search, every frame)
            return [[snap.names[j]] for j in snap.labels[idx[:, 0]].tolist()], dist
        cols, labels = _distinct(snap.labels[idx], found)
        distances[:, :found] = np.take_along_axis(dist, cols, axis=1)
        for i, row in enumerate(labels.tolist()):
            names[i][:found] = [snap.names[j] for j in row]
        return names, distances

    def search_mls(
        self, queries: ArrayLike, sigma_sq: ArrayLike, k: int = 1
    ) -> tuple[list[list[str | None]], np.ndarray, np.ndarray]:
        """The ``k`` distinct identities of highest mutual likelihood score (PFE), best first.

        ``queries`` and ``sigma_sq``: ``[q, dim]``, the faces' mu and variances. Each identity
        is ranked by its best image (ties: the image enrolled first), as :meth:`search` does
        with distances. Returns ``(names, scores, distances)``: names as :meth:`search`;
        ``scores`` float32 ``[q, k]`` MLS (-inf where names is None); ``distances`` float32
        ``[q, k]``, squared L2 from the query's mu to that best image (inf where None).
        Runs :func:`sdk.pfe.mls_topk` (the C++ kernels when built). Every row of the gallery
        must hold sigma_sq (enrolled with a PFE model), else GalleryError.
        """
        k = _checked_k(k)
        q = _matrix(queries, "queries", self.dim)
        s = _matrix(sigma_sq, "sigma_sq", self.dim)
        if s.shape != q.shape or not (s > 0).all():
            raise InvalidArgumentError(f"sigma_sq must be positive and shaped like the queries {q.shape}, got {s.shape}")
        snap = self._current()
        self._check_sigma(snap)
        names: list[list[str | None]] = [[None] * k for _ in range(len(q))]
        scores = np.full((len(q), k), -np.inf, np.float32)
        distances = np.full((len(q), k), np.inf, np.float32)
        found = min(k, len(snap.names))
        if found == 0 or len(q) == 0:
            return names, scores, distances
        rows = min(len(snap.labels), (k - 1) * snap.max_per_identity + 1)
        idx, score = pfe.mls_topk(q, s, snap.vectors, snap.sigma_sq, rows, check_gallery=False)
        cols, labels = _distinct(snap.labels[idx], found)
        best = np.take_along_axis(idx, cols, axis=1)
        scores[:, :found] = np.take_along_axis(score, cols, axis=1)
        diff = q[:, None, :].astype(np.float64) - snap.vectors[best]
        distances[:, :found] = (diff * diff).sum(-1)
        for i, row in enumerate(labels.tolist()):
            names[i][:found] = [snap.names[j] for j in row]
        return names, scores, distances

    def within_mls(self, queries: ArrayLike, sigma_sq: ArrayLike, threshold: float) -> list[list[tuple[str, float]]]:
        """For each query, every identity whose best image has MLS >= ``threshold``:
        ``[(name, score), ...]`` per query, best first (ties: the image enrolled first)."""
        threshold = _checked_threshold(threshold)
        q = _matrix(queries, "queries", self.dim)
        s = _matrix(sigma_sq, "sigma_sq", self.dim)
        if s.shape != q.shape or not (s > 0).all():
            raise InvalidArgumentError(f"sigma_sq must be positive and shaped like the queries {q.shape}, got {s.shape}")
        snap = self._current()
        self._check_sigma(snap)
        if snap.sigma_sq is None:  # an empty gallery (_check_sigma refuses rows without sigma_sq)
            return [[] for _ in range(len(q))]
        m = pfe.mls_match(q, s, snap.vectors, snap.sigma_sq, threshold, check_gallery=False)
        return self._best_per_identity(snap, len(q), m.query, m.gallery, -m.score.astype(np.float64), sign=-1.0)

    def _check_sigma(self, snap: _Snapshot) -> None:
        if self.precision != "fp32":
            raise GalleryError(f"{self._where}: MLS search reads float32 means; this gallery keeps {self.precision} "
                               "rows in memory (open it with precision='fp32')")  # fmt: skip
        if snap.without_sigma:
            raise GalleryError(
                f"{self._where}: {snap.without_sigma} of {len(snap.labels)} embeddings have no sigma_sq; "
                "MLS search needs every face enrolled with a PFE model (re-enrol them, or search by L2)"
            )

    def within(self, queries: ArrayLike, threshold: float) -> list[list[tuple[str, float]]]:
        """For each query, every identity whose nearest image is within ``threshold`` (squared L2).

        ``[(name, distance), ...]`` per query, nearest first, ranked like :meth:`search`
        (ties: the image enrolled first), so its head equals ``search``'s answer.
        """
        threshold = _checked_threshold(threshold, minimum=0.0)
        q = _matrix(queries, "queries", self.dim)
        snap, m = self._scan(self._current(), lambda s: kernels.match(q, s.vectors, threshold, exact=self._exact_rows(s)))
        return self._best_per_identity(snap, len(q), m.query, m.gallery, m.distance)

    def _scan(self, snap: _Snapshot, search: Callable[[_Snapshot], T]) -> tuple[_Snapshot, T]:
        """``search(snap)``, again over a newer snapshot when rows a compressed search reads back
        from the file were removed (or replaced) since the snapshot was taken."""
        for _ in range(_STALE_RETRIES):
            try:
                return snap, search(snap)
            except _StaleSnapshot:
                with self._writer:  # this object's write in flight publishes its snapshot first
                    pass
                snap = self._current()
        raise GalleryError(f"gallery {self._where} changed under {_STALE_RETRIES} searches in a row; try again")

    def _exact_rows(self, snap: _Snapshot) -> Callable[[np.ndarray], np.ndarray] | None:
        """For a compressed snapshot, the float32 rows of its row numbers, read from the file
        (where they are exact, whatever the in-memory precision); None for float32."""
        if snap.ids is None:
            return None

        def read(rows: np.ndarray) -> np.ndarray:
            ids = snap.ids[rows].tolist()
            found: dict[int, bytes] = {}
            with self._lock:
                conn = self._connection()
                for at in range(0, len(ids), _IDS_PER_SELECT):
                    part = ids[at : at + _IDS_PER_SELECT]
                    sql = f"SELECT id, vector FROM embeddings WHERE id IN ({','.join('?' * len(part))})"
                    found.update(conn.execute(sql, part).fetchall())
            # Enrolments since the snapshot leave its rows alone; a removal deletes some, and a
            # later row may take a deleted id. So a row must be there and compress to exactly
            # the snapshot's codes and bounds, which keeps the answer exact (the bound holds for
            # any row with those codes, error and norm).
            blobs = [found.get(i) for i in ids]
            if any(type(b) is not bytes or len(b) != 4 * self.dim for b in blobs):
                raise _StaleSnapshot
            vectors = np.frombuffer(b"".join(blobs), "<f4").reshape(len(ids), self.dim)  # type: ignore[arg-type]
            try:
                again = kernels.compress(vectors, snap.vectors.precision)
            except ValueError:
                raise _StaleSnapshot from None
            mine = snap.vectors
            if not all(np.array_equal(a, b) for a, b in ((again.codes, mine.codes[rows]), (again.error, mine.error[rows]),
                                                           (again.norm, mine.norm[rows]))):  # fmt: skip
                raise _StaleSnapshot
            if again.precision == "int8" and not np.array_equal(again.scale, mine.scale[rows]):
                raise _StaleSnapshot
            return vectors

        return read

    @staticmethod
    def _best_per_identity(
        snap: _Snapshot, nq: int, query: np.ndarray, gallery: np.ndarray, cost: np.ndarray, sign: float = 1.0
    ) -> list[list[tuple[str, float]]]:
        """Matched pairs -> per query, each identity's lowest-cost pair, lowest cost first
        (ties: the image enrolled first); the value reported is ``sign * cost``."""
        labels = snap.labels[gallery]
        # Per (query, identity) keep the best pair: lowest cost, then first enrolled.
        order = np.lexsort((gallery, cost, labels, query))
        qi, li, gi, di = query[order], labels[order], gallery[order], cost[order]
        best = np.ones(len(qi), bool)
        best[1:] = (qi[1:] != qi[:-1]) | (li[1:] != li[:-1])
        qi, li, gi, di = qi[best], li[best], gi[best], di[best]
        order = np.lexsort((gi, di, qi))
        out: list[list[tuple[str, float]]] = [[] for _ in range(nq)]
        for i, j, d in zip(qi[order].tolist(), li[order].tolist(), di[order].tolist()):
            out[i].append((snap.names[j], sign * d))
        return out

    # ------------------------------------------------------------------- export

    def export(self, path: str | os.PathLike[str], *, sources: bool = False) -> Path:
        """Writes the gallery to ``path`` as an ``.npz`` (name kept as given); returns the path.

        The file holds every enrolled face's template (biometric data): it is created 0600.
        ``sources`` (default False) also writes where each face came from (e.g. image paths).

        Arrays (plain dtypes: ``np.load(path)`` needs no pickle), one row per
        embedding in enrolment order:

        - ``names``: str ``[m]``, identity names, sorted
        - ``identity``: int64 ``[n]``, row -> index into ``names``
        - ``vectors``: float32 ``[n, dim]``
        - ``sigma_sq``: float32 ``[n, dim]``, only when some row has one (NaN rows where absent)
        - ``quality``: float64 ``[n]``, NaN where absent
        - ``source``: str ``[n]``, '' where absent; only with ``sources=True``
        - ``meta``: 0-d str, the meta table as a JSON object

        Written to a temporary file beside ``path`` and renamed, so ``path`` is
        either the old file or the complete new one.
        """
        dim = self.dim

        def steps(conn: sqlite3.Connection) -> dict[str, np.ndarray]:
            names = [r[0] for r in conn.execute("SELECT name FROM identities ORDER BY name")]
            rows = conn.execute(
                f"SELECT name, vector, sigma_sq, quality, source {_ROWS} ORDER BY embeddings.id"
            ).fetchall()
            meta = dict(conn.execute("SELECT key, value FROM meta").fetchall())
            index = {name: i for i, name in enumerate(names)}
            nan_row = np.full(dim, np.nan, "<f4").tobytes()
            arrays = {
                "names": np.array(names, dtype=str),
                "identity": np.array([index[r[0]] for r in rows], np.int64),
                "vectors": np.frombuffer(b"".join(r[1] for r in rows), "<f4")
                .astype(np.float32)
                .reshape(-1, dim),
                "quality": np.array([np.nan if r[3] is None else r[3] for r in rows], np.float64),
                "meta": np.array(json.dumps(meta)),
            }
            if sources:
                arrays["source"] = np.array(["" if r[4] is None else r[4] for r in rows], dtype=str)
            if any(r[2] is not None for r in rows):
                sigma = b"".join(nan_row if r[2] is None else r[2] for r in rows)
                arrays["sigma_sq"] = np.frombuffer(sigma, "<f4").astype(np.float32).reshape(-1, dim)
            return arrays

        arrays = self._read(steps)
        target = Path(path)
        tmp = target.with_name(target.name + ".tmp")
        try:
            tmp.unlink(missing_ok=True)
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "wb") as f:  # a file object: np.savez adds no '.npz' to the name
                np.savez(f, **arrays)
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return target

    # ------------------------------------------------------------------ closing

    def close(self) -> None:
        """Closes the file (idempotent); later calls raise GalleryError."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
                self._snapshot = None

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._conn is None else "open"
        return (
            f"Gallery({self._where!r}, model_name={self.model_name!r}, "
            f"model_version={self.model_version!r}, dim={self.dim}, precision={self.precision!r}, {state})"
        )
