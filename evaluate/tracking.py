"""Measurements behind the video tracker's defaults (README, "Following faces in video").

``facesdk eval tracking gate [--model M] [--people N]``
    Squared L2 between two photos of one person vs two people, on LFW DevTrain people (never used
    by the tracking tests' assertions): the appearance gate must pass most same-person pairs
    (two photos differ more than two consecutive video frames) and almost no different-person pair.

``facesdk eval tracking strangers [--model M]``
    The issue's held-out check: ten enrolled LFW DevTest people, each followed at the same spot in
    one stream by a stranger; counts the stranger frames accepted.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


CANVAS = (480, 640)  # rows, cols


def lfw_path(data: Path, name: str, number: int) -> Path:
    return data / "lfw" / "images_deepfunneled" / name / f"{name}_{number:04d}.jpg"


def people(data: Path, listing: str, least: int) -> list[tuple[str, int]]:
    """(name, image count) of the listing's people with at least ``least`` images, in file order."""
    rows = (line.split("\t") for line in (data / "lfw" / listing).read_text().splitlines()[1:])
    return [(r[0], int(r[1])) for r in rows if len(r) == 2 and int(r[1]) >= least]


def frame(crop: np.ndarray | None, x: int, y: int, dx: int = 0) -> np.ndarray:
    """A gray 640x480 frame with ``crop`` (a 250x250 LFW image) at (x + dx, y); blank if None."""
    canvas = np.full((*CANVAS, 3), 128, np.uint8)
    if crop is not None:
        h, w = crop.shape[:2]
        canvas[y : y + h, x + dx : x + dx + w] = crop
    return canvas


def measure_gate(verifier, data: Path, n_people: int = 150, per_person: int = 4) -> dict[str, float]:
    """Distances between photos of one person and of two people (DevTrain people)."""
    vecs, labels = [], []
    for label, (name, count) in enumerate(people(data, "peopleDevTrain.txt", 2)[:n_people]):
        for i in range(1, min(count, per_person) + 1):
            try:
                vecs.append(verifier.embed_largest(lfw_path(data, name, i)))
                labels.append(label)
            except Exception:  # noqa: BLE001 - a photo without a detected face is skipped
                pass
    e, lab = np.stack(vecs).astype(np.float64), np.array(labels)
    d = ((e[:, None] - e[None]) ** 2).sum(-1)
    upper = np.triu(np.ones_like(d, bool), 1)
    same, diff = d[upper & (lab[:, None] == lab[None])], d[upper & (lab[:, None] != lab[None])]
    out = {"faces": len(e), "same_pairs": len(same), "diff_pairs": len(diff)}
    for q in (0.5, 0.9, 0.95, 0.99):
        out[f"same_p{int(q * 100)}"] = float(np.quantile(same, q))
    for far in (1e-3, 1e-4):
        out[f"diff_far{far:g}"] = float(np.quantile(diff, far))
    out["diff_min"] = float(diff.min())
    for gate in (0.10, 0.12, 0.14, 0.16):
        out[f"gate{gate:.2f}_same_pass"] = float((same <= gate).mean())
        out[f"gate{gate:.2f}_diff_pass"] = float((diff <= gate).mean())
    return out


def held_out_pairs(data: Path, n: int = 10) -> list[tuple[str, str]]:
    """(enrolled, stranger) pairs of DevTest people with at least 15 images."""
    names = [name for name, _ in people(data, "peopleDevTest.txt", 15)]
    return list(zip(names[:n], names[n : 2 * n]))


def stranger_frames_accepted(verifier, data: Path, stream_args: dict | None = None, frames_each: int = 10) -> dict[str, int]:
    """Enrol ten people (photos 1-3 each); per person, one stream: ``frames_each`` frames of the
    person (photos 4...) then ``frames_each`` of a stranger at the same spot. Counts the stranger
    frames with a face, those accepted as the person who came before (identity carried over),
    as anyone, and as anyone by still-image matching (``Verifier.match``, no tracking)."""
    pairs = held_out_pairs(data)
    for person, _ in pairs:
        if person not in verifier.identities():
            verifier.enroll(person, [lfw_path(data, person, i) for i in (1, 2, 3)], largest=True, force=True)
    out = {"stranger_frames": 0, "accepted_as_previous": 0, "accepted_as_anyone": 0, "still_image_accepted": 0}
    for person, stranger in pairs:
        stream = verifier.stream(**(stream_args or {}))
        for i in range(frames_each):
            stream.match(frame(cv2.imread(str(lfw_path(data, person, 4 + i))), 200, 100, i % 3))
        for i in range(frames_each):
            image = frame(cv2.imread(str(lfw_path(data, stranger, 1 + i))), 200, 100, i % 3)
            faces = stream.match(image)
            out["stranger_frames"] += bool(faces)
            out["accepted_as_previous"] += any(m.accepted and m.identity == person for m in faces)
            out["accepted_as_anyone"] += any(m.accepted for m in faces)
            out["still_image_accepted"] += any(m.accepted for m in verifier.match(image))
    return out
