"""Embedders: aligned face chips in, embeddings out, whatever engine runs the network.

Every backend implements :class:`Embedder`. Model files are self-describing ONNX, written by
``export.onnx``; the runtime reads how to feed and compare a model from the model itself:

* input ``chip``: uint8 ``[N, H, W, 3]``, aligned RGB chips in NHWC, exactly as an aligner cuts
  them. The cast to float, the NCHW transpose and the network's own normalisation are inside the
  graph, so every runtime (ONNX Runtime, INT8, TensorRT) preprocesses identically.
* output ``embedding``: float32 ``[N, D]``, L2-normalised in the graph; faces are compared by
  squared L2 distance (0 = same direction, 4 = opposite), as in FaceNet.
* optional output ``sigma_sq``: float32 ``[N, D]``, > 0, a Probabilistic Face Embeddings model
  (Shi & Jain, ICCV 2019): each face is N(embedding, diag(sigma_sq)). Present exactly when the
  metadata says ``uncertainty=sigma_sq``; read it with :meth:`OnnxEmbedder.embed_with_uncertainty`.
* metadata_props (all strings), all required but ``threshold``:

  ============================ ==============================================================
  model_name, model_version     identity of the weights
  input_size                    ``"HxW"`` (rows x cols), e.g. ``"150x150"``
  input_layout, input_color     ``"NHWC"``, ``"RGB"`` (the only ones this runtime accepts)
  chip_scheme                   how chips are cut, e.g. ``"dlib5_150_0.25"`` (dlib's 5-point
                                template, 150 px, padding 0.25); the aligner must match it
  embedding_dim                 D
  embedding_normalized          ``"1"``: the output has unit L2 norm
  distance                      ``"squared_l2"``
  source                        where the weights came from (file name and sha256)
  threshold                     optional: squared-L2 verification threshold from calibration
  fpir_threshold_table          optional: 1:N thresholds, JSON {FPIR: {gallery size N: squared
                                L2}}, from ``facesdk eval fpir --write`` (distractor galleries)
  fpir_fnir_table               optional: the FNIR measured at each of those thresholds
  fpir_track_threshold_table    optional: the same for searches by a fused track (several frames,
  fpir_track_fnir_table         ``facesdk eval fpir --probe-frames 3 --write``): fusion moves
                                distances, so tracks get their own thresholds
  uncertainty                   optional: ``"sigma_sq"`` for a PFE model (the only value)
  pfe_head                      optional: how the uncertainty head was trained (free text)
  ============================ ==============================================================

The runtime never downloads anything: the default model is exported once, locally, with
``facesdk models install`` into :func:`default_model_path`; the PFE model with
``facesdk export onnx pfe`` into :func:`default_pfe_model_path`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort

from sdk.chips import ChipScheme
from sdk.errors import InvalidModelError
from sdk.paths import home
from sdk.sessions import session_options

__all__ = [
    "Embedder",
    "OnnxEmbedder",
    "default_model_path",
    "default_pfe_model_path",
    "parse_metadata",
    "REQUIRED_KEYS",
]

logger = logging.getLogger(__name__)

INPUT_NAME = "chip"
OUTPUT_NAME = "embedding"
SIGMA_SQ_NAME = "sigma_sq"  # optional second output of a PFE model
DEFAULT_MODEL_FILE = "dlib_resnet_v1.onnx"
PFE_MODEL_FILE = "dlib_resnet_v1_pfe.onnx"
REQUIRED_KEYS = (
    "model_name",
    "model_version",
    "input_size",
    "input_layout",
    "input_color",
    "chip_scheme",
    "embedding_dim",
    "embedding_normalized",
    "distance",
    "source",
)
# Values this runtime supports; anything else would be fed or compared wrongly.
_FIXED = {"input_layout": "NHWC", "input_color": "RGB", "embedding_normalized": "1", "distance": "squared_l2"}


class Embedder(Protocol):
    """Maps aligned uint8 RGB chips [N, H, W, 3] to embeddings float32 [N, D]."""

    name: str  # model_name from the metadata
    backend: str  # engine, e.g. "onnxruntime"
    providers: list[str]  # devices/providers actually in use
    metadata: dict[str, str]
    input_size: tuple[int, int]  # chip rows, cols
    embedding_dim: int

    def embed(self, chips: np.ndarray) -> np.ndarray: ...


def default_model_path() -> Path:
    """Where the default model lives: ``$FACESDK_HOME`` or ``~/.cache/facesdk``, then ``models/``."""
    return home() / "models" / DEFAULT_MODEL_FILE


def default_pfe_model_path() -> Path:
    """Where ``facesdk export onnx pfe`` writes the default PFE model: beside the default model."""
    return default_model_path().with_name(PFE_MODEL_FILE)


def parse_metadata(metadata: Mapping[str, str], source: str) -> tuple[tuple[int, int], int]:
    """Check a model's metadata against the contract above; return (input_size, embedding_dim).

    ``source`` names the model in error messages.
    """
    missing = [key for key in REQUIRED_KEYS if key not in metadata]
    if missing:
        raise InvalidModelError(
            f"{source}: not a facesdk embedding model, metadata lacks {', '.join(missing)}; "
            "export models with `facesdk export onnx`"
        )
    for key, expected in _FIXED.items():
        if metadata[key] != expected:
            found = metadata[key]
            raise InvalidModelError(f"{source}: metadata {key}={found!r}; this runtime supports {expected!r}")
    size = re.fullmatch(r"([1-9]\d*)x([1-9]\d*)", metadata["input_size"])
    if size is None:
        raise InvalidModelError(f"{source}: metadata input_size={metadata['input_size']!r} is not 'HxW'")
    try:
        chip = ChipScheme.parse(metadata["chip_scheme"])
    except ValueError as e:
        raise InvalidModelError(f"{source}: metadata {e}") from None
    if (chip.size, chip.size) != (int(size[1]), int(size[2])):
        raise InvalidModelError(f"{source}: metadata chip_scheme={str(chip)!r} cuts {chip.size} px chips, input_size is {metadata['input_size']}")
    dim = metadata["embedding_dim"]
    if not dim.isdigit() or int(dim) < 1:
        raise InvalidModelError(f"{source}: metadata embedding_dim={dim!r} is not a positive integer")
    _check_decisions(metadata, source)
    if "uncertainty" in metadata and metadata["uncertainty"] != SIGMA_SQ_NAME:
        found = metadata["uncertainty"]
        raise InvalidModelError(f"{source}: metadata uncertainty={found!r}; this runtime supports {SIGMA_SQ_NAME!r}")
    return (int(size[1]), int(size[2])), int(dim)


# Squared L2 between unit vectors lies in [0, 4]; a threshold at 4 would accept everyone.
MAX_L2_THRESHOLD = 4.0


def _number(metadata: Mapping[str, str], key: str, source: str, low: float = -math.inf, high: float = math.inf) -> float:
    try:
        value = float(metadata[key])
    except ValueError:
        value = math.nan
    if not low <= value < high:  # NaN compares false
        raise InvalidModelError(f"{source}: metadata {key}={metadata[key]!r} is not a number in [{low:g}, {high:g})")
    return value


def _far_table(metadata: Mapping[str, str], key: str, source: str, low: float, high: float, rising: bool,
               what: str = "FAR") -> dict[float, float]:  # fmt: skip
    """A JSON object {rate: value}: rates in (0, 1], values in [low, high), and monotone in the
    rate (``rising``: a larger rate never has a smaller value), as a calibration writes it."""
    try:
        raw = json.loads(metadata[key])
        table = {float(k): float(v) for k, v in raw.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidModelError(f"{source}: metadata {key} is not a JSON object of numbers ({e})") from None
    rates, values = sorted(table), [table[r] for r in sorted(table)]
    if not all(0 < r <= 1 for r in rates) or not all(low <= v < high for v in values):
        raise InvalidModelError(f"{source}: metadata {key}: {what} must be in (0, 1] and values in [{low:g}, {high:g}), got {raw}")
    steps = np.diff(values) if rising else -np.diff(values)
    if (steps < 0).any():
        order = "grow" if rising else "fall"
        raise InvalidModelError(f"{source}: metadata {key}: values must {order} with the {what}, got {raw}")
    return table


# The 1:N tables (thresholds, FNIR) of one search by a single frame, and by a fused track.
FRAME_TABLES = ("fpir_threshold_table", "fpir_fnir_table")
TRACK_TABLES = ("fpir_track_threshold_table", "fpir_track_fnir_table")


def fpir_table(metadata: Mapping[str, str], key: str, source: str, low: float = 0.0, high: float = MAX_L2_THRESHOLD,
               monotone: bool = True) -> dict[float, dict[int, float]]:  # fmt: skip
    """A JSON object {FPIR: {gallery size N: value}}: FPIR in (0, 1], N >= 1, values in [low, high).
    ``monotone`` (thresholds): a larger gallery never has a larger threshold at the same FPIR
    (more people, more chances for a stranger to come close), and a larger FPIR never has a
    smaller threshold at the same N."""
    try:
        raw = json.loads(metadata[key])
        table = {float(r): {int(n): float(v) for n, v in row.items()} for r, row in raw.items()}
    except (ValueError, TypeError, AttributeError) as e:
        raise InvalidModelError(f"{source}: metadata {key} is not a JSON object {{FPIR: {{N: number}}}} ({e})") from None
    if not table or not all(0 < r <= 1 and row for r, row in table.items()):
        raise InvalidModelError(f"{source}: metadata {key}: FPIR must be in (0, 1], each with sizes, got {raw}")
    for r, row in table.items():
        if not all(n >= 1 and low <= v < high for n, v in row.items()):
            raise InvalidModelError(f"{source}: metadata {key}: N must be >= 1 and values in [{low:g}, {high:g}), got {raw}")
        if monotone and (np.diff([row[n] for n in sorted(row)]) > 0).any():
            raise InvalidModelError(f"{source}: metadata {key}: thresholds must not grow with the gallery size, got {raw}")
    if monotone:
        rates = sorted(table)
        for lo, hi in zip(rates, rates[1:]):
            if any(n in table[hi] and table[hi][n] < v for n, v in table[lo].items()):
                raise InvalidModelError(f"{source}: metadata {key}: thresholds must not fall as the FPIR grows, got {raw}")
    return table


def _check_decisions(metadata: Mapping[str, str], source: str) -> None:
    """The thresholds a model carries decide who is let in: values a unit-vector model allows,
    tables monotone as a calibration makes them, and the default one the table's own."""
    if "threshold" in metadata:
        threshold = _number(metadata, "threshold", source, 0.0, MAX_L2_THRESHOLD)
        if "threshold_table" in metadata:
            table = _far_table(metadata, "threshold_table", source, 0.0, MAX_L2_THRESHOLD, rising=True)
            far = metadata.get("threshold_far")
            at = table.get(float(far)) if far is not None and _is_float(far) else None
            if at is not None and not math.isclose(at, threshold, rel_tol=1e-6, abs_tol=1e-9):
                raise InvalidModelError(f"{source}: metadata threshold={threshold} disagrees with its table at FAR {far} ({at})")
    elif "threshold_table" in metadata:
        _far_table(metadata, "threshold_table", source, 0.0, MAX_L2_THRESHOLD, rising=True)
    if "mls_threshold" in metadata:
        _number(metadata, "mls_threshold", source)
    if "mls_threshold_table" in metadata:  # MLS: higher is stricter, so it falls as the FAR grows
        _far_table(metadata, "mls_threshold_table", source, -math.inf, math.inf, rising=False)
    for threshold_key, fnir_key in (FRAME_TABLES, TRACK_TABLES):
        if threshold_key in metadata:
            thresholds = fpir_table(metadata, threshold_key, source, 0.0, MAX_L2_THRESHOLD, monotone=True)
            if fnir_key in metadata:
                fnir = fpir_table(metadata, fnir_key, source, 0.0, 1.0 + 1e-9, monotone=False)
                if {r: sorted(t) for r, t in fnir.items()} != {r: sorted(t) for r, t in thresholds.items()}:
                    raise InvalidModelError(f"{source}: metadata {fnir_key} has other (FPIR, N) cells than {threshold_key}")
        elif fnir_key in metadata:
            raise InvalidModelError(f"{source}: metadata {fnir_key} without {threshold_key}")
    if "quality_reject_table" in metadata:
        _far_table(metadata, "quality_reject_table", source, -math.inf, math.inf, rising=True, what="reject fraction")


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def check_chips(chips: np.ndarray, input_size: tuple[int, int]) -> None:
    """Every backend's input check: aligned uint8 RGB chips [N, H, W, 3] of the model's size."""
    h, w = input_size
    if not isinstance(chips, np.ndarray):
        raise TypeError(f"chips must be a numpy array, got {type(chips).__name__}")
    if chips.dtype != np.uint8:
        raise TypeError(f"chips must be uint8 RGB pixels, got dtype {chips.dtype}")
    if chips.ndim != 4 or chips.shape[1:] != (h, w, 3):
        raise ValueError(f"chips must be [N, {h}, {w}, 3] (aligned RGB, NHWC), got shape {chips.shape}")


def _provider_name(provider: str | tuple[str, dict[str, Any]]) -> str:
    return provider if isinstance(provider, str) else provider[0]


class OnnxEmbedder:
    """An ONNX embedding model run by ONNX Runtime.

    ``providers``: ONNX Runtime execution providers in priority order, names or
    ``(name, options)`` pairs; default CPU only. A requested provider that this onnxruntime build
    lacks, or that fails to start, raises RuntimeError: ONNX Runtime's own behaviour would be
    to run on the CPU, silently and many times slower. ``threads``: intra-op threads (default:
    ONNX Runtime's, one per physical core), spinning only inside a run (``sdk.sessions``).
    ``embed`` may be called from several threads at once.
    """

    backend = "onnxruntime"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        providers: Sequence[str | tuple[str, dict[str, Any]]] | None = None,
        threads: int | None = None,
    ) -> None:
        if path is None:
            from sdk.loader import ensure_default_model  # it writes models with this module's contract

            path = ensure_default_model()
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"model file {self.path} not found")
        requested = list(providers) if providers is not None else ["CPUExecutionProvider"]
        names = [_provider_name(p) for p in requested]
        available = ort.get_available_providers()
        absent = [n for n in names if n not in available]
        if absent:
            raise RuntimeError(
                f"{', '.join(absent)} not available in this onnxruntime {ort.__version__} "
                f"(available: {', '.join(available)}); CUDA needs the onnxruntime-gpu package"
            )
        self._session = ort.InferenceSession(str(self.path), session_options(threads), providers=requested)
        self.providers: list[str] = self._session.get_providers()
        # A provider whose libraries fail to load (e.g. CUDA without cuDNN) is dropped with a log line.
        failed = [n for n in names if n not in self.providers]
        if failed:
            raise RuntimeError(
                f"onnxruntime could not start {', '.join(failed)} for {self.path} (see its log above); "
                f"it would run on {', '.join(self.providers)}"
            )
        self.metadata: dict[str, str] = dict(self._session.get_modelmeta().custom_metadata_map)
        self._network_sha256: str | None = None
        self.input_size, self.embedding_dim = parse_metadata(self.metadata, str(self.path))
        # A PFE model: the graph also gives each face's per-dimension variance (checked below).
        self.has_uncertainty: bool = self.metadata.get("uncertainty") == SIGMA_SQ_NAME
        self._check_graph()
        self.name: str = self.metadata["model_name"]
        logger.info(
            "embedder %s %s (%s) on %s",
            self.name,
            self.metadata["model_version"],
            self.path,
            ", ".join(self.providers),
        )

    def _check_graph(self) -> None:
        """The graph's input and output agree with the metadata (catches a hand-edited file)."""
        h, w = self.input_size
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        found_in = [(i.name, i.type, i.shape[1:]) for i in inputs]
        if found_in != [(INPUT_NAME, "tensor(uint8)", [h, w, 3])]:
            expected = f"one input {INPUT_NAME!r} uint8 [N, {h}, {w}, 3]"
            raise InvalidModelError(f"{self.path}: expected {expected}, found {found_in}")
        found_out = [(o.name, o.type, o.shape[1:]) for o in outputs]
        if (OUTPUT_NAME, "tensor(float)", [self.embedding_dim]) not in found_out:
            expected = f"output {OUTPUT_NAME!r} float32 [N, {self.embedding_dim}]"
            raise InvalidModelError(f"{self.path}: expected {expected}, found {found_out}")
        has_sigma_sq = any(name == SIGMA_SQ_NAME for name, _, _ in found_out)
        if self.has_uncertainty and (SIGMA_SQ_NAME, "tensor(float)", [self.embedding_dim]) not in found_out:
            expected = f"output {SIGMA_SQ_NAME!r} float32 [N, {self.embedding_dim}] (metadata uncertainty=sigma_sq)"
            raise InvalidModelError(f"{self.path}: expected {expected}, found {found_out}")
        if has_sigma_sq and not self.has_uncertainty:
            raise InvalidModelError(
                f"{self.path}: the graph has an output {SIGMA_SQ_NAME!r} but the metadata lacks "
                "uncertainty=sigma_sq; export PFE models with `facesdk export onnx pfe`"
            )

    @property
    def network_sha256(self) -> str:
        """SHA-256 of the network itself (the ONNX graph, weights included; not the metadata,
        which calibration rewrites): which network made a gallery's embeddings."""
        if self._network_sha256 is None:
            import onnx

            graph = onnx.load_model(self.path).graph.SerializeToString(deterministic=True)
            self._network_sha256 = hashlib.sha256(graph).hexdigest()
        return self._network_sha256

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """Embeddings float32 [N, D] of aligned uint8 RGB chips [N, H, W, 3]."""
        check_chips(chips, self.input_size)
        if len(chips) == 0:
            return np.zeros((0, self.embedding_dim), np.float32)
        (embeddings,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: np.ascontiguousarray(chips)})
        return embeddings

    def embed_with_uncertainty(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(mu, sigma_sq), both float32 [N, D], of aligned uint8 RGB chips [N, H, W, 3], in one run.

        mu is what :meth:`embed` returns (unit vectors); sigma_sq > 0 is the per-dimension variance
        of a PFE model. Raises ValueError on a model without the ``sigma_sq`` output.
        """
        if not self.has_uncertainty:
            raise ValueError(
                f"{self.path} ({self.name}) has no uncertainty output {SIGMA_SQ_NAME!r}: it is not a PFE model; "
                "export one with `facesdk export onnx pfe --head HEAD.pt`"
            )
        check_chips(chips, self.input_size)
        if len(chips) == 0:
            empty = np.zeros((0, self.embedding_dim), np.float32)
            return empty, empty.copy()
        mu, sigma_sq = self._session.run([OUTPUT_NAME, SIGMA_SQ_NAME], {INPUT_NAME: np.ascontiguousarray(chips)})
        return mu, sigma_sq


# Keys that describe the graph itself: set_metadata refuses them, re-export to change them.
GRAPH_KEYS = frozenset(
    {
        "input_size",
        "input_layout",
        "input_color",
        "chip_scheme",
        "embedding_dim",
        "embedding_normalized",
        "distance",
        "uncertainty",
    }
)


def save_model_atomic(proto: Any, path: Path) -> None:
    """Write then rename, so a reader never sees a half-written model."""
    import onnx

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        onnx.save_model(proto, tmp)
        if path.exists():
            os.chmod(tmp, path.stat().st_mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def set_metadata(path: str | os.PathLike[str], **values: str | float | None) -> None:
    """Set metadata keys of an exported model in place (None removes a key), e.g. ``threshold=1.05``.

    The result is checked as the runtime checks it, and replaces the file atomically.
    """
    import onnx

    path = Path(path)
    fixed = sorted(values.keys() & GRAPH_KEYS)
    if fixed:
        raise ValueError(f"{', '.join(fixed)} describe the graph; export the model again to change them")
    proto = onnx.load_model(path)
    meta = {p.key: p.value for p in proto.metadata_props}
    for key, value in values.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = str(value)
    parse_metadata(meta, str(path))
    onnx.helper.set_model_props(proto, meta)
    save_model_atomic(proto, path)
