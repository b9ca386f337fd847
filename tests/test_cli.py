"""`facesdk` end to end on small real slices: eval lfw on 100 DevTest pairs, calibrate, errors."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

import cli.main as cli
from conftest import REPO
from sdk.embed import OnnxEmbedder


@pytest.fixture(scope="module")
def small_pairs(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """50 matched + 50 mismatched pairs of LFW's pairsDevTest.txt, in its own format."""
    source = data / "lfw" / "pairsDevTest.txt"
    if not source.is_file():
        pytest.skip(f"LFW not found under {data}")
    lines = source.read_text().splitlines()
    picked = lines[1:51] + lines[501:551]
    path = tmp_path_factory.mktemp("pairs") / "pairs100.txt"
    path.write_text("50\n" + "\n".join(picked) + "\n")
    return path


def test_eval_lfw_on_a_real_slice(data, small_pairs, default_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    code = cli.main(
        ["eval", "lfw", "--data", str(data), "--pairs", str(small_pairs), "--model", str(default_onnx),
         "--detector", "yunet", "--json", str(out / "lfw.json"), "--plot", str(out / "roc.png"),
         "--distances", str(out / "pairs.csv")]
    )  # fmt: skip
    assert code == 0
    result = json.loads((out / "lfw.json").read_text())
    (ours,) = result["pipelines"].values()
    assert ours["accuracy"] >= 0.95 and ours["auc"] >= 0.98
    assert len(ours["fold_accuracy"]) == 10 and ours["images_without_face"] == 0
    assert set(ours["ms_per_face"]) == {"decode", "detect", "align", "embed", "total"}
    assert (out / "roc.png").read_bytes()[:4] == b"\x89PNG"
    assert len((out / "pairs.csv").read_text().splitlines()) == 101
    assert "10-fold mean" in capsys.readouterr().out


def test_calibrate_writes_the_threshold_into_the_model(data, default_onnx, tmp_path, capsys):
    model = Path(shutil.copy(default_onnx, tmp_path / "model.onnx"))
    code = cli.main(
        ["calibrate", "--data", str(data), "--set", "celeba", "--max-images", "120", "--model", str(model),
         "--detector", "yunet", "--far", "0.01", "--write"]
    )  # fmt: skip
    assert code == 0
    meta = OnnxEmbedder(model).metadata
    assert 0 < float(meta["threshold"]) < 4 and meta["threshold_far"] == "0.01"
    assert "celeba, 120 images" in meta["threshold_calibrated_on"]
    assert "stored in" in capsys.readouterr().out


def test_errors_exit_with_1_and_a_message(tmp_path, capsys):
    assert cli.main(["eval", "lfw", "--data", str(tmp_path), "--model", str(tmp_path / "none.onnx")]) == 1
    assert "facesdk: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad_usage:
        cli.main(["eval", "lfw", "--detector", "nope"])
    assert bad_usage.value.code == 2


def test_demo_enrols_att_people_and_recognises_them(data, default_onnx, monkeypatch, capsys):
    if not (data / "att").is_dir():
        pytest.skip(f"AT&T not found under {data}")
    monkeypatch.setenv("FACESDK_HOME", str(default_onnx.parent.parent))  # models/ holds the export
    assert cli.main(["demo", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "30 people enrolled; 150 genuine and 100 stranger probes" in out
    row = next(line for line in out.splitlines() if line.strip().startswith("FAR 0.0001"))
    rank1, tar, misid, far = (float(x) for x in row.split()[-4:])
    assert rank1 >= 99 and tar >= 95 and misid == 0 and far <= 5


def test_enroll_match_verify_identify_gallery_commands(data, default_onnx, tmp_path, capsys):
    common = ["--model", str(default_onnx), "--detector", "yunet", "--gallery", str(tmp_path / "g.sqlite")]
    img = lambda name, i: str(data / "lfw" / "images_deepfunneled" / name / f"{name}_{i:04d}.jpg")  # noqa: E731
    if not (data / "lfw").is_dir():
        pytest.skip("LFW not found")
    assert cli.main(["enroll", "Tony_Blair", img("Tony_Blair", 1), img("Tony_Blair", 2), "--largest", *common]) == 0
    assert cli.main(["verify", img("Tony_Blair", 3), img("Tony_Blair", 4), *common, "--far", "0.01"]) == 0
    assert cli.main(["verify", img("Tony_Blair", 3), img("Colin_Powell", 1), *common]) == 3
    assert cli.main(["identify", img("Tony_Blair", 5), *common, "--threshold", "0.19"]) == 0
    capsys.readouterr()
    assert cli.main(["match", img("Tony_Blair", 6), *common, "--threshold", "0.19", "--json"]) == 0
    faces = json.loads(capsys.readouterr().out)
    assert any(f["identity"] == "Tony_Blair" and f["accepted"] for f in faces)
    assert cli.main(["match", img("Tony_Blair", 6), *common, "--threshold", "0.19", "--json", "--gallery-precision", "int8"]) == 0
    assert json.loads(capsys.readouterr().out) == faces  # an int8 gallery decides as float32
    with pytest.raises(SystemExit):  # exporting templates must be asked for by name
        cli.main(["gallery", "export", str(tmp_path / "g.npz"), *common])
    assert cli.main(["gallery", "export", str(tmp_path / "g.npz"), "--embeddings", *common]) == 0
    assert (tmp_path / "g.npz").stat().st_mode & 0o777 == 0o600
    assert cli.main(["gallery", "check", *common]) == 0
    assert cli.main(["gallery", "remove", *common, "Tony_Blair"]) == 0  # options first
    assert cli.main(["gallery", "remove", "Tony_Blair", *common]) == 3
    assert cli.main(["match", img("Gerhard_Schroeder", 1), *common]) == 3  # nobody enrolled now
    assert cli.main(["gallery", "import", str(tmp_path / "g.npz"), *common]) == 0
    capsys.readouterr()
    assert cli.main(["gallery", "list", *common, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["identities"] == [{"identity": "Tony_Blair", "faces": 2}]
    assert listed["operating_point"]["gallery_size"] == 2 and listed["threshold"] == listed["operating_point"]["threshold"]


def test_a_gallery_is_read_only_where_it_exists_and_no_verb_makes_one_by_accident(data, default_onnx, tmp_path, capsys):
    common = ["--model", str(default_onnx), "--gallery", str(tmp_path / "typo.sqlite")]
    face = str(data / "lfw" / "images_deepfunneled" / "Tony_Blair" / "Tony_Blair_0001.jpg")
    for argv in (["match", face], ["identify", face], ["gallery", "list"], ["gallery", "remove", "x"],
                 ["gallery", "check"], ["gallery", "export", "o.npz", "--embeddings"]):  # fmt: skip
        assert cli.main([*argv, *common]) == 1
        assert "no gallery at" in capsys.readouterr().err
    assert cli.main(["verify", face, face, *common]) == 0
    assert not (tmp_path / "typo.sqlite").exists()


def test_match_and_cluster_go_on_past_a_bad_file(data, default_onnx, tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    lfw = data / "lfw" / "images_deepfunneled"
    for i in (1, 2):
        (folder / f"tony{i}.jpg").write_bytes((lfw / "Tony_Blair" / f"Tony_Blair_000{i}.jpg").read_bytes())
    (folder / "broken.jpg").write_bytes((lfw / "Colin_Powell" / "Colin_Powell_0001.jpg").read_bytes()[:5000])
    common = ["--model", str(default_onnx), "--gallery", str(tmp_path / "g.sqlite")]
    assert cli.main(["enroll", "Tony_Blair", str(folder / "tony1.jpg"), "--largest", *common]) == 0
    capsys.readouterr()
    assert cli.main(["match", str(folder), *common, "--json"]) == 1
    captured = capsys.readouterr()
    rows = json.loads(captured.out)
    sources = [r["source"].rsplit("/", 1)[-1] for r in rows]
    assert list(dict.fromkeys(sources)) == ["broken.jpg", "tony1.jpg", "tony2.jpg"]
    assert "truncated" in rows[0]["error"]
    assert any(s == "tony2.jpg" and r["identity"] == "Tony_Blair" for s, r in zip(sources, rows))
    assert "1 of the inputs could not be read" in captured.err
    assert cli.main(["cluster", str(folder), *common, "--json"]) == 1
    result = json.loads(capsys.readouterr().out)
    assert result["clusters"] == [["tony1.jpg", "tony2.jpg"]] and list(result["errors"]) == ["broken.jpg"]


def test_version(capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main(["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.startswith("facesdk ")


def test_pipeline_bench_smoke(data, default_onnx, monkeypatch, tmp_path):
    if not (data / "lfw").is_dir():
        pytest.skip("LFW not found")
    monkeypatch.setenv("FACESDK_HOME", str(default_onnx.parent.parent))
    out = tmp_path / "pipeline.json"
    assert cli.main(["bench", "pipeline", "--repeat", "1", "--gallery-size", "5", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["faces"] for r in result["frames"].values()] == [1, 8]


def test_cluster_command_groups_a_labelled_folder(data, default_onnx, tmp_path, capsys):
    import sdk

    people = ["Tony_Blair", "Colin_Powell", "Serena_Williams"]
    if not (data / "lfw").is_dir():
        pytest.skip("LFW not found")
    for name in people:
        (tmp_path / "faces" / name).mkdir(parents=True)
        for i in range(1, 5):
            src = data / "lfw" / "images_deepfunneled" / name / f"{name}_{i:04d}.jpg"
            (tmp_path / "faces" / name / src.name).write_bytes(src.read_bytes())
    (tmp_path / "faces" / "Tony_Blair" / "blank.png").write_bytes(cv2_blank_png())
    args = ["cluster", str(tmp_path / "faces"), "--model", str(default_onnx), "--gallery", str(tmp_path / "g.sqlite"), "--json"]
    assert cli.main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["identities"] == 3 and result["f1"] >= 0.9 and result["no_face"] == ["Tony_Blair/blank.png"]
    labels = sdk.cluster(np.eye(3, dtype=np.float32).repeat(2, axis=0), threshold=0.5)
    assert labels.tolist() == [0, 0, 1, 1, 2, 2]


def cv2_blank_png() -> bytes:
    import cv2

    return cv2.imencode(".png", np.full((120, 120, 3), 200, np.uint8))[1].tobytes()


def test_match_reads_videos_frame_by_frame(data, default_onnx, tmp_path, capsys):
    import cv2

    if not (data / "lfw").is_dir():
        pytest.skip("LFW not found")
    frames = [cv2.imread(str(data / "lfw" / "images_deepfunneled" / "Tony_Blair" / f"Tony_Blair_{i:04d}.jpg")) for i in range(1, 7)]
    video = tmp_path / "door.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (250, 250))
    assert writer.isOpened(), "OpenCV cannot write MJPG video here"
    for frame in frames:
        writer.write(frame)
    writer.release()
    common = ["--model", str(default_onnx), "--gallery", str(tmp_path / "g.sqlite")]
    assert cli.main(["enroll", "Tony_Blair", str(data / "lfw" / "images_deepfunneled" / "Tony_Blair" / "Tony_Blair_0010.jpg"), "--largest", *common]) == 0
    capsys.readouterr()
    assert cli.main(["match", str(video), "--every", "2", "--json", "--threshold", "0.19", *common]) == 0
    faces = json.loads(capsys.readouterr().out)
    assert sorted({f["source"] for f in faces}) == ["door.avi#0", "door.avi#2", "door.avi#4"]
    assert sum(f["identity"] == "Tony_Blair" for f in faces) >= 2
    # --track: a face that moves a little between frames is one track; each answer fuses more frames.
    shifted = tmp_path / "walk.avi"
    writer = cv2.VideoWriter(str(shifted), cv2.VideoWriter_fourcc(*"MJPG"), 5, (250, 250))
    for dx in range(0, 15, 3):
        writer.write(cv2.warpAffine(frames[0], np.float32([[1, 0, dx], [0, 1, 0]]), (250, 250)))
    writer.release()
    assert cli.main(["match", str(shifted), "--track", "--json", "--threshold", "0.15", *common]) == 0
    blair = [f for f in json.loads(capsys.readouterr().out) if f["identity"] == "Tony_Blair"]
    assert len({f["track"] for f in blair}) == 1 and [f["frames"] for f in blair] == [1, 2, 3, 4, 5]
    assert all(f["decided_at"] == 0 for f in blair)  # accepted from the track's first frame on


def verb_paths(parser=None, prefix=()) -> list[tuple[str, ...]]:
    """Every verb and sub-verb of the parser, as the words that name it."""
    import argparse

    parser = parser or cli.build_parser()
    paths = [prefix] if prefix else []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += verb_paths(sub, (*prefix, name))
    return paths


VERBS = verb_paths()


def test_every_verb_is_registered():
    expected = {
        "enroll", "match", "verify", "identify", "cluster", "gallery list", "gallery remove", "gallery check",
        "gallery export", "gallery import", "demo", "models install", "models list",
        "calibrate", "eval lfw", "eval openset", "eval int8", "eval pfe", "eval clustering", "eval trt-parity",
        "eval yunet-template", "eval dlib-port", "bench", "bench run", "bench kernels", "bench pipeline",
        "export onnx default", "export onnx pfe", "export onnx checkpoint", "export onnx check", "export int8",
        "export trt", "train", "train pfe features", "train pfe train", "train pfe evaluate", "train compare",
        "train crossval", "train bench-mining",
        "serve", "site migrate", "site token create", "site token list", "site token revoke", "site sync", "site enroll",
        "site bench identify", "site bench lag", "site bench scale",
    }  # fmt: skip
    assert expected <= {" ".join(v) for v in VERBS}


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit:
        cli.main([*verb, "--help"])
    assert exit.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: facesdk {' '.join(verb)}")


def test_help_imports_no_heavy_module():
    """`facesdk --help` and the runtime verbs' parsing stay fast and work without torch."""
    import subprocess
    import sys

    code = "import sys; from cli.main import build_parser; build_parser(); print(sorted(m for m in ('torch', 'onnx', 'train', 'export') if m in sys.modules))"  # noqa: E501
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_spelled_out_choices_match_the_library():
    from cli import export, train
    from export import quantize
    from train import bench_mining

    assert set(export.QUANT_METHODS) == set(quantize.METHODS)
    assert train.MINING_METHODS == bench_mining.METHODS


def test_command_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["export", "trt", str(tmp_path / "missing.onnx")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("facesdk: error:") and "missing.onnx" in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "argv",
    [
        ["calibrate", "--reject", "0.1"],
        ["calibrate", "--scoring", "l2", "--no-cache"],
        ["calibrate", "--scoring", "l2", "--cache", "somewhere"],
        ["calibrate", "--scoring", "mls", "--reject", "1.5"],
        ["calibrate", "--far", "0"],
        ["calibrate", "--table", "0.1", "2"],
    ],
)
def test_calibrate_refuses_bad_options_before_any_work(argv, tmp_path, capsys):
    assert cli.main([*argv, "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("facesdk calibrate: error:") and err.count("\n") == 1


def test_calibrate_mls_needs_a_pfe_model(data, default_onnx, capsys):
    if not (data / "celeba_subset").is_dir():
        pytest.skip("CelebA not found")
    assert cli.main(["calibrate", "--scoring", "mls", "--model", str(default_onnx), "--max-images", "20"]) == 2
    assert "not a PFE model" in capsys.readouterr().err


def test_calibrate_mls_option_reaches_the_quality_table(data, pfe_onnx, tmp_path, capsys):
    if not (data / "celeba_subset").is_dir():
        pytest.skip("CelebA not found")
    model = tmp_path / "pfe.onnx"
    shutil.copy(pfe_onnx, model)
    argv = ["calibrate", "--scoring", "mls", "--model", str(model), "--max-images", "60", "--table", "0.1",
            "--far", "0.1", "--reject", "0.05", "--cache", str(tmp_path / "cache"), "--write"]  # fmt: skip
    assert cli.main(argv) == 0
    out = capsys.readouterr().out
    assert "MLS threshold" in out and "quality <" in out and "stored in" in out
    metadata = OnnxEmbedder(model).metadata
    assert json.loads(metadata["quality_reject_table"]).keys() == {"0.05"}
    assert metadata["mls_threshold_far"] == "0.1"


def test_models_install_writes_a_loadable_model_once(tmp_path, monkeypatch, capsys):
    from sdk.dlib_format import dlib_model_path
    from sdk.embed import default_model_path

    try:
        dlib_model_path()
    except FileNotFoundError as e:
        pytest.skip(str(e))

    monkeypatch.setenv("FACESDK_HOME", str(tmp_path / "home"))
    path = default_model_path()
    assert str(path).startswith(str(tmp_path))
    assert cli.main(["models", "install"]) == 0
    out = capsys.readouterr().out
    assert "dlib_face_recognition_resnet_model_v1.dat" in out and f"wrote {path}" in out and "sha256" in out
    assert OnnxEmbedder(path).embed(np.zeros((1, 150, 150, 3), np.uint8)).shape == (1, 128)
    written = path.stat().st_mtime_ns
    assert cli.main(["models", "install"]) == 0
    assert "exists" in capsys.readouterr().out and path.stat().st_mtime_ns == written
    other = tmp_path / "other.onnx"
    assert cli.main(["models", "install", "-o", str(other)]) == 0 and other.is_file()
    assert cli.main(["models", "list"]) == 0
    assert f"present  {path}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        ["eval", "lfw", "--data", "{tmp}"],
        ["eval", "openset", "--data", "{tmp}"],
        ["eval", "clustering", "--data", "{tmp}"],
        ["eval", "pfe", "lfw", "--data", "{tmp}"],
        ["eval", "int8", "{tmp}/a.onnx", "{tmp}/b.onnx"],
        ["calibrate", "--data", "{tmp}"],
        ["demo", "--data", "{tmp}"],
        ["cluster", "{tmp}/nothing"],
        ["verify", "{tmp}/a.jpg", "{tmp}/b.jpg", "--model", "{tmp}/none.onnx"],
        ["export", "int8", "{tmp}/none.onnx", "-o", "{tmp}/q.onnx"],
        ["export", "onnx", "checkpoint", "{tmp}/none.pt", "-o", "{tmp}/m.onnx"],
        ["train", "compare", "{tmp}/none.pt"],
    ],
    ids=lambda argv: " ".join(w for w in argv[:2] if not w.startswith(("-", "{"))),
)
def test_a_missing_file_is_one_line_not_a_traceback(argv, tmp_path, capsys):
    assert cli.main([w.replace("{tmp}", str(tmp_path)) for w in argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("facesdk: error:") and err.count("\n") == 1 and str(tmp_path) in err


def test_export_help_lists_every_format(capsys):
    with pytest.raises(SystemExit):
        cli.main(["export", "-h"])
    out = capsys.readouterr().out
    assert all(word in out for word in ("onnx", "int8", "trt"))


def test_a_closed_pipe_ends_quietly(data, default_onnx, tmp_path):
    import subprocess
    import sys

    folder = data / "att"
    if not folder.is_dir():
        pytest.skip(f"AT&T not found under {data}")
    env = {**os.environ, "FACESDK_HOME": str(default_onnx.parent.parent), "PYTHONPATH": str(REPO)}
    assert cli.main(["enroll", "s1", str(folder / "s1" / "1.pgm"), "--gallery", str(tmp_path / "g.sqlite"),
                     "--model", str(default_onnx)]) == 0  # fmt: skip
    # 400 faces of JSON: far more than a pipe holds, so the writer meets the closed end.
    run = subprocess.Popen([sys.executable, "-m", "cli", "match", "--json", str(folder), "--model", str(default_onnx),
                            "--gallery", str(tmp_path / "g.sqlite")],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=tmp_path)  # fmt: skip
    run.stdout.read(10)
    run.stdout.close()
    err = run.stderr.read().decode()
    assert run.wait(timeout=300) == 141
    assert "Traceback" not in err and "error" not in err
