"""1:N operating points: FPIR / FNIR with distractor galleries (evaluate.openset), the model's
FPIR threshold table, the Verifier's threshold following the gallery's size, and 1:1 claims."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from evaluate import openset
from sdk.errors import FaceSDKError, InvalidArgumentError, InvalidModelError
from sdk.verifier import Verifier


def lfw_image(data: Path, name: str, number: int) -> Path:
    return data / "lfw" / "images_deepfunneled" / name / f"{name}_{number:04d}.jpg"


@pytest.fixture(scope="module")
def slice_(default_onnx, data):
    """A few hundred real embeddings: every 25th person (at most 3 images each), 20 strangers."""
    from sdk.embed import OnnxEmbedder

    persons = openset.people(data, per_person=3)[::25]
    gallery, strangers = openset.split_people(persons, strangers=20, stranger_pool="lfw-test")
    embeddings = openset.embed_people(persons, embedder=OnnxEmbedder(default_onnx), progress=False)
    return embeddings, gallery, strangers


def brute_force(embeddings, gallery_people, strangers, t):
    """FPIR and FNIR at t by comparing every search with every enrolled face in numpy."""
    g = np.stack([embeddings[p.images[0]] for p in gallery_people]).astype(np.float64)

    def nearest(q):
        d = ((g - embeddings[q].astype(np.float64)) ** 2).sum(1)
        return int(np.argmin(d)), float(d.min())

    non = [nearest(q)[1] for s in strangers for q in s.images]
    mated = [(i, *nearest(q)) for i, p in enumerate(gallery_people) for q in p.images[1:]]
    fpir = sum(d <= t for d in non) / len(non)
    fnir = sum(not (j == i and d <= t) for i, j, d in mated) / len(mated)
    return fpir, fnir


def test_fpir_and_fnir_equal_a_brute_force_count(slice_):
    embeddings, gallery, strangers = slice_
    sizes = (50, len(gallery))
    result = openset.one_to_n(embeddings, gallery, strangers, sizes, thresholds={"a": 0.1, "b": 0.14})
    assert set(result["sizes"]) == set(sizes)
    for n, row in result["sizes"].items():
        for label, t in (("a", 0.1), ("b", 0.14)):
            fpir, fnir = brute_force(embeddings, gallery[:n], strangers, t)
            assert row["at"][label]["fpir"] == pytest.approx(fpir)
            assert row["at"][label]["fnir"] == pytest.approx(fnir)
        for target, cell in row["targets"].items():
            assert cell["fpir"] <= float(target)  # the threshold keeps its promise on its own searches
            assert brute_force(embeddings, gallery[:n], strangers, cell["threshold"]) == pytest.approx((cell["fpir"], cell["fnir"]))


def test_thresholds_fall_with_n_and_rise_with_fpir(slice_):
    embeddings, gallery, strangers = slice_
    result = openset.one_to_n(embeddings, gallery, strangers, (20, 60, len(gallery)), (0.3, 0.1, 0.03))
    table = {f: [result["sizes"][n]["targets"][f]["threshold"] for n in result["sizes"]] for f in ("0.3", "0.1", "0.03")}
    for f, row in table.items():
        assert row == sorted(row, reverse=True), f
    for n in range(3):
        assert table["0.03"][n] <= table["0.1"][n] <= table["0.3"][n]


def test_pairs_and_fused_searches_equal_a_brute_force_count(slice_):
    """N = 1 is every (search, enrolled face) pair; with probe_frames each search is the
    normalised mean of that many of a person's images."""
    embeddings, gallery, strangers = slice_
    result = openset.one_to_n(embeddings, gallery, strangers, (1, len(gallery)), thresholds={"t": 0.12}, probe_frames=2)
    g = np.stack([embeddings[p.images[0]] for p in gallery]).astype(np.float64)

    def fused(images):
        m = np.mean([embeddings[q].astype(np.float64) for q in images], axis=0)
        return m / np.linalg.norm(m)

    non = [fused(s.images[:2]) for s in strangers if len(s.images) >= 2]
    mated = [(i, fused(p.images[1:3])) for i, p in enumerate(gallery) if len(p.images) >= 3]
    assert result["nonmated_searches"] == len(non) and result["probe_frames"] == 2
    pairs = [((g - q) ** 2).sum(1) for q in non]
    assert result["sizes"][1]["at"]["t"]["fpir"] == pytest.approx(np.mean(np.concatenate(pairs) <= 0.12), abs=1e-6)
    own = [((g[i] - q) ** 2).sum() for i, q in mated]
    assert result["sizes"][1]["at"]["t"]["fnir"] == pytest.approx(np.mean(np.array(own) > 0.12), abs=1e-6)
    nearest = [d.min() for d in pairs]
    assert result["sizes"][len(gallery)]["at"]["t"]["fpir"] == pytest.approx(np.mean(np.array(nearest) <= 0.12), abs=1e-6)


def test_the_default_verifier_decides_at_the_default_fpir(default_onnx):
    """The default model carries FPIR tables for frames and for tracks; a Verifier without far or
    threshold follows them, counting enrolled faces."""
    from sdk.dlib_onnx import FPIR_TABLES
    from sdk.verifier import DEFAULT_FPIR

    frames, tracks = FPIR_TABLES["fpir_threshold_table"]["0.001"], FPIR_TABLES["fpir_track_threshold_table"]["0.001"]
    with Verifier(default_onnx, detector="yunet", gallery=None) as v:
        assert v.fpir == DEFAULT_FPIR == 1e-3
        assert v.threshold == pytest.approx(frames["1"])  # empty: one face's pairwise FPIR
        assert v.operating_point(track=True)["threshold"] == pytest.approx(tracks["1"])
        rng = np.random.default_rng(1)
        vectors = rng.normal(size=(300, v.embedder.embedding_dim)).astype(np.float32)
        names = [f"p{i // 3}" for i in range(300)]  # 100 people, 3 faces each: N counts 300 faces
        v.gallery.add_many(names, vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        assert v.operating_point()["gallery_size"] == 300
        assert v.threshold == pytest.approx(frames["300"])
        assert v.operating_point(track=True)["threshold"] == pytest.approx(tracks["300"])
    with Verifier(default_onnx, detector="yunet", gallery=None, far=1e-3) as v:  # fixed, pairwise
        assert v.fpir is None and v.threshold == v.threshold_for(1e-3)


def test_det_plot_is_written(slice_, tmp_path):
    embeddings, gallery, strangers = slice_
    result = openset.one_to_n(embeddings, gallery, strangers, (50,))
    openset.plot_det(result, tmp_path / "det.png", "test")
    assert (tmp_path / "det.png").stat().st_size > 1000


TABLE = {"0.01": {"100": 0.12, "1000": 0.09}, "0.1": {"100": 0.15, "1000": 0.12}}
FNIR = {"0.01": {"100": 0.3, "1000": 0.6}, "0.1": {"100": 0.1, "1000": 0.2}}


@pytest.fixture()
def fpir_model(default_onnx, tmp_path):
    from sdk.embed import set_metadata

    model = tmp_path / "model.onnx"
    model.write_bytes(default_onnx.read_bytes())
    set_metadata(model, fpir_threshold_table=json.dumps(TABLE), fpir_fnir_table=json.dumps(FNIR))
    return model


@pytest.mark.parametrize(
    "table",
    [
        {"0.01": {"100": 0.09, "1000": 0.12}},  # grows with N
        {"0.01": {"100": 0.15}, "0.1": {"100": 0.12}},  # falls as the FPIR grows
        {"0.01": {"100": 5.0}},  # not a unit-vector distance
        {"2": {"100": 0.1}},  # not a rate
    ],
)
def test_a_bad_fpir_table_is_refused(fpir_model, table):
    from sdk.embed import set_metadata

    with pytest.raises(InvalidModelError, match="fpir_threshold_table"):  # refused when written, and when loaded
        set_metadata(fpir_model, fpir_threshold_table=json.dumps(table), fpir_fnir_table=None)


def test_the_threshold_follows_the_gallery_size(fpir_model, caplog):
    with Verifier(fpir_model, detector="yunet", gallery=None, fpir=0.01) as v:
        assert v.threshold == pytest.approx(0.12)  # empty gallery: the smallest measured N
        assert v.operating_point(316)["threshold"] == pytest.approx(0.105, abs=1e-3)  # halfway in log N
        assert v.operating_point(316)["expected_fnir"] == pytest.approx(0.45, abs=1e-2)
        rng = np.random.default_rng(0)
        vectors = rng.normal(size=(400, v.embedder.embedding_dim)).astype(np.float32)
        v.gallery.add_many([f"p{i}" for i in range(400)], vectors / np.linalg.norm(vectors, axis=1, keepdims=True))
        point = v.info()["operating_point"]
        assert point["gallery_size"] == 400 and point["threshold"] == v.threshold
        assert point["threshold"] == pytest.approx(0.12 - 0.03 * np.log10(4), abs=1e-6)
        assert point["warning"] is None
        assert v.remove("p0") and v.operating_point()["gallery_size"] == 399
        with caplog.at_level(logging.WARNING, logger="sdk.verifier"):
            beyond = v.operating_point(5000)
        assert beyond["threshold"] == pytest.approx(0.09) and beyond["expected_fpir"] > 0.01
        assert "more than the 1000" in beyond["warning"] and "more than the 1000" in caplog.text
    with Verifier(fpir_model, detector="yunet", gallery=None, fpir=0.1) as v:
        assert v.threshold == pytest.approx(0.15)
    with pytest.raises(FaceSDKError, match="no threshold calibrated for FPIR 0.05"):
        Verifier(fpir_model, detector="yunet", gallery=None, fpir=0.05)
    with pytest.raises(InvalidArgumentError):
        Verifier(fpir_model, detector="yunet", gallery=None, fpir=0.01, far=1e-3)


def test_without_a_table_fpir_says_how_to_get_one(default_onnx, tmp_path):
    from sdk.embed import FRAME_TABLES, TRACK_TABLES, set_metadata

    model = tmp_path / "model.onnx"
    model.write_bytes(default_onnx.read_bytes())
    set_metadata(model, **{key: None for key in FRAME_TABLES + TRACK_TABLES})
    with pytest.raises(FaceSDKError, match="facesdk eval fpir --write"):
        Verifier(model, detector="yunet", gallery=None, fpir=0.01)
    with Verifier(model, detector="yunet", gallery=None) as v:  # no table: the pairwise threshold
        assert v.fpir is None and v.threshold == v.threshold_for(None)


def test_a_claim_is_accepted_for_the_right_person_and_refused_for_another(fpir_model, data):
    with Verifier(fpir_model, detector="yunet", gallery=None, fpir=0.01) as v:
        v.enroll("Tony_Blair", [lfw_image(data, "Tony_Blair", i) for i in (1, 2)], largest=True)
        v.enroll("Colin_Powell", [lfw_image(data, "Colin_Powell", i) for i in (1, 2)], largest=True)
        right = v.verify_claim(lfw_image(data, "Tony_Blair", 20), "Tony_Blair")
        assert right.same and right.distance <= right.threshold
        assert right.threshold == v.threshold_for(None)  # pairwise, not the 1:N threshold
        pair = v.verify(lfw_image(data, "Tony_Blair", 20), lfw_image(data, "Tony_Blair", 1))
        assert pair.same and pair.threshold == v.threshold_for(None)
        wrong = v.verify_claim(lfw_image(data, "Tony_Blair", 20), "Colin_Powell")
        assert not wrong.same and wrong.distance > wrong.threshold
        assert not v.verify_claim(lfw_image(data, "Tony_Blair", 20), "Tony_Blair", threshold=0.0).same
        with pytest.raises(InvalidArgumentError, match="not enrolled"):
            v.verify_claim(lfw_image(data, "Tony_Blair", 20), "Gerhard_Schroeder")


def test_claim_and_gallery_list_on_the_command_line(fpir_model, data, tmp_path, capsys):
    import cli.main as cli

    common = ["--model", str(fpir_model), "--detector", "yunet", "--gallery", str(tmp_path / "g.sqlite")]
    assert cli.main(["enroll", "Tony_Blair", str(lfw_image(data, "Tony_Blair", 1)), "--largest", *common]) == 0
    assert cli.main(["claim", "Tony_Blair", str(lfw_image(data, "Tony_Blair", 20)), *common]) == 0
    assert "Tony_Blair: accepted" in capsys.readouterr().out
    assert cli.main(["gallery", "list", "--fpir", "0.01", *common]) == 0
    out = capsys.readouterr().out
    assert "operating point at N = 1: threshold 0.1200" in out and "expected FNIR 30.0%" in out


def test_flip_averaging_is_the_same_for_a_face_and_its_mirror(default_onnx, data):
    import cv2

    from sdk.embed import OnnxEmbedder

    image = cv2.imread(str(lfw_image(data, "Tony_Blair", 1)))
    chips = np.stack([image[50:200, 50:200], image[40:190, 60:210]])
    flip = openset.FlipAveraged(OnnxEmbedder(default_onnx))
    e, mirrored = flip.embed(chips), flip.embed(np.ascontiguousarray(chips[:, :, ::-1]))
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(e, mirrored, atol=1e-5)
    plain = flip.embedder.embed(chips)
    assert ((plain - e) ** 2).sum(1).max() > 1e-4  # it is not the plain embedding
