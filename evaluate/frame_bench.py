"""``facesdk bench frame``: one single-face frame end to end, per stage, before and after.

    facesdk bench frame [--int8 M.int8-cpu.onnx] [--detector yunet,yunet+dlib5] [--max-side 160]
                        [--images 32] [--passes 6] [--gallery 10000] [--gallery-precision int8]
                        [--threads N] [--cv2-threads N] [--json PATH]

Each frame is a JPEG of a real LFW face (250x250), run as a door runs it: decode
(``cv2.imdecode``), detect (YuNet), landmarks (dlib's 5-point predictor, for ``yunet+dlib5``),
align (one 150 px chip), embed (batch 1), match (top-1 against a gallery of random unit
vectors). Every pipeline runs on the same frames in the same run. A pipeline runs its frames one
after another, as a door runs its one pipeline frame after frame; each pass runs every pipeline
in turn, starting one further along, so that the load of a shared machine falls on all alike:

* ``before``: YuNet at the frame's full size, the chip cut by the numpy sampler from the frame
  converted to RGB (the SDK's path before the C++ sampler), the FP32 model, a float32 gallery;
* ``after``: YuNet at ``--max-side``, the chip cut by the C++ sampler from the BGR frame, each
  model given (FP32, and the ``--int8`` file), the gallery in ``--gallery-precision`` (its
  decisions are float32's: ``sdk.kernels.compress``).

Per stage p50 (ms) and the whole frame's p50/p95, and the ratios before / after measured here.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

STAGES = ("decode", "detect", "landmarks", "align", "embed", "match")


@dataclass
class Pipeline:
    """One way to run a frame: a detector (and maybe dlib's landmarks), a cut, a model."""

    label: str
    detector: str  # a key of sdk.detect.DETECTORS
    max_side: int | None
    reference_align: bool  # the numpy sampler on the RGB frame (before)
    model: str  # model label, e.g. "fp32"
    gallery_precision: str  # "fp32", "fp16" or "int8"
    verifier: bool = False  # the SDK's own call, sdk.Verifier.match, after the decode
    run: Callable[[np.ndarray], dict[str, float]] | None = None


def _stage_runner(p: Pipeline, embedder: Any, gallery: np.ndarray, threads: int | None) -> Callable:
    import cv2

    from sdk import kernels
    from sdk.align import _align_reference
    from sdk.chips import DEFAULT_CHIP, central_face, cut
    from sdk.detect import YuNetDetector, YuNetDlib5Detector

    yunet = YuNetDetector(max_side=p.max_side, threads=threads)
    dlib5 = YuNetDlib5Detector(yunet) if p.detector == "yunet+dlib5" else None
    scheme = DEFAULT_CHIP
    compressed = None if p.gallery_precision == "fp32" else kernels.compress(gallery, p.gallery_precision)

    def frame(jpeg: np.ndarray) -> dict[str, float]:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        faces = yunet.detect(image)
        t2 = time.perf_counter()
        if dlib5 is not None:
            faces = dlib5.landmarks(image, faces)
        t3 = time.perf_counter()
        face = central_face(faces, image.shape)
        if face is None:
            raise RuntimeError(f"{p.label}: no face found in a frame where one was found before")
        if p.reference_align:
            rgb = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
            chip = _align_reference(rgb, face.landmarks, face.scheme, scheme.size, scheme.padding)
        else:
            chip = cut(image, face.landmarks, face.scheme, scheme)
        t4 = time.perf_counter()
        embedding = embedder.embed(chip[None])
        t5 = time.perf_counter()
        if compressed is None:
            kernels.topk(embedding, gallery, 1)
        else:
            kernels.topk(embedding, compressed, 1, exact=gallery)
        t6 = time.perf_counter()
        times = (t0, t1, t2, t3, t4, t5, t6)
        out = {stage: (times[i + 1] - times[i]) * 1e3 for i, stage in enumerate(STAGES)}
        out["total"] = (t6 - t0) * 1e3
        # CPU time of all our threads over wall time: above 1, stages ran threads in parallel;
        # threads left spinning between stages would show here as time with nothing to show for it.
        out["cpu"] = (time.process_time() - cpu0) * 1e3
        return out

    return frame


def _verifier_runner(p: Pipeline, model: Path, gallery: np.ndarray, threads: int | None) -> Callable:
    """Decode, then ``sdk.Verifier.match``: the call a door makes, stages not split."""
    import cv2

    import sdk
    from sdk.detect import detector_from

    verifier = sdk.Verifier(model, detector=detector_from(p.detector, p.max_side), gallery=None, threads=threads,
                            gallery_precision=p.gallery_precision)  # fmt: skip
    verifier.gallery.add_many([f"person {i}" for i in range(len(gallery))], gallery)

    def frame(jpeg: np.ndarray) -> dict[str, float | None]:
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        image = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        t1 = time.perf_counter()
        if len(verifier.match(image)) != 1:
            raise RuntimeError(f"{p.label}: not a single-face frame")
        t2 = time.perf_counter()
        out: dict[str, float | None] = {stage: None for stage in STAGES}
        out.update(decode=(t1 - t0) * 1e3, total=(t2 - t0) * 1e3, cpu=(time.process_time() - cpu0) * 1e3)
        return out

    return frame


def pipelines(detectors: list[str], max_side: int | None, models: list[str], gallery_precision: str = "fp32") -> list[Pipeline]:
    """Per detector: before (full-size YuNet, numpy cut, the first model, float32 gallery), after
    (each model, the gallery in ``gallery_precision``) and ``sdk.Verifier.match`` configured as
    the last after row."""
    out = []
    side = f"max side {max_side}" if max_side else "full size"
    for d in detectors:
        out.append(Pipeline(f"{d}: before, {models[0]}", d, None, True, models[0], "fp32"))
        for m in models:
            out.append(Pipeline(f"{d}: after ({side}), {m}", d, max_side, False, m, gallery_precision))
        out.append(Pipeline(f"{d}: Verifier.match ({side}), {models[-1]}", d, max_side, False, models[-1], gallery_precision, True))
    return out


def bench_frame(args: argparse.Namespace) -> dict:
    import cv2

    from evaluate.bench import device_info, lfw_jpegs, unit_rows, versions
    from sdk.embed import OnnxEmbedder, default_model_path

    if args.cv2_threads:
        cv2.setNumThreads(args.cv2_threads)

    embedders: dict[str, Any] = {}  # by precision: fp32, int8, int8-cpu
    model_paths: dict[str, Path] = {}
    for path in [Path(args.model or default_model_path())] + ([Path(args.int8)] if args.int8 else []):
        embedder = OnnxEmbedder(path, threads=args.threads)
        precision = embedder.metadata.get("precision", "fp32")
        if precision in embedders:
            raise ValueError(f"{path} and {model_paths[precision]} are both {precision}: give one FP32 and one INT8 model")
        embedders[precision], model_paths[precision] = embedder, path
    if "fp32" not in embedders:
        raise ValueError(f"{model_paths[next(iter(model_paths))]} is not FP32: --model takes the FP32 model, --int8 the INT8 one")
    models = list(embedders)
    dim = next(iter(embedders.values())).embedding_dim
    gallery = unit_rows(np.random.default_rng(1), args.gallery, dim)
    runs = pipelines(args.detector, args.max_side, models, args.gallery_precision)
    for p in runs:
        if p.verifier:
            p.run = _verifier_runner(p, model_paths[p.model], gallery, args.threads)
        else:
            p.run = _stage_runner(p, embedders[p.model], gallery, args.threads)
    paths, jpegs = lfw_jpegs(args.images)
    # Single-face frames: every pipeline finds a face, and the Verifier exactly one.
    keep = []
    for jpeg in jpegs:
        try:
            for p in runs:
                p.run(jpeg)  # also the warm-up
            keep.append(jpeg)
        except RuntimeError:
            continue
    if not keep:
        raise RuntimeError("no single-face LFW frame where every pipeline finds the face")
    samples: dict[str, list[dict[str, float]]] = {p.label: [] for p in runs}
    print(f"  {len(runs)} pipelines x {len(keep)} frames x {args.passes} passes ...", file=sys.stderr, flush=True)
    for i in range(args.passes):
        for p in runs[i % len(runs) :] + runs[: i % len(runs)]:
            for jpeg in keep:
                samples[p.label].append(p.run(jpeg))
    rows = []
    for p in runs:
        s = samples[p.label]
        row = {
            "label": p.label,
            "detector": p.detector,
            "max_side": p.max_side,
            "align": "numpy on the RGB frame" if p.reference_align else "C++ on the BGR frame",
            "model": p.model,
            "gallery_precision": p.gallery_precision,
            "verifier": p.verifier,
            "p50_ms": {k: None if s[0][k] is None else float(np.percentile([x[k] for x in s], 50)) for k in (*STAGES, "total")},
            "p95_total_ms": float(np.percentile([x["total"] for x in s], 95)),
            "cpu_per_wall": float(np.sum([x["cpu"] for x in s]) / np.sum([x["total"] for x in s])),
            "samples": len(s),
        }
        rows.append(row)
    return {
        "device": device_info(args.threads or 0),
        "versions": versions(),
        "frames": len(keep),
        "first_frame": str(paths[0]),
        "passes": args.passes,
        "gallery": args.gallery,
        "threads": args.threads,
        "cv2_threads": cv2.getNumThreads(),
        "models": {k: str(v) for k, v in model_paths.items()},
        "rows": rows,
        "ratios": ratios(rows),
    }


def ratios(rows: list[dict]) -> list[dict]:
    """Per detector: each after row against its before row, stage by stage (before / after)."""
    out = []
    for before in (r for r in rows if r["align"].startswith("numpy")):
        for after in (r for r in rows if r["detector"] == before["detector"] and r is not before):
            per = {}
            for k in (*STAGES, "total"):
                a, b = after["p50_ms"][k], before["p50_ms"][k]
                per[k] = b / a if a is not None and a > 0.001 else None  # not run (landmarks of yunet) or not split
            out.append({"after": after["label"], "before": before["label"], "by_stage": per})
    return out


def print_frame(result: dict) -> None:
    d = result["device"]
    print(f"device: {d['cpu']}, {d['cores']} cores [{' '.join(d['isa'])}]; onnxruntime {result['versions']['onnxruntime']}, "
          f"threads {result['threads'] or 'the SDK default (one for YuNet inputs up to 192x192)'}, cv2 threads {result['cv2_threads']}")  # fmt: skip
    print(f"{result['frames']} single-face LFW frames (250x250 JPEG) x {result['passes']} passes; "
          f"match: top-1 of {result['gallery']:,}; p50 ms per stage; each pipeline runs its frames in a row, as a door")  # fmt: skip
    width = max(len(r["label"]) for r in result["rows"])
    header = f"{'pipeline':<{width}} " + " ".join(f"{s:>9}" for s in STAGES) + f" {'frame p50':>9} {'p95':>7} {'cpu/wall':>8}"
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        cells = " ".join(f"{'-':>9}" if r["p50_ms"][s] is None else f"{r['p50_ms'][s]:9.3f}" for s in STAGES)
        print(f"{r['label']:<{width}} {cells} {r['p50_ms']['total']:9.2f} {r['p95_total_ms']:7.2f} {r['cpu_per_wall']:8.2f}")
    print()
    print("speed-up, before / after (p50, same run):")
    width = max(len(x["after"]) for x in result["ratios"])
    print(f"{'after':<{width}} " + " ".join(f"{s:>9}" for s in (*STAGES, "frame")))
    for x in result["ratios"]:
        cells = " ".join(f"{'-':>9}" if v is None else f"{v:8.2f}x" for v in x["by_stage"].values())
        print(f"{x['after']:<{width}} {cells}")
    after = next((r for r in result["rows"] if r["align"].startswith("C++")), None)
    gallery = f"; after: the gallery in {after['gallery_precision']} (float32's decisions)" if after else ""
    print(f"before: YuNet at full size, numpy cut of the RGB frame, FP32, float32 gallery{gallery}.")
    print("cpu/wall: process CPU time over wall time.")
    print("Shared, noisy machine: compare within one run.")
