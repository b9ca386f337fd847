"""Labelled face image lists: an identities file, a folder per identity, LFW's people lists, CelebA.

A :class:`FaceList` is only paths and identity names; :mod:`train.data.chips` turns it into aligned
chips once. Named sources for configs (:func:`face_lists`):

* ``celeba``: the CelebA subset, ``celeba_subset/identities.txt`` (``<id> <path>`` lines);
* ``lfw-devtrain``: LFW people of ``peopleDevTrain.txt`` (View 1 training people: disjoint from the
  people of ``pairsDevTest.txt``, so a model trained on them is fairly tested on DevTest);
* ``lfw-folds-except:K[,K...]``: LFW people of ``people.txt``'s folds other than K (View 2: train on
  the other folds of a 10-fold ``pairs.txt`` run), one list per fold, so that the ten runs of a
  cross-validation share each fold's chips;
* ``att``: AT&T/ORL, one folder per person (``s1`` ... ``s40``);
* ``identities:PATH`` / ``folder:PATH``: any ``<id> <path>`` file or identity-per-folder tree.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".webp")
LFW_FOLDS = 10


@dataclass(frozen=True)
class FaceList:
    """Images and the identity of each; `name` tells where they come from (and keys the chip cache)."""

    name: str
    paths: list[Path]
    identities: list[str]

    def __post_init__(self) -> None:
        if len(self.paths) != len(self.identities):
            raise ValueError(f"{self.name}: {len(self.paths)} paths but {len(self.identities)} identities")

    def __len__(self) -> int:
        return len(self.paths)

    def num_identities(self) -> int:
        return len(set(self.identities))


def identities_file(path: str | Path, name: str | None = None) -> FaceList:
    """``<identity> <relative path>`` lines (paths relative to the file's folder), e.g. CelebA's."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"identities file {path} not found")
    paths, identities = [], []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{number}: expected '<identity> <path>', got {line!r}")
        identities.append(parts[0])
        paths.append(path.parent / parts[1])
    if not paths:
        raise ValueError(f"{path}: no images listed")
    return FaceList(name or path.parent.name, paths, identities)


def image_folder(root: str | Path, name: str | None = None) -> FaceList:
    """One sub-folder per identity holding its images (sorted, so the order is reproducible)."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"image folder {root} not found")
    paths, identities = [], []
    for folder in sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _natural(p.name)):
        for image in sorted(folder.iterdir(), key=lambda p: _natural(p.name)):
            if image.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(image)
                identities.append(folder.name)
    if not paths:
        raise ValueError(f"{root}: no images in identity sub-folders ({', '.join(IMAGE_SUFFIXES)})")
    return FaceList(name or root.name, paths, identities)


def _natural(name: str) -> tuple:
    """s2 before s10: digits compare as numbers."""
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name))


# --- LFW -----------------------------------------------------------------------------------------


def lfw_people(lfw: str | Path, filename: str = "peopleDevTrain.txt") -> dict[str, int]:
    """People of a View 1 people file (``peopleDevTrain.txt`` / ``peopleDevTest.txt``): name -> images."""
    path = Path(lfw) / filename
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines or len(lines[0]) != 1 or not lines[0][0].isdigit():
        raise ValueError(f"{path}: not an LFW people file (bad header {lines[:1]})")
    people = _people_rows(path, lines[1:])
    if len(people) != int(lines[0][0]):
        raise ValueError(f"{path}: header promises {lines[0][0]} people, found {len(people)}")
    return people


def lfw_people_folds(lfw: str | Path) -> list[dict[str, int]]:
    """The 10 folds of ``people.txt`` (View 2): one name -> images dict per fold.

    The folds of ``pairs.txt`` draw their pairs from these people, fold k from fold k.
    """
    path = Path(lfw) / "people.txt"
    lines = [line.split() for line in path.read_text().splitlines() if line.strip()]
    if not lines or lines[0] != [str(LFW_FOLDS)]:
        raise ValueError(f"{path}: expected {LFW_FOLDS} folds in the header, got {lines[:1]}")
    folds, i = [], 1
    for _ in range(LFW_FOLDS):
        if i >= len(lines) or len(lines[i]) != 1 or not lines[i][0].isdigit():
            raise ValueError(f"{path}: fold {len(folds)} has no count line")
        count = int(lines[i][0])
        folds.append(_people_rows(path, lines[i + 1 : i + 1 + count]))
        if len(folds[-1]) != count:
            raise ValueError(f"{path}: fold {len(folds) - 1} promises {count} people, found {len(folds[-1])}")
        i += 1 + count
    return folds


def lfw_people_outside_folds(lfw: str | Path, test_folds: Iterable[int]) -> dict[str, int]:
    """People of ``people.txt`` in none of `test_folds` (0..9): the people a model may train on
    before it is tested on those folds of ``pairs.txt``."""
    test = sorted(set(test_folds))
    if not test or not all(0 <= k < LFW_FOLDS for k in test):
        raise ValueError(f"test folds must be a non-empty set of 0..{LFW_FOLDS - 1}, got {test}")
    folds = lfw_people_folds(lfw)
    held_out = set().union(*(folds[k] for k in test))
    return {name: n for k, fold in enumerate(folds) if k not in test for name, n in fold.items() if name not in held_out}


def lfw_faces(lfw: str | Path, people: dict[str, int], name: str) -> FaceList:
    """The (deep-funneled) images of `people` (name -> image count), ``Name/Name_0001.jpg`` ..."""
    root = Path(lfw) / "images_deepfunneled"
    paths, identities = [], []
    for person in sorted(people):
        for i in range(1, people[person] + 1):
            paths.append(root / person / f"{person}_{i:04d}.jpg")
            identities.append(person)
    return FaceList(name, paths, identities)


def _people_rows(path: Path, rows: Sequence[list[str]]) -> dict[str, int]:
    people: dict[str, int] = {}
    for row in rows:
        if len(row) != 2 or not row[1].isdigit():
            raise ValueError(f"{path}: expected '<name> <count>', got {' '.join(row)!r}")
        people[row[0]] = int(row[1])
    return people


# --- named sources for configs ---------------------------------------------------------------------

SOURCES = ("celeba", "lfw-devtrain", "lfw-folds-except:K[,K...]", "att", "identities:PATH", "folder:PATH")


def face_lists(source: str, data: str | Path) -> list[FaceList]:
    """The lists of a named source (see the module docstring) under the data folder `data`."""
    data = Path(data)
    kind, _, argument = source.partition(":")
    if kind == "celeba" and not argument:
        return [identities_file(data / "celeba_subset" / "identities.txt", "celeba")]
    if kind == "lfw-devtrain" and not argument:
        return [lfw_faces(data / "lfw", lfw_people(data / "lfw", "peopleDevTrain.txt"), "lfw-devtrain")]
    if kind == "lfw-folds-except" and argument:
        try:
            test = {int(k) for k in argument.split(",")}
        except ValueError:
            raise ValueError(f"{source!r}: folds must be integers 0..9, e.g. lfw-folds-except:0,1") from None
        people = lfw_people_outside_folds(data / "lfw", test)
        folds = lfw_people_folds(data / "lfw")
        return [
            lfw_faces(data / "lfw", {name: n for name, n in fold.items() if name in people}, f"lfw-fold-{k}")
            for k, fold in enumerate(folds)
            if k not in test
        ]
    if kind == "att" and not argument:
        return [image_folder(data / "att", "att")]
    if kind == "identities" and argument:
        return [identities_file(argument)]
    if kind == "folder" and argument:
        return [image_folder(argument)]
    raise ValueError(f"unknown face source {source!r}; one of: {', '.join(SOURCES)}")
