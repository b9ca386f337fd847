"""Liveness (sdk.liveness, export.minifasnet): the packaged MiniFASNet models reproduce the original
project's scores on its samples, are provably our export of the original weights, crop as the
models were trained, and refuse bad inputs and foreign files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from sdk.detect import YuNetDetector
from sdk.errors import BackendUnavailableError, InvalidArgumentError, InvalidImageError, InvalidModelError
from sdk.liveness import DEFAULT_MODELS, DEFAULT_THRESHOLD, MiniFASNet, crop_rect
from sdk.paths import models_dir, package_file

# ../shared/notes/minifasnet.md: the original project's code on its samples, with these boxes
# (x, y, w, h): softmax of V2 (scale 2.7) and of V1SE (scale 4.0).
NOTE = {
    "F1": ((188, 110, 191, 247), [0.071, 0.008, 0.921], [0.059, 0.662, 0.279]),
    "F2": ((146, 211, 214, 312), [0.000, 0.001, 0.999], [0.001, 0.006, 0.993]),
    "T1": ((119, 108, 178, 249), [0.000, 1.000, 0.000], [0.000, 1.000, 0.000]),
}
LIVE = {"F1": False, "F2": False, "T1": True}


@pytest.fixture(scope="module")
def source() -> Path:
    path = models_dir() / "minifasnet"
    if not (path / "samples").is_dir():
        pytest.skip(f"MiniFASNet weights and samples not found at {path} (set FACESDK_MODELS)")
    return path


@pytest.fixture(scope="module")
def samples(source: Path) -> dict[str, np.ndarray]:
    return {name: cv2.imread(str(source / "samples" / f"image_{name}.jpg")) for name in NOTE}


@pytest.fixture(scope="module")
def liveness(liveness_models) -> MiniFASNet:
    return MiniFASNet(liveness_models)


def xyxy(box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    x, y, w, h = box
    return x, y, x + w, y + h


@pytest.mark.parametrize("name", NOTE)
def test_the_notes_scores_on_the_notes_boxes(liveness, samples, name):
    box, v2, v1se = NOTE[name]
    p = liveness.probabilities(samples[name], xyxy(box))
    np.testing.assert_allclose(p, [v2, v1se], atol=1e-3)  # the note prints 3 decimals
    assert liveness.score(samples[name], xyxy(box)) == pytest.approx(p[:, 1].sum() / 2)


def test_our_detectors_faces_decide_as_the_original(liveness, samples):
    detector = YuNetDetector()
    for name, image in samples.items():
        (face,) = detector.detect(image)
        score = liveness.score(image, face)
        assert liveness(image, face) is LIVE[name] and (score >= DEFAULT_THRESHOLD) is LIVE[name], (name, score)
    assert liveness.threshold == DEFAULT_THRESHOLD == 0.5


def test_the_export_is_deterministic_and_computes_what_torch_does(source, samples, liveness_models, tmp_path):
    from export.minifasnet import SOURCES, export_minifasnet, torch_probabilities

    written = [p for p in export_minifasnet(source, tmp_path) if p.suffix == ".onnx"]
    assert (tmp_path / "LICENSE-minifasnet").read_text().startswith(("Apache", "\n", " "))
    ours, shipped = MiniFASNet(written), MiniFASNet(liveness_models)
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (120, 90, 3), np.uint8)
    cases = [*((image, xyxy(NOTE[name][0])) for name, image in samples.items()), (noise, (10, 12, 60, 80))]
    for frame, box in cases:
        np.testing.assert_allclose(ours.probabilities(frame, box), shipped.probabilities(frame, box), atol=1e-6)
    # and the torch module itself (PReLU as torch has it), on the same crops
    crops = np.stack([shipped.crops(frame, box) for frame, box in cases])  # [case, model, S, S, 3]
    shipped_p = np.stack([shipped.probabilities(frame, box) for frame, box in cases])
    for i, pth in enumerate(SOURCES):
        reference = torch_probabilities(source / pth, crops[:, i].transpose(0, 3, 1, 2).astype(np.float32))
        np.testing.assert_allclose(shipped_p[:, i], reference, atol=1e-5)
    for path in written:
        assert onnx.load_model(path).opset_import[0].version == 17
        assert path.name in DEFAULT_MODELS.values()
        assert path.read_bytes() == (liveness_models[0].parent / path.name).read_bytes()  # the same bytes again


def test_a_state_dict_that_does_not_fit_is_refused_with_the_key(source, tmp_path):
    torch = pytest.importorskip("torch")
    from export.minifasnet import MiniFASNet as Network

    state = torch.load(source / "2.7_80x80_MiniFASNetV2.pth", map_location="cpu", weights_only=True)
    cases = {
        "extra": ({**state, "module.extra.weight": torch.zeros(3)}, "unused.*module.extra.weight"),
        "missing": ({k: v for k, v in state.items() if k != "module.bn.bias"}, "missing.*module.bn.bias"),
        "shape": ({**state, "module.bn.bias": torch.zeros(7)}, r"module.bn.bias is \(7,\)"),
        "prefix": ({k.removeprefix("module."): v for k, v in state.items()}, "prefix"),
        "nan": ({**state, "module.bn.bias": torch.full((128,), float("nan"))}, "NaN"),
        "not_a_dict": ([1, 2], "state dict"),
    }
    for name, (bad, message) in cases.items():
        path = tmp_path / f"{name}.pth"
        torch.save(bad, path)
        with pytest.raises(ValueError, match=message):
            Network.from_state_dict(path)
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable torch state dict"):
        Network.from_state_dict(tmp_path / "junk.pth")


def test_crop_scale_shrinks_to_the_image_and_the_crop_is_shifted_not_cut():
    # A 100x100 box in a 640x480 image: 2.7x is 270 px, centred.
    assert crop_rect(np.array([190, 270, 290, 370]), 640, 480, 2.7) == (105, 185, 375, 455)
    # At the left edge: the same 270 px, moved right rather than cut.
    x1, y1, x2, y2 = crop_rect(np.array([0, 270, 100, 370]), 640, 480, 2.7)
    assert (x1, x2) == (0, 270) and y2 - y1 == 270
    # A 200 px face in a 250 px image (LFW): 4.0x cannot fit, the scale shrinks to 249/200.
    assert crop_rect(np.array([25, 25, 225, 225]), 250, 250, 4.0) == (0, 0, 249, 249)


def test_bad_inputs_have_defined_behaviour(liveness, samples, liveness_models):
    image = samples["T1"]
    h, w = image.shape[:2]
    # a tiny face at the corner: cropped inside the image, a probability comes back
    assert 0.0 <= liveness.score(image, (w - 3, h - 3, w, h)) <= 1.0
    # a grayscale frame is read as BGR with equal channels (as the detector reads it)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    box = xyxy(NOTE["T1"][0])
    assert liveness.score(gray, box) == pytest.approx(liveness.score(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR), box))
    for bad in [(w + 5, 10, w + 50, 60), (-80, -80, -1, -1), (50, 50, 40, 90), (0, 0, np.nan, 10), (1, 2, 3)]:
        with pytest.raises(InvalidArgumentError):
            liveness.score(image, bad)
    for frame in [None, image.astype(np.float32), np.zeros((0, 0, 3), np.uint8), "image.jpg"]:
        with pytest.raises(InvalidImageError):
            liveness.score(frame, box)
    for threshold in [-0.1, 1.5, float("nan"), "0.5", True]:
        with pytest.raises(InvalidArgumentError):
            MiniFASNet(liveness_models, threshold=threshold)


def test_foreign_or_tampered_model_files_are_refused(liveness_models, tmp_path, monkeypatch):
    shipped = liveness_models[0]
    proto = onnx.load_model(shipped)
    for key, value in [("crop_scale", "100"), ("input_color", "RGB"), ("live_class", "0")]:
        tampered = onnx.load_model(shipped)
        onnx.helper.set_model_props(tampered, {**{p.key: p.value for p in proto.metadata_props}, key: value})
        onnx.save_model(tampered, tmp_path / f"{key}.onnx")
        with pytest.raises(InvalidModelError, match=key if key != "crop_scale" else "out of range"):
            MiniFASNet([tmp_path / f"{key}.onnx"])
    with pytest.raises(InvalidModelError, match="not a facesdk liveness model"):
        MiniFASNet([package_file("yunet_n_dynamic.onnx")])
    (tmp_path / "junk.onnx").write_bytes(b"\x08\x07junk")
    with pytest.raises(InvalidModelError, match="not a loadable ONNX model"):
        MiniFASNet([tmp_path / "junk.onnx"])
    with pytest.raises(InvalidModelError, match="SHA-256"):
        MiniFASNet([shipped], sha256=["0" * 64])
    with pytest.raises(FileNotFoundError):
        MiniFASNet([tmp_path / "absent.onnx"])
    with pytest.raises(BackendUnavailableError, match="NoSuchExecutionProvider"):
        MiniFASNet(liveness_models, providers=["NoSuchExecutionProvider"])
    monkeypatch.setenv("FACESDK_HOME", str(tmp_path / "empty"))
    with pytest.raises(InvalidModelError, match="facesdk export minifasnet"):  # not exported yet: say how
        MiniFASNet()


def test_verifier_by_name_vetoes_the_spoofs_and_passes_the_live_face(default_onnx, samples, liveness_home):
    from sdk.verifier import Verifier

    with pytest.raises(InvalidArgumentError, match="unknown liveness"):
        Verifier(default_onnx, gallery=None, threshold=0.19, liveness="blink")
    with Verifier(default_onnx, detector="yunet", gallery=None, threshold=0.19, liveness="minifasnet") as v:
        assert isinstance(v.liveness, MiniFASNet)
        for name, image in samples.items():
            (m,) = v.match(image)
            assert m.live is LIVE[name] and (m.reason == "not_live") is (not LIVE[name]), name


def test_the_commands(data, tmp_path, capsys, liveness_home):
    import json

    import cli.main

    out = tmp_path / "liveness.json"
    assert cli.main.main(["eval", "liveness", "--sets", "att", "--count", "12", "--data", str(data), "--json", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["sets"]["att"]["faces"] + figures["sets"]["att"]["no_face"] == 12
    assert "APCER not measured" in capsys.readouterr().out
    for argv in (["eval", "liveness", "--data", str(tmp_path)], ["export", "minifasnet", "--from", str(tmp_path), "-o", str(tmp_path)]):
        assert cli.main.main(argv) == 1
        err = capsys.readouterr().err
        assert err.startswith("facesdk: error:") and err.count("\n") == 1 and str(tmp_path) in err
