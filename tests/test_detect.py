"""Face detection: our YuNet decoding against OpenCV's FaceDetectorYN, the dlib fallback, input checks."""

from __future__ import annotations

import functools
import logging
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk import detect
from sdk.detect import Detection, DlibHogDetector, YuNetDetector, YuNetDlib5Detector, as_bgr, default_detector
from sdk.paths import models_dir, package_file

MODELS = ["yunet_n_dynamic", "yunet_n_640_640", "yunet_s_640_640"]


@pytest.fixture(scope="module")
def yunet_dir() -> Path:
    pytest.importorskip("onnxruntime")
    path = models_dir() / "yunet"
    if not (path / detect.DEFAULT_YUNET).is_file():
        pytest.skip(f"YuNet models not found in {path} (set FACESDK_MODELS)")
    return path


@pytest.fixture(scope="module")
def lfw_images(data: Path) -> list[np.ndarray]:
    """The first image of every 115th person in sorted order: 50 people."""
    people = sorted((data / "lfw" / "images_deepfunneled").iterdir())[::115][:50]
    return [cv2.imread(str(sorted(p.glob("*.jpg"))[0])) for p in people]


@functools.cache
def opencv_detector(model: Path) -> cv2.FaceDetectorYN:
    return cv2.FaceDetectorYN.create(str(model), "", (320, 320), 0.6, 0.3, 5000)


def opencv_faces(model: Path, image: np.ndarray) -> np.ndarray:
    """cv2.FaceDetectorYN's rows (x, y, w, h, 5 landmarks, score) with our thresholds."""
    ref = opencv_detector(model)
    ref.setInputSize((image.shape[1], image.shape[0]))
    faces = ref.detect(image)[1]
    return np.zeros((0, 15), np.float32) if faces is None else faces


def assert_matches_opencv(found: list[Detection], faces: np.ndarray) -> None:
    assert len(found) == len(faces)
    for det, row in zip(found, faces):
        x, y, w, h = row[:4]
        np.testing.assert_allclose(det.box, [x, y, x + w, y + h], atol=1.0)
        np.testing.assert_allclose(det.landmarks, row[4:14].reshape(5, 2), atol=1.0)
        assert abs(det.score - row[14]) < 1e-3


@pytest.mark.parametrize("name", MODELS)
def test_yunet_matches_opencv_on_lfw(yunet_dir: Path, lfw_images: list[np.ndarray], name: str) -> None:
    model = yunet_dir / f"{name}.onnx"
    ours = YuNetDetector(model)
    for image in lfw_images:
        assert_matches_opencv(ours.detect(image), opencv_faces(model, image))


def test_yunet_finds_the_centred_lfw_face(yunet_dir: Path, lfw_images: list[np.ndarray]) -> None:
    detector = YuNetDetector()
    for image in lfw_images:
        found = detector.detect(image)
        assert found, "every LFW image holds a face"
        assert [d.score for d in found] == sorted((d.score for d in found), reverse=True)
        # Deep-funneled LFW centres the named face; other people may appear around it.
        centres = [np.hypot(*((d.box[:2] + d.box[2:]) / 2 - 125)) for d in found]
        face = found[int(np.argmin(centres))]
        assert min(centres) < 40 and face.scheme == "yunet5"  # worst of 2,000 LFW images: 37 px
        right_eye, left_eye, nose, right_mouth, left_mouth = face.landmarks
        assert right_eye[0] < left_eye[0] and right_mouth[0] < left_mouth[0]  # subject's right = image left
        assert max(right_eye[1], left_eye[1]) < nose[1] < min(right_mouth[1], left_mouth[1])


def test_yunet_on_att_grayscale(yunet_dir: Path, data: Path) -> None:
    detector = YuNetDetector()
    model = yunet_dir / detect.DEFAULT_YUNET
    paths = sorted((data / "att").glob("s*/1.pgm"))
    assert len(paths) == 40
    for path in paths:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        assert gray.ndim == 2
        found = detector.detect(gray)
        assert len(found) == 1  # one face per AT&T image, all 40 found (all 400 are, measured)
        assert_matches_opencv(found, opencv_faces(model, cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)))


def test_yunet_finds_every_face_in_a_collage(yunet_dir: Path, lfw_images: list[np.ndarray]) -> None:
    # Central 150x150 crops (the named face, no background faces) on an odd-sized, non-square
    # canvas: exercises the grid's row/column order and NMS across faces.
    tiles = [image[50:200, 50:200] for image in lfw_images[:6]]
    canvas = np.full((197, 6 * 170 + 13, 3), 114, np.uint8)
    for i, tile in enumerate(tiles):
        canvas[30:180, 10 + 170 * i : 160 + 170 * i] = tile
    found = YuNetDetector().detect(canvas)
    assert len(found) == len(tiles)
    columns = sorted(int(((d.box[0] + d.box[2]) / 2 - 10) // 170) for d in found)
    assert columns == list(range(len(tiles)))
    assert_matches_opencv(found, opencv_faces(yunet_dir / detect.DEFAULT_YUNET, canvas))


def test_yunet_blank_image_has_no_face(yunet_dir: Path) -> None:
    detector = YuNetDetector()
    assert detector.detect(np.zeros((240, 320, 3), np.uint8)) == []
    assert detector.detect(np.full((7, 5, 3), 200, np.uint8)) == []


def test_small_inputs_run_on_one_thread_with_the_same_faces(yunet_dir: Path, lfw_images: list[np.ndarray]) -> None:
    """By default inputs up to SMALL_INPUT_PIXELS run on a one-thread session, larger ones on
    ONNX Runtime's pool; both give the faces a two-thread session gives."""
    assert detect.SMALL_INPUT_PIXELS < 250 * 250  # the LFW image below runs on the pool
    default, two = YuNetDetector(), YuNetDetector(threads=2)
    assert default._small_session is not default.session and two._small_session is two.session
    calls = []
    for s in (default._small_session, default.session):
        run = s.run
        s.run = lambda *a, s=s, run=run: calls.append(s) or run(*a)  # type: ignore[method-assign]
    small = cv2.resize(lfw_images[0], (160, 160))
    for image in (small, lfw_images[0]):
        (a,), (b,) = default.detect(image), two.detect(image)
        assert a.score == b.score and np.array_equal(a.box, b.box) and np.array_equal(a.landmarks, b.landmarks)
    assert calls == [default._small_session, default.session]


def test_yunet_max_side_maps_back_to_the_full_image(yunet_dir: Path, lfw_images: list[np.ndarray]) -> None:
    image = lfw_images[0]
    (small,) = [d for d in YuNetDetector().detect(image) if d.score > 0.9]
    big = cv2.resize(image, None, fx=4, fy=4, interpolation=cv2.INTER_CUBIC)
    (found,) = YuNetDetector(max_side=256).detect(big)
    np.testing.assert_allclose(found.box / 4, small.box, atol=4)
    np.testing.assert_allclose(found.landmarks / 4, small.landmarks, atol=4)


def test_max_side_through_detector_from(yunet_dir: Path, lfw_images: list[np.ndarray]) -> None:
    """A smaller YuNet input for large faces: named apart (caches are keyed by detector name),
    the same face found, mapped back to the full image; refused for a detector without YuNet."""
    from sdk.detect import detector_from

    image = lfw_images[0]
    full = YuNetDetector().detect(image)[0]
    small = detector_from("yunet", max_side=160)
    assert small.name == "yunet_n_dynamic_max160"
    found = small.detect(image)[0]
    # Measured here: box 5.3 px, landmarks 6.9 px apart (of a ~110 px face; why YuNet's own
    # landmarks lose a little LFW accuracy at 160 and dlib's, read on the full image, do not).
    assert np.abs(found.box - full.box).max() < 10 and np.abs(found.landmarks - full.landmarks).max() < 12
    dlib5 = detector_from("yunet+dlib5", max_side=160)
    if isinstance(dlib5, YuNetDetector):  # face-recognition-models absent: YuNet's own landmarks
        pytest.skip("dlib's 5-point predictor not installed")
    assert dlib5.name == "yunet_n_dynamic_max160+dlib5" and dlib5.yunet.max_side == 160
    assert dlib5.detect(image)[0].scheme == "dlib5"
    with pytest.raises(ValueError, match="at least 32"):
        detector_from("yunet", max_side=16)
    with pytest.raises(ValueError, match="applies to YuNet"):
        detector_from(detect.DlibHogDetector(), max_side=160)


def test_detection_is_read_only(yunet_dir: Path, lfw_images: list[np.ndarray]) -> None:
    det = YuNetDetector().detect(lfw_images[0])[0]
    assert det.box.dtype == np.float32 and det.landmarks.shape == (5, 2)
    with pytest.raises(ValueError):
        det.box[0] = 0
    with pytest.raises(AttributeError):
        det.score = 0.0  # type: ignore[misc]


def test_dlib_fallback_on_lfw(yunet_dir: Path, lfw_images: list[np.ndarray]) -> None:
    pytest.importorskip("dlib")
    dlib_hog, yunet = DlibHogDetector(), YuNetDetector()
    assert dlib_hog.name == "dlib_hog"
    for image in lfw_images[:5]:
        found = dlib_hog.detect(image)
        assert found and found[0].scheme == "dlib5" and found[0].landmarks.shape == (5, 2)
        # The same face as YuNet's best: the dlib eye corners straddle YuNet's eye centres.
        face, ref = found[0], yunet.detect(image)[0]
        eyes = {"right": face.landmarks[2:4].mean(0), "left": face.landmarks[0:2].mean(0)}
        np.testing.assert_allclose(eyes["right"], ref.landmarks[0], atol=8)
        np.testing.assert_allclose(eyes["left"], ref.landmarks[1], atol=8)


def test_dlib_missing_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dlib", None)  # makes `import dlib` raise ImportError
    with pytest.raises(ImportError, match="pip install dlib-bin face-recognition-models"):
        DlibHogDetector()


def test_default_detector_prefers_yunet(yunet_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sdk"):
        detector, name = default_detector()
    assert isinstance(detector, YuNetDlib5Detector) and name == detector.name == "yunet_n_dynamic+dlib5"
    assert "yunet_n_dynamic" in caplog.text


def test_default_detector_falls_back_to_dlib(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("dlib")
    monkeypatch.setattr(detect, "package_file", lambda name: tmp_path / name)  # a broken install
    with pytest.raises(FileNotFoundError, match="reinstall facesdk") as missing:
        YuNetDetector()
    assert str(tmp_path) in str(missing.value)
    with caplog.at_level(logging.WARNING, logger="sdk"):
        detector, name = default_detector()
    assert isinstance(detector, DlibHogDetector) and name == "dlib_hog"
    assert "YuNet unavailable" in caplog.text and "dlib" in caplog.text


def test_default_detector_with_neither(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(detect, "package_file", lambda name: tmp_path / name)
    monkeypatch.setitem(sys.modules, "dlib", None)
    with pytest.raises(ImportError, match="no face detector available"):
        default_detector()


def test_yunet_ships_in_the_package_with_its_licence() -> None:
    assert YuNetDetector().model_path == package_file(detect.DEFAULT_YUNET)
    assert "Apache License" in package_file("LICENSE-yunet").read_text()


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.onnx"):
        YuNetDetector(tmp_path / "nope.onnx")


@pytest.mark.parametrize(
    ("image", "error", "message"),
    [
        (None, TypeError, "None"),
        ([[0, 0], [0, 0]], TypeError, "numpy array"),
        (np.zeros((8, 8, 3), np.float32), TypeError, "uint8"),
        (np.zeros((8, 8, 2), np.uint8), ValueError, "shape"),
        (np.zeros((1, 8, 8, 3), np.uint8), ValueError, "shape"),
        (np.zeros((0, 8, 3), np.uint8), ValueError, "empty"),
    ],
)
def test_bad_inputs(image: object, error: type[Exception], message: str) -> None:
    with pytest.raises(error, match=message):
        as_bgr(image)


def test_gray_and_bgra_become_bgr() -> None:
    rng = np.random.default_rng(0)
    bgr = rng.integers(0, 256, (6, 5, 3), np.uint8)
    bgra = np.concatenate([bgr, np.full((6, 5, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(as_bgr(bgra), bgr)
    gray = bgr[:, :, 0]
    for image in (gray, gray[:, :, None]):
        out = as_bgr(image)
        assert out.shape == (6, 5, 3) and (out == gray[:, :, None]).all()
    flipped = as_bgr(bgr[:, :, ::-1])  # negative strides, e.g. an RGB view
    assert flipped.flags.c_contiguous


def test_detect_rate_command(data: Path, capsys: pytest.CaptureFixture) -> None:
    """`facesdk eval detect-rate`: faces found at each YuNet input size, on 20 CelebA images."""
    import json

    from cli.main import main as facesdk

    if not (data / "celeba_subset" / "identities.txt").is_file():
        pytest.skip("CelebA subset not found")
    assert facesdk(["eval", "detect-rate", "--data", str(data), "--limit", "20", "--max-side", "160", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["max_side"] for r in rows] == [None, 160] and all(r["images"] == 20 for r in rows)
    assert rows[0]["found"] >= 19 and rows[1]["found"] >= 18 and all(r["cpu_ms_per_image"] > 0 for r in rows)
