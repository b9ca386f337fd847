"""Where YuNet's 5 points sit in dlib's chip: the measurement behind ``sdk.align.YUNET5_TEMPLATE``.

    facesdk eval yunet-template --people 1000
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from numpy.typing import NDArray

from sdk.align import _align, align, image_to_chip


def measure_yunet_template(
    count: int, lfw: Path, yunet_model: Path
) -> tuple[NDArray[np.float64], NDArray[np.float64], float, int]:
    """Measure where YuNet's 5 points sit in dlib's chip, on LFW (dlib + OpenCV needed).

    Uses the first image of each of the first ``count`` people of ``peopleDevTrain.txt`` (no
    test-fold identities). Returns the mean template (unit face square, YuNet's order), its
    per-coordinate standard deviation in pixels of a 150-pixel chip, the mean absolute pixel
    difference between the "yunet5" chip (new template) and the "dlib5" chip, and the number
    of faces both detectors found.
    """
    import dlib  # measurement only: dlib's detector and landmarks are the reference

    from sdk.dlib_format import dlib_model_path

    size, padding = 150, 0.25
    detector = dlib.get_frontal_face_detector()
    predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
    yunet = cv2.FaceDetectorYN.create(str(yunet_model), "", (320, 320))
    people = (lfw / "peopleDevTrain.txt").read_text().split("\n")[1 : count + 1]
    faces = []  # (image, dlib landmarks, YuNet landmarks)
    for line in people:
        name = line.split("\t")[0]
        bgr = cv2.imread(str(lfw / "images_deepfunneled" / name / f"{name}_0001.jpg"))
        rects = detector(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), 1)
        yunet.setInputSize((bgr.shape[1], bgr.shape[0]))
        found = yunet.detect(bgr)[1]
        if not rects or found is None:
            continue
        rect = max(rects, key=lambda r: r.area())
        box = np.array([rect.left(), rect.top(), rect.right() + 1, rect.bottom() + 1], float)
        best = max(found, key=lambda f: _iou(box, np.r_[f[:2], f[:2] + f[2:4]]))
        if _iou(box, np.r_[best[:2], best[:2] + best[2:4]]) < 0.3:
            continue  # the two detectors found different faces
        shape = predictor(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), rect)
        dlib5 = np.array([[shape.part(i).x, shape.part(i).y] for i in range(5)], float)
        faces.append((bgr, dlib5, best[4:14].reshape(5, 2).astype(np.float64)))
    if not faces:
        raise RuntimeError("no face found by both detectors")
    chip_points = np.array(
        [_apply(image_to_chip(d, "dlib5", size, padding), y) for _, d, y in faces]
    )
    template = (chip_points / size * (1 + 2 * padding) - padding).mean(axis=0)
    spread = chip_points.std(axis=0)
    diff = np.mean(
        [
            np.abs(
                _align(bgr, y, template, size, padding).astype(np.int16)
                - align(bgr, d, "dlib5", size, padding)
            ).mean()
            for bgr, d, y in faces
        ]
    )
    return template, spread, float(diff), len(faces)


def _apply(affine: NDArray[np.float64], points: NDArray[np.float64]) -> NDArray[np.float64]:
    return points @ affine[:, :2].T + affine[:, 2]


def _iou(a: NDArray[np.float64], b: NDArray[np.float64]) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(w, 0.0) * max(h, 0.0)
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
