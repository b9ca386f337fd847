"""Seeded degradations of aligned face chips: the low-quality faces the uncertainty head must flag.

Applied to the aligned 150 px chip, not to the full image before detection. Reasons: one
detection per image serves every variant (detection is the slow step after the network), a
degraded face is never lost to a failed detection (which would leave the strongest degradations
under-represented in training), and clean and degraded rows of one image show the same crop, so
the only difference the head can learn from is the degradation itself. The cost: the landmark
jitter a degraded image causes in a real pipeline is not modelled. LFW and CelebA faces are about
as wide in the 250 px images as in the chip (100 px), so a blur sigma means about the same in both.

Kinds and levels (``LEVELS``, weakest first):

* ``blur``: Gaussian blur, sigma 1, 2, 3, 4 px;
* ``downscale``: the face (100 px wide in dlib's chip, padding 0.25) shrunk to 48, 36 or 24 px
  wide with area averaging, then enlarged back bilinearly;
* ``jpeg``: JPEG round trip at quality 30, 20, 10 (OpenCV, 4:2:0 chroma);
* ``occlusion``: a rectangle of one random colour covering 25, 35 or 50 % of the chip's side,
  at a random place on the face;
* ``noise``: additive Gaussian noise, std 8, 16, 32 grey levels;
* a mix (``MIX_PROBABILITY``): two different kinds, one after the other, e.g. ``blur:2+jpeg:20``.

Every function takes a seed or a ``numpy.random.Generator``: the same seed gives the same pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

CLEAN = "clean"
FACE_WIDTH = 100.0  # px of the face square in dlib's 150 px chip (150 / (1 + 2 * 0.25))
LEVELS: dict[str, tuple[float, ...]] = {
    "blur": (1, 2, 3, 4),  # Gaussian sigma, px
    "downscale": (48, 36, 24),  # face width, px
    "jpeg": (30, 20, 10),  # quality
    "occlusion": (0.25, 0.35, 0.5),  # patch side / chip side
    "noise": (8, 16, 32),  # std, grey levels
}
KINDS = tuple(LEVELS)
MIX_PROBABILITY = 0.25


@dataclass(frozen=True)
class Degradation:
    """One kind at one of its levels; ``name`` is e.g. ``"blur:2"``."""

    kind: str
    level: float

    def __post_init__(self) -> None:
        if self.kind not in LEVELS:
            raise ValueError(f"unknown degradation {self.kind!r}; one of {', '.join(KINDS)}")
        if self.level not in LEVELS[self.kind]:
            raise ValueError(f"{self.kind} level {self.level!r} is not one of {LEVELS[self.kind]}")

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.level:g}"

    @property
    def strength(self) -> int:
        """0 for the kind's weakest level, 1 for the next, ..."""
        return LEVELS[self.kind].index(self.level)

    @classmethod
    def parse(cls, name: str) -> Degradation:
        kind, _, level = name.partition(":")
        try:
            value = float(level)
        except ValueError:
            raise ValueError(f"not a degradation name: {name!r} (expected kind:level, e.g. blur:2)") from None
        return cls(kind, value)


def parse_chain(name: str) -> list[Degradation]:
    """The degradations of a recorded name: [] for "clean", one, or two for a mix "a:1+b:2"."""
    return [] if name == CLEAN else [Degradation.parse(part) for part in name.split("+")]


def _check_chip(chip: np.ndarray) -> None:
    if not isinstance(chip, np.ndarray) or chip.dtype != np.uint8 or chip.ndim != 3 or chip.shape[2] != 3:
        found = f"{chip.dtype} {chip.shape}" if isinstance(chip, np.ndarray) else type(chip).__name__
        raise ValueError(f"chip must be an HxWx3 uint8 RGB array, got {found}")


def apply(chip: np.ndarray, degradation: Degradation, rng: np.random.Generator) -> np.ndarray:
    """A degraded copy of an RGB uint8 chip [H, W, 3]; ``rng`` draws what is random (noise, patch)."""
    _check_chip(chip)
    kind, level = degradation.kind, degradation.level
    h, w = chip.shape[:2]
    if kind == "blur":
        return cv2.GaussianBlur(chip, (0, 0), sigmaX=level, borderType=cv2.BORDER_REFLECT_101)
    if kind == "downscale":
        scale = level / FACE_WIDTH * w / 150.0  # chip sizes other than 150 keep the face proportion
        small = cv2.resize(chip, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if kind == "jpeg":
        bgr = cv2.cvtColor(chip, cv2.COLOR_RGB2BGR)  # JPEG's luma weights assume BGR order in OpenCV
        ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(level)])
        if not ok:
            raise RuntimeError("OpenCV failed to encode a JPEG")
        return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if kind == "occlusion":
        side = level * min(h, w)
        aspect = rng.uniform(0.6, 1.6)  # wide (a scarf, a hand) to tall (a microphone, hair)
        ph = int(np.clip(round(side / np.sqrt(aspect)), 1, h))
        pw = int(np.clip(round(side * np.sqrt(aspect)), 1, w))
        # The patch centre falls inside the face square (the middle 2/3 of the chip), so it hides face.
        cy = rng.uniform(h / 6, 5 * h / 6)
        cx = rng.uniform(w / 6, 5 * w / 6)
        top = int(np.clip(round(cy - ph / 2), 0, h - ph))
        left = int(np.clip(round(cx - pw / 2), 0, w - pw))
        out = chip.copy()
        out[top : top + ph, left : left + pw] = rng.integers(0, 256, 3, dtype=np.uint8)
        return out
    if kind == "noise":
        noisy = chip.astype(np.float32) + rng.normal(0.0, level, chip.shape).astype(np.float32)
        return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    raise AssertionError(kind)  # Degradation already checked the kind


def apply_chain(chip: np.ndarray, chain: list[Degradation], rng: np.random.Generator) -> np.ndarray:
    """The chip after every degradation of ``chain`` in order (a copy even for an empty chain)."""
    _check_chip(chip)
    out = chip.copy()
    for degradation in chain:
        out = apply(out, degradation, rng)
    return out


def chain_name(chain: list[Degradation]) -> str:
    return "+".join(d.name for d in chain) if chain else CLEAN


def random_chain(
    rng: np.random.Generator, kind: str | None = None, mix_probability: float = MIX_PROBABILITY
) -> list[Degradation]:
    """One kind (``kind``, or a random one) at a random level; with ``mix_probability`` a second,
    different kind follows."""
    if kind is not None and kind not in LEVELS:
        raise ValueError(f"unknown degradation {kind!r}; one of {', '.join(KINDS)}")
    first = KINDS[int(rng.integers(len(KINDS)))] if kind is None else kind
    kinds = [first]
    if rng.random() < mix_probability:
        others = [k for k in KINDS if k != first]
        kinds.append(others[int(rng.integers(len(others)))])
    return [Degradation(k, LEVELS[k][int(rng.integers(len(LEVELS[k])))]) for k in kinds]


def degrade(chip: np.ndarray, seed: int | np.random.Generator, kind: str | None = None) -> tuple[np.ndarray, str]:
    """(degraded chip, name of what was applied), drawn from ``seed``: same seed, same result.

    ``kind`` fixes the (first) kind; by default it is drawn too.
    """
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    chain = random_chain(rng, kind)
    return apply_chain(chip, chain, rng), chain_name(chain)
