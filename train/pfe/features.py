"""Frozen backbone features of clean and degraded face chips, computed once and cached as .npz.

The backbone is frozen during PFE training, so its outputs are computed once: for each image
(detected by the SDK's detector, aligned by ``sdk.align``), the clean chip and ``variants``
degraded copies (``train.pfe.degrade``) go through dlib's ResNet-29, and the pooled 256-D
features (the head's input) and the unit 128-D embedding (mu) of every chip are stored, with
which image and which degradation each row is. Training the head then takes seconds.

The network runs in ONNX Runtime, the runtime's engine (a graph with both outputs, exported once
into the cache folder; measured 6.9 ms per chip at batch 64 on an idle 2-core machine, 11.8 ms
under the shared load of the full run). Images where no face is found are skipped and counted.

Training images (:func:`training_images`): the CelebA subset (all of it) and the LFW people who
appear in no pair of ``pairs.txt`` or ``pairsDevTest.txt`` and have at least two images (a single
image gives no genuine pair), so that LFW's verification figures stay clean.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from sdk.embed import default_model_path
from sdk.paths import home
from train.pfe.degrade import CLEAN, KINDS, degrade
from train.pfe.head import pooled_features

FEATURE_MODEL_FILE = "dlib_resnet_v1_features.onnx"
POOLED_NAME, MU_NAME = "pooled", "mu"


def cache_dir() -> Path:
    """``$FACESDK_HOME/pfe`` or ``~/.cache/facesdk/pfe``: features, the feature graph, checkpoints."""
    return home() / "pfe"


def default_head_path() -> Path:
    """Where ``facesdk train pfe train`` writes the head and ``export.onnx pfe`` reads it."""
    return cache_dir() / "head.pt"


class FeatureNetwork(nn.Module):
    """uint8 chips [N, 150, 150, 3] RGB -> (pooled features [N, 256], unit embedding mu [N, 128])."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, chip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled = pooled_features(self.backbone, chip.to(torch.float32).permute(0, 3, 1, 2))
        x = self.backbone.fc(pooled)
        # The exported default model's normalisation, written the same way (export.onnx).
        return pooled, x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-12)


def export_feature_model(path: Path | None = None) -> Path:
    """Write dlib's ResNet-29 with both outputs as ONNX (for extraction only, not a runtime model).

    Rewritten only when dlib's weights change (their sha256 is kept in a .sha256 file beside it).
    """
    from sdk.dlib_format import dlib_model_path
    from train.backbones.dlib_resnet import DlibResNet

    path = cache_dir() / FEATURE_MODEL_FILE if path is None else Path(path)
    weights = dlib_model_path()
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    stamp = path.with_suffix(".sha256")
    if path.is_file() and stamp.is_file() and stamp.read_text() == digest:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    network = FeatureNetwork(DlibResNet.from_dlib(weights)).eval()
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with warnings.catch_warnings():
        # Same exporter and warnings as export.onnx: legacy TorchScript export, folded pads.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", "Constant folding - Only steps=1", UserWarning)
        torch.onnx.export(
            network,
            (torch.zeros(2, 150, 150, 3, dtype=torch.uint8),),
            tmp,
            dynamo=False,
            opset_version=17,
            input_names=["chip"],
            output_names=[POOLED_NAME, MU_NAME],
            dynamic_axes={"chip": {0: "batch"}, POOLED_NAME: {0: "batch"}, MU_NAME: {0: "batch"}},
        )
    os.replace(tmp, path)
    stamp.write_text(digest)
    return path


class FeatureExtractor:
    """Runs the feature graph in ONNX Runtime: chips -> (pooled, mu)."""

    def __init__(self, path: Path | None = None, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = export_feature_model(path)
        options = ort.SessionOptions()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as sdk.embed: share the cores
        if threads is not None:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])

    def __call__(self, chips: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if chips.dtype != np.uint8 or chips.ndim != 4 or chips.shape[1:] != (150, 150, 3):
            raise ValueError(f"chips must be uint8 [N, 150, 150, 3], got {chips.dtype} {chips.shape}")
        pooled, mu = self._session.run([POOLED_NAME, MU_NAME], {"chip": np.ascontiguousarray(chips)})
        return pooled, mu


@dataclass
class FeatureSet:
    """Rows of frozen features; each row is one chip (clean or degraded) of one image.

    Per row: ``pooled`` [R, 256], ``mu`` [R, 128] (unit), ``image`` [R] (index into the per-image
    lists), ``degradation`` [R] ("clean", "blur:2", "blur:2+jpeg:20", ...). Per image: ``paths``,
    ``identity`` (e.g. "celeba:17", "lfw:Name"), ``source``. ``skipped``: images without a face.
    """

    pooled: np.ndarray
    mu: np.ndarray
    image: np.ndarray
    degradation: np.ndarray
    paths: np.ndarray
    identity: np.ndarray
    source: np.ndarray
    skipped: np.ndarray = field(default_factory=lambda: np.array([], dtype=str))
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.image)

    @property
    def row_identity(self) -> np.ndarray:
        return self.identity[self.image]

    def save(self, path: Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")  # np.savez appends .npz otherwise
        arrays = {name: getattr(self, name) for name in ARRAYS}
        np.savez(tmp, **arrays, meta=np.array(json.dumps(self.meta)))
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path: Path) -> FeatureSet:
        with np.load(path, allow_pickle=False) as data:
            missing = [name for name in (*ARRAYS, "meta") if name not in data]
            if missing:
                raise ValueError(f"{path} is not a PFE feature cache (lacks {', '.join(missing)})")
            return cls(**{name: data[name] for name in ARRAYS}, meta=json.loads(str(data["meta"])))


ARRAYS = ("pooled", "mu", "image", "degradation", "paths", "identity", "source", "skipped")


def _people_in_pairs(pairs_file: Path, images: Path) -> set[str]:
    from evaluate.lfw import read_pairs

    return {p.parent.name for p in read_pairs(pairs_file, images).images()}


def training_images(data: Path, min_lfw_images: int = 2) -> tuple[list[Path], list[str], list[str]]:
    """(paths, identity, source) of the CelebA subset and the LFW people outside the test pairs."""
    from evaluate.calibration import labelled_images

    paths, identity, source = [], [], []
    if (data / "celeba_subset" / "identities.txt").is_file():
        celeba, labels = labelled_images(data, "celeba")
        paths += celeba
        identity += [f"celeba:{label}" for label in labels]
        source += ["celeba"] * len(celeba)
    lfw = data / "lfw" / "images_deepfunneled"
    if lfw.is_dir():
        excluded = set()
        for name in ("pairs.txt", "pairsDevTest.txt"):
            if not (data / "lfw" / name).is_file():
                raise FileNotFoundError(f"{data / 'lfw' / name} is needed to keep LFW's test people out of training")
            excluded |= _people_in_pairs(data / "lfw" / name, lfw)
        for person in sorted(p.name for p in lfw.iterdir() if p.is_dir() and p.name not in excluded):
            images = sorted((lfw / person).glob("*.jpg"))
            if len(images) >= min_lfw_images:
                paths += images
                identity += [f"lfw:{person}"] * len(images)
                source += ["lfw"] * len(images)
    if not paths:
        raise FileNotFoundError(f"no training images under {data} (celeba_subset/ or lfw/; set FACESDK_DATA)")
    return paths, identity, source


def extract_features(
    paths: Sequence[Path],
    identity: Sequence[str],
    source: Sequence[str],
    *,
    variants: int,
    seed: int = 0,
    detector: object | None = None,
    extractor: FeatureExtractor | None = None,
    batch: int = 64,
    progress: bool = True,
) -> FeatureSet:
    """Detect, align, degrade (``variants`` copies per image) and run the backbone on every image.

    The degradations of image i are drawn from ``(seed, i)``, so they do not depend on batching or
    on which other images were found. Images without a face are skipped and listed in ``skipped``.
    """
    from tqdm import tqdm

    from sdk.chips import central_chip
    from sdk.detect import default_detector

    if not len(paths) == len(identity) == len(source):
        raise ValueError(f"{len(paths)} paths, {len(identity)} identities, {len(source)} sources")
    if variants < 0:
        raise ValueError(f"variants must be >= 0, got {variants}")
    if detector is None:
        detector, _ = default_detector()
    extractor = FeatureExtractor() if extractor is None else extractor

    kept: list[int] = []  # index into paths of each image with a face
    skipped: list[str] = []
    chips: list[np.ndarray] = []
    rows_image: list[int] = []
    rows_name: list[str] = []
    pooled_parts: list[np.ndarray] = []
    mu_parts: list[np.ndarray] = []
    seconds = {"detect+align": 0.0, "degrade": 0.0, "network": 0.0}

    def flush() -> None:
        if chips:
            start = time.perf_counter()
            pooled, mu = extractor(np.stack(chips))
            seconds["network"] += time.perf_counter() - start
            pooled_parts.append(pooled)
            mu_parts.append(mu)
            chips.clear()

    for index, path in enumerate(tqdm(paths, desc="pfe features", unit="img", disable=not progress)):
        start = time.perf_counter()
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"cannot read image {path}")
        found = central_chip(image, detector)
        if found is None:
            skipped.append(str(path))
            continue
        chip = found[0]
        seconds["detect+align"] += time.perf_counter() - start
        start = time.perf_counter()
        rng = np.random.default_rng([seed, index])
        image_number = len(kept)
        kept.append(index)
        chips.append(chip)
        rows_image.append(image_number)
        rows_name.append(CLEAN)
        # Kinds in a shuffled cycle: every image gets every kind about equally often.
        kinds = rng.permutation(len(KINDS))
        for v in range(variants):
            degraded, name = degrade(chip, rng, KINDS[int(kinds[v % len(KINDS)])])
            chips.append(degraded)
            rows_image.append(image_number)
            rows_name.append(name)
        seconds["degrade"] += time.perf_counter() - start
        if len(chips) >= batch:
            flush()
    flush()
    if not kept:
        raise RuntimeError(f"no face found in any of {len(paths)} images")
    return FeatureSet(
        pooled=np.concatenate(pooled_parts),
        mu=np.concatenate(mu_parts),
        image=np.array(rows_image, np.int32),
        degradation=np.array(rows_name, dtype=str),
        paths=np.array([str(paths[i]) for i in kept], dtype=str),
        identity=np.array([identity[i] for i in kept], dtype=str),
        source=np.array([source[i] for i in kept], dtype=str),
        skipped=np.array(skipped, dtype=str),
        meta={
            "variants": variants,
            "seed": seed,
            "detector": getattr(detector, "name", type(detector).__name__),
            "images": len(paths),
            "seconds": {k: round(v, 1) for k, v in seconds.items()},
        },
    )


def default_features_path(variants: int, seed: int) -> Path:
    return cache_dir() / f"features_v{variants}_seed{seed}.npz"
