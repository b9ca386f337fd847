"""Clean enrolment on real faces: one face per image (or the caller picks it), no face under two
names, the same image not stored twice, a template that agrees with itself, clean names, folders."""

from __future__ import annotations

import json
import shutil
import unicodedata
from pathlib import Path

import cv2
import numpy as np
import pytest

import cli.main as cli
from sdk.errors import AmbiguousFaceError, DuplicateFaceError, InconsistentFaceError, InvalidArgumentError
from sdk.gallery import MAX_NAME_LENGTH, Gallery
from sdk.verifier import Verifier

THRESHOLD = 0.19


def lfw(data: Path, name: str, number: int) -> Path:
    path = data / "lfw" / "images_deepfunneled" / name / f"{name}_{number:04d}.jpg"
    if not path.is_file():
        pytest.skip(f"LFW not found under {data}")
    return path


@pytest.fixture()
def v(default_onnx, data):
    lfw(data, "Tony_Blair", 2)
    with Verifier(default_onnx, detector="yunet", gallery=None, threshold=THRESHOLD) as verifier:
        yield verifier


def group_photo(data: Path) -> tuple[np.ndarray, list[float]]:
    """Colin Powell small on the left, Donald Rumsfeld larger on the right (one face each in
    LFW), and a box around Powell's half."""
    left = cv2.resize(cv2.imread(str(lfw(data, "Colin_Powell", 2))), (160, 160))
    left = cv2.copyMakeBorder(left, 45, 45, 0, 0, cv2.BORDER_CONSTANT)
    right = cv2.imread(str(lfw(data, "Donald_Rumsfeld", 2)))
    return np.hstack([left, right]), [40.0, 80.0, 120.0, 170.0]


def best(v: Verifier, image: Path) -> str:
    return v.identify(image, k=1)[0][0]


def test_a_group_photo_is_refused_unless_a_face_is_chosen(v, data):
    group, powell_box = group_photo(data)
    assert len(v.faces(group)[1]) == 2
    with pytest.raises(AmbiguousFaceError, match="holds 2 faces.*largest=True"):
        v.enroll("Colin_Powell", group)
    assert v.identities() == []
    assert v.enroll("Colin_Powell", group, face=powell_box) == 1
    assert v.verify(lfw(data, "Colin_Powell", 3), lfw(data, "Colin_Powell", 4)).same  # the probes are sound
    assert best(v, lfw(data, "Colin_Powell", 3)) == "Colin_Powell"
    assert v.remove("Colin_Powell")
    # largest=True: Rumsfeld, the larger face, is the one enrolled.
    assert v.enroll("Donald_Rumsfeld", group, largest=True) == 1
    probe = max(v.match(lfw(data, "Donald_Rumsfeld", 3)), key=lambda m: m.box[2] - m.box[0])
    assert probe.accepted and probe.identity == "Donald_Rumsfeld"
    assert not any(m.accepted for m in v.match(lfw(data, "Colin_Powell", 3)))
    # An index into v.faces(image)[1] picks a face too.
    index = next(i for i, d in enumerate(v.faces(group)[1]) if d.box[0] < 160)
    v.remove("Donald_Rumsfeld")
    assert v.enroll("Colin_Powell", group, face=index) == 1 and best(v, lfw(data, "Colin_Powell", 3)) == "Colin_Powell"
    for bad in ({"face": 0, "largest": True}, {"face": [1, 2, 3]}, {"face": 7}):
        with pytest.raises(InvalidArgumentError):
            v.enroll("x", group, **bad)


def test_a_face_enrolled_under_another_name_is_refused_naming_it(v, data):
    assert v.enroll("Tony_Blair", [lfw(data, "Tony_Blair", 2)]) == 1
    again = cv2.imread(str(lfw(data, "Tony_Blair", 2)))[:, ::-1].copy()  # the same photo, mirrored
    with pytest.raises(DuplicateFaceError, match="already enrolled as 'Tony_Blair'") as caught:
        v.enroll("Gerhard_Schroeder", [again])
    assert caught.value.other == "Tony_Blair" and v.identities() == ["Tony_Blair"]
    assert v.enroll("Gerhard_Schroeder", [again], force=True) == 1


def test_the_same_image_twice_is_skipped(v, data):
    tony = lfw(data, "Tony_Blair", 2)
    assert v.enroll("Tony_Blair", [tony]) == 1
    assert v.enroll("Tony_Blair", [tony]) == 0 and v.gallery.count("Tony_Blair") == 1
    results = v.enroll_each("Tony_Blair", [lfw(data, "Tony_Blair", 3), lfw(data, "Tony_Blair", 3), tony])
    assert [r.status for r in results] == ["added", "skipped", "skipped"]
    assert v.gallery.count("Tony_Blair") == 2


def test_a_face_unlike_the_template_is_refused_with_the_reason(v, data):
    assert v.enroll("Tony_Blair", [lfw(data, "Tony_Blair", i) for i in (2, 3)]) == 2
    stranger = lfw(data, "Gerhard_Schroeder", 2)
    with pytest.raises(InconsistentFaceError, match="does not agree with the other faces of 'Tony_Blair'"):
        v.enroll("Tony_Blair", [lfw(data, "Tony_Blair", 4), stranger])
    assert v.gallery.count("Tony_Blair") == 2  # all or nothing
    results = v.enroll_each("Tony_Blair", [lfw(data, "Tony_Blair", 4), stranger])
    assert [r.status for r in results] == ["added", "refused"] and "likely someone else" in results[1].reason
    assert v.enroll("Tony_Blair", [stranger], force=True) == 1 and v.gallery.count("Tony_Blair") == 4
    # Two images of different people given at once, nobody enrolled: neither agrees.
    with pytest.raises(InconsistentFaceError, match="2 of 2 images refused"):
        v.enroll("Colin_Powell", [lfw(data, "Colin_Powell", 2), lfw(data, "Donald_Rumsfeld", 4)])


def test_identity_names_are_validated_and_normalised(v, data):
    for bad, why in (("  Tony_Blair  ", "surrounding whitespace"), ("Tony\nBlair", "unprintable"),
                     ("x" * (MAX_NAME_LENGTH + 1), "at most")):  # fmt: skip
        with pytest.raises(InvalidArgumentError, match=why):
            v.enroll(bad, [lfw(data, "Tony_Blair", 2)])
    composed, decomposed = "Jos\u00e9", unicodedata.normalize("NFD", "Jos\u00e9")
    assert composed != decomposed
    with Gallery(None, model_name="m", model_version="1", dim=2) as g:
        g.add(composed, [[1.0, 0.0]])
        g.add(decomposed, [[0.0, 1.0]])
        assert g.identities() == [composed] and g.count(decomposed) == 2
        assert g.remove(decomposed) and len(g) == 0


def test_cli_enrols_a_folder_and_reports_each_file(v, data, default_onnx, tmp_path, capsys):
    folder = tmp_path / "tony"
    folder.mkdir()
    for i in (2, 3):
        shutil.copy(lfw(data, "Tony_Blair", i), folder / f"a{i}.jpg")
    shutil.copy(lfw(data, "Gerhard_Schroeder", 2), folder / "b_stranger.jpg")
    cv2.imwrite(str(folder / "c_group.png"), group_photo(data)[0])
    (folder / "notes.txt").write_text("not an image")
    common = ["--model", str(default_onnx), "--detector", "yunet", "--gallery", str(tmp_path / "g.sqlite")]
    assert cli.main(["enroll", "Tony_Blair", str(folder), *common]) == 1
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[:4]] == ["added", "added", "refused", "refused"]
    assert "does not agree" in out[2] and "holds 2 faces" in out[3] and "--largest" in out[3]
    assert out[4] == "'Tony_Blair': 2 added, 0 skipped, 2 refused (2 in the gallery)"
    # Again with the stranger gone: the two stored images are skipped, the group photo's
    # largest face (Rumsfeld) is still refused as unlike Tony Blair; then forced.
    (folder / "b_stranger.jpg").unlink()
    assert cli.main(["enroll", "Tony_Blair", str(folder), "--largest", "--json", *common]) == 1
    report = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in report["images"]] == ["skipped", "skipped", "refused"] and report["total"] == 2
    assert cli.main(["enroll", "Tony_Blair", str(folder / "c_group.png"), "--largest", "--force", *common]) == 0
    assert cli.main(["enroll", "Tony_Blair", str(tmp_path / "missing.jpg"), *common]) == 1
    assert "refused" in capsys.readouterr().out
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main(["enroll", "Tony_Blair", str(empty), *common]) == 1  # an error: no images
