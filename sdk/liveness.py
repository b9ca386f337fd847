"""Presentation-attack detection (liveness) from one frame: MiniFASNet V2 + V1SE on ONNX Runtime.

    live = sdk.liveness.MiniFASNet()        # the two models `facesdk export minifasnet` wrote
    live.score(frame_bgr, detection)        # probability the face is live, 0..1
    live(frame_bgr, detection)              # score >= live.threshold: the Verifier's hook
    sdk.Verifier(liveness="minifasnet")     # the same, by name (LIVENESS)

The models are Minivision's Silent-Face-Anti-Spoofing (Apache-2.0, licence copied beside them as
``LICENSE-minifasnet``), converted by our own exporter (``export/minifasnet.py``; ``facesdk
export minifasnet`` writes the files into ``$FACESDK_HOME/models``). Each sees the face at its own context: a
crop ``crop_scale`` times the face box (2.7 for V2, 4.0 for V1SE) around the box's centre,
the scale reduced when the image cannot hold it, the crop shifted (never cut) to lie inside the
image, resized to 80x80; BGR float32 0..255, channels first, neither scaled nor centred, as the
models were trained. Each gives softmax probabilities over (spoof, live, spoof); as the authors'
demo, the models' probabilities are summed and the score is the summed live probability over
the number of models.

One frame is weak evidence (a bright screen held at an angle can pass): vote across the frames
of a track. Files are checked before use: metadata (crop scale, input size, colour, live class),
the graph's input and output, optionally a pinned SHA-256, and every output row is a probability
distribution.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sdk.detect import as_bgr
from sdk.errors import BackendUnavailableError, InvalidArgumentError, InvalidImageError, InvalidModelError
from sdk.paths import home
from sdk.sessions import session_options

INPUT_NAME, OUTPUT_NAME = "crop", "probabilities"
LIVE_CLASS, CLASSES = 1, 3
# The models' files in $FACESDK_HOME/models (`facesdk export minifasnet` writes them from the
# original weights; 1.7 MB each, so not in the package), in the order their probabilities are summed.
DEFAULT_MODELS = {
    "minifasnet_v2": "minifasnet_v2_2.7_80x80.onnx",
    "minifasnet_v1se": "minifasnet_v1se_4.0_80x80.onnx",
}
# Live when live holds at least half the models' probability: the authors' argmax rule, except
# that a spoof probability split between the two spoof classes no longer lets live win below half.
DEFAULT_THRESHOLD = 0.5
_MAX_SCALE = 10.0  # a larger context than this is not a face crop: refuse such a file


def default_model_paths(missing_ok: bool = True) -> list[Path]:
    """Where the runtime looks for the MiniFASNet models; with ``missing_ok=False`` a missing one
    raises InvalidModelError saying how to create them."""
    paths = [home() / "models" / name for name in DEFAULT_MODELS.values()]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing and not missing_ok:
        raise InvalidModelError(
            f"liveness model not found: {', '.join(missing)}; create them once from MiniFASNet's weights with "
            "`facesdk export minifasnet --from DIR` (needs torch: pip install 'facesdk[train]'), or pass models="
        )
    return paths


def check_metadata(meta: dict[str, str], source: str) -> tuple[float, int]:
    """(crop scale, input side) of a liveness model's metadata; InvalidModelError when it is not
    one this runtime knows how to feed."""
    fixed = {"input_layout": "NCHW", "input_color": "BGR", "input_range": "0-255", "live_class": str(LIVE_CLASS)}
    wrong = {k: meta.get(k) for k, v in fixed.items() if meta.get(k) != v}
    if wrong:
        raise InvalidModelError(f"{source}: not a facesdk liveness model: metadata {wrong}, expected {fixed}")
    try:
        scale = float(meta["crop_scale"])
        h, w = (int(v) for v in meta["input_size"].split("x"))
    except (KeyError, ValueError) as e:
        raise InvalidModelError(f"{source}: crop_scale / input_size missing or malformed ({e})") from e
    if not (1.0 <= scale <= _MAX_SCALE) or h != w or not (16 <= h <= 512):
        raise InvalidModelError(f"{source}: crop_scale {scale} or input_size {h}x{w} out of range")
    return scale, h


def crop_rect(box: np.ndarray, height: int, width: int, scale: float) -> tuple[int, int, int, int]:
    """Inclusive pixel rectangle (x1, y1, x2, y2) of the crop ``scale`` times the face box
    (x1, y1, x2, y2) around its centre: the scale shrinks so the image holds it, the rectangle is
    shifted into the image, and its corners are truncated as the models' training crops were."""
    x, y = float(box[0]), float(box[1])
    w, h = float(box[2]) - x, float(box[3]) - y
    scale = min(scale, (height - 1) / h, (width - 1) / w)
    cx, cy = x + w / 2, y + h / 2
    half_w, half_h = w * scale / 2, h * scale / 2
    left, right = _inside(cx - half_w, cx + half_w, width - 1)
    top, bottom = _inside(cy - half_h, cy + half_h, height - 1)
    return int(left), int(top), int(right), int(bottom)


def _inside(lo: float, hi: float, limit: float) -> tuple[float, float]:
    """[lo, hi] moved (not shortened) to lie within [0, limit]; it fits, scale saw to that."""
    if lo < 0:
        lo, hi = 0.0, hi - lo
    if hi > limit:
        lo, hi = lo - (hi - limit), limit
    return lo, hi


def face_crop(image: np.ndarray, box: np.ndarray, scale: float, size: int) -> np.ndarray:
    """The face's crop at ``scale``, resized to size x size (uint8 BGR)."""
    x1, y1, x2, y2 = crop_rect(box, image.shape[0], image.shape[1], scale)
    return cv2.resize(image[y1 : y2 + 1, x1 : x2 + 1], (size, size))  # bilinear, as in training


def check_box(detection: Any, height: int, width: int) -> np.ndarray:
    """The face box (x1, y1, x2, y2) of a Detection (or a box itself), float64; InvalidArgumentError
    unless it is finite, of positive size and overlaps the image."""
    box = getattr(detection, "box", detection)
    try:
        box = np.asarray(box, np.float64).reshape(4)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"a face box is 4 numbers (x1, y1, x2, y2), got {box!r}") from e
    if not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidArgumentError(f"face box {box.tolist()} is not finite with x2 > x1 and y2 > y1")
    if box[2] <= 0 or box[3] <= 0 or box[0] >= width or box[1] >= height:
        raise InvalidArgumentError(f"face box {box.tolist()} lies outside the {width}x{height} image")
    return box


def _frame(frame: Any) -> np.ndarray:
    try:
        return as_bgr(frame)  # gray and BGRA frames become BGR, as for the detector
    except (TypeError, ValueError) as e:
        raise InvalidImageError(str(e)) from e


class LivenessModel:
    """One liveness ONNX file: its crop scale and input side, and its session."""

    def __init__(self, path: str | os.PathLike[str], providers: Sequence[Any] | None, threads: int | None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"liveness model {self.path} not found")
        requested = list(providers or ["CPUExecutionProvider"])
        absent = [p for p in requested if (p if isinstance(p, str) else p[0]) not in ort.get_available_providers()]
        if absent:
            raise BackendUnavailableError(f"{absent} not available in this onnxruntime {ort.__version__}")
        try:
            self._session = ort.InferenceSession(str(self.path), session_options(threads), providers=requested)
        except Exception as e:  # onnxruntime's errors for a corrupt or foreign file
            raise InvalidModelError(f"{self.path}: not a loadable ONNX model ({type(e).__name__}: {e})") from e
        self.metadata = dict(self._session.get_modelmeta().custom_metadata_map)
        self.name = self.metadata.get("model_name", self.path.stem)
        self.scale, self.size = check_metadata(self.metadata, str(self.path))
        found_in = [(i.name, i.type, i.shape[1:]) for i in self._session.get_inputs()]
        found_out = [(o.name, o.type, o.shape[1:]) for o in self._session.get_outputs()]
        if found_in != [(INPUT_NAME, "tensor(float)", [3, self.size, self.size])] or found_out != [
            (OUTPUT_NAME, "tensor(float)", [CLASSES])
        ]:
            raise InvalidModelError(
                f"{self.path}: expected input {INPUT_NAME!r} float32 [N, 3, {self.size}, {self.size}] and output "
                f"{OUTPUT_NAME!r} float32 [N, {CLASSES}], found {found_in} -> {found_out}"
            )

    def probabilities(self, crops: np.ndarray) -> np.ndarray:
        """Class probabilities [N, 3] of uint8 BGR crops [N, size, size, 3]."""
        blob = np.ascontiguousarray(crops.transpose(0, 3, 1, 2), np.float32)
        (p,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: blob})
        if p.shape != (len(crops), CLASSES) or not (
            np.isfinite(p).all() and (p >= 0).all() and np.allclose(p.sum(axis=1), 1, atol=1e-3)
        ):
            raise InvalidModelError(f"{self.path}: output is not one probability distribution per crop")
        return p


class MiniFASNet:
    """Liveness of a detected face from one frame (see the module doc).

    models: liveness ONNX files (default: the two in $FACESDK_HOME/models, see
    :func:`default_model_paths`); their probabilities are summed.
    threshold: ``__call__`` answers live when ``score >= threshold`` (default DEFAULT_THRESHOLD).
    sha256: optional pins, one hex digest per model file (InvalidModelError on a mismatch).
    threads: ONNX Runtime intra-op threads per model (default 1: an 80x80 crop is too small to
    share out, and the detector and embedder need the other cores).
    """

    name = "minifasnet"

    def __init__(
        self,
        models: Sequence[str | os.PathLike[str]] | None = None,
        threshold: float = DEFAULT_THRESHOLD,
        *,
        sha256: Sequence[str] | None = None,
        providers: Sequence[Any] | None = None,
        threads: int | None = 1,
    ) -> None:
        paths = default_model_paths(missing_ok=False) if models is None else [Path(m) for m in models]
        if not paths:
            raise InvalidArgumentError("MiniFASNet needs at least one model file")
        if sha256 is not None:
            if len(sha256) != len(paths):
                raise InvalidArgumentError(f"{len(sha256)} SHA-256 pins for {len(paths)} model files")
            from sdk.loader import check_pinned

            for path, digest in zip(paths, sha256):
                check_pinned(path, digest)
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise InvalidArgumentError(f"threads must be a positive integer, got {threads!r}")
        self.models = [LivenessModel(p, providers, threads) for p in paths]
        self.threshold = threshold

    @property
    def threshold(self) -> float:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0.0 <= value <= 1.0):
            raise InvalidArgumentError(f"liveness threshold must be a number in [0, 1], got {value!r}")
        self._threshold = float(value)

    def crops(self, frame_bgr: np.ndarray, detection: Any) -> list[np.ndarray]:
        """Each model's crop of the face (uint8 BGR, size x size)."""
        image = _frame(frame_bgr)
        box = check_box(detection, *image.shape[:2])
        return [face_crop(image, box, m.scale, m.size) for m in self.models]

    def probabilities(self, frame_bgr: np.ndarray, detection: Any) -> np.ndarray:
        """Each model's class probabilities [n_models, 3] (class 1 = live)."""
        return np.stack([m.probabilities(c[None])[0] for m, c in zip(self.models, self.crops(frame_bgr, detection))])

    def score(self, frame_bgr: np.ndarray, detection: Any) -> float:
        """Probability that the face is live, 0..1: the models' summed live probability over their count.

        detection: a :class:`sdk.detect.Detection` (its box is used) or a box (x1, y1, x2, y2).
        A gray or BGRA frame is converted to BGR; a box outside the image raises InvalidArgumentError.
        """
        return float(self.probabilities(frame_bgr, detection)[:, LIVE_CLASS].mean())

    def __call__(self, frame_bgr: np.ndarray, detection: Any) -> bool:
        return self.score(frame_bgr, detection) >= self.threshold


# Liveness checks by name (Verifier(liveness="minifasnet")); each factory takes no argument.
LIVENESS: dict[str, Callable[[], Callable[[np.ndarray, Any], bool]]] = {"minifasnet": MiniFASNet}


def liveness_from(spec: str | Callable[[np.ndarray, Any], bool]) -> Callable[[np.ndarray, Any], bool]:
    """A liveness check from its name (a key of LIVENESS), or ``spec`` itself when it is callable."""
    if isinstance(spec, str):
        if spec not in LIVENESS:
            names = ", ".join(repr(n) for n in LIVENESS)
            raise InvalidArgumentError(f"unknown liveness check {spec!r}: use {names} or a callable(frame, detection) -> bool")
        return LIVENESS[spec]()
    if not callable(spec):
        raise InvalidArgumentError(f"liveness must be a name or a callable(frame, detection) -> bool, got {type(spec).__name__}")
    return spec
