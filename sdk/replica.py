"""A door's gallery as a replica of its site's central store.

::

    gallery = sdk.Verifier(...).gallery                      # the door's SQLite gallery
    centre = HttpCentre("https://site.example", token)       # a device (or kiosk) token
    replica = Replica(gallery, centre, device="door-3")
    replica.sync()                 # push queued enrolments, then pull and apply every change
    replica.start()                # or keep syncing in a thread: long polls, retries offline
    replica.enrol("visitor", embeddings)   # a kiosk: stored here now, sent to the centre

Pulling. The centre numbers its changes (``add`` a face, ``remove`` an identity) with gap-free,
commit-ordered versions. A replica asks for the changes after the version it applied last and
applies each page in one SQLite transaction together with that version (``meta.replica_version``),
so a crash or a lost connection leaves it at one of those versions, never between. The centre
holds a pull open until something changes (it LISTENs to PostgreSQL's NOTIFY), which wakes the
door within milliseconds; when it cannot be reached the replica retries every ``poll_s`` (backing
off to ``max_backoff_s``) and keeps matching from its local copy meanwhile.

Enrolling at a door (a kiosk). :meth:`Replica.enrol` stores the faces in the local gallery (so
this door matches them at once, offline too) and, in the same transaction, queues them in the
gallery file's ``replica_outbox`` with random face ids and the version the door had applied.
:meth:`push` sends the queue; the centre gives each enrolment its next version (the centre's
order) or refuses it: another model, or an identity removed after the door's version (a removal
wins over an older add). A refused enrolment leaves the queue; the removal that beat it reaches
the door by the next pull and deletes the identity's faces here too. When the door later pulls
its own accepted faces, their ids tell it that it holds them already.

Changes for another model are refused: a page whose model (name, version, dim) or whose faces'
network SHA-256 differ from this gallery's raises :class:`~sdk.errors.ModelMismatchError` and
nothing is applied.

Only the standard library talks HTTP here: a door needs no extra package.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import sqlite3
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np

from sdk.errors import CentreUnavailableError, ChangeRefusedError, InvalidArgumentError, ModelMismatchError
from sdk.gallery import Gallery, clean_name

__all__ = ["Replica", "HttpCentre", "Centre", "gallery_digest", "rows_digest", "VERSION_KEY"]

log = logging.getLogger("sdk.replica")

VERSION_KEY = "replica_version"  # the gallery's meta key: the last centre version applied
LONG_POLL_S = 25.0  # how long the centre holds a pull open; below common proxy timeouts (60 s)

_OUTBOX = """
CREATE TABLE IF NOT EXISTS replica_outbox(
    uid TEXT PRIMARY KEY,          -- the face's id at the centre
    enrolment TEXT NOT NULL,       -- faces enrolled in one call travel together
    identity TEXT NOT NULL,
    vector BLOB NOT NULL,
    sigma_sq BLOB NULL,
    quality REAL NULL,
    based_on INTEGER NOT NULL,     -- the version this door had applied when it enrolled
    pushed_version INTEGER NULL,   -- the centre's version once accepted (until pulled back)
    created REAL NOT NULL)
"""


class Centre(Protocol):
    """Where a replica pulls from and pushes to (:class:`HttpCentre`; the server's own replica
    reads its store directly)."""

    def pull(self, since: int, wait_s: float = 0.0) -> dict[str, Any]:
        """``{"model": {...}, "changes": [...], "next": int, "head": int}``; vectors as bytes."""

    def push(self, enrolment: dict[str, Any]) -> int:
        """The centre's version for the enrolment, or ChangeRefusedError."""


def rows_digest(rows: Iterable[tuple[str, bytes, bytes | None]]) -> str:
    """SHA-256 over (identity, vector, sigma_sq) rows in a canonical order: two galleries holding
    the same faces (in any order, under any local ids) have the same digest."""
    h = hashlib.sha256()
    for name, vector, sigma in sorted((n.encode(), v, s or b"") for n, v, s in rows):
        for part in (name, vector, sigma):
            h.update(len(part).to_bytes(4, "little") + part)
    return h.hexdigest()


def gallery_digest(gallery: Gallery) -> str:
    """:func:`rows_digest` of a gallery (the same value :meth:`CentreStore.digest` gives)."""

    def read(conn: sqlite3.Connection) -> list[tuple[str, bytes, bytes | None]]:
        return conn.execute(
            "SELECT name, vector, sigma_sq FROM embeddings JOIN identities ON identities.id = embeddings.identity_id"
        ).fetchall()

    return rows_digest(gallery.apply([], extra=read) or [])


class Replica:
    """A gallery kept in step with a site's centre (see the module doc). Thread-safe: one sync
    at a time; matching goes on from the gallery meanwhile."""

    def __init__(
        self, gallery: Gallery, centre: Centre, *, device: str = "", poll_s: float = 2.0, max_backoff_s: float = 30.0,
        wait_s: float = LONG_POLL_S,
    ) -> None:  # fmt: skip
        if gallery.network is None:
            raise InvalidArgumentError("a replica's gallery must know its network (Gallery(network=(precision, sha256)))")
        self.gallery, self.centre, self.device = gallery, centre, device
        self.poll_s, self.max_backoff_s, self.wait_s = poll_s, max_backoff_s, wait_s
        self._sync_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.online = False  # whether the last exchange with the centre worked
        gallery.apply([], extra=lambda conn: conn.execute(_OUTBOX))

    # ------------------------------------------------------------------ state

    @property
    def version(self) -> int:
        """The last centre version applied here."""
        return int(self.gallery.meta().get(VERSION_KEY, "0"))

    def pending(self) -> int:
        """Faces enrolled here that the centre has not accepted yet."""
        return self.gallery.apply(
            [], extra=lambda conn: conn.execute("SELECT count(*) FROM replica_outbox WHERE pushed_version IS NULL").fetchone()[0]
        )  # fmt: skip

    # -------------------------------------------------------------- enrolment

    def enrol(self, identity: str, embeddings: object, *, sigma_sq: object = None, quality: object = None) -> int:
        """Enrols faces at this door: matched here at once, queued for the centre (sent by the
        next :meth:`push`/:meth:`sync`). Returns the number of faces."""
        name = clean_name(identity)
        vectors = np.ascontiguousarray(embeddings, dtype=np.float32)
        sigma = None if sigma_sq is None else np.ascontiguousarray(sigma_sq, dtype=np.float32)
        q = None if quality is None else np.asarray(quality, dtype=np.float64)
        enrolment = str(uuid.uuid4())

        def queue(conn: sqlite3.Connection) -> None:
            (based_on,) = conn.execute("SELECT coalesce((SELECT value FROM meta WHERE key = ?), '0')", (VERSION_KEY,)).fetchone()
            conn.executemany(
                "INSERT INTO replica_outbox(uid, enrolment, identity, vector, sigma_sq, quality, based_on, created) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(str(uuid.uuid4()), enrolment, name, vectors[i].astype("<f4").tobytes(),
                  None if sigma is None else sigma[i].astype("<f4").tobytes(), None if q is None else float(q[i]),
                  int(based_on), time.time()) for i in range(len(vectors))],
            )  # fmt: skip

        # The gallery validates the rows before anything is written (the outbox included).
        self.gallery.apply([("add", name, vectors, sigma, q)], extra=queue)
        return len(vectors)

    def push(self) -> int:
        """Sends the queued enrolments; returns how many the centre accepted. Refused ones leave
        the queue (logged); CentreUnavailableError when it cannot be reached (they stay queued)."""
        rows = self.gallery.apply([], extra=lambda conn: conn.execute(
            "SELECT enrolment, uid, identity, vector, sigma_sq, quality, based_on FROM replica_outbox "
            "WHERE pushed_version IS NULL ORDER BY created, rowid").fetchall())  # fmt: skip
        enrolments: dict[str, list[tuple]] = {}
        for row in rows:
            enrolments.setdefault(row[0], []).append(row)
        accepted = 0
        precision, network = self.gallery.network  # type: ignore[misc]
        for key, faces in enrolments.items():
            payload = {
                "identity": faces[0][2],
                "based_on": faces[0][6],
                "model": {"name": self.gallery.model_name, "version": self.gallery.model_version, "dim": self.gallery.dim},
                "precision": precision,
                "network_sha256": network,
                "faces": [{"uid": f[1], "vector": f[3], "sigma_sq": f[4], "quality": f[5]} for f in faces],
            }
            try:
                version = self.centre.push(payload)
            except ChangeRefusedError as e:
                log.warning("replica %s: the centre refused the enrolment of %r: %s", self.device, payload["identity"], e)
                self.gallery.apply([], extra=lambda conn, key=key: conn.execute("DELETE FROM replica_outbox WHERE enrolment = ?", (key,)))
                continue
            self.gallery.apply([], extra=lambda conn, key=key, version=version: conn.execute(
                "UPDATE replica_outbox SET pushed_version = ? WHERE enrolment = ?", (version, key)))  # fmt: skip
            accepted += len(faces)
        return accepted

    # ---------------------------------------------------------------- pulling

    def pull(self, wait_s: float = 0.0) -> int:
        """Pulls and applies changes until none are left; returns how many were applied.
        ``wait_s``: let the centre hold the first request open until something changes."""
        applied = 0
        while True:
            page = self.centre.pull(self.version, wait_s)
            wait_s = 0.0
            applied += self.apply(page)
            if int(page["next"]) >= int(page["head"]):
                return applied

    def apply(self, page: dict[str, Any]) -> int:
        """Applies one page of changes and its ``next`` version, in one transaction."""
        self._check_model(page)
        changes, next_version = page["changes"], int(page["next"])
        dim, have = self.gallery.dim, self.version
        if next_version < have:
            raise InvalidArgumentError(f"the centre answered up to version {next_version}, behind this replica's {have}: "
                                       "a different or restored centre? (re-sync a fresh gallery)")  # fmt: skip
        ops: list[tuple] = []
        uids = [c["face"] for c in changes if c["op"] == "add"]
        removed = [(c["identity"], c["version"]) for c in changes if c["op"] == "remove"]
        ours = self._outboxed(uids)
        for c in changes:
            if c["op"] == "remove":
                ops.append(("remove", c["identity"]))
            elif c["face"] not in ours:  # faces enrolled here are in the gallery already
                vector = np.frombuffer(c["vector"], "<f4").reshape(1, dim)
                sigma = None if c.get("sigma_sq") is None else np.frombuffer(c["sigma_sq"], "<f4").reshape(1, dim)
                quality = None if c.get("quality") is None else [c["quality"]]
                last = ops[-1] if ops else None
                if last is not None and last[0] == "add" and (sigma is None) == (last[3] is None) and (quality is None) == (last[4] is None):
                    last[1].append(c["identity"])  # consecutive adds: one insert
                    last[2].append(vector)
                    if sigma is not None:
                        last[3].append(sigma)
                    if quality is not None:
                        last[4].extend(quality)
                else:
                    ops.append(("add", [c["identity"]], [vector], None if sigma is None else [sigma], quality))
        ops = [(op[0], op[1], np.concatenate(op[2]), None if op[3] is None else np.concatenate(op[3]), op[4])
               if op[0] == "add" else op for op in ops]  # fmt: skip

        def bookkeeping(conn: sqlite3.Connection) -> None:
            conn.executemany("DELETE FROM replica_outbox WHERE uid = ?", [(u,) for u in ours])
            # An offline enrolment older than a removal of its identity: refused by the centre.
            conn.executemany("DELETE FROM replica_outbox WHERE identity = ? AND based_on < ?", removed)

        self.gallery.apply(ops, {VERSION_KEY: str(next_version)}, extra=bookkeeping)
        return len(changes)

    def _outboxed(self, uids: list[str]) -> set[str]:
        if not uids:
            return set()

        def read(conn: sqlite3.Connection) -> set[str]:
            found: set[str] = set()
            for i in range(0, len(uids), 500):
                chunk = uids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                found |= {r[0] for r in conn.execute(f"SELECT uid FROM replica_outbox WHERE uid IN ({marks})", chunk)}
            return found

        return self.gallery.apply([], extra=read)

    def _check_model(self, page: dict[str, Any]) -> None:
        g = self.gallery
        model = page.get("model") or {}
        theirs = (model.get("name"), model.get("version"), model.get("dim"))
        if theirs != (g.model_name, g.model_version, g.dim):
            raise ModelMismatchError(
                f"the site serves model {theirs[0]!r} version {theirs[1]!r} (dim {theirs[2]}), this gallery holds "
                f"{g.model_name!r} version {g.model_version!r} (dim {g.dim}): changes for another model are refused"
            )
        precision, network = g.network  # type: ignore[misc]
        for c in page["changes"]:
            if c["op"] == "add" and c["precision"] == precision and c["network_sha256"] != network:
                raise ModelMismatchError(
                    f"the site's face {c['face']} was computed by network {c['network_sha256'][:12]}..., this door's "
                    f"{precision} network is {network[:12]}...: changes for another model are refused"
                )

    # ------------------------------------------------------------------ loop

    def sync(self, wait_s: float = 0.0) -> int:
        """Push the queue, then pull everything new; returns the changes applied.
        CentreUnavailableError when the centre cannot be reached (nothing lost: retry later)."""
        with self._sync_lock:
            try:
                self.push()
                applied = self.pull(wait_s)
            except CentreUnavailableError:
                self.online = False
                raise
            self.online = True
            return applied

    def start(self) -> Replica:
        """Keeps syncing in a daemon thread until :meth:`stop`: long polls while the centre
        answers, retries every poll_s (doubling up to max_backoff_s) while it does not."""
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name=f"replica-{self.device}", daemon=True)
            self._thread.start()
        return self

    def stop(self, timeout: float | None = None) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        backoff = self.poll_s
        while not self._stop.is_set():
            try:
                start = time.monotonic()
                if self.sync(wait_s=self.wait_s) == 0:  # a centre that does not hold pulls open: poll
                    self._stop.wait(self.poll_s - (time.monotonic() - start))
                backoff = self.poll_s
            except CentreUnavailableError as e:
                log.info("replica %s: centre unreachable (%s); matching from the local copy, retry in %.0f s",
                         self.device, e, backoff)  # fmt: skip
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.max_backoff_s)
            except Exception:  # a refused page (another model), a damaged gallery: say so, keep trying
                log.exception("replica %s: sync failed", self.device)
                self._stop.wait(self.max_backoff_s)


class HttpCentre:
    """A site's HTTP API (``facesdk serve``) as a replica's centre, over the standard library.

    ``url``: the service's base URL (https through the reverse proxy); ``token``: a device token
    (a kiosk token to push enrolments). ``cafile``: a CA bundle to trust for a private CA."""

    def __init__(self, url: str, token: str, *, timeout_s: float = 10.0, cafile: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._context = None
        if cafile is not None:
            import ssl

            self._context = ssl.create_default_context(cafile=cafile)

    def _request(self, method: str, path: str, body: dict | None = None, timeout_s: float | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method, headers={
            "Authorization": f"Bearer {self.token}", "Content-Type": "application/json", "Accept": "application/json"})  # fmt: skip
        try:
            with urllib.request.urlopen(request, timeout=timeout_s or self.timeout_s, context=self._context) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as e:
            detail = _error_text(e)
            if e.code == 409:
                raise ChangeRefusedError(detail) from None
            if e.code in (502, 503, 504):
                raise CentreUnavailableError(f"{self.url}: {e.code} {detail}") from None
            raise InvalidArgumentError(f"{self.url}{path}: {e.code} {detail}") from None
        except (urllib.error.URLError, OSError) as e:  # refused, reset, timed out
            raise CentreUnavailableError(f"{self.url} cannot be reached: {getattr(e, 'reason', e)}") from None

    def pull(self, since: int, wait_s: float = 0.0) -> dict[str, Any]:
        page = self._request("GET", f"/v1/changes?since={int(since)}&wait={wait_s:g}", timeout_s=self.timeout_s + wait_s)
        for c in page["changes"]:
            if c["op"] == "add":
                c["vector"] = base64.b64decode(c["vector"])
                if c.get("sigma_sq") is not None:
                    c["sigma_sq"] = base64.b64decode(c["sigma_sq"])
        return page

    def push(self, enrolment: dict[str, Any]) -> int:
        body = dict(enrolment, faces=[
            dict(f, vector=_b64(f["vector"]), sigma_sq=None if f.get("sigma_sq") is None else _b64(f["sigma_sq"]))
            for f in enrolment["faces"]])  # fmt: skip
        return int(self._request("POST", "/v1/enrolments", body)["version"])

    def events(self, events: list[dict[str, Any]]) -> int:
        """Reports door events (``{"at": ISO 8601, "kind": str, "identity": str|None, "detail": {}}``)."""
        return int(self._request("POST", "/v1/events", {"events": events})["recorded"])


def _b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode()


def _error_text(e: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(e.read())
        return str(body.get("error") or body)
    except (ValueError, OSError):
        return e.reason or ""
