"""Open-set identification on labelled faces: enrol some people, then probe with their other
images and with people never enrolled, at the Verifier's threshold.

Figures (probes whose largest face is found):
  rank-1    enrolled people's probes whose nearest identity is right (threshold ignored)
  TAR       enrolled people's probes accepted as the right person
  misid     enrolled people's probes accepted as someone else
  FAR       strangers' probes accepted as anyone

A stranger is compared with every enrolled face, so the open-set FAR grows with the gallery:
about 1 - (1 - pairwise FAR) ** (enrolled faces). Pick the threshold for the gallery's size.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from sdk.verifier import NoFaceError, Verifier


@dataclass(frozen=True)
class Protocol:
    enrol: dict[str, list[Path]]
    probes: list[tuple[Path, str | None]]  # (image, identity or None for a stranger)
    name: str


def att_protocol(data: Path, enrolled: int = 30, per_person: int = 5) -> Protocol:
    """AT&T: people s1..s{enrolled} enrol images 1..per_person and probe with the rest;
    the remaining people are strangers (all 10 images)."""
    root = data / "att"
    people = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: int(p.name[1:]))
    if not people:
        raise FileNotFoundError(f"no AT&T people (s1..s40) under {root}")
    enrol, probes = {}, []
    for i, person in enumerate(people):
        images = sorted(person.glob("*.pgm"), key=lambda p: int(p.stem))
        if i < enrolled:
            enrol[person.name] = images[:per_person]
            probes += [(p, person.name) for p in images[per_person:]]
        else:
            probes += [(p, None) for p in images]
    return Protocol(enrol, probes, f"AT&T: {enrolled} people enrolled x {per_person} images, {len(people) - enrolled} strangers")


def lfw_protocol(data: Path, min_images: int = 10, per_person: int = 3, stranger_share: float = 1 / 3) -> Protocol:
    """LFW people with at least `min_images` images: a random third (seed 0) are strangers;
    the others enrol their first `per_person` images and probe with the rest."""
    root = data / "lfw"
    rows = [line.split() for line in (root / "lfw-names.txt").read_text().splitlines() if line.strip()]
    people = sorted(name for name, count in rows if int(count) >= min_images)
    random.Random(0).shuffle(people)
    cut = int(len(people) * stranger_share)
    strangers, members = people[:cut], sorted(people[cut:])
    images = lambda name: sorted((root / "images_deepfunneled" / name).glob("*.jpg"))  # noqa: E731
    enrol = {name: images(name)[:per_person] for name in members}
    probes = [(p, name) for name in members for p in images(name)[per_person:]]
    probes += [(p, None) for name in sorted(strangers) for p in images(name)]
    return Protocol(
        enrol, probes, f"LFW people with >= {min_images} images: {len(members)} enrolled x {per_person}, {len(strangers)} strangers"
    )


@dataclass(frozen=True)
class Figures:
    threshold: float
    rank1: float
    tar: float
    misidentified: float
    far: float


@dataclass
class OpenSetResult:
    protocol: str
    enrolled: int
    genuine_probes: int
    stranger_probes: int
    no_face: int
    figures: list[Figures]  # one per threshold
    not_enrolled: list[str] = field(default_factory=list)  # no face in any enrolment image

    def lines(self, labels: list[str] | None = None) -> list[str]:
        out = [
            self.protocol,
            f"{self.enrolled} people enrolled; {self.genuine_probes} genuine and {self.stranger_probes} "
            f"stranger probes; {self.no_face} probes without a face",
            f"{'threshold':>22} {'rank-1 %':>9} {'TAR %':>7} {'misid %':>8} {'FAR %':>7}",
        ]
        for i, f in enumerate(self.figures):
            label = f"{labels[i]} " if labels else ""
            out.append(
                f"{label + f'{f.threshold:.4f}':>22} {100 * f.rank1:9.2f} {100 * f.tar:7.2f} "
                f"{100 * f.misidentified:8.2f} {100 * f.far:7.2f}"
            )
        return out


def run(verifier: Verifier, protocol: Protocol, thresholds: list[float], progress: bool = True) -> OpenSetResult:
    """Enrol into the verifier's (preferably empty, in-memory) gallery, probe once, and score
    the nearest identity of every probe at each threshold."""
    not_enrolled = []
    for name, images in tqdm(protocol.enrol.items(), desc="enrol", unit="person", disable=not progress):
        try:
            verifier.enroll(name, images, largest=True, force=True)
        except NoFaceError:
            not_enrolled.append(name)  # its probes still count: they can only be missed
    truths, names, distances, no_face = [], [], [], 0
    for path, truth in tqdm(protocol.probes, desc="probe", unit="img", disable=not progress):
        try:
            (best,) = verifier.identify(path, k=1) or [(None, np.inf)]
        except NoFaceError:
            no_face += 1
            continue
        truths.append(truth)
        names.append(best[0])
        distances.append(best[1])
    distance = np.array(distances)
    stranger = np.array([t is None for t in truths])
    right = np.array([t is not None and n == t for t, n in zip(truths, names)])
    genuine = max(int((~stranger).sum()), 1)
    figures = []
    for t in thresholds:
        accepted = distance <= t
        figures.append(
            Figures(
                threshold=t,
                rank1=float(right.sum() / genuine),
                tar=float((accepted & right).sum() / genuine),
                misidentified=float((accepted & ~right & ~stranger).sum() / genuine),
                far=float((accepted & stranger).sum() / max(int(stranger.sum()), 1)),
            )
        )
    return OpenSetResult(
        protocol=protocol.name,
        enrolled=len(protocol.enrol) - len(not_enrolled),
        genuine_probes=int((~stranger).sum()),
        stranger_probes=int(stranger.sum()),
        no_face=no_face,
        figures=figures,
        not_enrolled=not_enrolled,
    )
