"""Thresholds at a target FAR, on synthetic embeddings and the real labelled sets' listings."""

from __future__ import annotations

import numpy as np
import pytest

from evaluate import calibration


def clustered(rng, identities: int, per: int, spread: float):
    centres = rng.standard_normal((identities, 64))
    x = np.repeat(centres, per, axis=0) + spread * rng.standard_normal((identities * per, 64))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(identities), per)


@pytest.mark.parametrize("far", [1e-3, 1e-2, 0.1])
def test_threshold_meets_the_target_far(far):
    x, labels = clustered(np.random.default_rng(0), 60, 8, spread=0.9)
    (c,) = calibration.calibrate(x, labels, [far])
    assert c.far <= far and c.genuine_pairs == 60 * 28 and c.impostor_pairs == 480 * 479 // 2 - 60 * 28
    # The threshold is tight: one float step higher accepts more impostors than allowed.
    (looser,) = calibration.calibrate(x, labels, [min(1.0 - 1e-9, far * 1.5)])
    assert looser.threshold >= c.threshold
    assert 0 < c.tar <= 1


def test_several_fars_at_once_agree_with_one_at_a_time():
    x, labels = clustered(np.random.default_rng(3), 40, 6, spread=0.8)
    fars = [1e-1, 1e-2, 1e-3]
    together = calibration.calibrate(x, labels, fars)
    assert [c.threshold for c in together] == [calibration.calibrate(x, labels, [f])[0].threshold for f in fars]
    assert together[0].threshold >= together[1].threshold >= together[2].threshold


def test_well_separated_identities_are_all_accepted():
    x, labels = clustered(np.random.default_rng(1), 20, 5, spread=0.05)
    (c,) = calibration.calibrate(x, labels, [1e-3])
    assert c.tar == 1.0 and c.far <= 1e-3


def test_degenerate_sets_are_refused():
    x, labels = clustered(np.random.default_rng(2), 5, 1, spread=0.1)
    with pytest.raises(ValueError, match="at least two images"):
        calibration.calibrate(x, labels, [1e-3])
    with pytest.raises(ValueError, match="far must be"):
        calibration.calibrate(x, labels, [1e-3, 0.0])


@pytest.mark.parametrize("name,images,identities", [("celeba", 5093, 239), ("lfw-devtrain", 9525, 4038)])
def test_labelled_sets_list_real_images(data, name, images, identities):
    paths, labels = calibration.labelled_images(data, name)
    assert len(paths) == images and len(np.unique(labels)) == identities
    assert all(p.is_file() for p in paths[:: max(1, len(paths) // 50)])
