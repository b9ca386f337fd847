"""The camera runtime: frames -> faces -> tracks -> one decision per track -> events.

Decisions are :class:`sdk.verifier.FaceStream`'s (appearance-gated tracks, fused template and k
of the last n frames agreeing); this module adds what a device needs around them: detection on
every frame or every n-th (boxes held between), a liveness vote per track across frames, the
events and their sinks, the video overlay, and health.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from sdk import detect
from sdk.camera.events import ACCEPTED, NOT_LIVE, STRANGER, TRACK_ENDED, CallbackSink, Event, now_utc
from sdk.camera.health import Health
from sdk.camera.source import FrameSource, Frame, describe
from sdk.errors import BackendUnavailableError, InvalidArgumentError

log = logging.getLogger(__name__)


class LivenessScorer(Protocol):
    """What the runtime needs of a liveness model (e.g. ``sdk.liveness``'s MiniFASNet scorer)."""

    threshold: float

    def score(self, frame_bgr: np.ndarray, detection: detect.Detection) -> float: ...  # probability live, 0..1


class Sink(Protocol):
    def emit(self, event: Event) -> None: ...

    def close(self) -> None: ...


@dataclass
class _Track:
    """What the runtime knows of one FaceStream track."""

    id: int
    first_frame: int
    first_time: float  # monotonic capture time of its first frame
    box: np.ndarray
    label: str = ""
    identity: str | None = None  # the latest identity announced
    accepted: set[str] = field(default_factory=set)  # identities announced
    decision: str = "undecided"
    stranger_votes: int = 0  # consecutive answers that named nobody
    live_scores: deque = field(default_factory=deque)  # the last n liveness probabilities
    not_live_sent: bool = False
    last: dict[str, Any] = field(default_factory=dict)  # fields of the latest answer, for track_ended


class Camera:
    """One camera's runtime over a shared :class:`sdk.Verifier`.

    detect_every: run the detector (and the whole pipeline) on every n-th frame; between, each
    face's box follows the optical flow of its pixels (and the tracker's box with it).
    far / threshold: the operating point (default: the Verifier's; under its FPIR a fused track
    is decided at the model's track threshold, a one-frame track at the frame threshold, both
    following the gallery's size). k, n, window, max_missed, appearance_gate: the track decision
    (:meth:`sdk.Verifier.stream`). stranger_after: a track never accepted is confirmed a stranger
    when this many consecutive answers named nobody (default n). liveness: an optional scorer
    (:class:`LivenessScorer`); a track is accepted only once at least k of its last n scored
    frames are live (probability >= the scorer's threshold), and ``not_live`` is announced once
    k of them are not (give the scorer here, not to the Verifier: its hook vetoes frame by
    frame, before any vote). sinks: event sinks (or plain callables, wrapped in
    :class:`CallbackSink`). write: a video file the annotated frames go to (mp4v); preview: show
    them in a window (needs a display and an OpenCV with a GUI, else BackendUnavailableError).

    ``run(source)`` reads a source to its end (or ``stop()``); ``process(frame)`` takes one frame
    for firmware that has its own capture. Not thread-safe: one Camera per camera.
    """

    def __init__(
        self,
        verifier: Any,
        camera_id: str = "camera",
        *,
        detect_every: int = 1,
        far: float | None = None,
        threshold: float | None = None,
        k: int = 2,
        n: int = 3,
        window: int = 10,
        max_missed: int = 5,
        appearance_gate: float | None = None,
        stranger_after: int | None = None,
        liveness: LivenessScorer | None = None,
        sinks: Iterable[Sink | Callable[[Event], object]] = (),
        write: str | os.PathLike | None = None,
        preview: bool = False,
    ) -> None:
        if isinstance(detect_every, bool) or not isinstance(detect_every, int) or detect_every < 1:
            raise InvalidArgumentError(f"detect_every must be an int >= 1, got {detect_every!r}")
        if not isinstance(camera_id, str) or not camera_id or not camera_id.isprintable() or len(camera_id) > 128:
            raise InvalidArgumentError(f"camera_id must be a printable name of 1..128 characters, got {camera_id!r}")
        if far is not None and threshold is not None:
            raise InvalidArgumentError("give far or threshold, not both")
        if liveness is not None and not (callable(getattr(liveness, "score", None)) and hasattr(liveness, "threshold")):
            raise InvalidArgumentError("liveness must have score(frame, detection) -> float and a threshold")
        self.verifier = verifier
        self.camera_id = camera_id
        self.detect_every = detect_every
        self.far, self.threshold = far, threshold
        options = {} if appearance_gate is None else {"appearance_gate": appearance_gate}
        self.stream = verifier.stream(window=window, max_missed=max_missed, k=k, n=n, **options)
        self.k, self.n = k, n
        self.stranger_after = n if stranger_after is None else int(stranger_after)
        if self.stranger_after < 1:
            raise InvalidArgumentError(f"stranger_after must be >= 1, got {stranger_after!r}")
        self.liveness = liveness
        self.sinks: list[Sink] = [s if hasattr(s, "emit") else CallbackSink(s) for s in sinks]
        self._thumbnails = any(getattr(s, "thumbnails", False) for s in self.sinks)
        self.health = Health(camera_id)
        self._tracks: dict[int, _Track] = {}
        self._seq = 0
        self._frames = 0  # frames given to process()
        self._stop = threading.Event()
        self._gray: np.ndarray | None = None  # the previous frame, for _follow
        self._write_path = None if write is None else Path(write)
        self._writer = None
        self._fps = 25.0
        self.preview = bool(preview)
        if self.preview:
            check_display()

    # --- running ------------------------------------------------------------------------------

    def run(
        self,
        source: str | int | FrameSource,
        *,
        max_frames: int | None = None,
        duration: float | None = None,
        report_every: float | None = None,
        report: Callable[[str], object] = lambda line: print(line, file=sys.stderr, flush=True),
        status_file: str | os.PathLike | None = None,
        realtime: bool | None = None,
    ) -> dict[str, Any]:
        """Process a source (a FrameSource, or what :class:`FrameSource` opens) until it ends,
        ``stop()``, ``max_frames`` processed frames or ``duration`` seconds; every open track then
        ends (``track_ended``). Returns the final health snapshot. A live source that gave up
        (``FrameSource(max_reconnects=...)``) or a reader error raises after the tracks end."""
        own = not isinstance(source, FrameSource)
        src = FrameSource(source, realtime=realtime) if own else source
        self._fps = src.fps or self._fps
        started = last_report = time.monotonic()
        status = None if status_file is None else Path(status_file)
        try:
            while not self._stop.is_set():
                frame = src.read(timeout=0.25)
                self._count_source(src)
                now = time.monotonic()
                if frame is not None:
                    self.process(frame)
                elif src.ended:
                    break
                if report_every and now - last_report >= report_every:
                    last_report = now
                    report(self.health.line())
                    if status is not None:
                        self.health.write_status(status)
                if (max_frames is not None and self.health.frames_out >= max_frames) or (
                    duration is not None and now - started >= duration
                ):
                    break
        finally:
            if own:
                src.stop()
            self._count_source(src)
            self.finish()
            if status is not None:
                self.health.write_status(status)
        if src.error is not None:
            raise src.error
        return self.health.snapshot()

    def stop(self) -> None:
        """Ask ``run`` to return after the current frame (any thread, e.g. a signal handler)."""
        self._stop.set()

    def _count_source(self, src: FrameSource) -> None:
        self.health.frames_in = src.frames_in
        self.health.dropped = src.dropped
        self.health.reconnects = src.reconnects

    def process(self, frame: Frame | np.ndarray) -> list[Event]:
        """One frame (a :class:`Frame`, or a BGR array captured now); returns the events it caused."""
        if not isinstance(frame, Frame):  # firmware's own capture: count it in
            frame = Frame(self._frames, time.monotonic(), np.asarray(frame))
            self.health.frames_in += 1
        start = time.monotonic()
        self.health.time("wait", (start - frame.time) * 1000)
        events: list[Event] = []
        detected = self._frames % self.detect_every == 0
        self._frames += 1
        if detected:
            events = self._detect(frame)
            self.health.detected += 1
        if self.detect_every > 1:
            followed = time.monotonic()
            self._follow(frame.image, detected)
            if not detected:
                self.health.time("follow", (time.monotonic() - followed) * 1000)
        done_pipeline = time.monotonic()
        if self._write_path is not None or self.preview:
            self._draw_out(frame.image)
        for event in events:
            self._emit(event)
        end = time.monotonic()
        self.health.frames_out += 1
        self.health.tracks = len(self._tracks)
        if detected:
            self.health.time("output", (end - done_pipeline) * 1000)
            self.health.time("total", (end - frame.time) * 1000)
        return events

    def finish(self) -> list[Event]:
        """End every open track (``track_ended``), flush the video. Sinks stay open: close them
        with :meth:`close`."""
        events = [self._ended(t) for t in list(self._tracks.values())]
        self._tracks.clear()
        self.stream.reset()
        for event in events:
            self._emit(event)
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        return events

    def close(self) -> None:
        """finish(), then close every sink (a webhook delivers what it can first)."""
        self.finish()
        for sink in self.sinks:
            sink.close()
        if self.preview:
            import cv2

            cv2.destroyAllWindows()

    def __enter__(self) -> Camera:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- decisions ------------------------------------------------------------------------------

    def limit(self, fused: bool = True) -> float:
        """The squared-L2 threshold a decision uses now: of a fused track (several frames), or of
        one frame. Under the Verifier's FPIR they differ (the model's track and frame tables)."""
        v = self.verifier
        return v._track_limit(self.far, self.threshold) if fused else v._limit(self.far, self.threshold)

    def _detect(self, frame: Frame) -> list[Event]:
        t0 = time.monotonic()
        matches = self.stream.match(frame.image, far=self.far, threshold=self.threshold)
        t1 = time.monotonic()
        self.health.time("pipeline", (t1 - t0) * 1000)
        events: list[Event] = []
        alive = {t.id for t in self.stream.tracker.tracks}
        for track_id in [t for t in self._tracks if t not in alive]:
            events.append(self._ended(self._tracks.pop(track_id)))
        liveness_ms = 0.0
        for m in matches:
            if m.track_id is None:  # vetoed by the Verifier's own liveness hook: not tracked
                continue
            track = self._tracks.get(m.track_id)
            if track is None:
                track = self._tracks[m.track_id] = _Track(m.track_id, frame.index, frame.time, m.box,
                                                          live_scores=deque(maxlen=self.n))  # fmt: skip
            track.box = np.asarray(m.box, np.float32)
            if self.liveness is not None:
                ts = time.monotonic()
                d = detect.make_detection(m.box, m.score, m.landmarks, getattr(self.verifier.detector, "scheme", "yunet"))
                track.live_scores.append(float(self.liveness.score(frame.image, d)))
                liveness_ms += (time.monotonic() - ts) * 1000
            events += self._decide(track, m, frame)
        if self.liveness is not None:
            self.health.time("liveness", liveness_ms)
        return events

    def _follow(self, image: np.ndarray, detected: bool) -> None:
        """Between detections, move each track's box with the optical flow of points on the face
        (pyramidal Lucas-Kanade, median shift), in the tracker too, so a face that moves keeps
        its track at the next detection."""
        import cv2

        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
        previous, self._gray = self._gray, gray
        if detected or previous is None or previous.shape != gray.shape or not self._tracks:
            return
        boxes = {t.id: t for t in self.stream.tracker.tracks}
        for track in self._tracks.values():
            if track.id not in boxes or boxes[track.id].missed:  # not seen at the last detection
                continue
            x1, y1, x2, y2 = track.box
            # A 5x5 grid over the middle of the box: the face, not the background at its edges.
            xs, ys = np.linspace(x1 + 0.25 * (x2 - x1), x2 - 0.25 * (x2 - x1), 5), np.linspace(y1 + 0.2 * (y2 - y1), y2 - 0.2 * (y2 - y1), 5)
            points = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 1, 2).astype(np.float32)
            moved, found, _ = cv2.calcOpticalFlowPyrLK(previous, gray, points, None, winSize=(21, 21), maxLevel=3)
            good = found.ravel() == 1
            if good.sum() < 5:
                continue
            dx, dy = np.median((moved - points).reshape(-1, 2)[good], axis=0)
            track.box = track.box + np.array([dx, dy, dx, dy], np.float32)
            boxes[track.id].box = track.box.astype(np.float64)

    def _live_vote(self, track: _Track) -> dict[str, Any] | None:
        """None without a scorer; else {"live": True/False/None (undecided), "score", "votes", "of"}."""
        if self.liveness is None:
            return None
        scores = list(track.live_scores)
        live = sum(s >= self.liveness.threshold for s in scores)
        verdict = True if live >= self.k else False if len(scores) - live >= self.k else None
        mean = round(float(np.mean(scores)), 4) if scores else None
        return {"live": verdict, "score": mean, "votes": live, "of": len(scores), "threshold": self.liveness.threshold}

    def _decide(self, track: _Track, m: Any, frame: Frame) -> list[Event]:
        vote = self._live_vote(track)
        fused = m.frames > 1  # FaceStream decides a track of one frame as that frame
        common = dict(
            distance=None if math.isinf(m.distance) else round(float(m.distance), 5),
            threshold=round(self.limit(fused), 5), frames=m.frames, quality=m.quality, liveness=vote,
            box=[round(float(x), 1) for x in m.box],
        )  # fmt: skip
        track.last = dict(common)
        out = []
        if vote is not None and vote["live"] is False:
            track.label = "not live"
            if not track.not_live_sent:
                track.not_live_sent = True
                track.decision = NOT_LIVE
                out.append(self._event(NOT_LIVE, track, frame, identity=m.identity, **common))
            return out
        if m.accepted:
            track.stranger_votes = 0
            if vote is not None and vote["live"] is None:
                track.label = f"{m.identity}?"
                return out  # the face matches; liveness has not voted yet
            track.label = m.identity
            if m.identity not in track.accepted:
                track.accepted.add(m.identity)
                track.decision, track.identity = ACCEPTED, m.identity
                point = self._operating_point(fused)
                out.append(self._event(ACCEPTED, track, frame, identity=m.identity, operating_point=point, **common))
            return out
        if m.reason == "no_match":
            track.stranger_votes += 1
        else:
            track.stranger_votes = 0
        if track.stranger_votes >= self.stranger_after and track.decision == "undecided":
            track.decision = STRANGER
            track.label = "stranger"
            out.append(self._event(STRANGER, track, frame, **common))
        return out

    def _operating_point(self, fused: bool) -> dict[str, Any] | None:
        v = self.verifier
        if self.far is not None:
            return {"far": self.far}
        if self.threshold is None and getattr(v, "fpir", None) is not None:
            point = v.operating_point(track=fused)
            return {"table": "track" if fused else "frame",
                    **{k: point[k] for k in ("target_fpir", "gallery_size", "expected_fnir", "warning")}}  # fmt: skip
        return None

    def _ended(self, track: _Track) -> Event:
        return self._event(TRACK_ENDED, track, None, identity=track.identity, decision=track.decision, **track.last)

    def _event(self, kind: str, track: _Track, frame: Frame | None, **fields: Any) -> Event:
        now = time.monotonic()
        event = Event(kind, self.camera_id, track.id, self._seq, now_utc(), first_frame=track.first_frame,
                      decided_frame=None if frame is None else frame.index,
                      latency_ms=round((now - track.first_time) * 1000, 1), **fields)  # fmt: skip
        self._seq += 1
        if self._thumbnails and frame is not None and kind != TRACK_ENDED:
            event.thumbnail = _crop(frame.image, track.box)
        return event

    def _emit(self, event: Event) -> None:
        self.health.count_event(event.type)
        for sink in self.sinks:
            sink.emit(event)
            if hasattr(sink, "dropped") and hasattr(sink, "pending"):  # a webhook
                self.health.webhook_dropped = sink.dropped
                self.health.webhook_pending = sink.pending

    # --- video out ------------------------------------------------------------------------------

    def _draw_out(self, image: np.ndarray) -> None:
        import cv2

        canvas = draw(image, self._tracks.values(), self.liveness is not None)
        if self._write_path is not None:
            if self._writer is None:
                h, w = canvas.shape[:2]
                self._writer = cv2.VideoWriter(str(self._write_path), cv2.VideoWriter_fourcc(*"mp4v"), self._fps, (w, h))
                if not self._writer.isOpened():
                    raise BackendUnavailableError(f"cannot write video {self._write_path}")
            self._writer.write(canvas)
        if self.preview:
            cv2.imshow(f"facesdk: {describe(self.camera_id)}", canvas)
            if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
                self.stop()


COLOURS = {ACCEPTED: (0, 200, 0), STRANGER: (0, 0, 230), NOT_LIVE: (200, 0, 200), "undecided": (0, 200, 230)}


def draw(image: np.ndarray, tracks: Iterable[_Track], liveness: bool) -> np.ndarray:
    """A copy of the frame with each track's box, id, name (or decision) and liveness."""
    import cv2

    canvas = image.copy()
    for t in tracks:
        x1, y1, x2, y2 = (int(round(v)) for v in t.box)
        colour = COLOURS.get(t.decision, COLOURS["undecided"])
        cv2.rectangle(canvas, (x1, y1), (x2, y2), colour, 2)
        text = f"#{t.id} {t.label}".strip()
        if liveness and t.live_scores:
            text += f" live {np.mean(t.live_scores):.2f}"
        cv2.putText(canvas, text, (x1, max(12, y1 - 6)), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    return canvas


def _crop(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    return image[max(0, y1) : min(h, y2), max(0, x1) : min(w, x2)].copy()


def check_display() -> None:
    """BackendUnavailableError unless a preview window can open here."""
    import cv2

    gui = next((line.split(":", 1)[1].strip() for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GUI:")), "")
    if gui.upper() in ("", "NONE"):
        raise BackendUnavailableError(
            "--preview needs an OpenCV with a GUI; this one has none (opencv-python-headless): "
            "use --write out.mp4, or install opencv-python on a machine with a display"
        )
    if os.name == "posix" and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise BackendUnavailableError("--preview needs a display (DISPLAY or WAYLAND_DISPLAY is not set): use --write out.mp4")
