"""Shared test helpers: where the real face data lives."""

from __future__ import annotations

from pathlib import Path

import pytest

from sdk.data import data_dir

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def data() -> Path:
    """The data folder, or skip with the reason when it is absent."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"face data not found at {path} (set FACESDK_DATA)")
    return path
