"""Benchmarks, printed as tables of ratios against reference libraries measured
in the same run (these machines are shared and noisy: compare ratios).

    facesdk bench kernels [--json PATH] [--repeat N] [--isa NAME] [--quick] [--embeddings PATH]

``kernels``: our fused top-1 and threshold match against numpy (BLAS GEMM with
precomputed gallery norms) and faiss (``faiss.knn``, ``IndexFlatL2.range_search``)
at (q=1, n=1M), (q=64, n=100k), (q=1024, n=100k); the achieved fraction of
memory bandwidth at q=1 (against a large copy timed in the same run), GFLOP/s
at q=1024, and the peak memory of fused top-k and match at (q=1024, n=1M),
where the unfused distance matrix would take 4 GB. Then the compressed galleries (fp16, int8)
against faiss's scalar quantizers and the memory floor (``evaluate.compressed_bench``).

    facesdk bench [run] [--backend onnxruntime,torch,tensorrt] [--model PATH ...] [--dlib]
                              [--precision P] [--json PATH] [--plot PATH.png] [--quick]

``run`` (the default, so ``facesdk bench`` alone runs it): the offline benchmark of the whole
pipeline on real faces (LFW images from ``sdk.paths.data_dir()``). Per-stage latency p50/p95:
decode (``cv2.imdecode`` of the JPEG bytes), detect (the default detector), align
(``sdk.align``), embed at batch 1/8/32 for every backend and model, top-1 match of one query
against galleries of 10k/100k/1M random unit vectors (``sdk.kernels``), and throughput (embed
faces/s at the largest batch; end-to-end single-face frames/s). Backends: ``onnxruntime`` runs
every ``--model`` ONNX file (precision from its metadata key ``precision``, default fp32),
``torch`` dlib's ResNet-29 converted to PyTorch (the graph ``export.onnx`` exports),
``tensorrt`` every ``--model`` engine file (``.engine``/``.plan``, through ``sdk.tensorrt``;
precision from the engine's metadata file, which ``--precision`` must match), and ``--dlib``
adds dlib-bin's own descriptor. A backend that cannot run here prints a ``skipped`` line with
the reason and the others are measured. ONNX Runtime and torch use ``--threads`` (default: all
cores). Ratios (INT8 over FP32, ONNX Runtime over torch and dlib-bin, TensorRT over ONNX
Runtime) compare p50 ms per face measured in the same run, the engines timed side by side
(call after call in turn, so that a load spike falls on all of them); every engine's embeddings of the same
chips are compared with the reference's (the first ONNX Runtime FP32 model).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from sdk import kernels
from sdk.chips import central_face, cut, face_chips

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
    from evaluate import compressed_bench

    compressed = compressed_bench.bench_compressed(
        gallery, [(nq, n) for nq, n in sizes if nq == 1] + [(64, sizes[1][1])], lambda g, nq: probe_queries(rng, g, nq),
        THRESHOLD, args.repeat, args.pause, usable_cores(),
    )
    if getattr(args, "embeddings", None):
        compressed["real"] = compressed_bench.real_decisions(compressed_bench.load_embeddings(args.embeddings))
    return {
        "machine": machine_info(),
        "isa": kernels.isa(),
        "dim": DIM,
        "threshold": THRESHOLD,
        "copy_bandwidth_gbps": bandwidth,
        "rows": rows,
        "memory": memory,
        "compressed": compressed,
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
    if result.get("compressed"):
        from evaluate.compressed_bench import print_compressed

        print_compressed(result["compressed"])


def bench_pipeline(args: argparse.Namespace) -> dict:
    """Per-stage latency of Verifier.match on a 1-face image and an 8-face frame (LFW faces),
    against a gallery of `args.gallery_size` random identities plus the 8 people."""
    import cv2

    from sdk.paths import data_dir
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
            v.enroll(n, [root / n / f"{n}_0001.jpg"], largest=True, force=True)
        out = {"gallery_identities": len(v.identities()), "info": {k: str(x) for k, x in v.info().items()}, "frames": {}}
        for label, jpeg in frames.items():
            times: dict[str, list[float]] = {k: [] for k in ("decode", "detect", "align", "embed", "match", "total")}
            for _ in range(args.repeat + 1):  # the first run warms up
                t0 = time.perf_counter()
                frame = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
                t1 = time.perf_counter()
                _, found = v.faces(frame)
                t2 = time.perf_counter()
                chips = face_chips(frame, found, v.chip)
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


# --- run: the offline benchmark of the whole pipeline on real faces ---------------------------

BACKENDS = ("onnxruntime", "torch", "tensorrt")
ENGINE_SUFFIXES = (".engine", ".plan")
PRECISIONS = ("fp32", "fp16", "int8")


@dataclass(frozen=True)
class RunSizes:
    images: int  # LFW images decoded, detected and aligned (one face each)
    batches: tuple[int, ...]  # embed batch sizes
    galleries: tuple[int, ...]  # match gallery sizes (random unit vectors)
    passes: int  # timed passes over the images: decode, detect, align, end-to-end
    repeat: int  # timed calls per embed batch and per gallery
    budget_s: float  # per case: stop early after this long (dlib-bin takes seconds per batch of 32)


FULL_RUN = RunSizes(
    images=64, batches=(1, 8, 32), galleries=(10_000, 100_000, 1_000_000), passes=3, repeat=20, budget_s=5.0
)
QUICK_RUN = RunSizes(images=6, batches=(1, 4), galleries=(1_000, 10_000), passes=1, repeat=3, budget_s=0.5)
MIN_SAMPLES = 3
MATCH_REPEAT_FACTOR = 5  # one top-1 costs microseconds to milliseconds: more samples for the same time


def usable_cores() -> int:
    """CPUs this process may run on (a container or taskset may allow fewer than the machine has)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class BenchError(Exception):
    """A benchmark that cannot run as asked (missing data, a model that does not load)."""


@dataclass
class Candidate:
    """One embedding engine under test: a backend running one model at one precision."""

    backend: str  # onnxruntime | torch | tensorrt | dlib-bin
    precision: str  # fp32 | fp16 | int8
    model: str  # file name or class, to tell two models of one backend apart
    embed: Callable[[np.ndarray], np.ndarray]  # uint8 RGB chips [N, H, W, 3] -> [N, D]
    detail: dict
    close: Callable[[], None] | None = None  # frees what the engine holds (GPU memory)

    @property
    def label(self) -> str:
        return f"{self.backend} {self.precision} ({self.model})"


def percentiles(ms: list[float]) -> dict:
    """p50 / p95 / mean of a list of wall times in ms (np.percentile keeps p50 <= p95)."""
    a = np.asarray(ms, np.float64)
    return {
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "mean_ms": float(a.mean()),
        "samples": int(a.size),
    }


def sample_ms(
    fn: Callable[[int], object], count: int, budget_s: float, min_count: int = MIN_SAMPLES
) -> list[float]:
    """Wall times in ms of fn(0), fn(1), ...: `count` calls, or fewer (never under min_count)
    once `budget_s` seconds have passed, so a slow engine does not stretch the run to minutes."""
    times: list[float] = []
    start = time.perf_counter()
    for i in range(count):
        t0 = time.perf_counter()
        fn(i)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= min_count and time.perf_counter() - start > budget_s:
            break
    return times


def lfw_jpegs(count: int) -> tuple[list[Path], list[np.ndarray]]:
    """The JPEG bytes of the first image of `count` LFW people, in a fixed pseudo-random order."""
    from sdk.paths import data_dir

    root = data_dir() / "lfw" / "images_deepfunneled"
    if not root.is_dir():
        raise BenchError(f"LFW images not found under {root}: set FACESDK_DATA to the folder holding lfw/")
    people = sorted(p.name for p in root.iterdir() if p.is_dir())
    random.Random(0).shuffle(people)
    paths = [root / name / f"{name}_0001.jpg" for name in people[:count]]
    return paths, [np.fromfile(p, np.uint8) for p in paths]


def measure_stages(jpegs: list[np.ndarray], detector, passes: int) -> tuple[dict, np.ndarray, list[int]]:
    """p50/p95 of decode, detect and align per image; the aligned chips and which images had a face.

    align_reference: the same chip by the numpy sampler from the frame converted to RGB (the
    SDK's cut before the C++ sampler), the reference the C++ cut is compared with; the chips
    must be identical byte for byte."""
    import cv2

    from sdk.align import _align_reference

    def one(jpeg: np.ndarray) -> tuple[list[float], np.ndarray | None]:
        t0 = time.perf_counter()
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        face = central_face(detector.detect(image), image.shape)
        t2 = time.perf_counter()
        if face is None:
            return [t1 - t0, t2 - t1], None
        chip = cut(image, face.landmarks, face.scheme)
        t3 = time.perf_counter()
        reference = _align_reference(cv2.cvtColor(image, cv2.COLOR_BGR2RGB), face.landmarks, face.scheme)
        t4 = time.perf_counter()
        if not np.array_equal(chip, reference):
            raise BenchError("the C++ cut differs from the numpy reference: a bug, the figures would mean nothing")
        return [t1 - t0, t2 - t1, t3 - t2, t4 - t3], chip

    one(jpegs[0])  # warm-up: first calls allocate
    times: dict[str, list[float]] = {"decode": [], "detect": [], "align": [], "align_reference": []}
    chips: dict[int, np.ndarray] = {}
    for _ in range(passes):
        for i, jpeg in enumerate(jpegs):
            seconds, chip = one(jpeg)
            for stage, s in zip(times, seconds):
                times[stage].append(s * 1e3)
            if chip is not None:
                chips[i] = chip
    if not chips:
        raise BenchError(f"{detector.name} found no face in any of the {len(jpegs)} LFW images")
    found = sorted(chips)
    return {stage: percentiles(t) for stage, t in times.items()}, np.stack([chips[i] for i in found]), found


def load_onnx(path: Path, threads: int) -> Candidate:
    from sdk.embed import OnnxEmbedder

    try:
        embedder = OnnxEmbedder(path, threads=threads)
    except Exception as e:  # ONNX Runtime's load errors are plain Exceptions; say which file failed
        raise BenchError(f"--model {path}: onnxruntime cannot load it: {type(e).__name__}: {e}") from e
    precision = embedder.metadata.get("precision", "fp32").lower()
    detail = {"path": str(path), "model_name": embedder.name, "threads": threads, "providers": embedder.providers}
    return Candidate("onnxruntime", precision, path.name, embedder.embed, detail)


def load_dlib() -> Candidate:
    """dlib-bin's own descriptor on the same chips, through its batch API (a list of 150x150 chips).

    Its raw descriptors are L2-normalised afterwards (~1 us) to compare with ours."""
    import dlib

    from sdk.dlib_format import dlib_model_path

    model = dlib.face_recognition_model_v1(str(dlib_model_path()))

    def embed(chips: np.ndarray) -> np.ndarray:
        out = np.asarray(model.compute_face_descriptor(list(chips)), np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    detail = {"api": "compute_face_descriptor(list of chips)"}
    return Candidate("dlib-bin", "fp32", "face_recognition_model_v1", embed, detail)


def tensorrt_version() -> str | None:
    """TensorRT's version when its real bindings import, else None (tensorrt-stubs alone makes
    ``import tensorrt`` succeed as an empty namespace package)."""
    try:
        import tensorrt as trt
    except (ImportError, OSError):  # OSError: the wheel is there, libnvinfer is not
        return None
    return getattr(trt, "__version__", None) if hasattr(trt, "Runtime") else None


def load_tensorrt(engines: list[Path], precision: str | None) -> tuple[list[Candidate], list[str]]:
    """A Candidate per engine that runs here, and the reasons for those that do not.

    Every failure (no TensorRT, no CUDA, an engine built for another GPU or TensorRT) is a reason,
    never an exception: the other backends still get measured. An engine's precision is the one
    its metadata file records; ``precision`` (--precision) must agree with it."""
    try:
        from sdk.tensorrt import TensorRTEmbedder, import_tensorrt
    except Exception as e:  # an optional backend: whatever breaks its import is the reason to skip it
        return [], [f"sdk.tensorrt cannot be imported: {type(e).__name__}: {e}"]
    try:
        trt = import_tensorrt()
    except Exception as e:  # BackendUnavailableError with what to install
        return [], [str(e)]
    if not engines:
        return [], ["no engine given: pass --model PATH.engine (engines are built per GPU with `facesdk export trt`)"]
    found, skipped = [], []
    for path in engines:
        try:
            embedder = TensorRTEmbedder(path)
        except Exception as e:  # no CUDA device, cuda-python missing, engine for another GPU, ...
            skipped.append(f"{path}: {type(e).__name__}: {e}")
            continue
        engine_precision = str(getattr(embedder, "precision", None) or precision or "fp32").lower()
        if precision and engine_precision != precision:
            skipped.append(f"{path}: its metadata says {engine_precision}, not --precision {precision}")
            embedder.close()
            continue
        detail = {"path": str(path), "model_name": embedder.name, "tensorrt": trt.__version__}
        detail["providers"] = embedder.providers
        found.append(Candidate("tensorrt", engine_precision, path.name, embedder.embed, detail, embedder.close))
    return found, skipped


def load_candidates(
    args: argparse.Namespace, torch_loader: Callable[[int], Candidate] | None = None
) -> tuple[list[Candidate], list[dict]]:
    """The engines to measure, and the skipped ones with the reason (printed, never fatal).

    ``torch_loader(threads)`` gives the torch reference; it lives above this package (it needs
    ``train``), so the caller passes it."""
    candidates: list[Candidate] = []
    skipped: list[dict] = []
    for path in args.onnx_models:
        candidates.append(load_onnx(path, args.threads))
    if "torch" in args.backends:
        try:
            if torch_loader is None:
                raise ImportError("the torch reference is loaded by `facesdk bench` (it needs the train package)")
            candidates.append(torch_loader(args.threads))
        except (ImportError, FileNotFoundError) as e:
            skipped.append({"backend": "torch", "reason": f"{type(e).__name__}: {e}"})
    if "tensorrt" in args.backends:
        found, reasons = load_tensorrt(args.engines, args.precision)
        candidates += found
        skipped += [{"backend": "tensorrt", "reason": r} for r in reasons]
    if args.dlib:
        try:
            candidates.append(load_dlib())
        except (ImportError, FileNotFoundError) as e:
            skipped.append({"backend": "dlib-bin", "reason": f"{type(e).__name__}: {e}"})
    for s in skipped:
        print(f"{s['backend']}: skipped: {s['reason']}", file=sys.stderr, flush=True)
    return candidates, skipped


def reference_of(candidates: list[Candidate]) -> Candidate:
    """What the others are compared with: the first ONNX Runtime FP32 model, else the first engine."""
    return next((c for c in candidates if c.backend == "onnxruntime" and c.precision == "fp32"), candidates[0])


def measure_embeds(
    candidates: list[Candidate], chips: np.ndarray, sizes: RunSizes, pause: float, reference: np.ndarray
) -> list[dict]:
    """Per engine: ms per batch and per face (p50/p95) at every batch size, faces/s at the largest
    batch and, against the reference engine's embeddings of the same chips, the largest difference.

    The engines are timed side by side: call after call in turn (the order reversed every round),
    so that a load spike on a shared machine falls on all of them, not on whichever ran then.
    Each stops after its own ``budget_s`` (never under MIN_SAMPLES calls)."""
    outs = [{"label": c.label, "backend": c.backend, "precision": c.precision, "model": c.model, **c.detail,
             "batches": {}} for c in candidates]  # fmt: skip
    for b in sizes.batches:
        batch = np.ascontiguousarray(chips[np.arange(b) % len(chips)])  # repeats faces when fewer than b
        print(f"  embed batch {b}: {len(candidates)} engines side by side ...", file=sys.stderr, flush=True)
        time.sleep(pause)
        for c in candidates:
            c.embed(batch)  # warm-up: first calls allocate and pick kernels
        times: list[list[float]] = [[] for _ in candidates]
        for i in range(sizes.repeat):
            order = list(enumerate(candidates))
            running = [(k, c) for k, c in (order if i % 2 == 0 else order[::-1])
                       if len(times[k]) < MIN_SAMPLES or sum(times[k]) < sizes.budget_s * 1e3]  # fmt: skip
            if not running:
                break
            for k, c in running:
                t0 = time.perf_counter()
                c.embed(batch)
                times[k].append((time.perf_counter() - t0) * 1e3)
        for out, t in zip(outs, times):
            stats = percentiles(t)
            stats["p50_ms_per_face"] = stats["p50_ms"] / b
            stats["p95_ms_per_face"] = stats["p95_ms"] / b
            out["batches"][str(b)] = stats
    largest = str(max(sizes.batches))
    for c, out in zip(candidates, outs):
        out["faces_per_s"] = max(sizes.batches) / out["batches"][largest]["p50_ms"] * 1e3
        mine = c.embed(chips)
        out["vs_reference"] = {
            "max_abs_diff": float(np.abs(mine - reference).max()),
            # in the units of the SDK's thresholds (the default model's at FAR 1e-3: 0.14)
            "max_squared_l2": float(np.max(np.sum((mine - reference) ** 2, axis=1))),
        }
    return outs


def measure_match(query: np.ndarray, galleries: tuple[int, ...], sizes: RunSizes, pause: float) -> dict:
    """Top-1 of one query against galleries of random unit vectors, with our kernels."""
    rng = np.random.default_rng(0)
    gallery = unit_rows(rng, max(galleries), query.shape[1])
    out = {}
    for n in galleries:
        g = gallery[:n]
        print(f"  match top-1 n={n:,} ...", file=sys.stderr, flush=True)
        time.sleep(pause)
        kernels.topk(query, g, 1)
        times = sample_ms(lambda _: kernels.topk(query, g, 1), sizes.repeat * MATCH_REPEAT_FACTOR, sizes.budget_s)
        out[str(n)] = percentiles(times)
    return out


def measure_end_to_end(
    c: Candidate, jpegs: list[np.ndarray], detector, gallery: np.ndarray, sizes: RunSizes, pause: float
) -> dict:
    """Single-face frames one after the other: decode, detect, align, embed (batch 1), top-1 match."""
    import cv2

    def frame(i: int) -> None:
        image = cv2.imdecode(jpegs[i % len(jpegs)], cv2.IMREAD_COLOR)
        face = central_face(detector.detect(image), image.shape)
        if face is None:  # the jpegs are those where a face was found; a frame without one costs this
            return
        chip = cut(image, face.landmarks, face.scheme)
        kernels.topk(c.embed(chip[None]), gallery, 1)

    print(f"  end-to-end {c.label} ...", file=sys.stderr, flush=True)
    time.sleep(pause)
    frame(0)
    stats = percentiles(sample_ms(frame, sizes.passes * len(jpegs), sizes.budget_s * 2))
    return {"label": c.label, "backend": c.backend, "precision": c.precision, "gallery": len(gallery),
            **stats, "frames_per_s": 1e3 / stats["mean_ms"]}  # fmt: skip


def ratio_rows(embeds: list[dict], reference_label: str) -> list[dict]:
    """Speed-ups in p50 ms per face, per batch: `faster` over `baseline` = baseline ms / faster ms.

    Lower precision over FP32 of the same backend, TensorRT over ONNX Runtime FP32, and the
    reference (ONNX Runtime FP32, ours) over torch and over dlib-bin."""
    by_label = {e["label"]: e for e in embeds}
    ref = by_label[reference_label]
    pairs: list[tuple[dict, dict]] = []
    for e in embeds:
        if e is ref:
            continue
        if e["backend"] in ("torch", "dlib-bin"):
            pairs.append((ref, e))
            continue
        same_fp32 = next(
            (f for f in embeds if f["backend"] == e["backend"] and f["precision"] == "fp32" and f is not e), None
        )
        if e["precision"] != "fp32" and same_fp32 is not None:
            pairs.append((e, same_fp32))
        if e["backend"] != ref["backend"]:
            pairs.append((e, ref))
        elif e["precision"] == "fp32":  # a second FP32 file of the same backend
            pairs.append((e, ref))
    rows = []
    for faster, baseline in pairs:
        by_batch = {
            b: baseline["batches"][b]["p50_ms_per_face"] / faster["batches"][b]["p50_ms_per_face"]
            for b in faster["batches"]
        }
        rows.append({"faster": faster["label"], "baseline": baseline["label"], "by_batch": by_batch})
    return rows


def cpu_name() -> str:
    """The CPU model: /proc/cpuinfo's "model name" (x86), else lscpu's (aarch64, e.g. Cortex-A78AE)."""
    name = machine_info()["cpu"]
    if name:
        return name
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        names = (line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
        return next(names, "unknown")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Instruction-set features that decide embedding and matching speed (x86 flags, aarch64 Features).
ISA_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "avx512_bf16",
             "avx512_fp16", "amx_int8", "asimd", "asimdhp", "asimddp", "i8mm", "sve", "sve2", "bf16")  # fmt: skip


def cpu_isa() -> list[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    have = set(line.split(":", 1)[1].split())
                    return [flag for flag in ISA_FLAGS if flag in have]
    except OSError:
        pass
    return []


def gpu_info() -> list[str]:
    """GPUs named by nvidia-smi, and a Jetson's board name (its GPU is integrated)."""
    gpus = []
    if shutil.which("nvidia-smi"):
        try:
            query = ["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"]
            out = subprocess.run(query, capture_output=True, text=True, timeout=20)
            if out.returncode == 0:
                gpus += [line.strip() for line in out.stdout.splitlines() if line.strip()]
        except (OSError, subprocess.SubprocessError):
            pass
    board = Path("/proc/device-tree/model")
    if board.is_file():
        name = board.read_bytes().rstrip(b"\0").decode(errors="replace")
        if "jetson" in name.lower() or "nvidia" in name.lower():
            gpus.append(name)
    return gpus


def device_info(threads: int) -> dict:
    import onnxruntime as ort

    return {
        "cpu": cpu_name(),
        "cores": usable_cores(),
        "arch": platform.machine(),
        "isa": cpu_isa(),
        "gpu": gpu_info(),
        "onnxruntime_providers": ort.get_available_providers(),
        "threads": threads,
        "os": platform.platform(),
    }


def _dist_version(*names: str) -> str | None:
    from importlib import metadata

    for name in names:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def versions() -> dict:
    """Versions of everything measured; None for what is not installed."""
    import cv2
    import onnxruntime as ort

    torch = sys.modules.get("torch")
    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "torch": torch.__version__ if torch else _dist_version("torch"),
        # Jetson's TensorRT comes from JetPack's apt packages, without pip metadata: ask the module.
        "tensorrt": tensorrt_version(),
        "dlib": _dist_version("dlib-bin", "dlib"),
        "faiss": _dist_version("faiss-cpu", "faiss-gpu", "faiss"),
        "kernels_isa": kernels.isa(),
    }


def bench_run(args: argparse.Namespace, torch_loader: Callable[[int], Candidate] | None = None) -> dict:
    """Everything `run` measures (see the module doc), as one JSON-ready dict."""
    paths, jpegs = lfw_jpegs(args.sizes.images)
    candidates, skipped = load_candidates(args, torch_loader)
    if not candidates:
        reasons = "; ".join(f"{s['backend']}: {s['reason']}" for s in skipped)
        raise BenchError(f"no embedding backend could run: {reasons}")
    try:
        result = measure_all(args, jpegs, candidates)
    finally:
        for c in candidates:
            if c.close:
                c.close()
    result["images"]["first"] = str(paths[0])
    return {"device": device_info(args.threads), "versions": versions(), **result, "skipped": skipped}


def measure_all(args: argparse.Namespace, jpegs: list[np.ndarray], candidates: list[Candidate]) -> dict:
    import cv2

    from sdk.detect import default_detector

    sizes = args.sizes
    detector, _ = default_detector()
    print(f"  decode/detect/align on {len(jpegs)} LFW images ...", file=sys.stderr, flush=True)
    stages, chips, found = measure_stages(jpegs, detector, sizes.passes)
    reference = reference_of(candidates)
    ref_embeddings = reference.embed(chips)
    embeds = measure_embeds(candidates, chips, sizes, args.pause, ref_embeddings)
    match = measure_match(ref_embeddings[:1], sizes.galleries, sizes, args.pause)
    # End-to-end frames match against the smallest gallery, on the images where a face was found.
    e2e_gallery = unit_rows(np.random.default_rng(1), min(sizes.galleries), ref_embeddings.shape[1])
    faces = [jpegs[i] for i in found]
    end_to_end = [measure_end_to_end(c, faces, detector, e2e_gallery, sizes, args.pause) for c in candidates]
    shape = cv2.imdecode(jpegs[0], cv2.IMREAD_COLOR).shape
    return {
        "config": {**asdict(sizes), "quick": args.quick, "pause_s": args.pause, "detector": detector.name},
        "images": {"count": len(jpegs), "faces_found": len(found), "shape": list(shape)},
        "stages": stages,
        "embed": embeds,
        "reference": reference.label,
        "match": match,
        "end_to_end": end_to_end,
        "ratios": ratio_rows(embeds, reference.label),
    }


def print_run(result: dict) -> None:
    d, v, cfg, img = result["device"], result["versions"], result["config"], result["images"]
    isa = " ".join(d["isa"]) or "unknown"
    print(f"device: {d['cpu']}, {d['cores']} cores, {d['arch']} [{isa}]; GPU: {', '.join(d['gpu']) or 'none'}")
    print("versions: " + "  ".join(f"{k} {x if x is not None else '-'}" for k, x in v.items()))
    print(f"faces: {img['count']} LFW images ({img['shape'][1]}x{img['shape'][0]} JPEG), a face found in "
          f"{img['faces_found']} by {cfg['detector']}; {d['threads']} threads; p50/p95 in ms"
          f"{'; --quick sizes' if cfg['quick'] else ''}")  # fmt: skip
    for s in result["skipped"]:
        print(f"{s['backend']}: skipped: {s['reason']}")
    print()
    print(f"{'stage':<40} {'p50 ms':>9} {'p95 ms':>9} {'samples':>8}")
    rows = [(f"decode (cv2.imdecode)", result["stages"]["decode"]),
            (f"detect ({cfg['detector']})", result["stages"]["detect"]),
            ("align (sdk.align, C++ sampler)", result["stages"]["align"])]  # fmt: skip
    if "align_reference" in result["stages"]:
        rows.append(("align, numpy reference (RGB frame)", result["stages"]["align_reference"]))
    rows += [(f"match top-1, 1 query x {int(n):,}", m) for n, m in result["match"].items()]
    for label, s in rows:
        print(f"{label:<40} {s['p50_ms']:9.3f} {s['p95_ms']:9.3f} {s['samples']:8d}")
    if "align_reference" in result["stages"]:
        speedup = result["stages"]["align_reference"]["p50_ms"] / result["stages"]["align"]["p50_ms"]
        print(f"align: numpy reference / C++ sampler = {speedup:.1f}x (p50, same run; the chips are identical)")
    print()
    width = max(len(e["label"]) for e in result["embed"])
    header = f"{'embed':<{width}} {'batch':>5} {'ms/batch p50':>13} {'p95':>9} {'ms/face p50':>12} {'p95':>8}"
    print(f"{header}  vs {result['reference']}")
    for e in result["embed"]:
        diff = e.get("vs_reference")
        note = f"max |d| {diff['max_abs_diff']:.2g}, max sq-L2 {diff['max_squared_l2']:.2g}"
        if e["label"] == result["reference"]:
            note = "reference"
        for i, (b, s) in enumerate(e["batches"].items()):
            print(f"{e['label'] if i == 0 else '':<{width}} {b:>5} {s['p50_ms']:13.2f} {s['p95_ms']:9.2f} "
                  f"{s['p50_ms_per_face']:12.2f} {s['p95_ms_per_face']:8.2f}  {note if i == 0 else ''}")  # fmt: skip
    print()
    largest = max(cfg["batches"])
    e2e = {x["label"]: x for x in result["end_to_end"]}
    gallery = result["end_to_end"][0]["gallery"] if result["end_to_end"] else 0
    print(f"{'throughput':<{width}} {'faces/s':>8} {'frames/s':>9} {'frame ms p50':>13} {'p95':>8}")
    for e in result["embed"]:
        f = e2e[e["label"]]
        print(
            f"{e['label']:<{width}} {e['faces_per_s']:8.1f} {f['frames_per_s']:9.1f} {f['p50_ms']:13.2f} {f['p95_ms']:8.2f}"
        )
    print(f"faces/s: embed at batch {largest} (p50). frames/s: single-face frames one after another (1 / mean), "
          f"each decode, detect, align, embed at batch 1, top-1 match against {gallery:,}.")  # fmt: skip
    if result["ratios"]:
        print()
        label_width = max(len(f"{r['faster']} over {r['baseline']}") for r in result["ratios"])
        batches = " ".join(f"{'batch ' + b:>9}" for b in result["ratios"][0]["by_batch"])
        print(f"{'speed-up (p50 ms/face: baseline / faster)':<{label_width}} {batches}")
        for r in result["ratios"]:
            name = f"{r['faster']} over {r['baseline']}"
            print(f"{name:<{label_width}} " + " ".join(f"{x:8.2f}x" for x in r["by_batch"].values()))
        print("above 1x: the first is faster. Shared, noisy machine: compare ratios within one run.")


def write_plot(result: dict, path: Path) -> None:
    """PNG: per-stage p50 with p95 whiskers (log scale), and embed ms/face per engine per batch."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    fig = Figure(figsize=(15, 6), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(1, 1.3))
    stages = [(name, result["stages"][name]) for name in ("decode", "detect", "align")]
    stages += [(f"match {int(n):,}", m) for n, m in result["match"].items()]
    stages += [(f"frame: {e['backend']} {e['precision']}", e) for e in result["end_to_end"]]
    p50 = np.array([s["p50_ms"] for _, s in stages])
    p95 = np.array([s["p95_ms"] for _, s in stages])
    left.bar(range(len(stages)), p50, yerr=[np.zeros_like(p50), p95 - p50], capsize=3, color="tab:blue")
    left.set_xticks(range(len(stages)), [n for n, _ in stages], rotation=35, ha="right")
    left.set_yscale("log")
    left.set_ylabel("ms (bar p50, whisker p95)")
    left.set_title("per stage, one image / one query / one frame")
    embeds = result["embed"]
    batches = list(embeds[0]["batches"]) if embeds else []
    width = 0.8 / max(len(embeds), 1)
    for j, e in enumerate(embeds):
        x = np.arange(len(batches)) + (j - (len(embeds) - 1) / 2) * width
        med = np.array([e["batches"][b]["p50_ms_per_face"] for b in batches])
        hi = np.array([e["batches"][b]["p95_ms_per_face"] for b in batches])
        right.bar(x, med, width, yerr=[np.zeros_like(med), hi - med], capsize=2, label=e["label"])
    right.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    right.set_yscale("log")
    right.set_ylabel("embed ms per face (bar p50, whisker p95)")
    right.set_title("embedding, per backend and model")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.08), ncol=2)
    d = result["device"]
    gpu = ", ".join(d["gpu"]) or "none"
    fig.suptitle(f"facesdk bench: {d['cpu']}, {d['cores']} cores, {d['threads']} threads; GPU: {gpu}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def parse_backends(values: list[str] | None) -> list[str]:
    """--backend a,b --backend c -> [a, b, c] in order, without repeats; all backends by default."""
    if not values:
        return list(BACKENDS)
    out: list[str] = []
    for value in values:
        for name in value.split(","):
            name = name.strip().lower()
            if name not in BACKENDS:
                raise ValueError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
            if name not in out:
                out.append(name)
    return out
