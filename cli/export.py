"""``facesdk export onnx|int8|trt|minifasnet``: model files for the runtime. onnx and minifasnet need
torch (the train extra), int8 onnxruntime's quantiser, trt TensorRT on the device; each loads
them when it runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from cli.common import UsageError, positive

QUANT_METHODS = ("entropy", "percentile", "minmax")
CPU_REWRITES = ("input", "stem", "shortcuts", "pads", "amx")  # export.int8_cpu.REWRITES, in order


def register(sub) -> None:
    from sdk.embed import default_model_path, default_pfe_model_path
    from sdk.tensorrt import PRECISIONS

    ex = sub.add_parser("export", help="model export: onnx (needs torch), int8, trt (needs TensorRT), minifasnet")
    verbs = ex.add_subparsers(dest="export_verb", metavar="{onnx,int8,trt,minifasnet}", required=True)

    onnx = verbs.add_parser("onnx", help="dlib's model, a PFE model or a trained checkpoint -> facesdk ONNX (needs torch)")
    kinds = onnx.add_subparsers(dest="onnx_kind", metavar="{default,pfe,checkpoint,check}", required=True)
    p = kinds.add_parser("default", help="dlib's ResNet-29 through torch (`facesdk models install` needs no torch)")
    p.add_argument("-o", "--output", type=Path, default=None, help=f"default: {default_model_path()}")
    p.set_defaults(run=onnx_default_cmd)
    p = kinds.add_parser("pfe", help="dlib's ResNet-29 + a trained PFE uncertainty head (outputs embedding, sigma_sq)")
    p.add_argument("--head", type=Path, default=None, help="head checkpoint (default: `facesdk train pfe train`'s)")
    p.add_argument("-o", "--output", type=Path, default=None, help=f"default: {default_pfe_model_path()}")
    p.set_defaults(run=onnx_pfe_cmd)
    p = kinds.add_parser("checkpoint", help="the backbone of a `facesdk train` checkpoint")
    p.add_argument("checkpoint", type=Path)
    p.add_argument("-o", "--output", type=Path, required=True)
    p.set_defaults(run=onnx_checkpoint_cmd)
    p = kinds.add_parser("check", help="parity and speed of an ONNX file against torch on LFW faces (needs dlib-bin)")
    p.add_argument("path", type=Path)
    p.add_argument("--faces", type=positive, default=32, help="faces for parity (at least the largest batch)")
    p.add_argument("--threads", type=positive, default=2)
    p.add_argument("--batch", type=positive, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeat", type=positive, default=20, help="timed calls per batch size; the best counts")
    p.set_defaults(run=onnx_check_cmd)

    # Spelled out, not imported: export.quantize loads onnx, too slow for every `facesdk` call
    # (tests/test_cli.py checks these against the library's).
    q = verbs.add_parser("int8", help="quantise an FP32 facesdk model to INT8 QDQ, calibrated on CelebA faces")
    q.add_argument("model", type=Path, help="FP32 facesdk ONNX model")
    q.add_argument("-o", "--output", type=Path, required=True, help="where to write the INT8 model")
    q.add_argument("--method", choices=QUANT_METHODS, help="range calibration (default percentile)")
    q.add_argument("--percentile", type=float, help="of |x|, for --method percentile (default 99.999)")
    q.add_argument("--count", type=positive, help="calibration faces (default 512)")
    q.add_argument("--calibration", default="celeba", help="labelled calibration set (not LFW)")
    q.add_argument("--keep-fp32", type=keep_fp32,
                   help="layers left in FP32: first, last, none, or node names (default first,last; --cpu: last)")  # fmt: skip
    q.add_argument("--per-tensor", action="store_true", help="one weight scale per layer instead of per channel")
    q.add_argument("--cpu", action="store_true",
                   help="for ONNX Runtime on CPUs: uint8 asymmetric activations, ReLUs fused (precision int8-cpu; "
                        "TensorRT refuses it). Default: symmetric int8 for TensorRT")  # fmt: skip
    q.add_argument("--rewrites", type=keep_fp32, metavar="LIST",
                   help=f"--cpu: graph rewrites for speed, of {','.join(CPU_REWRITES)} (default: all) or none")  # fmt: skip
    q.add_argument("--data", type=Path, default=None, help="data folder (default $FACESDK_DATA)")
    q.set_defaults(run=int8_cmd)

    t = verbs.add_parser("trt", help="a TensorRT engine from a facesdk ONNX model (on the device, needs TensorRT)")
    t.add_argument("onnx", type=Path, help="facesdk ONNX model (a QDQ model for --precision int8)")
    t.add_argument("--precision", choices=PRECISIONS, default="fp16")
    t.add_argument("--batch", type=batch_profile, default="1,8,32", metavar="MIN,OPT,MAX",
                   help="faces per call the engine accepts (min..max) and is tuned for (opt); default 1,8,32")  # fmt: skip
    t.add_argument("-o", "--output", type=Path, default=None, help="engine file (default: MODEL.PRECISION.engine)")
    t.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, loaded and saved")
    t.add_argument("--workspace-mib", type=positive, default=1024, help="TensorRT scratch memory limit")
    t.add_argument("--strongly-typed", action="store_true", help="precisions from the graph (int8 QDQ, fp32)")
    t.add_argument("--device", type=int, default=0, help="CUDA device to build on (and for)")
    t.set_defaults(run=trt_cmd)

    m = verbs.add_parser("minifasnet", help="the liveness models (MiniFASNet V2, V1SE) from their .pth files (needs torch)")
    m.add_argument("--from", dest="source", type=Path, default=None,
                   help="folder of the original .pth files (default $FACESDK_MODELS/minifasnet)")  # fmt: skip
    m.add_argument("-o", "--output", type=Path, default=None, help="folder to write to (default $FACESDK_HOME/models, where the runtime looks)")
    m.set_defaults(run=minifasnet_cmd)


def keep_fp32(text: str) -> tuple[str, ...]:  # also --rewrites: a comma list or "none"
    return () if text.strip().lower() == "none" else tuple(s.strip() for s in text.split(",") if s.strip())


def batch_profile(text: str):
    from export.tensorrt import parse_batch  # parsed only when `export trt` is the command

    try:
        return parse_batch(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


def onnx_default_cmd(args: argparse.Namespace) -> int:
    from export.onnx import export_dlib_default

    print(f"wrote {export_dlib_default(args.output)}")
    return 0


def onnx_pfe_cmd(args: argparse.Namespace) -> int:
    from export.onnx import export_pfe
    from train.pfe.features import default_head_path

    print(f"wrote {export_pfe(default_head_path() if args.head is None else args.head, args.output)}")
    return 0


def onnx_checkpoint_cmd(args: argparse.Namespace) -> int:
    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {args.checkpoint}")
    from export.onnx import export_checkpoint

    print(f"wrote {export_checkpoint(args.checkpoint, args.output)}")
    return 0


def onnx_check_cmd(args: argparse.Namespace) -> int:
    if not args.path.is_file():
        raise FileNotFoundError(f"no ONNX model at {args.path}")
    if args.faces < max(args.batch):
        raise UsageError(f"--faces {args.faces}: at least the largest --batch ({max(args.batch)})")
    from export.onnx import check

    check(args.path, args.faces, args.threads, args.batch, args.repeat)
    return 0


def int8_cmd(args: argparse.Namespace) -> int:
    from export.quantize import _kept_text, _method_text, quantization_info, quantize_int8

    given = {
        "count": args.count, "method": args.method, "percentile": args.percentile, "keep_fp32": args.keep_fp32,
        "rewrites": args.rewrites,
    }  # fmt: skip
    options = {name: value for name, value in given.items() if value is not None}  # else the library's defaults
    path = quantize_int8(
        args.model, args.output, calibration=args.calibration, per_channel=not args.per_tensor,
        target="cpu" if args.cpu else "tensorrt", data=args.data, **options,
    )  # fmt: skip
    info = quantization_info(path)
    print(f"{path}: {info['activations']} activations, {_method_text(info)}, {info['calibration']}, FP32 kept: {_kept_text(info)}")
    return 0


def trt_cmd(args: argparse.Namespace) -> int:
    from export.tensorrt import build_engine
    from sdk.tensorrt import read_engine_info, sidecar_path

    batch = args.batch
    output = args.output or args.onnx.with_suffix(f".{args.precision}.engine")
    path = build_engine(
        args.onnx,
        output,
        precision=args.precision,
        batch=batch,
        workspace_mib=args.workspace_mib,
        timing_cache=args.timing_cache,
        strongly_typed=args.strongly_typed,
        device=args.device,
    )
    info = read_engine_info(path)
    print(f"wrote {path} ({info['engine_bytes'] / 2**20:.1f} MiB) and {sidecar_path(path)}")
    print(
        f"TensorRT {info['tensorrt_version']}, {info['precision']}, batch {batch.min}..{batch.max} "
        f"(tuned for {batch.opt}), {info['gpu']['name']} sm {info['gpu']['compute_capability']}, "
        f"built in {info['build_seconds']:.1f} s"
    )
    print(f"check it: facesdk eval trt-parity {path}")
    return 0


def minifasnet_cmd(args: argparse.Namespace) -> int:
    from export.minifasnet import export_minifasnet
    from sdk.paths import home, models_dir, private_dir

    source = args.source or models_dir() / "minifasnet"
    out = args.output or private_dir(home()) / "models"
    for path in export_minifasnet(source, out):
        print(f"wrote {path}")
    return 0
