"""Frames from a camera: a video file, an RTSP/HTTP URL, a V4L2 device index or a GStreamer
pipeline, read by one thread that keeps only the newest frame.

A live source (URL, device, pipeline) never builds a queue: the reader overwrites the one slot
and counts what it overwrote as dropped, so the runtime always works on the newest frame and
memory stays at a few frames whatever the stream does. When a live stream drops, the reader
reconnects with exponential backoff (and says so in ``reconnects``). A file is read losslessly
by default (the reader waits for the runtime) and its end ends the run; ``realtime=True`` plays
it at its own frame rate and drops like a camera (benchmarks, rehearsals).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdk.errors import BackendUnavailableError, InvalidArgumentError, InvalidImageError
from sdk.images import MAX_PIXELS, check_video_size

log = logging.getLogger(__name__)

FILE, URL, DEVICE, PIPELINE = "file", "url", "device", "pipeline"
URL_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")
# How long FFmpeg may wait to open a stream or for a frame before the reader calls it dropped.
OPEN_TIMEOUT_MS, READ_TIMEOUT_MS = 5000, 5000


@dataclass(frozen=True)
class Frame:
    index: int  # frames received from the source since the start (across reconnects)
    time: float  # time.monotonic() when the reader received it
    image: np.ndarray  # BGR uint8


def source_kind(source: str | int) -> str:
    """FILE, URL, DEVICE or PIPELINE, from the way the source is written."""
    if isinstance(source, int) and not isinstance(source, bool):
        return DEVICE
    if not isinstance(source, (str, os.PathLike)):
        raise InvalidArgumentError(f"a source is a path, URL, device index or GStreamer pipeline, got {type(source).__name__}")
    text = os.fspath(source).strip()
    if text.isdigit():
        return DEVICE
    if text.lower().startswith(URL_SCHEMES):
        return URL
    if "!" in text:  # gst-launch syntax: elements joined by "!"
        return PIPELINE
    if "://" in text:
        raise InvalidArgumentError(f"unsupported stream address {text!r}: use rtsp://, rtsps://, http:// or https://")
    return FILE


def has_gstreamer() -> bool:
    import cv2

    return any(line.strip().startswith("GStreamer:") and "YES" in line for line in cv2.getBuildInformation().splitlines())


def open_capture(source: str | int, kind: str) -> Any:
    """An opened ``cv2.VideoCapture`` for the source; InvalidImageError (file),
    BackendUnavailableError (pipeline without GStreamer) or ConnectionError (live) otherwise."""
    import cv2

    if kind == FILE:
        name = os.fspath(source)
        if not Path(name).is_file():
            raise InvalidImageError(f"no such video file: {name}")
        capture = cv2.VideoCapture(name)
    elif kind == URL:
        # TCP for RTSP: a lost UDP packet is a torn frame, a lost TCP connection a clear end.
        os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, OPEN_TIMEOUT_MS, cv2.CAP_PROP_READ_TIMEOUT_MSEC, READ_TIMEOUT_MS]
        capture = cv2.VideoCapture(os.fspath(source), cv2.CAP_FFMPEG, params)
    elif kind == DEVICE:
        index = int(source)
        backend = cv2.CAP_V4L2 if os.name == "posix" and Path("/dev").is_dir() else cv2.CAP_ANY
        if backend == cv2.CAP_V4L2 and not Path(f"/dev/video{index}").exists():
            raise ConnectionError(f"no camera device /dev/video{index}")
        capture = cv2.VideoCapture(index, backend)
    else:
        if not has_gstreamer():
            raise BackendUnavailableError(
                "this OpenCV was built without GStreamer (the PyPI wheels are), so a GStreamer pipeline cannot be "
                "opened: install an OpenCV with GStreamer (e.g. Debian's python3-opencv, or JetPack's on Jetson), "
                "or give an rtsp:// URL, a device index or a file"
            )
        capture = cv2.VideoCapture(os.fspath(source), cv2.CAP_GSTREAMER)
    if not capture.isOpened():
        capture.release()
        if kind == FILE:
            raise InvalidImageError(f"cannot open video {source}")
        raise ConnectionError(f"cannot open {describe(source)}")
    try:
        check_video_size(capture, describe(source))
    except Exception:
        capture.release()
        raise
    return capture


def describe(source: str | int) -> str:
    """The source for messages and events, without credentials (rtsp://user:pass@host/...)."""
    text = str(source)
    if "://" in text and "@" in text.split("://", 1)[1].split("/", 1)[0]:
        scheme, rest = text.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return text


class FrameSource:
    """A reader thread over one source, always holding only the newest frame.

    realtime: drop frames the runtime is too slow for (default: live sources yes, files no; a
    file in realtime plays at its own frame rate). backoff: first and largest wait, in seconds,
    between reconnection attempts of a live source (doubling). max_reconnects: give up after this
    many failed attempts in a row (None: never). ``read()`` returns the next newest frame, or None
    once the source has ended (file end, stop, or a live source given up).
    """

    def __init__(
        self,
        source: str | int,
        *,
        realtime: bool | None = None,
        backoff: tuple[float, float] = (0.5, 10.0),
        max_reconnects: int | None = None,
    ) -> None:
        self.source = source
        self.kind = source_kind(source)
        self.live = self.kind != FILE
        self.realtime = self.live if realtime is None else bool(realtime)
        if not (0 < backoff[0] <= backoff[1]):
            raise InvalidArgumentError(f"backoff must be (first, largest) seconds with 0 < first <= largest, got {backoff}")
        self.backoff = (float(backoff[0]), float(backoff[1]))
        self.max_reconnects = max_reconnects
        self.frames_in = 0
        self.dropped = 0
        self.reconnects = 0
        self.error: BaseException | None = None  # why the source ended, when not a file's end or stop()
        self.fps = 0.0  # the source's own frame rate, when it says (0: unknown)
        self._slot: Frame | None = None
        self._t0 = 0.0  # realtime file: when its first frame was due
        self._ended = False
        self._stop = threading.Event()
        self._cond = threading.Condition()
        # The first open happens here, so a bad source fails in the caller, not in the thread.
        self._capture = open_capture(source, self.kind)
        self._note_fps()
        self._thread = threading.Thread(target=self._run, name=f"frames:{describe(source)}", daemon=True)
        self._thread.start()

    def _note_fps(self) -> None:
        import cv2

        fps = self._capture.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else 0.0

    def read(self, timeout: float | None = None) -> Frame | None:
        """The newest frame not yet read (waits for one); None when the source has ended, or
        when ``timeout`` seconds pass without a frame (check ``ended`` to tell them apart)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._slot is not None or self._ended, timeout):
                return None
            frame, self._slot = self._slot, None
            self._cond.notify_all()
            return frame

    @property
    def ended(self) -> bool:
        with self._cond:
            return self._ended and self._slot is None

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout=READ_TIMEOUT_MS / 1000 + 2)

    def __enter__(self) -> FrameSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the reader thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                if self._capture is None and not self._reconnect():
                    break
                image = self._grab()
                if image is None:
                    if not self.live:
                        break  # a file's end is the end of the run
                    log.warning("%s: stream lost after frame %d; reconnecting", describe(self.source), self.frames_in)
                    self._capture.release()
                    self._capture = None
                    continue
                self._put(image)
        except BaseException as e:  # noqa: BLE001 (reported to the runtime through .error)
            self.error = e
            log.error("%s: reader stopped: %s", describe(self.source), e)
        finally:
            if self._capture is not None:
                self._capture.release()
                self._capture = None
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _grab(self) -> np.ndarray | None:
        import cv2

        try:
            ok, image = self._capture.read()
        except cv2.error:
            return None
        if not ok or image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
            return None
        if image.shape[0] * image.shape[1] > MAX_PIXELS:  # the header did not say, or lied
            raise InvalidImageError(f"{describe(self.source)}: a frame of {image.shape[1]}x{image.shape[0]} is too large")
        return image

    def _put(self, image: np.ndarray) -> None:
        if self.realtime and not self.live and self.fps:
            # A file played as a camera: frame n is due at start + n / fps.
            if self.frames_in == 0:
                self._t0 = time.monotonic()
            delay = self._t0 + self.frames_in / self.fps - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)
        frame = Frame(self.frames_in, time.monotonic(), image)
        with self._cond:
            if not self.realtime:  # lossless: wait for the runtime to take the previous frame
                self._cond.wait_for(lambda: self._slot is None or self._stop.is_set())
            if self._slot is not None:
                self.dropped += 1  # the runtime never saw it: a newer one replaces it
            self._slot = frame
            self.frames_in += 1
            self._cond.notify_all()

    def _reconnect(self) -> bool:
        """Reopen a live source, waiting first, first..largest seconds doubling; False when stopped
        or given up."""
        wait, failures = self.backoff[0], 0
        while not self._stop.wait(wait):
            try:
                self._capture = open_capture(self.source, self.kind)
            except (ConnectionError, OSError) as e:
                failures += 1
                if self.max_reconnects is not None and failures >= self.max_reconnects:
                    self.error = ConnectionError(f"{describe(self.source)}: gave up after {failures} attempts: {e}")
                    return False
                wait = min(wait * 2, self.backoff[1])
                continue
            self.reconnects += 1
            self._note_fps()
            log.warning("%s: reconnected (%d so far)", describe(self.source), self.reconnects)
            return True
        return False
