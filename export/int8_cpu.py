"""Rewrites of the CPU INT8 graph (``export.quantize`` target ``cpu``) that ONNX Runtime runs faster.

``quantize_int8(..., target="cpu")`` applies them to the QDQ graph after quantisation. Each one
matches a pattern and leaves the graph alone where it does not match (a model of another shape
simply keeps its original ops); each is exact: it changes how ONNX Runtime computes, not what
(the input fold even removes a rounding, see :func:`fold_input_normalisation`).

* ``input``: the uint8 chip feeds the first conv as it is (scale 1, zero point 0). dlib's input
  layer ``(x - mean) * 1/256`` is affine and its stem conv has no padding, so the mean folds into
  the conv's bias and the 1/256 into its weight scales; Cast, Sub, Mul and the float
  QuantizeLinear go (ONNX Runtime ran the Sub with a broadcast over the last axis of 3, slowly).
* ``stem``: the stride-2 first conv as a stride-1 conv over the chip's 2x2 SpaceToDepth (a KxK/2
  conv over C channels is a ceil(K/2)^2 conv over 4C channels): ONNX Runtime's int8 convolution
  ran dlib's 7x7/2 stem over 3 channels at half the speed of the 4x4 one over 12, more than the
  SpaceToDepth and its transposes cost.
* ``shortcuts``: a down-sampling block's shortcut, AveragePool 2x2/2 and a Pad that appends zero
  channels, as one 2x2/2 Conv with fixed weights (1/4 on the channel identity, 0 elsewhere: int8
  1 with scale 1/4), which ONNX Runtime runs as one QLinearConv instead of a QLinearAveragePool,
  a dequantised float Pad and a QuantizeLinear.
* ``amx``: the weights of the deep convs (>= 128 input channels) with zero point -1 instead of 0
  (the same values), which moves them from ONNX Runtime's VNNI indirect convolution to its GEMM
  (AMX where the CPU has it); see :func:`weights_for_amx`.
* ``pads``: any other Pad between a DequantizeLinear and a QuantizeLinear of the same scale and
  zero point (dlib's zero rows and columns at the end of a smaller main path) runs on the uint8
  tensor itself, padding with the zero point.

Measured figures are in the README ("Faster at batch 1: exact graph rewrites").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


class _Graph:
    """Producer, consumer and initializer maps of a graph, and the edits the rewrites need."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.graph = model.graph
        self.initializers = {i.name: i for i in self.graph.initializer}
        self.producer = {o: n for n in self.graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in self.graph.node:
            for name in n.input:
                self.consumers[name].append(n)
        self.outputs = {o.name for o in self.graph.output}
        self._removed: set[int] = set()

    def const(self, name: str) -> np.ndarray | None:
        return numpy_helper.to_array(self.initializers[name]) if name in self.initializers else None

    def only_consumer(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        """The one node reading ``tensor`` if it is an ``op_type`` (and the tensor no graph output)."""
        users = self.consumers.get(tensor, [])
        if len(users) != 1 or tensor in self.outputs or users[0].op_type != op_type:
            return None
        return users[0]

    def produced_by(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        node = self.producer.get(tensor)
        return node if node is not None and node.op_type == op_type else None

    def add_const(self, name: str, value: np.ndarray) -> str:
        unique, k = name, 1
        while unique in self.initializers:
            k += 1
            unique = f"{name}_{k}"
        tensor = numpy_helper.from_array(value, unique)
        self.graph.initializer.append(tensor)
        self.initializers[unique] = tensor
        return unique

    def remove(self, *nodes: onnx.NodeProto) -> None:
        self._removed.update(id(n) for n in nodes)

    def finish(self, added: Sequence[onnx.NodeProto]) -> None:
        """Drop the removed nodes, add the new ones, sort topologically, drop unused initializers."""
        nodes = [n for n in self.graph.node if id(n) not in self._removed] + list(added)
        available = {i.name for i in self.graph.input} | set(self.initializers) | {""}
        ordered: list[onnx.NodeProto] = []
        pending = nodes
        while pending:
            ready = [n for n in pending if all(i in available for i in n.input)]
            if not ready:
                raise ValueError("rewritten graph has a cycle or a dangling input")
            for n in ready:
                ordered.append(n)
                available.update(n.output)
            ready_ids = {id(n) for n in ready}
            pending = [n for n in pending if id(n) not in ready_ids]
        del self.graph.node[:]
        self.graph.node.extend(ordered)
        used = {i for n in ordered for i in n.input}
        keep = [t for t in self.graph.initializer if t.name in used]
        del self.graph.initializer[:]
        self.graph.initializer.extend(keep)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _plain_conv(conv: onnx.NodeProto, stride: int | None = None) -> bool:
    """A 2-D conv with no padding, no dilation, one group (and the given stride, if any)."""
    kernel = _attr(conv, "kernel_shape")
    pads = _attr(conv, "pads", [0, 0, 0, 0])
    strides = _attr(conv, "strides", [1, 1])
    return (
        kernel is not None
        and len(kernel) == 2
        and _attr(conv, "auto_pad", b"NOTSET") in (b"NOTSET", b"VALID")
        and not any(pads)
        and list(_attr(conv, "dilations", [1, 1])) == [1, 1]
        and _attr(conv, "group", 1) == 1
        and (stride is None or list(strides) == [stride, stride])
    )


def _weight(g: _Graph, conv: onnx.NodeProto) -> tuple[onnx.NodeProto, np.ndarray, np.ndarray, np.ndarray] | None:
    """The conv's weight DequantizeLinear and its int8 values, per-output-channel scales and zero points."""
    dq = g.produced_by(conv.input[1], "DequantizeLinear")
    if dq is None or len(dq.input) < 3 or len(g.consumers[dq.output[0]]) != 1:
        return None
    q, scale, zero = (g.const(name) for name in dq.input[:3])
    if q is None or scale is None or zero is None or q.dtype != np.int8 or q.ndim != 4:
        return None
    if scale.size not in (1, q.shape[0]) or zero.shape != scale.shape or (scale.size > 1 and _attr(dq, "axis", 1) != 0):
        return None
    out = q.shape[0]
    return dq, q, np.broadcast_to(scale, (out,)).astype(np.float32), np.broadcast_to(zero, (out,)).astype(np.int8)


def _input_dq(g: _Graph, x: str, name: str) -> onnx.NodeProto:
    """A DequantizeLinear of the uint8 tensor ``x`` with scale 1 and zero point 0 (the pixel values as they are)."""
    scale = g.add_const(f"{name}/scale", np.array(1.0, np.float32))
    zero = g.add_const(f"{name}/zero_point", np.array(0, np.uint8))
    return helper.make_node("DequantizeLinear", [x, scale, zero], [f"{name}_output"], name=name)


def fold_input_normalisation(model: onnx.ModelProto) -> int:
    """chip -> Cast -> Transpose -> Sub mean -> Mul a -> Q -> DQ -> Conv (no padding) becomes
    chip -> Transpose -> DQ(scale 1, zero point 0) -> Conv with weight scales times a and bias
    ``b - a * sum(W * mean)``. Exact for the weights (a = 1/256 scales a float exactly) and for the
    input, which the old Q rounded to the calibrated input step; the bias moves by float rounding.
    Returns 1 where folded, 0 where the graph's input is not that pattern."""
    g = _Graph(model)
    chip = g.graph.input[0]
    if chip.type.tensor_type.elem_type != TensorProto.UINT8:
        return 0
    cast = g.only_consumer(chip.name, "Cast")
    if cast is None or _attr(cast, "to") != TensorProto.FLOAT:
        return 0
    transpose = g.only_consumer(cast.output[0], "Transpose")
    if transpose is None or list(_attr(transpose, "perm", [])) != [0, 3, 1, 2]:
        return 0
    sub = g.only_consumer(transpose.output[0], "Sub")
    if sub is None or sub.input[0] != transpose.output[0] or (mean := g.const(sub.input[1])) is None:
        return 0
    if not np.isfinite(mean).all():
        return 0
    scaling = g.consumers.get(sub.output[0], [])
    if len(scaling) != 1 or scaling[0].op_type not in ("Mul", "Div") or (a := g.const(scaling[0].input[1])) is None:
        return 0
    scaling_node = scaling[0]
    if a.size != 1 or not np.isfinite(a).all() or float(a.ravel()[0]) == 0.0:
        return 0
    factor = float(a.ravel()[0]) if scaling_node.op_type == "Mul" else 1.0 / float(a.ravel()[0])
    quantize = g.only_consumer(scaling_node.output[0], "QuantizeLinear")
    dequantize = quantize and g.only_consumer(quantize.output[0], "DequantizeLinear")
    conv = dequantize and g.only_consumer(dequantize.output[0], "Conv")
    if conv is None or conv.input[0] != dequantize.output[0] or not _plain_conv(conv):
        return 0
    weight = _weight(g, conv)
    if weight is None:
        return 0
    weight_dq, q, scale, zero = weight
    channels = q.shape[1]
    try:
        per_channel_mean = np.broadcast_to(mean.astype(np.float64), (1, channels, 1, 1))[0, :, 0, 0]
    except ValueError:
        return 0  # a mean per pixel, not per channel
    w = (q.astype(np.float64) - zero[:, None, None, None]) * scale[:, None, None, None]
    bias = g.const(conv.input[2]) if len(conv.input) > 2 and conv.input[2] else np.zeros(q.shape[0], np.float32)
    if bias is None:
        return 0
    folded_bias = bias.astype(np.float64) - factor * (w * per_channel_mean[None, :, None, None]).sum(axis=(1, 2, 3))
    new_scale = (scale.astype(np.float64) * factor).astype(np.float32)
    weight_dq.input[1] = g.add_const(f"{conv.name}/raw_pixel_weight_scale", new_scale)
    weight_dq.input[2] = g.add_const(f"{conv.name}/raw_pixel_weight_zero_point", zero.copy())
    _set_attr(weight_dq, "axis", 0)
    conv_inputs = list(conv.input)
    conv_inputs[2:] = [g.add_const(f"{conv.name}/raw_pixel_bias", folded_bias.astype(np.float32))]
    nchw = helper.make_node("Transpose", [chip.name], ["input/nchw_uint8"], name="input/nchw_uint8", perm=[0, 3, 1, 2])
    pixels = _input_dq(g, nchw.output[0], "input/pixels")
    conv_inputs[0] = pixels.output[0]
    del conv.input[:]
    conv.input.extend(conv_inputs)
    g.remove(cast, transpose, sub, scaling_node, quantize, dequantize)
    g.finish([nchw, pixels])
    return 1


def _set_attr(node: onnx.NodeProto, name: str, value: object) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, helper.make_attribute(name, value)])


def stem_space_to_depth(model: onnx.ModelProto) -> int:
    """The first conv, reading the chip through ``input/nchw_uint8`` (after
    :func:`fold_input_normalisation`) with stride 2 and no padding, as a stride-1 conv over the
    chip's 2x2 SpaceToDepth (on uint8). Its KxK kernel is zero-padded to an even size (with the
    zero point, so the padded taps dequantise to 0). Returns 1 or 0."""
    g = _Graph(model)
    chip = g.graph.input[0]
    nchw = g.only_consumer(chip.name, "Transpose")
    if nchw is None or nchw.name != "input/nchw_uint8":
        return 0
    dims = [d.dim_value for d in chip.type.tensor_type.shape.dim]
    dequantize = g.only_consumer(nchw.output[0], "DequantizeLinear")
    conv = dequantize and g.only_consumer(dequantize.output[0], "Conv")
    if conv is None or len(dims) != 4 or not all(dims[1:]) or dims[1] % 2 or dims[2] % 2:
        return 0
    weight = _weight(g, conv)
    if not _plain_conv(conv, stride=2) or weight is None or weight[1].shape[1] != dims[3]:
        return 0
    weight_dq, q, _, zero = weight
    out, channels, kh, kw = q.shape
    half_h, half_w = (kh + 1) // 2, (kw + 1) // 2
    padded = np.empty((out, channels, 2 * half_h, 2 * half_w), np.int8)
    padded[:] = zero[:, None, None, None]
    padded[:, :, :kh, :kw] = q
    # W[o, c, 2a + p, 2b + q] -> W'[o, (p, q, c), a, b]: SpaceToDepth's channel order (ONNX spec)
    s2d_weight = padded.reshape(out, channels, half_h, 2, half_w, 2).transpose(0, 3, 5, 1, 2, 4)
    weight_dq.input[0] = g.add_const(
        f"{conv.name}/space_to_depth_weight", np.ascontiguousarray(s2d_weight.reshape(out, 4 * channels, half_h, half_w))
    )
    s2d = helper.make_node("SpaceToDepth", [nchw.output[0]], ["input/space_to_depth"], name="input/space_to_depth", blocksize=2)
    dequantize.input[0] = s2d.output[0]
    _set_attr(conv, "kernel_shape", [half_h, half_w])
    _set_attr(conv, "strides", [1, 1])
    g.finish([s2d])
    return 1


def _channels(model: onnx.ModelProto) -> dict[str, int]:
    """Channel count (axis 1) of every tensor whose shape inference knows it."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {}
    for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        dims = v.type.tensor_type.shape.dim
        if len(dims) == 4 and dims[1].dim_value > 0:
            out[v.name] = dims[1].dim_value
    return out


def _same_quantization(g: _Graph, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    """Two per-tensor Q/DQ nodes with equal scale and zero point values."""
    if len(a.input) < 3 or len(b.input) < 3:
        return False
    values = [g.const(n) for n in (a.input[1], a.input[2], b.input[1], b.input[2])]
    if any(v is None or v.size != 1 for v in values):
        return False
    return bool(values[0] == values[2] and values[1] == values[3] and values[1].dtype == values[3].dtype)


def _zero_constant_pad(g: _Graph, pad: onnx.NodeProto) -> np.ndarray | None:
    """The pads of a constant-mode Pad that pads with 0, else None."""
    if _attr(pad, "mode", b"constant") != b"constant" or len(pad.input) > 3:
        return None
    if len(pad.input) == 3 and pad.input[2]:
        value = g.const(pad.input[2])
        if value is None or value.size != 1 or float(value.ravel()[0]) != 0.0:
            return None
    return g.const(pad.input[1])


def shortcuts_as_convs(model: onnx.ModelProto) -> int:
    """DQ -> AveragePool KxK/K -> Q -> DQ -> Pad of zero channels at the end -> Q -> DQ becomes
    DQ -> Conv KxK/K (int8 weight 1 on the channel identity with scale 1/K^2) -> Q -> DQ.
    Returns how many shortcuts were rewritten."""
    channels = _channels(model)
    g = _Graph(model)
    added: list[onnx.NodeProto] = []
    for pool in [n for n in g.graph.node if n.op_type == "AveragePool"]:
        kernel = list(_attr(pool, "kernel_shape", []))
        if (
            len(kernel) != 2
            or kernel[0] != kernel[1]
            or list(_attr(pool, "strides", [1, 1])) != kernel
            or any(_attr(pool, "pads", [0, 0, 0, 0]))
            or _attr(pool, "auto_pad", b"NOTSET") not in (b"NOTSET", b"VALID")
            or _attr(pool, "ceil_mode", 0)
            or pool.input[0] not in channels
        ):
            continue
        if g.produced_by(pool.input[0], "DequantizeLinear") is None:
            continue
        quantize = g.only_consumer(pool.output[0], "QuantizeLinear")
        dequantize = quantize and g.only_consumer(quantize.output[0], "DequantizeLinear")
        if dequantize is None:
            continue
        # Only a shortcut that also appends channels: a bare pool (dlib's last block) ran faster than
        # its conv (measured 26 vs 32 us at 256 channels, 2x2 out), the Pad and its Q/DQ are the gain.
        pad = g.only_consumer(dequantize.output[0], "Pad")
        pads = None if pad is None else _zero_constant_pad(g, pad)
        out_quantize = None if pad is None else g.only_consumer(pad.output[0], "QuantizeLinear")
        if pads is None or out_quantize is None or pads.size != 8 or any(pads[[0, 1, 2, 3, 4, 6, 7]]) or pads[5] < 1:
            continue
        c_in = channels[pool.input[0]]
        c_out = c_in + int(pads[5])
        weight = np.zeros((c_out, c_in, *kernel), np.int8)
        weight[np.arange(c_in), np.arange(c_in)] = 1
        name = pool.name.replace("pool", "conv") if "pool" in pool.name else f"{pool.name}/conv"
        w = g.add_const(f"{name}/weight_quantized", weight)
        scale = g.add_const(f"{name}/weight_scale", np.array(1.0 / (kernel[0] * kernel[1]), np.float32))
        zero = g.add_const(f"{name}/weight_zero_point", np.array(0, np.int8))
        weight_dq = helper.make_node("DequantizeLinear", [w, scale, zero], [f"{name}/weight"], name=f"{name}/weight_dq")
        conv = helper.make_node(
            "Conv", [pool.input[0], weight_dq.output[0]], [f"{name}_output"], name=name,
            kernel_shape=kernel, strides=kernel, pads=[0, 0, 0, 0], dilations=[1, 1], group=1,
        )
        out_quantize.input[0] = conv.output[0]
        g.remove(pool, quantize, dequantize, pad)
        added += [weight_dq, conv]
    if added:
        g.finish(added)
    return len(added) // 2


def pads_on_uint8(model: onnx.ModelProto) -> int:
    """DQ(s, z) -> Pad with 0 -> Q(s, z) becomes Pad with z on the quantised tensor. Returns the count."""
    g = _Graph(model)
    added: list[onnx.NodeProto] = []
    for pad in [n for n in g.graph.node if n.op_type == "Pad"]:
        dequantize = g.produced_by(pad.input[0], "DequantizeLinear")
        quantize = g.only_consumer(pad.output[0], "QuantizeLinear")
        if dequantize is None or quantize is None or _zero_constant_pad(g, pad) is None:
            continue
        if not _same_quantization(g, dequantize, quantize):
            continue
        zero = g.add_const(f"{pad.name}/zero_point", g.const(quantize.input[2]).reshape(()))
        added.append(
            helper.make_node("Pad", [dequantize.input[0], pad.input[1], zero], [quantize.output[0]], name=pad.name, mode="constant")
        )
        g.remove(pad, quantize)
        if len(g.consumers[dequantize.output[0]]) == 1:
            g.remove(dequantize)
    if added:
        g.finish(added)
    return len(added)


# Input channels from which a conv's weights get zero point -1 (see weights_for_amx).
AMX_MIN_CHANNELS = 128


def weights_for_amx(model: onnx.ModelProto, min_channels: int = AMX_MIN_CHANNELS) -> int:
    """Weights of the convs reading >= ``min_channels`` channels shifted by -1 with zero point -1:
    the same dequantised values, but ONNX Runtime then leaves its symmetric indirect convolution
    (VNNI) for im2col and its int8 GEMM, which uses AMX where the CPU has it. That paid for dlib's
    deep layers (8x8x128 and 4x4x256) and not for the wide shallow ones. Returns the count."""
    g = _Graph(model)
    shifted = 0
    for conv in [n for n in g.graph.node if n.op_type == "Conv"]:
        weight = _weight(g, conv)
        if weight is None:
            continue
        weight_dq, q, _, zero = weight
        # Plain convs only: grouped and depthwise ones take other kernels, not measured here.
        if _attr(conv, "group", 1) != 1 or q.shape[1] < min_channels or zero.any() or q.min() < -127:
            continue
        weight_dq.input[0] = g.add_const(f"{conv.name}/amx_weight", (q.astype(np.int16) - 1).astype(np.int8))
        shape = g.const(weight_dq.input[2]).shape  # per channel or per tensor, as the scale
        weight_dq.input[2] = g.add_const(f"{conv.name}/amx_zero_point", np.full(shape, -1, np.int8))
        shifted += 1
    if shifted:
        g.finish([])
    return shifted


# Applied in this order (the stem rewrite reads the input rewrite's graph).
REWRITES: dict[str, Callable[[onnx.ModelProto], int]] = {
    "input": fold_input_normalisation,
    "stem": stem_space_to_depth,
    "shortcuts": shortcuts_as_convs,
    "pads": pads_on_uint8,
    "amx": weights_for_amx,
}


def rewrite_for_cpu(model: onnx.ModelProto, names: Sequence[str] = tuple(REWRITES)) -> dict[str, int]:
    """Apply the named rewrites in place; returns how many places each changed."""
    unknown = [n for n in names if n not in REWRITES]
    if unknown:
        raise ValueError(f"unknown CPU rewrite(s) {', '.join(unknown)}; known: {', '.join(REWRITES)}")
    return {name: fn(model) for name, fn in REWRITES.items() if name in names}
