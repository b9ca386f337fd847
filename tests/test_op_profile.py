"""facesdk bench ops (evaluate.op_profile): per-op time of real models, side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("onnxruntime")

from cli.main import main as facesdk  # noqa: E402
from evaluate.op_profile import profile_ops  # noqa: E402


def test_profiles_the_default_model_per_op(default_onnx: Path) -> None:
    result = profile_ops([default_onnx, default_onnx], calls=3)
    first, second = result["models"]
    assert first["model_run_p50_us"] > 0 and set(first["op_us"]) == set(second["op_us"])
    # dlib's ResNet: its convs are where the time goes, every node is listed once
    assert "Conv" in max(first["op_us"], key=first["op_us"].get)  # Conv, FusedConv or NchwcConv
    assert len(first["node_us"]) > 29 and all(us >= 0 for us in first["node_us"].values())


def test_cli_prints_a_table_and_writes_json(default_onnx: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "ops.json"
    assert facesdk(["bench", "ops", str(default_onnx), "--calls", "2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "model_run p50" in printed and "Conv" in printed
    assert json.loads(out.read_text())["calls"] == 2
    assert facesdk(["bench", "ops", str(tmp_path / "missing.onnx")]) == 2
