"""Running on a camera: ``sdk.camera.Camera(verifier).run("rtsp://...")``.

    from sdk.camera import Camera, JsonLinesSink, WebhookSink, AuditLog
    v = sdk.Verifier(fpir=1e-2)
    cam = Camera(v, "door-1", sinks=[JsonLinesSink("-"), lambda e: relay(e) if e.type == "accepted" else None])
    cam.run("rtsp://10.0.0.5/stream")        # or a file, "0" (V4L2), a GStreamer pipeline

Modules: source (the reader thread, reconnects), runtime (decisions, liveness vote, overlay),
events (schema and sinks), audit (SQLite log), health (rates, latency, Prometheus).
"""

from sdk.camera.audit import AuditLog
from sdk.camera.events import EVENT_TYPES, CallbackSink, Event, JsonLinesSink, WebhookSink
from sdk.camera.health import Health, MetricsServer
from sdk.camera.runtime import Camera, LivenessScorer
from sdk.camera.source import Frame, FrameSource, source_kind

__all__ = [
    "AuditLog", "Camera", "CallbackSink", "EVENT_TYPES", "Event", "Frame", "FrameSource", "Health",
    "JsonLinesSink", "LivenessScorer", "MetricsServer", "WebhookSink", "source_kind",
]
