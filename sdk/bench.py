"""Benchmarks, printed as tables of ratios against reference libraries measured
in the same run (these machines are shared and noisy: compare ratios).

    python -m sdk.bench kernels [--json PATH] [--repeat N] [--isa NAME] [--quick]

``kernels``: our fused top-1 and threshold match against numpy (BLAS GEMM with
precomputed gallery norms) and faiss (``faiss.knn``, ``IndexFlatL2.range_search``)
at (q=1, n=1M), (q=64, n=100k), (q=1024, n=100k); the achieved fraction of
memory bandwidth at q=1 (against a large copy timed in the same run), GFLOP/s
at q=1024, and the peak memory of fused top-k and match at (q=1024, n=1M),
where the unfused distance matrix would take 4 GB.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sdk import kernels

DIM = 128
THRESHOLD = 1.0  # squared L2 on unit embeddings; unrelated faces sit near 2
SIZES = [(1, 1_000_000), (64, 100_000), (1024, 100_000)]
QUICK_SIZES = [(1, 20_000), (16, 5_000), (64, 5_000)]
MEMORY_SIZE = (1024, 1_000_000)


def unit_rows(rng: np.random.Generator, n: int, dim: int = DIM, chunk: int = 1 << 16) -> np.ndarray:
    """n random unit vectors, built in chunks so no float64 copy of the whole set exists."""
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, chunk):
        block = rng.standard_normal((min(chunk, n - s), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[s : s + len(block)] = block
    return out


def probe_queries(rng: np.random.Generator, gallery: np.ndarray, nq: int) -> np.ndarray:
    """Noisy copies of gallery rows, so every query has a true match below THRESHOLD."""
    q = gallery[rng.choice(len(gallery), nq, replace=False)] + 0.03 * unit_rows(rng, nq)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def timed(fn: Callable[[], object], repeat: int, pause: float = 0.5) -> float:
    """Best wall time in ms of `repeat` runs, after a pause and one warm-up.

    Best, not median: on a shared machine noise only ever adds time.

    The pause lets the previous library's thread pool (OpenBLAS, OpenMP) stop
    spinning: on 2 cores a spinning pool halves the next library's speed.
    """
    time.sleep(pause)
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return min(times)


def copy_bandwidth(repeat: int, nbytes: int) -> float:
    """GB/s of a large memcpy, counting bytes read plus bytes written."""
    src = np.ones(nbytes, np.uint8)
    dst = np.empty_like(src)
    ms = timed(lambda: np.copyto(dst, src), repeat, pause=0)
    return 2 * nbytes / ms / 1e6


def peak_rss_during(fn: Callable[[], object]) -> float | None:
    """MiB the process's peak resident memory rose above its current size while fn ran (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current resident size
    except OSError:
        return None
    before = _status_kib("VmRSS")
    fn()
    return (_status_kib("VmHWM") - before) / 1024


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def numpy_refs(q: np.ndarray, g: np.ndarray, gnorms: np.ndarray):
    """numpy's way: one BLAS GEMM, precomputed gallery norms, then argmin / nonzero."""

    def distances():
        d = q @ g.T
        d *= -2
        d += gnorms
        d += (q * q).sum(1, keepdims=True)
        return d

    def top1():
        return distances().argmin(1)

    def match():
        return np.nonzero(distances() <= THRESHOLD)

    return top1, match


def faiss_refs(q: np.ndarray, g: np.ndarray):
    try:
        import faiss
    except ImportError:
        return None, None
    index = faiss.IndexFlatL2(g.shape[1])
    index.add(g)
    # range_search keeps d < radius; the next float up makes it <= THRESHOLD like ours.
    radius = float(np.nextafter(np.float32(THRESHOLD), np.float32(np.inf)))
    return (lambda: faiss.knn(q, g, 1)), (lambda: index.range_search(q, radius))


def bench_kernels(args: argparse.Namespace) -> dict:
    if args.isa:
        kernels.set_isa(args.isa)
    rng = np.random.default_rng(0)
    sizes = QUICK_SIZES if args.quick else SIZES
    gallery = unit_rows(rng, max(n for _, n in sizes))
    rows = []
    bandwidth = copy_bandwidth(args.repeat, 1 << 30 if not args.quick else 1 << 26)
    for nq, n in sizes:
        g = gallery[:n]
        q = probe_queries(rng, g, nq)
        gnorms = (g * g).sum(1)
        np_top1, np_match = numpy_refs(q, g, gnorms)
        fa_top1, fa_match = faiss_refs(q, g)
        # Our answers must agree with numpy's before their speed counts.
        ours_idx = kernels.topk(q, g, 1)[0][:, 0]
        agree = float(np.mean(ours_idx == np_top1()))
        for op, ours, ref_np, ref_fa in (
            ("top-1", lambda: kernels.topk(q, g, 1), np_top1, fa_top1),
            ("match", lambda: kernels.match(q, g, THRESHOLD), np_match, fa_match),
        ):
            print(f"  {op} q={nq} n={n} ...", file=sys.stderr, flush=True)
            row = {
                "op": op,
                "q": nq,
                "n": n,
                "ours_ms": timed(ours, args.repeat, args.pause),
                "numpy_ms": timed(ref_np, args.repeat, args.pause),
                "faiss_ms": timed(ref_fa, args.repeat, args.pause) if ref_fa else None,
                "top1_agreement_with_numpy": agree,
            }
            best = min(t for t in (row["numpy_ms"], row["faiss_ms"]) if t is not None)
            row["speedup_vs_best"] = best / row["ours_ms"]
            row["gflops"] = 2 * nq * n * DIM / row["ours_ms"] / 1e6
            row["gallery_gbps"] = n * DIM * 4 / row["ours_ms"] / 1e6
            row["bandwidth_fraction"] = row["gallery_gbps"] / bandwidth
            rows.append(row)
    memory = None
    if not args.quick:
        print(f"  peak memory q={MEMORY_SIZE[0]} n={MEMORY_SIZE[1]} ...", file=sys.stderr, flush=True)
        g = gallery if len(gallery) >= MEMORY_SIZE[1] else unit_rows(rng, MEMORY_SIZE[1])
        q = probe_queries(rng, g, MEMORY_SIZE[0])
        memory = {"q": MEMORY_SIZE[0], "n": MEMORY_SIZE[1], "unfused_matrix_mib": MEMORY_SIZE[0] * MEMORY_SIZE[1] * 4 / 2**20}
        for op, fn in (("top-1", lambda: kernels.topk(q, g, 1)), ("match", lambda: kernels.match(q, g, THRESHOLD))):
            start = time.perf_counter()
            memory[f"{op}_peak_mib"] = peak_rss_during(fn)
            memory[f"{op}_ms"] = (time.perf_counter() - start) * 1e3
    return {
        "machine": machine_info(),
        "isa": kernels.isa(),
        "dim": DIM,
        "threshold": THRESHOLD,
        "copy_bandwidth_gbps": bandwidth,
        "rows": rows,
        "memory": memory,
    }


def machine_info() -> dict:
    info = {"python": platform.python_version(), "numpy": np.__version__, "cpus": os.cpu_count()}
    try:
        import faiss

        info["faiss"] = faiss.__version__
    except ImportError:
        info["faiss"] = None
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    return info


def print_kernels(result: dict) -> None:
    m = result["machine"]
    print(f"kernels: isa={result['isa']}  cpu={m['cpu']}  cores={m['cpus']}  numpy={m['numpy']}  faiss={m['faiss']}")
    print(f"copy bandwidth (read+write): {result['copy_bandwidth_gbps']:.1f} GB/s;  D={result['dim']}, match threshold {result['threshold']}")
    header = f"{'op':<6} {'q':>5} {'n':>9} {'ours ms':>9} {'numpy ms':>9} {'faiss ms':>9} {'vs best':>8}  throughput"
    print(header)
    print("-" * (len(header) + 24))
    for r in result["rows"]:
        faiss_ms = f"{r['faiss_ms']:9.1f}" if r["faiss_ms"] is not None else f"{'n/a':>9}"
        if r["q"] == 1:
            note = f"{r['gallery_gbps']:.1f} GB/s gallery read = {r['bandwidth_fraction']:.2f}x the copy rate"
        else:
            note = f"{r['gflops']:.0f} GFLOP/s"
        print(
            f"{r['op']:<6} {r['q']:>5} {r['n']:>9,} {r['ours_ms']:9.1f} {r['numpy_ms']:9.1f} {faiss_ms} "
            f"{r['speedup_vs_best']:7.2f}x  {note}"
        )
    print("vs best = (faster of numpy and faiss) / ours; above 1 means ours is faster.")
    print("copy rate = bytes read + written per second by a 1 GiB memcpy; a read-only pass can exceed it.")
    if result["memory"]:
        mem = result["memory"]
        def mib(v):
            return "n/a" if v is None else f"{v:.1f} MiB"
        print(
            f"fused at q={mem['q']}, n={mem['n']:,}: peak memory rise top-1 {mib(mem['top-1_peak_mib'])} "
            f"({mem['top-1_ms']:.0f} ms), match {mib(mem['match_peak_mib'])} ({mem['match_ms']:.0f} ms); "
            f"the unfused matrix would be {mem['unfused_matrix_mib']:.0f} MiB"
        )


def bench_pipeline(args: argparse.Namespace) -> dict:
    """Per-stage latency of Verifier.match on a 1-face image and an 8-face frame (LFW faces),
    against a gallery of `args.gallery_size` random identities plus the 8 people."""
    import cv2

    from sdk import align
    from sdk.data import data_dir
    from sdk.verifier import Verifier

    root = data_dir() / "lfw" / "images_deepfunneled"
    people = ["Colin_Powell", "Tony_Blair", "Donald_Rumsfeld", "Gerhard_Schroeder",
              "Ariel_Sharon", "Hugo_Chavez", "Jacques_Chirac", "Jean_Chretien"]  # fmt: skip
    tiles = [cv2.imread(str(root / n / f"{n}_0002.jpg")) for n in people]
    if any(t is None for t in tiles):
        raise FileNotFoundError(f"LFW images not found under {root} (set FACESDK_DATA)")
    frames = {
        "1 face (250x250)": cv2.imencode(".jpg", tiles[0])[1],
        "8 faces (1000x500)": cv2.imencode(".jpg", np.concatenate([np.concatenate(tiles[:4], 1), np.concatenate(tiles[4:], 1)], 0))[1],
    }
    rng = np.random.default_rng(0)
    with Verifier(gallery=None) as v:
        for i in range(args.gallery_size):
            v.gallery.add(f"random_{i}", unit_rows(rng, 1))
        for n in people:
            v.enroll(n, [root / n / f"{n}_0001.jpg"])
        out = {"gallery_identities": len(v.identities()), "info": {k: str(x) for k, x in v.info().items()}, "frames": {}}
        for label, jpeg in frames.items():
            times: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "align", "embed", "match", "total")}
            for _ in range(args.repeat + 1):  # the first run warms up
                t0 = time.perf_counter()
                frame = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
                t1 = time.perf_counter()
                _, found = v.faces(frame)
                t2 = time.perf_counter()
                rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
                chips = np.stack([align.align(rgb, d.landmarks, d.scheme) for d in found])
                t3 = time.perf_counter()
                emb = v.embedder.embed(chips)
                t4 = time.perf_counter()
                v.gallery.search(emb, k=1)
                t5 = time.perf_counter()
                for k, a, b in (("decode", t0, t1), ("detect", t1, t2), ("align", t2, t3), ("embed", t3, t4), ("match", t4, t5), ("total", t0, t5)):
                    times[k].append((b - a) * 1e3)
            out["frames"][label] = {
                "faces": len(found),
                **{k: {"p50": float(np.percentile(t[1:], 50)), "p95": float(np.percentile(t[1:], 95))} for k, t in times.items()},
            }
    return out


def print_pipeline(result: dict) -> None:
    print(f"pipeline: {result['info']['detector']} + {result['info']['backend']} {result['info']['providers']}; "
          f"gallery of {result['gallery_identities']:,} identities")  # fmt: skip
    stages = ("decode", "detect", "align", "embed", "match", "total")
    print(f"{'frame':<20} {'faces':>5} " + " ".join(f"{s + ' p50/p95 ms':>20}" for s in stages))
    for label, r in result["frames"].items():
        cells = " ".join(f"{r[s]['p50']:>11.2f} /{r[s]['p95']:>7.2f}" for s in stages)
        print(f"{label:<20} {r['faces']:>5} {cells}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sdk.bench", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    k = sub.add_parser("kernels", help="matching kernels vs numpy and faiss")
    k.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    k.add_argument("--repeat", type=int, default=5, help="timed runs per case (the best is reported)")
    k.add_argument("--isa", choices=kernels.available_isas(), help="instruction set for our kernels")
    k.add_argument("--quick", action="store_true", help="small sizes, a smoke run in seconds")
    k.add_argument("--pause", type=float, default=0.5, help="seconds of rest before each timing (see timed)")
    pl = sub.add_parser("pipeline", help="per-stage latency of Verifier.match, 1 face and 8 faces")
    pl.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    pl.add_argument("--repeat", type=int, default=30, help="timed runs per frame")
    pl.add_argument("--gallery-size", type=int, default=10_000, help="random identities in the gallery")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    if args.what == "kernels":
        result = bench_kernels(args)
        print_kernels(result)
    else:
        result = bench_pipeline(args)
        print_pipeline(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
