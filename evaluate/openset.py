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


# --- 1:N with distractor galleries (FPIR / FNIR as NIST FRVT 1:N reports them) -------------------


@dataclass(frozen=True)
class Person:
    name: str  # "lfw:<Name>" or "celeba:<id>"
    images: list[Path]  # the first enrols; the others are searches
    lfw_split: str | None  # "train" (peopleDevTrain) or "test" (peopleDevTest); None for CelebA


def people(data: Path, per_person: int = 6) -> list[Person]:
    """Every LFW person and every CelebA-subset identity, with at most `per_person` images each
    (sorted), so that a few people with hundreds of images do not dominate the searches."""
    lfw = data / "lfw"
    split = {}
    for file, tag in (("peopleDevTrain.txt", "train"), ("peopleDevTest.txt", "test")):
        for line in (lfw / file).read_text().splitlines()[1:]:
            if line.strip():
                split[line.split()[0]] = tag
    out = []
    for line in (lfw / "lfw-names.txt").read_text().splitlines():
        if line.strip():
            name = line.split()[0]
            images = sorted((lfw / "images_deepfunneled" / name).glob("*.jpg"))[:per_person]
            out.append(Person(f"lfw:{name}", images, split.get(name)))
    celeba = data / "celeba_subset"
    by_id: dict[str, list[Path]] = {}
    for line in (celeba / "identities.txt").read_text().splitlines():
        if line.strip():
            identity, rel = line.split()
            by_id.setdefault(identity, []).append(celeba / rel)
    for identity in sorted(by_id, key=int):
        out.append(Person(f"celeba:{identity}", sorted(by_id[identity])[:per_person], None))
    return out


def embed_people(persons: list[Person], detector=None, embedder=None, progress: bool = True) -> dict[Path, np.ndarray]:
    """One embedding per image, each image once, with the default detector and model (the
    central face, as the LFW benchmark does)."""
    from evaluate.lfw import embed_images
    from sdk.detect import default_detector
    from sdk.embed import OnnxEmbedder, default_model_path

    detector = detector if detector is not None else default_detector()[0]
    embedder = embedder if embedder is not None else OnnxEmbedder(default_model_path())
    paths = [p for person in persons for p in person.images]
    embedded = embed_images(paths, detector, embedder, progress=progress)
    return dict(zip(paths, embedded.embeddings))


class FlipAveraged:
    """An embedder whose embedding of a chip is the normalised mean of the chip's and its
    mirror's (test-time flip averaging): twice the embedding cost."""

    def __init__(self, embedder) -> None:
        self.embedder, self.metadata = embedder, embedder.metadata

    def embed(self, chips: np.ndarray) -> np.ndarray:
        both = self.embedder.embed(chips) + self.embedder.embed(np.ascontiguousarray(chips[:, :, ::-1]))
        return (both / np.linalg.norm(both, axis=1, keepdims=True)).astype(np.float32)


def save_embeddings(path: Path, embeddings: dict[Path, np.ndarray]) -> None:
    np.savez(path, paths=np.array([str(p) for p in embeddings]), embeddings=np.stack(list(embeddings.values())))


def load_embeddings(path: Path) -> dict[Path, np.ndarray]:
    with np.load(path) as z:
        return {Path(p): e for p, e in zip(z["paths"], z["embeddings"])}


FPIR_TARGETS = (1e-1, 1e-2, 1e-3)
GALLERY_SIZES = (1, 100, 1000, 5000)


def split_people(
    persons: list[Person], strangers: int = 300, stranger_pool: str = "lfw-test", seed: int = 0
) -> tuple[list[Person], list[Person]]:
    """(gallery order, strangers). Strangers: `strangers` people with >= 2 images drawn from the
    pool: "lfw-test" (LFW peopleDevTest) or "calibration" (CelebA and LFW peopleDevTrain only;
    then the gallery holds only those people too, so no LFW test person is seen). The gallery
    order is a seeded shuffle of everyone else: the gallery of size N is its first N people,
    so every gallery holds the smaller ones."""
    if stranger_pool == "calibration":
        persons = [p for p in persons if p.lfw_split != "test"]
        pool = [p for p in persons if len(p.images) >= 2]
    elif stranger_pool == "lfw-test":
        pool = [p for p in persons if p.lfw_split == "test" and len(p.images) >= 2]
    else:
        raise ValueError(f"stranger_pool must be 'lfw-test' or 'calibration', got {stranger_pool!r}")
    rng = random.Random(seed)
    chosen = rng.sample(pool, min(strangers, len(pool)))
    names = {p.name for p in chosen}
    gallery = [p for p in persons if p.name not in names]
    rng.shuffle(gallery)
    return gallery, chosen


def fpir_fnir(
    mated: np.ndarray, mated_hit: np.ndarray, nonmated: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """FPIR and FNIR at each threshold (accept if squared L2 <= t), with a candidate list of one:
    a non-mated search is a false positive when its nearest identity is within t; a mated search
    is a miss unless its nearest identity is its own and within t."""
    t = np.asarray(thresholds, np.float64)
    non = np.sort(np.asarray(nonmated, np.float64))
    hits = np.sort(np.asarray(mated, np.float64)[np.asarray(mated_hit, bool)])
    fpir = np.searchsorted(non, t, side="right") / max(len(non), 1)
    fnir = 1.0 - np.searchsorted(hits, t, side="right") / max(len(mated), 1)
    return fpir, fnir


def threshold_at_fpir(nonmated: np.ndarray, target: float) -> float:
    """The largest gap threshold whose FPIR is at most `target`: halfway between the k-th and
    the (k+1)-th smallest non-mated score, k = floor(target * searches)."""
    d = np.sort(np.asarray(nonmated, np.float64))
    k = int(np.floor(target * len(d) + 1e-9))
    if k >= len(d):
        return float(d[-1])
    if k == 0:
        return float(max(d[0] - 1e-6, 0.0))
    return float((d[k - 1] + d[k]) / 2)


def searches(people: list[Person], frames: int, skip: int = 0) -> tuple[list[list[Path]], np.ndarray]:
    """Each person's images after the first `skip`, in groups of `frames` (a fused track of that
    many frames; the remainder is left out): (groups, index of each group's person)."""
    groups, owner = [], []
    for i, person in enumerate(people):
        rest = person.images[skip:]
        for start in range(0, len(rest) - frames + 1, frames):
            groups.append(rest[start : start + frames])
            owner.append(i)
    return groups, np.array(owner, np.int64)


def fused(embeddings: dict[Path, np.ndarray], groups: list[list[Path]]) -> np.ndarray:
    """One probe per group: the normalised mean of its embeddings, as a FaceStream fuses the
    frames of a track for a model without uncertainty (:func:`sdk.pfe.fuse`, equal weights)."""
    from sdk import pfe

    out = []
    for group in groups:
        mus = np.stack([embeddings[p] for p in group])
        out.append(mus[0] if len(group) == 1 else pfe.fuse(mus, np.ones_like(mus))[0])
    return np.stack(out).astype(np.float32)


def one_to_n(
    embeddings: dict[Path, np.ndarray],
    gallery_order: list[Person],
    strangers: list[Person],
    sizes: tuple[int, ...] = GALLERY_SIZES,
    targets: tuple[float, ...] = FPIR_TARGETS,
    thresholds: dict[str, float] | None = None,
    probe_frames: int = 1,
) -> dict:
    """1:N identification for each gallery size N: the first N people of `gallery_order` enrol
    their first image; their other images are mated searches; every image of `strangers` is a
    non-mated search. With ``probe_frames`` F > 1 each search is the fusion of F of a person's
    images (a track), not one image. Per N: rank-1, the threshold for each target FPIR and the
    FNIR there, and FPIR / FNIR at each of `thresholds` (label -> squared L2), plus the DET curve.

    N = 1 is measured as pairs: every non-mated search against every enrolled face of the largest
    gallery, and every mated search against its own person's face, so FPIR there is the pairwise
    false accept rate of this kind of search (an average over people, not one person's gallery).
    """
    from sdk import kernels

    groups, _ = searches(strangers, probe_frames)
    if not groups:
        raise ValueError(f"no stranger has {probe_frames} images")
    non_q = fused(embeddings, groups)
    out: dict = {"strangers": len(strangers), "nonmated_searches": len(non_q), "probe_frames": probe_frames, "sizes": {}}
    largest = max((n for n in sizes if n <= len(gallery_order)), default=0)
    for n in sizes:
        if n > len(gallery_order):
            continue
        people = gallery_order[: (largest if n == 1 else n)]
        gallery = np.stack([embeddings[p.images[0]] for p in people])
        mated_groups, owner = searches(people, probe_frames, skip=1)
        mated_q = fused(embeddings, mated_groups)
        if n == 1:
            mated = ((mated_q.astype(np.float64) - gallery[owner]) ** 2).sum(1)
            hit = np.ones(len(mated), bool)
            nonmated = kernels.sq_l2(non_q, gallery).ravel().astype(np.float64)
        else:
            idx, dist = kernels.topk(mated_q, gallery, 1)
            mated, hit = dist[:, 0].astype(np.float64), idx[:, 0] == owner
            nonmated = kernels.topk(non_q, gallery, 1)[1][:, 0].astype(np.float64)
        row: dict = {"mated_searches": len(mated_q), "rank1": float(hit.mean()), "targets": {}, "at": {}}
        for target in targets:
            t = threshold_at_fpir(nonmated, target)
            fpir, fnir = fpir_fnir(mated, hit, nonmated, [t])
            row["targets"][f"{target:g}"] = {"threshold": t, "fpir": float(fpir[0]), "fnir": float(fnir[0])}
        for label, t in (thresholds or {}).items():
            fpir, fnir = fpir_fnir(mated, hit, nonmated, [t])
            row["at"][label] = {"threshold": t, "fpir": float(fpir[0]), "fnir": float(fnir[0])}
        row["_scores"] = (mated, hit, nonmated)
        grid = np.unique(np.concatenate([nonmated, mated]))
        if len(grid) > 20000:  # the N = 1 pairs: a DET needs no more points than a plot shows
            grid = np.quantile(grid, np.linspace(0, 1, 20000))
        fpir, fnir = fpir_fnir(mated, hit, nonmated, grid)
        row["det"] = {"fpir": fpir.tolist(), "fnir": fnir.tolist()}
        out["sizes"][n] = row
    return out


def figures_at(row: dict, threshold: float) -> dict:
    """FPIR and FNIR of one gallery size of :func:`one_to_n` at another threshold."""
    mated, hit, nonmated = row["_scores"]
    fpir, fnir = fpir_fnir(mated, hit, nonmated, [threshold])
    return {"threshold": float(threshold), "fpir": float(fpir[0]), "fnir": float(fnir[0])}


def plot_det(result: dict, path: Path, title: str) -> None:
    """FNIR against FPIR on log axes, one curve per gallery size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5))
    for n, row in result["sizes"].items():
        fpir, fnir = np.array(row["det"]["fpir"]), np.array(row["det"]["fnir"])
        keep = (fpir > 0) & (fnir > 0)
        ax.plot(fpir[keep], fnir[keep], label=f"N = {n:,}")
    ax.set(xscale="log", yscale="log", xlabel="FPIR", ylabel="FNIR (rank 1)", title=title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
