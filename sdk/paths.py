"""Where the SDK keeps and finds things, each decided in one place.

* ``home()``: ``$FACESDK_HOME``, else ``~/.cache/facesdk``: the default model (``models/``), the
  default gallery, caches of the evaluations and the trainer.
* ``models_dir()``: ``$FACESDK_MODELS``, else ``../shared/models`` beside a source checkout:
  optional model files that do not ship in the package (other YuNet sizes, liveness models).
* ``data_dir()``: ``$FACESDK_DATA``, else ``../shared/data`` beside a source checkout: face data
  for the evaluations and the trainer, read in place, never copied or fetched.

The runtime itself needs none of the last two: YuNet ships inside the package
(``package_file``) and the default recognition model is written into ``home()``.
"""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
_SHARED = _PACKAGE.parents[1] / "shared"  # beside a source checkout; absent in an installed package


def home() -> Path:
    """The SDK's own folder (it may not exist yet)."""
    return Path(os.environ.get("FACESDK_HOME") or Path.home() / ".cache" / "facesdk")


def models_dir() -> Path:
    """The folder of optional model files (it may not exist)."""
    return Path(os.environ.get("FACESDK_MODELS") or _SHARED / "models")


def data_dir() -> Path:
    """The data folder (it may not exist: callers say so and how to set FACESDK_DATA)."""
    return Path(os.environ.get("FACESDK_DATA") or _SHARED / "data")


def package_file(name: str) -> Path:
    """A data file shipped inside the package (``sdk/models/``)."""
    return _PACKAGE / "models" / name


def private_dir(path: Path) -> Path:
    """``path`` as a directory only its owner can enter (0700, whatever the umask): the SDK's
    home holds galleries, which are biometric data. Existing directories keep their mode."""
    path = Path(path)
    if not path.is_dir():
        private_dir(path.parent)  # missing parents too: mkdir(parents=True) would give them the umask's mode
        path.mkdir(mode=0o700, exist_ok=True)
        path.chmod(0o700)
    return path
