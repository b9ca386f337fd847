"""TensorRT engine builder (export.tensorrt) and backend (sdk.tensorrt), without a GPU.

No machine here has TensorRT or a GPU, so:

* the pure parts (batch profiles, ONNX contract and QDQ checks, the metadata file, the
  compatibility check and its rebuild command, missing-package errors) are tested directly, on
  tiny ONNX graphs made here, QDQ models made by ONNX Runtime's own quantiser, and the real
  default model;
* the builder's and the backend's control flow run against a FAKE ``tensorrt`` and a fake
  ``cuda.bindings.runtime`` injected into sys.modules. The fakes record every TensorRT call,
  and one test binds each recorded call to its declaration in tensorrt-stubs (TensorRT 10.13's
  Python API): our call sequence uses only methods, arguments and enum members the API declares.
  The fake engine runs the ONNX with ONNX Runtime on fake device memory, so the backend's
  batching, buffers and copies are checked against ONNX Runtime's embeddings, on real faces too;
* tests that need a real TensorRT and CUDA GPU skip with the reason.
"""

from __future__ import annotations

import ast
import ctypes
import enum
import importlib.metadata
import inspect
import json
import re
import subprocess
import sys
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh

from cli.main import main as facesdk
from export import tensorrt as build
from evaluate.lfw import lfw_chips
from evaluate.tensorrt import engine_parity
from sdk import tensorrt as rt
from sdk.embed import OnnxEmbedder
from sdk.errors import BackendUnavailableError, FaceSDKError

REPO = Path(__file__).resolve().parents[1]
TRT_VERSION = "10.13.0.35"
SIZE, DIM = 8, 4


# --- tiny facesdk models ---------------------------------------------------------------------------


def tiny_model(path: Path, *, pfe: bool = False, batch: int | str = "N", consumer: str = "Cast") -> Path:
    """A facesdk-contract ONNX (uint8 chip [N, 8, 8, 3] -> unit embedding [N, 4]; PFE: + sigma_sq)."""
    rng = np.random.default_rng(0)
    inits = [
        nh.from_array(rng.normal(0, 0.1, (DIM, 3, 3, 3)).astype(np.float32), "conv_w"),
        nh.from_array(rng.normal(0, 0.1, (DIM,)).astype(np.float32), "conv_b"),
    ]
    nodes = []
    first = "chip"
    if consumer != "Cast":  # a graph TensorRT would refuse: the uint8 input feeds another op first
        nodes.append(helper.make_node(consumer, ["chip"], ["chip2"]))
        first = "chip2"
    nodes += [
        helper.make_node("Cast", [first], ["x"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["nchw", "conv_w", "conv_b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("ReduceL2", ["f"], ["n"], axes=[1], keepdims=1),
        helper.make_node("Div", ["f", "n"], ["embedding"]),
    ]
    outputs = [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, [batch, DIM])]
    if pfe:
        inits.append(nh.from_array(rng.normal(0, 0.1, (DIM, DIM)).astype(np.float32), "sig_w"))
        nodes += [helper.make_node("MatMul", ["f", "sig_w"], ["s"]), helper.make_node("Exp", ["s"], ["sigma_sq"])]
        outputs.append(helper.make_tensor_value_info("sigma_sq", TensorProto.FLOAT, [batch, DIM]))
    chip = helper.make_tensor_value_info("chip", TensorProto.UINT8, [batch, SIZE, SIZE, 3])
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [chip], outputs, inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.ir_version = 8
    meta = {
        "model_name": "tiny_test",
        "model_version": "1",
        "input_size": f"{SIZE}x{SIZE}",
        "input_layout": "NHWC",
        "input_color": "RGB",
        "chip_scheme": f"dlib5_{SIZE}_0.25",
        "embedding_dim": str(DIM),
        "embedding_normalized": "1",
        "distance": "squared_l2",
        "source": "tests/test_tensorrt.py",
    }
    if pfe:
        meta["uncertainty"] = "sigma_sq"
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model, full_check=True)
    onnx.save_model(model, path)
    return path


def quantized(src: Path, dst: Path, **options: Any) -> Path:
    """``src`` quantised by ONNX Runtime's static quantiser (QDQ format) on random chips."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Chips(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(1)
            self.batches = iter([{"chip": rng.integers(0, 256, (2, SIZE, SIZE, 3), dtype=np.uint8)} for _ in range(4)])

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Chips(), quant_format=QuantFormat.QDQ, **options)
    return dst


def tensorrt_ready_int8(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import QuantType

    return quantized(
        src,
        dst,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return tiny_model(tmp_path / "tiny.onnx")


def chips(n: int, seed: int = 0, size: int = SIZE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# --- a recording fake of TensorRT 10's Python API --------------------------------------------------
# Enum names and values are those of tensorrt-stubs 10.13 (checked below when the stubs are installed).


class DataType(enum.IntEnum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5


class TensorIOMode(enum.IntEnum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class BuilderFlag(enum.IntEnum):
    FP16 = 0
    INT8 = 1
    TF32 = 6


class MemoryPoolType(enum.IntEnum):
    WORKSPACE = 0


class NetworkDefinitionCreationFlag(enum.IntEnum):
    EXPLICIT_BATCH = 0
    STRONGLY_TYPED = 1


class Severity(enum.IntEnum):
    INTERNAL_ERROR = 0
    ERROR = 1
    WARNING = 2
    INFO = 3
    VERBOSE = 4


FAKE_ENUMS = {
    "DataType": DataType,
    "TensorIOMode": TensorIOMode,
    "BuilderFlag": BuilderFlag,
    "MemoryPoolType": MemoryPoolType,
    "NetworkDefinitionCreationFlag": NetworkDefinitionCreationFlag,
    "Logger": Severity,  # trt.Logger.WARNING etc.
}
ENGINE_MAGIC = b"FAKE-TENSORRT-ENGINE\n"
ONNX_TYPES = {TensorProto.UINT8: DataType.UINT8, TensorProto.FLOAT: DataType.FLOAT}


class FakeGpu:
    """Device memory, streams and calls shared by the fake cudart and the fake engine."""

    def __init__(self, name: str = "NVIDIA Fake H100", cc: tuple[int, int] = (9, 0), devices: int = 1) -> None:
        self.name, self.cc, self.devices = name, cc, devices
        self.memory: dict[int, bytearray] = {}
        self.next_ptr = 0x7F00_0000_0000
        self.streams: set[int] = set()
        self.calls: list[tuple[str, tuple]] = []


class Recorder:
    """Every TensorRT call: (stub class, method, args, kwargs); property reads as method '.name'."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, tuple, dict]] = []

    def add(self, cls: str, method: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((cls, method, args, kwargs))

    def find(self, cls: str, method: str) -> list[tuple[tuple, dict]]:
        return [(a, k) for c, m, a, k in self.calls if c == cls and m == method]

    def order(self, *methods: str) -> list[int]:
        names = [m for _, m, _, _ in self.calls]
        return [names.index(m) for m in methods]


def make_fake_tensorrt(rec: Recorder, gpu: FakeGpu, version: str = TRT_VERSION, parse_ok: bool = True) -> types.ModuleType:
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    for name, value in FAKE_ENUMS.items():
        if name != "Logger":
            setattr(trt, name, value)

    class Logger:
        WARNING, ERROR, INFO, VERBOSE, INTERNAL_ERROR = (Severity[n] for n in ("WARNING", "ERROR", "INFO", "VERBOSE", "INTERNAL_ERROR"))

        def __init__(self, min_severity: Severity = Severity.WARNING) -> None:
            rec.add("Logger", "__init__", min_severity)

    class ITensor:
        def __init__(self, name: str, dtype: DataType, shape: tuple[int, ...]) -> None:
            self._name, self._dtype, self._shape = name, dtype, shape

        @property
        def name(self) -> str:
            rec.add("ITensor", ".name")
            return self._name

        @property
        def dtype(self) -> DataType:
            rec.add("ITensor", ".dtype")
            return self._dtype

    class INetworkDefinition:
        def __init__(self, flags: int) -> None:
            self.flags = flags
            self.inputs: list[ITensor] = []
            self.outputs: list[ITensor] = []
            self.onnx = b""

        @property
        def num_inputs(self) -> int:
            rec.add("INetworkDefinition", ".num_inputs")
            return len(self.inputs)

        @property
        def num_outputs(self) -> int:
            rec.add("INetworkDefinition", ".num_outputs")
            return len(self.outputs)

        def get_input(self, index: int) -> ITensor:
            rec.add("INetworkDefinition", "get_input", index)
            return self.inputs[index]

        def get_output(self, index: int) -> ITensor:
            rec.add("INetworkDefinition", "get_output", index)
            return self.outputs[index]

    class OnnxParser:
        def __init__(self, network: INetworkDefinition, logger: Logger) -> None:
            rec.add("OnnxParser", "__init__", network, logger)
            self.network = network

        def parse(self, model: bytes, path: str | None = None) -> bool:
            rec.add("OnnxParser", "parse", model, path)
            if not parse_ok:
                return False
            proto = onnx.load_model_from_string(bytes(model))

            def tensor(v: onnx.ValueInfoProto) -> ITensor:
                dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in v.type.tensor_type.shape.dim)
                return ITensor(v.name, ONNX_TYPES[v.type.tensor_type.elem_type], dims)

            self.network.inputs = [tensor(v) for v in proto.graph.input]
            self.network.outputs = [tensor(v) for v in proto.graph.output]
            self.network.onnx = bytes(model)
            return True

        @property
        def num_errors(self) -> int:
            rec.add("OnnxParser", ".num_errors")
            return 0 if parse_ok else 1

        def get_error(self, index: int) -> str:
            rec.add("OnnxParser", "get_error", index)
            return "In node 3 (Conv): fake parser error"

    class IOptimizationProfile:
        def __init__(self) -> None:
            self.shapes: dict[str, tuple] = {}

        def set_shape(self, input: str, min: tuple, opt: tuple, max: tuple) -> None:  # noqa: A002 - the stub's names
            rec.add("IOptimizationProfile", "set_shape", input, min, opt, max)
            self.shapes[input] = (tuple(min), tuple(opt), tuple(max))

    class ITimingCache:
        def __init__(self, data: bytes) -> None:
            self.data = bytes(data)

        def serialize(self) -> bytes:
            rec.add("ITimingCache", "serialize")
            return self.data

    class IBuilderConfig:
        def __init__(self) -> None:
            self.flags = {BuilderFlag.TF32}  # TensorRT's default
            self.pools: dict[MemoryPoolType, int] = {}
            self.profiles: list[IOptimizationProfile] = []
            self.cache: ITimingCache | None = None

        def set_flag(self, flag: BuilderFlag) -> None:
            rec.add("IBuilderConfig", "set_flag", flag)
            self.flags.add(flag)

        def clear_flag(self, flag: BuilderFlag) -> None:
            rec.add("IBuilderConfig", "clear_flag", flag)
            self.flags.discard(flag)

        def set_memory_pool_limit(self, pool: MemoryPoolType, pool_size: int) -> None:
            rec.add("IBuilderConfig", "set_memory_pool_limit", pool, pool_size)
            self.pools[pool] = pool_size

        def add_optimization_profile(self, profile: IOptimizationProfile) -> int:
            rec.add("IBuilderConfig", "add_optimization_profile", profile)
            self.profiles.append(profile)
            return len(self.profiles) - 1

        def create_timing_cache(self, serialized_timing_cache: bytes) -> ITimingCache:
            rec.add("IBuilderConfig", "create_timing_cache", serialized_timing_cache)
            return ITimingCache(serialized_timing_cache)

        def set_timing_cache(self, cache: ITimingCache, ignore_mismatch: bool) -> bool:
            rec.add("IBuilderConfig", "set_timing_cache", cache, ignore_mismatch)
            if cache.data.startswith(b"OTHER-GPU"):
                return False
            self.cache = cache
            return True

        def get_timing_cache(self) -> ITimingCache | None:
            rec.add("IBuilderConfig", "get_timing_cache")
            return self.cache

    class IHostMemory(bytes):
        pass

    class Builder:
        def __init__(self, logger: Logger) -> None:
            rec.add("Builder", "__init__", logger)

        def create_network(self, flags: int = 0) -> INetworkDefinition:
            rec.add("Builder", "create_network", flags)
            return INetworkDefinition(flags)

        def create_builder_config(self) -> IBuilderConfig:
            rec.add("Builder", "create_builder_config")
            return IBuilderConfig()

        def create_optimization_profile(self) -> IOptimizationProfile:
            rec.add("Builder", "create_optimization_profile")
            return IOptimizationProfile()

        @property
        def platform_has_fast_fp16(self) -> bool:
            rec.add("Builder", ".platform_has_fast_fp16")
            return True

        @property
        def platform_has_fast_int8(self) -> bool:
            rec.add("Builder", ".platform_has_fast_int8")
            return True

        def build_serialized_network(self, network: INetworkDefinition, config: IBuilderConfig) -> IHostMemory | None:
            rec.add("Builder", "build_serialized_network", network, config)
            if len(config.profiles) != 1 or config.cache is None:
                return None
            config.cache.data += b"|timings-of-this-build"  # what a real build adds to the attached cache
            (shapes,) = config.profiles[0].shapes.values()
            header = {"profile": [list(s) for s in shapes], "flags": sorted(f.name for f in config.flags)}
            return IHostMemory(ENGINE_MAGIC + json.dumps(header).encode() + b"\n" + network.onnx)

    class ICudaEngine:
        def __init__(self, blob: bytes) -> None:
            import onnxruntime as ort

            header, model = blob[len(ENGINE_MAGIC) :].split(b"\n", 1)
            self.profile = [tuple(s) for s in json.loads(header)["profile"]]
            self.session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
            self.names = [i.name for i in self.session.get_inputs()] + [o.name for o in self.session.get_outputs()]
            self.dim = self.session.get_outputs()[0].shape[1]

        @property
        def num_io_tensors(self) -> int:
            rec.add("ICudaEngine", ".num_io_tensors")
            return len(self.names)

        def get_tensor_name(self, index: int) -> str:
            rec.add("ICudaEngine", "get_tensor_name", index)
            return self.names[index]

        def get_tensor_mode(self, name: str) -> TensorIOMode:
            rec.add("ICudaEngine", "get_tensor_mode", name)
            return TensorIOMode.INPUT if name == "chip" else TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name: str) -> DataType:
            rec.add("ICudaEngine", "get_tensor_dtype", name)
            return DataType.UINT8 if name == "chip" else DataType.FLOAT

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            rec.add("ICudaEngine", "get_tensor_shape", name)
            return (-1, *self.profile[0][1:]) if name == "chip" else (-1, self.dim)

        def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
            rec.add("ICudaEngine", "get_tensor_profile_shape", name, profile_index)
            return list(self.profile)

        def create_execution_context(self) -> IExecutionContext:
            rec.add("ICudaEngine", "create_execution_context")
            return IExecutionContext(self)

    class IExecutionContext:
        def __init__(self, engine: ICudaEngine) -> None:
            self.engine = engine
            self.input_shape: tuple[int, ...] | None = None
            self.addresses: dict[str, int] = {}
            self.executed: list[int] = []

        def set_input_shape(self, name: str, shape: tuple) -> bool:
            rec.add("IExecutionContext", "set_input_shape", name, shape)
            low, _, high = self.engine.profile
            shape = tuple(shape)
            if name != "chip" or shape[1:] != low[1:] or not low[0] <= shape[0] <= high[0]:
                return False  # as TensorRT: a shape outside the profile is refused
            self.input_shape = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple[int, ...]:
            rec.add("IExecutionContext", "get_tensor_shape", name)
            batch = self.input_shape[0] if self.input_shape else -1
            return self.input_shape if name == "chip" else (batch, self.engine.dim)

        def set_tensor_address(self, name: str, memory: int) -> bool:
            rec.add("IExecutionContext", "set_tensor_address", name, memory)
            self.addresses[name] = memory
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            rec.add("IExecutionContext", "execute_async_v3", stream_handle)
            if type(stream_handle) is not int or stream_handle not in gpu.streams:
                return False
            if self.input_shape is None or set(self.addresses) != set(self.engine.names):
                return False
            n = self.input_shape[0]
            chip = gpu.memory[self.addresses["chip"]]
            size = int(np.prod(self.input_shape))
            if len(chip) < size:
                return False
            x = np.frombuffer(bytes(chip[:size]), np.uint8).reshape(self.input_shape)
            outputs = self.engine.session.run(None, {"chip": x})
            for name, value in zip(self.engine.names[1:], outputs):
                out = np.ascontiguousarray(value, np.float32).tobytes()
                buffer = gpu.memory[self.addresses[name]]
                if len(buffer) < len(out):
                    return False
                buffer[: len(out)] = out
            self.executed.append(n)
            gpu.calls.append(("execute", (n,)))
            return True

    class Runtime:
        def __init__(self, logger: Logger) -> None:
            rec.add("Runtime", "__init__", logger)

        def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
            rec.add("Runtime", "deserialize_cuda_engine", serialized_engine)
            if not bytes(serialized_engine).startswith(ENGINE_MAGIC):
                return None
            engine = ICudaEngine(bytes(serialized_engine))
            trt.engines.append(engine)
            return engine

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, OnnxParser, Runtime
    trt.engines = []
    return trt


def make_fake_cudart(gpu: FakeGpu) -> types.ModuleType:
    """cuda-python's runtime API as far as we use it: every call returns (error, *values)."""
    cudart = types.ModuleType("cuda.bindings.runtime")

    class cudaError_t(enum.IntEnum):  # noqa: N801 - cuda-python's names
        cudaSuccess = 0
        cudaErrorInvalidValue = 1
        cudaErrorNoDevice = 100
        cudaErrorInvalidDevice = 101

    class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
        cudaMemcpyHostToDevice = 1
        cudaMemcpyDeviceToHost = 2

    class cudaStream_t:  # noqa: N801
        def __init__(self, handle: int) -> None:
            self.handle = handle

        def __int__(self) -> int:
            return self.handle

    ok = cudaError_t.cudaSuccess

    def call(name: str, *args: Any) -> None:
        gpu.calls.append((name, args))

    def cudaSetDevice(device: int) -> tuple:  # noqa: N802
        call("cudaSetDevice", device)
        if gpu.devices == 0:
            return (cudaError_t.cudaErrorNoDevice,)
        return (ok,) if 0 <= device < gpu.devices else (cudaError_t.cudaErrorInvalidDevice,)

    def cudaGetDeviceProperties(device: int) -> tuple:  # noqa: N802
        call("cudaGetDeviceProperties", device)
        props = types.SimpleNamespace(name=gpu.name.encode() + b"\0" * 8, major=gpu.cc[0], minor=gpu.cc[1])
        return (ok, props) if 0 <= device < gpu.devices else (cudaError_t.cudaErrorInvalidDevice, None)

    def cudaMalloc(size: int) -> tuple:  # noqa: N802
        call("cudaMalloc", size)
        ptr = gpu.next_ptr
        gpu.next_ptr += (size + 255) // 256 * 256 + 256
        gpu.memory[ptr] = bytearray(size)
        return ok, ptr

    def cudaFree(ptr: int) -> tuple:  # noqa: N802
        call("cudaFree", ptr)
        return (ok,) if gpu.memory.pop(ptr, None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: cudaStream_t) -> tuple:  # noqa: N802
        call("cudaMemcpyAsync", kind, count)
        if int(stream) not in gpu.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            if dst not in gpu.memory or len(gpu.memory[dst]) < count:
                return (cudaError_t.cudaErrorInvalidValue,)
            gpu.memory[dst][:count] = ctypes.string_at(src, count)
        else:
            if src not in gpu.memory or len(gpu.memory[src]) < count:
                return (cudaError_t.cudaErrorInvalidValue,)
            ctypes.memmove(dst, bytes(gpu.memory[src][:count]), count)
        return (ok,)

    def cudaStreamCreate() -> tuple:  # noqa: N802
        handle = 0x5000 + len(gpu.calls)
        gpu.streams.add(handle)
        call("cudaStreamCreate")
        return ok, cudaStream_t(handle)

    def cudaStreamSynchronize(stream: cudaStream_t) -> tuple:  # noqa: N802
        call("cudaStreamSynchronize")
        return (ok,) if int(stream) in gpu.streams else (cudaError_t.cudaErrorInvalidValue,)

    def cudaStreamDestroy(stream: cudaStream_t) -> tuple:  # noqa: N802
        call("cudaStreamDestroy")
        if int(stream) not in gpu.streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        gpu.streams.remove(int(stream))
        return (ok,)

    for value in list(locals().values()):
        if callable(value) and getattr(value, "__name__", "").startswith("cuda"):
            setattr(cudart, value.__name__, value)
    return cudart


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """A fake TensorRT 10.13 and cuda-python with one H100-like GPU (sm 9.0), in sys.modules."""
    rec, gpu = Recorder(), FakeGpu()
    trt = make_fake_tensorrt(rec, gpu)
    cudart = make_fake_cudart(gpu)
    install_fakes(monkeypatch, trt, cudart)
    return types.SimpleNamespace(rec=rec, gpu=gpu, trt=trt, cudart=cudart)


def install_fakes(monkeypatch: pytest.MonkeyPatch, trt: types.ModuleType | None, cudart: types.ModuleType | None) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    cuda = types.ModuleType("cuda")
    bindings = types.ModuleType("cuda.bindings")
    cuda.bindings = bindings
    if cudart is not None:
        bindings.runtime = cudart
    monkeypatch.setitem(sys.modules, "cuda", cuda if cudart is not None else None)
    monkeypatch.setitem(sys.modules, "cuda.bindings", bindings if cudart is not None else None)
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", cudart)


def block_tensorrt(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError


# --- batch profile and argument checks -------------------------------------------------------------


def test_parse_batch_accepts_min_opt_max_or_one_size() -> None:
    assert build.parse_batch("1,8,32") == (1, 8, 32)
    assert build.parse_batch(" 2, 4 ,16") == build.BatchProfile(min=2, opt=4, max=16)
    assert build.parse_batch("8") == (8, 8, 8)
    assert build.check_batch([1, 1, 1]) == (1, 1, 1)


@pytest.mark.parametrize("text", ["", "1,8", "1,2,3,4", "0,1,2", "8,4,32", "1,32,8", "1,8,x", "-1,2,3", "1.5,2,3"])
def test_parse_batch_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="batch"):
        build.parse_batch(text)


@pytest.mark.parametrize("batch", [(1, 8), (True, 8, 32), (1.0, 8, 32), (2, 1, 4), (0, 0, 0)])
def test_check_batch_rejects(batch: tuple) -> None:
    with pytest.raises(ValueError):
        build.check_batch(batch)


def test_precision_and_workspace_checks() -> None:
    assert [build.check_precision(p) for p in ("fp32", "fp16", "int8")] == ["fp32", "fp16", "int8"]
    for bad in ("FP16", "int4", "best", ""):
        with pytest.raises(ValueError, match="precision"):
            build.check_precision(bad)
    assert build.check_workspace(1) == 1
    for bad in (0, -5, True, 1.5, "1024"):
        with pytest.raises(ValueError, match="workspace"):
            build.check_workspace(bad)


def test_cli_usage_errors_exit_2(tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in ([str(tiny), "--batch", "8,4,32"], [str(tiny), "--precision", "int4"], []):
        with pytest.raises(SystemExit) as exit_info:
            facesdk(["export", "trt", *argv])
        assert exit_info.value.code == 2
    assert "1 <= min <= opt <= max" in capsys.readouterr().err


# --- the ONNX contract and quantisation, as TensorRT will see them ----------------------------------


def test_inspect_tiny_and_pfe_models(tmp_path: Path) -> None:
    model = build.inspect_onnx(tiny_model(tmp_path / "t.onnx"))
    assert (model.input_size, model.embedding_dim, model.outputs) == ((SIZE, SIZE), DIM, ("embedding",))
    assert model.fixed_batch is None and model.qdq_nodes == 0 and model.quantization_problems == ()
    assert model.metadata["model_name"] == "tiny_test" and len(model.sha256) == 64
    pfe = build.inspect_onnx(tiny_model(tmp_path / "pfe.onnx", pfe=True))
    assert pfe.outputs == ("embedding", "sigma_sq")
    assert build.inspect_onnx(tiny_model(tmp_path / "b4.onnx", batch=4)).fixed_batch == 4


def test_inspect_the_real_default_model(default_onnx: Path) -> None:
    """dlib's ResNet-29 as exported: its uint8 input reaches TensorRT only through a Cast."""
    model = build.inspect_onnx(default_onnx)
    assert (model.input_size, model.embedding_dim, model.outputs) == ((150, 150), 128, ("embedding",))
    assert model.fixed_batch is None and model.qdq_nodes == 0
    build.check_model_for(model, "fp16", build.BatchProfile(1, 8, 32))
    with pytest.raises(ValueError, match="no QuantizeLinear/DequantizeLinear"):
        build.check_model_for(model, "int8", build.BatchProfile(1, 8, 32))


def test_inspect_rejects_models_tensorrt_would_misread(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="only through a Cast"):
        build.inspect_onnx(tiny_model(tmp_path / "identity.onnx", consumer="Identity"))
    renamed = onnx.load_model(tiny_model(tmp_path / "r.onnx"))
    renamed.graph.output[0].name = "features"
    renamed.graph.node[-1].output[0] = "features"
    onnx.save_model(renamed, tmp_path / "r.onnx")
    with pytest.raises(ValueError, match="expected 'embedding'"):
        build.inspect_onnx(tmp_path / "r.onnx")
    bare = onnx.load_model(tiny_model(tmp_path / "bare.onnx"))
    del bare.metadata_props[:]
    onnx.save_model(bare, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="not a facesdk embedding model"):
        build.inspect_onnx(tmp_path / "bare.onnx")
    unlabelled = onnx.load_model(tiny_model(tmp_path / "u.onnx", pfe=True))
    helper.set_model_props(unlabelled, {p.key: p.value for p in unlabelled.metadata_props if p.key != "uncertainty"})
    onnx.save_model(unlabelled, tmp_path / "u.onnx")
    with pytest.raises(ValueError, match="go together"):
        build.inspect_onnx(tmp_path / "u.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not an ONNX model"):
        build.inspect_onnx(tmp_path / "junk.onnx")
    with pytest.raises(FileNotFoundError):
        build.inspect_onnx(tmp_path / "absent.onnx")


def test_qdq_detection_on_onnxruntime_quantised_models(tiny: Path, tmp_path: Path) -> None:
    from onnxruntime.quantization import QuantType

    ready = build.inspect_onnx(tensorrt_ready_int8(tiny, tmp_path / "ready.onnx"))
    assert ready.qdq_nodes >= 4 and ready.quantization_problems == ()
    build.check_model_for(ready, "int8", build.BatchProfile(1, 8, 32))
    with pytest.raises(ValueError, match="build it with --precision int8"):
        build.check_model_for(ready, "fp16", build.BatchProfile(1, 8, 32))

    # ONNX Runtime's defaults: int32 biases and asymmetric activations, which TensorRT refuses.
    default = build.inspect_onnx(quantized(tiny, tmp_path / "default.onnx"))
    problems = " ".join(default.quantization_problems)
    assert default.qdq_nodes >= 4
    assert "QuantizeBias=False" in problems and "asymmetric" in problems
    with pytest.raises(ValueError, match="TensorRT cannot take this quantisation.*facesdk export int8"):
        build.check_model_for(default, "int8", build.BatchProfile(1, 8, 32))

    unsigned = build.inspect_onnx(
        quantized(tiny, tmp_path / "u8.onnx", activation_type=QuantType.QUInt8, extra_options={"QuantizeBias": False})
    )
    assert any("zero point is uint8" in p for p in unsigned.quantization_problems)


def test_int8_needs_explicit_quantisation(tiny: Path) -> None:
    with pytest.raises(ValueError) as error:
        build.check_model_for(build.inspect_onnx(tiny), "int8", build.BatchProfile(1, 8, 32))
    message = str(error.value)
    assert "no QuantizeLinear/DequantizeLinear" in message
    assert "implicit INT8 calibration is not supported" in message
    assert "facesdk export int8" in message


def test_fixed_batch_model_needs_that_batch(tmp_path: Path) -> None:
    model = build.inspect_onnx(tiny_model(tmp_path / "b4.onnx", batch=4))
    with pytest.raises(ValueError, match="fixed batch of 4; use --batch 4"):
        build.check_model_for(model, "fp16", build.BatchProfile(1, 8, 32))
    build.check_model_for(model, "fp16", build.parse_batch("4"))


# --- the metadata file and the compatibility check --------------------------------------------------


def sample_info(tiny: Path, engine: Path, *, version: str = TRT_VERSION, cc: str = "9.0") -> dict:
    model = build.inspect_onnx(tiny)
    return build.engine_metadata(
        model,
        engine_path=engine,
        engine_sha256="ab" * 32,
        engine_bytes=1234,
        tensorrt_version=version,
        gpu=rt.GpuInfo("NVIDIA H100 80GB HBM3", cc),
        precision="fp16",
        strongly_typed=False,
        batch=build.BatchProfile(1, 8, 32),
        workspace_mib=512,
        build_seconds=3.25,
    )


def test_metadata_round_trip(tiny: Path, tmp_path: Path) -> None:
    engine = tmp_path / "tiny.engine"
    info = sample_info(tiny, engine)
    rt.sidecar_path(engine).write_text(json.dumps(info))
    assert rt.sidecar_path(engine) == tmp_path / "tiny.engine.json"
    read = rt.read_engine_info(engine)
    assert read == info
    assert read["profile"] == {"input": "chip", "min": [1, 8, 8, 3], "opt": [8, 8, 8, 3], "max": [32, 8, 8, 3]}
    assert read["onnx"]["metadata"] == {p.key: p.value for p in onnx.load_model(tiny).metadata_props}
    assert read["onnx"]["sha256"] == rt.sha256_file(tiny)
    assert read["gpu"] == {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    assert rt.validate_engine_info(read) == ((SIZE, SIZE), DIM)


def test_compatibility_check_names_the_rebuild_command(tiny: Path, tmp_path: Path) -> None:
    engine = tmp_path / "my engines" / "tiny.engine"
    info = sample_info(tiny, engine)
    here = rt.GpuInfo("NVIDIA H100 80GB HBM3", "9.0")
    rt.check_engine_compatible(info, engine, tensorrt_version=TRT_VERSION, gpu=here, engine_sha256="ab" * 32)
    rt.check_engine_compatible(info, engine, tensorrt_version=TRT_VERSION, gpu=rt.GpuInfo("NVIDIA H100 PCIe", "9.0"))
    command = (
        f"facesdk export trt {tiny.resolve()} --precision fp16 --batch 1,8,32 "
        f"-o '{engine}' --workspace-mib 512"
    )
    assert rt.rebuild_command(engine, info) == command

    with pytest.raises(rt.EngineMismatchError) as error:
        rt.check_engine_compatible(info, engine, tensorrt_version="10.3.0.30", gpu=here)
    assert f"built with TensorRT {TRT_VERSION}, this machine has 10.3.0.30" in str(error.value)
    assert str(error.value).endswith(command)

    orin = rt.GpuInfo("Orin", "8.7")
    with pytest.raises(rt.EngineMismatchError, match=r"compute capability 9\.0 .*this GPU is 8\.7 \(Orin\)") as error:
        rt.check_engine_compatible(info, engine, tensorrt_version=TRT_VERSION, gpu=orin)
    assert str(error.value).endswith(command)
    with pytest.raises(rt.EngineMismatchError, match="describes another engine"):
        rt.check_engine_compatible(info, engine, tensorrt_version=TRT_VERSION, gpu=here, engine_sha256="cd" * 32)
    assert issubclass(rt.EngineMismatchError, BackendUnavailableError)
    assert issubclass(rt.EngineMismatchError, FaceSDKError)


def test_missing_or_corrupt_metadata_says_how_to_rebuild(tiny: Path, tmp_path: Path) -> None:
    engine = tmp_path / "tiny.engine"
    with pytest.raises(rt.EngineMismatchError, match="is missing.*facesdk export trt MODEL.onnx --precision fp16"):
        rt.read_engine_info(engine)
    info = sample_info(tiny, engine)
    sidecar = rt.sidecar_path(engine)
    text = json.dumps(info)
    cases = {
        "truncated JSON": text[: len(text) // 2],
        "not an object": "[1, 2]",
        "other format": json.dumps({**info, "format": "something-else"}),
        "newer format": json.dumps({**info, "format_version": 2}),
        "no compute capability": json.dumps({**info, "gpu": {"name": "x"}}),
        "profile of another size": json.dumps({**info, "profile": {**info["profile"], "max": [32, 9, 9, 3]}}),
        "profile out of order": json.dumps({**info, "profile": {**info["profile"], "min": [64, 8, 8, 3]}}),
        "bad model metadata": json.dumps({**info, "onnx": {**info["onnx"], "metadata": {"model_name": "x"}}}),
        "unknown output": json.dumps({**info, "io": {**info["io"], "logits": {}}}),
        "sigma_sq of a non-PFE model": json.dumps({**info, "io": {**info["io"], "sigma_sq": {}}}),
    }
    for case, content in cases.items():
        sidecar.write_text(content)
        with pytest.raises(rt.EngineMismatchError, match="is corrupt.*Rebuild the engine with: facesdk export trt") as e:
            rt.read_engine_info(engine)
        if case in ("other format", "newer format", "no compute capability"):  # the rest of it is still usable
            assert f"--batch 1,8,32 -o {engine} --workspace-mib 512" in str(e.value), case


# --- missing packages -------------------------------------------------------------------------------


def test_missing_tensorrt_and_cuda_python_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    block_tensorrt(monkeypatch)
    with pytest.raises(BackendUnavailableError) as error:
        rt.import_tensorrt()
    assert "tensorrt-cu12" in str(error.value) and "python3-libnvinfer" in str(error.value)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))  # e.g. type stubs only
    with pytest.raises(BackendUnavailableError, match="found no TensorRT bindings"):
        rt.import_tensorrt()
    old = types.ModuleType("tensorrt")
    old.__version__, old.Runtime = "8.6.2", object
    monkeypatch.setitem(sys.modules, "tensorrt", old)
    with pytest.raises(BackendUnavailableError, match="TensorRT 8.6.2 is too old.*JetPack 6.1"):
        rt.import_tensorrt()
    install_fakes(monkeypatch, None, None)
    with pytest.raises(BackendUnavailableError, match="cuda-python"):
        rt.import_cudart()


def test_cli_without_tensorrt_fails_clearly(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    block_tensorrt(monkeypatch)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not available.*tensorrt-cu12.*python3-libnvinfer"):
        facesdk(["-v", "export", "trt", str(tiny), "--precision", "fp16", "-o", str(tmp_path / "t.engine")])  # -v: raise
    assert not (tmp_path / "t.engine").exists()


def test_cli_process_without_tensorrt_exits_1(tiny: Path, tmp_path: Path) -> None:
    """This machine as it is: `facesdk export trt` names what to install and exits 1."""
    try:
        rt.import_tensorrt()
        pytest.skip("a TensorRT is installed here")
    except BackendUnavailableError:
        pass
    done = subprocess.run(
        [sys.executable, "-m", "cli", "export", "trt", str(tiny), "-o", str(tmp_path / "t.engine")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("facesdk: error:") and "TensorRT" in done.stderr and "python3-libnvinfer" in done.stderr


def test_embedder_without_tensorrt_fails_clearly(
    fake: types.SimpleNamespace, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = build.build_engine(tiny, tmp_path / "t.engine")
    block_tensorrt(monkeypatch)
    with pytest.raises(BackendUnavailableError, match="TensorRT is not available.*python3-libnvinfer"):
        rt.TensorRTEmbedder(engine)
    install_fakes(monkeypatch, fake.trt, None)
    with pytest.raises(BackendUnavailableError, match="cuda-python is not available"):
        rt.TensorRTEmbedder(engine)


# --- the builder's call sequence (fake TensorRT) ----------------------------------------------------


def test_build_fp16_follows_the_api(fake: types.SimpleNamespace, tiny: Path, tmp_path: Path) -> None:
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"timings-of-earlier-builds")
    out = build.build_engine(tiny, tmp_path / "t.engine", precision="fp16", batch=(1, 8, 32), timing_cache=cache)
    rec = fake.rec
    assert rec.find("Builder", "create_network") == [((0,), {})]  # weakly typed: precision from flags
    (config,) = [a[0] for a, _ in rec.find("IBuilderConfig", "set_flag")]
    assert config == BuilderFlag.FP16 and not rec.find("IBuilderConfig", "clear_flag")
    assert rec.find("IBuilderConfig", "set_memory_pool_limit") == [((MemoryPoolType.WORKSPACE, 1024 << 20), {})]
    assert rec.find("IOptimizationProfile", "set_shape") == [(("chip", (1, 8, 8, 3), (8, 8, 8, 3), (32, 8, 8, 3)), {})]
    assert rec.find("IBuilderConfig", "create_timing_cache")[0][0] == (b"timings-of-earlier-builds",)
    assert [a[1] for a, _ in rec.find("IBuilderConfig", "set_timing_cache")] == [False]
    first, second, third = rec.order("add_optimization_profile", "set_timing_cache", "build_serialized_network")
    assert first < third and second < third
    assert cache.read_bytes() == b"timings-of-earlier-builds|timings-of-this-build"  # saved after the build
    assert (rec.find("OnnxParser", "parse")[0][0][1]) == str(tiny)

    info = json.loads(rt.sidecar_path(out).read_text())
    assert info["precision"] == "fp16" and info["strongly_typed"] is False
    assert info["tensorrt_version"] == TRT_VERSION
    assert info["gpu"] == {"name": "NVIDIA Fake H100", "compute_capability": "9.0"}
    assert info["engine_sha256"] == rt.sha256_file(out) and info["engine_bytes"] == out.stat().st_size
    assert info["onnx"]["sha256"] == rt.sha256_file(tiny) and info["onnx"]["path"] == str(tiny.resolve())
    assert info["onnx"]["metadata"]["input_size"] == "8x8" and info["onnx"]["qdq_nodes"] == 0
    assert info["io"] == {"chip": {"dtype": "uint8", "shape": [-1, 8, 8, 3]}, "embedding": {"dtype": "float32", "shape": [-1, 4]}}
    assert info["workspace_mib"] == 1024 and info["build_seconds"] >= 0 and info["built_at"].endswith("+00:00")


def test_build_int8_and_fp32_flags(fake: types.SimpleNamespace, tiny: Path, tmp_path: Path) -> None:
    qdq = tensorrt_ready_int8(tiny, tmp_path / "q.onnx")
    build.build_engine(qdq, tmp_path / "q.engine", precision="int8", workspace_mib=256)
    flags = {a[0] for a, _ in fake.rec.find("IBuilderConfig", "set_flag")}
    assert flags == {BuilderFlag.INT8, BuilderFlag.FP16}
    assert json.loads(rt.sidecar_path(tmp_path / "q.engine").read_text())["onnx"]["qdq_nodes"] >= 4

    fake.rec.calls.clear()
    build.build_engine(qdq, tmp_path / "qs.engine", precision="int8", strongly_typed=True)
    assert fake.rec.find("Builder", "create_network") == [((1 << 1,), {})]  # STRONGLY_TYPED
    assert not fake.rec.find("IBuilderConfig", "set_flag")  # precisions come from the graph
    assert "--strongly-typed" in rt.rebuild_command(tmp_path / "qs.engine", rt.read_engine_info(tmp_path / "qs.engine"))

    fake.rec.calls.clear()
    build.build_engine(tiny, tmp_path / "f.engine", precision="fp32")
    assert fake.rec.find("IBuilderConfig", "clear_flag") == [((BuilderFlag.TF32,), {})]
    assert not fake.rec.find("IBuilderConfig", "set_flag")


def test_build_checks_everything_before_touching_tensorrt(fake: types.SimpleNamespace, tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no QuantizeLinear"):
        build.build_engine(tiny, tmp_path / "t.engine", precision="int8")
    with pytest.raises(ValueError, match="drop --strongly-typed"):
        build.build_engine(tiny, tmp_path / "t.engine", precision="fp16", strongly_typed=True)
    with pytest.raises(ValueError, match="name it \\*.engine"):
        build.build_engine(tiny, tmp_path / "t.engine.json")
    assert fake.rec.calls == [] and not (tmp_path / "t.engine").exists()


def test_build_reports_parser_errors_and_stale_timing_cache(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    gpu = FakeGpu()
    install_fakes(monkeypatch, make_fake_tensorrt(Recorder(), gpu, parse_ok=False), make_fake_cudart(gpu))
    with pytest.raises(RuntimeError, match="could not parse .*fake parser error"):
        build.build_engine(tiny, tmp_path / "t.engine")
    assert not (tmp_path / "t.engine").exists()

    rec = Recorder()
    install_fakes(monkeypatch, make_fake_tensorrt(rec, gpu), make_fake_cudart(gpu))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"OTHER-GPU timings")
    build.build_engine(tiny, tmp_path / "t.engine", timing_cache=cache)
    assert "another GPU or TensorRT version" in caplog.text
    assert cache.read_bytes() == b"|timings-of-this-build"  # replaced by a fresh cache of this GPU


def test_cli_builds_with_the_fake(fake: types.SimpleNamespace, tiny: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert facesdk(["export", "trt", str(tiny), "--batch", "2,4,8", "--workspace-mib", "64"]) == 0
    engine = tiny.with_suffix(".fp16.engine")
    assert engine.is_file() and rt.sidecar_path(engine).is_file()
    assert rt.read_engine_info(engine)["profile"]["opt"] == [4, 8, 8, 3]
    out = capsys.readouterr().out
    assert f"wrote {engine}" in out and "batch 2..8 (tuned for 4)" in out and "facesdk eval trt-parity" in out


# --- the backend (fake TensorRT + fake cuda-python) -------------------------------------------------


def test_embedder_matches_onnxruntime_and_splits_batches(fake: types.SimpleNamespace, tiny: Path, tmp_path: Path) -> None:
    engine_path = build.build_engine(tiny, tmp_path / "t.engine", batch=(1, 2, 3))
    reference = OnnxEmbedder(tiny)
    x = chips(7)
    with rt.TensorRTEmbedder(engine_path) as embedder:
        assert (embedder.name, embedder.backend, embedder.input_size, embedder.embedding_dim) == ("tiny_test", "tensorrt", (8, 8), 4)
        assert embedder.batch_profile == (1, 2, 3) and embedder.metadata == reference.metadata
        assert embedder.providers == ["TensorRT 10.13.0.35 fp16 on cuda:0 (NVIDIA Fake H100, sm_90)"]
        got = embedder.embed(x)
        assert got.dtype == np.float32 and got.shape == (7, DIM)
        np.testing.assert_array_equal(got, reference.embed(x))
        context = embedder._context
        assert context.executed == [3, 3, 1]  # split at the profile's maximum
        assert embedder.embed(x[:0]).shape == (0, DIM) and context.executed == [3, 3, 1]
        with pytest.raises(TypeError, match="uint8"):
            embedder.embed(x.astype(np.float32))
        with pytest.raises(ValueError, match=r"\[N, 8, 8, 3\]"):
            embedder.embed(chips(2, size=9))
        with pytest.raises(ValueError, match="not a PFE"):
            embedder.embed_with_uncertainty(x)
    assert fake.gpu.memory == {} and fake.gpu.streams == set()  # close() freed everything
    with pytest.raises(rt.TensorRTError, match="closed"):
        embedder.embed(x)
    embedder.close()  # idempotent


def test_embedder_grows_buffers_lazily_and_pads_to_the_profile_minimum(
    fake: types.SimpleNamespace, tiny: Path, tmp_path: Path
) -> None:
    engine_path = build.build_engine(tiny, tmp_path / "t.engine", batch=(2, 4, 8))
    reference = OnnxEmbedder(tiny)
    embedder = rt.TensorRTEmbedder(engine_path)

    def mallocs() -> list[int]:
        return [args[0] for name, args in fake.gpu.calls if name == "cudaMalloc"]

    one = chips(1, seed=3)
    np.testing.assert_array_equal(embedder.embed(one), reference.embed(one))
    assert embedder._context.executed == [2]  # padded up to the minimum, the pad rows dropped
    assert mallocs() == [2 * 8 * 8 * 3, 2 * DIM * 4]
    embedder.embed(chips(2))
    assert len(mallocs()) == 2  # fits: reused
    five = chips(5, seed=4)
    np.testing.assert_array_equal(embedder.embed(five), reference.embed(five))
    assert mallocs()[2:] == [5 * 8 * 8 * 3, 5 * DIM * 4]
    assert sum(name == "cudaFree" for name, _ in fake.gpu.calls) == 2
    embedder.close()
    assert fake.gpu.memory == {}


def test_embedder_pfe_uncertainty(fake: types.SimpleNamespace, tmp_path: Path) -> None:
    model = tiny_model(tmp_path / "pfe.onnx", pfe=True)
    engine_path = build.build_engine(model, tmp_path / "pfe.engine", batch=(1, 4, 4))
    import onnxruntime as ort

    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    x = chips(6, seed=5)
    mu_ref, sigma_ref = session.run(["embedding", "sigma_sq"], {"chip": x})
    with rt.TensorRTEmbedder(engine_path) as embedder:
        assert embedder.has_uncertainty
        mu, sigma_sq = embedder.embed_with_uncertainty(x)
        np.testing.assert_array_equal(mu, mu_ref)
        np.testing.assert_array_equal(sigma_sq, sigma_ref)
        np.testing.assert_array_equal(embedder.embed(x), mu_ref)


def test_embedder_is_thread_safe(fake: types.SimpleNamespace, tiny: Path, tmp_path: Path) -> None:
    engine_path = build.build_engine(tiny, tmp_path / "t.engine", batch=(1, 4, 4))
    reference = OnnxEmbedder(tiny)
    inputs = [chips(n, seed=n) for n in (1, 3, 5, 9)]
    expected = [reference.embed(x) for x in inputs]
    failures: list[str] = []
    with rt.TensorRTEmbedder(engine_path) as embedder:

        def work(k: int) -> None:
            for _ in range(5):
                if not np.array_equal(embedder.embed(inputs[k]), expected[k]):
                    failures.append(f"thread {k}")

        threads = [threading.Thread(target=work, args=(k,)) for k in range(len(inputs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert failures == []


def test_embedder_refuses_engines_built_elsewhere(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    built_on = FakeGpu()  # sm 9.0, TensorRT 10.13
    install_fakes(monkeypatch, make_fake_tensorrt(Recorder(), built_on), make_fake_cudart(built_on))
    engine = build.build_engine(tiny, tmp_path / "t.engine")
    command = rt.rebuild_command(engine, rt.read_engine_info(engine))

    orin = FakeGpu("Orin", (8, 7))
    rec = Recorder()
    install_fakes(monkeypatch, make_fake_tensorrt(rec, orin), make_fake_cudart(orin))
    with pytest.raises(rt.EngineMismatchError, match=r"compute capability 9\.0 .*this GPU is 8\.7") as error:
        rt.TensorRTEmbedder(engine)
    assert str(error.value).endswith(command)
    assert not rec.find("Runtime", "deserialize_cuda_engine")  # refused before TensorRT sees it

    install_fakes(monkeypatch, make_fake_tensorrt(rec, built_on, version="10.3.0.30"), make_fake_cudart(built_on))
    with pytest.raises(rt.EngineMismatchError, match="built with TensorRT 10.13.0.35, this machine has 10.3.0.30"):
        rt.TensorRTEmbedder(engine)

    install_fakes(monkeypatch, make_fake_tensorrt(rec, built_on), make_fake_cudart(built_on))
    rt.TensorRTEmbedder(engine).close()
    engine.write_bytes(engine.read_bytes() + b"\0")
    with pytest.raises(rt.EngineMismatchError, match="describes another engine"):
        rt.TensorRTEmbedder(engine)
    rt.sidecar_path(engine).unlink()
    with pytest.raises(rt.EngineMismatchError, match="is missing"):
        rt.TensorRTEmbedder(engine)
    with pytest.raises(FileNotFoundError, match="build it with: facesdk export trt"):
        rt.TensorRTEmbedder(tmp_path / "absent.engine")
    with pytest.raises(ValueError, match="device"):
        rt.TensorRTEmbedder(engine, device=-1)


def test_embedder_without_a_gpu(tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gpu = FakeGpu()
    install_fakes(monkeypatch, make_fake_tensorrt(Recorder(), gpu), make_fake_cudart(gpu))
    engine = build.build_engine(tiny, tmp_path / "t.engine")
    with pytest.raises(BackendUnavailableError, match="no usable CUDA GPU 1: cudaSetDevice\\(1\\) failed: cudaErrorInvalidDevice"):
        rt.TensorRTEmbedder(engine, device=1)
    none = FakeGpu(devices=0)
    install_fakes(monkeypatch, make_fake_tensorrt(Recorder(), none), make_fake_cudart(none))
    with pytest.raises(BackendUnavailableError, match="cudaErrorNoDevice"):
        rt.TensorRTEmbedder(engine)


# --- our TensorRT calls against TensorRT 10.13's declared API (tensorrt-stubs) ----------------------


def stub_file() -> Path:
    try:
        dist = importlib.metadata.distribution("tensorrt-stubs")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("tensorrt-stubs not installed (the declared TensorRT API to check our calls against)")
    path = Path(dist.locate_file("tensorrt_bindings/tensorrt.pyi"))
    if not path.is_file():
        pytest.skip(f"tensorrt-stubs has no {path}")
    return path


def _signature(fn: ast.FunctionDef, static: bool) -> inspect.Signature:
    args = fn.args
    positional = [*args.posonlyargs, *args.args]
    if not static:
        positional = positional[1:]  # self
    first_default = len(positional) - len(args.defaults)
    params = [
        inspect.Parameter(
            a.arg,
            inspect.Parameter.POSITIONAL_ONLY if a in args.posonlyargs else inspect.Parameter.POSITIONAL_OR_KEYWORD,
            default=None if i >= first_default else inspect.Parameter.empty,
        )
        for i, a in enumerate(positional)
    ]
    if args.vararg:
        params.append(inspect.Parameter(args.vararg.arg, inspect.Parameter.VAR_POSITIONAL))
    for a, d in zip(args.kwonlyargs, args.kw_defaults):
        params.append(inspect.Parameter(a.arg, inspect.Parameter.KEYWORD_ONLY, default=None if d else inspect.Parameter.empty))
    if args.kwarg:
        params.append(inspect.Parameter(args.kwarg.arg, inspect.Parameter.VAR_KEYWORD))
    return inspect.Signature(params)


def parse_stubs(path: Path) -> tuple[ast.Module, set[int]]:
    """The stub module's AST. pybind11-generated stubs hold a few signatures Python cannot parse
    (a parameter without default after defaulted ones): those defs become ``(self, *args,
    **kwargs)`` and their line numbers are returned, so that a call to one is reported, not passed."""
    lines = path.read_text().splitlines()
    lenient: set[int] = set()
    for _ in range(100):
        try:
            return ast.parse("\n".join(lines)), lenient
        except SyntaxError as e:
            match = re.match(r"(\s*)def (\w+)\(", lines[(e.lineno or 0) - 1])
            if match is None or e.lineno in lenient:
                raise
            lines[e.lineno - 1] = f"{match[1]}def {match[2]}(self, *args, **kwargs):"
            lenient.add(e.lineno)
    raise AssertionError(f"too many unparsable signatures in {path}")


def stub_api(path: Path) -> dict[str, dict[str, Any]]:
    """class -> {"bases", "methods": name -> [Signature], "attrs": names, "lines": (first, last),
    "unparsed": method names whose declared signature could not be parsed}."""
    api = {}
    module, lenient = parse_stubs(path)
    for node in module.body:
        if not isinstance(node, ast.ClassDef):
            continue
        methods: dict[str, list[inspect.Signature]] = {}
        attrs: set[str] = set()
        unparsed: set[str] = set()
        for item in node.body:
            if isinstance(item, ast.FunctionDef) and item.lineno in lenient:
                unparsed.add(item.name)
            elif isinstance(item, ast.FunctionDef):
                decorators = {d.id if isinstance(d, ast.Name) else getattr(d, "attr", "") for d in item.decorator_list}
                if "property" in decorators or "setter" in decorators:
                    attrs.add(item.name)
                else:
                    methods.setdefault(item.name, []).append(_signature(item, "staticmethod" in decorators))
            elif isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                attrs.add(item.target.id)
            elif isinstance(item, ast.ClassDef):
                attrs.add(item.name)
        bases = [b.id for b in node.bases if isinstance(b, ast.Name)]
        api[node.name] = {
            "bases": bases,
            "methods": methods,
            "attrs": attrs,
            "unparsed": unparsed,
            "lines": (node.lineno, node.end_lineno),
        }
    return api


def _lookup(api: dict, cls: str, kind: str, name: str) -> Any:
    """``name`` in ``api[cls][kind]`` or that of the first base declaring it (methods: the signatures)."""
    while cls in api:
        found = api[cls][kind]
        if name in found:
            return found[name] if kind == "methods" else True
        bases = api[cls]["bases"]
        cls = bases[0] if bases else ""
    return None


def test_recorded_tensorrt_calls_match_the_declared_api(fake: types.SimpleNamespace, tmp_path: Path) -> None:
    api = stub_api(stub_file())
    tiny = tiny_model(tmp_path / "t.onnx")
    qdq = tensorrt_ready_int8(tiny, tmp_path / "q.onnx")
    build.build_engine(tiny, tmp_path / "a.engine", precision="fp16", batch=(1, 2, 3), timing_cache=tmp_path / "c")
    build.build_engine(tiny, tmp_path / "b.engine", precision="fp32")
    build.build_engine(qdq, tmp_path / "c.engine", precision="int8")
    build.build_engine(qdq, tmp_path / "d.engine", precision="int8", strongly_typed=True)
    with rt.TensorRTEmbedder(tmp_path / "a.engine") as embedder:
        embedder.embed(chips(5))
    used = {(cls, method) for cls, method, _, _ in fake.rec.calls}
    assert len(used) >= 30  # the builder and the backend both ran

    problems = []
    for cls, method, args, kwargs in fake.rec.calls:
        if method.startswith("."):
            if not _lookup(api, cls, "attrs", method[1:]):
                problems.append(f"{cls}.{method[1:]} is not a declared property")
            continue
        if _lookup(api, cls, "unparsed", method):
            problems.append(f"{cls}.{method}: its declared signature could not be parsed, so the call is unchecked")
            continue
        signatures = _lookup(api, cls, "methods", method)
        if signatures is None:
            problems.append(f"{cls}.{method} is not declared")
            continue
        def binds(sig: inspect.Signature) -> bool:
            try:
                sig.bind(*args, **kwargs)
                return True
            except TypeError:
                return False

        if not any(binds(sig) for sig in signatures):
            problems.append(f"{cls}.{method}{tuple(type(a).__name__ for a in args)} {sorted(kwargs)} matches no {signatures}")
    assert problems == [], "\n".join(sorted(set(problems)))


def test_fake_enums_match_the_declared_api() -> None:
    path = stub_file()
    api, lines = stub_api(path), path.read_text().splitlines()
    for cls, members in FAKE_ENUMS.items():
        first, last = api[cls]["lines"]
        body = "\n".join(lines[first - 1 : last])
        for member in members:
            assert member.name in api[cls]["attrs"], f"{cls}.{member.name}"
            match = re.search(rf"\b{member.name}: typing\.ClassVar\[[\w.]+\]\s+# value = <[\w.]+: (\d+)>", body)
            assert match and int(match[1]) == member.value, f"{cls}.{member.name} = {member.value}, stub {match and match[1]}"


# --- parity ------------------------------------------------------------------------------------------


class Rotated:
    """Reference embeddings turned by a known angle per face (a stand-in engine with a known error)."""

    def __init__(self, base: np.ndarray, angles: np.ndarray) -> None:
        self.base, self.angles = base, angles

    def embed(self, x: np.ndarray) -> np.ndarray:
        b = self.base[: len(x)]
        ortho = np.roll(b, 1, axis=1)
        ortho -= np.sum(ortho * b, axis=1, keepdims=True) * b
        ortho /= np.linalg.norm(ortho, axis=1, keepdims=True)
        a = self.angles[: len(x), None]
        return (np.cos(a) * b + np.sin(a) * ortho).astype(np.float32)


def test_engine_parity_measures_known_errors() -> None:
    rng = np.random.default_rng(7)
    base = rng.normal(size=(6, 16))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    angles = np.array([0.0, 0.01, 0.05, 0.1, 0.2, 0.3])
    parity = engine_parity(Rotated(base, angles), Rotated(base, np.zeros(6)), chips(6))
    np.testing.assert_allclose(parity.cosines, np.cos(angles), atol=1e-6)
    assert parity.faces == 6 and parity.cosine_min == pytest.approx(np.cos(0.3), abs=1e-6)
    assert parity.pair_drift_max > 0.01
    same = engine_parity(Rotated(base, np.zeros(6)), Rotated(base, np.zeros(6)), chips(6))
    assert same.cosine_min == pytest.approx(1.0) and same.pair_drift_max < 1e-6 and same.max_abs_diff == 0
    with pytest.raises(ValueError, match="at least one"):
        engine_parity(same, same, chips(0))


def test_parity_on_real_faces_through_the_backend(
    fake: types.SimpleNamespace, default_onnx: Path, data: Path, tmp_path: Path
) -> None:
    """dlib's ResNet-29 on LFW faces, through the backend's whole data path (fake engine = ONNX
    Runtime): identical to ONNX Runtime; a mirrored-chip embedder, by contrast, is measurably off."""
    faces = lfw_chips(data, 6)
    assert faces.shape == (6, 150, 150, 3)
    engine = build.build_engine(default_onnx, tmp_path / "dlib.engine", batch=(1, 4, 4))
    reference = OnnxEmbedder(default_onnx, threads=1)
    with rt.TensorRTEmbedder(engine) as embedder:
        parity = engine_parity(embedder, reference, faces)
    assert parity.faces == 6 and parity.cosine_min > 1 - 1e-6 and parity.pair_drift_max < 1e-5

    class Mirrored:
        def embed(self, x: np.ndarray) -> np.ndarray:
            return reference.embed(np.ascontiguousarray(x[:, :, ::-1]))

    off = engine_parity(Mirrored(), reference, faces)
    assert 0.5 < off.cosine_min < 0.995 and off.pair_drift_max > 1e-3
    lines = "\n".join(off.lines())
    assert "faces 6" in lines and "max drift" in lines


# --- on a GPU with TensorRT (skipped here) -----------------------------------------------------------


def real_gpu() -> rt.GpuInfo:
    try:
        rt.import_tensorrt()
    except BackendUnavailableError as e:
        pytest.skip(f"TensorRT not installed: {e}")
    try:
        cudart = rt.import_cudart()
    except BackendUnavailableError as e:
        pytest.skip(f"cuda-python not installed: {e}")
    try:
        return rt.gpu_info(cudart, 0)
    except BackendUnavailableError as e:
        pytest.skip(f"no CUDA GPU: {e}")


def test_real_tensorrt_fp16_engine_parity(default_onnx: Path, data: Path, tmp_path: Path) -> None:
    """The check of docs/tensorrt.md: build fp16 and compare with ONNX Runtime on LFW faces."""
    gpu = real_gpu()
    engine = build.build_engine(default_onnx, tmp_path / "dlib.fp16.engine", batch=(1, 8, 32), timing_cache=tmp_path / "tc")
    info = rt.read_engine_info(engine)
    assert info["gpu"]["compute_capability"] == gpu.compute_capability
    faces = lfw_chips(data, 32)
    with rt.TensorRTEmbedder(engine) as embedder:
        parity = engine_parity(embedder, OnnxEmbedder(default_onnx), faces)
    print(*parity.lines(), sep="\n")
    assert parity.cosine_min > 0.999 and parity.pair_drift_max < 0.02
