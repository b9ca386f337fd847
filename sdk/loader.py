"""Model files in, runtime objects out: one place that knows which backend runs what.

    sdk.load("dlib_resnet_v1.onnx")        # -> OnnxEmbedder (facesdk embedding metadata)
    sdk.load("model.fp16.engine")          # -> TensorRTEmbedder (an engine and its metadata file)
    sdk.load("yunet_s_640_640.onnx")       # -> YuNetDetector (YuNet's outputs)

``embedder(model, backend)`` is what the Verifier uses: ``EMBEDDING_BACKENDS`` maps a backend
name to the class that runs it. The default recognition model is written once, on first use,
from dlib's weights (``ensure_default_model``); nothing is ever downloaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from sdk.embed import REQUIRED_KEYS, Embedder, OnnxEmbedder, default_model_path
from sdk.errors import BackendUnavailableError, InvalidModelError

log = logging.getLogger("sdk")

ENGINE_SUFFIXES = (".engine", ".plan")
# The output names of YuNet's graphs (cls, obj, bbox, kps per stride), as sdk.detect decodes them.
_YUNET_OUTPUTS = {f"{kind}_{s}" for kind in ("cls", "obj", "bbox", "kps") for s in (8, 16, 32)}


def ensure_default_model() -> Path:
    """The default model's path; written there first, from dlib's ``.dat``, if it is missing."""
    path = default_model_path()
    if not path.is_file():
        from sdk.dlib_onnx import write_default_model

        log.warning("writing the default model once, from dlib's weights (face-recognition-models), to %s", path)
        write_default_model(path)
    return path


def check_pinned(path: str | os.PathLike[str], sha256: str) -> None:
    """InvalidModelError unless the file's SHA-256 is ``sha256`` (hex, as sha256sum prints it)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != str(sha256).strip().lower():
        raise InvalidModelError(f"{path}: SHA-256 {digest.hexdigest()} is not the pinned {sha256}: refusing this model file")


def _onnxruntime(model: Path, providers: Sequence[Any] | None, threads: int | None, device: int) -> Embedder:
    try:
        return OnnxEmbedder(model, providers, threads)
    except RuntimeError as e:  # a provider this onnxruntime lacks or cannot start
        raise BackendUnavailableError(str(e)) from e


def _tensorrt(model: Path, providers: Sequence[Any] | None, threads: int | None, device: int) -> Embedder:
    if model.suffix.lower() == ".onnx":
        raise BackendUnavailableError(
            f"backend 'tensorrt' runs an engine, not {model}: build one on this device with "
            f"`facesdk export trt {model} -o model.engine` (docs/tensorrt.md)"
        )
    from sdk.tensorrt import TensorRTEmbedder

    return TensorRTEmbedder(model, device=device)


# Backend names -> runner of (model path, providers, threads, device).
EMBEDDING_BACKENDS: dict[str, Callable[[Path, Sequence[Any] | None, int | None, int], Embedder]] = {
    "onnxruntime": _onnxruntime,
    "tensorrt": _tensorrt,
}


def embedder(
    model: str | os.PathLike[str] | None = None,
    backend: str = "onnxruntime",
    *,
    providers: Sequence[Any] | None = None,
    threads: int | None = None,
    device: int = 0,
) -> Embedder:
    """The embedding backend ``backend`` running ``model`` (default: the default model).

    ``providers`` and ``threads`` are ONNX Runtime's; ``device`` is TensorRT's CUDA device."""
    if backend not in EMBEDDING_BACKENDS:
        names = ", ".join(repr(n) for n in EMBEDDING_BACKENDS)
        raise BackendUnavailableError(f"backend {backend!r} is unknown: use {names}")
    if model is None:
        if backend != "onnxruntime":
            raise BackendUnavailableError(f"backend {backend!r} needs a model file built for it (the default model is ONNX)")
        path = ensure_default_model()
    else:
        path = Path(model)
    return EMBEDDING_BACKENDS[backend](path, providers, threads, device)


def load(path: str | os.PathLike[str], **options: Any) -> Any:
    """The runtime object for a model file, chosen by what the file is (its suffix, then its
    metadata and outputs): an embedder or a detector. ``options`` go to its constructor."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file {path} not found")
    if path.suffix.lower() in ENGINE_SUFFIXES:
        return embedder(path, "tensorrt", **options)
    if path.suffix.lower() != ".onnx":
        raise ValueError(f"{path}: not a model file this SDK runs (.onnx, or a TensorRT {'/'.join(ENGINE_SUFFIXES)})")
    import onnx

    try:
        proto = onnx.load_model(path, load_external_data=False)
    except Exception as e:  # protobuf's DecodeError and friends: say which file, not how protobuf failed
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__})") from e
    metadata = {p.key for p in proto.metadata_props}
    outputs = {o.name for o in proto.graph.output}
    del proto
    if metadata >= set(REQUIRED_KEYS):
        return embedder(path, "onnxruntime", **options)
    if outputs == _YUNET_OUTPUTS:
        from sdk.detect import YuNetDetector

        return YuNetDetector(path, **options)
    raise ValueError(
        f"{path}: an ONNX model this SDK does not know (neither facesdk embedding metadata nor YuNet's outputs)"
    )
