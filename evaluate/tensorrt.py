"""A TensorRT engine against its ONNX model on real faces: cosines, distance drift, speed.

    python -m evaluate.tensorrt parity ENGINE [--onnx MODEL.onnx] [--faces 200]   on a GPU with TensorRT
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from evaluate.lfw import lfw_chips
from sdk.tensorrt import TensorRTEmbedder, sha256_file


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


def main(argv: list[str] | None = None) -> int:
    """``python -m evaluate.tensorrt parity ENGINE``: the check to run on a GPU with TensorRT."""
    from sdk.paths import data_dir
    from sdk.embed import OnnxEmbedder, default_model_path

    parser = argparse.ArgumentParser(prog="python -m evaluate.tensorrt", description="TensorRT engine checks")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("parity", help="engine vs ONNX Runtime on LFW faces: cosines, distance drift, speed")
    p.add_argument("engine", type=Path)
    p.add_argument("--onnx", type=Path, default=None, help="reference model (default: the engine's source ONNX)")
    p.add_argument("--faces", type=int, default=200)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeat", type=int, default=20)
    p.add_argument("--device", type=int, default=0)
    args = parser.parse_args(argv)

    with TensorRTEmbedder(args.engine, device=args.device) as engine:
        source = Path(engine.engine_info["onnx"]["path"])
        reference_path = args.onnx or (source if source.is_file() else default_model_path())
        reference = OnnxEmbedder(reference_path)
        same = sha256_file(reference_path) == engine.engine_info["onnx"]["sha256"]
        chips = lfw_chips(data_dir(), max(args.faces, *args.batch))
        print(f"engine {args.engine}: {engine.providers[0]}, profile {engine.batch_profile}")
        print(f"reference {reference_path} ({'the engine source' if same else 'NOT the engine source'}), ONNX Runtime CPU")
        for line in engine_parity(engine, reference, chips[: args.faces]).lines():
            print(line)
        print("batch  tensorrt ms/face  onnxruntime ms/face")
        for batch in args.batch:
            trt_ms = _ms_per_face(engine.embed, chips[:batch], args.repeat)
            ort_ms = _ms_per_face(reference.embed, chips[:batch], max(args.repeat // 4, 1))
            print(f"{batch:5d}  {trt_ms:15.3f}  {ort_ms:18.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
