"""The house in layers: sdk (the runtime) imports nothing else of ours; evaluate imports sdk only;
train and export never reach up to the CLI. Checked twice: statically, every import statement of
every module (function-level ones included), and at run time, in a fresh interpreter that uses
the SDK on real faces."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

OURS = ("sdk", "evaluate", "train", "export", "site_server", "cli")
# package -> the packages of ours it may import (itself included)
ALLOWED = {
    "sdk": {"sdk"},
    "evaluate": {"sdk", "evaluate"},
    "train": {"sdk", "evaluate", "train"},
    "export": {"sdk", "evaluate", "train", "export"},
    "site_server": {"sdk", "site_server"},  # the site's server: on the runtime, under the CLI
    "cli": set(OURS),
}
# `python -m` shims: run as scripts, never imported, so they may call the CLI on top.
SHIMS = {"__main__.py"}


def imported_packages(path: Path) -> set[str]:
    """Top-level packages of ours that a module imports anywhere in its body."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        found |= {n.split(".")[0] for n in names if n.split(".")[0] in OURS}
    return found


@pytest.mark.parametrize("package", OURS)
def test_no_import_reaches_up_a_layer(package: str) -> None:
    modules = [p for p in (REPO / package).rglob("*.py") if p.name not in SHIMS]
    assert modules, f"no modules under {package}/"
    wrong = {
        str(p.relative_to(REPO)): sorted(imported_packages(p) - ALLOWED[package])
        for p in modules
        if imported_packages(p) - ALLOWED[package]
    }
    assert not wrong, f"{package}/ may import only {sorted(ALLOWED[package])}: {wrong}"


def test_the_static_check_sees_function_level_imports(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import os\n\ndef f():\n    from train.trainer import Trainer\n    import cli.main\n")
    assert imported_packages(module) == {"train", "cli"}


def _fresh(code: str, env: dict[str, str] | None = None) -> dict:
    """Run `code` in a new interpreter from outside the repo; it prints a JSON object last."""
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True, text=True, timeout=300, cwd=os.path.dirname(REPO),
        env={**os.environ, **(env or {}), "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_sdk_loads_no_heavy_library() -> None:
    loaded = _fresh("import json, sys, sdk; print(json.dumps(sorted(sys.modules)))")
    heavy = [m for m in ("cv2", "onnxruntime", "onnx", "numpy", "sdk._kernels", "torch") if m in loaded]
    assert not heavy, f"`import sdk` loaded {heavy}"


def test_using_the_sdk_on_real_faces_imports_nothing_else_of_ours(default_onnx: Path, data: Path) -> None:
    lfw = data / "lfw" / "images_deepfunneled"
    a, b = lfw / "Tony_Blair" / "Tony_Blair_0001.jpg", lfw / "Tony_Blair" / "Tony_Blair_0002.jpg"
    code = f"""
import json, sys
import sdk
with sdk.Verifier(gallery=None) as v:
    v.enroll("tony", [{str(a)!r}], largest=True)
    best = v.match({str(b)!r})[0]
    same = v.verify({str(a)!r}, {str(b)!r}).same
labels = sdk.cluster([{str(a)!r}, {str(b)!r}]).tolist()
print(json.dumps({{"identity": best.identity, "same": same, "labels": labels, "modules": sorted(sys.modules)}}))
"""
    result = _fresh(code, {"FACESDK_HOME": str(default_onnx.parent.parent)})
    assert result["identity"] == "tony" and result["same"] and result["labels"] == [0, 0]
    ours = sorted({m.split(".")[0] for m in result["modules"]} & set(OURS) - {"sdk"})
    assert not ours, f"using sdk imported {ours}"
    assert "torch" not in result["modules"]
