"""A camera's health: frames in and out per second, dropped frames, reconnects, events, and
per-stage latency p50/p95, as a dict, a line for the log, Prometheus text and a status file.

The Prometheus endpoint (:class:`MetricsServer`) binds 127.0.0.1 by default; any other address
needs a bearer token. It serves counts and latencies only, never a face or a name.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import InvalidArgumentError

# Stages timed per processed frame (milliseconds): "wait" the frame's age when processing
# starts (capture to start), "pipeline" detect + align + embed + match (FaceStream.match),
# "liveness" the scorer, "follow" the optical flow of the frames between detections, "output"
# drawing, writing and the sinks, "total" capture to done (frames with detection).
STAGES = ("wait", "pipeline", "liveness", "follow", "output", "total")
WINDOW = 1000  # latencies kept per stage: the percentiles are of the last WINDOW frames


class Health:
    """Counters and latency windows; the runtime updates them, any thread may read them."""

    def __init__(self, camera: str) -> None:
        self.camera = camera
        self.started = time.monotonic()
        self.frames_in = 0  # received from the source
        self.frames_out = 0  # processed (detected or followed)
        self.detected = 0  # of which the detector ran on
        self.dropped = 0  # received but never processed (the runtime was busy)
        self.reconnects = 0
        self.events: dict[str, int] = {}
        self.webhook_dropped = 0
        self.webhook_pending = 0
        self.tracks = 0  # live tracks now
        self._latency = {stage: deque(maxlen=WINDOW) for stage in STAGES}
        self._rate: deque[tuple[float, int, int]] = deque(maxlen=64)  # (time, frames_in, frames_out)
        self._lock = threading.Lock()

    def count_event(self, kind: str) -> None:
        with self._lock:
            self.events[kind] = self.events.get(kind, 0) + 1

    def time(self, stage: str, ms: float) -> None:
        with self._lock:
            self._latency[stage].append(ms)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            self._rate.append((now, self.frames_in, self.frames_out))
            # Rates over the last ~10 s of snapshots (or since the start).
            recent = [r for r in self._rate if now - r[0] <= 10.0] or [self._rate[-1]]
            base = recent[0] if len(recent) > 1 else (self.started, 0, 0)
            span = max(now - base[0], 1e-9)
            latency = {}
            for stage, values in self._latency.items():
                if values:
                    p50, p95 = np.percentile(np.fromiter(values, float), [50, 95])
                    latency[stage] = {"p50_ms": round(float(p50), 2), "p95_ms": round(float(p95), 2)}
            return {
                "camera": self.camera,
                "uptime_s": round(now - self.started, 1),
                "fps_in": round((self.frames_in - base[1]) / span, 2),
                "fps_out": round((self.frames_out - base[2]) / span, 2),
                "frames_in": self.frames_in,
                "frames_out": self.frames_out,
                "frames_detected": self.detected,
                "frames_dropped": self.dropped,
                "reconnects": self.reconnects,
                "tracks": self.tracks,
                "events": dict(self.events),
                "webhook_dropped": self.webhook_dropped,
                "webhook_pending": self.webhook_pending,
                "latency": latency,
            }

    def line(self) -> str:
        s = self.snapshot()
        lat = " ".join(f"{k} {v['p50_ms']:.1f}/{v['p95_ms']:.1f}" for k, v in s["latency"].items())
        return (f"{s['camera']}: in {s['fps_in']:.1f} fps, out {s['fps_out']:.1f} fps, dropped {s['frames_dropped']}, "
                f"reconnects {s['reconnects']}, tracks {s['tracks']}, events {sum(s['events'].values())}; "
                f"ms p50/p95 {lat}")  # fmt: skip

    def prometheus(self) -> str:
        s = self.snapshot()
        cam = _label(s["camera"])
        out = []

        def metric(name: str, kind: str, help_text: str, rows: list[tuple[str, float]]) -> None:
            out.append(f"# HELP facesdk_camera_{name} {help_text}")
            out.append(f"# TYPE facesdk_camera_{name} {kind}")
            out.extend(f"facesdk_camera_{name}{{camera=\"{cam}\"{labels}}} {value}" for labels, value in rows)

        metric("frames_in_total", "counter", "Frames received from the source.", [("", s["frames_in"])])
        metric("frames_out_total", "counter", "Frames processed.", [("", s["frames_out"])])
        metric("frames_detected_total", "counter", "Frames the detector ran on.", [("", s["frames_detected"])])
        metric("frames_dropped_total", "counter", "Frames received but never processed.", [("", s["frames_dropped"])])
        metric("reconnects_total", "counter", "Reconnections to the source.", [("", s["reconnects"])])
        metric("fps_in", "gauge", "Frames received per second (last 10 s).", [("", s["fps_in"])])
        metric("fps_out", "gauge", "Frames processed per second (last 10 s).", [("", s["fps_out"])])
        metric("tracks", "gauge", "Faces followed now.", [("", s["tracks"])])
        metric("events_total", "counter", "Events emitted, by type.",
               [(f',type="{_label(k)}"', v) for k, v in sorted(s["events"].items())])  # fmt: skip
        metric("webhook_dropped_total", "counter", "Events the webhook could not deliver.", [("", s["webhook_dropped"])])
        metric("webhook_pending", "gauge", "Events waiting for the webhook.", [("", s["webhook_pending"])])
        rows = [(f',stage="{stage}",quantile="{q}"', v[f"p{int(float(q) * 100)}_ms"])
                for stage, v in s["latency"].items() for q in ("0.5", "0.95")]  # fmt: skip
        metric("latency_ms", "summary", "Per-stage latency over the last frames, milliseconds.", rows)
        return "\n".join(out) + "\n"

    def write_status(self, path: Path) -> None:
        """The snapshot as JSON, replaced atomically (a monitor never reads half a file)."""
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.snapshot(), indent=1))
        os.replace(tmp, path)


def _label(text: str) -> str:
    return str(text).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class MetricsServer:
    """Prometheus text at ``http://HOST:PORT/metrics`` from a daemon thread. host: 127.0.0.1 by
    default; another address requires ``token`` (``Authorization: Bearer TOKEN``). port 0 picks
    a free one (``.port``)."""

    def __init__(self, health: Health, port: int, host: str = "127.0.0.1", token: str | None = None) -> None:
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback and not token:
            raise InvalidArgumentError(f"metrics on {host} (not loopback) need a token")
        expected = None if not token else f"Bearer {token}".encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if expected is not None and not hmac.compare_digest(self.headers.get("Authorization", "").encode(), expected):
                    self.send_error(401)
                    return
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = health.prometheus().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:  # scrapes are not news
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.host, self.port = host, self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
