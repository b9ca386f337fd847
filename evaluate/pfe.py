"""Evaluations of Probabilistic Face Embeddings on real faces (LFW), and MLS calibration::

    facesdk eval pfe lfw|degraded|risk|sets|all [--model PATH] [--out DIR]
    facesdk calibrate --scoring mls [--model PATH] [--set celeba] [--far 1e-3] [--write]

calibrate (in ``cli.calibrate``, from this module's FaceBank and :func:`store_calibration`)
    MLS thresholds per FAR over all pairs of a labelled set (CelebA by default, as
    ``facesdk calibrate`` for L2) and the quality below which 1/2/5/10/20 % of its faces fall;
    ``--write`` stores ``mls_threshold``, ``mls_threshold_far``, ``mls_threshold_table``,
    ``mls_threshold_calibrated_on`` and ``quality_reject_table`` in the model's metadata
    (:func:`store_calibration`, which the tests' small PFE model uses too).

lfw
    LFW ``pairs.txt``, 10 folds (threshold from the other 9): squared L2 on mu vs MLS:
    accuracy +- std, TAR at FAR 1e-3, AUC. ROC plot.
degraded
    The same pairs with one (a seeded random side per pair) or both images degraded: Gaussian
    blur, downscaling of the face to a width of 48/32/24 px and back, JPEG quality 10/5.
    10-fold accuracy per level for both scores; FAR and TAR at the clean pairs' threshold kept
    fixed as images degrade; and the paper's feature-ambiguity "dilemma" plot: genuine and
    impostor score means +- std as degradation grows, cosine vs MLS.
risk
    Risk-controlled recognition: the pairs.txt images, each clean or (p = 1/2, seeded) degraded
    by one of the degradations above; the lowest-quality fraction of faces (0..30 %) is
    rejected by PFE quality, by the detector's score on the degraded image, or at random, and
    TAR at FAR 1e-3 is measured over *all* pairs of the remaining faces (millions of impostor
    pairs: pairs.txt's 3,000 would put FAR 1e-3 at three impostors).
sets
    Set-to-set: the people of the test pairs with >= 10 images (all 158 such LFW people; a PFE
    head trained by ``train.pfe`` never sees them), each person's images shuffled (seeded) and cut
    into templates of k images; every template pair is scored: mean embedding + L2 vs PFE
    fusion (closed form, min sigma; mu re-normalised or not) + MLS. TAR at FAR 1e-3 / 1e-4, on
    clean images and on the clean/degraded mix.

Alignment: every face, degraded or not, is cut with the landmarks detected on the *clean*
image (degradation is applied to the whole image, then the clean landmarks align it). This
isolates recognition from detection, which fails or drifts on heavily degraded images; the
detector is still run on each degraded image, for its score (0 when it finds no face
overlapping the clean one), which the risk evaluation uses as the baseline quality measure.
A clean image where no face is found is aligned with the mean landmarks of the others (LFW
faces are centred), as :mod:`evaluate.lfw` does.

Embeddings are cached per model (weights only: recalibrating its metadata keeps the cache),
detector, degradation and image in ``$FACESDK_HOME/pfe_eval`` (default
``~/.cache/facesdk/pfe_eval``), so re-runs are fast. Outputs: tables on stdout (also written to
``DIR/summary.txt``), PNG plots and JSON results in ``DIR``.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from evaluate import lfw
from evaluate.calibration import Calibration
from sdk import kernels, pfe
from sdk.chips import ChipScheme, central_face, cut
from sdk.paths import home

__all__ = ["DEGRADATIONS", "KINDS", "degrade", "FaceBank", "Faces", "store_calibration"]

# Degradations by kind, mildest first. Levels: Gaussian sigma in image pixels (LFW faces are
# ~110 px wide in 250 px images, about the chip's scale); face width in pixels after
# downscaling; JPEG quality.
KINDS: dict[str, tuple[tuple[str, float], ...]] = {
    "blur": (("blur2", 2.0), ("blur4", 4.0), ("blur6", 6.0)),
    "down": (("down48", 48), ("down32", 32), ("down24", 24)),
    "jpeg": (("jpeg10", 10), ("jpeg5", 5)),
}
KIND_LABEL = {"blur": "Gaussian blur (sigma px)", "down": "face downscaled to (px wide)", "jpeg": "JPEG quality"}
DEGRADATIONS: dict[str, tuple[str, float]] = {name: (kind, level) for kind, levels in KINDS.items() for name, level in levels}
VARIANTS = ("clean", *DEGRADATIONS)
FAR = 1e-3
REJECT = (0.0, 0.05, 0.10, 0.15, 0.20, 0.25, 0.30)
# calibrate's defaults: the FARs of mls_threshold_table and the fractions of quality_reject_table.
CALIBRATION_FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
QUALITY_REJECT = (0.01, 0.02, 0.05, 0.1, 0.2)
TEMPLATE_SIZES = (1, 2, 4, 8)


def default_cache_dir() -> Path:
    return home() / "pfe_eval"


def degrade(image: np.ndarray, variant: str, face_width: float) -> np.ndarray:
    """``image`` (BGR uint8) degraded by ``variant`` (a key of DEGRADATIONS, or "clean").

    Deterministic. ``face_width``: the face's width in pixels, for the downscaling.
    """
    if variant == "clean":
        return image
    if variant not in DEGRADATIONS:
        raise ValueError(f"unknown degradation {variant!r}; choose from {', '.join(VARIANTS)}")
    kind, level = DEGRADATIONS[variant]
    if kind == "blur":
        return cv2.GaussianBlur(image, (0, 0), sigmaX=level, sigmaY=level, borderType=cv2.BORDER_REFLECT)
    if kind == "down":
        factor = level / max(float(face_width), 1.0)
        if factor >= 1:
            return image
        h, w = image.shape[:2]
        small = cv2.resize(image, (max(1, round(w * factor)), max(1, round(h * factor))), interpolation=cv2.INTER_AREA)
        return cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    ok, code = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(level)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return cv2.imdecode(code, cv2.IMREAD_COLOR)


# --------------------------------------------------------------------------------- faces + cache


@dataclass(frozen=True)
class Faces:
    """Aligned to a list of images: PFE outputs, the detector's score, clean-detection failures."""

    mu: np.ndarray  # float32 [n, D]
    sigma_sq: np.ndarray  # float32 [n, D]
    det_score: np.ndarray  # float32 [n]: detector score on this (degraded) image, 0 = no face found
    failed: np.ndarray  # bool [n]: no face found on the clean image (mean landmarks used)

    @property
    def quality(self) -> np.ndarray:
        return np.asarray(pfe.quality(self.sigma_sq))

    def take(self, rows: np.ndarray) -> Faces:
        return Faces(self.mu[rows], self.sigma_sq[rows], self.det_score[rows], self.failed[rows])


class _Store:
    """Per-image rows of named arrays, persisted as one .npz (written atomically)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.rows: dict[str, dict[str, np.ndarray]] = {}
        self.dirty = False
        if path is not None and path.is_file():
            with np.load(path) as z:
                fields = [k for k in z.files if k != "paths"]
                columns = {k: z[k] for k in fields}
                for i, p in enumerate(z["paths"].tolist()):
                    self.rows[p] = {k: columns[k][i] for k in fields}

    def save(self) -> None:
        if self.path is None or not self.dirty or not self.rows:
            return
        paths = list(self.rows)
        fields = list(next(iter(self.rows.values())))
        arrays = {k: np.stack([self.rows[p][k] for p in paths]) for k in fields}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + f".{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.savez(f, paths=np.array(paths), **arrays)
        os.replace(tmp, self.path)
        self.dirty = False


def model_tag(path: Path) -> str:
    """Name + hash of a model's graph and weights, not its metadata (recalibrating keeps the cache)."""
    import onnx

    proto = onnx.load_model(str(path))
    name = next((p.value for p in proto.metadata_props if p.key == "model_name"), path.stem)
    del proto.metadata_props[:]
    return f"{name}-{hashlib.sha256(proto.SerializeToString()).hexdigest()[:12]}"


class FaceBank:
    """Detects (once, clean images), degrades, aligns and embeds images with a PFE model, cached."""

    def __init__(
        self,
        embedder,
        detector,
        cache_dir: Path | None = None,
        batch: int = 32,
        progress: bool = True,
        use_cache: bool = True,
    ) -> None:
        if not getattr(embedder, "has_uncertainty", False):
            raise ValueError(f"{embedder.path} has no sigma_sq output: the PFE evaluations need a PFE model")
        self.embedder, self.detector, self.batch, self.progress = embedder, detector, batch, progress
        root = (cache_dir or default_cache_dir()) if use_cache else None
        self._root = root
        self._tag = model_tag(Path(embedder.path)) + f"-{detector.name}"
        self.chip = ChipScheme.parse(embedder.metadata["chip_scheme"])
        self._landmarks = _Store(root / f"landmarks-{detector.name}.npz" if root else None)
        self._stores: dict[str, _Store] = {}

    def _store(self, variant: str) -> _Store:
        if variant not in self._stores:
            self._stores[variant] = _Store(self._root / self._tag / f"{variant}.npz" if self._root else None)
        return self._stores[variant]

    def _detect_clean(self, paths: Sequence[Path]) -> None:
        from tqdm import tqdm

        missing = [p for p in paths if str(p) not in self._landmarks.rows]
        for i, path in enumerate(tqdm(missing, desc=f"detect ({self.detector.name})", unit="img", disable=not self.progress or not missing)):
            image = _read(path)
            face = central_face(self.detector.detect(image), image.shape)
            if face is None:
                row = {"landmarks": np.full((5, 2), np.nan, np.float32), "box": np.full(4, np.nan, np.float32), "score": np.float32(0)}
            else:
                row = {"landmarks": face.landmarks.astype(np.float32), "box": face.box.astype(np.float32), "score": np.float32(face.score)}
            self._landmarks.rows[str(path)] = row
            self._landmarks.dirty = True
            if (i + 1) % 2000 == 0:
                self._landmarks.save()
        self._landmarks.save()

    def faces(self, paths: Sequence[Path], variant: str) -> Faces:
        """The faces of ``paths`` degraded by ``variant`` ("clean" or a key of DEGRADATIONS)."""
        from tqdm import tqdm

        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; choose from {', '.join(VARIANTS)}")
        paths = list(paths)
        self._detect_clean(paths)
        marks = [self._landmarks.rows[str(p)] for p in paths]
        found = np.array([np.isfinite(m["landmarks"]).all() for m in marks])
        if not found.any():
            raise RuntimeError(f"{self.detector.name} found no face in any of {len(paths)} images")
        mean_landmarks = np.mean([m["landmarks"] for m, ok in zip(marks, found) if ok], axis=0)
        mean_box = np.mean([m["box"] for m, ok in zip(marks, found) if ok], axis=0)
        store = self._store(variant)
        todo = [i for i, p in enumerate(paths) if str(p) not in store.rows]
        chips: list[np.ndarray] = []
        pending: list[tuple[str, float]] = []  # (path, detector score) of the chips waiting

        def flush() -> None:
            if chips:
                mu, sigma_sq = self.embedder.embed_with_uncertainty(np.stack(chips))
                for (key, score), m, s in zip(pending, mu, sigma_sq):
                    store.rows[key] = {"mu": m, "sigma_sq": s, "det_score": np.float32(score)}
                store.dirty = True
                chips.clear()
                pending.clear()

        desc = f"embed {variant}"
        for n, i in enumerate(tqdm(todo, desc=desc, unit="img", disable=not self.progress or not todo)):
            landmarks = marks[i]["landmarks"] if found[i] else mean_landmarks
            box = marks[i]["box"] if found[i] else mean_box
            image = degrade(_read(paths[i]), variant, box[2] - box[0])
            score = float(marks[i]["score"]) if variant == "clean" else _score_near(self.detector.detect(image), box)
            chips.append(cut(image, landmarks, self.detector.scheme, self.chip))
            pending.append((str(paths[i]), score))
            if len(chips) == self.batch:
                flush()
            if (n + 1) % 2000 == 0:
                store.save()
        flush()
        store.save()
        rows = [store.rows[str(p)] for p in paths]
        return Faces(
            mu=np.stack([r["mu"] for r in rows]).astype(np.float32),
            sigma_sq=np.stack([r["sigma_sq"] for r in rows]).astype(np.float32),
            det_score=np.array([r["det_score"] for r in rows], np.float32),
            failed=~found,
        )

    def mixed(self, paths: Sequence[Path], variants: Sequence[str]) -> Faces:
        """Image i in variant ``variants[i]``."""
        paths = list(paths)
        if len(variants) != len(paths):
            raise ValueError(f"{len(variants)} variants for {len(paths)} images")
        dim = self.embedder.embedding_dim
        out = Faces(np.zeros((len(paths), dim), np.float32), np.ones((len(paths), dim), np.float32), np.zeros(len(paths), np.float32), np.zeros(len(paths), bool))
        for variant in dict.fromkeys(variants):
            rows = np.flatnonzero(np.asarray(variants) == variant)
            part = self.faces([paths[i] for i in rows], variant)
            out.mu[rows], out.sigma_sq[rows], out.det_score[rows], out.failed[rows] = part.mu, part.sigma_sq, part.det_score, part.failed
        return out


def _read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot read image {path}")
    return image


def _score_near(detections: list, box: np.ndarray) -> float:
    """The best detector score among detections overlapping ``box`` (IoU >= 0.3), else 0."""
    if not detections:
        return 0.0
    iou = pfe.box_iou(np.stack([d.box for d in detections]), box[None])[:, 0]
    scores = [d.score for d, o in zip(detections, iou) if o >= 0.3]
    return float(max(scores)) if scores else 0.0


# ------------------------------------------------------------------------------------ metrics


def tar_at_far(similarity_genuine: np.ndarray, similarity_impostor: np.ndarray, far: float) -> float:
    """TAR at the strictest threshold that accepts at most ``far`` of the impostors
    (accept if similarity > the (far * n)-th highest impostor score)."""
    n = len(similarity_impostor)
    if n == 0 or len(similarity_genuine) == 0:
        return math.nan
    allowed = int(math.floor(far * n))
    if allowed >= n:
        return 1.0
    cut = -np.partition(-similarity_impostor, allowed)[allowed]  # the (allowed+1)-th highest
    return float(np.mean(similarity_genuine > cut))


def pair_scores(a: Faces, b: Faces) -> tuple[np.ndarray, np.ndarray]:
    """(squared L2 of mu, MLS) of row i of a with row i of b."""
    diff = a.mu.astype(np.float64) - b.mu
    return (diff * diff).sum(1), pfe.mls_pairs(a.mu, a.sigma_sq, b.mu, b.sigma_sq)


class Report:
    """Prints lines and keeps them for summary.txt."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# ------------------------------------------------------------------------------------- context


@dataclass
class Context:
    bank: FaceBank
    data: Path
    out: Path
    pairs_file: Path
    seed: int
    say: Report
    results: dict

    def pairs(self) -> lfw.Pairs:
        return lfw.read_pairs(self.pairs_file, self.data / "lfw" / "images_deepfunneled")


def _rows(images: list[Path], wanted: list[Path]) -> np.ndarray:
    index = {p: i for i, p in enumerate(images)}
    return np.array([index[p] for p in wanted])


# ------------------------------------------------------------------------------------------- lfw


def eval_lfw(ctx: Context) -> None:
    pairs = ctx.pairs()
    images = pairs.images()
    faces = ctx.bank.faces(images, "clean")
    left, right = faces.take(_rows(images, pairs.left)), faces.take(_rows(images, pairs.right))
    l2, score = pair_scores(left, right)
    say = ctx.say
    say(f"\n== lfw: {ctx.pairs_file.name}, {len(pairs)} pairs, {len(images)} images ({int(faces.failed.sum())} without a face, mean landmarks) ==")
    say(f"{'scoring':<20} {'accuracy %':>14} {'TAR@FAR=1e-3 %':>15} {'AUC':>8} {'EER %':>7}")
    results, curves = {}, {}
    for name, dist in (("squared L2 on mu", l2), ("MLS", -score)):
        v = lfw.evaluate(dist, pairs, far=FAR)
        say(f"{name:<20} {100 * v.accuracy:8.2f} ± {100 * v.accuracy_std:4.2f} {100 * v.tar_at_far:15.2f} {v.auc:8.4f} {100 * v.eer:7.2f}")
        results[name] = {"accuracy": v.accuracy, "accuracy_std": v.accuracy_std, "tar_at_far_1e-3": v.tar_at_far, "auc": v.auc, "eer": v.eer}
        curves[name] = (v.roc_far, v.roc_tar)
    say("(paper, Shi & Jain 2019, LFW accuracy: L2/cosine -> MLS 99.20 -> 99.47 (CASIA-WebFace) and 99.72 -> 99.83 (MS-Celeb-1M))")
    q = faces.quality
    say(f"quality of the {len(q)} clean faces: mean {q.mean():.3f}, 5th-95th percentile {np.percentile(q, 5):.3f} .. {np.percentile(q, 95):.3f}")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, (f, t) in curves.items():
        ax.plot(np.maximum(f, 1e-4), t, label=f"{name} (AUC {results[name]['auc']:.4f})")
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1)
    ax.set_xlabel("false accept rate")
    ax.set_ylabel("true accept rate")
    ax.set_title(f"LFW {ctx.pairs_file.name}: squared L2 vs MLS")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right")
    path = ctx.out / "lfw_roc.png"
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    say(f"plot: {path}")
    ctx.results["lfw"] = results


# ---------------------------------------------------------------------------------- degraded


def eval_degraded(ctx: Context) -> None:
    pairs = ctx.pairs()
    images = pairs.images()
    li, ri = _rows(images, pairs.left), _rows(images, pairs.right)
    clean = ctx.bank.faces(images, "clean")
    # Which side of each pair is degraded in the one-sided setting (seeded, the same for every level).
    left_side = np.random.default_rng(ctx.seed).integers(0, 2, len(pairs)).astype(bool)
    say = ctx.say
    say(f"\n== degraded: {ctx.pairs_file.name}, {len(pairs)} pairs; one = one image of each pair degraded (seeded side), both = both ==")
    say("aligned with the clean image's landmarks; accuracy: 10-fold, threshold from the other 9 folds")
    header = (
        f"{'degradation':<12} {'side':<5} {'L2 acc %':>13} {'MLS acc %':>13} {'L2 TAR %':>9} {'MLS TAR %':>9}"
        f" {'cos gen':>13} {'cos imp':>13} {'MLS gen':>15} {'MLS imp':>15}"
    )
    say(header)
    results: dict[str, dict] = {}
    fixed: dict[str, float] = {}  # accuracy-optimal thresholds on the clean pairs
    for variant in VARIANTS:
        faces = clean if variant == "clean" else ctx.bank.faces(images, variant)
        for side in ("one", "both") if variant != "clean" else ("none",):
            if side == "one":
                a = _mix(faces.take(li), clean.take(li), left_side)
                b = _mix(faces.take(ri), clean.take(ri), ~left_side)
            else:
                a, b = faces.take(li), faces.take(ri)
            l2, score = pair_scores(a, b)
            row = {}
            for name, dist in (("l2", l2), ("mls", -score)):
                v = lfw.evaluate(dist, pairs, far=FAR)
                if variant == "clean":
                    fixed[name] = v.threshold  # the operating point a deployment would keep
                accept = dist <= fixed[name]
                row[name] = {
                    "accuracy": v.accuracy,
                    "accuracy_std": v.accuracy_std,
                    "tar": v.tar_at_far,
                    "far_at_clean_threshold": float(accept[~pairs.same].mean()),
                    "tar_at_clean_threshold": float(accept[pairs.same].mean()),
                }
            cos = 1 - l2 / 2  # unit mu: cosine similarity
            g, im = pairs.same, ~pairs.same
            row["cos"] = {"genuine": _spread(cos[g]), "impostor": _spread(cos[im])}
            row["mls_scores"] = {"genuine": _spread(score[g]), "impostor": _spread(score[im])}
            results[f"{variant}/{side}"] = row
            say(
                f"{variant:<12} {side:<5} {_pm(row['l2'])} {_pm(row['mls'])} {100 * row['l2']['tar']:9.2f} {100 * row['mls']['tar']:9.2f}"
                f" {_ms(row['cos']['genuine'], 3)} {_ms(row['cos']['impostor'], 3)} {_ms(row['mls_scores']['genuine'], 1)} {_ms(row['mls_scores']['impostor'], 1)}"
            )
    say("cos = cosine similarity of mu (1 - d/2), MLS = mutual likelihood score: mean±std over genuine (gen) / impostor (imp) pairs")
    say(
        f"\nthe same pairs at the clean pairs' accuracy-optimal threshold (L2 {fixed['l2']:.4f}, MLS {-fixed['mls']:.2f}), "
        "kept fixed as images degrade: FAR % / TAR %"
    )
    say(f"{'degradation':<12} {'side':<5} {'L2 FAR':>8} {'L2 TAR':>8} {'MLS FAR':>8} {'MLS TAR':>8}")
    for key, row in results.items():
        variant, side = key.split("/")
        cells = [f"{100 * row[n][m]:8.2f}" for n in ("l2", "mls") for m in ("far_at_clean_threshold", "tar_at_clean_threshold")]
        say(f"{variant:<12} {side:<5} " + " ".join(cells))
    ctx.results["degraded"] = results
    _plot_dilemma(ctx, results)
    _plot_degraded_accuracy(ctx, results)


def _mix(degraded: Faces, clean: Faces, use_degraded: np.ndarray) -> Faces:
    pick = use_degraded[:, None]
    return Faces(
        np.where(pick, degraded.mu, clean.mu),
        np.where(pick, degraded.sigma_sq, clean.sigma_sq),
        np.where(use_degraded, degraded.det_score, clean.det_score),
        clean.failed,
    )


def _spread(x: np.ndarray) -> dict[str, float]:
    return {"mean": float(np.mean(x)), "std": float(np.std(x)), "p10": float(np.percentile(x, 10)), "p90": float(np.percentile(x, 90))}


def _pm(r: dict) -> str:
    return f"{100 * r['accuracy']:6.2f} ± {100 * r['accuracy_std']:4.2f}"


def _ms(r: dict, digits: int) -> str:
    width = 6 if digits == 3 else 7
    return f"{r['mean']:{width}.{digits}f}±{r['std']:<{width - 1}.{digits}f}"


def _levels(kind: str) -> tuple[list[str], list[str]]:
    names = ["clean"] + [n for n, _ in KINDS[kind]]
    labels = ["clean"] + [f"{level:g}" for _, level in KINDS[kind]]
    return names, labels


def _plot_dilemma(ctx: Context, results: dict) -> None:
    plt = _plt()
    fig, axes = plt.subplots(2, len(KINDS), figsize=(4.2 * len(KINDS), 7.5))
    for col, kind in enumerate(KINDS):
        names, labels = _levels(kind)
        x = np.arange(len(names))
        for row, (key, title) in enumerate((("cos", "cosine similarity of mu"), ("mls_scores", "MLS"))):
            ax = axes[row, col]
            for who, colour in (("genuine", "tab:green"), ("impostor", "tab:red")):
                stats = [results[f"{n}/{'none' if n == 'clean' else 'both'}"][key][who] for n in names]
                mean = np.array([s["mean"] for s in stats])
                std = np.array([s["std"] for s in stats])
                ax.plot(x, mean, "o-", color=colour, label=who)
                ax.fill_between(x, mean - std, mean + std, color=colour, alpha=0.2)
            ax.set_xticks(x, labels)
            ax.set_xlabel(KIND_LABEL[kind])
            ax.set_ylabel(title)
            ax.grid(alpha=0.3)
            if row == 0 and col == 0:
                ax.legend()
    fig.suptitle("Both images degraded: genuine vs impostor scores (mean ± std)")
    fig.tight_layout()
    path = ctx.out / "degraded_dilemma.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    ctx.say(f"plot: {path}")


def _plot_degraded_accuracy(ctx: Context, results: dict) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, len(KINDS), figsize=(4.2 * len(KINDS), 4), sharey=True)
    for col, kind in enumerate(KINDS):
        names, labels = _levels(kind)
        x = np.arange(len(names))
        ax = axes[col]
        for side, style in (("one", "--"), ("both", "-")):
            for score, colour in (("l2", "tab:blue"), ("mls", "tab:orange")):
                keys = [f"{n}/{'none' if n == 'clean' else side}" for n in names]
                acc = [100 * results[k][score]["accuracy"] for k in keys]
                ax.plot(x, acc, style, marker="o", color=colour, label=f"{'L2' if score == 'l2' else 'MLS'}, {side} degraded")
        ax.set_xticks(x, labels)
        ax.set_xlabel(KIND_LABEL[kind])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("LFW 10-fold accuracy %")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path = ctx.out / "degraded_accuracy.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    ctx.say(f"plot: {path}")


# ---------------------------------------------------------------------------------------- risk


def _mix_variants(n: int, seed: int) -> np.ndarray:
    """Per image: "clean" with probability 1/2, else one of the degradations, uniformly (seeded)."""
    rng = np.random.default_rng(seed)
    degraded = np.array(list(DEGRADATIONS))
    choice = degraded[rng.integers(0, len(degraded), n)]
    return np.where(rng.random(n) < 0.5, "clean", choice)


def _upper(matrix: np.ndarray) -> np.ndarray:
    return matrix[np.triu_indices(len(matrix), k=1)]


def eval_risk(ctx: Context) -> None:
    pairs = ctx.pairs()
    images = pairs.images()
    variants = _mix_variants(len(images), ctx.seed + 1)
    faces = ctx.bank.mixed(images, variants)
    labels = np.unique([p.parent.name for p in images], return_inverse=True)[1]
    n = len(images)
    iu = np.triu_indices(n, k=1)
    same = (labels[:, None] == labels[None, :])[iu]
    sim = {
        "L2": -_upper(kernels.sq_l2(faces.mu, faces.mu)),
        "MLS": _upper(pfe.mls(faces.mu, faces.sigma_sq, faces.mu, faces.sigma_sq)),
    }
    measures = {
        "PFE quality": faces.quality,
        "detector score": faces.det_score.astype(np.float64),
        "random": np.random.default_rng(ctx.seed + 2).random(n),
    }
    is_degraded = variants != "clean"
    say = ctx.say
    say(
        f"\n== risk: {n} LFW images of {ctx.pairs_file.name}, {int(is_degraded.sum())} degraded (seeded mix), "
        f"all {len(same):,} pairs ({int(same.sum()):,} genuine); TAR % at FAR=1e-3 after rejecting the lowest-quality faces =="
    )
    say("filter by:            " + "".join(f"{m:>28}" for m in measures))
    say(f"{'rejected':<10} {'faces':>7}  " + "".join(f"{'L2':>9} {'MLS':>8} {'degr.%':>8}  " for _ in measures).rstrip())
    results: dict[str, dict] = {m: {} for m in measures}
    for fraction in REJECT:
        cells = []
        for measure, value in measures.items():
            # Reject the int(f * n) lowest; ties broken by a stable sort on the image order.
            order = np.argsort(value, kind="stable")
            keep = np.ones(n, bool)
            cut = int(round(fraction * n))
            keep[order[:cut]] = False
            kept_pair = keep[iu[0]] & keep[iu[1]]
            row = {}
            for score, s in sim.items():
                s_kept, same_kept = s[kept_pair], same[kept_pair]
                row[score] = tar_at_far(s_kept[same_kept], s_kept[~same_kept], FAR)
            row["degraded_share_of_rejected"] = float(is_degraded[~keep].mean()) if cut else math.nan
            results[measure][f"{fraction:g}"] = row
            share = "" if not cut else f"{100 * row['degraded_share_of_rejected']:.0f}"
            cells.append(f"{100 * row['L2']:9.2f} {100 * row['MLS']:8.2f} {share:>8}  ")
        say(f"{100 * fraction:>8.0f} % {int(keep.sum()):>7}  " + "".join(cells).rstrip())
    say("degr.% = share of the rejected faces that were degraded (half of all faces are)")
    ctx.results["risk"] = results
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    colours = {"PFE quality": "tab:orange", "detector score": "tab:blue", "random": "tab:gray"}
    for measure in measures:
        for score, style in (("MLS", "-"), ("L2", "--")):
            ax.plot(
                [100 * f for f in REJECT],
                [100 * results[measure][f"{f:g}"][score] for f in REJECT],
                style,
                marker="o",
                color=colours[measure],
                label=f"filter: {measure}, score: {score}",
            )
    ax.set_xlabel("faces rejected (lowest quality first), %")
    ax.set_ylabel("TAR % at FAR = 1e-3")
    ax.set_title("LFW clean/degraded mix: risk-controlled recognition")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = ctx.out / "risk.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    say(f"plot: {path}")


# ---------------------------------------------------------------------------------------- sets


def lfw_people(data: Path, min_images: int) -> dict[str, list[Path]]:
    root = data / "lfw"
    rows = [line.split() for line in (root / "lfw-names.txt").read_text().splitlines() if line.strip()]
    people = sorted(name for name, count in rows if int(count) >= min_images)
    return {name: sorted((root / "images_deepfunneled" / name).glob("*.jpg")) for name in people}


@dataclass(frozen=True)
class Method:
    name: str
    fuse: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    score: str  # "l2" or "mls"


def _mean_fusion(mu: np.ndarray, sigma_sq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    m = mu.astype(np.float64).mean(0)
    return (m / np.linalg.norm(m)).astype(np.float32), sigma_sq.min(0)


METHODS = (
    Method("mean mu + L2", _mean_fusion, "l2"),
    Method("PFE-weighted mu + L2", lambda m, s: pfe.fuse(m, s, "closed_form", True), "l2"),
    Method("closed form + MLS", lambda m, s: pfe.fuse(m, s, "closed_form", True), "mls"),
    Method("closed form, raw mu + MLS", lambda m, s: pfe.fuse(m, s, "closed_form", False), "mls"),
    Method("min sigma + MLS", lambda m, s: pfe.fuse(m, s, "min_sigma", True), "mls"),
    Method("min sigma, raw mu + MLS", lambda m, s: pfe.fuse(m, s, "min_sigma", False), "mls"),
)


def templates(people: dict[str, list[Path]], k: int, seed: int) -> list[tuple[int, list[int]]]:
    """(person index, image rows) of each template: each person's images shuffled (seeded),
    cut into groups of k, the remainder dropped. Rows index the concatenated image list."""
    rng = np.random.default_rng(seed)
    out, start = [], 0
    for p, images in enumerate(people.values()):
        order = rng.permutation(len(images)) + start
        out += [(p, order[i : i + k].tolist()) for i in range(0, len(images) - k + 1, k)]
        start += len(images)
    return out


def eval_sets(ctx: Context, min_images: int = 10) -> None:
    # Only people of the test pairs: a PFE head trained on LFW (train.pfe) leaves them out.
    tested = {p.parent.name for p in ctx.pairs().images()}
    people = {name: ps for name, ps in lfw_people(ctx.data, min_images).items() if name in tested}
    images = [p for ps in people.values() for p in ps]
    conditions = {"clean": ctx.bank.faces(images, "clean"), "mixed": ctx.bank.mixed(images, _mix_variants(len(images), ctx.seed + 3))}
    say = ctx.say
    say(
        f"\n== sets: {len(people)} LFW people of {ctx.pairs_file.name} with >= {min_images} images ({len(images)} images); templates of k images "
        f"(seeded split), all template pairs; mixed = each image clean or (p=1/2) degraded =="
    )
    results: dict[str, dict] = {}
    for condition, faces in conditions.items():
        results[condition] = {}
        for far in (1e-3, 1e-4):
            say(f"{condition}: TAR % at FAR={far:g}")
            say(f"{'method':<28}" + "".join(f"{'k=' + str(k):>10}" for k in TEMPLATE_SIZES))
            for method in METHODS:
                cells = []
                for k in TEMPLATE_SIZES:
                    key = f"{method.name}/k={k}"
                    if key not in results[condition]:
                        results[condition][key] = _template_scores(faces, templates(people, k, ctx.seed), method)
                    cells.append(f"{100 * results[condition][key][f'{far:g}']:10.2f}")
                say(f"{method.name:<28}" + "".join(cells))
        counts = [len(templates(people, k, ctx.seed)) for k in TEMPLATE_SIZES]
        say(f"templates per k: {dict(zip(TEMPLATE_SIZES, counts))}")
    ctx.results["sets"] = results
    plt = _plt()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    for row, far in enumerate(("0.001", "0.0001")):
        for ax, condition in zip(axes[row], conditions):
            for method in METHODS:
                tar = [100 * results[condition][f"{method.name}/k={k}"][far] for k in TEMPLATE_SIZES]
                ax.plot(TEMPLATE_SIZES, tar, "o-", label=method.name)
            ax.set_xscale("log", base=2)
            ax.set_xticks(TEMPLATE_SIZES, [str(k) for k in TEMPLATE_SIZES])
            ax.set_title(f"LFW templates, {condition}")
            ax.set_ylabel(f"TAR % at FAR = {float(far):g}")
            ax.grid(alpha=0.3)
    for ax in axes[1]:
        ax.set_xlabel("images per template (k)")
    axes[1, 1].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = ctx.out / "sets.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    say(f"plot: {path}")


def _template_scores(faces: Faces, groups: list[tuple[int, list[int]]], method: Method) -> dict[str, float]:
    fused = [method.fuse(faces.mu[rows], faces.sigma_sq[rows]) for _, rows in groups]
    mu = np.stack([m for m, _ in fused])
    sigma_sq = np.stack([s for _, s in fused])
    owner = np.array([p for p, _ in groups])
    iu = np.triu_indices(len(groups), k=1)
    same = (owner[:, None] == owner[None, :])[iu]
    if method.score == "l2":
        sim = -kernels.sq_l2(mu, mu)[iu]
    else:
        sim = pfe.mls(mu, sigma_sq, mu, sigma_sq)[iu]
    return {f"{far:g}": tar_at_far(sim[same], sim[~same], far) for far in (1e-3, 1e-4)}


# ---------------------------------------------------------------------------------- calibrate


def store_calibration(
    path: str | os.PathLike[str],
    results: Sequence[Calibration],
    far: float,
    qualities: dict[float, float],
    calibrated_on: str,
) -> Calibration:
    """Write MLS thresholds (``results`` of :func:`evaluate.calibration.calibrate_mls`, the one at ``far`` as
    the default) and ``qualities`` (of :func:`evaluate.calibration.calibrate_quality`) into the model's
    metadata; returns the default one. ``calibrated_on`` says on which faces."""
    from sdk.embed import set_metadata

    chosen = next((c for c in results if math.isclose(c.target_far, far, rel_tol=1e-9)), None)
    if chosen is None:
        raise ValueError(f"FAR {far:g} is not among the calibrated ones {[c.target_far for c in results]}")
    set_metadata(
        path,
        mls_threshold=repr(chosen.threshold),  # exact: a rounded value could accept an impostor
        mls_threshold_far=f"{far:g}",
        mls_threshold_table=json.dumps({f"{c.target_far:g}": c.threshold for c in results}),
        mls_threshold_calibrated_on=calibrated_on,
        quality_reject_table=json.dumps({f"{r:g}": q for r, q in qualities.items()}),
    )
    return chosen
