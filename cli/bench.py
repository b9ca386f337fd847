"""``facesdk bench [run|kernels|pipeline|frame|align|gallery|camera|ops]``: the benchmarks of ``evaluate.bench``, with the torch
reference they compare against (it needs ``train``, which sits above ``evaluate``)."""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

import numpy as np

from cli.common import UsageError, positive, write_json


def register(sub) -> None:
    from evaluate import bench

    b = sub.add_parser("bench", help="benchmarks: the pipeline per backend (default), kernels, pipeline stages")
    add_run_options(b)  # `facesdk bench [options]` runs `run`
    b.set_defaults(run=run_cmd)
    verbs = b.add_subparsers(dest="bench_verb", metavar="{run,kernels,pipeline,frame,align,gallery,camera,ops}")
    add_run_options(verbs.add_parser("run", help="the whole pipeline on LFW faces, per stage and per backend (default)"))
    k = verbs.add_parser("kernels", help="matching kernels vs numpy and faiss")
    k.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    k.add_argument("--repeat", type=int, default=5, help="timed runs per case (the best is reported)")
    k.add_argument("--isa", choices=bench.kernels.available_isas(), help="instruction set for our kernels")
    k.add_argument("--quick", action="store_true", help="small sizes, a smoke run in seconds")
    k.add_argument("--pause", type=float, default=0.5, help="seconds of rest before each timing (see timed)")
    k.add_argument("--embeddings", type=Path, metavar="NPZ",
                   help="real faces' embeddings (as `facesdk eval fpir --cache NPZ` writes): count every decision "
                        "of the fp16 and int8 galleries that differs from float32's")  # fmt: skip
    k.set_defaults(run=kernels_cmd)
    pl = verbs.add_parser("pipeline", help="per-stage latency of Verifier.match, 1 face and 8 faces")
    pl.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    pl.add_argument("--repeat", type=int, default=30, help="timed runs per frame")
    pl.add_argument("--gallery-size", type=int, default=10_000, help="random identities in the gallery")
    pl.set_defaults(run=pipeline_cmd)
    f = verbs.add_parser("frame", help="a single-face frame end to end per stage, before and after (detector size, cut, INT8)")
    f.add_argument("--model", type=Path, help="FP32 model (default: the default model)")
    f.add_argument("--int8", type=Path, help="an INT8 model (e.g. `facesdk export int8 --cpu`'s) for the after rows")
    f.add_argument("--detector", type=detector_list, default=["yunet", "yunet+dlib5"],
                   help="comma-separated: yunet, yunet+dlib5 (default both)")  # fmt: skip
    f.add_argument("--max-side", type=positive, default=160, help="YuNet's input side in the after rows (default 160)")
    f.add_argument("--images", type=positive, default=32, help="LFW frames (one face each)")
    f.add_argument("--passes", type=positive, default=6, help="timed passes over the frames")
    f.add_argument("--gallery", type=positive, default=10_000, help="identities matched against (random unit vectors)")
    f.add_argument("--gallery-precision", choices=["fp32", "fp16", "int8"], default="int8",
                   help="the gallery's precision in the after rows (default int8; before: fp32)")  # fmt: skip
    f.add_argument("--threads", type=positive, help="onnxruntime intra-op threads of detector and embedder (default: the SDK's choice)")
    f.add_argument("--cv2-threads", type=positive, help="cv2.setNumThreads for the run (default: OpenCV's, one per core)")
    f.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    f.set_defaults(run=frame_cmd)
    a = verbs.add_parser("align", help="dlib's 5 landmarks and the chip cut, ours vs dlib-bin's own, hot and with the caches evicted")
    a.add_argument("--images", type=positive, default=32, help="LFW frames (one face each)")
    a.add_argument("--passes", type=positive, default=5, help="timed passes over the faces")
    a.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    a.set_defaults(run=align_cmd)
    g = verbs.add_parser("gallery", help="the gallery at scale: bulk enrolment, load, memory, match while enrolling")
    g.add_argument("--size", type=positive, default=1_000_000, help="identities (one face each)")
    g.add_argument("--seconds", type=float, default=5.0, help="search time per latency measurement")
    g.add_argument("--precision", choices=("fp32", "fp16", "int8"), default="fp32",
                   help="in-memory rows of the gallery (Gallery(precision=)); the file keeps float32")  # fmt: skip
    g.add_argument("--dir", type=Path, help="where the temporary gallery file goes (default: the system's temp)")
    g.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    g.set_defaults(run=gallery_cmd)
    c = verbs.add_parser("camera", help="the camera runtime on a 720p clip of 1-3 real faces: fps, first frame to accept")
    c.add_argument("--every", default="1,2,3", help="detection on every N-th frame, comma-separated values of N")
    c.add_argument("--detect-max-side", default="full,640",
                   help="YuNet's input: 'full' size or downscaled to this longer side, comma-separated")  # fmt: skip
    c.add_argument("--rounds", type=positive, default=2, help="times three people cross the clip (more latencies)")
    c.add_argument("--data", type=Path, default=None, help="data folder holding lfw/ (default $FACESDK_DATA)")
    c.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    c.set_defaults(run=camera_cmd)
    o = verbs.add_parser("ops", help="ONNX Runtime's time per op type of one or more models, side by side")
    o.add_argument("models", type=Path, nargs="+", help="ONNX models with a uint8 input (the first is the reference)")
    o.add_argument("--batch", type=positive, default=1, help="faces per call (default 1)")
    o.add_argument("--threads", type=positive, default=1, help="intra-op threads (default 1)")
    o.add_argument("--calls", type=positive, default=200, help="profiled calls per model (default 200)")
    o.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    o.set_defaults(run=ops_cmd)


def add_run_options(r: argparse.ArgumentParser) -> None:
    from evaluate.bench import BACKENDS, FULL_RUN, PRECISIONS, QUICK_RUN, usable_cores

    r.add_argument("--backend", action="append", metavar="NAME",
                   help=f"{', '.join(BACKENDS)}; repeat or comma-separate (default: all; any that cannot run is skipped)")  # fmt: skip
    r.add_argument("--model", action="append", type=Path, metavar="PATH",
                   help="an ONNX model for onnxruntime (precision from its metadata key `precision`, default fp32) "
                        "or a TensorRT engine (.engine/.plan); repeatable (default: the default model)")  # fmt: skip
    r.add_argument("--precision", choices=PRECISIONS, help="precision of the TensorRT engines given with --model")
    r.add_argument("--dlib", action="store_true", help="also dlib-bin's own descriptor (slow: ~100 ms per face)")
    r.add_argument("--json", type=Path, help="also write every figure to this JSON file")
    r.add_argument("--plot", type=Path, help="write a PNG of per-stage and per-backend latency")
    r.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds")
    r.add_argument("--images", type=int, help=f"LFW images to use (default {FULL_RUN.images}, quick {QUICK_RUN.images})")
    r.add_argument("--repeat", type=int,
                   help=f"timed calls per embed batch (default {FULL_RUN.repeat}, quick {QUICK_RUN.repeat})")  # fmt: skip
    r.add_argument("--threads", type=int, default=usable_cores(),
                   help="threads for onnxruntime and torch (default: all cores)")  # fmt: skip
    r.add_argument("--pause", type=float, default=0.5,
                   help="seconds of rest before each timing (idle thread pools stop spinning)")  # fmt: skip


def check_run_args(args: argparse.Namespace) -> None:
    """Validate `run`'s options (UsageError: exit 2 with the reason) and resolve models and sizes."""
    from evaluate.bench import ENGINE_SUFFIXES, FULL_RUN, QUICK_RUN, parse_backends
    from sdk.embed import default_model_path

    try:
        args.backends = parse_backends(args.backend)
    except ValueError as e:
        raise UsageError(f"--backend: {e}") from e
    for name in ("images", "repeat", "threads"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    if args.pause < 0:
        raise UsageError(f"--pause must be >= 0, got {args.pause}")
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise UsageError(f"--plot writes a PNG: give a path ending in .png, got {args.plot}")
    models = args.model or ([default_model_path()] if "onnxruntime" in args.backends else [])
    args.onnx_models, args.engines = [], []
    for path in models:
        if path.suffix.lower() == ".onnx":
            args.onnx_models.append(path)
        elif path.suffix.lower() in ENGINE_SUFFIXES:
            args.engines.append(path)
        else:
            engines = ", ".join(ENGINE_SUFFIXES)
            raise UsageError(f"--model {path}: expected an ONNX model (.onnx) or a TensorRT engine ({engines})")
    if args.onnx_models and "onnxruntime" not in args.backends:
        raise UsageError(f"--model {args.onnx_models[0]} is an ONNX model: add --backend onnxruntime to run it")
    if args.engines and "tensorrt" not in args.backends:
        raise UsageError(f"--model {args.engines[0]} is a TensorRT engine: add --backend tensorrt to run it")
    for path in models:
        if not path.is_file():
            hint = " (create the default model with `facesdk models install`)" if path == default_model_path() else ""
            raise UsageError(f"--model {path}: no such file{hint}")
    if args.precision and "tensorrt" not in args.backends:
        raise UsageError("--precision labels TensorRT engines (ONNX models carry theirs in metadata): add --backend tensorrt")
    base = QUICK_RUN if args.quick else FULL_RUN
    args.sizes = replace(base, images=args.images or base.images, repeat=args.repeat or base.repeat)


def run_cmd(args: argparse.Namespace) -> int:
    from evaluate import bench

    check_run_args(args)
    try:
        result = bench.bench_run(args, load_torch)
    except bench.BenchError as e:
        raise RuntimeError(str(e)) from e
    bench.print_run(result)
    if args.plot:
        bench.write_plot(result, args.plot)
        print(f"wrote {args.plot}")
    write_json(args.json, result)
    return 0


def kernels_cmd(args: argparse.Namespace) -> int:
    from evaluate import bench

    if args.repeat < 1:
        raise UsageError("--repeat must be >= 1")
    result = bench.bench_kernels(args)
    bench.print_kernels(result)
    write_json(args.json, result)
    return 0


def pipeline_cmd(args: argparse.Namespace) -> int:
    from evaluate import bench

    if args.repeat < 1 or args.gallery_size < 0:
        raise UsageError("--repeat must be >= 1 and --gallery-size >= 0")
    result = bench.bench_pipeline(args)
    bench.print_pipeline(result)
    write_json(args.json, result)
    return 0


def detector_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in ("yunet", "yunet+dlib5")]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"choose from yunet, yunet+dlib5, got {text!r}")
    return list(dict.fromkeys(names))


def frame_cmd(args: argparse.Namespace) -> int:
    from evaluate.frame_bench import bench_frame, print_frame

    for path in (args.model, args.int8):
        if path is not None and not path.is_file():
            raise UsageError(f"no model file {path}")
    result = bench_frame(args)
    print_frame(result)
    write_json(args.json, result)
    return 0


def align_cmd(args: argparse.Namespace) -> int:
    from evaluate.align_bench import bench_align, print_align

    try:
        import dlib  # noqa: F401 (the reference)
    except ImportError as e:
        raise UsageError(f"bench align compares with dlib-bin's own predictor and chip: pip install dlib-bin ({e})") from e
    result = bench_align(args)
    print_align(result)
    write_json(args.json, result)
    return 0


def ops_cmd(args: argparse.Namespace) -> int:
    from evaluate.op_profile import print_ops, profile_ops

    missing = [str(p) for p in args.models if not p.is_file()]
    if missing:
        raise UsageError(f"no model file {', '.join(missing)}")
    result = profile_ops(args.models, batch=args.batch, threads=args.threads, calls=args.calls)
    print_ops(result)
    write_json(args.json, result)
    return 0


def gallery_cmd(args: argparse.Namespace) -> int:
    from evaluate.gallery_bench import bench_gallery, print_gallery

    if args.seconds <= 0:
        raise UsageError("--seconds must be > 0")
    result = bench_gallery(args.size, args.seconds, args.dir, args.precision)
    print_gallery(result)
    write_json(args.json, result)
    return 0


def camera_cmd(args: argparse.Namespace) -> int:
    import tempfile

    from evaluate import camera_bench
    from sdk.paths import data_dir
    from sdk.verifier import Verifier

    try:
        every = [int(n) for n in args.every.split(",")]
    except ValueError:
        raise UsageError(f"--every takes integers, e.g. 1,2,3; got {args.every!r}") from None
    if any(n < 1 for n in every):
        raise UsageError("--every values must be >= 1")
    try:
        sides = [None if side == "full" else int(side) for side in args.detect_max_side.split(",")]
    except ValueError:
        raise UsageError(f"--detect-max-side takes 'full' or integers, got {args.detect_max_side!r}") from None
    with tempfile.TemporaryDirectory() as work, Verifier(gallery=None) as v:  # the default pipeline
        result = camera_bench.run(v, args.data or data_dir(), Path(work), every, sides, rounds=args.rounds)
    print("\n".join(camera_bench.lines(result)))
    write_json(args.json, result)
    return 0


def load_torch(threads: int):
    """dlib's ResNet-29 converted to PyTorch, wrapped in the very graph export.onnx exports
    (uint8 NHWC -> float NCHW -> network -> L2-normalised), so it computes what the ONNX file does."""
    import torch

    from evaluate import bench
    from export.onnx import ChipEmbedding
    from train.backbones.dlib_resnet import DlibResNet

    torch.set_num_threads(threads)
    net = ChipEmbedding(DlibResNet.from_dlib()).eval()

    def embed(chips: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return net(torch.from_numpy(chips)).numpy()

    return bench.Candidate("torch", "fp32", "DlibResNet.from_dlib", embed, {"threads": threads, "torch": torch.__version__})
