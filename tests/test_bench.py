"""The benchmarks run end to end (small sizes, real LFW faces) and write their figures."""

from __future__ import annotations

import importlib.util
import json
import types

import numpy as np
import pytest

from cli.main import main as facesdk
from evaluate import bench


def bench_main(argv: list[str]) -> int:
    return facesdk(["bench", *argv])


def test_kernel_bench_quick_run_writes_json(tmp_path, capsys):
    out = tmp_path / "kernels.json"
    assert bench_main(["kernels", "--quick", "--repeat", "1", "--pause", "0", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {(r["op"], r["q"]) for r in result["rows"]} == {
        (op, q) for op in ("top-1", "match") for q, _ in bench.QUICK_SIZES
    }
    for row in result["rows"]:
        assert row["top1_agreement_with_numpy"] == 1.0
        assert row["ours_ms"] > 0 and row["numpy_ms"] > 0
    # The compressed galleries' answers equal float32's (the kernels' own check, in the bench).
    compressed = result["compressed"]["rows"]
    assert {(r["precision"], r["op"]) for r in compressed} == {(p, op) for p in ("fp16", "int8") for op in ("top-1", "match")}
    assert all(r["identical_to_fp32"] and r["ours_ms"] > 0 for r in compressed)
    printed = capsys.readouterr().out
    assert "vs best" in printed and f"isa={result['isa']}" in printed and "compressed galleries" in printed


# --- facesdk bench (run): the whole pipeline on real LFW faces ------------------------------------


def _quick_chips(data, count: int):
    """Aligned chips of `count` LFW faces, cut the way the bench cuts them (calibration data)."""
    from evaluate.lfw import lfw_chips

    return list(lfw_chips(data, count))


@pytest.fixture(scope="module")
def int8_onnx(default_onnx, data, tmp_path_factory):
    """A real INT8 QDQ copy of the default model (ONNX Runtime static quantisation, 4 LFW chips
    for calibration), labelled by the metadata key the bench reads: precision=int8."""
    quantization = pytest.importorskip("onnxruntime.quantization")
    from sdk.embed import set_metadata

    chips = _quick_chips(data, 4)

    class Chips(quantization.CalibrationDataReader):
        def __init__(self):
            self.rest = iter(chips)

        def get_next(self):
            chip = next(self.rest, None)
            return None if chip is None else {"chip": chip[None]}

    path = tmp_path_factory.mktemp("int8") / "dlib_resnet_v1_int8.onnx"
    quantization.quantize_static(
        str(default_onnx), str(path), Chips(), quant_format=quantization.QuantFormat.QDQ, per_channel=True
    )
    set_metadata(path, precision="int8")
    return path


def _check_latency(stats: dict, what: str) -> None:
    assert stats["samples"] >= 1, what
    assert 0 < stats["p50_ms"] <= stats["p95_ms"], (what, stats)
    assert np.isfinite(stats["p95_ms"]), what


def test_run_quick_on_lfw_writes_every_stage_versions_and_plot(data, default_onnx, int8_onnx, tmp_path, capsys):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    dlib_available = importlib.util.find_spec("dlib") is not None
    # One thread: two OpenMP threads of torch on a loaded 2-core machine wait for each other (1-2 s a call).
    argv = ["--quick", "--images", "4", "--pause", "0", "--threads", "1",
            "--backend", "onnxruntime,torch", "--backend", "tensorrt",
            "--model", str(default_onnx), "--model", str(int8_onnx), "--json", str(out), "--plot", str(png)]  # fmt: skip
    # No subcommand: `facesdk bench [options]` must run this benchmark (torch reference included).
    assert bench_main(argv + (["--dlib"] if dlib_available else [])) == 0
    result = json.loads(out.read_text())
    printed = capsys.readouterr().out

    for stage in ("decode", "detect", "align"):
        _check_latency(result["stages"][stage], stage)
    assert result["images"] == {**result["images"], "count": 4, "faces_found": 4}
    assert set(result["match"]) == {str(n) for n in bench.QUICK_RUN.galleries}
    for n, stats in result["match"].items():
        _check_latency(stats, f"match {n}")

    embeds = {(e["backend"], e["precision"]): e for e in result["embed"]}
    expected = {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("torch", "fp32")}
    expected |= {("dlib-bin", "fp32")} if dlib_available else set()
    assert expected <= set(embeds)
    for e in result["embed"]:
        assert e["backend"] == "dlib-bin" or e["threads"] == 1
        assert set(e["batches"]) == {str(b) for b in bench.QUICK_RUN.batches}
        for b, stats in e["batches"].items():
            _check_latency(stats, f"{e['label']} batch {b}")
            assert stats["p50_ms_per_face"] == pytest.approx(stats["p50_ms"] / int(b))
        assert e["faces_per_s"] > 0
    # The torch path computes what the ONNX file computes, and INT8 stays near FP32 (the default
    # model's threshold at FAR 1e-3 is 0.14 in squared L2).
    assert embeds[("torch", "fp32")]["vs_reference"]["max_abs_diff"] < 1e-4
    assert embeds[("onnxruntime", "int8")]["vs_reference"]["max_squared_l2"] < 0.07
    if dlib_available:
        assert embeds[("dlib-bin", "fp32")]["vs_reference"]["max_abs_diff"] < 1e-4
    assert {e["label"] for e in result["end_to_end"]} == {e["label"] for e in result["embed"]}
    for e in result["end_to_end"]:
        _check_latency(e, e["label"])
        assert e["frames_per_s"] > 0

    ratios = {(r["faster"].split(" (")[0], r["baseline"].split(" (")[0]): r for r in result["ratios"]}
    assert {("onnxruntime int8", "onnxruntime fp32"), ("onnxruntime fp32", "torch fp32")} <= set(ratios)
    for r in result["ratios"]:
        assert all(x > 0 for x in r["by_batch"].values())

    versions = result["versions"]
    assert {"python", "numpy", "onnxruntime", "torch", "tensorrt", "dlib", "kernels_isa"} <= set(versions)
    assert versions["onnxruntime"] and versions["kernels_isa"] in ("avx512", "avx2", "generic")
    device = result["device"]
    assert device["cpu"] and device["cores"] >= 1 and isinstance(device["isa"], list) and "gpu" in device

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert "speed-up" in printed and "match top-1" in printed and f"wrote {png}" in printed
    if bench.tensorrt_version() is None:  # TensorRT absent (here: only tensorrt-stubs): a reason, not a crash
        (reason,) = [s["reason"] for s in result["skipped"] if s["backend"] == "tensorrt"]
        assert "tensorrt" in reason.lower()
        assert f"tensorrt: skipped: {reason}" in printed
        assert not any(e["backend"] == "tensorrt" for e in result["embed"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--backend", "onnxruntime,cuda"], "unknown backend 'cuda'"),
        (["--model", "/nonexistent/model.onnx"], "no such file"),
        (["--model", "model.txt"], "expected an ONNX model"),
        (["--backend", "onnxruntime", "--model", "m.engine"], "add --backend tensorrt"),
        (["--backend", "torch", "--precision", "int8"], "--precision labels TensorRT engines"),
        (["--backend", "torch", "--plot", "latency.jpg"], "ending in .png"),
        (["--backend", "torch", "--images", "0"], "--images must be >= 1"),
        (["--backend", "torch", "--pause", "-1"], "--pause must be >= 0"),
    ],
)
def test_run_rejects_bad_arguments(argv, message, capsys):
    assert bench_main(["run", *argv]) == 2
    assert message in capsys.readouterr().err


def test_run_without_data_says_where_it_looked(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("FACESDK_DATA", str(tmp_path / "nowhere"))
    assert bench_main(["--backend", "torch", "--quick"]) == 1
    assert "LFW images not found under" in capsys.readouterr().err


def test_backend_lists_accept_repeats_and_commas():
    assert bench.parse_backends(None) == list(bench.BACKENDS)
    assert bench.parse_backends(["torch, onnxruntime", "TensorRT", "torch"]) == ["torch", "onnxruntime", "tensorrt"]


def test_tensorrt_engine_that_cannot_run_is_skipped_with_the_reason(tmp_path, monkeypatch):
    """Even where TensorRT imports, an engine that cannot run (here: no metadata file beside it,
    checked by the real sdk.tensorrt.TensorRTEmbedder) is a skipped line, never a crash."""
    sdk_tensorrt = pytest.importorskip("sdk.tensorrt")
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    monkeypatch.setattr(sdk_tensorrt, "import_tensorrt", lambda: types.SimpleNamespace(__version__="10.3.0"))
    found, reasons = bench.load_tensorrt([engine], None)
    assert found == []
    assert len(reasons) == 1 and reasons[0].startswith(f"{engine}: EngineMismatchError") and "metadata file" in reasons[0]


def test_run_with_no_runnable_backend_fails_clearly(data, tmp_path, capsys):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not an engine")
    assert bench_main(["--quick", "--backend", "tensorrt", "--model", str(engine)]) == 1
    err = capsys.readouterr().err
    assert "error: no embedding backend could run: tensorrt:" in err


def test_run_with_a_corrupt_model_names_the_file(data, tmp_path, capsys):
    model = tmp_path / "broken.onnx"
    model.write_bytes(b"not a model")
    assert bench_main(["--quick", "--backend", "onnxruntime", "--model", str(model)]) == 1
    assert f"error: --model {model}: onnxruntime cannot load it" in capsys.readouterr().err


def test_frame_bench_before_and_after_per_stage(data, default_onnx, int8_onnx, tmp_path, capsys):
    """`facesdk bench frame`: per detector a before row and an after row per model, every stage
    timed, the after rows compared with the before row of the same run."""
    if not (data / "lfw").is_dir():
        pytest.skip("LFW not found")
    out = tmp_path / "frame.json"
    argv = ["frame", "--model", str(default_onnx), "--int8", str(int8_onnx), "--images", "2", "--passes", "1",
            "--gallery", "100", "--threads", "1", "--max-side", "160", "--gallery-precision", "fp16", "--json", str(out)]  # fmt: skip
    assert bench_main(argv) == 0
    result = json.loads(out.read_text())
    labels = [r["label"] for r in result["rows"]]
    assert labels == [
        "yunet: before, fp32", "yunet: after (max side 160), fp32", "yunet: after (max side 160), int8",
        "yunet: Verifier.match (max side 160), int8",
        "yunet+dlib5: before, fp32", "yunet+dlib5: after (max side 160), fp32", "yunet+dlib5: after (max side 160), int8",
        "yunet+dlib5: Verifier.match (max side 160), int8",
    ]  # fmt: skip
    for r in result["rows"]:
        assert r["samples"] == result["frames"] * result["passes"]
        assert r["gallery_precision"] == ("fp32" if "before" in r["label"] else "fp16")
        assert r["p50_ms"]["total"] > r["p50_ms"]["decode"] > 0 and r["cpu_per_wall"] > 0
        if r["verifier"]:  # one call, not split into stages
            assert all(r["p50_ms"][stage] is None for stage in ("detect", "landmarks", "align", "embed", "match"))
            continue
        for stage in ("detect", "align", "embed", "match"):
            assert r["p50_ms"][stage] > 0, (r["label"], stage)
        assert (r["p50_ms"]["landmarks"] > 0.01) == (r["detector"] == "yunet+dlib5")
        assert r["p50_ms"]["total"] >= r["p50_ms"]["embed"]
    assert len(result["ratios"]) == 6 and all(x["by_stage"]["total"] > 0 for x in result["ratios"])
    printed = capsys.readouterr().out
    assert "speed-up, before / after" in printed and "cpu/wall" in printed


def test_align_bench_times_ours_and_dlib_and_checks_they_agree(data, tmp_path, capsys):
    """`facesdk bench align`: landmarks and chip, ours (the chip per instruction set) and dlib-bin's,
    hot and evicted, on faces where our points round to dlib's and our chips are dlib's."""
    if not (data / "lfw").is_dir():
        pytest.skip("LFW not found")
    pytest.importorskip("dlib")
    out = tmp_path / "align.json"
    assert bench_main(["align", "--images", "3", "--passes", "1", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["faces"] >= 2
    assert result["points_equal_to_dlib"] == result["chips_equal_to_dlib"] == result["faces"]
    who = [(r["stage"], r["who"]) for r in result["rows"]]
    isas = bench.kernels.available_isas()
    assert who == [("landmarks", "ours"), ("landmarks", "dlib-bin"), *[("chip", f"ours [{i}]") for i in isas], ("chip", "dlib-bin")]
    for r in result["rows"]:
        assert r["hot_ms"] > 0 and r["evicted_ms"] > 0 and r["dlib_over_ours"]["hot_ms"] > 0
    assert "chips equal to dlib's, byte for byte" in capsys.readouterr().out
