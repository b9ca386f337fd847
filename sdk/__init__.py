"""Face-recognition SDK for edge devices (FaceNet embeddings, PFE scoring).

    import sdk
    v = sdk.Verifier()                  # default model, packaged YuNet detector, gallery file
    v.enroll("alice", ["alice1.jpg", "alice2.jpg"])
    for m in v.match(frame):            # frame: image path, BGR uint8 array or PIL image
        ...                             # an RGB array: v.match(rgb, color="rgb")
        print(m.identity, m.distance, m.accepted)
    labels = sdk.cluster(image_paths)   # group faces by identity
    embedder = sdk.load("model.onnx")   # any model file, by what it is

``import sdk`` is cheap: OpenCV, ONNX Runtime and the C++ kernels load with the first name that
needs them.
"""

from __future__ import annotations

import importlib
from typing import Any

from sdk.errors import (
    AmbiguousFaceError,
    BackendUnavailableError,
    DuplicateFaceError,
    EngineMismatchError,
    FaceSDKError,
    GalleryError,
    InconsistentFaceError,
    InvalidArgumentError,
    InvalidImageError,
    InvalidModelError,
    LowQualityError,
    ModelMismatchError,
    NoFaceError,
    TensorRTError,
)

__version__ = "0.1.0"

# Public name -> the module that defines it, imported on first access.
_LAZY = {
    "Camera": "sdk.camera",
    "cluster": "sdk.clustering",
    "EnrolResult": "sdk.verifier",
    "load": "sdk.loader",
    "FaceStream": "sdk.verifier",
    "Match": "sdk.verifier",
    "Verification": "sdk.verifier",
    "Verifier": "sdk.verifier",
}

__all__ = [
    "AmbiguousFaceError",
    "BackendUnavailableError",
    "DuplicateFaceError",
    "EngineMismatchError",
    "FaceSDKError",
    "GalleryError",
    "InconsistentFaceError",
    "InvalidArgumentError",
    "InvalidImageError",
    "InvalidModelError",
    "LowQualityError",
    "ModelMismatchError",
    "NoFaceError",
    "TensorRTError",
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'sdk' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
