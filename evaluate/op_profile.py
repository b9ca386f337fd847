"""Where an ONNX model's time goes in ONNX Runtime, per op type, several models side by side.

    facesdk bench ops MODEL [MODEL ...] [--batch 1] [--threads 1] [--calls 200] [--json OUT]

Each model runs ``calls`` times on the same random uint8 chips (convolution speed does not depend
on the pixels), the models taking turns call by call so that a busy machine slows them alike,
with ONNX Runtime's profiler on. Per node, the median of its calls (robust to a preempted call);
per op type, the sum over its nodes. The profiler adds its own cost, so ``model_run`` is longer
than an unprofiled call: compare the columns, not the absolute numbers.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def _session(path: Path, threads: int, prefix: str) -> Any:
    import onnxruntime as ort

    from sdk.sessions import session_options

    options = session_options(threads)  # as sdk.embed runs it
    options.enable_profiling = True
    options.profile_file_prefix = prefix
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _chips(session: Any, batch: int, seed: int) -> tuple[str, np.ndarray]:
    spec = session.get_inputs()[0]
    shape = [batch, *(d if isinstance(d, int) else None for d in spec.shape[1:])]
    if spec.type != "tensor(uint8)" or None in shape:
        raise ValueError(f"input {spec.name}: expected uint8 with fixed sizes but the batch, got {spec.type} {spec.shape}")
    return spec.name, np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _read_profile(path: str) -> tuple[float, dict[str, float], dict[str, float]]:
    """model_run p50 (µs), µs per run by op type and by node (median per call x calls per run)."""
    events = json.loads(Path(path).read_text())
    runs = [e["dur"] for e in events if e.get("name") == "model_run"]
    calls: dict[tuple[str, str], list[float]] = defaultdict(list)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            node = re.sub(r"_token_\d+$", "", e["name"][: -len("_kernel_time")])
            calls[(e["args"]["op_name"], node)].append(e["dur"])
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = {}
    for (op, node), durations in calls.items():
        per_run = float(np.median(durations)) * len(durations) / len(runs)
        by_op[op] += per_run
        by_node[node] = per_run
    return float(np.median(runs)), dict(by_op), by_node


def profile_ops(paths: Sequence[Path], *, batch: int = 1, threads: int = 1, calls: int = 200, seed: int = 0) -> dict:
    """Per-op-type time of each model (see the module docstring); returns a JSON-able dict."""
    if not paths:
        raise ValueError("give at least one model")
    if batch < 1 or threads < 1 or calls < 1:
        raise ValueError("batch, threads and calls must be >= 1")
    with tempfile.TemporaryDirectory(prefix="facesdk-ops-") as tmp:
        sessions = [_session(Path(p), threads, str(Path(tmp) / f"model{i}")) for i, p in enumerate(paths)]
        inputs = [_chips(s, batch, seed) for s in sessions]
        for s, (name, x) in zip(sessions, inputs):
            s.run(None, {name: x})  # warm-up: first calls allocate and pick kernels
        for _ in range(calls):
            for s, (name, x) in zip(sessions, inputs):
                s.run(None, {name: x})
        profiles = [_read_profile(s.end_profiling()) for s in sessions]
    return {
        "batch": batch,
        "threads": threads,
        "calls": calls,
        "models": [
            {"path": str(p), "model_run_p50_us": run, "op_us": ops, "node_us": nodes}
            for p, (run, ops, nodes) in zip(paths, profiles)
        ],
    }


def print_ops(result: dict, top: int = 12) -> None:
    models = result["models"]
    names = [Path(m["path"]).name for m in models]
    width = max(12, *(len(n) for n in names))
    print(
        f"ONNX Runtime per-op time, µs per run (median per call), batch {result['batch']}, "
        f"{result['threads']} thread(s), {result['calls']} calls each, in turn"
    )
    ops = sorted({op for m in models for op in m["op_us"]}, key=lambda op: -max(m["op_us"].get(op, 0) for m in models))
    print(f"{'op':<28}" + "".join(f"{n:>{width + 2}}" for n in names))
    for op in ops:
        print(f"{op:<28}" + "".join(f"{m['op_us'].get(op, 0.0):>{width + 2}.1f}" for m in models))
    print(f"{'model_run p50':<28}" + "".join(f"{m['model_run_p50_us']:>{width + 2}.1f}" for m in models))
    first = models[0]["model_run_p50_us"]
    print(f"{'first / this':<28}" + "".join(f"{first / m['model_run_p50_us']:>{width + 1}.2f}x" for m in models))
    for name, m in zip(names, models):
        slowest = sorted(m["node_us"].items(), key=lambda kv: -kv[1])[:top]
        print(f"slowest nodes of {name}: " + ", ".join(f"{node} {us:.0f}" for node, us in slowest))
    print("The profiler's own cost inflates every figure: compare columns of one run.")
