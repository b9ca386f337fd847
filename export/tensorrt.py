"""Build TensorRT engines from facesdk ONNX models, for ``sdk.tensorrt.TensorRTEmbedder``.

    facesdk export trt MODEL.onnx --precision fp16|int8|fp32 --batch MIN,OPT,MAX -o model.engine
                       [--timing-cache PATH] [--workspace-mib N] [--strongly-typed] [--device N]

Written against TensorRT 10's Python API (calls checked against the tensorrt-stubs 10.13
declarations, control flow exercised with a recording fake in tests/test_tensorrt.py). It has NOT
run on a real TensorRT: no machine it was written on could install the builder. See
docs/tensorrt.md for what to check on a device.

What it does:

* checks the ONNX first, without TensorRT: the facesdk contract (``sdk.embed``: input ``chip``
  uint8 [N, H, W, 3] consumed only by a Cast, since TensorRT takes uint8 only as a network
  input/output; output ``embedding`` [N, D] and, for PFE models, ``sigma_sq`` [N, D]; metadata),
  and the precision against the graph: ``int8`` needs an explicitly quantised (QDQ) model with
  symmetric int8 zero points; TensorRT's implicit INT8 calibration (deprecated since 10.1) is
  refused. ``fp16``/``fp32`` refuse a QDQ model (its Q/DQ nodes would force int8 anyway).
* one optimisation profile on the batch dimension, sized to faces per frame (default 1, 8, 32);
* precision: fp16 sets BuilderFlag.FP16; int8 sets INT8 and FP16 (QDQ layers in int8, the rest in
  fp16), or with ``--strongly-typed`` a strongly typed network that takes its precisions from
  the graph (TensorRT's recommended form from 10.12, where the precision flags are deprecated);
  fp32 clears TF32 so that fp32 means fp32;
* a timing cache loaded before and saved after the build (faster rebuilds on the same GPU);
* beside ``X.engine``, ``X.engine.json``: TensorRT version, GPU and compute capability,
  precision, profile, the ONNX's sha256 and metadata, build time (format in ``sdk.tensorrt``).

Engines are not portable: build on the device (or an identical GPU with the same TensorRT).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import onnx
from onnx import numpy_helper

import sdk
from sdk.embed import INPUT_NAME, OUTPUT_NAME, parse_metadata
from sdk.tensorrt import (
    OUTPUT_NAMES,
    PRECISIONS,
    SIDECAR_FORMAT,
    SIDECAR_VERSION,
    GpuInfo,
    gpu_info,
    import_cudart,
    import_tensorrt,
    sidecar_path,
    trt_logger,
    validate_engine_info,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH = (1, 8, 32)
DEFAULT_WORKSPACE_MIB = 1024
QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})
# ONNX's "QOperator" quantisation: integer ops TensorRT's parser does not take.
QOPERATOR_OPS = frozenset(
    {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd", "QLinearMul", "DynamicQuantizeLinear"}
)
MAKE_QDQ_HINT = (
    "make one with `facesdk export int8 MODEL.onnx -o MODEL.int8.onnx` (export/quantize.py), or ONNX Runtime's quantize_static with "
    "quant_format=QDQ, activation_type=weight_type=QInt8 and extra_options ActivationSymmetric=True, "
    "WeightSymmetric=True, QuantizeBias=False; then build it with --precision int8"
)


class BatchProfile(NamedTuple):
    """Batch sizes of the optimisation profile: TensorRT tunes for ``opt``, accepts min..max."""

    min: int
    opt: int
    max: int


# --- argument checks (no TensorRT needed) ---------------------------------------------------------


def check_batch(batch: Sequence[int]) -> BatchProfile:
    """``(min, opt, max)`` with 1 <= min <= opt <= max, as a BatchProfile; ValueError otherwise."""
    values = tuple(batch)
    if len(values) != 3 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values):
        raise ValueError(f"batch must be three integers (min, opt, max), got {batch!r}")
    low, opt, high = (int(v) for v in values)
    if not 1 <= low <= opt <= high:
        raise ValueError(f"batch sizes must satisfy 1 <= min <= opt <= max, got {low}, {opt}, {high}")
    return BatchProfile(low, opt, high)


def parse_batch(text: str) -> BatchProfile:
    """``"1,8,32"`` -> (1, 8, 32); ``"8"`` -> (8, 8, 8), a fixed batch."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
        raise ValueError(f"batch {text!r} is not MIN,OPT,MAX (e.g. 1,8,32) or one size")
    sizes = [int(p) for p in parts]
    return check_batch(sizes * 3 if len(sizes) == 1 else sizes)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def check_workspace(mib: int) -> int:
    if isinstance(mib, bool) or not isinstance(mib, int) or mib < 1:
        raise ValueError(f"workspace must be a positive number of MiB, got {mib!r}")
    return mib


# --- the ONNX model (no TensorRT needed) ----------------------------------------------------------


@dataclass(frozen=True)
class OnnxModel:
    """What the builder needs to know about a facesdk ONNX file."""

    path: Path
    sha256: str
    metadata: dict[str, str]
    input_size: tuple[int, int]
    embedding_dim: int
    fixed_batch: int | None  # the input's batch dimension when it is not dynamic
    outputs: tuple[str, ...]
    qdq_nodes: int  # QuantizeLinear + DequantizeLinear
    quantization_problems: tuple[str, ...]  # why TensorRT would refuse its quantisation


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str]:
    """A graph input/output's shape: ints, or the dimension's name ('?' if anonymous)."""
    shape = value_info.type.tensor_type.shape
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    values[node.output[0]] = numpy_helper.to_array(attr.t)
    return values


def quantization_problems(model: onnx.ModelProto) -> list[str]:
    """Why TensorRT would refuse this model's quantisation: QOperator nodes, or Q/DQ nodes that
    are not symmetric int8 (TensorRT needs zero points of 0 and signed int8 for INT8)."""
    graph = model.graph
    constants = _constants(graph)
    problems = []
    qoperators = sorted({n.op_type for n in graph.node if n.op_type in QOPERATOR_OPS})
    if qoperators:
        problems.append(
            f"QOperator-format nodes {', '.join(qoperators)}: TensorRT takes the QDQ format only "
            "(quantise with quant_format=QDQ)"
        )
    for node in graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        label = f"{node.op_type} {node.name or node.output[0]!r}"
        data = constants.get(node.input[0]) if node.op_type == "DequantizeLinear" else None
        if data is not None and data.dtype != np.int8:
            # ONNX Runtime quantises Conv/Gemm biases to int32 by default; TensorRT dequantises int8 only.
            bias = " (a quantised bias: quantise with extra_options QuantizeBias=False)" if data.dtype == np.int32 else ""
            problems.append(f"{label} dequantises {data.dtype} constants, TensorRT's INT8 is signed int8{bias}")
            continue
        zero_point_name = node.input[2] if len(node.input) > 2 else ""
        if not zero_point_name:
            output_dtype = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
            if node.op_type == "QuantizeLinear" and output_dtype in (0, onnx.TensorProto.UINT8):
                problems.append(f"{label} has no zero point, so it quantises to uint8 (ONNX's default)")
            continue
        zero_point = constants.get(zero_point_name)
        if zero_point is None:
            problems.append(f"{label}: zero point {zero_point_name!r} is not a constant")
        elif zero_point.dtype != np.int8:
            problems.append(f"{label}: zero point is {zero_point.dtype}, TensorRT's INT8 is signed int8")
        elif np.any(zero_point != 0):
            problems.append(f"{label}: zero point is not 0 (asymmetric); TensorRT's quantisation is symmetric")
    return problems


def inspect_onnx(path: str | os.PathLike[str]) -> OnnxModel:
    """Check ``path`` against the facesdk contract as TensorRT will see it; ValueError if it fails."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model {path} not found")
    try:
        model = onnx.load_model(path)
    except Exception as e:  # noqa: BLE001 - onnx raises DecodeError and others on a bad file
        raise ValueError(f"{path} is not an ONNX model ({e})") from e
    metadata = {p.key: p.value for p in model.metadata_props}
    (h, w), dim = parse_metadata(metadata, str(path))
    graph = model.graph
    initializers = {init.name for init in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    chip = [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in inputs]
    if len(inputs) != 1 or chip[0][0] != INPUT_NAME or chip[0][1] != onnx.TensorProto.UINT8:
        raise ValueError(f"{path}: expected one input {INPUT_NAME!r} uint8 [N, {h}, {w}, 3], found {chip}")
    shape = chip[0][2]
    if len(shape) != 4 or shape[1:] != [h, w, 3]:
        raise ValueError(f"{path}: input {INPUT_NAME!r} has shape {shape}, expected [N, {h}, {w}, 3]")
    fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
    consumers = sorted({n.op_type for n in graph.node if INPUT_NAME in n.input})
    if consumers != ["Cast"]:
        raise ValueError(
            f"{path}: input {INPUT_NAME!r} feeds {consumers}; TensorRT takes a uint8 input only through a Cast "
            "to float (export the model with export.onnx, which casts inside the graph)"
        )
    outputs = tuple(o.name for o in graph.output)
    if OUTPUT_NAME not in outputs or not set(outputs) <= set(OUTPUT_NAMES):
        raise ValueError(f"{path}: outputs {list(outputs)}, expected {OUTPUT_NAME!r} (and {OUTPUT_NAMES[1]!r} for PFE)")
    if (OUTPUT_NAMES[1] in outputs) != (metadata.get("uncertainty") == OUTPUT_NAMES[1]):
        raise ValueError(
            f"{path}: a {OUTPUT_NAMES[1]!r} output and the metadata uncertainty={OUTPUT_NAMES[1]} go together "
            f"(outputs {list(outputs)}, uncertainty={metadata.get('uncertainty')!r}); export PFE models with export.onnx"
        )
    for out in graph.output:
        if out.type.tensor_type.elem_type != onnx.TensorProto.FLOAT or _dims(out)[1:] != [dim]:
            raise ValueError(f"{path}: output {out.name!r} must be float32 [N, {dim}], found shape {_dims(out)}")
    qdq = sum(n.op_type in QDQ_OPS for n in graph.node)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return OnnxModel(path, digest, metadata, (h, w), dim, fixed_batch, outputs, qdq, tuple(quantization_problems(model)))


def check_model_for(model: OnnxModel, precision: str, batch: BatchProfile) -> None:
    """ValueError when ``model`` cannot be built at ``precision`` with ``batch``, saying what to do."""
    if precision == "int8":
        if model.qdq_nodes == 0:
            raise ValueError(
                f"{model.path} has no QuantizeLinear/DequantizeLinear nodes: --precision int8 builds only an "
                f"explicitly quantised (QDQ) ONNX, TensorRT's implicit INT8 calibration is not supported; {MAKE_QDQ_HINT}"
            )
        if model.quantization_problems:
            shown = "; ".join(model.quantization_problems[:3])
            more = len(model.quantization_problems) - 3
            raise ValueError(
                f"{model.path}: TensorRT cannot take this quantisation: {shown}"
                + (f" (and {more} more)" if more > 0 else "")
                + f"; {MAKE_QDQ_HINT}"
            )
    elif model.qdq_nodes:
        raise ValueError(
            f"{model.path} is quantised ({model.qdq_nodes} Q/DQ nodes), which TensorRT builds as int8 whatever the "
            f"flags: build it with --precision int8, or give the float model for {precision}"
        )
    if model.fixed_batch is not None and batch != (model.fixed_batch,) * 3:
        raise ValueError(
            f"{model.path} has a fixed batch of {model.fixed_batch}; use --batch {model.fixed_batch} or export it "
            "with a dynamic batch (export.onnx does)"
        )


def profile_shapes(batch: BatchProfile, input_size: tuple[int, int]) -> tuple[tuple[int, ...], ...]:
    """The (min, opt, max) shapes of ``chip`` for the optimisation profile."""
    h, w = input_size
    return tuple((size, h, w, 3) for size in batch)


def engine_metadata(
    model: OnnxModel,
    *,
    engine_path: Path,
    engine_sha256: str,
    engine_bytes: int,
    tensorrt_version: str,
    gpu: GpuInfo,
    precision: str,
    strongly_typed: bool,
    batch: BatchProfile,
    workspace_mib: int,
    build_seconds: float,
) -> dict[str, Any]:
    """The content of the engine's metadata file (format: ``sdk.tensorrt``), checked as the runtime checks it."""
    h, w = model.input_size
    shapes = profile_shapes(batch, model.input_size)
    info = {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "engine_file": engine_path.name,
        "engine_sha256": engine_sha256,
        "engine_bytes": engine_bytes,
        "tensorrt_version": tensorrt_version,
        "gpu": {"name": gpu.name, "compute_capability": gpu.compute_capability},
        "precision": precision,
        "strongly_typed": strongly_typed,
        "profile": {"input": INPUT_NAME, **{k: list(s) for k, s in zip(("min", "opt", "max"), shapes)}},
        "io": {
            INPUT_NAME: {"dtype": "uint8", "shape": [-1, h, w, 3]},
            **{name: {"dtype": "float32", "shape": [-1, model.embedding_dim]} for name in model.outputs},
        },
        "onnx": {
            "path": str(model.path.resolve()),
            "sha256": model.sha256,
            "qdq_nodes": model.qdq_nodes,
            "metadata": dict(model.metadata),
        },
        "workspace_mib": workspace_mib,
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(build_seconds, 3),
        "builder": f"facesdk {sdk.__version__} export.tensorrt",
    }
    validate_engine_info(info)
    return info


def _write_atomic(path: Path, data: bytes) -> None:
    """Write then rename, so no reader sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# --- the build (TensorRT) -------------------------------------------------------------------------


def _network_flags(trt: Any, strongly_typed: bool) -> int:
    # TensorRT 10 networks are always explicit-batch; STRONGLY_TYPED is the only flag we use.
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if strongly_typed else 0


def _configure(trt: Any, builder: Any, config: Any, precision: str, strongly_typed: bool, workspace_mib: int) -> None:
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)  # TF32 is on by default and rounds to 10-bit mantissas
    elif not strongly_typed:  # a strongly typed network takes its precisions from the graph: no flags
        config.set_flag(trt.BuilderFlag.FP16)
        if precision == "int8":
            config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ layers in int8, the layers between them in fp16
    fast = builder.platform_has_fast_int8 if precision == "int8" else builder.platform_has_fast_fp16
    if precision != "fp32" and not fast:
        log.warning("this GPU has no fast %s: the engine may be no faster than fp32", precision)


def _check_network(trt: Any, network: Any, model: OnnxModel) -> None:
    """The parsed network has the contract's tensors (TensorRT kept the uint8 input)."""
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = sorted(network.get_output(i).name for i in range(network.num_outputs))
    if [t.name for t in inputs] != [INPUT_NAME] or inputs[0].dtype != trt.DataType.UINT8:
        found = [(t.name, str(t.dtype)) for t in inputs]
        raise RuntimeError(f"TensorRT parsed {model.path} with inputs {found}, expected one uint8 {INPUT_NAME!r}")
    if outputs != sorted(model.outputs):
        raise RuntimeError(f"TensorRT parsed {model.path} with outputs {outputs}, expected {sorted(model.outputs)}")


def _timing_cache(config: Any, path: Path | None) -> Any:
    """Attach the timing cache stored at ``path`` (a new one if absent or made elsewhere)."""
    data = path.read_bytes() if path is not None and path.is_file() else b""
    cache = config.create_timing_cache(data)
    if cache is None or not config.set_timing_cache(cache, False):
        log.warning("timing cache %s is from another GPU or TensorRT version; starting a new one", path)
        cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, False)
    return cache  # the caller keeps it alive until the build is over


def build_engine(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    precision: str = "fp16",
    batch: Sequence[int] = DEFAULT_BATCH,
    workspace_mib: int = DEFAULT_WORKSPACE_MIB,
    timing_cache: str | os.PathLike[str] | None = None,
    strongly_typed: bool = False,
    device: int = 0,
) -> Path:
    """Build a TensorRT engine of the facesdk ONNX model ``onnx_path`` into ``out_path`` and write
    its metadata file beside it; returns ``out_path``.

    ``batch``: (min, opt, max) faces per call. ``workspace_mib``: TensorRT's scratch memory limit.
    ``timing_cache``: file loaded before and saved after the build. ``strongly_typed``: take
    precisions from the graph (int8 or fp32 only). Everything checkable without TensorRT is checked
    before TensorRT is imported.
    """
    precision = check_precision(precision)
    profile = check_batch(batch)
    workspace_mib = check_workspace(workspace_mib)
    if strongly_typed and precision == "fp16":
        raise ValueError(
            "a strongly typed network takes its types from the ONNX, which is float32: fp16 needs the FP16 "
            "builder flag, so drop --strongly-typed"
        )
    out_path = Path(out_path)
    if out_path.suffix == ".json" or out_path.suffix == ".onnx":
        raise ValueError(f"output {out_path} would clash with a model or metadata file; name it *.engine")
    cache_path = Path(timing_cache) if timing_cache is not None else None
    model = inspect_onnx(onnx_path)
    check_model_for(model, precision, profile)

    trt = import_tensorrt()
    gpu = gpu_info(import_cudart(), device)  # also makes `device` the one TensorRT builds on
    log.info("building %s %s engine of %s on %s (sm %s)", precision, profile, model.path, gpu.name, gpu.compute_capability)
    start = time.perf_counter()
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt, strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(model.path.read_bytes(), str(model.path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT {trt.__version__} could not parse {model.path}: {errors}")
    _check_network(trt, network, model)
    config = builder.create_builder_config()
    _configure(trt, builder, config, precision, strongly_typed, workspace_mib)
    optimization_profile = builder.create_optimization_profile()
    optimization_profile.set_shape(INPUT_NAME, *profile_shapes(profile, model.input_size))
    if config.add_optimization_profile(optimization_profile) < 0:
        raise RuntimeError(f"TensorRT rejected the optimisation profile {profile} for {model.path}")
    cache = _timing_cache(config, cache_path)  # must stay alive until the build is over
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build {model.path} (see its log above)")
    blob = bytes(memoryview(serialized))
    seconds = time.perf_counter() - start
    # The build adds its timings to the attached cache; save what the config now holds.
    timings = bytes(memoryview(config.get_timing_cache().serialize())) if cache_path is not None else b""
    del cache

    info = engine_metadata(
        model,
        engine_path=out_path,
        engine_sha256=hashlib.sha256(blob).hexdigest(),
        engine_bytes=len(blob),
        tensorrt_version=trt.__version__,
        gpu=gpu,
        precision=precision,
        strongly_typed=strongly_typed,
        batch=profile,
        workspace_mib=workspace_mib,
        build_seconds=seconds,
    )
    _write_atomic(out_path, blob)
    _write_atomic(sidecar_path(out_path), (json.dumps(info, indent=2) + "\n").encode())
    if cache_path is not None:
        _write_atomic(cache_path, timings)
    return out_path
