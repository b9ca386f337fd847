"""The one canonical face alignment of the SDK: cut an upright face chip from 5 landmarks.

The trainer, the exporter and the runtime all call :func:`align`, so a face is cut the same way
everywhere. numpy and OpenCV; the YuNet template is measured by ``facesdk eval yunet-template --people N``.

``align_dlib5`` reproduces ``dlib.get_face_chip(img, det, size, padding)`` bit for bit for dlib's
5-point landmarks, because dlib's recognition network was trained on exactly those pixels (see
``../shared/notes/dlib-resnet-format.md``). It follows dlib's ``get_face_chip_details`` and
``extract_image_chips`` (``dlib/image_transforms/interpolation.h``) step by step:

1. dlib's template puts the 5 points at ``(padding + T) / (1 + 2 padding) * size`` in the chip;
2. a least-squares similarity transform (Umeyama) maps those chip points onto the landmarks;
   its scale s and angle a give the source rectangle: centred on the image of the chip centre,
   ``size*s - 1`` pixels wide (dlib's ``centered_drect``), rotated by a;
3. when that rectangle is more than twice the chip (s above about 2), dlib first halves the
   image with its 5-tap ``pyramid_down<2>`` until it is not; reproduced integer for integer;
4. chip pixel (c, r) samples at ``tl + c (tr - tl)/(size-1) + r (bl - tl)/(size-1)`` (the
   rectangle's rotated corners), bilinear in double, truncated (not rounded) to uint8, and is 0
   where any of the 4 neighbours lies outside the image.

The arithmetic follows dlib's operation for operation, dlib's own SVD included (the similarity
fit and the chip-to-image affine use it), because a last-bit difference in a sample position can
flip the truncation of a pixel, or decide between dlib's copy and its bilinear path.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import NDArray

try:
    from sdk._kernels import sample_chip as _sample_chip
except ImportError as e:  # not built, or built before the chip kernel
    raise ImportError(
        f"the C++ extension sdk._kernels is missing or older than {__file__} (no sample_chip): "
        "rebuild it with `python setup.py build_ext --inplace` or `pip install .`"
    ) from e

# dlib's 5-point template (get_face_chip_details), in the unit face square, in the order of
# shape_predictor_5_face_landmarks: image-right eye outer and inner corner, image-left eye
# outer and inner corner, base of the nose.
DLIB5_TEMPLATE = np.array(
    [
        [0.8595674595992, 0.2134981538014],
        [0.6460604764104, 0.2289674387677],
        [0.1205750620789, 0.2137274526848],
        [0.3340850613712, 0.2290642403242],
        [0.4901123135679, 0.6277975316475],
    ]
)

# Where YuNet's 5 points sit in dlib's chip, in the same unit face square, in YuNet's order
# (OpenCV FaceDetectorYN columns 4..13): right eye centre, left eye centre, nose tip, right and
# left mouth corner (right/left of the subject, so the "right" eye is on the image's left).
# Measured, not assumed: on the first image of each of the first 1,000 people of LFW's
# peopleDevTrain.txt (deep-funneled), detected by YuNet (yunet_s_640_640.onnx) and by dlib (HOG +
# shape_predictor_5_face_landmarks), YuNet's points mapped into dlib's chip (size 150,
# padding 0.25) and averaged over the 983 faces both found. Spread (std, pixels of a 150-pixel
# chip, x/y): eyes 3.9/3.1 and 3.7/3.1, nose 7.8/3.5 (it moves with yaw), mouth 4.8/5.0 and
# 4.7/4.9. The yunet5 chip differs from the dlib5 chip of the same face by 17.5 grey levels
# (mean absolute). Re-measure with:
#     facesdk eval yunet-template --people 1000
YUNET5_TEMPLATE = np.array(
    [
        [0.217110, 0.194870],
        [0.780403, 0.202000],
        [0.495809, 0.518438],
        [0.259268, 0.763716],
        [0.738666, 0.768117],
    ]
)

TEMPLATES: dict[str, NDArray[np.float64]] = {"dlib5": DLIB5_TEMPLATE, "yunet5": YUNET5_TEMPLATE}

Image = NDArray[np.uint8]


@dataclass(frozen=True)
class _ChipDetails:
    """dlib's chip_details: the source rectangle (before rotation), its angle, the chip side."""

    left: float
    top: float
    right: float
    bottom: float
    angle: float
    size: int


def align_dlib5(
    image: Image, landmarks: NDArray[np.floating], size: int = 150, padding: float = 0.25
) -> Image:
    """dlib's ``get_face_chip`` for dlib's 5-point landmarks, bit for bit.

    ``image``: HxW (gray) or HxWxC uint8, any channel order (every channel is sampled alike).
    ``landmarks``: 5x2 (x, y) in dlib's order; dlib's own are integers, floats are used as given.
    Returns a ``size x size`` (x C) uint8 chip; parts of the face outside the image are black.
    """
    return align(image, landmarks, "dlib5", size, padding)


def align(
    image: Image,
    landmarks: NDArray[np.floating],
    scheme: str,
    size: int = 150,
    padding: float = 0.25,
) -> Image:
    """Cut the face chip for 5 landmarks of ``scheme`` ("dlib5" or "yunet5").

    Both schemes fit their template to the landmarks and sample exactly as dlib does, so a
    "yunet5" chip is dlib's chip up to the landmark detector's difference.
    """
    return _align(image, landmarks, _template(scheme), size, padding)


def image_to_chip(
    landmarks: NDArray[np.floating], scheme: str, size: int = 150, padding: float = 0.25
) -> NDArray[np.float64]:
    """The 2x3 affine map from image (x, y) to chip pixel coordinates of :func:`align`'s chip.

    Exact for chips cut without the pyramid (faces up to about twice the chip's size); with it,
    dlib's pyramid offsets the chip by less than half a chip pixel.
    """
    d = _chip_details(_check_landmarks(landmarks), _template(scheme), size, padding)
    cos, sin = math.cos(d.angle), math.sin(d.angle)
    step = (d.right - d.left) / (d.size - 1)  # source pixels per chip pixel
    a = np.array([[cos, sin], [-sin, cos]]) / step  # inverse of step * rotation(angle)
    centre = np.array([(d.left + d.right) / 2, (d.top + d.bottom) / 2])
    return np.hstack([a, ((d.size - 1) / 2 - a @ centre)[:, None]])


def _align(
    image: Image,
    landmarks: NDArray[np.floating],
    template: NDArray[np.float64],
    size: int,
    padding: float,
    reference: bool = False,
) -> Image:
    _check_image(image)
    details = _chip_details(_check_landmarks(landmarks), template, size, padding)
    gray = image.ndim == 2
    chip = _extract(image[:, :, None] if gray else image, details, reference)
    return chip[:, :, 0] if gray else chip


def _align_reference(
    image: Image, landmarks: NDArray[np.floating], scheme: str, size: int = 150, padding: float = 0.25
) -> Image:
    """:func:`align` with the numpy sampler instead of the C++ kernel: the same chip, for the
    tests and for ``facesdk bench frame``'s before/after."""
    return _align(image, landmarks, _template(scheme), size, padding, reference=True)


def _template(scheme: str) -> NDArray[np.float64]:
    if scheme not in TEMPLATES:
        raise ValueError(f"unknown alignment scheme {scheme!r}; one of {sorted(TEMPLATES)}")
    return TEMPLATES[scheme]


def _check_image(image: Image) -> None:
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise TypeError(f"image must be uint8, got {image.dtype}")
    if image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"image must be a non-empty HxW or HxWxC array, got shape {image.shape}")


def _check_landmarks(landmarks: NDArray[np.floating]) -> NDArray[np.float64]:
    points = np.asarray(landmarks, dtype=np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"landmarks must be 5x2 (x, y), got shape {points.shape}")
    if not np.isfinite(points).all():
        raise ValueError("landmarks must be finite")
    return points


def _chip_details(
    points: NDArray[np.float64], template: NDArray[np.float64], size: int, padding: float
) -> _ChipDetails:
    """dlib's get_face_chip_details + chip_details(chip_points, img_points, dims)."""
    if int(size) != size or size < 2:
        raise ValueError(f"size must be an integer >= 2, got {size}")
    if not padding >= 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    size = int(size)
    padding = float(np.float32(padding))  # dlib's Python binding takes padding as a C++ float
    shrink = 1.0 / (2 * padding + 1)  # dlib divides a matrix by multiplying with the reciprocal
    chip = [
        ((padding + x) * shrink * size, (padding + y) * shrink * size) for x, y in template.tolist()
    ]
    m, t = _similarity(chip, points.tolist())
    scale = math.sqrt(m[0][0] * m[0][0] + m[1][0] * m[1][0])
    if scale == 0:
        raise ValueError("landmarks are degenerate (all at one point)")
    half = size / 2.0
    cx = (m[0][0] * half + m[0][1] * half) + t[0]  # dlib: tform(point(cols, rows) / 2.0)
    cy = (m[1][0] * half + m[1][1] * half) + t[1]
    span = size * scale - 1  # dlib's centered_drect takes one pixel off the width
    angle = math.atan2(m[1][0], m[0][0])
    return _ChipDetails(cx - span / 2, cy - span / 2, cx + span / 2, cy + span / 2, angle, size)


def _similarity(
    src: list[tuple[float, float]], dst: list[list[float]]
) -> tuple[list[list[float]], tuple[float, float]]:
    """dlib's find_similarity_transform (Umeyama): dst ~ m @ src + t."""
    n = len(src)
    msx = msy = mdx = mdy = 0.0
    for (sx, sy), (dx, dy) in zip(src, dst):
        msx, msy, mdx, mdy = msx + sx, msy + sy, mdx + dx, mdy + dy
    msx, msy, mdx, mdy = msx / n, msy / n, mdx / n, mdy / n
    var = 0.0
    cov = [[0.0, 0.0], [0.0, 0.0]]
    for (sx, sy), (dx, dy) in zip(src, dst):
        sx, sy, dx, dy = sx - msx, sy - msy, dx - mdx, dy - mdy
        var += sx * sx + sy * sy
        cov[0][0] += dx * sx
        cov[0][1] += dx * sy
        cov[1][0] += dy * sx
        cov[1][1] += dy * sy
    var /= n
    cov = [[v * (1.0 / n) for v in row] for row in cov]  # a matrix: times the reciprocal
    u, d, v = _svd(cov)
    s = [1.0, 1.0]
    if _det(cov) < 0 or (_det(cov) == 0 and _det(u) * _det(v) < 0):
        s[1 if d[1] < d[0] else 0] = -1.0
    r = [[u[i][0] * s[0] * v[j][0] + u[i][1] * s[1] * v[j][1] for j in range(2)] for i in range(2)]
    c = 1.0 / var * (d[0] * s[0] + d[1] * s[1])
    m = [[c * r[i][j] for j in range(2)] for i in range(2)]
    # dlib evaluates c*r*mean as c*(r*mean).
    t = (mdx - c * (r[0][0] * msx + r[0][1] * msy), mdy - c * (r[1][0] * msx + r[1][1] * msy))
    return m, t


def _det(m: list[list[float]]) -> float:
    return m[0][0] * m[1][1] - m[0][1] * m[1][0]


@functools.lru_cache(maxsize=None)
def _chip_corner_inverse(n: int) -> tuple[tuple[float, ...], ...]:
    """dlib's pinv(P) for the chip corners (0, 0), (n-1, 0), (0, n-1) as columns [x; y; 1]."""
    u, w, v = _svd([[0.0, n - 1.0, 0.0], [0.0, 0.0, n - 1.0], [1.0, 1.0, 1.0]])
    eps = np.finfo(np.float64).eps * 3 * max(w)
    inverse = [1.0 / x if (x >= eps or x <= -eps) else 0.0 for x in w]
    scaled = [[v[i][k] * inverse[k] for k in range(3)] for i in range(3)]
    return tuple(
        tuple(
            (scaled[i][0] * u[j][0] + scaled[i][1] * u[j][1]) + scaled[i][2] * u[j][2]
            for j in range(3)
        )
        for i in range(3)
    )


def _svd(a: list[list[float]]) -> tuple[list[list[float]], list[float], list[list[float]]]:
    """dlib's svd4 (Golub-Reinsch, from the Handbook's Algol) for m x n, m >= n: a = u diag(q) v'.

    A literal port (dlib-bin uses it: it is built without LAPACK), so u, q, v carry dlib's bits.
    """
    m, n = len(a), len(a[0])
    eps = float(np.finfo(np.float64).eps)
    tol = float(np.finfo(np.float64).tiny) / eps
    u = [list(map(float, row)) for row in a]
    q, e = [0.0] * n, [0.0] * n
    v = [[0.0] * n for _ in range(n)]
    # Householder reduction to bidiagonal form.
    g = x = 0.0
    l = 0
    for i in range(n):
        e[i] = g
        l = i + 1
        s = 0.0
        for j in range(i, m):
            s += u[j][i] * u[j][i]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i][i] = f - g
            for j in range(l, n):
                s = 0.0
                for k in range(i, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
        q[i] = g
        s = 0.0
        for j in range(l, n):
            s += u[i][j] * u[i][j]
        if s < tol:
            g = 0.0
        else:
            f = u[i][i + 1]
            g = math.sqrt(s) if f < 0 else -math.sqrt(s)
            h = f * g - s
            u[i][i + 1] = f - g
            for j in range(l, n):
                e[j] = u[i][j] / h
            for j in range(l, m):
                s = 0.0
                for k in range(l, n):
                    s += u[j][k] * u[i][k]
                for k in range(l, n):
                    u[j][k] += s * e[k]
        x = max(x, abs(q[i]) + abs(e[i]))
    # Accumulation of right-hand transformations.
    for i in range(n - 1, -1, -1):
        if g != 0.0:
            h = u[i][i + 1] * g
            for j in range(l, n):
                v[j][i] = u[i][j] / h
            for j in range(l, n):
                s = 0.0
                for k in range(l, n):
                    s += u[i][k] * v[k][j]
                for k in range(l, n):
                    v[k][j] += s * v[k][i]
        for j in range(l, n):
            v[i][j] = v[j][i] = 0.0
        v[i][i] = 1.0
        g = e[i]
        l = i
    # Accumulation of left-hand transformations.
    for i in range(n - 1, -1, -1):
        l = i + 1
        g = q[i]
        for j in range(l, n):
            u[i][j] = 0.0
        if g != 0.0:
            h = u[i][i] * g
            for j in range(l, n):
                s = 0.0
                for k in range(l, m):
                    s += u[k][i] * u[k][j]
                f = s / h
                for k in range(i, m):
                    u[k][j] += f * u[k][i]
            for j in range(i, m):
                u[j][i] /= g
        else:
            for j in range(i, m):
                u[j][i] = 0.0
        u[i][i] += 1.0
    # Diagonalization of the bidiagonal form.
    eps *= x
    for k in range(n - 1, -1, -1):
        iterations = 0
        while True:
            cancel = False  # test for splitting
            for l in range(k, -1, -1):
                if abs(e[l]) <= eps:
                    break
                if abs(q[l - 1]) <= eps:
                    cancel = True
                    break
            if cancel:  # cancellation of e[l], l > 0
                c, s = 0.0, 1.0
                for i in range(l, k + 1):
                    f = s * e[i]
                    e[i] *= c
                    if abs(f) <= eps:
                        break
                    g = q[i]
                    h = q[i] = math.sqrt(f * f + g * g)
                    c, s = g / h, -f / h
                    for j in range(m):
                        y, z = u[j][l - 1], u[j][i]
                        u[j][l - 1], u[j][i] = y * c + z * s, -y * s + z * c
            z = q[k]  # test for convergence
            if l == k:
                break
            iterations += 1
            if iterations > 300:
                return u, q, v  # dlib gives up the same way (and ignores it)
            # Shift from the bottom 2x2 minor, then the next QR transformation.
            x, y, g, h = q[l], q[k - 1], e[k - 1], e[k]
            f = ((y - z) * (y + z) + (g - h) * (g + h)) / (2 * h * y)
            g = math.sqrt(f * f + 1.0)
            f = ((x - z) * (x + z) + h * (y / ((f - g) if f < 0 else (f + g)) - h)) / x
            c = s = 1.0
            for i in range(l + 1, k + 1):
                g, y = e[i], q[i]
                h = s * g
                g *= c
                e[i - 1] = z = math.sqrt(f * f + h * h)
                c, s = f / z, h / z
                f = x * c + g * s
                g = -x * s + g * c
                h = y * s
                y *= c
                for j in range(n):
                    x, z = v[j][i - 1], v[j][i]
                    v[j][i - 1], v[j][i] = x * c + z * s, -x * s + z * c
                q[i - 1] = z = math.sqrt(f * f + h * h)
                if z != 0:
                    c, s = f / z, h / z
                f = c * g + s * y
                x = -s * g + c * y
                for j in range(m):
                    y, z = u[j][i - 1], u[j][i]
                    u[j][i - 1], u[j][i] = y * c + z * s, -y * s + z * c
            e[l] = 0.0
            e[k] = f
            q[k] = x
        if z < 0.0:  # make the singular value non-negative
            q[k] = -z
            for j in range(n):
                v[j][k] = -v[j][k]
    return u, q, v


def _rect_down(rect: tuple[float, float, float, float]) -> tuple[float, float, float, float]:
    """pyramid_down<2>::rect_down: dlib maps p to p/2 - (1.25, 0.75)."""
    left, top, right, bottom = rect
    return left / 2.0 - 1.25, top / 2.0 - 0.75, right / 2.0 - 1.25, bottom / 2.0 - 0.75


def _area(rect: tuple[float, float, float, float]) -> float:
    left, top, right, bottom = rect
    if top > bottom or left > right:
        return 0.0
    return (right - left + 1) * (bottom - top + 1)


def _rotate(
    cx: float, cy: float, x: float, y: float, cos: float, sin: float
) -> tuple[float, float]:
    """dlib's rotate_point(center, p, angle)."""
    dx, dy = x - cx, y - cy
    return cos * dx - sin * dy + cx, sin * dx + cos * dy + cy


def _round(v: float) -> int:
    """dlib's drectangle -> rectangle: std::round, halves away from zero (exact, no v + 0.5)."""
    a = abs(v)
    r = math.floor(a)
    return int(math.copysign(r + 1 if a - r >= 0.5 else r, v))


def _extract(image: Image, d: _ChipDetails, reference: bool = False) -> Image:
    """dlib's extract_image_chip for one chip (image is HxWxC); ``reference``: numpy sampler."""
    n = d.size
    rect = (d.left, d.top, d.right, d.bottom)
    height, width = image.shape[:2]
    if d.angle == 0 and d.bottom - d.top + 1 == n and d.right - d.left + 1 == n:
        return _copy(image, d.left, d.top, n)  # dlib copies an unrotated, unscaled chip
    # The pyramid depth sets how far dlib grows its crop of the image (2, 6, 14, ... pixels);
    # the crop's origin fixes which pixels the pyramid keeps.
    down, grow = _rect_down(rect), 2.0
    while _area(down) > n * n:
        down, grow = _rect_down(down), grow * 2 + 2
    cos, sin = math.cos(d.angle), math.sin(d.angle)
    cx, cy = (d.left + d.right) / 2.0, (d.top + d.bottom) / 2.0
    corners = [_rotate(cx, cy, x, y, cos, sin) for x in rect[::2] for y in rect[1::2]]
    xs, ys = [p[0] for p in corners], [p[1] for p in corners]  # the rotated rectangle's corners
    x0, y0 = _round(max(min(xs) - grow, 0.0)), _round(max(min(ys) - grow, 0.0))
    x1 = _round(min(max(xs) + grow, width - 1.0))
    y1 = _round(min(max(ys) + grow, height - 1.0))
    if x0 > x1 or y0 > y1:
        raise ValueError("the face lies outside the image: its chip would be all black")
    source = image[y0 : y1 + 1, x0 : x1 + 1]
    rect = (d.left - x0, d.top - y0, d.right - x0, d.bottom - y0)
    while _area(_rect_down(rect)) > n * n:
        rect = _rect_down(rect)
        source = _pyramid_down(source)
    left, top, right, bottom = rect
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    tl = _rotate(cx, cy, left, top, cos, sin)
    tr = _rotate(cx, cy, right, top, cos, sin)
    bl = _rotate(cx, cy, left, bottom, cos, sin)
    mx, my = _chip_map(tl, tr, bl, n)
    if reference:
        return _sample_numpy(source, mx, my, n)
    return _sample_chip(np.ascontiguousarray(source), mx, my, n)


def _copy(image: Image, left: float, top: float, n: int) -> Image:
    """dlib's basic_extract_image_chip: a copy of the rounded rectangle, black outside the image.

    The rectangle's edges then sit at half pixels, and dlib rounds each edge on its own, so its
    copy can be a pixel larger or smaller than asked; this keeps n x n from dlib's top-left.
    """
    x, y = _round(left), _round(top)
    x0, x1 = max(x, 0), min(x + n, image.shape[1])
    y0, y1 = max(y, 0), min(y + n, image.shape[0])
    if x0 >= x1 or y0 >= y1:
        raise ValueError("the face lies outside the image: its chip would be all black")
    chip = np.zeros((n, n, image.shape[2]), np.uint8)
    chip[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return chip


def _pyramid_down(image: Image) -> Image:
    """dlib's pyramid_down<2>: [1 4 6 4 1] rows then columns, keep every other, integer / 256.

    dlib's output pixel (r, c) is centred on input (2r + 2, 2c + 2). OpenCV filters in float32,
    which is exact here: every partial sum is an integer below 2**24.
    """
    height, width = image.shape[:2]
    if height <= 8 or width <= 8:
        return image[:0, :0]  # dlib clears images this small
    rows, cols = (height - 3) // 2, (width - 3) // 2
    taps = np.array([1, 4, 6, 4, 1], np.float32)
    sums = cv2.sepFilter2D(image, cv2.CV_32F, taps, taps).reshape(height, width, -1)
    return (sums[2 : 2 * rows + 2 : 2, 2 : 2 * cols + 2 : 2] / 256).astype(np.uint8)


def _chip_map(
    tl: tuple[float, float], tr: tuple[float, float], bl: tuple[float, float], n: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """dlib's find_affine_transform: chip corners -> (tl, tr, bl) is Q * pinv(P); rows x and y."""
    p = _chip_corner_inverse(n)
    mx, my = (
        tuple((q[0] * p[0][j] + q[1] * p[1][j]) + q[2] * p[2][j] for j in range(3))
        for q in ((tl[0], tr[0], bl[0]), (tl[1], tr[1], bl[1]))
    )
    return mx, my


def _sample_numpy(source: Image, mx: tuple[float, ...], my: tuple[float, ...], n: int) -> Image:
    """dlib's transform_image with interpolate_bilinear over the n x n chip, in numpy: the
    reference of the C++ kernel ``sdk._kernels.sample_chip`` (the same double arithmetic in the
    same order; the tests compare the two pixel for pixel)."""
    height, width, channels = source.shape
    c = np.arange(n, dtype=np.float64)
    r = np.arange(n, dtype=np.float64)[:, None]
    x = ((mx[0] * c + mx[1] * r) + mx[2]).ravel()
    y = ((my[0] * c + my[1] * r) + my[2]).ravel()
    fx, fy = np.floor(x), np.floor(y)
    left, top = fx.astype(np.intp), fy.astype(np.intp)
    inside = (left >= 0) & (top >= 0) & (left < width - 1) & (top < height - 1)
    index = top * width + left
    index[~inside] = 0
    lr, tb = x - fx, y - fy
    ilr, itb = 1 - lr, 1 - tb
    chip = np.zeros((n * n, channels), np.uint8)
    if not inside.any():
        return chip.reshape(n, n, channels)
    # One channel at a time keeps the float64 work in cache (twice as fast as all at once).
    for k in range(channels):
        plane = np.ascontiguousarray(source[:, :, k]).ravel()
        upper = plane.take(index) * ilr
        upper += plane[1:].take(index) * lr
        lower = plane[width:].take(index) * ilr
        lower += plane[width + 1 :].take(index) * lr
        upper *= itb
        lower *= tb
        upper += lower
        # Bilinear weights keep values in [0, 255]; the cast truncates, as dlib's assign_pixel.
        chip[:, k] = upper
    chip[~inside] = 0
    return chip.reshape(n, n, channels)
