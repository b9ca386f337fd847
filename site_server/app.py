"""The site's HTTP API (FastAPI on uvicorn): enrolment and removal for the desk, matching and
replication for the doors. OpenAPI schema at /openapi.json, docs at /docs.

Every route but /v1/health needs ``Authorization: Bearer <token>``; scopes:

=========  ==========================================================================
admin      enrol, remove, list identities; also match and pull
device     match (identify, verify), pull changes, push events: a door
kiosk      a device that may also push the enrolments it makes (an entrance kiosk)
=========  ==========================================================================

Errors are JSON ``{"error": "what was wrong", ...}``: 401 no or bad token, 403 wrong scope,
404 unknown identity, 409 a change refused (another model, an add older than a removal),
413 a body over the limit, 422 a malformed body or an image without a usable face, 503 the
central PostgreSQL is unreachable (doors keep matching from their replicas meanwhile).

Doors pull through this API rather than from PostgreSQL: a door then holds a revocable token of
one scope, not database credentials; the checks (token, model, size) live in one place; doors
speak HTTPS through the same reverse proxy as everything else; and PostgreSQL is never exposed
to the building's network. The pull is a long poll that the server ends as soon as PostgreSQL
NOTIFYs a new version.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from sdk.errors import (
    CentreUnavailableError,
    ChangeRefusedError,
    FaceSDKError,
    GalleryError,
    InvalidArgumentError,
    InvalidImageError,
    LowQualityError,
    ModelMismatchError,
    NoFaceError,
    AmbiguousFaceError,
)
from sdk import pfe
from sdk.images import decode_image
from sdk.replica import LONG_POLL_S, Replica
from site_server.store import CHANNEL, CentreStore, ModelInfo, StoreCentre, Token, push_enrolment

log = logging.getLogger("site")

MAX_BODY_BYTES = 8 * 1024 * 1024  # a few camera images, base64-encoded
MAX_IMAGES = 16
MAX_FACES = 64
ADMIN, DEVICE, KIOSK = "admin", "device", "kiosk"
MATCHING = (ADMIN, DEVICE, KIOSK)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


Vector = list[float]


class EnrolRequest(_Strict):
    """Images (base64 JPEG/PNG, one face each; the server embeds them), or embeddings computed
    by the site's model (then model, precision and network_sha256 say which)."""

    images: list[str] | None = Field(None, max_length=MAX_IMAGES)
    largest: bool = False  # images of several faces: enrol the largest
    force: bool = False  # enrol faces refused as another identity's or unlike the person's others
    embeddings: list[Vector] | None = Field(None, max_length=MAX_FACES)
    sigma_sq: list[Vector] | None = Field(None, max_length=MAX_FACES)
    quality: list[float] | None = Field(None, max_length=MAX_FACES)
    model: dict[str, Any] | None = None
    precision: str | None = None
    network_sha256: str | None = Field(None, pattern="^[0-9a-f]{64}$")


class FaceQuery(_Strict):
    image: str | None = None  # base64 of an encoded image: its largest face is used
    embedding: Vector | None = None


class IdentifyRequest(FaceQuery):
    k: int = Field(1, ge=1, le=100)


class VerifyRequest(FaceQuery):
    identity: str = Field(min_length=1, max_length=256)


class PushedFace(_Strict):
    uid: str = Field(pattern="^[0-9a-fA-F-]{36}$")
    vector: str
    sigma_sq: str | None = None
    quality: float | None = None


class PushedEnrolment(_Strict):
    identity: str = Field(min_length=1, max_length=256)
    based_on: int = Field(ge=0)
    model: dict[str, Any]
    precision: str = Field(min_length=1, max_length=16)
    network_sha256: str = Field(pattern="^[0-9a-f]{64}$")
    faces: list[PushedFace] = Field(min_length=1, max_length=MAX_FACES)


class Event(_Strict):
    at: datetime
    kind: str = Field(min_length=1, max_length=64)
    identity: str | None = Field(None, max_length=256)
    detail: dict[str, Any] = Field(default_factory=dict)


class Events(_Strict):
    events: list[Event] = Field(min_length=1, max_length=1000)


class ApiError(HTTPException):
    pass


class ChangeFeed:
    """LISTENs to the store's NOTIFY channel in a thread: on each new version it brings the
    server's matching gallery up to date and wakes the doors' long polls. Reconnects after a
    PostgreSQL restart; while not listening, long polls fall back to polling."""

    def __init__(self, dsn: str, on_change: Callable[[], None]) -> None:
        self.dsn, self.on_change = dsn, on_change
        self.listening = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self.event: asyncio.Event | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="site-change-feed", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.event = loop, asyncio.Event()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _wake(self) -> None:  # on the event loop
        old, self.event = self.event, asyncio.Event()
        old.set()

    def _changed(self) -> None:
        if self.loop is not None:  # the doors first: the server's own sync may take long (a bulk load)
            self.loop.call_soon_threadsafe(self._wake)
        try:
            self.on_change()
        except FaceSDKError as e:
            log.warning("site: the server's gallery could not sync: %s", e)

    def _run(self) -> None:
        import psycopg

        while not self._stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self.listening = True
                    self._changed()  # whatever happened while not listening
                    while not self._stop.is_set():
                        if any(True for _ in conn.notifies(timeout=1.0, stop_after=1)):
                            # Drain the burst: one sync covers every version so far.
                            for _ in conn.notifies(timeout=0.0):
                                pass
                            self._changed()
            except psycopg.OperationalError as e:
                if self.listening:
                    log.warning("site: lost the change feed (%s); doors poll until it is back", e)
                self.listening = False
                if self.loop is not None:
                    self.loop.call_soon_threadsafe(self._wake)  # long polls go back to polling
                self._stop.wait(1.0)
        self.listening = False


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgumentError(f"{what} is not valid base64") from None


def create_app(store: CentreStore, verifier, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """The API over ``store``; ``verifier`` (an :class:`sdk.Verifier` with an in-memory gallery)
    embeds images and matches against its gallery, a replica of the store."""
    meta = verifier.embedder.metadata
    model = store.init_model(ModelInfo(meta["model_name"], meta["model_version"], verifier.embedder.embedding_dim))
    gallery = verifier.gallery
    network = gallery.network
    replica = Replica(gallery, StoreCentre(store), device="server")
    feed = ChangeFeed(store.dsn, replica.sync)

    async def lifespan(app: FastAPI):
        feed.start(asyncio.get_running_loop())
        yield
        feed.stop()

    app = FastAPI(title="facesdk site", version="1", lifespan=lifespan,
                  description="Central enrolment and door replication for a site of face-recognition devices.")  # fmt: skip
    app.state.store, app.state.replica, app.state.feed = store, replica, feed

    # ------------------------------------------------------------- plumbing

    @app.middleware("http")
    async def limit_body(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_body_bytes):
            return _error(413, f"the request body is over the {max_body_bytes} bytes allowed")
        if length is None and request.method in ("POST", "PUT", "PATCH"):
            body = bytearray()
            async for chunk in request.stream():  # chunked: counted as it arrives
                body += chunk
                if len(body) > max_body_bytes:
                    return _error(413, f"the request body is over the {max_body_bytes} bytes allowed")
            request._body = bytes(body)  # Starlette replays it to the route
        return await call_next(request)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException):
        return _error(e.status_code, str(e.detail), headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def bad_body(request: Request, e: RequestValidationError):
        problems = [{"where": ".".join(str(p) for p in err["loc"]), "problem": err["msg"]} for err in e.errors()]
        return _error(422, "the request is malformed: " + "; ".join(f"{p['where']}: {p['problem']}" for p in problems[:3]),
                      problems=problems)  # fmt: skip

    @app.exception_handler(FaceSDKError)
    async def sdk_error(request: Request, e: FaceSDKError):
        if isinstance(e, CentreUnavailableError):
            return _error(503, "the central store is unreachable; retry later")
        if isinstance(e, (ChangeRefusedError, ModelMismatchError)):
            return _error(409, str(e))
        if isinstance(e, (InvalidArgumentError, InvalidImageError, NoFaceError, LowQualityError, AmbiguousFaceError)):
            return _error(422, str(e))
        if isinstance(e, GalleryError):
            return _error(500, "the server's gallery failed")
        return _error(422, str(e))

    def scope(*allowed: str):
        async def check(authorization: str | None = Header(None, description="Bearer <token>")) -> Token:
            if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
                raise ApiError(401, "missing bearer token (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})
            token = await run_in_threadpool(store.check_token, authorization[7:].strip())
            if token is None:
                raise ApiError(401, "invalid or revoked token", {"WWW-Authenticate": 'Bearer error="invalid_token"'})
            if token.scope not in allowed:
                raise ApiError(403, f"token {token.name!r} has scope {token.scope!r}; this needs {' or '.join(allowed)}")
            return token

        return Depends(check)

    def face_vector(query: FaceQuery) -> np.ndarray:
        if (query.image is None) == (query.embedding is None):
            raise InvalidArgumentError("give an image or an embedding, not both nor neither")
        if query.embedding is not None:
            v = np.asarray(query.embedding, np.float32)
            if v.shape != (model.dim,) or not np.isfinite(v).all():
                raise InvalidArgumentError(f"embedding must be {model.dim} finite numbers (the site's model)")
            return v
        frame = decode_image(_b64(query.image, "image"), "the image")
        return verifier.embed_largest(frame, "the image")

    # --------------------------------------------------------------- routes

    @app.get("/v1/health", summary="liveness and the central store's reachability (no token; nothing personal)")
    def health() -> dict[str, Any]:
        try:
            head = store.head()
        except CentreUnavailableError:
            return {"status": "degraded", "database": False, "listening": feed.listening}
        return {"status": "ok", "database": True, "listening": feed.listening, "version": head}

    @app.get("/v1/identities", summary="enrolled identities and their number of faces")
    def identities(token: Token = scope(ADMIN)) -> dict[str, Any]:
        return {"identities": store.identities()}

    @app.post("/v1/identities/{identity}/faces", summary="enrol faces (images or embeddings) for an identity")
    def enrol(identity: str, body: EnrolRequest, token: Token = scope(ADMIN)) -> dict[str, Any]:
        if (body.images is None) == (body.embeddings is None):
            raise InvalidArgumentError("give images or embeddings, not both nor neither")
        if body.images is not None:
            # The Verifier's enrolment checks, against the server's copy of the whole site.
            _sync_quietly(replica)
            frames = [decode_image(_b64(img, f"images[{i}]"), f"images[{i}]") for i, img in enumerate(body.images)]
            results, rows = verifier.enrolment(identity, frames, largest=body.largest, force=body.force)
            report = [{"image": i, "status": r.status, "reason": r.reason, "other": r.other} for i, r in enumerate(results)]
            if any(r.status == "refused" for r in results):
                return _error(422, "; ".join(f"images[{i}]: {r.reason}" for i, r in enumerate(results) if r.status == "refused")
                              + "; nothing was stored", images=report)  # fmt: skip
            if not rows:
                return {"identity": identity, "faces": 0, "version": None, "images": report}
            vectors = np.stack([mu for _, mu, _ in rows])
            sigma = None if rows[0][2] is None else np.stack([s for _, _, s in rows])
            quality = None if sigma is None else np.asarray(pfe.quality(sigma))
            net = network
        else:
            if body.model is None or body.precision is None or body.network_sha256 is None:
                raise InvalidArgumentError("embeddings need model, precision and network_sha256 (which network computed them)")
            if (body.model.get("name"), body.model.get("version"), body.model.get("dim")) != (model.name, model.version, model.dim):
                raise ChangeRefusedError(f"these embeddings are of model {body.model}, the site's is {model.as_dict()}; refused")
            vectors, sigma, quality = np.asarray(body.embeddings, np.float32), body.sigma_sq, body.quality
            net = (body.precision, body.network_sha256)
        version = store.enrol(identity, vectors, sigma_sq=sigma, quality=quality, network=net, origin=f"admin:{token.name}")
        _sync_quietly(replica)  # read your writes: identify at this server sees it now
        return {"identity": identity, "faces": len(vectors), "version": version}

    @app.delete("/v1/identities/{identity}", summary="forget an identity everywhere (a tombstone)")
    def remove(identity: str, token: Token = scope(ADMIN)) -> dict[str, Any]:
        version = store.remove(identity)
        if version is None:
            raise ApiError(404, f"{identity!r} is not enrolled")
        _sync_quietly(replica)
        return {"identity": identity, "removed": True, "version": version}

    @app.post("/v1/identify", summary="the k nearest enrolled identities of a face")
    def identify(body: IdentifyRequest, token: Token = scope(*MATCHING)) -> dict[str, Any]:
        v = face_vector(body)
        names, dist = gallery.search(v[None], k=body.k)
        threshold = verifier.threshold  # 1:N: with an FPIR operating point, it follows the gallery's size
        candidates = [{"identity": n, "distance": float(d)} for n, d in zip(names[0], dist[0].tolist()) if n is not None]
        accepted = bool(candidates) and candidates[0]["distance"] <= threshold
        return {"identity": candidates[0]["identity"] if accepted else None, "accepted": accepted,
                "threshold": threshold, "candidates": candidates}  # fmt: skip

    @app.post("/v1/verify", summary="1:1: is this face the claimed identity?")
    def verify(body: VerifyRequest, token: Token = scope(*MATCHING)) -> dict[str, Any]:
        v = face_vector(body)
        try:
            enrolled = gallery.embeddings(body.identity).vectors
        except KeyError:
            raise ApiError(404, f"{body.identity!r} is not enrolled") from None
        distance = float(((enrolled.astype(np.float64) - v) ** 2).sum(1).min())
        # 1:1, one comparison: the model's pairwise threshold, not the 1:N one that follows the gallery's size.
        threshold = verifier.threshold if verifier.fpir is None else verifier.threshold_for(None)
        return {"identity": body.identity, "same": distance <= threshold, "distance": distance, "threshold": threshold}

    @app.get("/v1/changes", summary="changes after a version (long poll: wait seconds for one)")
    async def changes(since: int = Query(ge=0), wait: float = Query(0.0, ge=0, le=60), limit: int = Query(5000, ge=1, le=20000),
                      token: Token = scope(*MATCHING)) -> JSONResponse:  # fmt: skip
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            woken = feed.event  # taken before the read, so a change between the two still wakes us
            page = await run_in_threadpool(store.changes, since, limit)
            left = deadline - asyncio.get_running_loop().time()
            if page["changes"] or page["head"] > since or left <= 0:
                break
            try:  # NOTIFY wakes us; without the feed, poll every second
                await asyncio.wait_for(woken.wait(), timeout=min(left, LONG_POLL_S if feed.listening else 1.0))
            except TimeoutError:
                pass
        return await run_in_threadpool(encoded, page)

    def encoded(page: dict[str, Any]) -> JSONResponse:
        """A page as JSON, vectors in base64; built off the event loop (a full page is a few MB), and
        straight into a JSONResponse: FastAPI's generic encoder costs more than the query."""
        for c in page["changes"]:
            if c["op"] == "add":
                c["vector"] = base64.b64encode(c["vector"]).decode()
                if c["sigma_sq"] is not None:
                    c["sigma_sq"] = base64.b64encode(c["sigma_sq"]).decode()
        return JSONResponse({"model": model.as_dict(), **page})

    @app.post("/v1/enrolments", summary="a kiosk's enrolment, made at the door (maybe offline)")
    def pushed(body: PushedEnrolment, token: Token = scope(KIOSK, ADMIN)) -> dict[str, Any]:
        enrolment = body.model_dump()
        for face in enrolment["faces"]:
            face["vector"] = _b64(face["vector"], "vector")
            face["sigma_sq"] = None if face["sigma_sq"] is None else _b64(face["sigma_sq"], "sigma_sq")
        version = push_enrolment(store, enrolment, origin=f"{token.scope}:{token.name}")
        return {"identity": body.identity, "faces": len(body.faces), "version": version}

    @app.post("/v1/events", summary="door events (decisions, alarms) for the audit trail")
    def events(body: Events, token: Token = scope(DEVICE, KIOSK)) -> dict[str, Any]:
        recorded = store.record_events(token.name, [e.model_dump() for e in body.events])
        return {"recorded": recorded}

    return app


def _sync_quietly(replica: Replica) -> None:
    try:
        replica.sync()
    except CentreUnavailableError:
        pass  # the change feed catches up


def _error(status: int, message: str, headers: dict[str, str] | None = None, **more: Any) -> JSONResponse:
    return JSONResponse({"error": message, "status": status, **more}, status_code=status, headers=headers)
