"""Aligned face chips, detected and cut once with the SDK's canonical alignment and cached on disk.

Detection per epoch would dominate training on a small CPU (YuNet + alignment cost ~3 ms per image,
the chip a fraction of that to read back), so every image list is detected and aligned once:
``sdk.detect`` finds the faces, the one nearest the image centre is kept (as ``evaluate.lfw.embed_images``
does: these sets are centred face crops), and ``sdk.chips`` cuts the runtime's chip
(``sdk.chips.DEFAULT_CHIP``: 150 x 150 RGB, padding 0.25). The chips are stored as a uint8 ``.npy``
``[M, 150, 150, 3]`` (read back memory-mapped) with a ``.json`` beside it (which image each row is,
which images had no face), under ``$FACESDK_HOME/chips`` or ``~/.cache/facesdk/chips``, never in the
repository. The cache key covers the image paths, detector, scheme and chip geometry.

Images without a face are skipped and counted (training), or, with ``missing="mean"``, cut with the
mean landmarks of the others, exactly as ``evaluate.lfw.embed_images`` does for LFW pairs (evaluation:
no pair may be dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sdk.chips import DEFAULT_CHIP, central_face, cut
from sdk.paths import home

log = logging.getLogger(__name__)

_FORMAT = 1  # bump when the cache layout or the cutting rule changes


def chip_cache_dir() -> Path:
    """``$FACESDK_HOME/chips`` or ``~/.cache/facesdk/chips`` (the runtime's cache root)."""
    return home() / "chips"


@dataclass(frozen=True)
class AlignedFaces:
    """Chips of a list of images: ``chips[i]`` is the face of ``paths[index[i]]``."""

    chips: np.ndarray  # uint8 [M, 150, 150, 3] RGB (memory-mapped when read from the cache)
    index: np.ndarray  # int64 [M]: image of each chip
    no_face: np.ndarray  # int64: images where the detector found no face
    detector: str
    path: Path | None  # the cache file, None when not cached

    def __len__(self) -> int:
        return len(self.index)


def align_faces(
    paths: Sequence[str | Path],
    *,
    name: str = "faces",
    detector: Any = "auto",
    missing: str = "skip",
    cache_dir: str | Path | None = None,
    progress: bool = True,
) -> AlignedFaces:
    """Detect and align the central face of every image, or read the result from the cache.

    detector: "auto" | "yunet" | "dlib" or a detector object (``sdk.detect.detector_from``).
    missing: "skip" (images without a face get no chip; see ``no_face``) or "mean" (they get a chip
    cut with the mean landmarks of the others, placed after the found ones).
    cache_dir: None for :func:`chip_cache_dir`; the cache is written atomically (safe when several
    processes build it, the last rename wins with identical content).
    """
    from sdk.detect import detector_from

    if missing not in ("skip", "mean"):
        raise ValueError(f"missing must be 'skip' or 'mean', got {missing!r}")
    if not paths:
        raise ValueError(f"{name}: no images to align")
    det = detector_from(detector)
    scheme = getattr(det, "scheme", None)
    if scheme is None:
        raise TypeError(f"detector {det!r} has no landmark scheme")
    key = _cache_key(paths, det.name, scheme, missing)
    directory = Path(cache_dir) if cache_dir is not None else chip_cache_dir()
    stem = directory / f"{_safe(name)}-{key[:16]}"
    cached = _read_cache(stem, key)
    if cached is not None:
        return cached
    directory.mkdir(parents=True, exist_ok=True)
    chips_tmp = stem.with_name(f".{stem.name}.{os.getpid()}.raw")
    try:
        index, no_face = _detect_and_align(paths, det, missing, chips_tmp, name, progress)
        _write_cache(stem, key, chips_tmp, index, no_face, det.name, paths)
    finally:
        chips_tmp.unlink(missing_ok=True)
    log.info("%s: %d chips cached at %s.npy (%d images without a face)", name, len(index), stem, len(no_face))
    result = _read_cache(stem, key)
    assert result is not None
    return result


def _cache_key(paths: Sequence[str | Path], detector: str, scheme: str, missing: str) -> str:
    digest = hashlib.sha256()
    header = {"format": _FORMAT, "detector": detector, "scheme": scheme, "size": DEFAULT_CHIP.size, "padding": DEFAULT_CHIP.padding}
    digest.update(json.dumps({**header, "missing": missing}, sort_keys=True).encode())
    for path in paths:
        digest.update(str(Path(path).resolve()).encode() + b"\0")
    return digest.hexdigest()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _read_cache(stem: Path, key: str) -> AlignedFaces | None:
    meta_path, chips_path = stem.with_suffix(".json"), stem.with_suffix(".npy")
    if not (meta_path.is_file() and chips_path.is_file()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        chips = np.load(chips_path, mmap_mode="r")
    except (OSError, ValueError) as e:
        log.warning("ignoring unreadable chip cache %s: %s", stem, e)
        return None
    index = np.asarray(meta.get("index", []), np.int64)
    if meta.get("key") != key or chips.shape != (len(index), DEFAULT_CHIP.size, DEFAULT_CHIP.size, 3) or chips.dtype != np.uint8:
        log.warning("ignoring stale chip cache %s", stem)
        return None
    return AlignedFaces(chips, index, np.asarray(meta["no_face"], np.int64), meta["detector"], chips_path)


def _detect_and_align(
    paths: Sequence[str | Path], det: Any, missing: str, out: Path, name: str, progress: bool
) -> tuple[list[int], list[int]]:
    """Stream chips to the raw file `out` in row order; returns (image of each row, images without a face)."""
    import cv2
    from tqdm import tqdm

    def read(path: str | Path) -> np.ndarray:
        image = cv2.imread(str(path), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{name}: cannot read image {path}")
        return image

    index: list[int] = []
    no_face: list[int] = []
    landmark_sum, found = np.zeros((5, 2)), 0
    with open(out, "wb") as f:
        for i, path in enumerate(tqdm(paths, desc=f"align {name} ({det.name})", unit="img", disable=not progress)):
            bgr = read(path)
            face = central_face(det.detect(bgr), bgr.shape)
            if face is None:
                no_face.append(i)
                continue
            f.write(np.ascontiguousarray(cut(bgr, face.landmarks, det.scheme)).tobytes())
            index.append(i)
            landmark_sum, found = landmark_sum + face.landmarks, found + 1
        if found == 0:
            raise RuntimeError(f"{name}: {det.name} found no face in any of {len(paths)} images")
        if missing == "mean":
            for i in no_face:
                f.write(np.ascontiguousarray(cut(read(paths[i]), landmark_sum / found, det.scheme)).tobytes())
                index.append(i)
    return index, no_face


def _write_cache(
    stem: Path, key: str, raw: Path, index: list[int], no_face: list[int], detector: str, paths: Sequence[str | Path]
) -> None:
    shape = (len(index), DEFAULT_CHIP.size, DEFAULT_CHIP.size, 3)
    source = np.memmap(raw, np.uint8, "r", shape=shape)
    npy_tmp = stem.with_name(f".{stem.name}.{os.getpid()}.npy")
    json_tmp = stem.with_name(f".{stem.name}.{os.getpid()}.json")
    try:
        target = np.lib.format.open_memmap(npy_tmp, "w+", np.uint8, shape)
        for start in range(0, len(index), 1024):  # bounded memory
            target[start : start + 1024] = source[start : start + 1024]
        target.flush()
        del target, source
        meta = {
            "key": key,
            "detector": detector,
            "chip_scheme": str(DEFAULT_CHIP),
            "images": len(paths),
            "index": index,
            "no_face": no_face,
            "no_face_paths": [str(paths[i]) for i in no_face],
        }
        json_tmp.write_text(json.dumps(meta))
        os.replace(npy_tmp, stem.with_suffix(".npy"))
        os.replace(json_tmp, stem.with_suffix(".json"))  # last: a .json means the .npy beside it is whole
    finally:
        npy_tmp.unlink(missing_ok=True)
        json_tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class ChipDataset:
    """Aligned chips of one or more face lists, with one identity label space over all of them.

    Identities are named ``<list name>/<identity>`` so two sources never share a label. Only
    identities with at least ``min_images`` chips are kept (a triplet needs two faces of a person).
    """

    parts: tuple[np.ndarray, ...]  # chips of each source, uint8 [M_s, 150, 150, 3]
    part: np.ndarray  # int64 [N]: source of each face
    row: np.ndarray  # int64 [N]: row in that source's chips
    labels: np.ndarray  # int64 [N]: identity of each face, 0..len(identities)-1
    identities: tuple[str, ...]
    no_face: dict[str, int]  # source name -> images without a face (skipped)

    def __len__(self) -> int:
        return len(self.labels)

    def gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """uint8 chips [len(indices), 150, 150, 3] (copied out of the memory maps)."""
        indices = np.asarray(indices, np.int64)
        out = np.empty((len(indices), DEFAULT_CHIP.size, DEFAULT_CHIP.size, 3), np.uint8)
        for k, i in enumerate(indices):
            out[k] = self.parts[self.part[i]][self.row[i]]
        return out

    @classmethod
    def from_lists(
        cls,
        lists: Sequence[Any],
        *,
        min_images: int = 2,
        max_identities: int | None = None,
        detector: Any = "auto",
        cache_dir: str | Path | None = None,
        progress: bool = True,
    ) -> ChipDataset:
        """Align (or read from the cache) every ``train.data.datasets.FaceList`` in `lists`.

        max_identities: keep only the first N identities (sorted by name) that have enough faces,
        for quick runs and tests.
        """
        if min_images < 1:
            raise ValueError(f"min_images must be >= 1, got {min_images}")
        parts, names, rows, part_of = [], [], [], []
        no_face: dict[str, int] = {}
        for s, faces in enumerate(lists):
            aligned = align_faces(faces.paths, name=faces.name, detector=detector, cache_dir=cache_dir, progress=progress)
            parts.append(aligned.chips)
            no_face[faces.name] = len(aligned.no_face)
            names += [f"{faces.name}/{faces.identities[i]}" for i in aligned.index]
            rows.append(np.arange(len(aligned), dtype=np.int64))
            part_of.append(np.full(len(aligned), s, np.int64))
        unique, inverse, counts = np.unique(np.array(names), return_inverse=True, return_counts=True)
        keep_identity = counts >= min_images
        if max_identities is not None:
            keep_identity &= np.cumsum(keep_identity) <= max_identities
        if keep_identity.sum() < 2:
            raise ValueError(f"fewer than 2 identities with >= {min_images} faces in {', '.join(f.name for f in lists)}")
        keep = keep_identity[inverse]
        relabel = np.cumsum(keep_identity) - 1
        return cls(
            parts=tuple(parts),
            part=np.concatenate(part_of)[keep],
            row=np.concatenate(rows)[keep],
            labels=relabel[inverse[keep]].astype(np.int64),
            identities=tuple(unique[keep_identity].tolist()),
            no_face=no_face,
        )
