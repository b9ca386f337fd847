"""What the verb modules share: option helpers, output, and the usage error."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from sdk.detect import DETECTORS
from sdk.paths import data_dir


class UsageError(Exception):
    """Bad arguments found after parsing: main prints the verb's usage and exits 2."""


def data_option(p: argparse.ArgumentParser, holding: str = "") -> None:
    what = f"data folder holding {holding}" if holding else "data folder"
    p.add_argument("--data", type=Path, default=data_dir(), help=f"{what} (default $FACESDK_DATA)")


def model_option(p: argparse.ArgumentParser, what: str = "ONNX model (default: the cached default model)") -> None:
    p.add_argument("--model", type=Path, help=what)


def detector_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--detector", choices=list(DETECTORS), default="auto")


def positive(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def make_detector(name: str, max_side: int | None = None):
    from sdk.detect import detector_from

    return detector_from(name, max_side)


def make_embedder(model: Path | None):
    from sdk.embed import OnnxEmbedder, default_model_path

    return OnnxEmbedder(model or default_model_path())


def emit(args: argparse.Namespace, payload: object, lines: list[str]) -> None:
    """Print JSON with --json, else the human-readable lines."""
    if args.json:
        print(json.dumps(payload, indent=2, default=_jsonable))
    else:
        print("\n".join(lines))


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.round(2).tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def write_json(path: Path | None, payload: object) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(payload, indent=2))
        print(f"wrote {path}")


def calibrated_thresholds(v) -> tuple[list[str], list[float]]:
    """The Verifier's threshold and the model's calibrated table, as (labels, thresholds)."""
    table = json.loads(v.embedder.metadata.get("threshold_table", "{}"))
    rows = sorted(((float(t), f"FAR {far}") for far, t in table.items()), reverse=True)
    if all(abs(t - v.threshold) > 1e-9 for t, _ in rows):
        rows.append((v.threshold, "chosen"))
    return [label for _, label in rows], [t for t, _ in rows]
