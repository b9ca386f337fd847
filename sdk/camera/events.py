"""What a camera tells the world: events, and the sinks that carry them.

Event types (README, "On a camera", documents the schema):

* ``accepted``: a track was accepted as an enrolled identity (once per track and identity).
* ``stranger``: a track was confirmed as nobody enrolled (once per track).
* ``not_live``: a track's liveness vote failed (once per track; only with a liveness scorer).
* ``track_ended``: a track left the picture (or the run ended), with what was decided for it.

Sinks take :class:`Event` objects: :class:`JsonLinesSink` (stdout or a file),
:class:`WebhookSink` (HTTP POST with retries, a bounded queue, counted drops) and
:class:`CallbackSink` (a Python function, for firmware that drives a relay). Thumbnails never
leave the process through a sink; only the audit log keeps them, and only when asked.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

import numpy as np

from sdk.camera.source import describe
from sdk.errors import InvalidArgumentError

log = logging.getLogger(__name__)

ACCEPTED, STRANGER, NOT_LIVE, TRACK_ENDED = "accepted", "stranger", "not_live", "track_ended"
EVENT_TYPES = (ACCEPTED, STRANGER, NOT_LIVE, TRACK_ENDED)
SCHEMA_VERSION = 1


@dataclass
class Event:
    """One decision about one track. Times: ``time`` is UTC wall clock (ISO 8601); the
    ``*_frame`` fields count frames received from the source; ``latency_ms`` is from the
    capture of the track's first frame to this event."""

    type: str
    camera: str
    track: int
    seq: int  # per runtime, from 0: a receiver sees gaps and duplicates
    time: str
    identity: str | None = None
    distance: float | None = None  # squared L2 of the fused track to the identity's nearest face
    threshold: float | None = None  # the squared-L2 threshold the decision used
    operating_point: dict[str, Any] | None = None  # fpir: target FPIR, gallery size, expected FNIR
    frames: int = 0  # frames fused into the decision
    first_frame: int | None = None  # source frame where the track began
    decided_frame: int | None = None  # source frame of the decision
    latency_ms: float | None = None
    quality: float | None = None  # PFE models: the fused face's quality
    liveness: dict[str, Any] | None = None  # {"live", "score" (mean), "votes", "of"}; None: no scorer
    box: list[float] | None = None  # x1, y1, x2, y2 in frame pixels, at the decision
    decision: str | None = None  # track_ended: "accepted", "stranger", "not_live" or "undecided"
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    schema: int = SCHEMA_VERSION
    thumbnail: np.ndarray | None = field(default=None, repr=False)  # audit log only, opt-in

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        del out["thumbnail"]
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False, default=_plain)


def now_utc() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _plain(value: object) -> object:
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON: {type(value).__name__}")


class CallbackSink:
    """Calls ``fn(event)`` in the runtime's thread: keep it short (toggle a relay, enqueue).
    An exception is logged and counted, never stops the camera."""

    def __init__(self, fn: Callable[[Event], object]) -> None:
        if not callable(fn):
            raise InvalidArgumentError(f"a callback must be callable, got {type(fn).__name__}")
        self.fn = fn
        self.failures = 0

    def emit(self, event: Event) -> None:
        try:
            self.fn(event)
        except Exception:  # noqa: BLE001 (firmware code: report, go on)
            self.failures += 1
            log.exception("event callback failed on %s event of track %d", event.type, event.track)

    def close(self) -> None:
        pass


class JsonLinesSink:
    """One JSON object per line, flushed per event: to a file (appended, created 0600: events
    name people) or to stdout (``target="-"``)."""

    def __init__(self, target: str | os.PathLike | IO[str] = "-") -> None:
        self._own = False
        if target == "-":
            self.stream: IO[str] = sys.stdout
        elif hasattr(target, "write"):
            self.stream = target  # type: ignore[assignment]
        else:
            path = Path(target)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self.stream = os.fdopen(fd, "a", encoding="utf-8")
            self._own = True

    def emit(self, event: Event) -> None:
        self.stream.write(event.to_json() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self._own:
            self.stream.close()


class WebhookSink:
    """POSTs each event as JSON to ``url`` from its own thread, in order.

    A failed POST (connection refused, timeout, HTTP >= 300) is retried with exponential backoff
    (``backoff`` first..largest seconds, with jitter) while later events wait in a bounded queue
    of ``queue_size``: nothing is lost while the receiver is briefly down. If it stays down and
    the queue fills, the oldest events are dropped and counted in ``dropped``. ``close(timeout)``
    delivers what it can within the timeout; what is left is counted as dropped too.
    ``token``: sent as ``Authorization: Bearer TOKEN``. Each event carries ``id`` and ``seq``, so
    a receiver can discard a duplicate (a POST that arrived but whose answer was lost).
    """

    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        queue_size: int = 1000,
        timeout: float = 5.0,
        backoff: tuple[float, float] = (0.25, 30.0),
    ) -> None:
        if not isinstance(url, str) or not url.lower().startswith(("http://", "https://")):
            raise InvalidArgumentError(f"a webhook is an http:// or https:// URL, got {url!r}")
        if isinstance(queue_size, bool) or not isinstance(queue_size, int) or queue_size < 1:
            raise InvalidArgumentError(f"queue_size must be an int >= 1, got {queue_size!r}")
        if token is not None and (not token or any(c in token for c in "\r\n")):
            raise InvalidArgumentError("a webhook token must be one non-empty line")
        self.url, self.token, self.timeout, self.backoff = url, token, float(timeout), backoff
        self.name = describe(url)  # for logs: without credentials
        self.queue_size = queue_size
        self.sent = 0
        self.dropped = 0
        self.failures = 0  # failed attempts (each retry counts)
        self._queue: deque[Event] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._deadline = float("inf")
        self._thread = threading.Thread(target=self._run, name="webhook", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        with self._cond:
            return len(self._queue)

    def emit(self, event: Event) -> None:
        with self._cond:
            if len(self._queue) >= self.queue_size:
                self._queue.popleft()
                self.dropped += 1
                log.warning("webhook %s: queue full (%d), dropped the oldest event", self.name, self.queue_size)
            self._queue.append(event)
            self._cond.notify_all()

    def close(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._closing = True
            self._deadline = time.monotonic() + timeout
            self._cond.notify_all()
        self._thread.join(timeout + self.timeout + 1)
        with self._cond:
            if self._queue:
                self.dropped += len(self._queue)
                log.warning("webhook %s: %d event(s) not delivered at close", self.name, len(self._queue))
                self._queue.clear()

    def _run(self) -> None:
        wait = self.backoff[0]
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._queue or self._closing)
                if not self._queue or time.monotonic() >= self._deadline:
                    return
                event = self._queue[0]
            if self._post(event):
                with self._cond:
                    if self._queue and self._queue[0] is event:  # not dropped for space meanwhile
                        self._queue.popleft()
                self.sent += 1
                wait = self.backoff[0]
                continue
            self.failures += 1
            with self._cond:  # back off, but wake for close
                self._cond.wait_for(lambda: time.monotonic() >= self._deadline, wait * random.uniform(0.8, 1.2))
            wait = min(wait * 2, self.backoff[1])

    def _post(self, event: Event) -> bool:
        body = event.to_json().encode()
        headers = {"Content-Type": "application/json", "User-Agent": "facesdk-camera"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:  # noqa: S310 (scheme checked)
                return 200 <= answer.status < 300
        except (urllib.error.URLError, OSError, ValueError) as e:
            log.info("webhook %s: %s event %d not delivered yet: %s", self.name, event.type, event.seq, e)
            return False
