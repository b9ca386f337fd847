"""A TensorRT engine against its ONNX model on real faces: cosines, distance drift, speed.

    facesdk eval trt-parity ENGINE [--onnx MODEL.onnx] [--faces 200]   on a GPU with TensorRT
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np



# --- parity with the ONNX model -------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Parity:
    """How far an engine's embeddings are from a reference embedder's on the same chips."""

    faces: int
    cosines: np.ndarray  # per face, engine vs reference
    cosine_min: float
    cosine_mean: float
    max_abs_diff: float  # largest |engine - reference| over all faces and dimensions
    pair_drift_max: float  # over all face pairs: |squared L2 (engine) - squared L2 (reference)|
    pair_drift_mean: float

    def lines(self) -> list[str]:
        return [
            f"faces {self.faces}: cosine engine vs reference min {self.cosine_min:.6f}, mean {self.cosine_mean:.6f}",
            f"max |difference| per dimension {self.max_abs_diff:.3g}",
            f"squared-L2 distance between faces, engine vs reference: max drift {self.pair_drift_max:.3g}, "
            f"mean {self.pair_drift_mean:.3g} (compare with the verification threshold)",
        ]


def engine_parity(engine_embedder: Any, onnx_embedder: Any, chips: np.ndarray) -> Parity:
    """Per-face cosine and pairwise-distance drift of ``engine_embedder`` against ``onnx_embedder``
    (any two Embedders) on the same ``chips``."""
    if len(chips) == 0:
        raise ValueError("engine_parity needs at least one chip")
    got = np.asarray(engine_embedder.embed(chips), np.float64)
    ref = np.asarray(onnx_embedder.embed(chips), np.float64)
    if got.shape != ref.shape:
        raise ValueError(f"embeddings differ in shape: engine {got.shape}, reference {ref.shape}")
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1)
    cosines = np.sum(got * ref, axis=1) / np.maximum(norms, 1e-12)

    def sq_l2(x: np.ndarray) -> np.ndarray:
        sq = np.sum(x * x, axis=1)
        return np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0)

    drift = np.abs(sq_l2(got) - sq_l2(ref))[np.triu_indices(len(got), k=1)]
    return Parity(
        faces=len(got),
        cosines=cosines,
        cosine_min=float(cosines.min()),
        cosine_mean=float(cosines.mean()),
        max_abs_diff=float(np.abs(got - ref).max()),
        pair_drift_max=float(drift.max()) if drift.size else 0.0,
        pair_drift_mean=float(drift.mean()) if drift.size else 0.0,
    )


def _ms_per_face(fn: Callable[[np.ndarray], object], chips: np.ndarray, repeat: int) -> float:
    """Best of ``repeat`` calls (after one warm-up): noise only adds time."""
    fn(chips)
    best = min(_timed(fn, chips) for _ in range(repeat))
    return best / len(chips) * 1e3


def _timed(fn: Callable[[np.ndarray], object], chips: np.ndarray) -> float:
    start = time.perf_counter()
    fn(chips)
    return time.perf_counter() - start
