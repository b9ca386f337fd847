"""Train the uncertainty head on cached features, and check that it means something.

Training follows the authors' configuration (config/sphere64_casia.py, network.py of
seasonSH/Probabilistic-Face-Embeddings): batches of 64 identities x 4 faces, loss = mean -MLS
over all genuine pairs of the batch, SGD with momentum 0.9, learning rate 1e-3 divided by 10 after
2/3 of the steps (theirs: 3,000 steps, drop at 2,000), weight decay 5e-4 on the two FC weights.
Each face comes as its clean chip or one of its degraded copies, drawn at random, so genuine
pairs mix qualities and the head learns which faces to trust. One departure, measured (see
:class:`PKSampler`): by default the 4 faces are 2 images x 2 different chips of each, so some
genuine pairs differ only by their degradations.

A fraction of the CelebA identities is held out (never trained on) for the sanity report:

* the harmonic mean of sigma^2 over dimensions (the paper's quality measure; higher = less
  certain) per degradation kind and level: it should rise with the strength of each degradation;
* verification AUC of MLS against -squared L2 on pairs of held-out faces (both sides degraded,
  one side degraded, both clean): MLS should separate genuine and impostor pairs at least as well.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from train.pfe.degrade import CLEAN, KINDS, LEVELS, parse_chain
from train.pfe.features import FeatureSet
from train.pfe.head import UncertaintyHead, mls_loss


@dataclass
class TrainConfig:
    identities_per_batch: int = 64  # P
    images_per_identity: int = 4  # K: chips per identity
    chips_per_image: int = 2  # 1: K distinct images (the paper); 2: K/2 images, two chips of each
    steps: int = 3000
    optimizer: str = "sgd"  # "sgd" (momentum, the authors') or "adam"
    lr: float = 1e-3
    lr_drop_at: float = 2 / 3  # fraction of the steps after which lr /= 10
    momentum: float = 0.9
    weight_decay: float = 5e-4  # on the FC weights only, as the authors' slim regulariser
    holdout_fraction: float = 0.2  # CelebA identities kept out of training for the sanity report
    eval_every: int = 250  # steps between held-out loss measurements (for the curve)
    seed: int = 0

    def check(self) -> None:
        if self.identities_per_batch < 2 or self.images_per_identity < 2:
            raise ValueError("batches need at least 2 identities x 2 images (genuine pairs)")
        if self.chips_per_image < 1 or self.images_per_identity % self.chips_per_image:
            raise ValueError(f"chips_per_image={self.chips_per_image} must divide K={self.images_per_identity}")
        if self.steps < 1 or self.lr <= 0 or not 0 < self.lr_drop_at <= 1:
            raise ValueError(f"bad schedule: steps={self.steps}, lr={self.lr}, lr_drop_at={self.lr_drop_at}")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if not 0 <= self.holdout_fraction < 1:
            raise ValueError(f"holdout_fraction must be in [0, 1), got {self.holdout_fraction}")


def split_identities(features: FeatureSet, holdout_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) boolean row masks; held-out identities are drawn from CelebA only
    (LFW's few extra people all go to training)."""
    celeba = sorted({i for i, s in zip(features.identity, features.source) if s == "celeba"})
    rng = np.random.default_rng(seed)
    count = int(round(holdout_fraction * len(celeba)))
    held = set(rng.choice(celeba, size=count, replace=False).tolist()) if count else set()
    held_rows = np.isin(features.row_identity, list(held))
    return ~held_rows, held_rows


class PKSampler:
    """Batches of P identities x K chips: K / ``chips_per_image`` distinct images of each identity,
    each as ``chips_per_image`` different chips of it (clean or degraded, drawn at random).

    ``chips_per_image=1`` is the paper's batch: every genuine pair is two images. With 2, a third
    of the pairs (K=4) are two chips of one image, whose distance is the degradations' alone: the
    head learns which degradations move the embedding (measured on held-out identities: the rank
    correlation of uncertainty with that movement rose from 0.40 to 0.55; MLS's AUC was unchanged).
    Only identities with at least two images are drawn; one with too few images repeats them.
    """

    def __init__(
        self, features: FeatureSet, rows: np.ndarray, p: int, k: int, seed: int, chips_per_image: int = 1
    ) -> None:
        if k % chips_per_image:
            raise ValueError(f"chips_per_image={chips_per_image} must divide K={k}")
        self.p, self.k, self.chips_per_image = p, k, chips_per_image
        self.rng = np.random.default_rng(seed)
        by_image: dict[int, list[int]] = defaultdict(list)
        for row in np.flatnonzero(rows):
            by_image[int(features.image[row])].append(int(row))
        by_identity: dict[str, list[np.ndarray]] = defaultdict(list)
        for image, image_rows in sorted(by_image.items()):
            by_identity[str(features.identity[image])].append(np.array(image_rows))
        self.identities = [images for _, images in sorted(by_identity.items()) if len(images) >= 2]
        if len(self.identities) < p:
            raise ValueError(f"{len(self.identities)} identities with 2+ images, fewer than P={p} per batch")

    def sample(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows [P*K], identity labels [P*K])."""
        rows, labels = [], []
        count, per = self.k // self.chips_per_image, self.chips_per_image
        for label, which in enumerate(self.rng.choice(len(self.identities), self.p, replace=False)):
            images = self.identities[which]
            for image in self.rng.choice(len(images), count, replace=len(images) < count):
                chips = images[image]
                rows += list(self.rng.choice(chips, per, replace=len(chips) < per))
                labels += [label] * per
        return np.array(rows), np.array(labels)


def _optimizer(head: UncertaintyHead, config: TrainConfig) -> torch.optim.Optimizer:
    decayed = [head.fc1.weight, head.fc2.weight]
    others = [p for p in head.parameters() if all(p is not d for d in decayed)]
    groups = [{"params": decayed, "weight_decay": config.weight_decay}, {"params": others, "weight_decay": 0.0}]
    if config.optimizer == "adam":
        return torch.optim.Adam(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)


def train_head(
    features: FeatureSet, config: TrainConfig, train_rows: np.ndarray, held_rows: np.ndarray | None = None,
    progress: bool = True,
) -> tuple[UncertaintyHead, dict[str, list[float]]]:
    """Train a head on ``train_rows`` of the cache; returns it (eval mode) and the loss history:
    ``step``/``loss`` every step, ``eval_step``/``eval_loss`` on held-out batches (if any)."""
    from tqdm import tqdm

    config.check()
    torch.manual_seed(config.seed)
    pooled = torch.from_numpy(np.ascontiguousarray(features.pooled, np.float32))
    mu = torch.from_numpy(np.ascontiguousarray(features.mu, np.float32))
    head = UncertaintyHead(pooled.shape[1], mu.shape[1])
    optimizer = _optimizer(head, config)
    drop = max(1, int(round(config.lr_drop_at * config.steps)))
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[drop], gamma=0.1)
    sampler = PKSampler(features, train_rows, config.identities_per_batch, config.images_per_identity, config.seed,
                        config.chips_per_image)
    held_batches: list[tuple[np.ndarray, np.ndarray]] = []
    if held_rows is not None and held_rows.any():
        # Fixed held-out batches (P limited by the held-out identities), the same at every check.
        held_ids = len(set(features.row_identity[held_rows]))
        held = PKSampler(features, held_rows, min(config.identities_per_batch, held_ids), config.images_per_identity,
                         config.seed + 1, config.chips_per_image)
        held_batches = [held.sample() for _ in range(8)]
    history: dict[str, list[float]] = {"step": [], "loss": [], "eval_step": [], "eval_loss": []}

    def held_out_loss() -> float:
        head.eval()
        with torch.no_grad():
            losses = [float(mls_loss(mu[r], head(pooled[r]), torch.from_numpy(lab))) for r, lab in held_batches]
        head.train()
        return float(np.mean(losses))

    head.train()
    # One thread: a step is a few small matrix products, and on a loaded 2-core machine torch's
    # second thread made each step 40x slower (188 ms instead of 4.8 ms), waiting for a core.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        bar = tqdm(range(1, config.steps + 1), desc="pfe head", unit="step", disable=not progress)
        for step in bar:
            rows, labels = sampler.sample()
            loss = mls_loss(mu[rows], head(pooled[rows]), torch.from_numpy(labels))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            history["step"].append(step)
            history["loss"].append(loss.item())
            if held_batches and (step % config.eval_every == 0 or step == config.steps):
                history["eval_step"].append(step)
                history["eval_loss"].append(held_out_loss())
            if step % 50 == 0 or step == config.steps:
                shown = {"loss": f"{np.mean(history['loss'][-50:]):.1f}"}
                if history["eval_loss"]:
                    shown["held-out"] = f"{history['eval_loss'][-1]:.1f}"
                bar.set_postfix(shown)
    finally:
        torch.set_num_threads(threads)
    return head.eval(), history


def plot_history(history: dict[str, list[float]], path: Path, title: str) -> Path | None:
    """Loss curve PNG (training loss, its 50-step mean, held-out loss); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    loss = np.array(history["loss"])
    window = min(50, len(loss))
    smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(history["step"], loss, color="0.8", lw=0.6, label="training batch")
    ax.plot(history["step"][window - 1 :], smooth, color="C0", label=f"training, mean of {window}")
    if history["eval_loss"]:
        ax.plot(history["eval_step"], history["eval_loss"], "o-", color="C3", label="held-out identities")
    ax.set_xlabel("step")
    ax.set_ylabel("-MLS per genuine pair")
    ax.set_title(title, fontsize=9)
    shown = np.concatenate([np.percentile(loss, [0, 99]), history["eval_loss"]])  # not the first steps' spike
    lo, hi = shown.min(), shown.max()
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# --- the sanity report ----------------------------------------------------------------------------


def predict_sigma_sq(head: UncertaintyHead, pooled: np.ndarray, batch: int = 4096) -> np.ndarray:
    head.eval()
    with torch.no_grad():
        parts = [head(torch.from_numpy(np.asarray(pooled[i : i + batch], np.float32))).numpy()
                 for i in range(0, len(pooled), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, head.dim), np.float32)


def harmonic_mean(sigma_sq: np.ndarray) -> np.ndarray:
    """Per row, D / sum(1 / sigma^2): the paper's uncertainty of a face (higher = worse quality)."""
    return sigma_sq.shape[1] / np.sum(1.0 / sigma_sq.astype(np.float64), axis=1)


def degradation_group(name: str) -> tuple[str, str]:
    """(kind, level) for the table: ("clean", ""), ("blur", "2"), ("mix", "blur+jpeg")."""
    chain = parse_chain(name)
    if not chain:
        return CLEAN, ""
    if len(chain) == 1:
        return chain[0].kind, f"{chain[0].level:g}"
    return "mix", "+".join(sorted(d.kind for d in chain))


def embedding_shift(features: FeatureSet) -> np.ndarray:
    """Per row, squared L2 between its mu and the mu of its image's clean chip (0 for clean rows):
    how far the degradation moved the embedding, what a quality measure should follow."""
    clean = np.flatnonzero(features.degradation == CLEAN)
    clean_mu = np.full((len(features.paths), features.mu.shape[1]), np.nan, np.float32)
    clean_mu[features.image[clean]] = features.mu[clean]
    return np.sum((features.mu - clean_mu[features.image]) ** 2, axis=1)


def quality_table(names: np.ndarray, uncertainty: np.ndarray, shift: np.ndarray) -> list[dict[str, Any]]:
    """Per degradation kind and level (LEVELS' order, weakest first): mean and median harmonic-mean
    sigma^2, and the mean embedding shift of the rows."""
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row, name in enumerate(names):
        groups[degradation_group(str(name))].append(row)
    order = [(CLEAN, "")] + [(k, f"{v:g}") for k in KINDS for v in LEVELS[k]]
    order += sorted(g for g in groups if g[0] == "mix")
    return [
        {"kind": kind, "level": level, "rows": len(groups[(kind, level)]),
         "mean": float(np.mean(uncertainty[groups[(kind, level)]])),
         "median": float(np.median(uncertainty[groups[(kind, level)]])),
         "shift": float(np.mean(shift[groups[(kind, level)]]))}
        for kind, level in order if groups.get((kind, level))
    ]


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Rank correlation (ties broken by order: the values here are continuous)."""
    rank_x, rank_y = np.argsort(np.argsort(x)), np.argsort(np.argsort(y))
    return float(np.corrcoef(rank_x, rank_y)[0, 1])


def rises_with_level(table: list[dict[str, Any]]) -> dict[str, bool]:
    """Per kind: does the mean uncertainty increase from each level to the next, and end above clean's?"""
    clean = next((r["mean"] for r in table if r["kind"] == CLEAN), None)
    out = {}
    for kind in KINDS:
        means = [r["mean"] for r in table if r["kind"] == kind]
        if clean is not None and means:
            out[kind] = bool(all(b > a for a, b in zip(means, means[1:])) and means[-1] > clean)
    return out


def _auc_tar(score: np.ndarray, same: np.ndarray, far: float = 1e-3) -> tuple[float, float]:
    """(AUC, TAR at FAR <= far) where a higher score means "same person"."""
    from evaluate.lfw import roc

    f, t, _ = roc(-score, same)
    return float(np.trapezoid(t, f)), float(t[np.flatnonzero(f <= far)[-1]])


def pair_scores(
    mu_a: np.ndarray, sigma_a: np.ndarray, mu_b: np.ndarray, sigma_b: np.ndarray, i: np.ndarray, j: np.ndarray,
    chunk: int = 20000,
) -> tuple[np.ndarray, np.ndarray]:
    """(-squared L2, MLS) of pairs (a[i], b[j]), in float64, in chunks to bound memory."""
    neg_l2, mls = [], []
    dim = mu_a.shape[1]
    for s in range(0, len(i), chunk):
        ii, jj = i[s : s + chunk], j[s : s + chunk]
        diff2 = (mu_a[ii].astype(np.float64) - mu_b[jj]) ** 2
        total = sigma_a[ii].astype(np.float64) + sigma_b[jj]
        neg_l2.append(-diff2.sum(1))
        mls.append(-0.5 * (diff2 / total + np.log(total)).sum(1) - 0.5 * dim * math.log(2 * math.pi))
    return np.concatenate(neg_l2), np.concatenate(mls)


def verification_report(
    features: FeatureSet, sigma_sq: np.ndarray, rows: np.ndarray, seed: int,
    discard: tuple[float, ...] = (0.1, 0.2, 0.3),
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """AUC and TAR@FAR=1e-3 of -squared L2 and of MLS on every pair of distinct held-out images,
    each image represented by one chip per setting: both degraded (a random degraded copy each),
    one degraded (the first image clean, the second degraded) and both clean.

    Second list, the paper's risk-controlled use: the "both degraded" pairs left after discarding
    the ``discard`` fraction of images whose chip is most uncertain (harmonic mean of sigma^2)."""
    rng = np.random.default_rng(seed)
    held = np.flatnonzero(rows)
    images = np.unique(features.image[held])
    clean_row, degraded_row = {}, {}
    for image in images:
        image_rows = held[features.image[held] == image]
        names = features.degradation[image_rows]
        clean_row[image] = image_rows[names == CLEAN][0]
        noisy = image_rows[names != CLEAN]
        degraded_row[image] = rng.choice(noisy) if len(noisy) else clean_row[image]
    a, b = np.triu_indices(len(images), k=1)
    identity = features.identity[images]
    same = identity[a] == identity[b]
    settings = {
        "both degraded": (degraded_row, degraded_row),
        "clean vs degraded": (clean_row, degraded_row),
        "both clean": (clean_row, clean_row),
    }
    out, scores = [], {}

    def row(name: str, keep: np.ndarray, neg_l2: np.ndarray, mls: np.ndarray) -> dict[str, Any]:
        auc_l2, tar_l2 = _auc_tar(neg_l2[keep], same[keep])
        auc_mls, tar_mls = _auc_tar(mls[keep], same[keep])
        return {"pairs": name, "genuine": int(same[keep].sum()), "impostor": int((~same[keep]).sum()),
                "auc_l2": auc_l2, "auc_mls": auc_mls, "tar_l2": tar_l2, "tar_mls": tar_mls}

    for name, (left, right) in settings.items():
        li = np.array([left[x] for x in images])[a]
        ri = np.array([right[x] for x in images])[b]
        scores[name] = pair_scores(features.mu, sigma_sq, features.mu, sigma_sq, li, ri)
        out.append(row(name, np.ones(len(a), bool), *scores[name]))
    uncertainty = harmonic_mean(sigma_sq[np.array([degraded_row[x] for x in images])])
    risk = []
    for fraction in discard:
        kept = uncertainty <= np.quantile(uncertainty, 1 - fraction)
        risk.append({**row(f"discard {fraction:.0%}", kept[a] & kept[b], *scores["both degraded"]),
                     "discard": fraction})
    return out, risk


def sanity_report(head: UncertaintyHead, features: FeatureSet, held_rows: np.ndarray, seed: int) -> dict[str, Any]:
    """The quality table and the verification comparison on the held-out rows."""
    sigma_sq = np.zeros((len(features), head.dim), np.float32)
    sigma_sq[held_rows] = predict_sigma_sq(head, features.pooled[held_rows])
    uncertainty, shift = harmonic_mean(sigma_sq[held_rows]), embedding_shift(features)[held_rows]
    table = quality_table(features.degradation[held_rows], uncertainty, shift)
    degraded = features.degradation[held_rows] != CLEAN
    return {
        "held_out_identities": len(set(features.row_identity[held_rows])),
        "held_out_images": len(set(features.image[held_rows])),
        "held_out_rows": int(held_rows.sum()),
        "quality": table,
        "rises_with_level": rises_with_level(table),
        "spearman_uncertainty_shift": spearman(uncertainty[degraded], shift[degraded]),
        **dict(zip(("verification", "risk"), verification_report(features, sigma_sq, held_rows, seed))),
    }


def format_report(report: dict[str, Any]) -> str:
    lines = [
        f"held out: {report['held_out_identities']} CelebA identities, {report['held_out_images']} images, "
        f"{report['held_out_rows']} chips",
        "",
        "uncertainty per degradation: harmonic mean of sigma^2 over the 128 dimensions (x1e-3, higher = worse);",
        "shift: squared L2 from the clean chip's mu to the degraded chip's mu (how much the face really changed)",
        f"{'degradation':<24} {'chips':>6} {'mean':>8} {'median':>8} {'vs clean':>9} {'shift':>7}",
    ]
    clean = next((r["mean"] for r in report["quality"] if r["kind"] == CLEAN), float("nan"))
    for r in report["quality"]:
        label = r["kind"] if not r["level"] else f"{r['kind']} {r['level']}"
        lines.append(f"{label:<24} {r['rows']:>6} {r['mean'] * 1e3:>8.3f} {r['median'] * 1e3:>8.3f} "
                     f"{r['mean'] / clean:>8.2f}x {r['shift']:>7.4f}")
    rises = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in report["rises_with_level"].items())
    lines += ["", f"rises level by level and ends above clean: {rises}",
              f"rank correlation of uncertainty with shift over degraded chips: "
              f"{report['spearman_uncertainty_shift']:.3f}", "",
              "verification on held-out pairs (score: -squared L2 vs MLS)",
              f"{'pairs':<18} {'genuine':>8} {'impostor':>9} {'AUC -L2':>9} {'AUC MLS':>9} "
              f"{'TAR@1e-3 -L2':>13} {'TAR@1e-3 MLS':>13}"]
    for v in report["verification"]:
        lines.append(f"{v['pairs']:<18} {v['genuine']:>8} {v['impostor']:>9} {v['auc_l2']:>9.5f} {v['auc_mls']:>9.5f} "
                     f"{v['tar_l2'] * 100:>12.2f}% {v['tar_mls'] * 100:>12.2f}%")
    lines += ["", "both degraded, after discarding the most uncertain images (quality gating)"]
    for v in report["risk"]:
        lines.append(f"{v['pairs']:<18} {v['genuine']:>8} {v['impostor']:>9} {v['auc_l2']:>9.5f} {v['auc_mls']:>9.5f} "
                     f"{v['tar_l2'] * 100:>12.2f}% {v['tar_mls'] * 100:>12.2f}%")
    return "\n".join(lines)


def describe(features: FeatureSet, config: TrainConfig, train_rows: np.ndarray, steps_done: int) -> str:
    """The ``pfe_head`` metadata: features fed, training set, length of training."""
    ids = features.row_identity[train_rows]
    sources = features.source[features.image[train_rows]]
    celeba_ids = len(set(ids[sources == "celeba"]))
    lfw_ids = len(set(ids[sources == "lfw"]))
    images = len(set(features.image[train_rows]))
    epochs = steps_done * config.identities_per_batch * config.images_per_identity / max(int(train_rows.sum()), 1)
    return (
        "dlib_resnet_v1 global-pooled 256-D features -> FC-BN-ReLU-FC-BN-exp (gamma, beta scalars); "
        f"-MLS over genuine pairs, {config.identities_per_batch}x{config.images_per_identity} batches "
        f"({config.chips_per_image} chips per image), "
        f"{steps_done} steps ({epochs:.1f} epochs of the chips), {config.optimizer} lr {config.lr:g}; "
        f"backbone frozen; {images} images of {celeba_ids} CelebA-subset + {lfw_ids} LFW identities "
        "(LFW people outside pairs.txt and pairsDevTest.txt), each aligned chip clean + "
        f"{features.meta.get('variants', '?')} degraded (blur, downscale, jpeg, occlusion, noise, mixes)"
    )


def run(
    features: FeatureSet, config: TrainConfig, output: Path, plot: Path | None, progress: bool = True
) -> tuple[UncertaintyHead, dict[str, Any]]:
    """Train, save the checkpoint and the loss curve, print and return the sanity report."""
    from train.pfe.head import save_head

    train_rows, held_rows = split_identities(features, config.holdout_fraction, config.seed)
    print(f"features: {len(features)} chips of {len(features.paths)} images, {len(set(features.identity))} "
          f"identities ({len(features.skipped)} images skipped: no face); training on "
          f"{int(train_rows.sum())} chips, {int(held_rows.sum())} held out")
    start = time.perf_counter()
    head, history = train_head(features, config, train_rows, held_rows, progress)
    seconds = time.perf_counter() - start
    print(f"trained {config.steps} steps in {seconds:.1f} s; loss (mean of the last 100 steps) "
          f"{np.mean(history['loss'][-100:]):.2f}, first 100 {np.mean(history['loss'][:100]):.2f}")
    report = sanity_report(head, features, held_rows, config.seed) if held_rows.any() else {}
    description = describe(features, config, train_rows, config.steps)
    info = {
        "description": description,
        "train_config": asdict(config),
        "train_seconds": round(seconds, 1),
        "features_meta": features.meta,
        "history": {k: [float(x) for x in v] for k, v in history.items()},
        "held_out_identities": sorted(set(features.row_identity[held_rows].tolist())),
        "report": report,
    }
    path = save_head(output, head, info)
    print(f"checkpoint: {path}")
    if plot is not None:
        written = plot_history(history, plot, f"PFE head: {config.identities_per_batch}x{config.images_per_identity}, "
                                              f"{config.optimizer} lr {config.lr:g}")
        print(f"loss curve: {written}" if written else "loss curve: skipped (matplotlib not installed)")
    if report:
        print()
        print(format_report(report))
    return head, info
