"""TensorRT embedding backend: an engine built by ``export.tensorrt`` behind :class:`sdk.embed.Embedder`.

    from sdk.tensorrt import TensorRTEmbedder
    embedder = TensorRTEmbedder("dlib_resnet_v1.fp16.engine")     # GPU 0
    embeddings = embedder.embed(chips)                           # uint8 [N, H, W, 3] -> float32 [N, D]

    facesdk eval trt-parity ENGINE [--onnx MODEL.onnx] [--faces 200]   on a GPU with TensorRT

Written against TensorRT 10's Python API (checked against the tensorrt-stubs 10.13 declarations
and exercised with a recording fake of TensorRT in tests/test_tensorrt.py) and cuda-python's
``cuda.bindings.runtime``. It has NOT run on a real TensorRT: no machine this was written on could
install the TensorRT builder or runtime. Run the parity check above on the device before use.

Engines and their metadata file
-------------------------------
A serialized engine runs only with the TensorRT version and on the GPU architecture (compute
capability) it was built for. Beside every engine ``X.engine`` the builder writes ``X.engine.json``
(format below), and this backend refuses, with the exact command that rebuilds it, an engine
whose metadata file is missing or corrupt, describes another file (sha256), or names another
TensorRT version or compute capability. The runtime is the source of truth for this format, as
``sdk.embed`` is for the ONNX contract; ``export.tensorrt`` writes it.

============================ ====================================================================
format, format_version       ``"facesdk-tensorrt-engine"``, 1
engine_file, engine_sha256   the engine this file describes
tensorrt_version             TensorRT that built it (``tensorrt.__version__``)
gpu                          ``{"name", "compute_capability": "8.7"}`` of the building GPU
precision, strongly_typed    ``fp32`` / ``fp16`` / ``int8``; how the network was typed
profile                      optimisation profile of ``chip``: ``{"min", "opt", "max"}`` shapes
io                           tensor name -> ``{"dtype", "shape"}`` (-1: the batch dimension)
onnx                         ``{"path", "sha256", "qdq_nodes", "metadata"}``: the source model;
                             ``metadata`` is its metadata_props (see ``sdk.embed``)
workspace_mib, built_at, build_seconds, builder
============================ ====================================================================

CUDA memory and streams come from cuda-python (no pycuda). Both ``tensorrt`` and ``cuda`` are
imported only when an embedder is made: ``sdk`` imports without them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdk.embed import INPUT_NAME, OUTPUT_NAME, SIGMA_SQ_NAME, check_chips, parse_metadata
from sdk.errors import BackendUnavailableError, EngineMismatchError, FaceSDKError, TensorRTError

__all__ = [
    "EngineMismatchError",
    "GpuInfo",
    "Parity",
    "TensorRTEmbedder",
    "TensorRTError",
    "check_engine_compatible",
    "engine_parity",
    "import_cudart",
    "import_tensorrt",
    "read_engine_info",
    "rebuild_command",
    "sidecar_path",
    "trt_logger",
    "validate_engine_info",
]

log = logging.getLogger(__name__)

SIGMA_NAME = SIGMA_SQ_NAME  # PFE models: per-dimension variance beside the embedding
OUTPUT_NAMES = (OUTPUT_NAME, SIGMA_NAME)
SIDECAR_FORMAT = "facesdk-tensorrt-engine"
SIDECAR_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
MIN_TENSORRT_MAJOR = 10
INSTALL_TENSORRT = (
    "install TensorRT 10's Python bindings: on a desktop or server GPU NVIDIA's wheels "
    "(`pip install tensorrt-cu12`, or tensorrt-cu13 for CUDA 13) or the wheel inside the TensorRT 10 tarball; "
    "on Jetson, JetPack 6.1 or later (TensorRT 10.3): `sudo apt install python3-libnvinfer` and the system "
    "python3 (a venv needs --system-site-packages)"
)
INSTALL_CUDA_PYTHON = (
    "install cuda-python for device memory and streams, for the CUDA major version of your TensorRT "
    "(e.g. `pip install 'cuda-python>=12.6,<13'` on JetPack 6 or with tensorrt-cu12)"
)


# --- optional imports -----------------------------------------------------------------------------


def import_tensorrt() -> Any:
    """The ``tensorrt`` module, or BackendUnavailableError saying what to install."""
    try:
        import tensorrt as trt
    except (ImportError, OSError) as e:  # OSError: the wheel is there but libnvinfer is not
        raise BackendUnavailableError(f"TensorRT is not available ({e}); {INSTALL_TENSORRT}") from e
    version = getattr(trt, "__version__", None)
    if version is None or not hasattr(trt, "Runtime"):
        # tensorrt-stubs alone leaves a folder of .pyi files that imports as an empty namespace package.
        where = ", ".join(getattr(trt, "__path__", [])) or "?"
        raise BackendUnavailableError(
            f"`import tensorrt` found no TensorRT bindings (only type stubs? {where}); {INSTALL_TENSORRT}"
        )
    if _major(version) < MIN_TENSORRT_MAJOR:
        raise BackendUnavailableError(
            f"TensorRT {version} is too old: this backend uses TensorRT {MIN_TENSORRT_MAJOR}'s API "
            f"(Jetson: JetPack 6.1+ ships TensorRT 10.3); {INSTALL_TENSORRT}"
        )
    return trt


def import_cudart() -> Any:
    """cuda-python's runtime API module, or BackendUnavailableError saying what to install."""
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python: the same API under its former name
        except ImportError as e:
            raise BackendUnavailableError(f"cuda-python is not available ({e}); {INSTALL_CUDA_PYTHON}") from e
    return cudart


_LOGGERS: dict[int, Any] = {}


def trt_logger(trt: Any) -> Any:
    """One TensorRT logger per process (per ``tensorrt`` module): TensorRT warns when builders
    and runtimes are given different ones."""
    if id(trt) not in _LOGGERS:
        _LOGGERS[id(trt)] = trt.Logger(trt.Logger.WARNING)
    return _LOGGERS[id(trt)]


def _major(version: str) -> int:
    match = re.match(r"(\d+)", version)
    return int(match[1]) if match else 0


def cuda_call(result: Any, what: str) -> Any:
    """Unpack a cuda-python result ``(error, *values)``: the value(s), or TensorRTError."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise TensorRTError(f"{what} failed: {getattr(err, 'name', err)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "major.minor", e.g. "8.7" for Jetson Orin, "9.0" for H100


def gpu_info(cudart: Any, device: int) -> GpuInfo:
    """Name and compute capability of CUDA device ``device``, which becomes this thread's current one."""
    try:
        cuda_call(cudart.cudaSetDevice(device), f"cudaSetDevice({device})")
        props = cuda_call(cudart.cudaGetDeviceProperties(device), f"cudaGetDeviceProperties({device})")
    except TensorRTError as e:
        raise BackendUnavailableError(f"no usable CUDA GPU {device}: {e}") from e
    name = props.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0", 1)[0].decode(errors="replace")
    return GpuInfo(str(name).strip(), f"{props.major}.{props.minor}")


# --- the metadata file ----------------------------------------------------------------------------


def sidecar_path(engine_path: str | os.PathLike[str]) -> Path:
    """``X.engine`` -> ``X.engine.json``."""
    return Path(f"{os.fspath(engine_path)}.json")


def sha256_file(path: str | os.PathLike[str]) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rebuild_command(engine_path: str | os.PathLike[str], info: Mapping[str, Any] | None = None) -> str:
    """The command that rebuilds ``engine_path`` as described by ``info`` (placeholders where unknown)."""
    info = info if isinstance(info, Mapping) else {}
    onnx = info.get("onnx") if isinstance(info.get("onnx"), Mapping) else {}
    precision = info.get("precision") if info.get("precision") in PRECISIONS else "fp16"
    profile = info.get("profile") if isinstance(info.get("profile"), Mapping) else {}
    try:
        batch = ",".join(str(int(profile[k][0])) for k in ("min", "opt", "max"))
    except (KeyError, TypeError, ValueError, IndexError):
        batch = "1,8,32"
    words = ["facesdk", "export", "trt", str(onnx.get("path") or "MODEL.onnx"), "--precision", precision]
    words += ["--batch", batch, "-o", os.fspath(engine_path)]
    if isinstance(info.get("workspace_mib"), int) and not isinstance(info.get("workspace_mib"), bool):
        words += ["--workspace-mib", str(info["workspace_mib"])]
    if info.get("strongly_typed") is True:
        words.append("--strongly-typed")
    return shlex.join(words)


def _shape(value: Any, what: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise ValueError(f"{what} is not a list of integers: {value!r}")
    return value


def validate_engine_info(info: Any) -> tuple[tuple[int, int], int]:
    """Check a metadata file's content; return the model's (input_size, embedding_dim).

    Raises ValueError naming the first problem.
    """
    if not isinstance(info, dict):
        raise ValueError(f"expected a JSON object, found {type(info).__name__}")
    if info.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"format is {info.get('format')!r}, not {SIDECAR_FORMAT!r}")
    if info.get("format_version") != SIDECAR_VERSION:
        raise ValueError(f"format_version {info.get('format_version')!r}; this runtime reads {SIDECAR_VERSION}")
    for key in ("engine_sha256", "tensorrt_version"):
        if not isinstance(info.get(key), str) or not info[key]:
            raise ValueError(f"{key} missing")
    gpu = info.get("gpu")
    if not isinstance(gpu, dict) or not re.fullmatch(r"\d+\.\d+", str(gpu.get("compute_capability", ""))):
        raise ValueError(f"gpu.compute_capability missing or not 'major.minor': {gpu!r}")
    if info.get("precision") not in PRECISIONS:
        raise ValueError(f"precision {info.get('precision')!r} is not one of {', '.join(PRECISIONS)}")
    onnx = info.get("onnx")
    if not isinstance(onnx, dict) or not isinstance(onnx.get("metadata"), dict):
        raise ValueError("onnx.metadata missing")
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in onnx["metadata"].items()):
        raise ValueError("onnx.metadata values must be strings")
    (h, w), dim = parse_metadata(onnx["metadata"], "onnx.metadata")
    profile = info.get("profile")
    if not isinstance(profile, dict):
        raise ValueError("profile missing")
    shapes = [_shape(profile.get(k), f"profile.{k}") for k in ("min", "opt", "max")]
    for shape in shapes:
        if len(shape) != 4 or shape[1:] != [h, w, 3]:
            raise ValueError(f"profile shape {shape} does not match the model's input [N, {h}, {w}, 3]")
    if not 1 <= shapes[0][0] <= shapes[1][0] <= shapes[2][0]:
        raise ValueError(f"profile batch sizes {[s[0] for s in shapes]} are not 1 <= min <= opt <= max")
    io = info.get("io")
    if not isinstance(io, dict) or INPUT_NAME not in io or OUTPUT_NAME not in io:
        raise ValueError(f"io must describe {INPUT_NAME!r} and {OUTPUT_NAME!r}")
    unknown = set(io) - {INPUT_NAME, *OUTPUT_NAMES}
    if unknown:
        raise ValueError(f"io names unknown tensors {sorted(unknown)}")
    if (SIGMA_NAME in io) != (onnx["metadata"].get("uncertainty") == SIGMA_NAME):
        raise ValueError(f"io {sorted(io)} disagrees with the model's metadata uncertainty")
    return (h, w), dim


def read_engine_info(engine_path: str | os.PathLike[str]) -> dict[str, Any]:
    """The checked content of ``engine_path``'s metadata file, or EngineMismatchError with the
    command that rebuilds the engine (and with it the file)."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise EngineMismatchError(
            f"{engine_path}: its metadata file {path} is missing (facesdk's builder writes it beside the "
            f"engine; an engine made elsewhere, e.g. by trtexec, has none). Build the engine with: "
            f"{rebuild_command(engine_path)}"
        )
    info: Any = None
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
        validate_engine_info(info)
    except (ValueError, UnicodeDecodeError) as e:  # json.JSONDecodeError is a ValueError
        raise EngineMismatchError(
            f"{engine_path}: metadata file {path} is corrupt ({e}). Rebuild the engine with: "
            f"{rebuild_command(engine_path, info)}"
        ) from e
    return info


def check_engine_compatible(
    info: Mapping[str, Any],
    engine_path: str | os.PathLike[str],
    *,
    tensorrt_version: str,
    gpu: GpuInfo,
    engine_sha256: str | None = None,
) -> None:
    """EngineMismatchError, with the rebuild command, unless the engine described by ``info`` can
    run with this TensorRT on this GPU (and, given ``engine_sha256``, ``info`` describes that file)."""
    problems = []
    if engine_sha256 is not None and info["engine_sha256"] != engine_sha256:
        problems.append("the metadata file describes another engine (sha256 differs)")
    if info["tensorrt_version"] != tensorrt_version:
        problems.append(f"built with TensorRT {info['tensorrt_version']}, this machine has {tensorrt_version}")
    built_cc = info["gpu"]["compute_capability"]
    if built_cc != gpu.compute_capability:
        built_name = info["gpu"].get("name", "?")
        problems.append(
            f"built for compute capability {built_cc} ({built_name}), this GPU is "
            f"{gpu.compute_capability} ({gpu.name})"
        )
    if problems:
        raise EngineMismatchError(
            f"{engine_path}: {'; '.join(problems)}. A TensorRT engine runs only with the TensorRT version and "
            f"on the GPU architecture it was built for; rebuild it on this machine with: "
            f"{rebuild_command(engine_path, info)}"
        )
    if info["gpu"].get("name") != gpu.name:
        log.info("engine %s was built on %s, runs on %s (same compute capability)", engine_path, info["gpu"].get("name"), gpu.name)


# --- the embedder ---------------------------------------------------------------------------------


def _dims(dims: Any) -> list[int]:
    """A TensorRT Dims as a list (Dims has len() and indexing)."""
    return [int(dims[i]) for i in range(len(dims))]


class TensorRTEmbedder:
    """A facesdk TensorRT engine on CUDA device ``device``: :class:`sdk.embed.Embedder`.

    Batches larger than the engine's profile maximum are split; smaller than its minimum, padded.
    Device buffers grow on demand and are reused. ``embed`` may be called from several threads
    (one lock: one execution context and one stream). ``close()`` frees the GPU memory; so does
    leaving a ``with`` block.
    """

    backend = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike[str], device: int = 0) -> None:
        self.path = Path(engine_path)
        if isinstance(device, bool) or not isinstance(device, int) or device < 0:
            raise ValueError(f"device must be a CUDA device index >= 0, got {device!r}")
        if not self.path.is_file():
            raise FileNotFoundError(f"engine file {self.path} not found; build it with: {rebuild_command(self.path)}")
        self.device = device
        self.engine_info = read_engine_info(self.path)
        self.metadata: dict[str, str] = dict(self.engine_info["onnx"]["metadata"])
        self.input_size, self.embedding_dim = parse_metadata(self.metadata, str(self.path))
        self.name: str = self.metadata["model_name"]
        self.precision: str = self.engine_info["precision"]
        # A PFE model (metadata uncertainty=sigma_sq) also outputs each face's variance: see sdk.embed.
        self.has_uncertainty: bool = self.metadata.get("uncertainty") == SIGMA_NAME

        trt = import_tensorrt()
        cudart = import_cudart()
        gpu = gpu_info(cudart, device)
        blob = self.path.read_bytes()
        check_engine_compatible(
            self.engine_info,
            self.path,
            tensorrt_version=trt.__version__,
            gpu=gpu,
            engine_sha256=hashlib.sha256(blob).hexdigest(),
        )
        self._trt, self._cudart = trt, cudart
        self._lock = threading.Lock()
        self._buffers: dict[str, tuple[int, int]] = {}  # tensor -> (device pointer, bytes)
        self._stream: Any = None
        self._closed = False
        self._runtime = trt.Runtime(trt_logger(trt))
        self._engine = self._runtime.deserialize_cuda_engine(blob)
        if self._engine is None:
            raise EngineMismatchError(
                f"TensorRT {trt.__version__} could not deserialize {self.path} (see its log above); "
                f"rebuild it with: {rebuild_command(self.path, self.engine_info)}"
            )
        self._outputs, self._host_dtypes = self._check_io()
        self.batch_profile = self._input_profile()
        self._context = self._engine.create_execution_context()
        if self._context is None:
            raise TensorRTError(f"TensorRT could not create an execution context for {self.path} (GPU memory?)")
        self._stream = cuda_call(cudart.cudaStreamCreate(), "cudaStreamCreate")
        self.providers: list[str] = [
            f"TensorRT {trt.__version__} {self.precision} on cuda:{device} ({gpu.name}, sm_{gpu.compute_capability.replace('.', '')})"
        ]
        log.info("embedder %s (%s) on %s", self.name, self.path, self.providers[0])

    def _check_io(self) -> tuple[list[str], dict[str, type]]:
        """The engine's tensors are the facesdk contract's: uint8 chip in, float outputs."""
        trt, engine = self._trt, self._engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        h, w = self.input_size
        problems = []
        if inputs != [INPUT_NAME] or engine.get_tensor_dtype(INPUT_NAME) != trt.DataType.UINT8:
            problems.append(f"inputs {inputs}, expected one uint8 {INPUT_NAME!r}")
        elif _dims(engine.get_tensor_shape(INPUT_NAME))[1:] != [h, w, 3]:
            problems.append(f"{INPUT_NAME} shape {_dims(engine.get_tensor_shape(INPUT_NAME))}, expected [N, {h}, {w}, 3]")
        expected = [OUTPUT_NAME, SIGMA_NAME] if self.has_uncertainty else [OUTPUT_NAME]
        if sorted(outputs) != sorted(expected):
            problems.append(f"outputs {outputs}, expected {expected} (metadata uncertainty={self.metadata.get('uncertainty')!r})")
        host_dtypes: dict[str, type] = {}
        for name in outputs:
            dtype = engine.get_tensor_dtype(name)
            if dtype not in (trt.DataType.FLOAT, trt.DataType.HALF):
                problems.append(f"output {name} has type {dtype}, expected float32 or float16")
            else:
                host_dtypes[name] = np.float32 if dtype == trt.DataType.FLOAT else np.float16
        if problems:
            raise EngineMismatchError(
                f"{self.path} is not a facesdk embedding engine: {'; '.join(problems)}; "
                f"rebuild it with: {rebuild_command(self.path, self.engine_info)}"
            )
        return outputs, host_dtypes

    def _input_profile(self) -> tuple[int, int, int]:
        shapes = self._engine.get_tensor_profile_shape(INPUT_NAME, 0)
        low, opt, high = (_dims(s)[0] for s in shapes)
        if not 1 <= low <= opt <= high:
            raise EngineMismatchError(f"{self.path}: unusable batch profile {low}, {opt}, {high}")
        return low, opt, high

    # -- running --

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings float32 [N, D] of aligned uint8 RGB chips [N, H, W, 3]."""
        return self._run(chips)[OUTPUT_NAME]

    def embed_with_uncertainty(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma_sq), float32 [N, D] each, for engines of PFE models (output ``sigma_sq``)."""
        if not self.has_uncertainty:
            raise ValueError(f"{self.path} has no {SIGMA_NAME!r} output: not a PFE (uncertainty) model")
        out = self._run(chips)
        return out[OUTPUT_NAME], out[SIGMA_NAME]

    def _run(self, chips: np.ndarray) -> dict[str, np.ndarray]:
        check_chips(chips, self.input_size)
        n = len(chips)
        if n == 0:
            return {name: np.zeros((0, self.embedding_dim), np.float32) for name in self._outputs}
        low, _, high = self.batch_profile
        parts: dict[str, list[np.ndarray]] = {name: [] for name in self._outputs}
        with self._lock:
            if self._closed:
                raise TensorRTError(f"embedder for {self.path} is closed")
            # The current CUDA device is per host thread: set it on every call.
            cuda_call(self._cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
            for start in range(0, n, high):
                batch = chips[start : start + high]
                rows = len(batch)
                if rows < low:  # the profile's minimum: pad with black chips, drop their rows
                    batch = np.concatenate([batch, np.zeros((low - rows, *batch.shape[1:]), np.uint8)])
                for name, value in self._run_batch(np.ascontiguousarray(batch)).items():
                    parts[name].append(value[:rows])
        return {name: np.concatenate(p).astype(np.float32, copy=False) for name, p in parts.items()}

    def _run_batch(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One execution of the engine on a batch within the profile (caller holds the lock)."""
        cudart, context, stream = self._cudart, self._context, self._stream
        n = len(batch)
        if not context.set_input_shape(INPUT_NAME, batch.shape):
            raise TensorRTError(f"TensorRT refused input shape {batch.shape} (profile {self.batch_profile})")
        chip_ptr = self._device_buffer(INPUT_NAME, batch.nbytes)
        context.set_tensor_address(INPUT_NAME, chip_ptr)
        hosts: dict[str, np.ndarray] = {}
        for name in self._outputs:
            shape = _dims(context.get_tensor_shape(name))
            if shape != [n, self.embedding_dim]:
                raise TensorRTError(f"output {name} has shape {shape}, expected [{n}, {self.embedding_dim}]")
            hosts[name] = np.empty(shape, self._host_dtypes[name])
            context.set_tensor_address(name, self._device_buffer(name, hosts[name].nbytes))
        to_device = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        try:
            cuda_call(cudart.cudaMemcpyAsync(chip_ptr, batch.ctypes.data, batch.nbytes, to_device, stream), "copy to GPU")
            if not context.execute_async_v3(int(stream)):
                raise TensorRTError(f"TensorRT failed to run {self.path} (see its log above)")
            for name, host in hosts.items():
                ptr = self._buffers[name][0]
                cuda_call(cudart.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, to_host, stream), "copy from GPU")
        finally:
            # Host arrays must outlive the queued copies, and buffers may be freed next call.
            cuda_call(cudart.cudaStreamSynchronize(stream), "cudaStreamSynchronize")
        return hosts

    def _device_buffer(self, name: str, nbytes: int) -> int:
        """A device buffer of at least ``nbytes`` for tensor ``name``, grown when too small."""
        ptr, size = self._buffers.get(name, (0, 0))
        if size >= nbytes:
            return ptr
        if ptr:
            cuda_call(self._cudart.cudaFree(ptr), "cudaFree")
            del self._buffers[name]
        ptr = int(cuda_call(self._cudart.cudaMalloc(nbytes), f"cudaMalloc({nbytes})"))
        self._buffers[name] = (ptr, nbytes)
        return ptr

    # -- lifetime --

    def close(self) -> None:
        """Free the device buffers, the stream and the engine (idempotent)."""
        lock = getattr(self, "_lock", None)
        if lock is None or getattr(self, "_closed", True):
            return
        with lock:
            if self._closed:
                return
            self._closed = True
            cudart = self._cudart
            cuda_call(cudart.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")
            for ptr, _ in self._buffers.values():
                cuda_call(cudart.cudaFree(ptr), "cudaFree")
            self._buffers.clear()
            if self._stream is not None:
                cuda_call(cudart.cudaStreamDestroy(self._stream), "cudaStreamDestroy")
                self._stream = None
            # Context before engine before runtime: TensorRT's documented destruction order.
            self._context = None
            self._engine = None
            self._runtime = None

    def __enter__(self) -> TensorRTEmbedder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - at interpreter exit CUDA may already be gone
            pass
