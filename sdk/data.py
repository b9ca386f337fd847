"""Where the face data lives: $FACESDK_DATA, else ../shared/data beside a source checkout.

Data is read in place, never copied into the project or fetched from the network.
"""

from __future__ import annotations

import os
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The data folder (it may not exist: callers say so and how to set FACESDK_DATA)."""
    return Path(os.environ.get("FACESDK_DATA", _CHECKOUT.parent / "shared" / "data"))
