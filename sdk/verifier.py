"""The SDK's front door: ``sdk.Verifier().match(frame)``.

A Verifier owns a detector, the canonical aligner, an embedding backend and an enrolment
gallery. Every face of a frame is embedded in one batch and matched against the gallery with
the C++ kernels. Thresholds are squared-L2 distances calibrated on labelled data and stored in
the model file (``facesdk calibrate --write``); a call may ask for another false accept rate.

Presentation-attack detection: pass ``liveness=callable(frame_bgr, detection) -> bool`` and
faces it returns False for are reported with ``live=False``, never identified nor accepted.
Off by default (the SDK ships no liveness model); the hook runs before embedding, so a vetoed
face costs nothing else.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import cv2
import numpy as np

from sdk import align as aligner
from sdk import detect
from sdk.embed import OnnxEmbedder, default_model_path
from sdk.errors import BackendUnavailableError, FaceSDKError, InvalidImageError
from sdk.gallery import Gallery

log = logging.getLogger(__name__)

Image = Union[str, os.PathLike, np.ndarray]
Liveness = Callable[[np.ndarray, detect.Detection], bool]

# Frames above this many pixels are refused: a decoded 50 MP frame is already 150 MB.
MAX_PIXELS = 50_000_000
# Detection runs on a copy whose longer side is at most this; alignment uses full resolution.
DETECT_MAX_SIDE = 1280
SUPPORTED_CHIP_SCHEME = "dlib5_150_0.25"


class NoFaceError(FaceSDKError, ValueError):
    """An image that must hold a face (enrolment, verify, identify) holds none."""


@dataclass(frozen=True)
class Match:
    """One face of a frame. identity is None unless accepted."""

    box: np.ndarray  # x1, y1, x2, y2 in frame pixels
    landmarks: np.ndarray  # [5, 2] in frame pixels
    score: float  # detector confidence
    identity: str | None
    distance: float  # squared L2 to the nearest enrolled face (inf: empty gallery or not live)
    accepted: bool  # distance <= threshold and live
    live: bool = True  # False when the liveness hook vetoed the face


@dataclass(frozen=True)
class Verification:
    same: bool
    distance: float
    threshold: float


def default_home() -> Path:
    return Path(os.environ.get("FACESDK_HOME", Path.home() / ".cache" / "facesdk"))


def load_image(image: Image) -> np.ndarray:
    """A BGR uint8 [H, W, 3] frame from a path or an array (grayscale and BGRA are converted)."""
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise InvalidImageError(f"no such image file: {path}")
        frame = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if frame is None:
            raise InvalidImageError(f"{path} is not a readable image (corrupt, truncated or not an image)")
    elif isinstance(image, np.ndarray):
        frame = image
    else:
        raise InvalidImageError(f"an image must be a file path or a numpy array, got {type(image).__name__}")
    if frame.ndim >= 2 and frame.shape[0] * frame.shape[1] > MAX_PIXELS:
        raise InvalidImageError(
            f"frame {frame.shape[1]}x{frame.shape[0]} exceeds {MAX_PIXELS / 1e6:.0f} MP; downscale it first"
        )
    try:
        return detect.as_bgr(frame)
    except (TypeError, ValueError) as e:
        raise InvalidImageError(str(e)) from e


class Verifier:
    """Face verification and identification against an enrolment gallery.

    model: ONNX file written by ``export.onnx`` (default: the cached default model).
    backend: "onnxruntime" (providers e.g. ["CUDAExecutionProvider"]; an unavailable one raises
    BackendUnavailableError, never a silent CPU fallback).
    detector: "auto" (YuNet if its model is found, else dlib's HOG), "yunet", "dlib", or an object
    with ``detect(bgr) -> list[Detection]``, ``name`` and ``scheme``.
    gallery: SQLite file (default ``$FACESDK_HOME/gallery.sqlite``), or None for in-memory.
    threshold: squared L2; default the model's calibrated ``threshold``. far: pick the model's
    calibrated threshold for this false accept rate instead.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        backend: str = "onnxruntime",
        detector: str | Any = "auto",
        gallery: str | os.PathLike | None = "default",
        *,
        threshold: float | None = None,
        far: float | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        liveness: Liveness | None = None,
    ) -> None:
        if backend != "onnxruntime":
            raise BackendUnavailableError(
                f"backend {backend!r} is not available; this build has 'onnxruntime' (TensorRT comes with the engine builder)"
            )
        try:
            self.embedder = OnnxEmbedder(model if model is not None else default_model_path(), providers, threads)
        except RuntimeError as e:
            raise BackendUnavailableError(str(e)) from e
        meta = self.embedder.metadata
        if meta.get("chip_scheme") != SUPPORTED_CHIP_SCHEME:
            raise FaceSDKError(f"model chip_scheme {meta.get('chip_scheme')!r} is not supported (need {SUPPORTED_CHIP_SCHEME})")
        self.detector = detect.detector_from(detector)
        if gallery == "default":
            gallery = default_home() / "gallery.sqlite"
            gallery.parent.mkdir(parents=True, exist_ok=True)
        self.gallery = Gallery(
            gallery,
            model_name=meta["model_name"],
            model_version=meta["model_version"],
            dim=self.embedder.embedding_dim,
        )
        self.threshold = self.threshold_for(far) if threshold is None else _checked_threshold(threshold)
        self.liveness = liveness
        log.info("Verifier: %s", self.info())

    def info(self) -> dict[str, Any]:
        """What runs: backend, providers, model, detector, gallery, threshold."""
        return {
            "backend": self.embedder.backend,
            "providers": list(self.embedder.providers),
            "model": f"{self.embedder.metadata['model_name']} v{self.embedder.metadata['model_version']}",
            "model_path": str(self.embedder.path),
            "detector": self.detector.name,
            "gallery": str(self.gallery.path) if self.gallery.path else ":memory:",
            "threshold": self.threshold,
        }

    def threshold_for(self, far: float | None = None) -> float:
        """The model's calibrated threshold (for `far` when given)."""
        meta = self.embedder.metadata
        if far is None:
            if "threshold" not in meta:
                raise FaceSDKError(
                    f"{self.embedder.path} has no calibrated threshold: run `facesdk calibrate --write` or pass threshold="
                )
            return float(meta["threshold"])
        table = {float(k): float(v) for k, v in json.loads(meta.get("threshold_table", "{}")).items()}
        for known, value in table.items():
            if math.isclose(known, far, rel_tol=1e-6):
                return value
        raise FaceSDKError(f"no threshold calibrated for FAR {far:g}; the model has {sorted(table) or 'none'}")

    # --- faces ---------------------------------------------------------------------------------

    def faces(self, image: Image) -> tuple[np.ndarray, list[detect.Detection]]:
        """The frame and its detections (largest first is not guaranteed: detector order)."""
        frame = load_image(image)
        h, w = frame.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = frame if scale == 1.0 else cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        found = self.detector.detect(small)
        if scale != 1.0:
            found = [detect.make_detection(d.box / scale, d.score, d.landmarks / scale, d.scheme) for d in found]
        return frame, found

    def embed(self, frame: np.ndarray, detections: Sequence[detect.Detection]) -> np.ndarray:
        """Embeddings [n, D] of the detected faces, in one batch."""
        if not detections:
            return np.zeros((0, self.embedder.embedding_dim), np.float32)
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        chips = np.stack([aligner.align(rgb, d.landmarks, d.scheme) for d in detections])
        return self.embedder.embed(chips)

    def embed_largest(self, image: Image, what: str = "") -> np.ndarray:
        """The embedding of the largest face of an image; NoFaceError when it has none."""
        frame, found = self.faces(image)
        if not found:
            raise NoFaceError(f"no face found in {_describe(image)}" + (f" ({what})" if what else ""))
        largest = max(found, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        return self.embed(frame, [largest])[0]

    # --- public API ------------------------------------------------------------------------------

    def enroll(self, identity: str, images: Image | Iterable[Image]) -> int:
        """Add the largest face of each image to `identity`. All or nothing: any image without
        a face or unreadable raises and nothing is stored. Returns the number of faces added."""
        if isinstance(images, (str, os.PathLike, np.ndarray)):
            images = [images]
        images = list(images)
        if not images:
            raise ValueError("enroll needs at least one image")
        vectors = np.stack([self.embed_largest(image, f"enrolling {identity!r}") for image in images])
        sources = [str(i) if isinstance(i, (str, os.PathLike)) else None for i in images]
        return self.gallery.add(identity, vectors, sources=sources)

    def match(self, frame: Image, far: float | None = None, threshold: float | None = None) -> list[Match]:
        """Every face in the frame, identified against the gallery."""
        limit = self._limit(far, threshold)
        image, found = self.faces(frame)
        live = [self.liveness is None or bool(self.liveness(image, d)) for d in found]
        checked = [d for d, ok in zip(found, live) if ok]
        names, dist = self.gallery.search(self.embed(image, checked), k=1) if checked else ([], np.zeros((0, 1)))
        out, j = [], 0
        for d, ok in zip(found, live):
            if not ok:
                out.append(Match(d.box, d.landmarks, d.score, None, math.inf, False, live=False))
                continue
            name, distance = names[j][0], float(dist[j, 0])
            j += 1
            accepted = name is not None and distance <= limit
            out.append(Match(d.box, d.landmarks, d.score, name if accepted else None, distance, accepted))
        return out

    def verify(self, a: Image, b: Image, far: float | None = None, threshold: float | None = None) -> Verification:
        """Are the largest faces of two images the same person?"""
        limit = self._limit(far, threshold)
        ea, eb = self.embed_largest(a, "verify, first image"), self.embed_largest(b, "verify, second image")
        distance = float(((ea.astype(np.float64) - eb) ** 2).sum())
        return Verification(distance <= limit, distance, limit)

    def identify(self, image: Image, k: int = 5) -> list[tuple[str, float]]:
        """The k nearest enrolled identities of the largest face, nearest first."""
        names, dist = self.gallery.search(self.embed_largest(image, "identify")[None], k=k)
        return [(n, float(d)) for n, d in zip(names[0], dist[0]) if n is not None]

    def remove(self, identity: str) -> bool:
        return self.gallery.remove(identity)

    def identities(self) -> list[str]:
        return self.gallery.identities()

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _limit(self, far: float | None, threshold: float | None) -> float:
        if far is not None and threshold is not None:
            raise ValueError("give far or threshold, not both")
        if threshold is not None:
            return _checked_threshold(threshold)
        return self.threshold if far is None else self.threshold_for(far)


def _checked_threshold(value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"threshold must be a finite squared-L2 distance >= 0, got {value}")
    return value


def _describe(image: Image) -> str:
    if isinstance(image, np.ndarray):
        return f"the {image.shape} array"
    return str(image)
