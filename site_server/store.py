"""The central store of a site, in PostgreSQL: identities, faces, the change log, tokens, events.

::

    store = CentreStore("host=/run/postgresql dbname=facesdk")
    store.migrate()                                   # versioned SQL files, in order
    store.init_model(ModelInfo("dlib_resnet_v1", "1", 128))
    version = store.enrol("alice", vectors, network=("fp32", sha256), origin="admin:desk")
    batch = store.changes(since=0)                    # what an edge has not applied yet
    store.remove("alice")                             # a tombstone: the faces are deleted

Versions. Every write takes the row lock of ``log_head`` and counts on from it, so versions are
assigned one writer at a time and in commit order: when a reader sees version v committed, every
version below v is committed too (PostgreSQL releases a transaction's locks only after its commit
is visible). A sequence would not do: two transactions may take 5 and 6 and commit 6 first, and an
edge that pulled 6 would never ask for 5. The cost is that writes to one site are serial (an
enrolment holds the lock for its few inserts); reads never wait.

Removal. Deleting an identity cascades to its faces and from them to their 'add' entries of the
log, in the transaction that appends the 'remove' entry: nothing of the person's templates is
left, and the log keeps only that the name was removed. Edges pull past the holes this leaves.

Conflicts (a kiosk's enrolment made offline, pushed later). The centre's order decides: a pushed
enrolment gets the next version when it arrives. A removal wins over an older add: an enrolment
made by a device that had applied version b is refused when its identity was removed at a version
above b (the device had not seen that removal). An enrolment for another model is refused.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import queue
import secrets
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from sdk.errors import CentreUnavailableError, ChangeRefusedError, FaceSDKError, InvalidArgumentError, ModelMismatchError
from sdk.gallery import clean_name

try:
    import psycopg
except ModuleNotFoundError as e:  # the server extra
    raise ModuleNotFoundError("the site's central store needs psycopg 3: pip install -e '.[server]'", name=e.name) from e

log = logging.getLogger("site")

CHANNEL = "facesdk_changes"  # NOTIFY channel: the payload is the new head version
SCOPES = ("admin", "device", "kiosk")
TOKEN_PREFIX = "fsk_"
PULL_LIMIT = 5000


@dataclass(frozen=True)
class ModelInfo:
    name: str
    version: str
    dim: int

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "dim": self.dim}


@dataclass(frozen=True)
class Token:
    name: str
    scope: str


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) of every migration shipped, in order."""
    folder = resources.files("site_server") / "migrations"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.name, entry.read_text()))
    return sorted(found)


def token_digest(secret: str) -> bytes:
    """What is stored of a token: SHA-256 of it. A token holds 256 random bits, so a plain hash
    (no salt, no slow KDF) is enough: nobody can guess one to match a leaked digest."""
    return hashlib.sha256(secret.encode()).digest()


class _Pool:
    """A few reusable connections. Made for a PostgreSQL that may restart under us: a connection
    idle for a while is checked before use (a restart breaks it silently), a broken one is
    dropped, and when the server is down a request fails at once (no reconnect backoff that
    would keep a site offline after PostgreSQL is back)."""

    CHECK_AFTER_S = 1.0

    def __init__(self, dsn: str, size: int, timeout_s: float) -> None:
        self.dsn, self.timeout_s = dsn, timeout_s
        self._idle: queue.LifoQueue = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(size)

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.dsn, connect_timeout=max(2, int(self.timeout_s)))

    def _reused(self) -> psycopg.Connection | None:
        while True:
            try:
                conn, since = self._idle.get_nowait()
            except queue.Empty:
                return None
            if time.monotonic() - since < self.CHECK_AFTER_S:
                return conn
            try:
                conn.execute("SELECT 1")
                conn.rollback()
                return conn
            except psycopg.Error:
                conn.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        if not self._slots.acquire(timeout=self.timeout_s):
            raise CentreUnavailableError(f"the central store is busy: no connection free within {self.timeout_s:g} s")
        conn = None
        try:
            conn = self._reused() or self._connect()
            yield conn
        finally:
            if conn is not None:
                if conn.broken or conn.closed or conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    conn.close()
                else:
                    self._idle.put((conn, time.monotonic()))
            self._slots.release()

    def close(self) -> None:
        while True:
            try:
                self._idle.get_nowait()[0].close()
            except queue.Empty:
                return


class CentreStore:
    """The site's PostgreSQL, through a small connection pool (thread-safe)."""

    def __init__(self, dsn: str, *, pool_size: int = 8, timeout_s: float = 5.0) -> None:
        self.dsn = dsn
        self.pool = _Pool(dsn, pool_size, timeout_s)
        self._model: ModelInfo | None = None

    def close(self) -> None:
        self.pool.close()

    def __enter__(self) -> CentreStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        """A pooled connection; CentreUnavailableError when PostgreSQL cannot be reached."""
        try:
            with self.pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as e:
            raise CentreUnavailableError(f"the central store is unreachable: {e}") from e

    def _run(self, steps, *, isolation: psycopg.IsolationLevel | None = None):
        """``steps(cursor)`` in one transaction (committed when it returns)."""
        with self.connection() as conn:
            conn.isolation_level = isolation
            with conn.transaction(), conn.cursor() as cur:
                return steps(cur)

    # ------------------------------------------------------------------ schema

    def migrate(self) -> list[str]:
        """Applies the migrations not applied yet, each in its own transaction; returns their
        names. An advisory lock makes concurrent servers take turns."""

        def steps(cur) -> list[str]:
            cur.execute("SELECT pg_advisory_xact_lock(hashtext('facesdk_migrate'))")
            cur.execute("CREATE TABLE IF NOT EXISTS schema_version "
                        "(version int PRIMARY KEY, name text NOT NULL, applied timestamptz NOT NULL DEFAULT now())")  # fmt: skip
            cur.execute("SELECT version FROM schema_version")
            done = {r[0] for r in cur.fetchall()}
            shipped = migrations()
            newer = done - {v for v, _, _ in shipped}
            if newer:
                raise FaceSDKError(f"the central store has schema versions {sorted(newer)} this software does not know: upgrade it")
            applied = []
            for version, name, sql in shipped:
                if version not in done:
                    cur.execute(sql)
                    cur.execute("INSERT INTO schema_version(version, name) VALUES (%s, %s)", (version, name))
                    applied.append(name)
            return applied

        applied = self._run(steps)
        for name in applied:
            log.info("site store: applied migration %s", name)
        return applied

    def init_model(self, model: ModelInfo) -> ModelInfo:
        """Records the site's model on first use; afterwards another model raises ModelMismatchError."""

        def steps(cur) -> None:
            cur.executemany(
                "INSERT INTO site_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING",
                [("model_name", model.name), ("model_version", model.version), ("embedding_dim", str(model.dim))],
            )

        self._run(steps)
        held = self.model()
        if held != model:
            raise ModelMismatchError(
                f"the site enrols with model {held.name!r} version {held.version!r} (dim {held.dim}), "
                f"not {model.name!r} version {model.version!r} (dim {model.dim})"
            )
        return held

    def model(self) -> ModelInfo:
        if self._model is None:
            meta = self.meta()
            if "model_name" not in meta:
                raise FaceSDKError("the site has no model yet: start `facesdk serve` once, or init_model()")
            self._model = ModelInfo(meta["model_name"], meta["model_version"], int(meta["embedding_dim"]))
        return self._model

    def meta(self) -> dict[str, str]:
        def steps(cur) -> dict[str, str]:
            cur.execute("SELECT key, value FROM site_meta")
            return dict(cur.fetchall())

        return self._run(steps)

    # ---------------------------------------------------------------- enrolment

    def _check_network(self, cur, network: tuple[str, str]) -> None:
        """The first network recorded for a precision is the only one accepted."""
        precision, digest = network
        key = f"network_sha256:{precision}"
        cur.execute("INSERT INTO site_meta(key, value) VALUES (%s, %s) ON CONFLICT (key) DO NOTHING", (key, digest))
        cur.execute("SELECT value FROM site_meta WHERE key = %s", (key,))
        held = cur.fetchone()[0]
        if held != digest:
            raise ChangeRefusedError(
                f"the site's {precision} faces were computed by network {held[:12]}..., this change by "
                f"{digest[:12]}...: another (or a tampered) model file; changes for another model are refused"
            )

    def _check_rows(self, vectors: object, sigma_sq: object, quality: object) -> tuple[np.ndarray, np.ndarray | None, list]:
        dim = self.model().dim
        v = np.asarray(vectors, dtype=np.float32)
        if v.ndim != 2 or v.shape[1] != dim or len(v) == 0:
            raise InvalidArgumentError(f"embeddings must have shape [k>=1, {dim}] for this site's model, got {v.shape}")
        if not np.isfinite(v).all():
            raise InvalidArgumentError("embeddings hold NaN or Inf")
        s = None
        if sigma_sq is not None:
            s = np.asarray(sigma_sq, dtype=np.float32)
            if s.shape != v.shape or not (np.isfinite(s).all() and (s > 0).all()):
                raise InvalidArgumentError(f"sigma_sq must be positive finite variances shaped {v.shape}")
        q: list = [None] * len(v)
        if quality is not None:
            qa = np.asarray(quality, dtype=np.float64)
            if qa.shape != (len(v),) or not np.isfinite(qa).all():
                raise InvalidArgumentError(f"quality must be {len(v)} finite numbers")
            q = qa.tolist()
        return v, s, q

    def _take_versions(self, cur, count: int) -> int:
        """Reserves ``count`` versions under the log_head row lock (held to commit); returns the first."""
        cur.execute("UPDATE log_head SET version = version + %s RETURNING version", (count,))
        return cur.fetchone()[0] - count + 1

    def enrol(
        self,
        identity: str,
        vectors: object,
        *,
        network: tuple[str, str],
        origin: str,
        sigma_sq: object = None,
        quality: object = None,
        sources: Sequence[str | None] | None = None,
        uids: Sequence[str] | None = None,
        based_on: int | None = None,
        model: ModelInfo | None = None,
    ) -> int:
        """Adds faces to an identity (created if new) in one transaction; returns the last
        version. ``based_on``: the version the enrolling device had applied (a kiosk's push):
        refused (:class:`~sdk.errors.ChangeRefusedError`) when the identity was removed after it. ``uids``: the faces'
        ids given by the device (a retried push is then idempotent)."""
        name = clean_name(identity)
        if model is not None and model != self.model():
            raise ChangeRefusedError(f"this change is for model {model.as_dict()}, the site's is {self.model().as_dict()}; refused")
        v, s, q = self._check_rows(vectors, sigma_sq, quality)
        k = len(v)
        sources = list(sources) if sources is not None else [None] * k
        uids = [str(uuid.UUID(u)) for u in uids] if uids is not None else [str(uuid.uuid4()) for _ in range(k)]
        if len(sources) != k or len(uids) != k:
            raise InvalidArgumentError(f"sources and uids must have {k} entries, one per embedding")

        def steps(cur) -> int:
            self._check_network(cur, network)
            first = self._take_versions(cur, k)  # from here on, writers of this site wait for us
            if based_on is not None:
                cur.execute("SELECT max(version) FROM changes WHERE op = 'remove' AND identity = %s AND version > %s",
                            (name, based_on))  # fmt: skip
                removed = cur.fetchone()[0]
                if removed is not None:
                    raise ChangeRefusedError(f"{name!r} was removed at version {removed}, after this enrolment's base {based_on}: "
                                   "a removal wins over an older add")  # fmt: skip
            cur.execute("SELECT uid::text FROM faces WHERE uid = ANY(%s::uuid[])", (uids,))
            if cur.fetchall():  # a retried push whose first attempt committed
                raise _AlreadyApplied
            cur.execute("INSERT INTO identities(name) VALUES (%s) ON CONFLICT (name) DO NOTHING", (name,))
            cur.execute("SELECT id FROM identities WHERE name = %s", (name,))
            identity_id = cur.fetchone()[0]
            rows = [
                (uids[i], identity_id, v[i].astype("<f4").tobytes(), None if s is None else s[i].astype("<f4").tobytes(),
                 q[i], network[1], network[0], sources[i], origin)
                for i in range(k)
            ]  # fmt: skip
            cur.executemany(
                "INSERT INTO faces(uid, identity_id, vector, sigma_sq, quality, network_sha256, precision, source, origin) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                rows, returning=True,
            )  # fmt: skip
            face_ids = []
            while True:
                face_ids.append(cur.fetchone()[0])
                if not cur.nextset():
                    break
            cur.executemany(
                "INSERT INTO changes(version, op, identity, face_id) VALUES (%s, 'add', %s, %s)",
                [(first + i, name, face_ids[i]) for i in range(k)],
            )
            last = first + k - 1
            cur.execute(f"NOTIFY {CHANNEL}, '{last}'")  # delivered at commit
            return last

        try:
            return self._run(steps)
        except _AlreadyApplied:
            return self.head()

    def remove(self, identity: str) -> int | None:
        """Forgets an identity: its faces and their log entries are deleted, a 'remove' entry is
        appended; returns its version, or None when the name was not enrolled."""
        name = clean_name(identity)

        def steps(cur) -> int | None:
            version = self._take_versions(cur, 1)
            cur.execute("DELETE FROM identities WHERE name = %s", (name,))
            if cur.rowcount == 0:
                raise _NothingToDo  # rolls back the version taken
            cur.execute("INSERT INTO changes(version, op, identity) VALUES (%s, 'remove', %s)", (version, name))
            cur.execute(f"NOTIFY {CHANNEL}, '{version}'")
            return version

        try:
            return self._run(steps)
        except _NothingToDo:
            return None

    def bulk_load(self, names: Sequence[str], vectors: np.ndarray, *, network: tuple[str, str], origin: str,
                  progress=None) -> int:  # fmt: skip
        """Enrols one face per name (new names) with COPY, in one transaction: the way to load a
        large site. Returns the last version."""
        v, _, _ = self._check_rows(vectors, None, None)
        if len(names) != len(v):
            raise InvalidArgumentError("one name per embedding")
        clean = [clean_name(n) for n in names]
        if len(set(clean)) != len(clean):
            raise InvalidArgumentError("bulk_load takes distinct new names, one face each")
        blob = v.astype("<f4").tobytes()
        width = 4 * v.shape[1]

        def steps(cur) -> int:
            self._check_network(cur, network)
            first = self._take_versions(cur, len(clean))
            cur.execute("SELECT coalesce(max(id), 0) FROM identities")
            id0 = cur.fetchone()[0]
            cur.execute("SELECT coalesce(max(id), 0) FROM faces")
            face0 = cur.fetchone()[0]
            # Explicit ids past the current ones (IDENTITY ... ALWAYS needs OVERRIDING on COPY:
            # staged through temporary tables instead).
            cur.execute("CREATE TEMP TABLE load_rows(n bigint, name text, uid uuid, vector bytea) ON COMMIT DROP")
            with cur.copy("COPY load_rows(n, name, uid, vector) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(["int8", "text", "uuid", "bytea"])
                for i, name in enumerate(clean):
                    copy.write_row((i, name, uuid.uuid4(), blob[i * width : (i + 1) * width]))
                    if progress is not None and i % 10000 == 0:
                        progress(i)
            cur.execute("INSERT INTO identities(id, name) OVERRIDING SYSTEM VALUE SELECT %s + n + 1, name FROM load_rows",
                        (id0,))  # fmt: skip
            cur.execute(
                "INSERT INTO faces(id, uid, identity_id, vector, network_sha256, precision, origin) OVERRIDING SYSTEM VALUE "
                "SELECT %s + n + 1, uid, %s + n + 1, vector, %s, %s, %s FROM load_rows",
                (face0, id0, network[1], network[0], origin),
            )  # fmt: skip
            cur.execute("INSERT INTO changes(version, op, identity, face_id) SELECT %s + n, 'add', name, %s + n + 1 FROM load_rows",
                        (first, face0))  # fmt: skip
            for table in ("identities", "faces"):
                cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
            last = first + len(clean) - 1
            cur.execute(f"NOTIFY {CHANNEL}, '{last}'")
            return last

        return self._run(steps)

    # ------------------------------------------------------------------ reading

    def head(self) -> int:
        def steps(cur) -> int:
            cur.execute("SELECT version FROM log_head")
            return cur.fetchone()[0]

        return self._run(steps)

    def changes(self, since: int, limit: int = PULL_LIMIT) -> dict[str, Any]:
        """The changes after version ``since``, oldest first, at most ``limit``; and ``next``, the
        version an edge has applied once it applies them (past the holes removals leave). One
        snapshot (REPEATABLE READ), so the page and the head agree."""
        if since < 0 or limit < 1:
            raise InvalidArgumentError("since must be >= 0 and limit >= 1")

        def steps(cur) -> dict[str, Any]:
            cur.execute("SELECT version FROM log_head")
            head = cur.fetchone()[0]
            cur.execute(
                "SELECT c.version, c.op, c.identity, f.uid::text, f.vector, f.sigma_sq, f.quality, f.precision, f.network_sha256 "
                "FROM changes c LEFT JOIN faces f ON f.id = c.face_id WHERE c.version > %s ORDER BY c.version LIMIT %s",
                (since, limit),
            )  # fmt: skip
            rows = cur.fetchall()
            out = []
            for version, op, name, uid, vector, sigma, quality, precision, network in rows:
                if op == "add":
                    out.append({"version": version, "op": op, "identity": name, "face": uid, "vector": bytes(vector),
                                "sigma_sq": None if sigma is None else bytes(sigma), "quality": quality,
                                "precision": precision, "network_sha256": network})  # fmt: skip
                else:
                    out.append({"version": version, "op": op, "identity": name})
            full = len(rows) == limit
            return {"changes": out, "head": head, "next": rows[-1][0] if full else max(head, since)}

        return self._run(steps, isolation=psycopg.IsolationLevel.REPEATABLE_READ)

    def identities(self) -> list[dict[str, Any]]:
        def steps(cur) -> list[dict[str, Any]]:
            cur.execute("SELECT i.name, count(f.id), i.created FROM identities i LEFT JOIN faces f ON f.identity_id = i.id "
                        "GROUP BY i.id ORDER BY i.name")  # fmt: skip
            return [{"identity": n, "faces": c, "created": t.isoformat()} for n, c, t in cur.fetchall()]

        return self._run(steps)

    def digest(self) -> str:
        """SHA-256 of every identity's faces (name, vector, sigma_sq), order-free: equal on
        every replica that holds the same (:func:`sdk.replica.gallery_digest`)."""

        def steps(cur):
            cur.execute("SELECT i.name, f.vector, f.sigma_sq FROM faces f JOIN identities i ON i.id = f.identity_id")
            return cur.fetchall()

        from sdk.replica import rows_digest

        return rows_digest((n, bytes(v), None if s is None else bytes(s)) for n, v, s in self._run(steps))

    # ------------------------------------------------------------------- tokens

    def create_token(self, name: str, scope: str) -> str:
        """A new token (returned once, never stored: only its SHA-256 is)."""
        if scope not in SCOPES:
            raise InvalidArgumentError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        if not name or not name.isprintable() or len(name) > 128:
            raise InvalidArgumentError("a token's name must be 1-128 printable characters")
        secret = TOKEN_PREFIX + secrets.token_urlsafe(32)

        def steps(cur) -> None:
            cur.execute("INSERT INTO tokens(name, scope, sha256) VALUES (%s, %s, %s)", (name, scope, token_digest(secret)))

        try:
            self._run(steps)
        except psycopg.errors.UniqueViolation:
            raise InvalidArgumentError(f"a token named {name!r} exists already: revoke it or pick another name") from None
        return secret

    def revoke_token(self, name: str) -> bool:
        def steps(cur) -> bool:
            cur.execute("UPDATE tokens SET revoked = now() WHERE name = %s AND revoked IS NULL", (name,))
            return cur.rowcount > 0

        return self._run(steps)

    def tokens(self) -> list[dict[str, Any]]:
        def steps(cur):
            cur.execute("SELECT name, scope, created, revoked FROM tokens ORDER BY id")
            return [{"name": n, "scope": s, "created": c.isoformat(), "revoked": r.isoformat() if r else None}
                    for n, s, c, r in cur.fetchall()]  # fmt: skip

        return self._run(steps)

    def check_token(self, secret: str) -> Token | None:
        """The live token with this secret, or None."""
        digest = token_digest(secret)

        def steps(cur):
            cur.execute("SELECT name, scope, sha256 FROM tokens WHERE sha256 = %s AND revoked IS NULL", (digest,))
            return cur.fetchone()

        row = self._run(steps)
        # The lookup is by digest (an index); compare_digest keeps the final check constant-time.
        if row is None or not hmac.compare_digest(bytes(row[2]), digest):
            return None
        return Token(row[0], row[1])

    # ------------------------------------------------------------------- events

    def record_events(self, device: str, events: Iterable[dict[str, Any]]) -> int:
        rows = [(device, e["at"], e["kind"], e.get("identity"), json.dumps(e.get("detail") or {})) for e in events]

        def steps(cur) -> int:
            cur.executemany("INSERT INTO events(device, at, kind, identity, detail) VALUES (%s, %s, %s, %s, %s)", rows)
            return len(rows)

        return self._run(steps)

    def size_on_disk(self) -> int:
        """Bytes of the site's tables and indexes."""

        def steps(cur) -> int:
            cur.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                        "WHERE n.nspname = current_schema() AND c.relkind = 'r'")  # fmt: skip
            return int(cur.fetchone()[0] or 0)

        return self._run(steps)


class _NothingToDo(Exception):
    pass


class _AlreadyApplied(Exception):
    pass


class StoreCentre:
    """The store as a replica's centre, in process: the server's own matching gallery reads it so
    (:class:`sdk.replica.Replica`); doors go through the HTTP API."""

    def __init__(self, store: CentreStore) -> None:
        self.store = store

    def pull(self, since: int, wait_s: float = 0.0) -> dict[str, Any]:
        return {"model": self.store.model().as_dict(), **self.store.changes(since)}

    def push(self, enrolment: dict[str, Any]) -> int:
        return push_enrolment(self.store, enrolment, origin="local")


def push_enrolment(store: CentreStore, enrolment: dict[str, Any], *, origin: str) -> int:
    """A device's enrolment (:meth:`sdk.replica.Replica.push`'s payload, vectors as bytes) into
    the store; ChangeRefusedError for another model or an add older than a removal."""
    model = enrolment["model"]
    dim = store.model().dim
    faces = enrolment["faces"]
    vectors = np.stack([_floats(f["vector"], dim, "vector") for f in faces])
    with_sigma = [f.get("sigma_sq") is not None for f in faces]
    if any(with_sigma) and not all(with_sigma):
        raise InvalidArgumentError("give sigma_sq for every face of an enrolment or for none")
    sigma = np.stack([_floats(f["sigma_sq"], dim, "sigma_sq") for f in faces]) if all(with_sigma) else None
    quality = [f.get("quality") for f in faces]
    return store.enrol(
        enrolment["identity"], vectors, sigma_sq=sigma, quality=None if None in quality else quality,
        network=(enrolment["precision"], enrolment["network_sha256"]), origin=origin,
        uids=[f["uid"] for f in faces], based_on=int(enrolment["based_on"]),
        model=ModelInfo(model["name"], model["version"], int(model["dim"])),
    )  # fmt: skip


def _floats(blob: bytes, dim: int, what: str) -> np.ndarray:
    if not isinstance(blob, bytes) or len(blob) != 4 * dim:
        raise InvalidArgumentError(f"{what} must be {dim} little-endian float32 ({4 * dim} bytes)")
    return np.frombuffer(blob, "<f4")
