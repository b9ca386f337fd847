"""The LFW protocol: pairs files, the 10-fold threshold choice and the ROC figures."""

from __future__ import annotations

import numpy as np
import pytest

from evaluate import lfw
from sdk.chips import central_face


def lfw_root(data):
    root = data / "lfw"
    if not (root / "pairs.txt").is_file():
        pytest.skip(f"LFW not found under {data}")
    return root


def test_official_pairs_file(data):
    root = lfw_root(data)
    pairs = lfw.read_pairs(root / "pairs.txt", root / "images_deepfunneled")
    assert len(pairs) == 6000
    for k in range(10):
        in_fold = pairs.fold == k
        assert in_fold.sum() == 600 and pairs.same[in_fold].sum() == 300
    assert pairs.left[0].name == "Abel_Pacheco_0001.jpg" and pairs.right[0].name == "Abel_Pacheco_0004.jpg"
    assert pairs.left[300].parent.name != pairs.right[300].parent.name
    images = pairs.images()
    assert len(images) == len(set(images)) and all(p.is_file() for p in images[:50])


def test_dev_test_pairs_become_ten_folds(data):
    root = lfw_root(data)
    pairs = lfw.read_pairs(root / "pairsDevTest.txt", root / "images_deepfunneled")
    assert len(pairs) == 1000
    assert [int((pairs.fold == k).sum()) for k in range(10)] == [100] * 10
    assert all(pairs.same[pairs.fold == k].sum() == 50 for k in range(10))


@pytest.mark.parametrize(
    "text,message",
    [
        ("", "not an LFW pairs file"),
        ("x 3\n", "not an LFW pairs file"),
        ("1 1\nA 1 2\n", "promises 2 pairs, found 1"),
        ("1 1\nA 1 2\nB 1 2\n", "mismatched pair expected"),
        ("1 1\nA 1 2 3 4 5\nB 1 C 2\n", "not a pair"),
    ],
)
def test_malformed_pairs_files(tmp_path, text, message):
    f = tmp_path / "pairs.txt"
    f.write_text(text)
    with pytest.raises(ValueError, match=message):
        lfw.read_pairs(f, tmp_path)


def synthetic(n_per_fold: int, separation: float, seed: int = 0) -> tuple[np.ndarray, lfw.Pairs]:
    rng = np.random.default_rng(seed)
    same = np.tile(np.repeat([True, False], n_per_fold), 10)
    fold = np.repeat(np.arange(10), 2 * n_per_fold)
    dist = np.where(same, 1.0, 1.0 + separation) + rng.normal(0, 0.2, len(same))
    paths = [f"{i}.jpg" for i in range(len(same))]
    return dist, lfw.Pairs(paths, paths, same, fold)


def test_separable_distances_score_perfectly():
    dist, pairs = synthetic(30, separation=5.0)
    v = lfw.evaluate(dist, pairs)
    assert v.accuracy == 1.0 and v.auc == 1.0 and v.eer == 0.0 and v.tar_at_far == 1.0
    assert np.all((v.fold_threshold > 1.5) & (v.fold_threshold < 5.5))


def test_random_distances_score_at_chance():
    dist, pairs = synthetic(300, separation=0.0)
    v = lfw.evaluate(dist, pairs)
    assert 0.45 < v.accuracy < 0.56 and 0.45 < v.auc < 0.55 and 0.4 < v.eer < 0.6


def test_threshold_and_roc_by_hand():
    dist = np.array([0.1, 0.2, 0.3, 0.4])
    same = np.array([True, False, True, False])
    assert lfw.best_threshold(dist, same) in (0.15, 0.35)  # both give 3/4
    far, tar, thr = lfw.roc(dist, same)
    np.testing.assert_allclose(far, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_allclose(tar, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_allclose(thr[1:], dist)


def test_the_threshold_comes_from_the_other_folds():
    """Fold 0 is deliberately shifted: its own best threshold would differ from the one used."""
    dist, pairs = synthetic(50, separation=3.0)
    dist[pairs.fold == 0] += 2.5
    v = lfw.evaluate(dist, pairs)
    assert v.fold_accuracy[0] < 0.8 and v.fold_accuracy[1:].min() > 0.95


def test_bad_distances_are_refused():
    dist, pairs = synthetic(5, separation=1.0)
    with pytest.raises(ValueError, match="distances for"):
        lfw.evaluate(dist[:-1], pairs)
    dist[3] = np.nan
    with pytest.raises(ValueError, match="finite"):
        lfw.evaluate(dist, pairs)


class ChipMeans:
    """A stand-in embedder: each chip's mean colour, enough to check which chip went where."""

    metadata = {"chip_scheme": "dlib5_150_0.25"}

    def embed(self, chips: np.ndarray) -> np.ndarray:
        return chips.reshape(len(chips), -1, 3).mean(1).astype(np.float32)


def test_images_without_a_face_get_the_mean_landmarks_and_keep_their_place(data):
    cv2 = pytest.importorskip("cv2")
    from sdk.align import align
    from sdk.detect import YuNetDetector

    root = lfw_root(data)
    pairs = lfw.read_pairs(root / "pairsDevTest.txt", root / "images_deepfunneled")
    paths = pairs.images()[:9]
    yunet = YuNetDetector()
    blind = {paths[2], paths[7]}

    class Blind:  # YuNet, except that it finds nothing in two of the images
        name, scheme = "blind", yunet.scheme

        def __init__(self):
            self.calls = 0

        def detect(self, image):
            path = paths[min(self.calls, len(paths) - 1)]
            self.calls += 1
            return [] if path in blind else yunet.detect(image)

    got = lfw.embed_images(paths, Blind(), ChipMeans(), batch=4, progress=False)
    assert got.failed.tolist() == [p in blind for p in paths]
    landmarks = {}
    for p in paths:
        image = cv2.imread(str(p))
        landmarks[p] = central_face(yunet.detect(image), image.shape).landmarks
    mean = np.mean([landmarks[p] for p in paths if p not in blind], axis=0)
    for i, p in enumerate(paths):
        rgb = cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB)
        expected = align(rgb, mean if p in blind else landmarks[p], "yunet5")
        np.testing.assert_allclose(got.embeddings[i], ChipMeans().embed(expected[None])[0], rtol=1e-6)
    assert set(got.ms_per_face()) == {"decode", "detect", "align", "embed", "total"}
