"""Liveness on live faces: BPCER (bona fide presentations wrongly rejected) of ``sdk.liveness`` on
LFW, the CelebA subset and AT&T, with the faces our YuNet detector finds, and ms per face.

Every image of these sets is a photograph of a real person, taken by a camera: bona fide for the
purpose of this measure, though not as a door camera sees them (LFW and CelebA are web photos,
re-compressed and cropped; AT&T is small grayscale). No presentation-attack set (printed photos,
screens, masks) is available here, so APCER, the share of attacks let through, is not measured.

Each image's largest face is scored (LFW and CelebA crops often hold a second face behind the
subject). The crop scale each model asked for is shrunk when the image cannot hold it
(:func:`sdk.liveness.crop_rect`): on 250x250 crops with a face filling much of them, V1SE's 4.0
and often V2's 2.7 shrink, so the models see less context than they were trained on; the
report shows how often and by how much. ``lfw-gray`` scores the same LFW images in
grayscale: it separates the colour cue from the small crop that AT&T's images also have.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from sdk.errors import InvalidImageError
from sdk.images import load_image
from sdk.liveness import LIVE_CLASS, MiniFASNet

# lfw-gray: the LFW images in grayscale (as BGR with equal channels): what a gray or IR camera gives.
SETS = ("lfw", "celeba", "att", "lfw-gray")


def set_images(data: Path, name: str) -> list[Path]:
    """Every image of a set, in a fixed order."""
    if name in ("lfw", "lfw-gray"):
        paths = sorted((data / "lfw" / "images_deepfunneled").glob("*/*.jpg"))
    elif name == "celeba":
        root = data / "celeba_subset"
        listing = root / "identities.txt"
        paths = [root / line.split()[1] for line in listing.read_text().splitlines() if line.strip()] if listing.is_file() else []
    elif name == "att":
        paths = sorted((data / "att").glob("s*/*.pgm"))
    else:
        raise ValueError(f"unknown set {name!r}: use {', '.join(SETS)}")
    if not paths:
        raise FileNotFoundError(f"no {name} images under {data} (set FACESDK_DATA or --data)")
    return paths


@dataclass
class SetResult:
    name: str
    images: int
    no_face: int
    scores: np.ndarray  # [faces] the combined live score
    model_live: np.ndarray  # [faces, models] each model's live probability
    shrink: np.ndarray  # [faces, models] effective crop scale / requested scale (1 = no shrink)
    ms: np.ndarray  # [faces] time of one score() call: crops + both models
    detect_ms: np.ndarray  # [faces] YuNet on the same image: the reference measured in the same run

    def bpcer(self, threshold: float) -> float:
        return float((self.scores < threshold).mean()) if len(self.scores) else float("nan")


def effective_scale(box: np.ndarray, height: int, width: int, scale: float) -> float:
    """The crop scale actually used for this box (the rule of ``sdk.liveness.crop_rect``)."""
    w, h = float(box[2] - box[0]), float(box[3] - box[1])
    return min(scale, (height - 1) / h, (width - 1) / w)


def measure_set(
    name: str, paths: list[Path], detector, liveness: MiniFASNet, progress: bool = True
) -> SetResult:
    scores, model_live, shrink, ms, detect_ms, no_face = [], [], [], [], [], 0
    for path in tqdm(paths, desc=f"liveness {name}", unit="img", disable=not progress):
        try:
            image = load_image(path)
        except InvalidImageError:
            no_face += 1
            continue
        start = time.perf_counter()
        if name.endswith("-gray"):
            image = cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
        faces = detector.detect(image)
        elapsed = (time.perf_counter() - start) * 1e3
        if not faces:
            no_face += 1
            continue
        face = max(faces, key=lambda d: float((d.box[2] - d.box[0]) * (d.box[3] - d.box[1])))
        start = time.perf_counter()
        p = liveness.probabilities(image, face)
        ms.append((time.perf_counter() - start) * 1e3)
        detect_ms.append(elapsed)
        live = p[:, LIVE_CLASS]
        scores.append(live.mean())  # = MiniFASNet.score
        model_live.append(live)
        h, w = image.shape[:2]
        shrink.append([effective_scale(face.box, h, w, m.scale) / m.scale for m in liveness.models])
    k = len(liveness.models)
    return SetResult(
        name,
        len(paths),
        no_face,
        np.asarray(scores, np.float64),
        np.asarray(model_live, np.float64).reshape(-1, k),
        np.asarray(shrink, np.float64).reshape(-1, k),
        np.asarray(ms, np.float64),
        np.asarray(detect_ms, np.float64),
    )


def sample(paths: list[Path], count: int | None, seed: int) -> list[Path]:
    """``count`` images drawn without replacement (all of them when count is None or larger)."""
    if count is None or count >= len(paths):
        return paths
    return sorted(random.Random(seed).sample(paths, count))


def run(
    data: Path, sets: list[str], count: int | None, seed: int, threshold: float, threads: int, progress: bool = True
) -> tuple[MiniFASNet, list[SetResult]]:
    from sdk.detect import YuNetDetector

    detector = YuNetDetector()
    liveness = MiniFASNet(threshold=threshold, threads=threads)
    results = []
    for name in sets:
        paths = sample(set_images(data, name), count, seed)
        results.append(measure_set(name, paths, detector, liveness, progress))
    return liveness, results


def report(liveness: MiniFASNet, results: list[SetResult], thresholds: list[float]) -> list[str]:
    """The figures as text lines: BPCER per set, per model, at other thresholds; shrink; ms."""
    names = [m.name for m in liveness.models]
    t = liveness.threshold
    lines = [
        f"BPCER = live faces rejected (score < threshold); default threshold {t:g}. "
        "No presentation-attack data here: APCER not measured.",
        "",
        f"{'set':8} {'images':>6} {'no face':>7} {'faces':>6} {'BPCER':>7} "
        + " ".join(f"{n + ' alone':>17}" for n in names)
        + f" {'median score':>12} {'ms/face':>8}",
    ]
    for r in results:
        alone = [f"{float((r.model_live[:, i] < 0.5).mean()) * 100:16.1f}%" for i in range(len(names))]
        lines.append(
            f"{r.name:8} {r.images:6d} {r.no_face:7d} {len(r.scores):6d} {r.bpcer(t) * 100:6.1f}% "
            + " ".join(alone)
            + f" {np.median(r.scores):12.3f} {np.median(r.ms):8.2f}"
        )
    lines += ["", "BPCER at other thresholds:", f"{'set':8} " + " ".join(f"{x:>7g}" for x in thresholds)]
    for r in results:
        lines.append(f"{r.name:8} " + " ".join(f"{r.bpcer(x) * 100:6.1f}%" for x in thresholds))
    lines += ["", "crop scale shrunk to fit the image (share of faces; median effective / requested scale):"]
    for r in results:
        parts = [
            f"{n} ({m.scale:g}x): {float((r.shrink[:, i] < 1 - 1e-9).mean()) * 100:.0f}%, "
            f"median {np.median(r.shrink[:, i]) * m.scale:.2f}x"
            for i, (n, m) in enumerate(zip(names, liveness.models))
        ]
        lines.append(f"{r.name:8} " + "; ".join(parts))
    bins = [0.0, 1.5, 2.0, 2.5, np.inf]
    lines += ["", "BPCER by the crop scale the models got (the smaller of the two; faces in the bin):"]
    lines.append(f"{'set':8} " + " ".join(f"{f'{lo:g}-{hi:g}x' if hi < np.inf else f'>= {lo:g}x':>16}" for lo, hi in zip(bins, bins[1:])))
    for r in results:
        got = (r.shrink * [m.scale for m in liveness.models]).min(axis=1)
        cells = []
        for lo, hi in zip(bins, bins[1:]):
            inside = (got >= lo) & (got < hi)
            cells.append(f"{(r.scores[inside] < t).mean() * 100:6.1f}% ({inside.sum():5d})" if inside.any() else f"{'-':>16}")
        lines.append(f"{r.name:8} " + " ".join(f"{c:>16}" for c in cells))
    all_ms = np.concatenate([r.ms for r in results]) if results else np.zeros(0)
    if len(all_ms):
        detect = np.concatenate([r.detect_ms for r in results])
        # Every crop costs the same work, so on a shared machine the fastest 5% estimate the quiet cost.
        fast, fast_detect = np.percentile(all_ms, 5), np.percentile(detect, 5)
        lines += [
            "",
            f"ms per face (crop + {len(names)} models, batch 1) over {len(all_ms)} faces: median {np.median(all_ms):.2f}, "
            f"fastest 5% {fast:.2f}; YuNet on the same images in this run: median {np.median(detect):.2f}, "
            f"fastest 5% {fast_detect:.2f} (liveness / detection: {np.median(all_ms) / np.median(detect):.2f}x median, "
            f"{fast / fast_detect:.2f}x fastest 5%)",
        ]
    return lines


def summary(liveness: MiniFASNet, results: list[SetResult], thresholds: list[float]) -> dict:
    return {
        "threshold": liveness.threshold,
        "models": [{"name": m.name, "crop_scale": m.scale, "path": str(m.path)} for m in liveness.models],
        "apcer": "not measured: no presentation-attack data set available",
        "sets": {
            r.name: {
                "images": r.images,
                "no_face": r.no_face,
                "faces": int(len(r.scores)),
                "bpcer": r.bpcer(liveness.threshold),
                "bpcer_at": {str(x): r.bpcer(x) for x in thresholds},
                "bpcer_alone": {m.name: float((r.model_live[:, i] < 0.5).mean()) for i, m in enumerate(liveness.models)},
                "shrunk_share": {m.name: float((r.shrink[:, i] < 1 - 1e-9).mean()) for i, m in enumerate(liveness.models)},
                "median_score": float(np.median(r.scores)) if len(r.scores) else None,
                "ms_per_face_median": float(np.median(r.ms)) if len(r.ms) else None,
                "ms_per_face_p5": float(np.percentile(r.ms, 5)) if len(r.ms) else None,
                "detect_ms_median": float(np.median(r.detect_ms)) if len(r.detect_ms) else None,
            }
            for r in results
        },
    }
