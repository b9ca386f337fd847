"""INT8 post-training quantisation (export.quantize): the default model quantised with a few real
CelebA faces, checked for its QDQ structure, what stays FP32, its metadata, that the runtime loads
it, that ONNX Runtime fuses it into integer kernels, and that it embeds real LFW faces as the FP32
model does. Skips with the reason when torch, the dlib weights or the face data are absent.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime.quantization")

from onnx import numpy_helper  # noqa: E402

from cli.main import main as facesdk  # noqa: E402
from export import int8_cpu, quantize  # noqa: E402
from sdk.embed import OnnxEmbedder  # noqa: E402

CALIBRATION_FACES = 16  # tiny on purpose: the real run uses 512
# Cosine of FP32 and INT8 embeddings of the same face. Measured on these 8 LFW faces with this
# 16-face calibration: min 0.9935, mean 0.998 (512 faces: min 0.991, mean 0.9994 over the 1,549
# LFW DevTest faces).
MIN_COSINE = 0.985
# The same for the CPU variant (uint8 asymmetric, 16-face calibration, these 8 faces): min 0.9940,
# mean 0.9988 (512 faces: mean 0.99971, min 0.99751 on 64 LFW faces).
MIN_COSINE_CPU = 0.99


@pytest.fixture(scope="module")
def celeba(data: Path) -> Path:
    if not (data / "celeba_subset" / "identities.txt").is_file():
        pytest.skip(f"CelebA subset not found under {data} (set FACESDK_DATA)")
    return data


@pytest.fixture(scope="module")
def calibration(celeba: Path) -> quantize.CalibrationChips:
    return quantize.calibration_chips("celeba", CALIBRATION_FACES, data=celeba, progress=False)


@pytest.fixture(scope="module")
def int8_path(default_onnx: Path, calibration: quantize.CalibrationChips, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("int8") / "dlib_resnet_v1_int8.onnx"
    return quantize.quantize_int8(default_onnx, out, calibration=calibration, progress=False)


@pytest.fixture(scope="module")
def int8_model(int8_path: Path) -> onnx.ModelProto:
    return onnx.load_model(int8_path)


@pytest.fixture(scope="module")
def lfw_chips(data: Path) -> np.ndarray:
    """8 real LFW faces (never used for calibration), detected and aligned as the runtime does."""
    import cv2

    from sdk.chips import central_chip
    from sdk.detect import default_detector

    root = data / "lfw" / "images_deepfunneled"
    if not root.is_dir():
        pytest.skip(f"LFW not found under {data} (set FACESDK_DATA)")
    detector, _ = default_detector()
    chips = []
    for person in sorted(root.glob("A*"))[::40]:  # 8 different people
        path = sorted(person.glob("*.jpg"))[0]
        image = cv2.imread(str(path))
        found = central_chip(image, detector)
        if found is not None:
            chips.append(found[0])
        if len(chips) == 8:
            break
    return np.stack(chips)


def _graph_maps(model: onnx.ModelProto):
    producer = {out: n for n in model.graph.node for out in n.output}
    initializers = {i.name: i for i in model.graph.initializer}
    return producer, initializers


def test_calibration_chips_are_real_aligned_faces(calibration: quantize.CalibrationChips) -> None:
    chips = calibration.chips
    assert chips.shape == (CALIBRATION_FACES, 150, 150, 3) and chips.dtype == np.uint8
    assert calibration.source.startswith(f"celeba ({CALIBRATION_FACES} faces of ")
    # Distinct faces, not one image repeated, and real content (not black or flat chips).
    assert len({c.tobytes() for c in chips}) == CALIBRATION_FACES
    assert chips.reshape(len(chips), -1).std(axis=1).min() > 20


def test_convs_are_qdq_with_per_channel_symmetric_weights(int8_model: onnx.ModelProto) -> None:
    producer, initializers = _graph_maps(int8_model)
    excluded = set(json.loads({p.key: p.value for p in int8_model.metadata_props}["quantization"])["excluded_nodes"])
    convs = [n for n in int8_model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 29
    quantized = [n for n in convs if n.name not in excluded]
    assert len(quantized) == 28
    for conv in quantized:
        x, w = producer.get(conv.input[0]), producer.get(conv.input[1])
        assert x is not None and x.op_type == "DequantizeLinear", f"{conv.name}: activation not quantised"
        assert w is not None and w.op_type == "DequantizeLinear", f"{conv.name}: weight not quantised"
        weight = numpy_helper.to_array(initializers[w.input[0]])
        scale = numpy_helper.to_array(initializers[w.input[1]])
        zero = numpy_helper.to_array(initializers[w.input[2]])
        axis = next((a.i for a in w.attribute if a.name == "axis"), 1)
        assert weight.dtype == np.int8 and axis == 0
        assert scale.shape == (weight.shape[0],), f"{conv.name}: weight scales not per output channel"
        assert len(np.unique(scale)) > 1 and not zero.any()
        # The bias stays float32 (TensorRT's DequantizeLinear takes no INT32 input).
        assert initializers[conv.input[2]].data_type == onnx.TensorProto.FLOAT


def test_activations_are_symmetric_int8(int8_model: onnx.ModelProto) -> None:
    """TensorRT takes only INT8 Q/DQ with zero point 0."""
    _, initializers = _graph_maps(int8_model)
    qdq = [n for n in int8_model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert len(qdq) > 100
    for node in qdq:
        zero = initializers[node.input[2]]
        assert zero.data_type == onnx.TensorProto.INT8, f"{node.name}: {onnx.TensorProto.DataType.Name(zero.data_type)}"
        assert not numpy_helper.to_array(zero).any(), f"{node.name}: zero point not 0"


def test_first_conv_fc_and_normalisation_stay_fp32(int8_model: onnx.ModelProto) -> None:
    producer, initializers = _graph_maps(int8_model)
    nodes = list(int8_model.graph.node)
    first_conv = next(n for n in nodes if n.op_type == "Conv")
    fc = next(n for n in nodes if n.op_type == "MatMul")
    record = json.loads({p.key: p.value for p in int8_model.metadata_props}["quantization"])
    assert record["excluded_nodes"] == [first_conv.name, fc.name]
    for node in (first_conv, fc):
        weight = initializers.get(node.input[1])
        assert weight is not None and weight.data_type == onnx.TensorProto.FLOAT, f"{node.name} is not FP32"
        assert producer[node.input[0]].op_type != "DequantizeLinear"
    # The cast/normalisation head and the L2-normalisation tail take no dequantised input.
    for node in nodes:
        if node.op_type in ("Cast", "Transpose", "Sub", "Mul", "ReduceL2", "Clip", "Div", "ReduceMean", "MatMul"):
            for name in node.input:
                if name in producer:
                    assert producer[name].op_type != "DequantizeLinear", f"{node.name} reads a quantised tensor"
    assert not any(name in producer and producer[name].op_type == "QuantizeLinear" for name in fc.output)


def test_metadata_copied_and_marked_int8(default_onnx: Path, int8_model: onnx.ModelProto) -> None:
    fp32_meta = {p.key: p.value for p in onnx.load_model(default_onnx).metadata_props}
    meta = {p.key: p.value for p in int8_model.metadata_props}
    assert {k: meta[k] for k in fp32_meta} == fp32_meta  # thresholds included, unchanged
    assert set(meta) - set(fp32_meta) == {"precision", "quantization"}
    assert meta["precision"] == "int8"
    record = json.loads(meta["quantization"])
    assert record["method"] == quantize.DEFAULT_METHOD
    assert record.get("percentile", quantize.DEFAULT_PERCENTILE) == quantize.DEFAULT_PERCENTILE
    assert record["calibration_count"] == CALIBRATION_FACES
    assert record["calibration"].startswith("celeba (")
    assert record["activations"].startswith("int8 symmetric") and "per-channel" in record["weights"]


def test_checker_passes_and_runtime_loads_it(int8_path: Path, int8_model: onnx.ModelProto) -> None:
    onnx.checker.check_model(int8_model, full_check=True)
    embedder = OnnxEmbedder(int8_path, threads=2)
    assert embedder.input_size == (150, 150) and embedder.embedding_dim == 128
    assert embedder.metadata["precision"] == "int8"
    # No ONNX Runtime private domain is imported: other consumers (TensorRT) must parse it.
    assert {o.domain for o in int8_model.opset_import} <= {"", "ai.onnx"}


def test_onnxruntime_fuses_every_quantised_conv(int8_path: Path, tmp_path: Path) -> None:
    """Each of the 28 quantised convs and 14 residual Adds must become an integer kernel; a Q
    shared by two consumers (the shortcut) silently keeps half the convs in float."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load_model(tmp_path / "optimized.onnx").graph.node]
    assert ops.count("QLinearConv") == 28
    assert ops.count("QLinearAdd") == 14


def test_int8_embeds_real_faces_like_fp32(default_onnx: Path, int8_path: Path, lfw_chips: np.ndarray) -> None:
    fp32 = OnnxEmbedder(default_onnx, threads=2).embed(lfw_chips)
    int8 = OnnxEmbedder(int8_path, threads=2).embed(lfw_chips)
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)  # the L2 tail still works
    cosine = (fp32 * int8).sum(axis=1)
    assert cosine.min() > MIN_COSINE, cosine
    assert cosine.mean() > 0.995, cosine
    # Distances between the faces (8 different people) are kept, and stay above the threshold.
    upper = np.triu_indices(len(int8), 1)
    fp32_dist, int8_dist = (2 - 2 * fp32 @ fp32.T)[upper], (2 - 2 * int8 @ int8.T)[upper]
    # Measured with this 16-face calibration: max |change| 0.051, mean 0.012 (squared L2; the
    # default threshold is 0.140). 512 calibration faces: mean 0.004 on 1,000 LFW DevTest pairs.
    change = np.abs(int8_dist - fp32_dist)
    assert change.max() < 0.1 and change.mean() < 0.025, change


def test_compare_on_a_small_pairs_file(default_onnx: Path, int8_path: Path, data: Path, tmp_path: Path) -> None:
    """compare() end to end on 20 LFW DevTest pairs (a View 1 file: 10 folds of 1 + 1 pairs)."""
    lines = (data / "lfw" / "pairsDevTest.txt").read_text().splitlines()
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("\n".join(["10", *lines[1:11], *lines[501:511]]) + "\n")
    out = tmp_path / "compare.json"
    assert facesdk(["eval", "int8", str(default_onnx), str(int8_path), "--pairs", str(pairs), "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["n_pairs"] == 20 and set(result["modes"]) == {"fp32", "int8", "mixed"}
    assert result["modes"]["fp32"]["auc"] > 0.95
    assert result["cosine"]["min"] > MIN_COSINE
    assert result["ms_per_face"]["fp32"] > 0 and result["ms_per_face"]["int8"] > 0
    assert result["quantization"]["method"] == quantize.DEFAULT_METHOD


def test_cli_int8_minmax_quantising_every_layer(
    default_onnx: Path, celeba: Path, lfw_chips: np.ndarray, tmp_path: Path
) -> None:
    """The levers through the command line: minmax ranges, nothing kept in FP32 (the fc too)."""
    out = tmp_path / "all_int8.onnx"
    argv = ["int8", str(default_onnx), "-o", str(out), "--count", "16", "--method", "minmax", "--keep-fp32", "none"]
    assert facesdk(["export", *argv, "--data", str(celeba)]) == 0
    model = onnx.load_model(out)
    record = quantize.quantization_info(out)
    assert record["method"] == "minmax" and record["excluded_nodes"] == [] and "percentile" not in record
    producer, initializers = _graph_maps(model)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert all(producer[c.input[1]].op_type == "DequantizeLinear" for c in convs)
    fc = next(n for n in model.graph.node if n.op_type == "MatMul")
    weight_dq = producer[fc.input[1]]
    assert weight_dq.op_type == "DequantizeLinear"
    assert next(a.i for a in weight_dq.attribute if a.name == "axis") == 1  # per output unit of W[in, out]
    assert numpy_helper.to_array(initializers[weight_dq.input[1]]).shape == (128,)
    assert all(n.op_type != "QuantizeLinear" for n in model.graph.node if fc.output[0] in n.input)
    fp32 = OnnxEmbedder(default_onnx, threads=2).embed(lfw_chips)
    int8 = OnnxEmbedder(out, threads=2).embed(lfw_chips)
    assert (fp32 * int8).sum(axis=1).min() > MIN_COSINE


# --- the CPU variant (uint8 asymmetric activations, ReLUs fused) -------------------------------------


@pytest.fixture(scope="module")
def cpu_int8_path(default_onnx: Path, celeba: Path, tmp_path_factory) -> Path:
    """Through the command line, as a user makes it."""
    out = tmp_path_factory.mktemp("int8cpu") / "dlib_resnet_v1.int8-cpu.onnx"
    argv = ["export", "int8", str(default_onnx), "-o", str(out), "--cpu", "--count", str(CALIBRATION_FACES)]
    assert facesdk([*argv, "--data", str(celeba)]) == 0
    return out


def test_cpu_variant_says_what_it_is(default_onnx: Path, cpu_int8_path: Path) -> None:
    fp32_meta = {p.key: p.value for p in onnx.load_model(default_onnx).metadata_props}
    embedder = OnnxEmbedder(cpu_int8_path, threads=2)
    meta = embedder.metadata
    assert {k: meta[k] for k in fp32_meta} == fp32_meta
    assert meta["precision"] == "int8-cpu"  # the gallery keeps its network apart from TensorRT's int8
    record = json.loads(meta["quantization"])
    assert record["target"] == "cpu" and record["activations"].startswith("uint8 asymmetric")
    model = onnx.load_model(cpu_int8_path)
    fc = next(n for n in model.graph.node if n.op_type == "MatMul")
    assert record["excluded_nodes"] == [fc.name]  # the first conv is quantised: uint8 pixels fit
    _, initializers = _graph_maps(model)
    zero_points = [initializers[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.data_type == onnx.TensorProto.UINT8 for z in zero_points)
    assert not any(n.op_type == "Relu" for n in model.graph.node)  # folded into the Q before each


def _optimized_ops(path: Path, tmp_path: Path) -> list[str]:
    """The op types of ONNX Runtime's optimised graph of ``path`` (what the CPU really runs)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return [n.op_type for n in onnx.load_model(tmp_path / "optimized.onnx").graph.node]


def test_cpu_variant_fuses_convs_adds_and_relus(cpu_int8_path: Path, tmp_path: Path) -> None:
    """All 29 convs, the 3 shortcut convs and 14 residual Adds run as integer kernels, no ReLU
    runs in float, and nothing runs between the uint8 chip and the first conv but its layout."""
    ops = _optimized_ops(cpu_int8_path, tmp_path)
    assert ops.count("QLinearConv") == 32 and ops.count("QLinearAdd") == 14
    assert ops.count("QLinearAveragePool") == 1  # the last block's shortcut: no channels to append
    assert not {"Relu", "Conv", "Add", "Cast", "Sub", "QuantizeLinear"} & set(ops)


def test_cpu_variant_embeds_real_faces_like_fp32(default_onnx: Path, cpu_int8_path: Path, lfw_chips: np.ndarray) -> None:
    fp32 = OnnxEmbedder(default_onnx, threads=2).embed(lfw_chips)
    int8 = OnnxEmbedder(cpu_int8_path, threads=2).embed(lfw_chips)
    np.testing.assert_allclose(np.linalg.norm(int8, axis=1), 1.0, atol=1e-5)
    cosine = (fp32 * int8).sum(axis=1)
    assert cosine.min() > MIN_COSINE_CPU and cosine.mean() > 0.997, cosine


def test_threads_spin_only_inside_a_run(cpu_int8_path: Path, lfw_chips: np.ndarray) -> None:
    """The embedder's threads spin while a run has work and stop at its end (sdk.sessions), and
    the thread count does not change the embeddings."""
    default, one = OnnxEmbedder(cpu_int8_path), OnnxEmbedder(cpu_int8_path, threads=1)
    options = default._session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    for batch in (lfw_chips[:1], lfw_chips[:4]):
        np.testing.assert_array_equal(default.embed(batch), one.embed(batch))


# --- the CPU variant's graph rewrites (export.int8_cpu), each against the graph without it -----------


@pytest.fixture(scope="module")
def cpu_plain(default_onnx: Path, calibration: quantize.CalibrationChips, tmp_path_factory) -> onnx.ModelProto:
    """The CPU variant without the rewrites, as quantize_static writes it."""
    out = tmp_path_factory.mktemp("int8cpu_plain") / "plain.onnx"
    quantize.quantize_int8(default_onnx, out, calibration=calibration, target="cpu", rewrites=(), progress=False)
    return onnx.load_model(out)


def _rewritten(plain: onnx.ModelProto, names: tuple[str, ...]) -> tuple[onnx.ModelProto, dict[str, int]]:
    model = onnx.ModelProto()
    model.CopyFrom(plain)
    counts = int8_cpu.rewrite_for_cpu(model, names)
    onnx.checker.check_model(model, full_check=True)
    return model, counts


def _embed(model: onnx.ModelProto, chips: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, {"chip": chips})[0]


def test_input_fold_feeds_raw_pixels_to_the_first_conv(
    default_onnx: Path, cpu_plain: onnx.ModelProto, lfw_chips: np.ndarray
) -> None:
    folded, counts = _rewritten(cpu_plain, ("input",))
    assert counts == {"input": 1}
    reader = next(n for n in folded.graph.node if "chip" in n.input)
    assert reader.op_type == "Transpose"  # chip -> Transpose -> DequantizeLinear(1, 0) -> Conv
    assert not {"Cast", "Sub", "Mul"} & {n.op_type for n in folded.graph.node}
    # The fold drops the input's rounding to the calibrated step: at least as close to FP32.
    fp32 = OnnxEmbedder(default_onnx, threads=2).embed(lfw_chips)
    before, after = _embed(cpu_plain, lfw_chips), _embed(folded, lfw_chips)
    assert (fp32 * after).sum(1).mean() >= (fp32 * before).sum(1).mean() - 1e-4
    assert (before * after).sum(1).min() > 0.999


def test_stem_space_to_depth_and_uint8_pads_are_bit_exact(cpu_plain: onnx.ModelProto, lfw_chips: np.ndarray) -> None:
    folded, _ = _rewritten(cpu_plain, ("input",))
    stem, counts = _rewritten(cpu_plain, ("input", "stem"))
    assert counts == {"input": 1, "stem": 1}
    conv = next(n for n in stem.graph.node if n.op_type == "Conv")
    assert [a.ints for a in conv.attribute if a.name in ("kernel_shape", "strides")] == [[4, 4], [1, 1]]
    np.testing.assert_array_equal(_embed(stem, lfw_chips), _embed(folded, lfw_chips))
    padded, counts = _rewritten(cpu_plain, ("pads",))
    assert counts == {"pads": 5}  # 3 shortcut pads (channels) and 2 main-path pads (rows, cols)
    assert all(n.op_type != "Pad" or n.input[0].endswith("QuantizeLinear_Output") for n in padded.graph.node)
    np.testing.assert_array_equal(_embed(padded, lfw_chips), _embed(cpu_plain, lfw_chips))


def test_shortcut_convs_match_pool_and_pad(
    default_onnx: Path, cpu_plain: onnx.ModelProto, lfw_chips: np.ndarray
) -> None:
    convs, counts = _rewritten(cpu_plain, ("shortcuts",))
    assert counts == {"shortcuts": 3}
    ops = [n.op_type for n in convs.graph.node]
    assert ops.count("AveragePool") == 1 and ops.count("Pad") == 2
    # The same sum of 4 over 4, whose ties (a quarter of the values) ONNX Runtime's conv rounds
    # to even and its pool does not: measured cosine >= 0.99988, as close to FP32 as before.
    fp32 = OnnxEmbedder(default_onnx, threads=2).embed(lfw_chips)
    before, after = _embed(cpu_plain, lfw_chips), _embed(convs, lfw_chips)
    assert (before * after).sum(1).min() > 0.9995
    assert (fp32 * after).sum(1).mean() >= (fp32 * before).sum(1).mean() - 2e-4


def test_amx_weights_are_bit_exact(cpu_plain: onnx.ModelProto, lfw_chips: np.ndarray) -> None:
    shifted, counts = _rewritten(cpu_plain, ("amx",))
    assert counts == {"amx": 13}  # the convs reading >= 128 channels: block7's second and on
    _, initializers = _graph_maps(shifted)
    zero_points = [
        numpy_helper.to_array(initializers[n.input[2]])
        for n in shifted.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0].endswith("amx_weight")
    ]
    assert len(zero_points) == 13 and all((z == -1).all() for z in zero_points)
    np.testing.assert_array_equal(_embed(shifted, lfw_chips), _embed(cpu_plain, lfw_chips))


def test_cli_names_every_rewrite() -> None:
    from cli import export as export_cli

    assert export_cli.CPU_REWRITES == tuple(int8_cpu.REWRITES)  # spelled out there to keep the CLI fast


def test_rewrites_leave_other_graphs_alone(int8_model: onnx.ModelProto) -> None:
    """The TensorRT variant keeps its first conv in FP32: no input or stem pattern to rewrite."""
    model = onnx.ModelProto()
    model.CopyFrom(int8_model)
    counts = int8_cpu.rewrite_for_cpu(model, ("input", "stem"))
    assert counts == {"input": 0, "stem": 0}
    assert model == int8_model
    with pytest.raises(ValueError, match="unknown"):
        int8_cpu.rewrite_for_cpu(model, ("nonsense",))


def test_tensorrt_refuses_the_cpu_variant(cpu_int8_path: Path) -> None:
    from export.tensorrt import quantization_problems

    problems = quantization_problems(onnx.load_model(cpu_int8_path))
    assert problems and any("uint8" in p or "zero point" in p for p in problems)


# --- errors ------------------------------------------------------------------------------------------


def test_missing_model_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="not found"):
        quantize.quantize_int8(tmp_path / "absent.onnx", tmp_path / "out.onnx", progress=False)


def test_rejects_a_model_that_is_not_facesdks(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "plain",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
    )
    path = tmp_path / "plain.onnx"
    onnx.save_model(helper.make_model(graph), path)
    with pytest.raises(ValueError, match="not a facesdk embedding model"):
        quantize.quantize_int8(path, tmp_path / "out.onnx", progress=False)
    assert not (tmp_path / "out.onnx").exists()


def test_calibration_set_absent(default_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="calibration set 'celeba' not found"):
        quantize.quantize_int8(default_onnx, tmp_path / "out.onnx", data=tmp_path, progress=False)
    assert not (tmp_path / "out.onnx").exists()


def test_refuses_lfw_for_calibration(default_onnx: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="LFW holds the test pairs"):
        quantize.quantize_int8(default_onnx, tmp_path / "out.onnx", calibration="lfw-devtrain", progress=False)


def test_bad_arguments(default_onnx: Path, int8_path: Path, calibration, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    with pytest.raises(ValueError, match="percentile must be in"):
        quantize.quantize_int8(default_onnx, out, calibration=calibration, percentile=5, progress=False)
    with pytest.raises(ValueError, match="method must be one of"):
        quantize.quantize_int8(default_onnx, out, calibration=calibration, method="kl", progress=False)
    with pytest.raises(ValueError, match="neither 'first', 'last' nor a node"):
        quantize.quantize_int8(default_onnx, out, calibration=calibration, keep_fp32=("conv9",), progress=False)
    with pytest.raises(ValueError, match="already quantised"):
        quantize.quantize_int8(int8_path, out, calibration=calibration, progress=False)
    with pytest.raises(ValueError, match="not over it"):
        quantize.quantize_int8(default_onnx, default_onnx, calibration=calibration, progress=False)
    with pytest.raises(ValueError, match="calibration chips must be uint8"):
        quantize.quantize_int8(default_onnx, out, calibration=calibration.chips[:, :100], progress=False)
    with pytest.raises(ValueError, match="unknown rewrite"):
        quantize.quantize_int8(default_onnx, out, calibration=calibration, target="cpu", rewrites=("x",), progress=False)
    with pytest.raises(ValueError, match="for target 'cpu'"):
        quantize.quantize_int8(default_onnx, out, calibration=calibration, rewrites=("input",), progress=False)
    assert not out.exists()


def test_cli_reports_errors_without_a_traceback(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "cli", "export", "int8", str(tmp_path / "absent.onnx"), "-o", str(tmp_path / "o")],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert run.stderr.startswith("facesdk: error:") and "not found" in run.stderr and "Traceback" not in run.stderr
