"""Shared test helpers: where the real face data lives."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def data_dir() -> Path:
    """The shared data folder: $FACESDK_DATA, else ../shared/data beside the repo."""
    return Path(os.environ.get("FACESDK_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def data() -> Path:
    """The data folder, or skip with the reason when it is absent."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"face data not found at {path} (set FACESDK_DATA)")
    return path
