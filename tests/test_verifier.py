"""sdk.Verifier on real faces: enrol, match, verify, identify, bad input, hooks, threads."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pytest

from sdk.errors import BackendUnavailableError, FaceSDKError, InvalidImageError
from sdk.verifier import NoFaceError, Verifier

PEOPLE = ["Colin_Powell", "Tony_Blair", "Donald_Rumsfeld"]
STRANGER = "Gerhard_Schroeder"
THRESHOLD = 0.19  # squared L2 on the default model's unit embeddings (facesdk calibrate measures it)


def lfw_image(data: Path, name: str, number: int) -> Path:
    path = data / "lfw" / "images_deepfunneled" / name / f"{name}_{number:04d}.jpg"
    if not path.is_file():
        pytest.skip(f"LFW not found under {data}")
    return path


def main_face(matches):
    """The largest face: LFW images sometimes show someone else behind the subject."""
    return max(matches, key=lambda m: (m.box[2] - m.box[0]) * (m.box[3] - m.box[1]))


@pytest.fixture()
def verifier(default_onnx, data, tmp_path):
    lfw_image(data, PEOPLE[0], 1)
    with Verifier(default_onnx, detector="yunet", gallery=tmp_path / "gallery.sqlite", threshold=THRESHOLD) as v:
        yield v


@pytest.fixture()
def enrolled(verifier, data):
    for name in PEOPLE:
        assert verifier.enroll(name, [lfw_image(data, name, i) for i in (1, 2, 3)], largest=True) == 3
    return verifier


def test_match_recognises_enrolled_people_and_not_strangers(enrolled, data):
    for name in PEOPLE:
        m = main_face(enrolled.match(lfw_image(data, name, 10)))
        assert m.accepted and m.identity == name and m.distance <= THRESHOLD and m.live
        assert m.box.shape == (4,) and m.landmarks.shape == (5, 2) and 0 < m.score <= 1
    m = main_face(enrolled.match(lfw_image(data, STRANGER, 1)))
    assert not m.accepted and m.identity is None and m.distance > THRESHOLD
    assert enrolled.identities() == sorted(PEOPLE)


def test_a_frame_of_several_faces_gives_all_of_them(enrolled, data):
    tiles = [cv2.imread(str(lfw_image(data, n, 12))) for n in PEOPLE] + [cv2.imread(str(lfw_image(data, STRANGER, 2)))]
    frame = np.concatenate(tiles, axis=1)
    found = enrolled.match(frame)
    # The main face of each 250-px tile, left to right.
    tiles_found = [main_face([m for m in found if t * 250 <= (m.box[0] + m.box[2]) / 2 < (t + 1) * 250]) for t in range(4)]
    assert [m.identity for m in tiles_found] == [*PEOPLE, None]


def test_verify_and_identify(enrolled, data):
    same = enrolled.verify(lfw_image(data, "Tony_Blair", 20), lfw_image(data, "Tony_Blair", 21))
    assert same.same and same.threshold == THRESHOLD
    assert not enrolled.verify(lfw_image(data, "Tony_Blair", 20), lfw_image(data, STRANGER, 3)).same
    ranked = enrolled.identify(lfw_image(data, "Donald_Rumsfeld", 15), k=5)
    assert [n for n, _ in ranked][0] == "Donald_Rumsfeld" and len(ranked) == 3
    assert [d for _, d in ranked] == sorted(d for _, d in ranked)


def test_per_call_threshold_and_remove(enrolled, data):
    probe = lfw_image(data, "Colin_Powell", 11)
    assert not main_face(enrolled.match(probe, threshold=0.0)).accepted
    assert enrolled.remove("Colin_Powell") and not enrolled.remove("Colin_Powell")
    assert main_face(enrolled.match(probe)).identity != "Colin_Powell"


def test_no_face_gives_an_empty_list_or_a_clear_error(verifier, data):
    blank = np.full((240, 320, 3), 127, np.uint8)
    assert verifier.match(blank) == []
    with pytest.raises(NoFaceError, match="no face"):
        verifier.verify(blank, lfw_image(data, STRANGER, 1))
    with pytest.raises(NoFaceError):
        verifier.enroll("nobody", [lfw_image(data, STRANGER, 1), blank], largest=True)
    assert verifier.identities() == []  # the batch with a bad image left nothing behind


BAD_IMAGES = {
    "None": lambda tmp: None,
    "empty array": lambda tmp: np.zeros((0, 0, 3), np.uint8),
    "float image": lambda tmp: np.zeros((64, 64, 3), np.float32),
    "two channels": lambda tmp: np.zeros((64, 64, 2), np.uint8),
    "a list": lambda tmp: [[1, 2, 3]],
    "huge frame": lambda tmp: np.broadcast_to(np.uint8(0), (10_000, 10_000, 3)),
    "missing file": lambda tmp: tmp / "missing.jpg",
    "text file": lambda tmp: _write(tmp / "notes.jpg", b"not an image at all"),
    "truncated jpeg": lambda tmp: _write(tmp / "cut.jpg", cv2.imencode(".jpg", np.full((200, 200, 3), 90, np.uint8))[1].tobytes()[:300]),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("kind", BAD_IMAGES)
def test_bad_images_raise_the_sdk_error_and_harm_nothing(enrolled, data, tmp_path, kind):
    bad = BAD_IMAGES[kind](tmp_path)
    before = len(enrolled.gallery)
    for call in (enrolled.match, lambda x: enrolled.enroll("x", [x]), lambda x: enrolled.verify(x, x)):
        with pytest.raises(InvalidImageError):
            call(bad)
    assert len(enrolled.gallery) == before
    assert main_face(enrolled.match(lfw_image(data, "Tony_Blair", 10))).identity == "Tony_Blair"  # still works


def test_grayscale_and_bgra_frames_work(enrolled, data):
    bgr = cv2.imread(str(lfw_image(data, "Tony_Blair", 10)))
    assert main_face(enrolled.match(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))).identity == "Tony_Blair"
    assert main_face(enrolled.match(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))).identity == "Tony_Blair"


def test_liveness_hook_vetoes_faces(default_onnx, data, tmp_path):
    calls = []

    def spoof(frame, detection):
        calls.append(detection)
        return False

    with Verifier(default_onnx, detector="yunet", gallery=None, threshold=THRESHOLD, liveness=spoof) as v:
        v.enroll("Tony_Blair", [lfw_image(data, "Tony_Blair", 1)], largest=True)  # enrolment is not gated
        found = v.match(lfw_image(data, "Tony_Blair", 2))
    m = main_face(found)
    assert len(calls) == len(found) and not m.live and not m.accepted and m.identity is None


def test_unavailable_backends_fail_loudly(default_onnx, tmp_path):
    with pytest.raises(BackendUnavailableError, match="CUDAExecutionProvider"):
        Verifier(default_onnx, providers=["CUDAExecutionProvider"], gallery=None, threshold=THRESHOLD)
    with pytest.raises(BackendUnavailableError, match="facesdk export trt"):
        Verifier(default_onnx, backend="tensorrt", gallery=None, threshold=THRESHOLD)
    with pytest.raises(BackendUnavailableError, match="unknown"):
        Verifier(default_onnx, backend="openvino", gallery=None, threshold=THRESHOLD)
    with Verifier(default_onnx, detector="yunet", gallery=None, threshold=THRESHOLD) as v:
        assert v.info()["providers"] == ["CPUExecutionProvider"] and v.info()["backend"] == "onnxruntime"


def test_threshold_comes_from_the_model_or_says_how_to_get_one(default_onnx, tmp_path):
    from sdk.embed import set_metadata

    model = tmp_path / "model.onnx"
    model.write_bytes(default_onnx.read_bytes())
    no_fpir = {key: None for key in ("fpir_threshold_table", "fpir_fnir_table", "fpir_track_threshold_table", "fpir_track_fnir_table")}
    set_metadata(model, threshold=None, threshold_table=None, **no_fpir)
    with pytest.raises(FaceSDKError, match="facesdk calibrate"):
        Verifier(model, detector="yunet", gallery=None)
    set_metadata(model, threshold="0.2", threshold_table='{"0.001": 0.2, "0.0001": 0.15}')
    with Verifier(model, detector="yunet", gallery=None) as v:
        assert v.threshold == 0.2 and v.threshold_for(1e-4) == 0.15
        with pytest.raises(FaceSDKError, match="no threshold calibrated for FAR 0.01"):
            v.threshold_for(1e-2)
    with Verifier(model, detector="yunet", gallery=None, far=1e-4) as v:
        assert v.threshold == 0.15


def test_matching_threads_agree_with_a_serial_run_while_enrolling(enrolled, data):
    probes = [lfw_image(data, n, i) for n in PEOPLE for i in (10, 11)] + [lfw_image(data, STRANGER, 1)]
    def answers(probe):  # accepted faces in full; the others only as "not recognised"
        return [(m.identity, m.distance if m.accepted else None) for m in enrolled.match(probe)]

    serial = [answers(p) for p in probes]
    stop = threading.Event()

    def enrol_others():
        i = 1
        while not stop.is_set() and i < 6:
            enrolled.enroll(f"other_{i}", [lfw_image(data, "George_W_Bush", i)], largest=True, force=True)
            i += 1

    writer = threading.Thread(target=enrol_others)
    writer.start()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            for _ in range(2):
                got = list(pool.map(answers, probes))
                # The new identities (George W. Bush) are none of these people: answers stay.
                assert got == serial
    finally:
        stop.set()
        writer.join()


def test_pfe_options_need_a_pfe_model(default_onnx):
    with pytest.raises(FaceSDKError, match="scoring='mls' needs a PFE model"):
        Verifier(default_onnx, detector="yunet", gallery=None, threshold=THRESHOLD, scoring="mls")
    with pytest.raises(FaceSDKError, match="min_quality needs a PFE model"):
        Verifier(default_onnx, detector="yunet", gallery=None, threshold=THRESHOLD, min_quality=1.0)
    with pytest.raises(ValueError, match="scoring must be one of"):
        Verifier(default_onnx, detector="yunet", gallery=None, threshold=THRESHOLD, scoring="cosine")
    with Verifier(default_onnx, detector="yunet", gallery=None, threshold=THRESHOLD) as v:
        assert v.scoring == "l2" and not v.has_uncertainty and v.info()["scoring"] == "l2"


def test_match_says_why_a_face_is_not_accepted(enrolled, data):
    m = main_face(enrolled.match(lfw_image(data, "Tony_Blair", 10)))
    assert m.reason is None and m.quality is None and m.mls is None and m.track_id is None
    stranger = main_face(enrolled.match(lfw_image(data, STRANGER, 1)))
    assert stranger.reason == "no_match"
    v = enrolled.verify(lfw_image(data, "Tony_Blair", 20), lfw_image(data, "Tony_Blair", 21))
    assert v.scoring == "l2" and v.mls is None and v.reason is None


def test_a_stream_follows_a_face_across_frames(enrolled, data):
    """Without uncertainty the stream averages a track's frames (the window's mean embedding)."""
    stream = enrolled.stream(window=3)
    base = cv2.imread(str(lfw_image(data, "Colin_Powell", 10)))
    frames = [np.roll(base, shift, axis=1) for shift in (0, 3, 6, 9)]
    answers = [main_face(stream.match(f)) for f in frames]
    assert len({m.track_id for m in answers}) == 1
    assert [m.frames for m in answers] == [1, 2, 3, 3]
    assert all(m.identity == "Colin_Powell" and m.accepted for m in answers)
    # The fused answer is the nearest identity of the window's mean embedding.
    mean = np.mean([enrolled.embed_largest(f) for f in frames[1:]], axis=0)
    mean /= np.linalg.norm(mean)
    names, dist = enrolled.gallery.search(mean[None])
    assert answers[-1].distance == pytest.approx(float(dist[0, 0]), abs=1e-5)
    stream.reset()
    assert main_face(stream.match(frames[0])).frames == 1


def test_a_replaced_network_is_refused_and_a_pinned_file_checked(default_onnx, data, tmp_path):
    import hashlib

    import onnx

    from sdk.embed import set_metadata
    from sdk.errors import InvalidModelError, ModelMismatchError

    gallery = tmp_path / "g.sqlite"
    with Verifier(default_onnx, gallery=gallery) as v:
        v.enroll("tony", [lfw_image(data, "Tony_Blair", 1)], largest=True)
    recalibrated = tmp_path / "recalibrated.onnx"
    recalibrated.write_bytes(default_onnx.read_bytes())
    set_metadata(recalibrated, threshold_calibrated_on="somewhere else")  # the same network
    with Verifier(recalibrated, gallery=gallery) as v:
        assert v.identities() == ["tony"]
    swapped = onnx.load(str(default_onnx))  # same name and version, one weight changed
    weight = next(t for t in swapped.graph.initializer if t.dims and t.data_type == onnx.TensorProto.FLOAT)
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 0.5
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    onnx.save(swapped, tmp_path / "swapped.onnx")
    with pytest.raises(ModelMismatchError, match="another fp32 network"):
        Verifier(tmp_path / "swapped.onnx", gallery=gallery)
    digest = hashlib.sha256(default_onnx.read_bytes()).hexdigest()
    Verifier(default_onnx, gallery=None, model_sha256=digest.upper()).close()
    with pytest.raises(InvalidModelError, match="is not the pinned"):
        Verifier(recalibrated, gallery=None, model_sha256=digest)
