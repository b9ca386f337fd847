"""`facesdk run SOURCE`: the SDK on a camera (sdk.camera). Runtime only: works without torch.

    facesdk run rtsp://10.0.0.5/stream --camera-id door-1 --fpir 1e-2 --audit door.sqlite \
        --webhook https://site/events --webhook-token-file token --metrics-port 9108
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

from cli.common import positive
from cli.runtime import decision, make_verifier, runtime


def register(sub) -> None:
    p = decision(runtime(sub.add_parser("run", help="run on a camera: a video file, rtsp/http URL, V4L2 index or GStreamer pipeline")))
    p.add_argument("source", help='a video file, rtsp://... or http://..., a V4L2 device index ("0"), or a GStreamer pipeline')
    p.add_argument("--camera-id", default=None, help="the camera's name in events and the audit log (default: the source)")
    p.add_argument("--detect-every", type=positive, default=1, help="run the detector on every N-th frame, follow faces between")
    p.add_argument("--detect-max-side", type=positive,
                   help="YuNet: detect on a copy downscaled to this longer side (e.g. 640 for 720p; faces under ~20 px are lost)")  # fmt: skip
    p.add_argument("-k", type=positive, default=2, help="a track is accepted when k of its last n frames agree")
    p.add_argument("-n", type=positive, default=3)
    p.add_argument("--events", default="-", help='JSON lines of events: a file, "-" for stdout (default), "none" for no lines')
    p.add_argument("--webhook", help="POST each event as JSON to this http(s) URL (retried, queued)")
    p.add_argument("--webhook-token-file", type=Path,
                   help="file holding the webhook's bearer token (or set FACESDK_WEBHOOK_TOKEN); never on the command line")  # fmt: skip
    p.add_argument("--webhook-queue", type=positive, default=1000, help="events kept while the receiver is down")
    p.add_argument("--audit", type=Path, help="SQLite audit log of every decision (created 0600)")
    p.add_argument("--audit-thumbnails", action="store_true", help="also store a JPEG of each decided face (biometric data)")
    p.add_argument("--retention-days", type=float, default=30.0, help="audit rows older than this are deleted")
    p.add_argument("--write", type=Path, help="write the annotated video (boxes, names, track ids, liveness) to this .mp4")
    p.add_argument("--preview", action="store_true", help="show the annotated video in a window (needs a display)")
    p.add_argument("--liveness", action="store_true", help="vote liveness per track with the MiniFASNet scorer (sdk.liveness)")
    p.add_argument("--metrics-port", type=int, help="serve Prometheus text at http://HOST:PORT/metrics")
    p.add_argument("--metrics-host", default="127.0.0.1", help="address for --metrics-port (not loopback: needs a token)")
    p.add_argument("--metrics-token-file", type=Path, help="bearer token the metrics endpoint requires")
    p.add_argument("--status-file", type=Path, help="write the health as JSON here at every report")
    p.add_argument("--report-every", type=float, default=10.0, help="print health to stderr every S seconds (0: never)")
    p.add_argument("--realtime", action="store_true", help="a file: play it at its frame rate and drop frames like a camera")
    p.add_argument("--duration", type=float, help="stop after S seconds")
    p.add_argument("--max-frames", type=positive, help="stop after N processed frames")
    p.set_defaults(run=run_cmd)


def read_token(path: Path | None, env: str) -> str | None:
    text = path.read_text().strip() if path is not None else os.environ.get(env, "").strip()
    return text or None


def set_detect_max_side(v, side: int) -> None:
    """YuNet's max_side on this command's own Verifier (its detector is not shared)."""
    from sdk.detect import YuNetDetector

    yunet = getattr(v.detector, "yunet", v.detector)
    if not isinstance(yunet, YuNetDetector):
        raise ValueError(f"--detect-max-side applies to YuNet detectors, not {v.detector.name}")
    if side < 32:
        raise ValueError(f"--detect-max-side must be at least 32, got {side}")
    yunet.max_side = side


def liveness_scorer():
    """The MiniFASNet scorer of sdk.liveness (its default models)."""
    try:
        from sdk import liveness
    except ModuleNotFoundError as e:
        from sdk.errors import BackendUnavailableError

        raise BackendUnavailableError("--liveness needs sdk.liveness (the MiniFASNet scorer), which this install lacks") from e
    return liveness.MiniFASNet()


def run_cmd(args: argparse.Namespace) -> int:
    from sdk.camera import AuditLog, Camera, FrameSource, JsonLinesSink, WebhookSink
    from sdk.camera.source import describe

    sinks: list = []
    if args.events != "none":
        sinks.append(JsonLinesSink(args.events))
    if args.webhook:
        sinks.append(WebhookSink(args.webhook, token=read_token(args.webhook_token_file, "FACESDK_WEBHOOK_TOKEN"),
                                 queue_size=args.webhook_queue))  # fmt: skip
    if args.audit:
        sinks.append(AuditLog(args.audit, retention_days=args.retention_days, thumbnails=args.audit_thumbnails))
    with make_verifier(args) as v:
        if args.detect_max_side is not None:
            set_detect_max_side(v, args.detect_max_side)
        camera = Camera(v, args.camera_id or describe(args.source), detect_every=args.detect_every, k=args.k, n=args.n,
                        far=args.far, threshold=args.threshold, liveness=liveness_scorer() if args.liveness else None,
                        sinks=sinks, write=args.write, preview=args.preview)  # fmt: skip
        source = FrameSource(args.source, realtime=True if args.realtime else None)  # fails here on a bad source
        try:
            return serve(args, camera, source, sinks)
        finally:
            source.stop()  # before exit: a reader thread killed inside FFmpeg aborts the interpreter


def serve(args: argparse.Namespace, camera, source, sinks: list) -> int:
    """Run the camera until its source ends or a signal; print the health; close everything."""
    from sdk.camera import MetricsServer
    from sdk.camera.source import describe

    metrics = None
    try:
        if args.metrics_port is not None:
            metrics = MetricsServer(camera.health, args.metrics_port, args.metrics_host,
                                    read_token(args.metrics_token_file, "FACESDK_METRICS_TOKEN"))  # fmt: skip
            print(f"metrics: http://{metrics.host}:{metrics.port}/metrics", file=sys.stderr)
        # Finish cleanly on a signal: tracks end, the webhook drains (handlers restored after).
        previous = {sig: signal.signal(sig, lambda *_: camera.stop()) for sig in (signal.SIGTERM, signal.SIGINT)}
        print(f"running on {describe(args.source)} ({source.kind}); events to "
              f"{', '.join(type(s).__name__ for s in sinks) or 'nowhere'}", file=sys.stderr)  # fmt: skip
        try:
            summary = camera.run(source, max_frames=args.max_frames, duration=args.duration,
                                 report_every=args.report_every or None, status_file=args.status_file)  # fmt: skip
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
    finally:
        camera.close()
        if metrics is not None:
            metrics.close()
    summary["webhook_dropped"] = sum(getattr(s, "dropped", 0) for s in sinks)
    if args.json:
        print(json.dumps(summary, indent=2), file=sys.stderr)
    else:
        print(camera.health.line(), file=sys.stderr)
    if summary["webhook_dropped"]:
        print(f"facesdk: warning: {summary['webhook_dropped']} event(s) could not be delivered to the webhook", file=sys.stderr)
    return 0
