"""Triplet mining at FaceNet's batch: our op against pytorch-metric-learning and the torch reference.

    facesdk train bench-mining [--device cpu|cuda] [--json] [--repeats N]

B = 1,800 embeddings (45 identities x 40 faces), D = 128, margin 0.2. The embeddings are synthetic:
unit vectors around one random centre per identity with Gaussian noise, classes overlapping like a
network in training (the pair statistics are printed). Mining time hardly depends on the values,
except batch_all's output size. Each method runs in its own Python process so that its peak memory
is its own: on the CPU the peak resident set size above the process's size before the call (Linux
/proc), on CUDA ``torch.cuda.max_memory_allocated`` above the memory allocated before it. Time is
the best of N runs (after one warm-up run on CUDA).

Methods: ``ours/<mode>`` (``train.mining.mine_triplets``); ``pml`` (pytorch-metric-learning's
``TripletMarginMiner(type_of_triplets="semihard")`` on squared L2, which returns *every* semi-hard
triplet, through an O(B^3) mask); ``reference`` (``mine_triplets_reference``, the same rule as ours
in plain torch, semihard; always on the CPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

METHODS = ("ours/semihard", "ours/hardest", "ours/batch_all", "pml", "reference")
MARGIN = 0.2


def embeddings(
    identities: int, per_identity: int, dim: int, noise: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit vectors around one random centre per identity; noise is per dimension."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(identities, dim, generator=g), dim=1)
    labels = torch.arange(identities).repeat_interleave(per_identity)
    x = centres[labels] + noise * torch.randn(len(labels), dim, generator=g)
    return torch.nn.functional.normalize(x, dim=1), labels


def pair_statistics(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Mean positive and negative squared distances, and the share of pairs with a semi-hard negative."""
    from train.mining import squared_distances_f64

    d = squared_distances_f64(x.cpu())
    y = y.cpu()
    same = y[:, None] == y[None, :]
    positive = same & ~torch.eye(len(y), dtype=torch.bool)
    a, p = positive.nonzero(as_tuple=True)
    ap = d[a, p][:, None]
    with_band = 0
    for start in range(0, len(a), 4096):
        rows, lo = d[a[start : start + 4096]], ap[start : start + 4096]
        band = ~same[a[start : start + 4096]] & (rows > lo) & (rows < lo + MARGIN)
        with_band += int(band.any(dim=1).sum())
    return {
        "positive_mean": float(d[positive].mean()),
        "negative_mean": float(d[~same].mean()),
        "pairs": len(a),
        "pairs_with_semihard": with_band / len(a),
    }


# --- one method in this process --------------------------------------------------------------------


def _kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Resets VmHWM to the current RSS (Linux); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def run_method(
    method: str, device: str, repeats: int, identities: int, per_identity: int, dim: int, noise: float
) -> dict[str, Any]:
    """Times one method (best of `repeats`) and measures its peak memory, in this process."""
    x, y = embeddings(identities, per_identity, dim, noise)
    x, y = x.to(device), y.to(device)
    if method.startswith("ours/"):
        from train.mining import load_op, mine_triplets

        load_op(cuda=device == "cuda")
        mode = method.split("/", 1)[1]

        def call() -> tuple[torch.Tensor, ...]:
            return mine_triplets(x, y, MARGIN, mode, seed=0)  # type: ignore[arg-type]
    elif method == "pml":
        from pytorch_metric_learning.distances import LpDistance
        from pytorch_metric_learning.miners import TripletMarginMiner

        miner = TripletMarginMiner(
            margin=MARGIN, type_of_triplets="semihard", distance=LpDistance(power=2, normalize_embeddings=False)
        )

        def call() -> tuple[torch.Tensor, ...]:
            return miner(x, y)
    elif method == "reference":
        from train.mining import mine_triplets_reference

        def call() -> tuple[torch.Tensor, ...]:
            return mine_triplets_reference(x, y, MARGIN, "semihard", seed=0)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")

    cuda = device == "cuda"
    if cuda:
        call()  # warm-up: context, kernels' first load
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        exact = _reset_peak_rss()
        base = _kib("VmRSS") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, triplets = [], 0
    for _ in range(repeats):
        start = time.perf_counter()
        out = call()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
        triplets = len(out[0])
        del out
    if cuda:
        peak_mib = (torch.cuda.max_memory_allocated() - base) / 2**20
        memory = "torch.cuda.max_memory_allocated"
    else:
        peak = _kib("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak_mib = ((peak or 0) - (base or 0)) / 1024
        memory = "peak RSS (VmHWM)" if exact else "peak RSS (ru_maxrss, includes set-up)"
    return {
        "method": method,
        "best_s": min(times),
        "times_s": times,
        "peak_mib": peak_mib,
        "memory": memory,
        "triplets": triplets,
    }


# --- the table --------------------------------------------------------------------------------------


def run_all(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for method in args.methods:
        params = {"method": method, "device": args.device,
                  "repeats": args.repeats if method != "pml" else args.pml_repeats,
                  "identities": args.identities, "per_identity": args.per_identity, "dim": args.dim,
                  "noise": args.noise, "threads": args.threads}  # fmt: skip
        command = [sys.executable, "-m", "train.bench_mining", json.dumps(params)]
        print(f"running {method} ...", file=sys.stderr, flush=True)
        run = subprocess.run(command, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
        if run.returncode != 0:
            last = run.stderr.strip().splitlines()[-1] if run.stderr.strip() else f"exit {run.returncode}"
            rows.append({"method": method, "error": last})
            continue
        rows.append(json.loads(run.stdout.strip().splitlines()[-1]))
    ours = next((r for r in rows if r["method"] == "ours/semihard" and "best_s" in r), None)
    for r in rows:
        if ours and "best_s" in r:
            r["time_vs_ours"] = r["best_s"] / ours["best_s"]
            r["memory_vs_ours"] = r["peak_mib"] / ours["peak_mib"] if ours["peak_mib"] > 0 else None
    x, y = embeddings(args.identities, args.per_identity, args.dim, args.noise)
    return {
        "device": args.device,
        "torch": torch.__version__,
        "batch": len(y),
        "identities": args.identities,
        "dim": args.dim,
        "margin": MARGIN,
        "noise": args.noise,
        "threads": args.threads or torch.get_num_threads(),
        "statistics": pair_statistics(x, y),
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    s = result["statistics"]
    print(
        f"B={result['batch']} ({result['identities']} identities), D={result['dim']}, margin {result['margin']}, "
        f"device {result['device']}, torch {result['torch']}, {result['threads']} threads"
    )
    print(
        f"pairs {s['pairs']:,}; mean squared L2: positives {s['positive_mean']:.3f}, "
        f"negatives {s['negative_mean']:.3f}; "
        f"pairs with a semi-hard negative {100 * s['pairs_with_semihard']:.1f}%"
    )
    header = (
        f"{'method':<16} {'triplets':>12} {'runs':>5} {'best s':>9} {'peak MiB':>10} {'time/ours':>10} {'mem/ours':>9}"
    )
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['method']:<16} failed: {r['error']}")
            continue
        ratio = lambda v: f"{v:.2f}x" if v is not None else "-"  # noqa: E731
        print(
            f"{r['method']:<16} {r['triplets']:>12,} {len(r['times_s']):>5} {r['best_s']:>9.3f} "
            f"{r['peak_mib']:>10.1f} "
            f"{ratio(r.get('time_vs_ours')):>10} {ratio(r.get('memory_vs_ours')):>9}"
        )
    print("time/ours, mem/ours: relative to ours/semihard. memory:", result["rows"][0].get("memory", "-"))


def worker(method: str, device: str, repeats: int, identities: int, per_identity: int, dim: int, noise: float,
           threads: int | None = None) -> dict[str, Any]:
    """run_method in the process run_all starts for it, with torch's thread count set first."""
    if threads:
        torch.set_num_threads(threads)
    return run_method(method, device, repeats, identities, per_identity, dim, noise)


if __name__ == "__main__":  # run_all's worker process: JSON parameters in, one JSON line out
    print(json.dumps(worker(**json.loads(sys.argv[1]))))
