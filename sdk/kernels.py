"""Batched squared-L2 distances, threshold matching and top-k over embeddings,
and the same three calls for the mutual likelihood score (MLS) of Probabilistic
Face Embeddings.

Every face match in the SDK goes through these calls, which run the C++
kernels of ``csrc/`` (``sdk._kernels``): tiled, multi-threaded (OpenMP), with
the GIL released, so they are safe and useful to call from many threads.

Inputs are 2-D arrays ``[rows, dim]`` of real numbers. float32 C-contiguous
arrays are used as they are; anything else (float64, integers, a transposed or
sliced view) is converted to a float32 C-contiguous copy first. NaN or Inf in
an embedding raises ``ValueError``; so does a row whose squared norm overflows
float32. Distances are ``|q|^2 + |g|^2 - 2 q.g`` in float32, clamped at 0: for
unit-norm embeddings the error is a few 1e-7.

A pair's distance does not depend on the number of threads or on how the
gallery is split; it is also the same across :func:`sq_l2`, :func:`match` and
:func:`topk` for one batch of queries. Batches of one or two queries take a
memory-bound path that may round differently (by ~1e-7) from larger batches.

Compressed galleries (:func:`compress`): fp16 or int8 (a scale per row) in half or a
quarter of the float32 bytes. :func:`topk` and :func:`match` take one in place of the
float32 gallery, with ``exact=`` the float32 rows (an array, or a function that returns
the rows asked for: a file, a database): the scan keeps every row the error bound cannot
rule out, and those rows are measured again in float32, so the answer is the float32
call's, bit for bit (same rows, distances and ties). The bound and the formats are in
``docs/compressed_galleries.md``.

MLS (:func:`mls`, :func:`mls_match`, :func:`mls_topk`): each face is a Gaussian
``N(mu, diag(sigma_sq))`` and, higher = more likely the same person::

    MLS = -1/2 sum_d [(mu1_d - mu2_d)^2 / (s1_d + s2_d) + log(s1_d + s2_d)] - D/2 log(2 pi)

with ``s = sigma_sq``. Inputs are ``mu`` and ``sigma_sq`` arrays of one shape
``[rows, dim]`` per side, converted like the embeddings above. Every mu must be
finite and every variance in ``[MLS_MIN_VARIANCE, MLS_MAX_VARIANCE]`` (about
``[1.2e-38, 8.5e37]``: the positive normal float32 values whose pairwise sums stay
finite and normal), after conversion to float32; anything else raises
``ValueError`` naming the array and row as the C++ API does (``G_s (gallery
sigma^2) row 3 ...``). Scores are float32 within ``(ceil(D/8) + 16) * 2**-24 * R``
of the exact score, ``R = sum_d [(mu1-mu2)^2/(s1+s2) + |log(s1+s2)|] + D/2 log(2 pi)``
(measured: under ``2 * 2**-24 * R``). Where ``sum (mu1-mu2)^2/(s1+s2)`` overflows
float32 (huge mean differences over tiny variances; the true score is then below
about -1.7e38) the score is ``-inf``, never NaN.
A pair's score is the same bits in all three calls, for any batch size and any
number of threads, and ``MLS(a, b) == MLS(b, a)`` exactly.
"""

from __future__ import annotations

import numbers
import operator
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

try:
    from sdk import _kernels
except ImportError as e:  # typically a source checkout shadowing the installed package
    raise ImportError(
        f"the C++ extension sdk._kernels is not built next to {__file__}: "
        "build it in place with `pip install -e .`, or run from outside the source checkout"
    ) from e
if not hasattr(_kernels, "compressed_topk"):  # a build from before the compressed galleries
    raise ImportError(
        f"the C++ extension {_kernels.__file__} is older than {__file__} (it has no compressed galleries): "
        "rebuild it with `pip install -e .` or `python setup.py build_ext --inplace`"
    )

__all__ = [
    "Matches",
    "CompressedGallery",
    "PRECISIONS",
    "compress",
    "sq_l2",
    "match",
    "topk",
    "MLSMatches",
    "MLS_MIN_VARIANCE",
    "MLS_MAX_VARIANCE",
    "mls",
    "mls_match",
    "mls_topk",
    "isa",
    "available_isas",
    "set_isa",
]

# The variances the MLS kernels accept (float32 values), inclusive.
MLS_MIN_VARIANCE: float = _kernels.MLS_MIN_VARIANCE
MLS_MAX_VARIANCE: float = _kernels.MLS_MAX_VARIANCE


class Matches(NamedTuple):
    """Pairs within a threshold, sorted by (query, gallery)."""

    query: np.ndarray  # int64 [m], row in the queries
    gallery: np.ndarray  # int64 [m], row in the gallery
    distance: np.ndarray  # float32 [m], squared L2


def _embeddings(x: object, name: str) -> np.ndarray:
    """``x`` as a C-contiguous float32 [rows, dim] array, or a clear error naming it."""
    if x is None:
        raise TypeError(f"{name} must be an array of embeddings, got None")
    try:
        arr = np.asarray(x)
    except Exception as e:  # ragged lists and the like
        raise TypeError(f"{name} cannot be read as an array: {e}") from e
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, dim], got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name} must have dim >= 1, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _pair(queries: object, gallery: object) -> tuple[np.ndarray, np.ndarray]:
    q = _embeddings(queries, "queries")
    g = _embeddings(gallery, "gallery")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"queries and gallery differ in dim: {q.shape[1]} vs {g.shape[1]}")
    return q, g


def _count(k: object) -> int:
    """``k`` of a top-k call: an integer >= 1 (bool refused)."""
    if isinstance(k, bool):
        raise TypeError("k must be an integer, got bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return k


# In-memory formats of a gallery: float32 as given, or compressed by :func:`compress`.
PRECISIONS = ("fp32", "fp16", "int8")


class CompressedGallery(NamedTuple):
    """A gallery compressed by :func:`compress` (keep its fields as they are: the bounds
    ``error``, ``max_error`` and ``max_norm`` are what makes the answers exact)."""

    precision: str  # "fp16" or "int8"
    codes: np.ndarray  # [n, dim]: uint16 (the bits of IEEE fp16) or int8
    scale: np.ndarray  # float32 [n]: int8's per-row scale (empty for fp16)
    error: np.ndarray  # float32 [n]: >= |row - widened row|
    norm: np.ndarray  # float32 [n]: |widened row|^2
    max_error: float  # >= every error
    max_norm: float  # >= |widened row| + error (so >= |row|), for every row

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays a search reads."""
        return self.codes.nbytes + self.scale.nbytes + self.error.nbytes + self.norm.nbytes


def compress(gallery: ArrayLike, precision: str) -> CompressedGallery:
    """``gallery`` ``[n, dim]`` in ``precision``: "fp16" (IEEE half, round to nearest even;
    every value must be within +-65504) or "int8" (per row ``scale = max|g| / 127`` and
    ``codes = round(g / scale)``, symmetric). NaN or Inf raises ``ValueError``."""
    if precision not in ("fp16", "int8"):
        raise ValueError(f"precision must be 'fp16' or 'int8', got {precision!r}")
    g = _embeddings(gallery, "gallery")
    codes, scale, error, norm, max_error, max_norm = _kernels.compress(g, precision)
    return CompressedGallery(precision, codes, scale, error, norm, float(max_error), float(max_norm))


ExactRows = Callable[[np.ndarray], ArrayLike]


def _exact_rows(exact: object, gallery: CompressedGallery) -> Callable[[np.ndarray], np.ndarray]:
    """``exact=`` of a compressed search as the kernels' callback: rows -> float32 [len(rows), dim]."""
    if exact is None:
        raise TypeError("a compressed gallery needs exact=: its float32 rows (an array, or a function of row indices)")
    if callable(exact):
        return lambda rows: np.ascontiguousarray(exact(rows), dtype=np.float32)
    rows = _embeddings(exact, "exact")
    if rows.shape != gallery.codes.shape:
        raise ValueError(f"exact must be the gallery's float32 rows {gallery.codes.shape}, got {rows.shape}")
    return lambda idx: rows[idx]


def _compressed_args(gallery: CompressedGallery, exact: object) -> tuple:
    return (gallery.precision, gallery.codes, gallery.scale, gallery.error, gallery.norm, gallery.max_error, gallery.max_norm,
            _exact_rows(exact, gallery))  # fmt: skip


def _queries_for(queries: object, gallery: CompressedGallery) -> np.ndarray:
    q = _embeddings(queries, "queries")
    if q.shape[1] != gallery.codes.shape[1]:
        raise ValueError(f"queries and gallery differ in dim: {q.shape[1]} vs {gallery.codes.shape[1]}")
    return q


def sq_l2(queries: ArrayLike, gallery: ArrayLike) -> np.ndarray:
    """All squared L2 distances: float32 ``[len(queries), len(gallery)]``."""
    q, g = _pair(queries, gallery)
    return _kernels.sq_l2(q, g)


def match(
    queries: ArrayLike, gallery: ArrayLike | CompressedGallery, threshold: float, *, exact: ArrayLike | ExactRows | None = None
) -> Matches:
    """Every (query, gallery) pair with squared L2 distance <= ``threshold``.

    Fused: the ``len(queries) x len(gallery)`` matrix is never built; memory is
    one tile per thread plus the matches. A :class:`CompressedGallery` needs
    ``exact=`` (see the module's notes) and gives the float32 answer.
    """
    if isinstance(gallery, CompressedGallery):
        q = _queries_for(queries, gallery)
        return Matches(*_kernels.compressed_match(q, *_compressed_args(gallery, exact), _threshold(threshold)))
    q, g = _pair(queries, gallery)
    return Matches(*_kernels.match(q, g, _threshold(threshold)))


def _threshold(threshold: object) -> float:
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    threshold = float(threshold)
    if np.isnan(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a non-negative number, got {threshold}")
    return threshold


def topk(
    queries: ArrayLike, gallery: ArrayLike | CompressedGallery, k: int, *, exact: ArrayLike | ExactRows | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery rows of each query, nearest first.

    Returns ``(idx, dist)``: int64 and float32 ``[len(queries), k]``. Ties go to
    the lower gallery index. When the gallery has fewer than ``k`` rows the
    missing neighbours are ``idx = -1``, ``dist = inf``. Fused like :func:`match`,
    and like it over a :class:`CompressedGallery` with ``exact=``.
    """
    if isinstance(gallery, CompressedGallery):
        q = _queries_for(queries, gallery)
        return _kernels.compressed_topk(q, *_compressed_args(gallery, exact), _count(k))
    q, g = _pair(queries, gallery)
    return _kernels.topk(q, g, _count(k))


class MLSMatches(NamedTuple):
    """Pairs at or above an MLS threshold, sorted by (query, gallery)."""

    query: np.ndarray  # int64 [m], row in the queries
    gallery: np.ndarray  # int64 [m], row in the gallery
    score: np.ndarray  # float32 [m], mutual likelihood score


def _gaussians(
    q_mu: object, q_sigma_sq: object, g_mu: object, g_sigma_sq: object
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four MLS inputs as float32 C-contiguous arrays, with shapes checked."""
    qm, qs = _embeddings(q_mu, "q_mu"), _embeddings(q_sigma_sq, "q_sigma_sq")
    gm, gs = _embeddings(g_mu, "g_mu"), _embeddings(g_sigma_sq, "g_sigma_sq")
    if qm.shape != qs.shape:
        raise ValueError(f"q_mu and q_sigma_sq differ in shape: {qm.shape} vs {qs.shape}")
    if gm.shape != gs.shape:
        raise ValueError(f"g_mu and g_sigma_sq differ in shape: {gm.shape} vs {gs.shape}")
    if qm.shape[1] != gm.shape[1]:
        raise ValueError(f"queries and gallery differ in dim: {qm.shape[1]} vs {gm.shape[1]}")
    return qm, qs, gm, gs


def mls(q_mu: ArrayLike, q_sigma_sq: ArrayLike, g_mu: ArrayLike, g_sigma_sq: ArrayLike) -> np.ndarray:
    """All mutual likelihood scores: float32 ``[len(q_mu), len(g_mu)]``, higher = more alike."""
    return _kernels.mls(*_gaussians(q_mu, q_sigma_sq, g_mu, g_sigma_sq))


def mls_match(
    q_mu: ArrayLike, q_sigma_sq: ArrayLike, g_mu: ArrayLike, g_sigma_sq: ArrayLike, threshold: float
) -> MLSMatches:
    """Every (query, gallery) pair with ``MLS >= threshold`` (any real number but NaN).

    Fused: the ``len(q_mu) x len(g_mu)`` matrix is never built.
    """
    arrays = _gaussians(q_mu, q_sigma_sq, g_mu, g_sigma_sq)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    threshold = float(threshold)
    if np.isnan(threshold):
        raise ValueError("threshold must be a number, got NaN")
    return MLSMatches(*_kernels.mls_match(*arrays, threshold))


def mls_topk(
    q_mu: ArrayLike, q_sigma_sq: ArrayLike, g_mu: ArrayLike, g_sigma_sq: ArrayLike, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-MLS gallery rows of each query, highest first.

    Returns ``(idx, score)``: int64 and float32 ``[len(q_mu), k]``. Ties go to the
    lower gallery index. When the gallery has fewer than ``k`` rows the missing
    entries are ``idx = -1``, ``score = -inf``. Fused like :func:`mls_match`.
    """
    arrays = _gaussians(q_mu, q_sigma_sq, g_mu, g_sigma_sq)
    return _kernels.mls_topk(*arrays, _count(k))


def isa() -> str:
    """The instruction set the kernels run with: 'avx512', 'avx2' or 'generic'."""
    return _kernels.isa()


def available_isas() -> list[str]:
    """Instruction sets this CPU can run, best first."""
    return _kernels.available_isas()


def set_isa(name: str) -> None:
    """Switch instruction set for the whole process (for tests and benchmarks).

    The environment variable ``FACESDK_ISA`` does the same at import time.
    """
    _kernels.set_isa(name)
