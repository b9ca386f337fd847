"""INT8 post-training quantisation of facesdk embedding models (QDQ ONNX), and its LFW comparison.

    facesdk export int8 MODEL -o OUT [--method percentile|minmax|entropy] [--count N]
                                          [--keep-fp32 first,last|none|NODE,...] [--per-tensor] [--cpu]
    facesdk eval int8 FP32 INT8 [--pairs FILE] [--json PATH]

The result is an ordinary facesdk model file (same ``chip`` uint8 input, same unit ``embedding``
output, the FP32 file's metadata plus ``precision=int8`` and ``quantization``), so
``sdk.embed.OnnxEmbedder`` loads it unchanged and ONNX Runtime runs it on CPU with integer kernels;
it is written for TensorRT's explicit quantisation as it is (never run on TensorRT here: no
builder on these machines). The choices, and why:

* QDQ format: QuantizeLinear/DequantizeLinear pairs around float ops, which TensorRT consumes and
  ONNX Runtime fuses into QLinearConv/QLinearAdd.
* Symmetric INT8 everywhere (activations QInt8, ``ActivationSymmetric``/``WeightSymmetric``, zero
  point 0): TensorRT's parser takes only INT8 Q/DQ with a zero point of 0 (no UINT8 activations,
  no asymmetric ranges). UINT8 activations would give post-ReLU tensors one more bit on CPU but
  make the file useless for TensorRT.
* Weights per output channel (axis 0 of each Conv weight; axis 1 of the fc weight if quantised).
* Float32 biases (``QuantizeBias=False``): TensorRT's DequantizeLinear takes INT8/FP8/INT4/FP4, not
  the INT32 biases ONNX Runtime writes by default (ONNX Runtime quantises float biases itself).
* One Q/DQ pair per consumer (``DedicatedQDQPair``), each with its own scale initializers
  (:func:`_unshare_qdq_parameters`): otherwise ONNX Runtime merges the pairs of a tensor read by a
  conv and by a shortcut, and a shared Q blocks the fusion (measured: 14 of 28 convs fused and
  INT8 slower than FP32; with unshared pairs all 28 convs and 14 residual Adds are fused).
* ``quant_pre_process`` first: it folds each conv's affine (dlib's batch norm, exported as Mul +
  Add) into the conv, so the per-channel weight scales absorb it, and folds the constant pad
  subgraphs. Without it (measured on LFW DevTest): mean |distance change| 0.0058 instead of 0.0041
  and 1.13x the FP32 speed instead of about 2x (the affines run in float between Q/DQ).
* ``--cpu`` (``target="cpu"``) writes the variant for ONNX Runtime on CPUs instead, beside the
  TensorRT one (``TARGETS``): uint8 activations with asymmetric ranges, so each ReLU's range
  starts at the uint8 zero point and the ReLU folds into the Q before it (ONNX Runtime's
  QLinearConv/QLinearAdd then apply it for free), one Q per tensor (what lets every residual Add
  fuse once the ReLUs are gone), the first conv quantised too (normalised uint8 pixels fit
  uint8's levels), ``precision=int8-cpu``, and then the graph rewrites of ``export.int8_cpu``
  for batch-1 speed (the uint8 chip straight into the first conv, which runs over the chip's
  space-to-depth; down-sampling shortcuts as convs; pads on uint8; zero point -1 on the deep
  convs' weights), recorded as ``rewrites``.
  TensorRT refuses it (``export.tensorrt`` checks).
* Only Conv, the residual Add, the pools, Pad and the fc (MatMul, unless kept in FP32) are
  quantised. The uint8 cast and normalisation (Cast, Transpose, Sub, Mul), the global pooling and
  the L2-normalisation tail (ReduceL2, Clip, Div) never are, nor the fc's output.
* ``keep_fp32=("first", "last")``: the first conv (normalised pixels in) and the fc stay FP32.
  Measured, they matter little (cosine 0.99940 with both kept, 0.99931 with none).

Calibration: real face chips from the CelebA subset (never LFW, whose pairs are the test), cut
with the SDK's own detector and aligner exactly as at run time; ranges from ONNX Runtime's
calibrators, collected batch by batch (bounded memory) and handed to ``quantize_static`` as a
calibration cache. The default method was chosen on LFW View 1 (the protocol's development view;
512 CelebA faces; FP32 vs INT8 of the same 1,549 DevTest / 3,443 DevTrain faces):

    method                  DevTest cosine     mean |distance change|   DevTrain accuracy
                            mean / min         DevTest / DevTrain       (FP32 98.95 %)
    percentile 99.999 %     0.99940 / 0.9911   0.0041 / 0.0044          98.95 %
    percentile 99.9999 %    0.99909 / 0.9981   0.0053 / 0.0053          98.86 %
    minmax                  0.99892 / 0.9975   0.0054 / 0.0055          98.86 %
    entropy (128 levels)    0.99617 / 0.9692   0.0122 / -               -

Percentile has the smallest distortion on average; its tail (a few faces down to cosine 0.988)
is worse than minmax's (0.997). Entropy (KL divergence, TensorRT's calibrator) distorts three
times more and loses TAR (with 255 levels: cosine mean 0.958). Per-tensor weights raised the mean
distance change from 0.0041 to 0.0050; 256 or 1,024 calibration faces gave 0.0044. On LFW
``pairs.txt`` (``compare``): FP32 99.03 +- 0.36 %, INT8 98.88 +- 0.40 %, AUC 0.99926 / 0.99928.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from export.int8_cpu import REWRITES, rewrite_for_cpu
from sdk.chips import DEFAULT_CHIP, ChipScheme, central_chip
from sdk.embed import INPUT_NAME, parse_metadata, save_model_atomic

METHODS = ("entropy", "percentile", "minmax")
DEFAULT_METHOD = "percentile"  # chosen by measurement on LFW View 1, see the module docstring
DEFAULT_COUNT = 512
DEFAULT_KEEP_FP32 = ("first", "last")
# Ops whose tensors get Q/DQ. Everything else (input normalisation, global pooling, the L2 tail)
# stays float; MatMul/Gemm is the fc, left alone when kept in FP32. Relu is not listed: its input
# and output are quantised anyway where a quantised op reads them (ONNX Runtime has no INT8 Relu,
# TensorRT fuses it into the conv), and listing it only adds a Q/DQ before the global pooling.
QUANTIZED_OPS = ("Conv", "MatMul", "Gemm", "Add", "MaxPool", "AveragePool", "Pad")
WEIGHTED_OPS = ("Conv", "MatMul", "Gemm")
DEFAULT_PERCENTILE = 99.999  # of |x|, for method="percentile" (ONNX Runtime's default)
# Levels the entropy calibrator spreads over [-t, t]: 128 measured better here than 255 (the
# equivalent of TensorRT's 128 levels of |x|); both lose to percentile and minmax.
ENTROPY_QUANTIZED_BINS = 128
CALIBRATION_BATCH = 32  # faces per calibration forward pass (bounds the calibrator's memory)
QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "DedicatedQDQPair": True,
    "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"],
    "QDQOpTypePerChannelSupportToAxis": {"MatMul": 1},  # the fc weight is [in, out]
}


@dataclass(frozen=True)
class Target:
    """What an INT8 file is for: the activation type and ranges, and the precision it is marked with."""

    name: str
    precision: str  # metadata ``precision``: the gallery keeps one network per precision
    symmetric: bool  # activation ranges symmetric about 0 (zero point 0)
    ops: tuple[str, ...]
    dedicated_pairs: bool  # one Q/DQ pair per consumer of a tensor, else one Q per tensor
    keep_fp32: tuple[str, ...]  # the default layers left in FP32
    activations: str  # for the ``quantization`` record
    rewrites: tuple[str, ...] = ()  # export.int8_cpu rewrites applied to the QDQ graph


TARGETS = {
    # TensorRT: int8 activations with zero point 0, the only Q/DQ its parser takes.
    "tensorrt": Target("tensorrt", "int8", True, QUANTIZED_OPS, True, DEFAULT_KEEP_FP32, "int8 symmetric per-tensor"),
    # ONNX Runtime on CPUs: uint8 activations with asymmetric ranges. A ReLU's output range starts
    # at 0, the uint8 zero point, so the quantiser drops each ReLU into the Q of the op before it
    # (Relu is listed for that), and every conv and residual add then runs with its ReLU fused;
    # post-ReLU tensors also get all 256 levels instead of the 128 of [0, t] in symmetric int8.
    # One Q per tensor: with the ReLU gone, a residual Add's output feeds the next block's conv and
    # its shortcut directly, and ONNX Runtime fuses an Add only when one Q reads it (dedicated
    # pairs left 13 of 14 Adds in float). The first conv is quantised too: its input, normalised
    # uint8 pixels, fits uint8's 256 levels as it is, and in FP32 it cost more than it saved
    # (its float output had to be reordered and quantised; measured 1.60 vs 1.13 ms per face).
    # TensorRT refuses this file (uint8, non-zero zero points): export.tensorrt checks it.
    # Then export.int8_cpu's rewrites (input fold, stem, shortcuts, pads, amx) for batch-1 speed.
    "cpu": Target(
        "cpu", "int8-cpu", False, (*QUANTIZED_OPS, "Relu"), False, ("last",), "uint8 asymmetric per-tensor", tuple(REWRITES)
    ),
}
DEFAULT_TARGET = "tensorrt"


@dataclass(frozen=True)
class CalibrationChips:
    """Aligned uint8 RGB chips [N, H, W, 3] for calibration and where they came from."""

    chips: np.ndarray
    source: str  # e.g. "celeba (512 faces of 186 identities, detector yunet_n_dynamic, seed 0)"


# --- calibration data ------------------------------------------------------------------------------


def calibration_chips(
    name: str = "celeba",
    count: int = DEFAULT_COUNT,
    *,
    data: Path | None = None,
    detector: Any = None,
    scheme: ChipScheme = DEFAULT_CHIP,
    seed: int = 0,
    progress: bool = True,
) -> CalibrationChips:
    """``count`` aligned face chips from a labelled calibration set (never LFW's test pairs).

    Images are drawn in a seeded random order (so they spread over the identities), the central
    face of each is detected and cut by ``sdk.chips`` into ``scheme``; images without a detected
    face are skipped, not guessed.
    """
    import cv2
    from tqdm import tqdm

    from evaluate.calibration import labelled_images
    from sdk.detect import default_detector
    from sdk.paths import data_dir

    if name == "lfw" or name.startswith("lfw"):
        raise ValueError(f"calibration set {name!r}: LFW holds the test pairs; calibrate on 'celeba'")
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    root = data_dir() if data is None else Path(data)
    try:
        paths, labels = labelled_images(root, name)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"calibration set {name!r} not found under {root} ({e.filename}); set FACESDK_DATA"
        ) from e
    if detector is None:
        detector, _ = default_detector()
    order = np.random.default_rng(seed).permutation(len(paths))
    chips: list[np.ndarray] = []
    identities: set[int] = set()
    bar = tqdm(total=min(count, len(paths)), desc=f"calibration faces ({name})", unit="face", disable=not progress)
    with bar:
        for i in order:
            if len(chips) == count:
                break
            image = cv2.imread(str(paths[i]), cv2.IMREAD_COLOR)
            if image is None:
                raise ValueError(f"cannot read calibration image {paths[i]}")
            found = central_chip(image, detector, scheme)
            if found is None:
                continue
            chips.append(found[0])
            identities.add(int(labels[i]))
            bar.update()
    if len(chips) < count:
        raise ValueError(f"{name}: only {len(chips)} faces found in {len(paths)} images, {count} asked for")
    source = f"{name} ({count} faces of {len(identities)} identities, detector {detector.name}, seed {seed})"
    return CalibrationChips(np.stack(chips), source)


class _ChipReader:
    """ONNX Runtime CalibrationDataReader over a slice of chips, in batches."""

    def __init__(self, chips: np.ndarray, batch: int) -> None:
        self._batches = iter([chips[i : i + batch] for i in range(0, len(chips), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch)}

    def __iter__(self) -> _ChipReader:  # ONNX Runtime's SmoothQuant path iterates readers
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        item = self.get_next()
        if item is None:
            raise StopIteration
        return item


def _tensor_ranges(
    model_path: Path, chips: np.ndarray, method: str, percentile: float, target: Target, workdir: Path, progress: bool
) -> tuple[Any, Any]:
    """Activation ranges of the pre-processed model over the chips (ONNX Runtime's calibrators),
    collected chunk by chunk so that memory stays bounded (the calibrator keeps every tensor of
    every batch it has not yet folded into its histograms)."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator
    from tqdm import tqdm

    calibrate_method = {
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
        "minmax": CalibrationMethod.MinMax,
    }[method]
    # TensorRT's ranges are symmetric; the CPU target's follow each tensor's own min and max
    # (percentile: (100 - p) / 2 % cut from each tail).
    options: dict[str, Any] = {"symmetric": target.symmetric}
    if method == "entropy":
        # A 2048-bin histogram as TensorRT's entropy calibrator; ONNX Runtime's default of 128 bins
        # for 128 levels leaves a single candidate range (max |x|), so it would be minmax.
        options.update(num_bins=2048, num_quantized_bins=ENTROPY_QUANTIZED_BINS)
    elif method == "percentile":
        options.update(num_bins=2048, percentile=percentile)
    calibrator = create_calibrator(
        model_path,
        list(target.ops),
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=calibrate_method,
        extra_options=options,
    )
    quiet = io.StringIO()  # the calibrators print their settings; the progress bar says enough
    for start in tqdm(
        range(0, len(chips), CALIBRATION_BATCH), desc=f"calibrating ({method})", unit="batch", disable=not progress
    ):
        with contextlib.redirect_stdout(quiet):
            calibrator.collect_data(_ChipReader(chips[start : start + CALIBRATION_BATCH], CALIBRATION_BATCH))
    with contextlib.redirect_stdout(quiet):
        return calibrate_method, calibrator.compute_data()


# --- quantisation ------------------------------------------------------------------------------------


def _weighted_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes in graph (topological) order."""
    return [n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS]


def _resolve_keep_fp32(keep_fp32: Sequence[str], model: onnx.ModelProto) -> list[str]:
    """Node names for ``keep_fp32`` entries: "first"/"last" weighted layer, or node names."""
    weighted = _weighted_nodes(model)
    if not weighted:
        raise ValueError("the model has no Conv, MatMul or Gemm node to quantise")
    names = {n.name for n in model.graph.node}
    out: list[str] = []
    for entry in keep_fp32:
        if entry == "first":
            node = weighted[0]
        elif entry == "last":
            node = weighted[-1]
        elif entry in names:
            node = entry
        else:
            raise ValueError(f"keep_fp32: {entry!r} is neither 'first', 'last' nor a node of the model")
        if node not in out:
            out.append(node)
    return out


def _unshare_qdq_parameters(model: onnx.ModelProto) -> None:
    """Give each Q/DQ pair its own scale and zero-point initializers.

    ``DedicatedQDQPair`` writes one Q/DQ pair per consumer of a tensor (TensorRT wants that on
    ResNet shortcuts), but the pairs share their scale initializers, so ONNX Runtime's common
    subexpression elimination merges them back into one Q feeding two DQs, and a Q shared by two
    node groups blocks its QDQ fusion: each block's first conv (whose input also feeds the shortcut)
    then runs in float, and so does the residual Add. Measured here: 14 of 28 convs fused, INT8
    slower than FP32; with unshared parameters all 28 convs and 14 Adds run as integer kernels.
    """
    initializers = {i.name: i for i in model.graph.initializer}
    quantize_nodes = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    users = Counter(name for n in quantize_nodes for name in n.input[1:] if name in initializers)
    dequantize_of: dict[str, list[onnx.NodeProto]] = {}
    for n in model.graph.node:
        if n.op_type == "DequantizeLinear":
            dequantize_of.setdefault(n.input[0], []).append(n)
    seen: Counter[str] = Counter()
    for q in quantize_nodes:
        for k in range(1, len(q.input)):
            name = q.input[k]
            if users[name] < 2:
                continue
            seen[name] += 1
            if seen[name] == 1:  # the first pair keeps the original
                continue
            copy = onnx.TensorProto()
            copy.CopyFrom(initializers[name])
            copy.name = f"{name}_pair{seen[name]}"
            model.graph.initializer.append(copy)
            q.input[k] = copy.name
            for dq in dequantize_of.get(q.output[0], []):
                if len(dq.input) > k and dq.input[k] == name:
                    dq.input[k] = copy.name


def _used_opsets(model: onnx.ModelProto) -> None:
    """Drop opset imports no node uses (pre-processing adds ONNX Runtime's private domains, which
    other consumers, TensorRT among them, need not know)."""
    used = {n.domain for n in model.graph.node} | {""}
    keep = [o for o in model.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def quantize_int8(
    fp32_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    calibration: str | np.ndarray | CalibrationChips = "celeba",
    count: int = DEFAULT_COUNT,
    method: str = DEFAULT_METHOD,
    percentile: float = DEFAULT_PERCENTILE,
    keep_fp32: Sequence[str] | None = None,
    per_channel: bool = True,
    target: str = DEFAULT_TARGET,
    rewrites: Sequence[str] | None = None,
    progress: bool = True,
    data: Path | None = None,
) -> Path:
    """Quantise a facesdk FP32 model to INT8 QDQ at ``out_path``; returns ``out_path``.

    ``calibration``: a labelled set's name (``"celeba"``; ``count`` faces are cut from it), or
    aligned uint8 chips [N, H, W, 3] of your own (a ``CalibrationChips`` or a bare array).
    ``method``: how activation ranges are read from the calibration tensors: ``percentile`` (the
    ``percentile`` of |x|, default), ``minmax`` (max |x|) or ``entropy`` (KL divergence).
    ``keep_fp32``: layers left in FP32: ``"first"`` (first conv), ``"last"`` (last weighted layer,
    the fc), or node names; ``()`` quantises every conv and the fc; None: the target's default
    (``first, last`` for TensorRT, ``last`` for the CPU). ``per_channel``: one weight
    scale per output channel (else per layer). ``target``: ``"tensorrt"`` (default: symmetric
    int8 activations, ``precision=int8``, what TensorRT builds; ONNX Runtime runs it too) or
    ``"cpu"`` (uint8 asymmetric activations with the ReLUs fused, ``precision=int8-cpu``: ONNX
    Runtime on CPUs only, faster there; TensorRT refuses it). ``rewrites``: the
    ``export.int8_cpu`` graph rewrites to apply (names of ``REWRITES``; None: the target's, all of
    them for ``cpu``, none for ``tensorrt``). ``data``: the data folder (default $FACESDK_DATA).

    The metadata is the FP32 model's, ``threshold``/``threshold_table`` included and unchanged
    (calibrated on FP32; for the default model INT8 moves them by +0.001 to +0.002, see
    ``facesdk calibrate --model``), plus ``precision=int8`` and ``quantization`` (JSON: method,
    calibration set and count, excluded nodes, types, target). The file passes ``onnx.checker`` and is
    loaded by ``OnnxEmbedder`` before this returns. Raises FileNotFoundError (model or
    calibration set absent) or ValueError (not an FP32 facesdk model, bad arguments); nothing is
    written then.
    """
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from sdk.embed import OnnxEmbedder

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if target not in TARGETS:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
    spec = TARGETS[target]
    chosen_rewrites = spec.rewrites if rewrites is None else tuple(rewrites)
    unknown = [name for name in chosen_rewrites if name not in REWRITES]
    if unknown:
        raise ValueError(f"unknown rewrite(s) {', '.join(unknown)}; known: {', '.join(REWRITES)}")
    if chosen_rewrites and target != "cpu":
        raise ValueError(f"the graph rewrites are for target 'cpu' (ONNX Runtime), not {target!r}")
    if not 50 < percentile <= 100:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    if not fp32_path.is_file():
        raise FileNotFoundError(f"model file {fp32_path} not found")
    if out_path.resolve() == fp32_path.resolve():
        raise ValueError(f"{out_path}: write the INT8 model next to the FP32 one, not over it")
    model = onnx.load_model(fp32_path)
    metadata = {p.key: p.value for p in model.metadata_props}
    (h, w), _ = parse_metadata(metadata, str(fp32_path))  # ValueError: not a facesdk model
    if metadata.get("precision", "fp32") != "fp32":
        raise ValueError(
            f"{fp32_path}: already quantised (precision={metadata['precision']}); start from the FP32 model"
        )

    if isinstance(calibration, str):
        scheme = ChipScheme.parse(metadata["chip_scheme"])
        calib = calibration_chips(calibration, count, data=data, scheme=scheme, progress=progress)
    elif isinstance(calibration, CalibrationChips):
        calib = calibration
    else:
        chips = np.asarray(calibration)
        calib = CalibrationChips(chips, f"custom ({len(chips)} faces)")
    if calib.chips.dtype != np.uint8 or calib.chips.ndim != 4 or calib.chips.shape[1:] != (h, w, 3):
        found = f"{calib.chips.dtype} {calib.chips.shape}"
        raise ValueError(f"calibration chips must be uint8 [N, {h}, {w}, 3], got {found}")
    if len(calib.chips) == 0:
        raise ValueError("no calibration chips")

    with tempfile.TemporaryDirectory(prefix="facesdk-int8-") as tmp:
        workdir = Path(tmp)
        prepared = workdir / "prepared.onnx"
        quant_pre_process(model, prepared)
        prepared_model = onnx.load_model(prepared)
        excluded = _resolve_keep_fp32(spec.keep_fp32 if keep_fp32 is None else keep_fp32, prepared_model)
        calibrate_method, ranges = _tensor_ranges(prepared, calib.chips, method, percentile, spec, workdir, progress)
        cache = workdir / "ranges.json"
        save_tensors_data(ranges, cache)
        quantized = workdir / "int8.onnx"
        quantize_static(
            prepared,
            quantized,
            calibration_data_reader=None,
            calibration_cache_path=cache,
            calibrate_method=calibrate_method,
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if spec.symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=per_channel,
            op_types_to_quantize=list(spec.ops),
            nodes_to_exclude=excluded,
            extra_options={**QDQ_OPTIONS, "ActivationSymmetric": spec.symmetric, "DedicatedQDQPair": spec.dedicated_pairs},
        )
        result = onnx.load_model(quantized)

    _unshare_qdq_parameters(result)
    rewritten = rewrite_for_cpu(result, chosen_rewrites)
    _used_opsets(result)
    record = {
        "method": method,
        **({"percentile": percentile} if method == "percentile" else {}),
        "calibration": calib.source,
        "calibration_count": len(calib.chips),
        "excluded_nodes": excluded,
        "format": "QDQ",
        "target": spec.name,
        "activations": spec.activations,
        "weights": f"int8 symmetric {'per-channel' if per_channel else 'per-tensor'}",
        "bias": "float32",
        **({"rewrites": {name: n for name, n in rewritten.items() if n}} if target == "cpu" else {}),
        "tool": f"onnxruntime {_ort_version()} quantize_static after quant_pre_process",
    }
    meta = {k: v for k, v in metadata.items()}
    meta.update(precision=spec.precision, quantization=json.dumps(record))
    onnx.helper.set_model_props(result, meta)
    onnx.checker.check_model(result, full_check=True)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    save_model_atomic(result, out_path)
    OnnxEmbedder(out_path)  # the runtime must accept it as it is (raises otherwise)
    return out_path


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def quantization_info(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``quantization`` record of an INT8 file ({} for an FP32 one)."""
    meta = {p.key: p.value for p in onnx.load_model(Path(path), load_external_data=False).metadata_props}
    return json.loads(meta["quantization"]) if "quantization" in meta else {}


# --- comparison on LFW -------------------------------------------------------------------------------


class _BothModels:
    """An embedder for evaluate.lfw.embed_images that runs two models on the same chips and returns
    their embeddings side by side ([N, 2D]), timing each at full batches (alternating which runs
    first, so that neither always meets a cold cache or the other's idle threads)."""

    def __init__(self, fp32: Any, int8: Any, batch: int) -> None:
        self.fp32, self.int8, self.batch = fp32, int8, batch
        self.metadata = fp32.metadata  # the chip both models take
        self.seconds = {"fp32": 0.0, "int8": 0.0}
        self.timed_faces = 0
        self._calls = 0

    def embed(self, chips: np.ndarray) -> np.ndarray:
        if self._calls == 0:  # warm-up: first calls allocate and pick kernels
            self.fp32.embed(chips)
            self.int8.embed(chips)
        order = ("fp32", "int8") if self._calls % 2 == 0 else ("int8", "fp32")
        out: dict[str, np.ndarray] = {}
        for name in order:
            start = time.perf_counter()
            out[name] = getattr(self, name).embed(chips)
            elapsed = time.perf_counter() - start
            if len(chips) == self.batch:
                self.seconds[name] += elapsed
        if len(chips) == self.batch:
            self.timed_faces += len(chips)
        self._calls += 1
        return np.hstack([out["fp32"], out["int8"]])


def _verification_dict(v: Any) -> dict[str, Any]:
    return {
        "accuracy": v.accuracy,
        "accuracy_std": v.accuracy_std,
        "fold_accuracy": v.fold_accuracy.tolist(),
        "tar_at_far": v.tar_at_far,
        "far": v.far,
        "threshold_at_far": v.threshold_at_far,
        "auc": v.auc,
        "eer": v.eer,
        "threshold": v.threshold,
    }


def compare(
    fp32_path: str | os.PathLike[str],
    int8_path: str | os.PathLike[str],
    *,
    pairs_file: str | os.PathLike[str] | None = None,
    data: Path | None = None,
    detector: Any = None,
    batch: int = 32,
    threads: int | None = None,
    far: float = 1e-3,
    progress: bool = True,
) -> dict[str, Any]:
    """FP32 vs INT8 on LFW pairs (default ``pairs.txt``, 10 folds): every image is detected and
    aligned once and the same chip embedded by both models.

    Returns a dict: per mode (``fp32``, ``int8``, ``mixed`` = first image of each pair from FP32,
    second from INT8, as an FP32 gallery meeting INT8 probes) the 10-fold accuracy, TAR at ``far``,
    AUC, EER; the cosine between the two models' embeddings of each face (mean, min, 1st
    percentile); the mean |distance change| over the pairs; ms per face of each model at ``batch``
    (same run, alternating) and their ratio.
    """
    from evaluate import lfw
    from sdk.paths import data_dir
    from sdk.detect import default_detector
    from sdk.embed import OnnxEmbedder

    root = data_dir() if data is None else Path(data)
    pairs_file = root / "lfw" / "pairs.txt" if pairs_file is None else Path(pairs_file)
    if not pairs_file.is_file():
        raise FileNotFoundError(f"LFW pairs file {pairs_file} not found; set FACESDK_DATA")
    fp32, int8 = OnnxEmbedder(fp32_path, threads=threads), OnnxEmbedder(int8_path, threads=threads)
    if (fp32.input_size, fp32.embedding_dim) != (int8.input_size, int8.embedding_dim):
        raise ValueError(f"{fp32_path} and {int8_path} differ in input size or embedding dimension")
    pairs = lfw.read_pairs(pairs_file, root / "lfw" / "images_deepfunneled")
    images = pairs.images()
    if detector is None:
        detector, _ = default_detector()
    both = _BothModels(fp32, int8, batch)
    embedded = lfw.embed_images(images, detector, both, batch=batch, progress=progress)
    d = fp32.embedding_dim
    e32, e8 = embedded.embeddings[:, :d].astype(np.float64), embedded.embeddings[:, d:].astype(np.float64)
    row = {p: i for i, p in enumerate(images)}
    left, right = [row[p] for p in pairs.left], [row[p] for p in pairs.right]

    def dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return ((a[left] - b[right]) ** 2).sum(1)

    distances = {"fp32": dist(e32, e32), "int8": dist(e8, e8), "mixed": dist(e32, e8)}
    cosine = (e32 * e8).sum(1) / (np.linalg.norm(e32, axis=1) * np.linalg.norm(e8, axis=1))
    ms = {name: s / max(both.timed_faces, 1) * 1e3 for name, s in both.seconds.items()}
    return {
        "fp32_model": str(fp32_path),
        "int8_model": str(int8_path),
        "quantization": quantization_info(int8_path),
        "pairs": str(pairs_file),
        "n_pairs": len(pairs),
        "n_images": len(images),
        "images_without_face": int(embedded.failed.sum()),
        "detector": detector.name,
        "modes": {name: _verification_dict(lfw.evaluate(dd, pairs, far)) for name, dd in distances.items()},
        "cosine": {
            "mean": float(cosine.mean()),
            "min": float(cosine.min()),
            "p1": float(np.percentile(cosine, 1)),
        },
        "mean_abs_distance_change": float(np.abs(distances["int8"] - distances["fp32"]).mean()),
        "batch": batch,
        "threads": threads,
        "timed_faces": both.timed_faces,
        "ms_per_face": ms,
        "speedup_fp32_over_int8": ms["fp32"] / ms["int8"] if ms["int8"] > 0 else float("nan"),
    }


def _method_text(record: dict[str, Any]) -> str:
    method = str(record.get("method"))
    return f"{method} {record['percentile']:g}" if "percentile" in record else method


def _kept_text(record: dict[str, Any]) -> str:
    return ", ".join(record.get("excluded_nodes", [])) or "none"


def print_comparison(r: dict[str, Any]) -> None:
    far = r["modes"]["fp32"]["far"]
    print(
        f"{r['pairs']}: {r['n_pairs']} pairs, {r['n_images']} images ({r['images_without_face']} without a face), "
        f"detector {r['detector']}"
    )
    q = r["quantization"]
    if q:
        print(
            f"INT8: {_method_text(q)}, {q.get('calibration')}, FP32 kept: {_kept_text(q)}"
        )
    header = f"{'mode':<32} {'accuracy %':>14} {f'TAR@FAR={far:g} %':>16} {'AUC':>8} {'EER %':>6} {'ms/face':>8}"
    print(header)
    print("-" * len(header))
    labels = {"fp32": "FP32", "int8": "INT8", "mixed": "mixed (FP32 gallery, INT8 probe)"}
    for mode, v in r["modes"].items():
        speed = f"{r['ms_per_face'][mode]:8.2f}" if mode in r["ms_per_face"] else f"{'':8}"
        print(
            f"{labels[mode]:<32} {100 * v['accuracy']:7.2f} ± {100 * v['accuracy_std']:4.2f} "
            f"{100 * v['tar_at_far']:16.2f} {v['auc']:8.5f} {100 * v['eer']:6.2f} {speed}"
        )
    c = r["cosine"]
    print(
        f"cosine FP32 vs INT8 per face: mean {c['mean']:.5f}, min {c['min']:.5f}, 1st percentile {c['p1']:.5f}; "
        f"mean |distance change| {r['mean_abs_distance_change']:.5f}"
    )
    print(
        f"INT8 accuracy change: {100 * (r['modes']['int8']['accuracy'] - r['modes']['fp32']['accuracy']):+.2f} points; "
        f"speed at batch {r['batch']}: FP32/INT8 = {r['speedup_fp32_over_int8']:.2f}x "
        f"({r['timed_faces']} faces each, same run, ONNX Runtime CPU)"
    )
