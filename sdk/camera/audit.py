"""The audit log: every camera decision in a SQLite file, for the site's records.

One row per event: when (UTC), camera, track, decision, identity, scores (distance, threshold,
liveness), frames, quality. Face thumbnails are biometric data: off by default, stored only
with ``thumbnails=True`` (JPEG of the face box). Rows older than ``retention_days`` are deleted
when the log opens and then hourly. The file is created 0600 in a 0700 folder.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np

from sdk.camera.events import Event
from sdk.errors import InvalidArgumentError
from sdk.paths import private_dir

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    time TEXT NOT NULL,          -- UTC, ISO 8601
    unix REAL NOT NULL,          -- the same, for retention
    camera TEXT NOT NULL,
    track INTEGER NOT NULL,
    type TEXT NOT NULL,          -- accepted, stranger, not_live, track_ended
    decision TEXT,               -- track_ended: what the track was decided as
    identity TEXT,
    distance REAL,
    threshold REAL,
    live INTEGER,                -- liveness vote: 1, 0, NULL without a scorer
    liveness_score REAL,
    frames INTEGER,
    quality REAL,
    latency_ms REAL,
    details TEXT NOT NULL,       -- the whole event as JSON
    thumbnail BLOB               -- JPEG of the face, only with thumbnails=True
);
CREATE INDEX IF NOT EXISTS events_unix ON events(unix);
"""
PURGE_EVERY_S = 3600.0


class AuditLog:
    """An event sink writing to a SQLite file; safe to emit from one thread while another
    reads through :meth:`rows`."""

    def __init__(self, path: str | os.PathLike, *, retention_days: float = 30.0, thumbnails: bool = False) -> None:
        if isinstance(retention_days, bool) or not isinstance(retention_days, (int, float)) or not retention_days > 0:
            raise InvalidArgumentError(f"retention_days must be a number > 0, got {retention_days!r}")
        self.path = Path(path)
        self.retention_days = float(retention_days)
        self.thumbnails = bool(thumbnails)
        private_dir(self.path.parent)
        try:  # created 0600 before SQLite opens it; SQLite gives its journal the same mode
            os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        except FileExistsError:
            pass
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)
        self._purged = 0.0
        self.purge()

    def emit(self, event: Event) -> None:
        live = None if event.liveness is None else int(bool(event.liveness.get("live")))
        score = None if event.liveness is None else event.liveness.get("score")
        thumbnail = _jpeg(event.thumbnail) if self.thumbnails and event.thumbnail is not None else None
        row = (event.id, event.time, time.time(), event.camera, event.track, event.type, event.decision,
               event.identity, event.distance, event.threshold, live, score, event.frames, event.quality,
               event.latency_ms, event.to_json(), thumbnail)  # fmt: skip
        with self._lock:
            self._db.execute(f"INSERT OR IGNORE INTO events VALUES ({','.join('?' * len(row))})", row)
        if time.monotonic() - self._purged > PURGE_EVERY_S:
            self.purge()

    def purge(self) -> int:
        """Delete rows older than the retention; returns how many."""
        with self._lock:
            cur = self._db.execute("DELETE FROM events WHERE unix < ?", (time.time() - self.retention_days * 86400,))
        self._purged = time.monotonic()
        return cur.rowcount

    def rows(self, limit: int | None = None) -> list[dict]:
        """The newest rows first, as dicts (``details`` parsed)."""
        with self._lock:
            cur = self._db.execute("SELECT * FROM events ORDER BY unix DESC" + (" LIMIT ?" if limit else ""),
                                   (limit,) if limit else ())  # fmt: skip
            names = [d[0] for d in cur.description]
            out = [dict(zip(names, r)) for r in cur.fetchall()]
        for row in out:
            row["details"] = json.loads(row["details"])
        return out

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _jpeg(image: np.ndarray) -> bytes | None:
    import cv2

    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 85])
    return data.tobytes() if ok else None
