"""``facesdk models install|list``: the default model written from dlib's weights (no torch), and
where the SDK looks for model files."""

from __future__ import annotations

import argparse
import hashlib
import time
from pathlib import Path

MODEL_SUFFIXES = {".onnx", ".engine", ".plan", ".pth", ".pt"}


def register(sub) -> None:
    models = sub.add_parser("models", help="install the default model; list where models are looked for")
    verbs = models.add_subparsers(dest="models_verb", metavar="{install,list}", required=True)
    p = verbs.add_parser("install", help="write the default recognition model from dlib's weights (no torch)")
    p.add_argument("--force", action="store_true", help="rewrite it even if it exists")
    p.add_argument("-o", "--output", type=Path, help="where to write it (default: the default model path)")
    p.set_defaults(run=install_cmd)
    verbs.add_parser("list", help="where models are looked for and which exist").set_defaults(run=list_cmd)


def install(path: Path) -> Path:
    """Write the default model to `path`, saying what it reads and writes."""
    from sdk.dlib_format import dlib_model_path
    from sdk.dlib_onnx import write_default_model

    dat = dlib_model_path()
    print(f"reading dlib's weights {dat}")
    start = time.perf_counter()
    write_default_model(path, dat)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB, sha256 {digest}) in {time.perf_counter() - start:.1f} s")
    return path


def install_cmd(args: argparse.Namespace) -> int:
    from sdk.embed import default_model_path

    path = args.output or default_model_path()
    if path.is_file() and not args.force:
        print(f"{path} exists: left as it is (--force rewrites it)")
        return 0
    install(path)
    return 0


def list_cmd(args: argparse.Namespace) -> int:
    from sdk.detect import DEFAULT_YUNET
    from sdk.embed import default_model_path, default_pfe_model_path
    from sdk.liveness import default_model_paths
    from sdk.paths import home, models_dir, package_file

    rows = [
        ("home ($FACESDK_HOME)", home()),
        ("default model", default_model_path()),
        ("PFE model", default_pfe_model_path()),
        ("optional models ($FACESDK_MODELS)", models_dir()),
        ("YuNet detector (packaged)", package_file(DEFAULT_YUNET)),
        *(("liveness (export minifasnet)", path) for path in default_model_paths()),
    ]
    for label, path in rows:
        print(f"{label:<34} {'present' if path.exists() else 'missing':<8} {path}")
    for folder in (home() / "models", models_dir()):
        for path in sorted(folder.rglob("*")) if folder.is_dir() else []:
            if path.suffix in MODEL_SUFFIXES and path not in dict(rows).values():
                print(f"{'':<34} {'present':<8} {path}")
    return 0
