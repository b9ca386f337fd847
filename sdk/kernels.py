"""Batched squared-L2 distances, threshold matching and top-k over embeddings.

Every face match in the SDK goes through these three calls, which run the C++
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
"""

from __future__ import annotations

import numbers
import operator
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

__all__ = ["Matches", "sq_l2", "match", "topk", "isa", "available_isas", "set_isa"]


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


def sq_l2(queries: ArrayLike, gallery: ArrayLike) -> np.ndarray:
    """All squared L2 distances: float32 ``[len(queries), len(gallery)]``."""
    q, g = _pair(queries, gallery)
    return _kernels.sq_l2(q, g)


def match(queries: ArrayLike, gallery: ArrayLike, threshold: float) -> Matches:
    """Every (query, gallery) pair with squared L2 distance <= ``threshold``.

    Fused: the ``len(queries) x len(gallery)`` matrix is never built; memory is
    one tile per thread plus the matches.
    """
    q, g = _pair(queries, gallery)
    if isinstance(threshold, bool) or not isinstance(threshold, numbers.Real):
        raise TypeError(f"threshold must be a real number, got {type(threshold).__name__}")
    threshold = float(threshold)
    if np.isnan(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a non-negative number, got {threshold}")
    return Matches(*_kernels.match(q, g, threshold))


def topk(
    queries: ArrayLike, gallery: ArrayLike, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` nearest gallery rows of each query, nearest first.

    Returns ``(idx, dist)``: int64 and float32 ``[len(queries), k]``. Ties go to
    the lower gallery index. When the gallery has fewer than ``k`` rows the
    missing neighbours are ``idx = -1``, ``dist = inf``. Fused like :func:`match`.
    """
    q, g = _pair(queries, gallery)
    if isinstance(k, bool):
        raise TypeError("k must be an integer, got bool")
    try:
        k = operator.index(k)
    except TypeError:
        raise TypeError(f"k must be an integer, got {type(k).__name__}") from None
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return _kernels.topk(q, g, k)


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
