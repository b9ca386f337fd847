"""sdk.pfe: MLS against its definition, fusion against a brute-force product of Gaussians,
quality, MLS calibration, the frame tracker; and the Verifier with a real PFE model
(quality gating, MLS identification of AT&T people, sigma_sq in the gallery, video streams),
built for the session by the ``pfe_onnx`` fixture (tests/conftest.py) from real CelebA faces."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from evaluate import calibration
from evaluate.calibration import Calibration
from sdk import pfe


def gaussians(rng: np.random.Generator, n: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    mu = rng.standard_normal((n, dim))
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    return mu.astype(np.float32), np.exp(rng.uniform(-6, -2, (n, dim))).astype(np.float32)


# ---------------------------------------------------------------------------------------- MLS


def test_mls_is_the_log_likelihood_that_two_faces_share_one_identity():
    """MLS = log of the integral over z of N(z; mu1, s1) N(z; mu2, s2), by numerical integration."""
    mu1, s1 = np.array([0.3, -0.2]), np.array([0.05, 0.2])
    mu2, s2 = np.array([0.1, 0.4]), np.array([0.1, 0.03])
    z = np.linspace(-4, 4, 200_001)
    total = 0.0
    for d in range(2):
        p1 = np.exp(-((z - mu1[d]) ** 2) / (2 * s1[d])) / np.sqrt(2 * np.pi * s1[d])
        p2 = np.exp(-((z - mu2[d]) ** 2) / (2 * s2[d])) / np.sqrt(2 * np.pi * s2[d])
        total += math.log(np.trapezoid(p1 * p2, z))
    assert pfe.mls_reference(mu1[None], s1[None], mu2[None], s2[None])[0, 0] == pytest.approx(total, abs=1e-6)


def test_mls_batched_topk_match_and_pairs_agree_with_the_reference():
    rng = np.random.default_rng(0)
    q_mu, q_s = gaussians(rng, 7, 128)
    g_mu, g_s = gaussians(rng, 300, 128)
    ref = pfe.mls_reference(q_mu, q_s, g_mu, g_s)
    # The explicit formula for one pair.
    var = q_s[2].astype(np.float64) + g_s[5]
    one = -0.5 * (((q_mu[2] - g_mu[5].astype(np.float64)) ** 2 / var) + np.log(var)).sum() - 64 * math.log(2 * math.pi)
    assert ref[2, 5] == pytest.approx(one, rel=1e-12)
    got = pfe.mls(q_mu, q_s, g_mu, g_s)
    assert got.shape == (7, 300) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-3)
    idx, score = pfe.mls_topk(q_mu, q_s, g_mu, g_s, 5)
    np.testing.assert_array_equal(idx, np.argsort(-ref, axis=1, kind="stable")[:, :5])
    np.testing.assert_allclose(score, np.take_along_axis(ref, idx, 1), rtol=1e-5)
    threshold = float(np.median(ref))
    m = pfe.mls_match(q_mu, q_s, g_mu, g_s, threshold)
    expected = np.argwhere(ref >= threshold)
    close = np.abs(ref - threshold) < 1e-2  # float32 rounding may flip pairs right at the threshold
    got_pairs = {(int(a), int(b)) for a, b in zip(m.query, m.gallery)}
    assert {tuple(p) for p in expected if not close[tuple(p)]} <= got_pairs
    assert all(ref[p] >= threshold or close[p] for p in got_pairs)
    np.testing.assert_allclose(pfe.mls_pairs(q_mu, q_s, g_mu[:7], g_s[:7]), np.diag(ref[:, :7]), rtol=1e-12)


def test_mls_topk_pads_a_short_gallery_and_rejects_bad_input():
    rng = np.random.default_rng(1)
    mu, s = gaussians(rng, 3, 16)
    idx, score = pfe.mls_topk(mu[:1], s[:1], mu, s, 5)
    assert idx[0, 3:].tolist() == [-1, -1] and np.isneginf(score[0, 3:]).all() and idx[0, 0] == 0
    with pytest.raises(ValueError, match="sigma_sq must be finite and > 0"):
        pfe.mls(mu, np.zeros_like(s), mu, s)
    with pytest.raises(ValueError, match="differ in dim"):
        pfe.mls(mu, s, mu[:, :8], s[:, :8])
    with pytest.raises(ValueError, match="differ in shape"):
        pfe.mls(mu, s[:2], mu, s)
    with pytest.raises(ValueError, match="NaN"):
        pfe.mls(np.full_like(mu, np.nan), s, mu, s)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pfe.mls_topk(mu, s, mu, s, 0)


# ------------------------------------------------------------------------------------- fusion


def test_closed_form_fusion_is_the_product_of_the_gaussians():
    """Brute force: per dimension, multiply the n densities on a grid, normalise, take moments."""
    rng = np.random.default_rng(2)
    mus = rng.uniform(-0.5, 0.5, (4, 3))
    sigma_sq = rng.uniform(0.01, 0.2, (4, 3))
    mu_hat, s_hat = pfe.fuse(mus, sigma_sq, "closed_form", normalize=False)
    z = np.linspace(-3, 3, 600_001)
    for d in range(3):
        log_p = sum(-((z - m) ** 2) / (2 * s) for m, s in zip(mus[:, d], sigma_sq[:, d]))
        p = np.exp(log_p - log_p.max())
        p /= np.trapezoid(p, z)
        mean = np.trapezoid(z * p, z)
        var = np.trapezoid((z - mean) ** 2 * p, z)
        assert mu_hat[d] == pytest.approx(mean, abs=1e-5)
        assert s_hat[d] == pytest.approx(var, rel=1e-4)


def test_min_sigma_fusion_keeps_the_smallest_variance_and_the_weighted_mean():
    rng = np.random.default_rng(3)
    mus, sigma_sq = gaussians(rng, 5, 32)
    closed_mu, closed_s = pfe.fuse(mus, sigma_sq, "closed_form", normalize=False)
    mu, s = pfe.fuse(mus, sigma_sq, "min_sigma", normalize=False)
    np.testing.assert_allclose(s, sigma_sq.min(0))
    np.testing.assert_allclose(mu, closed_mu, rtol=1e-6)
    assert (closed_s < s).all()  # the product is more certain than its most certain factor
    unit, _ = pfe.fuse(mus, sigma_sq, "min_sigma")
    assert np.linalg.norm(unit) == pytest.approx(1, abs=1e-6) and np.linalg.norm(mu) < 1
    np.testing.assert_allclose(unit, mu / np.linalg.norm(mu), rtol=1e-5)
    # One face fuses to itself; a face of huge variance barely moves the fusion.
    one_mu, one_s = pfe.fuse(mus[:1], sigma_sq[:1], "closed_form")
    np.testing.assert_allclose(one_mu, mus[0], rtol=1e-5)
    np.testing.assert_allclose(one_s, sigma_sq[0], rtol=1e-6)
    noisy = np.vstack([mus[:1], -mus[:1]])
    fused, _ = pfe.fuse(noisy, np.vstack([sigma_sq[:1], sigma_sq[:1] * 1e4]), "min_sigma")
    assert float(fused @ mus[0]) > 0.99
    with pytest.raises(ValueError, match="unknown fusion mode"):
        pfe.fuse(mus, sigma_sq, "average")
    with pytest.raises(ValueError, match="at least one face"):
        pfe.fuse(mus[:0], sigma_sq[:0])


# ------------------------------------------------------------------------------------ quality


def test_quality_is_minus_log_of_the_harmonic_mean_and_higher_is_better():
    s = np.array([[0.01, 0.04, 0.02], [0.1, 0.4, 0.2]])
    harmonic = 3 / (1 / s).sum(1)
    np.testing.assert_allclose(pfe.harmonic_mean_sigma_sq(s), harmonic)
    np.testing.assert_allclose(pfe.quality(s), -np.log(harmonic))
    assert pfe.quality(s[0]) > pfe.quality(s[1])  # ten times the variance: worse
    assert isinstance(pfe.quality(s[0]), float)
    assert pfe.quality(s[0]) == pytest.approx(math.log(np.mean(1 / s[0])))
    with pytest.raises(ValueError, match="> 0"):
        pfe.quality(np.array([0.1, 0.0]))


def test_calibrate_mls_meets_the_target_far():
    rng = np.random.default_rng(4)
    centres, _ = gaussians(rng, 30, 32)
    labels = np.repeat(np.arange(30), 4)
    mu = centres[labels] + 0.15 * rng.standard_normal((120, 32)).astype(np.float32)
    mu /= np.linalg.norm(mu, axis=1, keepdims=True)
    sigma_sq = np.exp(rng.uniform(-4, -3, (120, 32))).astype(np.float32)
    cal = calibration.calibrate_mls(mu, sigma_sq, labels, [1e-1, 1e-2])
    ref = pfe.mls(mu, sigma_sq, mu, sigma_sq)  # the scores the SDK compares with thresholds
    iu = np.triu_indices(120, 1)
    same = (labels[:, None] == labels[None, :])[iu]
    for c in cal:
        accepted = ref[iu] >= c.threshold
        assert c.genuine_pairs == same.sum() and c.impostor_pairs == (~same).sum()
        assert accepted[~same].mean() <= c.target_far + 1e-9
        assert c.far == pytest.approx(accepted[~same].mean(), abs=2 / len(same))
        assert c.tar == pytest.approx(accepted[same].mean(), abs=2 / same.sum())
    assert cal[0].threshold < cal[1].threshold and cal[0].tar >= cal[1].tar
    meta = {"mls_threshold": str(cal[1].threshold), "mls_threshold_table": '{"0.1": 1.5, "0.01": 2.5}'}
    assert pfe.mls_threshold_for(meta) == cal[1].threshold and pfe.mls_threshold_for(meta, 1e-2) == 2.5
    with pytest.raises(LookupError, match="facesdk calibrate --scoring mls"):
        pfe.mls_threshold_for({}, None)
    table = calibration.calibrate_quality(sigma_sq, [0.1, 0.5])
    q = pfe.quality(sigma_sq)
    assert np.mean(q < table[0.1]) == pytest.approx(0.1, abs=0.01) and table[0.1] < table[0.5]


# ------------------------------------------------------------------------------------ tracker


def test_tracker_follows_faces_by_overlap_fuses_a_window_and_expires_tracks():
    rng = np.random.default_rng(5)
    mus, sigma_sq = gaussians(rng, 12, 8)
    # Random mus are not one face across frames: boxes only here (appearance: test_tracking.py).
    tracker = pfe.FrameTracker(iou_threshold=0.3, window=3, max_missed=1, fusion="closed_form", appearance_gate=None)
    a, b = np.array([10, 10, 60, 60]), np.array([200, 20, 260, 80])
    first = tracker.update(np.stack([a, b]), mus[:2], sigma_sq[:2])
    assert [t.id for t in first] == [0, 1] and all(t.frames == 1 for t in first)
    # Next frame: both moved a little and come in the other order; a third face appears.
    second = tracker.update(np.stack([b + 4, a + 5, [400, 400, 450, 450]]), mus[2:5], sigma_sq[2:5])
    assert [t.id for t in second] == [1, 0, 2]
    assert second[1].frames == 2
    mu, s = pfe.fuse(np.stack([mus[0], mus[3]]), np.stack([sigma_sq[0], sigma_sq[3]]), "closed_form")
    np.testing.assert_allclose(second[1].mu, mu, rtol=1e-6)
    np.testing.assert_allclose(second[1].sigma_sq, s, rtol=1e-6)
    # Face a for three more frames: the window keeps the last three; an unusable frame is not fused.
    for i in range(5, 8):
        (t,) = tracker.update((a + 5)[None], mus[i : i + 1], sigma_sq[i : i + 1])
    assert t.id == 0 and t.frames == 3 and t.seen == 5
    mu, _ = pfe.fuse(mus[5:8], sigma_sq[5:8], "closed_form")
    np.testing.assert_allclose(t.mu, mu, rtol=1e-6)
    (t,) = tracker.update((a + 5)[None], mus[8:9], sigma_sq[8:9], usable=[False])
    np.testing.assert_allclose(t.mu, mu, rtol=1e-6)
    assert t.seen == 6
    # b and the third face were last seen several frames ago (max_missed=1): gone.
    assert [t.id for t in tracker.tracks] == [0]
    (new,) = tracker.update(b[None], mus[9:10], sigma_sq[9:10])
    assert new.id == 3
    (far_away,) = tracker.update(np.array([[600, 600, 650, 650]]), mus[10:11], sigma_sq[10:11])
    assert far_away.id == 4
    first_only = pfe.FrameTracker().update(a[None], mus[:1], sigma_sq[:1], usable=[False])[0]
    assert first_only.mu is None and first_only.frames == 0 and first_only.quality is None
    with pytest.raises(ValueError, match="2 boxes but 1 embeddings"):
        tracker.update(np.stack([a, b]), mus[:1], sigma_sq[:1])


def test_box_iou():
    iou = pfe.box_iou([[0, 0, 10, 10]], [[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(iou, [[1.0, 50 / 150, 0.0]])


# --------------------------------------------------------------------- the Verifier, real model
# pfe_onnx (tests/conftest.py): a small real PFE model built on CelebA faces for this session, its
# MLS thresholds and quality table calibrated and stored in its metadata.


def att_image(data: Path, person: int, number: int) -> Path:
    path = data / "att" / f"s{person}" / f"{number}.pgm"
    if not path.is_file():
        pytest.skip(f"AT&T faces not found under {data}")
    return path


@pytest.fixture(scope="module")
def pfe_verifier(pfe_onnx, data):
    from sdk.verifier import Verifier

    att_image(data, 1, 1)
    with Verifier(pfe_onnx, detector="yunet", gallery=None, scoring="mls") as v:
        yield v


def test_a_pfe_model_scores_by_l2_unless_asked_and_carries_its_calibration(pfe_onnx):
    from sdk.embed import OnnxEmbedder
    from sdk.verifier import Verifier

    meta = OnnxEmbedder(pfe_onnx).metadata
    with Verifier(pfe_onnx, detector="yunet", gallery=None) as v:
        assert v.has_uncertainty and v.scoring == "l2" and v.info()["scoring"] == "l2"
        assert v.threshold_for(None) == float(meta["threshold"])  # the squared-L2 threshold of mu
        assert v.fpir == 1e-3 and v.threshold == v.operating_point()["threshold"]  # 1:N: mu's FPIR table
    # MLS thresholds and the quality table were calibrated on real faces and stored in the file.
    table = {float(k): v for k, v in json.loads(meta["mls_threshold_table"]).items()}
    assert sorted(table) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert [table[far] for far in sorted(table)] == sorted(table.values(), reverse=True)  # stricter FAR, higher MLS
    with Verifier(pfe_onnx, detector="yunet", gallery=None, scoring="mls") as v:
        assert v.threshold == pfe.mls_threshold_for(meta) == table[1e-3] and meta["mls_threshold_far"] == "0.001"
        assert v.threshold_for(1e-4) == table[1e-4]
        assert v.quality_for(0.01) < v.quality_for(0.05) < v.quality_for(0.2)


def test_store_calibration_replaces_the_thresholds_the_verifier_reads(pfe_onnx, tmp_path):
    from evaluate.pfe import store_calibration
    from sdk.verifier import Verifier

    model = Path(shutil.copy(pfe_onnx, tmp_path / "recalibrated.onnx"))
    results = [Calibration(180.25, 1e-2, 0.01, 0.95, 10, 1000), Calibration(230.5, 1e-3, 0.001, 0.8, 10, 1000)]
    with pytest.raises(ValueError, match="FAR 0.5 is not among"):
        store_calibration(model, results, 0.5, {0.05: 7.5}, "made-up figures")
    assert store_calibration(model, results, 1e-2, {0.05: 7.5}, "made-up figures") is results[0]
    with Verifier(model, detector="yunet", gallery=None, scoring="mls") as v:
        assert v.threshold == 180.25 and v.threshold_for(1e-3) == 230.5 and v.quality_for(0.05) == 7.5
        assert v.embedder.metadata["mls_threshold_calibrated_on"] == "made-up figures"


def test_pfe_verifier_scores_by_mls_and_identifies_att_people(pfe_verifier, data):
    v = pfe_verifier
    assert v.scoring == "mls" and v.has_uncertainty and v.info()["scoring"] == "mls"
    for person in (1, 2, 3, 4, 5):
        assert v.enroll(f"s{person}", [att_image(data, person, i) for i in (1, 2, 3)]) == 3
    (m,) = v.match(att_image(data, 3, 9))
    assert m.identity == "s3" and m.accepted and m.reason is None
    assert m.mls is not None and m.mls >= v.threshold and m.quality is not None and math.isfinite(m.distance)
    ranked = v.identify(att_image(data, 4, 8), k=3)
    assert ranked[0][0] == "s4" and [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    (stranger,) = v.match(att_image(data, 30, 1))
    assert stranger.identity is None and not stranger.accepted and stranger.reason == "no_match"
    same = v.verify(att_image(data, 2, 4), att_image(data, 2, 9))
    assert same.same and same.scoring == "mls" and same.mls >= same.threshold
    # The gallery holds each face's sigma_sq and quality, as the model gives them.
    stored = v.gallery.embeddings("s3")
    assert stored.sigma_sq is not None and stored.sigma_sq.shape == (3, v.embedder.embedding_dim)
    mu, sigma_sq = v.embed_largest_with_uncertainty(att_image(data, 3, 2))
    np.testing.assert_allclose(stored.sigma_sq[1], sigma_sq, rtol=1e-6)
    np.testing.assert_allclose(stored.vectors[1], mu, rtol=1e-6)
    np.testing.assert_allclose(stored.quality[1], pfe.quality(sigma_sq), rtol=1e-9)


# The least drop of quality (ln of mean precision) from the worst of three sharp images to a 6 px
# blur that the test demands. Measured with pfe_onnx: 0.69 for these images (the spread of the
# three sharp ones: 0.30); the smallest over 8 LFW people and 4 training seeds: 0.34.
BLUR_QUALITY_MARGIN = 0.25


def area(m) -> float:
    return float((m.box[2] - m.box[0]) * (m.box[3] - m.box[1]))


def test_quality_gate_refuses_a_heavily_blurred_face(pfe_onnx, data):
    from sdk.verifier import LowQualityError, Verifier

    lfw = data / "lfw" / "images_deepfunneled" / "Tony_Blair"
    if not lfw.is_dir():
        pytest.skip(f"LFW not found under {data}")
    sharp = [cv2.imread(str(lfw / f"Tony_Blair_{i:04d}.jpg")) for i in (1, 2, 3)]
    blurred = cv2.GaussianBlur(sharp[0], (0, 0), 6)
    with Verifier(pfe_onnx, detector="yunet", gallery=None, scoring="mls") as probe:
        q_sharp = [pfe.quality(probe.embed_largest_with_uncertainty(img)[1]) for img in sharp]
        q_blur = pfe.quality(probe.embed_largest_with_uncertainty(blurred)[1])
    assert q_blur < min(q_sharp) - BLUR_QUALITY_MARGIN, f"uncertainty should grow with blur: {q_sharp} vs {q_blur}"
    gate = (q_blur + min(q_sharp)) / 2
    with Verifier(pfe_onnx, detector="yunet", gallery=None, scoring="mls", min_quality=gate) as v:
        with pytest.raises(LowQualityError, match="nothing was stored"):
            v.enroll("Tony_Blair", [*sharp[1:], blurred], largest=True)
        assert v.identities() == []
        assert v.enroll("Tony_Blair", sharp, largest=True) == 3
        good = max(v.match(sharp[1]), key=area)
        assert good.accepted and good.identity == "Tony_Blair" and good.quality >= gate
        poor = max(v.match(blurred), key=area)
        assert not poor.accepted and poor.identity is None and poor.reason == "low_quality" and poor.quality < gate
        assert v.verify(sharp[1], blurred).reason == "low_quality"
        with pytest.raises(LowQualityError):
            v.identify(blurred)


def test_a_stream_fuses_the_frames_of_one_face(pfe_verifier, data):
    v = pfe_verifier
    if "s6" not in v.identities():
        v.enroll("s6", [att_image(data, 6, i) for i in (1, 2)])
    stream = v.stream(window=4)
    frames = [cv2.copyMakeBorder(cv2.imread(str(att_image(data, 6, i))), 40, 40, 40 + i, 40 - i, cv2.BORDER_CONSTANT) for i in range(3, 9)]
    answers = [stream.match(f) for f in frames]
    assert all(len(a) == 1 for a in answers)
    assert len({a[0].track_id for a in answers}) == 1
    assert [a[0].frames for a in answers] == [1, 2, 3, 4, 4, 4]
    assert all(a[0].identity == "s6" and a[0].accepted for a in answers)
    assert answers[1][0].quality >= answers[0][0].quality  # fusing a second frame never lowers the quality
