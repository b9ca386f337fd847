"""Fit ``sdk.detect.YUNET_TO_DLIB_BOX``: the map from a YuNet face (box and landmarks) to the box
dlib's 5-point predictor was trained with (dlib's HOG detector's rectangle).

Training faces only: LFW people of ``peopleDevTrain.txt``, without any image that ``pairs.txt``
uses (the test pairs stay unseen). For every image where YuNet's and dlib's HOG detector find the
same central face (IoU >= 0.5), the HOG rectangle's centre offset and side, over YuNet's mean box
side, are regressed (least squares) on YuNet's landmarks in its box frame
(``sdk.detect.yunet_box_features``). Two thirds of the faces fit the map; on the other third it
reports how far the predictor's landmarks from the mapped box lie from dlib's own (HOG box +
dlib-bin's predictor, integer points), beside a constant map and YuNet's raw and squared boxes.

    facesdk eval landmark-box
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from evaluate.lfw import read_pairs
from sdk.chips import central_face


def training_images(lfw: Path) -> list[Path]:
    """Images of peopleDevTrain.txt people that pairs.txt does not use."""
    images = lfw / "images_deepfunneled"
    used = set(read_pairs(lfw / "pairs.txt", images).images())
    people = [line.split()[0] for line in (lfw / "peopleDevTrain.txt").read_text().splitlines()[1:] if line.strip()]
    return [p for person in people for p in sorted((images / person).glob("*.jpg")) if p not in used]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def box_frame(yunet_box: np.ndarray, box: np.ndarray) -> np.ndarray:
    """`box` as (dx, dy, side) in units of YuNet's mean side, from YuNet's box centre: [n, 3]."""
    c = (yunet_box[:, :2] + yunet_box[:, 2:]) / 2
    s = (yunet_box[:, 2:] - yunet_box[:, :2]).mean(1, keepdims=True)
    return np.concatenate([((box[:, :2] + box[:, 2:]) / 2 - c) / s, (box[:, 2:] - box[:, :2]).mean(1, keepdims=True) / s], 1)


def collect(paths: list[Path]) -> list[tuple]:
    """(image path, YuNet detection, HOG detection) of the faces both detectors agree on."""
    import cv2

    from sdk.detect import DlibHogDetector, YuNetDetector

    yunet, hog = YuNetDetector(), DlibHogDetector()
    found = []
    for path in paths:
        image = cv2.imread(str(path))
        y = central_face(yunet.detect(image), image.shape)
        h = central_face(hog.detect(image), image.shape)
        if y is not None and h is not None and iou(y.box, h.box) >= 0.5:
            found.append((path, y, h))
    return found


def fit_box_map(data: Path) -> list[str]:
    """Fit the map on two thirds of the training faces; the report, held-out errors included."""
    import cv2

    from sdk.detect import yunet_box_features
    from sdk.landmarks import ShapePredictor

    lines = []
    paths = training_images(data / "lfw")
    faces = collect(paths)
    yunet = np.array([y.box for _, y, _ in faces], np.float64)
    target = box_frame(yunet, np.array([h.box for _, _, h in faces], np.float64))
    features = np.array([yunet_box_features(y.box, y.landmarks) for _, y, _ in faces])
    order = np.random.default_rng(0).permutation(len(faces))
    fit, held_out = order[: len(faces) * 2 // 3], order[len(faces) * 2 // 3 :]
    weights = np.linalg.lstsq(features[fit], target[fit], rcond=None)[0]
    lines.append(f"{len(faces)} faces of {len(paths)} training images; {len(fit)} fit the map")
    lines.append("YUNET_TO_DLIB_BOX (dx, dy, side per row):")
    lines.append(np.array2string(weights, precision=4, suppress_small=False, separator=", "))

    def square(box: np.ndarray, frame: np.ndarray) -> np.ndarray:
        side = (box[2:] - box[:2]).mean()
        centre = (box[:2] + box[2:]) / 2 + frame[:2] * side
        return np.concatenate([centre - frame[2] * side / 2, centre + frame[2] * side / 2])

    predictor = ShapePredictor()
    boxes = {
        "YuNet box": lambda i: yunet[i],
        "YuNet box squared (same centre, mean side)": lambda i: square(yunet[i], np.array([0, 0, 1.0])),
        "constant map (mean offset and side)": lambda i: square(yunet[i], target[fit].mean(0)),
        "landmark map (YUNET_TO_DLIB_BOX)": lambda i: square(yunet[i], features[i] @ weights),
        "dlib's HOG box": lambda i: np.asarray(faces[i][2].box, np.float64),
    }
    errors = {name: [] for name in boxes}
    for i in held_out:
        image = cv2.imread(str(faces[i][0]))
        reference = np.asarray(faces[i][2].landmarks, np.float64)
        for name, box in boxes.items():
            errors[name].append(np.linalg.norm(predictor.predict(image, box(i)) - reference, axis=1).mean())
    lines.append(f"held-out faces ({len(held_out)}): mean distance to dlib-bin's integer landmarks (px)")
    for name, e in errors.items():
        lines.append(f"  {name:45s} mean {np.mean(e):.3f}  p95 {np.percentile(e, 95):.3f}")
    return lines
