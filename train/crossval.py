"""Fine-tuning under LFW's View 2 protocol: ten runs, each pair scored by a model that never saw its people.

    facesdk train crossval --config train/configs/lfw_dlib_finetune.json --out DIR [--set FIELD=VALUE ...]
                             [--folds 0,1,...]

The pairs of ``pairs.txt``'s fold k are drawn from the people of ``people.txt``'s fold k. For each
fold k the config is trained into DIR/fold-K with its LFW sources replaced by
``lfw-folds-except:K`` (the people of the nine other folds; CelebA and other sources kept, its
periodic evaluation off), and the pairs of fold k are scored by that run's network. The pairs so
scored then go through evaluate.lfw's usual 10-fold protocol (each fold's threshold from the other
folds), next to the initial network on the same pairs: accuracy, AUC, EER, TAR at FAR 1e-3, the
pairs gained and lost, McNemar's p (as ``facesdk train compare``). A run already finished is
reused and an interrupted one resumed, so the command continues where it stopped; --folds trains
and scores a subset (the others' runs are not needed). Writes DIR/crossval.json (figures, per-fold
accuracies), crossval_distances.npz (every pair's distance, both networks) and crossval.png (DET curves).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

# Idle OpenMP threads sleep (as in train.__main__): spinning ones starve a training run beside it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

from evaluate.lfw import Pairs  # noqa: E402
from evaluate.paired import changes, describe, mcnemar_p, outcomes  # noqa: E402
from train.config import Config  # noqa: E402
from train.data.datasets import LFW_FOLDS, lfw_people_folds  # noqa: E402
from train.checkpoint import backbone_from_state, read_checkpoint  # noqa: E402
from train.trainer import CHECKPOINT, LfwEvaluation, Trainer, embed_chips, initial_backbone  # noqa: E402

log = logging.getLogger("train.crossval")


def fold_config(config: Config, fold: int) -> Config:
    """`config` trained for test fold `fold`: LFW sources -> the other folds' people, no periodic eval."""
    sources = [s for s in config.data.train if not s.startswith("lfw")] + [f"lfw-folds-except:{fold}"]
    data = dataclasses.replace(config.data, train=sources, eval_pairs=None)
    return dataclasses.replace(config, data=data, eval_at_start=False)


def train_fold(config: Config, out: Path, fold: int, progress: bool = True, dataset=None) -> dict:
    """The finished checkpoint of fold `fold` under `out`, trained or resumed as needed.

    dataset: a prepared ChipDataset instead of the config's sources (tests).
    """
    c = fold_config(config, fold)
    run = out / f"fold-{fold}"
    checkpoint = run / CHECKPOINT
    if checkpoint.is_file():
        state = read_checkpoint(checkpoint)
        if state["config"] != c.to_dict():
            raise ValueError(f"{run} was trained with another config: remove it or choose another --out")
        if state["step"] >= c.steps:
            return state
        log.info("fold %d: resuming at step %d of %d", fold, state["step"], c.steps)
    Trainer(c, run, resume=checkpoint.is_file(), progress=progress, dataset=dataset).fit()
    return read_checkpoint(checkpoint)


def check_folds(evaluation: LfwEvaluation, data: Path) -> None:
    """Refuse a pairs file whose fold k uses people outside people.txt's fold k (the test would leak)."""
    people = lfw_people_folds(data / "lfw")
    pairs = evaluation.pairs
    for i in range(len(pairs)):
        k = int(pairs.fold[i])
        for path in (pairs.left[i], pairs.right[i]):
            if k >= LFW_FOLDS or path.parent.name not in people[k]:
                raise ValueError(
                    f"{evaluation.name}: pair {i} (fold {k}) shows {path.parent.name}, who is not in people.txt's fold {k}: "
                    "cross-validation needs pairs.txt or a slice of it with its folds"
                )


def fold_distances(evaluation: LfwEvaluation, state: dict, fold: int) -> np.ndarray:
    """Squared L2 of the pairs of `fold` by the network of `state` (NaN for the other pairs)."""
    pairs = evaluation.pairs
    test = pairs.fold == fold
    needed = {p for i in np.flatnonzero(test) for p in (pairs.left[i], pairs.right[i])}
    images = evaluation.images
    rows = np.array([i for i, image in enumerate(evaluation.aligned.index) if images[image] in needed], np.int64)
    embedded = embed_chips(backbone_from_state(state), evaluation.aligned.chips[rows])
    unit = np.zeros((len(evaluation.aligned.index), embedded.shape[1]), np.float32)  # only the fold's chips
    unit[rows] = embedded
    return np.where(test, evaluation.distances(unit), np.nan)


def subset(pairs: Pairs, keep: np.ndarray) -> Pairs:
    """The pairs where `keep` is true, with their folds."""
    return dataclasses.replace(
        pairs,
        left=[p for p, k in zip(pairs.left, keep) if k],
        right=[p for p, k in zip(pairs.right, keep) if k],
        same=pairs.same[keep],
        fold=pairs.fold[keep],
    )


def cross_validate(
    config: Config,
    out: Path,
    data: Path,
    folds: list[int],
    pairs_file: str = "pairs.txt",
    progress: bool = True,
    dataset=None,
) -> dict:
    """Train every fold of `folds` (reusing finished runs), score, write and return out/crossval.json."""
    evaluation = LfwEvaluation(data, pairs_file, config.data.detector, config.data.cache_dir, progress=progress)
    check_folds(evaluation, data)
    runs, dist = [], np.full(len(evaluation.pairs), np.nan)
    for fold in folds:
        state = train_fold(config, out, fold, progress, dataset)
        scored = fold_distances(evaluation, state, fold)
        dist = np.where(np.isnan(scored), dist, scored)
        runs.append(
            {"fold": fold, "steps": state["step"], "identities": len(state["identities"]),
             "train_seconds": round(state["elapsed_seconds"], 1)}
        )  # fmt: skip
        log.info("fold %d: %d identities, %d steps", fold, runs[-1]["identities"], state["step"])

    keep = np.isin(evaluation.pairs.fold, folds)
    pairs = subset(evaluation.pairs, keep)
    base_dist = evaluation.distances(embed_chips(initial_backbone(config), evaluation.aligned.chips))[keep]
    base_ok, base = outcomes(base_dist, pairs)
    ok, tuned = outcomes(dist[keep], pairs)
    gained, lost = changes(base_ok, ok)
    print(describe(f"initial {config.backbone.name}", base_ok, base), flush=True)
    print(describe(f"fine-tuned, cross-validated ({len(folds)} runs)", ok, tuned, base_ok), flush=True)

    def figures(v) -> dict:
        return {"accuracy": v.accuracy, "accuracy_std": v.accuracy_std, "auc": v.auc, "eer": v.eer,
                "tar_at_far": v.tar_at_far, "far": v.far, "fold_accuracy": v.fold_accuracy.tolist()}  # fmt: skip

    result = {
        "pairs": evaluation.name,
        "folds": folds,
        "config": config.to_dict(),
        "runs": runs,
        "initial": figures(base),
        "fine_tuned": figures(tuned),
        "gained": gained,
        "lost": lost,
        "mcnemar_p": mcnemar_p(gained, lost),
    }
    (out / "crossval.json").write_text(json.dumps(result, indent=2) + "\n")
    np.savez(out / "crossval_distances.npz", initial=base_dist, fine_tuned=dist[keep], same=pairs.same, fold=pairs.fold)
    plot_det(out / "crossval.png", pairs.same, {"initial": base_dist, "fine-tuned (cross-validated)": dist[keep]})
    return result


def plot_det(path: Path, same: np.ndarray, distances: dict[str, np.ndarray]) -> Path | None:
    """False rejects against false accepts (log axes) of each distance vector; needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no %s", path)
        return None
    from evaluate.lfw import roc

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, dist in distances.items():
        far, tar, _ = roc(dist, same)
        ax.step(far, 1 - tar, where="post", label=name)
    ax.set(xscale="log", yscale="log", xlabel="false accept rate", ylabel="false reject rate",
           title=f"LFW, {len(same):,} pairs", xlim=(1 / max((~same).sum(), 10), 1), ylim=(1 / max(same.sum(), 10), 1))  # fmt: skip
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
