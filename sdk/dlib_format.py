"""Reader of dlib's serialised face recognition ResNet (``dlib_face_recognition_resnet_model_v1.dat``).

numpy only, so the runtime can read the model without torch. The layout follows dlib's
``serialize.h`` and ``dnn/*.h`` (see ``../shared/notes/dlib-resnet-format.md``):

* integer: a control byte (bit 7 = negative, low 4 bits = byte count) then little-endian bytes;
* scalar float: mantissa integer, exponent integer, value = m * 2**e;
* string: length integer then raw bytes; bool: ASCII ``'0'`` / ``'1'``;
* tensor: version 2, n, k, nr, nc, then raw little-endian float32 (an alias-tensor shape header
  is version 1 and the four sizes alone).

The file holds the loss header, then one version integer per network wrapper (outermost first),
then the layer records in forward order. Tag and skip wrappers store nothing else, so the
residual wiring is not in the file: it comes from dlib's network definition (see
``train.backbones.dlib_resnet``).
"""

from __future__ import annotations

import importlib.util
import math
import pathlib
from dataclasses import dataclass

import numpy as np

DEFAULT_MODEL = "dlib_face_recognition_resnet_model_v1.dat"

# dlib's input_rgb_image layers compute (pixel - mean) / 256; the divisor is in dlib's code,
# not in the file, and is fixed by the input layer's type.
INPUT_SCALE = 1.0 / 256.0

# Wrapper versions: tag/skip layers write 1, add_layer 2, the innermost add_layer (the one that
# owns the input layer) 3.
_TAG_OR_SKIP, _ADD_LAYER, _INNERMOST = 1, 2, 3
_SPECIAL_EXPONENTS = {32000: math.inf, 32001: -math.inf, 32002: math.nan}


def dlib_model_path(name: str = DEFAULT_MODEL) -> pathlib.Path:
    """Path of a model file shipped by the ``face-recognition-models`` package.

    The package is located without importing it: its ``__init__`` imports ``pkg_resources``,
    which recent setuptools no longer provides.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"dlib model {name!r} needs the face-recognition-models package: "
            "pip install face-recognition-models"
        )
    path = pathlib.Path(spec.submodule_search_locations[0]) / "models" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found; reinstall it with: pip install --force-reinstall face-recognition-models"
        )
    return path


@dataclass(frozen=True)
class LayerRecord:
    """One layer of the network, in forward order.

    kind is one of con, affine, relu, max_pool, avg_pool, add_prev, fc. Weights by kind:
    con: weight (O, I, kh, kw), bias (O,); affine: weight = gamma (C,), bias = beta (C,);
    fc: weight (out, in) (torch's Linear layout), bias (out,) or None.
    Pools with kernel (0, 0) average over the whole feature map.
    """

    kind: str
    offset: int  # byte offset of the record in the file, for error messages
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None
    kernel: tuple[int, int] = (0, 0)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class DlibNetwork:
    """A parsed network: input normalisation, loss settings and the layers in forward order."""

    input_mean: tuple[float, float, float]  # R, G, B, subtracted before scaling
    input_size: tuple[int, int]  # rows, cols
    margin: float  # loss_metric's margin
    distance_threshold: float  # loss_metric's threshold on plain Euclidean distance
    layers: tuple[LayerRecord, ...]
    input_scale: float = INPUT_SCALE

    def count(self, kind: str) -> int:
        return sum(layer.kind == kind for layer in self.layers)


class LayerCursor:
    """Walks a network's layer records in forward order; ``take`` checks each against the kind
    the caller's picture of the network expects (the file does not hold the wiring)."""

    def __init__(self, layers: tuple[LayerRecord, ...]) -> None:
        self.layers = layers
        self.index = 0

    def peek(self) -> str | None:
        return self.layers[self.index].kind if self.index < len(self.layers) else None

    def take(self, kind: str) -> LayerRecord:
        found = self.peek()
        if found != kind:
            where = f"at byte {self.layers[self.index].offset}" if found else "at the end"
            raise ValueError(f"layer {self.index} {where}: expected {kind}, found {found or 'nothing'}")
        self.index += 1
        return self.layers[self.index - 1]


class _Reader:
    """Cursor over the file's bytes; every read names what it reads so errors say where."""

    def __init__(self, data: bytes, source: str) -> None:
        self.data = memoryview(data)
        self.source = source
        self.pos = 0

    def error(self, message: str, at: int | None = None) -> ValueError:
        where = self.pos if at is None else at
        return ValueError(f"{self.source}: byte {where}: {message}")

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.data) - self.pos:
            raise self.error(f"file truncated: {what} needs {n} bytes, {len(self.data) - self.pos} left")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def integer(self, what: str) -> int:
        start = self.pos
        control = self.take(1, what)[0]
        size = control & 0x0F
        # Bits 4-6 are always zero and no dlib integer is wider than 8 bytes.
        if control & 0x70 or size > 8:
            raise self.error(f"bad integer control byte 0x{control:02x} for {what}", start)
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def one_of(self, what: str, allowed: tuple[int, ...]) -> int:
        start = self.pos
        value = self.integer(what)
        if value not in allowed:
            raise self.error(f"{what} is {value}, expected {' or '.join(map(str, allowed))}", start)
        return value

    def positive(self, what: str) -> int:
        start = self.pos
        value = self.integer(what)
        if value <= 0:
            raise self.error(f"{what} must be positive, got {value}", start)
        return value

    def scalar(self, what: str) -> float:
        mantissa = self.integer(f"{what} (mantissa)")
        start = self.pos
        exponent = self.integer(f"{what} (exponent)")
        if exponent in _SPECIAL_EXPONENTS:
            return _SPECIAL_EXPONENTS[exponent]
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            raise self.error(f"{what} out of range: {mantissa} * 2**{exponent}", start) from None

    def boolean(self, what: str) -> bool:
        start = self.pos
        byte = self.take(1, what)[0]
        if byte not in b"01":
            raise self.error(f"bad bool byte 0x{byte:02x} for {what}", start)
        return byte == ord("1")

    def string(self, what: str, limit: int = 256) -> str:
        start = self.pos
        length = self.integer(f"{what} length")
        if not 0 <= length <= limit:
            raise self.error(f"implausible length {length} for {what}", start)
        try:
            return bytes(self.take(length, what)).decode("ascii")
        except UnicodeDecodeError:
            raise self.error(f"{what} is not ASCII", start) from None

    def name(self, expected: str) -> None:
        start = self.pos
        found = self.string(f"{expected} record name")
        if found != expected:
            raise self.error(f"expected {expected!r}, found {found!r}", start)

    def dims(self, what: str) -> tuple[int, int, int, int]:
        start = self.pos
        shape = tuple(self.integer(f"{what} size") for _ in range(4))
        if min(shape) < 0:
            raise self.error(f"negative size in {what} shape {shape}", start)
        return shape  # type: ignore[return-value]

    def tensor(self, what: str) -> np.ndarray:
        self.one_of(f"{what} version", (2,))
        shape = self.dims(what)
        count = math.prod(shape)
        raw = self.take(4 * count, f"{what} data ({count} float32)")
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def shape_header(self, what: str) -> tuple[int, int, int, int]:
        self.one_of(f"{what} version", (1,))
        return self.dims(what)

    def at_end(self) -> bool:
        return self.pos == len(self.data)


def _con(r: _Reader, start: int) -> LayerRecord:
    params = r.tensor("con params")
    filters = r.positive("con num_filters")
    kh, kw = r.positive("con rows"), r.positive("con cols")
    stride = (r.positive("con stride_y"), r.positive("con stride_x"))
    padding = (r.integer("con padding_y"), r.integer("con padding_x"))
    if min(padding) < 0 or padding[0] >= kh or padding[1] >= kw:
        raise r.error(f"con padding {padding} invalid for a {kh}x{kw} kernel")
    w_shape = r.shape_header("con filters")
    b_shape = r.shape_header("con biases")
    for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        r.scalar(f"con {what} multiplier")
    if w_shape[0] != filters or w_shape[2:] != (kh, kw) or b_shape != (1, filters, 1, 1):
        raise r.error(f"con shapes {w_shape}, {b_shape} disagree with {filters} {kh}x{kw} filters")
    n_weights = math.prod(w_shape)
    if params.size != n_weights + filters:
        raise r.error(f"con params hold {params.size} values, filters and biases need {n_weights + filters}")
    flat = params.reshape(-1)
    return LayerRecord(
        "con", start, flat[:n_weights].reshape(w_shape), flat[n_weights:], (kh, kw), stride, padding
    )


def _affine(r: _Reader, start: int) -> LayerRecord:
    params = r.tensor("affine params")
    gamma, beta = r.shape_header("affine gamma"), r.shape_header("affine beta")
    # 0 = CONV_MODE, one gamma/beta per channel (FC_MODE, per element, is not supported).
    r.one_of("affine mode", (0,))
    channels = gamma[1]
    if gamma != (1, channels, 1, 1) or beta != gamma or params.size != 2 * channels:
        raise r.error(f"affine shapes {gamma}, {beta} disagree with {params.size} params")
    flat = params.reshape(-1)
    return LayerRecord("affine", start, flat[:channels], flat[channels:])


def _pool(r: _Reader, start: int, kind: str) -> LayerRecord:
    kernel = (r.integer(f"{kind} rows"), r.integer(f"{kind} cols"))
    stride = (r.positive(f"{kind} stride_y"), r.positive(f"{kind} stride_x"))
    padding = (r.integer(f"{kind} padding_y"), r.integer(f"{kind} padding_x"))
    # A 0x0 kernel means "the whole map" (avg_pool_everything); then padding must be 0.
    if min(kernel) < 0 or min(padding) < 0 or (0 in kernel and kernel != (0, 0)):
        raise r.error(f"{kind} geometry invalid: kernel {kernel}, padding {padding}")
    if padding[0] > max(kernel[0] - 1, 0) or padding[1] > max(kernel[1] - 1, 0):
        raise r.error(f"{kind} padding {padding} too large for kernel {kernel}")
    return LayerRecord(kind, start, kernel=kernel, stride=stride, padding=padding)


def _fc(r: _Reader, start: int) -> LayerRecord:
    outputs, inputs = r.positive("fc num_outputs"), r.positive("fc num_inputs")
    params = r.tensor("fc params")
    weights = r.shape_header("fc weights")
    r.shape_header("fc biases")
    has_bias = r.one_of("fc bias mode", (0, 1)) == 0  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    for what in ("learning rate", "weight decay", "bias learning rate", "bias weight decay"):
        r.scalar(f"fc {what} multiplier")
    rows = inputs + int(has_bias)
    if weights != (inputs, outputs, 1, 1) or params.size != rows * outputs:
        raise r.error(f"fc shapes {weights}, params {params.shape} disagree with {inputs}->{outputs}")
    # dlib computes y = x . W with W stored (in, out), biases as one extra row.
    table = params.reshape(rows, outputs)
    bias = table[inputs] if has_bias else None
    return LayerRecord("fc", start, np.ascontiguousarray(table[:inputs].T), bias)


def _layer(r: _Reader) -> LayerRecord:
    """Read one layer's own record (the part dlib's layer class writes)."""
    start = r.pos
    name = r.string("layer name")
    if name == "con_4":
        return _con(r, start)
    if name == "affine_":
        return _affine(r, start)
    if name in ("max_pool_2", "avg_pool_2"):
        return _pool(r, start, name[:-2])
    if name == "fc_2":
        return _fc(r, start)
    if name in ("relu_", "add_prev_"):  # no fields of their own
        return LayerRecord(name[:-1], start)
    raise r.error(f"unsupported layer {name!r}", start)


def _add_layer_state(r: _Reader) -> None:
    """Skip the training state every add_layer writes after its layer: 3 bools and 3 tensors."""
    for what in ("setup called", "gradient stale", "output disabled"):
        r.boolean(f"add_layer {what} flag")
    for what in ("x_grad", "cached_output", "params_grad"):
        r.tensor(f"add_layer {what}")


def parse_network(data: bytes, source: str = "<bytes>") -> DlibNetwork:
    """Parse a dlib ``loss_metric`` network whose input layer is ``input_rgb_image_sized``.

    Raises ValueError, naming the byte offset, on anything unexpected, including trailing bytes.
    """
    r = _Reader(data, source)
    r.one_of("add_loss_layer version", (1,))
    start = r.pos
    loss = r.string("loss name")
    if loss != "loss_metric_2":
        raise r.error(f"not a dlib metric network: loss is {loss!r}, expected 'loss_metric_2'", start)
    margin, threshold = r.scalar("loss margin"), r.scalar("loss distance threshold")

    # The wrappers' versions, outermost first, up to the innermost add_layer. Each ordinary
    # add_layer contributes one record after the innermost one.
    add_layers = 0
    while True:
        version = r.one_of("layer wrapper version", (_TAG_OR_SKIP, _ADD_LAYER, _INNERMOST))
        if version == _INNERMOST:
            break
        add_layers += version == _ADD_LAYER

    r.name("input_rgb_image_sized")
    mean = (r.scalar("input mean red"), r.scalar("input mean green"), r.scalar("input mean blue"))
    size = (r.positive("input rows"), r.positive("input cols"))
    layers = [_layer(r)]
    _add_layer_state(r)
    r.one_of("sample expansion factor", (1,))
    for _ in range(add_layers):
        layers.append(_layer(r))
        _add_layer_state(r)
    if not r.at_end():
        raise r.error(f"{len(data) - r.pos} unexpected bytes after the last layer")
    return DlibNetwork(mean, size, margin, threshold, tuple(layers))


def load_network(path: str | pathlib.Path | None = None) -> DlibNetwork:
    """Read a network file; by default dlib's face recognition ResNet from face-recognition-models."""
    path = dlib_model_path() if path is None else pathlib.Path(path)
    return parse_network(path.read_bytes(), str(path))
