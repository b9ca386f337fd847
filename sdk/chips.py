"""The one canonical cut of a face: BGR image + a detector's 5 landmarks -> aligned RGB chip.

The Verifier, the trainer, the exporter and every evaluation cut faces here, so a face is cut the
same way everywhere. A model names the chip it was trained on in its metadata (``chip_scheme``);
:class:`ChipScheme` parses that name, e.g. ``"dlib5_150_0.25"``: dlib's 5-point chip geometry,
150 px square, padding 0.25. :mod:`sdk.align` maps each detector's landmark scheme ("dlib5",
"yunet5") onto that geometry and samples the pixels exactly as dlib does.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from sdk.align import align
from sdk.errors import InvalidImageError

# Chip geometries the aligner can cut: the template family whose unit square the chip is.
GEOMETRIES = ("dlib5",)


@dataclass(frozen=True)
class ChipScheme:
    """How a chip is cut: ``geometry`` (template family), ``size`` (px, square), ``padding``."""

    geometry: str
    size: int
    padding: float

    @classmethod
    def parse(cls, name: str) -> ChipScheme:
        """``"<geometry>_<size>_<padding>"``; ValueError for anything this runtime cannot cut."""
        found = re.fullmatch(r"([a-z0-9]+)_([1-9]\d*)_(\d+(?:\.\d+)?)", str(name))
        if found is None:
            raise ValueError(f"chip scheme {name!r} is not '<geometry>_<size>_<padding>', e.g. {str(DEFAULT_CHIP)!r}")
        if found[1] not in GEOMETRIES:
            raise ValueError(f"chip scheme {name!r}: geometry {found[1]!r} is not one of {', '.join(GEOMETRIES)}")
        return cls(found[1], int(found[2]), float(found[3]))

    def __str__(self) -> str:
        return f"{self.geometry}_{self.size}_{self.padding:g}"


# The chip of dlib's network, and of every backbone the trainer builds.
DEFAULT_CHIP = ChipScheme("dlib5", 150, 0.25)


def _check_bgr(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        found = f"{image.dtype} {image.shape}" if isinstance(image, np.ndarray) else type(image).__name__
        raise InvalidImageError(f"image must be a BGR uint8 HxWx3 array, got {found}")


def _bgr_chip(image: np.ndarray, landmarks: np.ndarray, landmark_scheme: str, scheme: ChipScheme) -> np.ndarray:
    # The aligner samples each channel on its own, so cutting the BGR frame and swapping the
    # chip's channels gives the RGB chip byte for byte, without converting the whole frame
    # (cv2 swaps them 15 times faster than numpy copies a reversed view).
    return cv2.cvtColor(align(image, landmarks, landmark_scheme, scheme.size, scheme.padding), cv2.COLOR_BGR2RGB)


def cut(image: np.ndarray, landmarks: np.ndarray, landmark_scheme: str, scheme: ChipScheme = DEFAULT_CHIP) -> np.ndarray:
    """The RGB chip [size, size, 3] of one face of a BGR uint8 image, from its 5 landmarks."""
    _check_bgr(image)
    return _bgr_chip(image, landmarks, landmark_scheme, scheme)


def face_chips(image: np.ndarray, faces: Sequence[Any], scheme: ChipScheme = DEFAULT_CHIP) -> np.ndarray:
    """RGB chips [n, size, size, 3] of detected faces (``sdk.detect.Detection``) of a BGR image."""
    if not faces:
        return np.zeros((0, scheme.size, scheme.size, 3), np.uint8)
    _check_bgr(image)
    return np.stack([_bgr_chip(image, f.landmarks, f.scheme, scheme) for f in faces])


def central_face(faces: Sequence[Any], shape: tuple[int, ...]) -> Any:
    """The detection nearest the image centre (a face crop's subject), or None."""
    if not faces:
        return None
    cy, cx = shape[0] / 2, shape[1] / 2

    def off_centre(face: Any) -> float:
        x1, y1, x2, y2 = face.box
        return ((x1 + x2) / 2 - cx) ** 2 + ((y1 + y2) / 2 - cy) ** 2

    return min(faces, key=off_centre)


def central_chip(image: np.ndarray, detector: Any, scheme: ChipScheme = DEFAULT_CHIP) -> tuple[np.ndarray, Any] | None:
    """(chip, detection) of the central face of a BGR face crop, or None when none is found."""
    face = central_face(detector.detect(image), image.shape)
    if face is None:
        return None
    return cut(image, face.landmarks, face.scheme, scheme), face
