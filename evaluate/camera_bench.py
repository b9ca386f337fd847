"""Videos made of real faces for the camera runtime, and its benchmark (``facesdk bench camera``).

Clips are LFW photos pasted on a gray canvas, moving a few pixels per frame, written with
``cv2.VideoWriter`` (mp4v). The benchmark's clip is 720p with one to three faces at a time:
people enter at known frames, so the time from a person's first frame to the ``accepted``
event can be measured.

What it reports (one run, same machine):
* frames per second of the camera runtime on the clip read losslessly, with detection on
  every frame and on every n-th, YuNet at full size and on a copy downscaled to 640 px, next
  to the reference measured in the same run: plain ``Verifier.match`` on every frame of the
  same clip, detection at full size (decode included in both);
* with the clip played as a 25 fps camera (frames dropped when the runtime is late), the time
  from each person's first frame to their ``accepted`` event (p50, p95, max), and the dropped
  frames.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from evaluate.tracking import lfw_path, people

GRAY = 128


@dataclass(frozen=True)
class Appearance:
    """A person (an image) on screen from frame ``start`` for ``frames`` frames at (x, y)."""

    name: str | None  # None: someone never enrolled (still named in ``image``'s path)
    image: Path
    start: int
    frames: int
    x: int
    y: int
    speed: int = 0  # pixels per frame to the right


def write_clip(path: Path, appearances: Sequence[Appearance], total: int, size=(640, 480), fps: float = 25.0) -> Path:
    """Write ``total`` frames of ``size`` (w, h); each appearance's photo drifts 0-2 px as a head
    in front of a camera does."""
    w, h = size
    photos = {a.image: cv2.imread(str(a.image)) for a in appearances}
    for p, img in photos.items():
        if img is None:
            raise FileNotFoundError(f"cannot read {p}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    try:
        for i in range(total):
            canvas = np.full((h, w, 3), GRAY, np.uint8)
            for a in appearances:
                if a.start <= i < a.start + a.frames:
                    photo = photos[a.image]
                    ph, pw = photo.shape[:2]
                    x = min(max(0, a.x + (i - a.start) * a.speed + (i % 3)), w - pw)
                    y = min(max(0, a.y), h - ph)
                    canvas[y : y + ph, x : x + pw] = photo
            writer.write(canvas)
    finally:
        writer.release()
    return path


def door_clip(data: Path, path: Path, enrolled: str, stranger: str, fps: float = 25.0) -> tuple[Path, list[Appearance]]:
    """The tests' clip (100 frames, 640x480): nobody, then ``enrolled`` (an unseen photo, number 4)
    for 30 frames, nobody for 15 (the track ends), ``stranger`` for 30, nobody."""
    cast = [
        Appearance(enrolled, lfw_path(data, enrolled, 4), 10, 30, 200, 100),
        Appearance(None, lfw_path(data, stranger, 1), 55, 30, 200, 100),
    ]
    return write_clip(path, cast, 100, (640, 480), fps), cast


def bench_cast(data: Path, count: int = 6, enrolled_images: int = 3) -> tuple[list[tuple[str, list[Path]]], list[Appearance]]:
    """People for the 720p clip: LFW DevTest people with >= 15 images, images 1..enrolled_images
    enrolled, image enrolled_images + 1 on screen. Three spots across the frame; each spot shows
    one person for 60 frames then nobody for 15 (their track ends), staggered by 25 frames, so one
    to three faces are on screen at a time."""
    names = [name for name, _ in people(data, "peopleDevTest.txt", 15)][:count]
    if len(names) < count:
        raise FileNotFoundError(f"LFW DevTest people with >= 15 images not found under {data}")
    enrol = [(n, [lfw_path(data, n, i) for i in range(1, enrolled_images + 1)]) for n in names]
    spots = [(100, 200), (515, 200), (930, 200)]
    cast = []
    for i, name in enumerate(names):
        spot = i % len(spots)
        start = 10 + spot * 25 + (i // len(spots)) * 75
        cast.append(Appearance(name, lfw_path(data, name, enrolled_images + 1), start, 60, *spots[spot]))
    return enrol, cast


def run(
    verifier,
    data: Path,
    work: Path,
    every: Sequence[int] = (1, 2, 3),
    sides: Sequence[int | None] = (None, 640),
    fps: float = 25.0,
    rounds: int = 2,
) -> dict:
    """The benchmark (see the module doc). ``verifier``: a Verifier with a YuNet detector (alone
    or with dlib's landmarks) and an empty gallery to enrol the cast into. ``sides``: YuNet's
    ``max_side`` (None: detect at full size). ``rounds``: repeat the clip's people this many
    times (more latencies)."""
    from sdk.camera import Camera, FrameSource
    from sdk.detect import YuNetDetector

    yunet = getattr(verifier.detector, "yunet", verifier.detector)
    if not isinstance(yunet, YuNetDetector):
        raise ValueError(f"the camera benchmark needs a YuNet detector, not {verifier.detector.name}")

    enrol, cast = bench_cast(data, count=3 * rounds)
    for name, photos in enrol:
        verifier.enroll(name, photos, largest=True)
    total = max(a.start + a.frames for a in cast) + 10
    clip = write_clip(work / "bench_720p.mp4", cast, total, (1280, 720), fps)
    first = {a.name: a.start for a in cast}

    # The reference: Verifier.match on every frame at full size, decode included.
    yunet.max_side = None
    t0 = time.perf_counter()
    capture, frames = cv2.VideoCapture(str(clip)), 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        verifier.match(image)
        frames += 1
    capture.release()
    reference_fps = frames / (time.perf_counter() - t0)

    out: dict = {"clip": {"frames": total, "size": "1280x720", "fps": fps, "people": len(cast)},
                 "detector": verifier.detector.name, "threshold": verifier.info()["threshold"],
                 "reference_match_fps": round(reference_fps, 1), "throughput": [], "latency": []}  # fmt: skip
    cases = [(side, n) for side in sides for n in every]
    for side, n in cases:
        yunet.max_side = side
        camera = Camera(verifier, "bench", detect_every=n)
        t0 = time.perf_counter()
        camera.run(FrameSource(clip, realtime=False))
        seconds = time.perf_counter() - t0
        snap = camera.health.snapshot()
        out["throughput"].append({
            "detect_every": n, "detect_max_side": side, "fps": round(snap["frames_out"] / seconds, 1),
            "vs_reference": round(snap["frames_out"] / seconds / reference_fps, 2),
            "accepted": snap["events"].get("accepted", 0), "latency_ms": snap["latency"],
        })  # fmt: skip

    # As a 25 fps camera: from each person's first frame to their accept.
    for side, n in cases:
        yunet.max_side = side
        events = []
        camera = Camera(verifier, "bench", detect_every=n, sinks=[events.append])
        camera.run(FrameSource(clip, realtime=True))
        snap = camera.health.snapshot()
        late = []
        for e in events:
            if e.type == "accepted" and e.identity in first:
                # The event's latency counts from its track's first frame; add the frames the track
                # began after the person's first (missed or dropped), at the clip's frame rate.
                late.append(e.latency_ms + (e.first_frame - first[e.identity]) * 1000 / fps)
        wrong = sum(e.type == "accepted" and e.identity not in first for e in events)
        people_accepted = len({e.identity for e in events if e.type == "accepted" and e.identity in first})
        out["latency"].append({
            "detect_every": n, "detect_max_side": side, "people": len(cast), "accepted": people_accepted, "wrong_identity": wrong,
            "first_frame_to_accept_ms": _percentiles(late), "dropped_frames": snap["frames_dropped"],
            "frames_in": snap["frames_in"],
        })  # fmt: skip
    yunet.max_side = None
    return out


def _percentiles(values: list[float]) -> dict:
    if not values:
        return {}
    p50, p95 = np.percentile(values, [50, 95])
    return {"p50": round(float(p50), 1), "p95": round(float(p95), 1), "max": round(max(values), 1), "n": len(values)}


def lines(result: dict) -> list[str]:
    c = result["clip"]
    nan = float("nan")
    out = [f"clip: {c['size']}, {c['frames']} frames at {c['fps']:g} fps, {c['people']} people (1-3 faces at a time); "
           f"detector {result['detector']}",
           f"reference: Verifier.match on every frame (detection at full size): {result['reference_match_fps']:.1f} fps", "",
           f"{'detect every':>12} {'at':>5} {'fps':>7} {'vs reference':>12} {'accepted':>8}   pipeline p50/p95 ms"]  # fmt: skip
    for row in result["throughput"]:
        pipe = row["latency_ms"].get("pipeline", {})
        out.append(f"{row['detect_every']:>12} {row['detect_max_side'] or 'full':>5} {row['fps']:>7.1f} "
                   f"{row['vs_reference']:>11.2f}x {row['accepted']:>8}   "
                   f"{pipe.get('p50_ms', nan):.1f}/{pipe.get('p95_ms', nan):.1f}")  # fmt: skip
    out += ["", f"played as a {c['fps']:g} fps camera: a person's first frame to their accept event"]
    out.append(f"{'detect every':>12} {'at':>5} {'accepted':>9} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'dropped':>9}")
    for row in result["latency"]:
        lat = row["first_frame_to_accept_ms"]
        out.append(f"{row['detect_every']:>12} {row['detect_max_side'] or 'full':>5} {row['accepted']:>4}/{row['people']:<4} "
                   f"{lat.get('p50', nan):>8.1f} {lat.get('p95', nan):>8.1f} {lat.get('max', nan):>8.1f} "
                   f"{row['dropped_frames']:>4}/{row['frames_in']:<4}")  # fmt: skip
        if row["wrong_identity"]:
            out.append(f"  warning: {row['wrong_identity']} accept event(s) named someone not on screen")
    return out
