"""FaceNet triplet training: P x K batches, online mining in a large selection batch, DDP, resume.

One step (FaceNet, Schroff et al. 2015, with the "large selection batch" done exactly):

1. the sampler draws P identities x K faces for this rank; they are augmented;
2. the whole selection batch is embedded WITHOUT gradients, in chunks of ``mining.chunk`` faces
   (memory stays bounded however large the batch: FaceNet used ~1,800 faces);
3. triplets are mined on the unit embeddings (``train.mining.mine_triplets``, semi-hard by default)
   and the triplet loss (``train.losses.triplet_loss``, squared L2, alpha = 0.2) is taken on them;
   with the ``distill`` term when fine-tuning (the distance to a frozen copy of the initial
   network's embeddings), its gradient with respect to every face's embedding is computed
   (cheap: [B, 128]);
4. the chunks holding a face with a non-zero gradient are embedded again WITH gradients and
   back-propagated with that gradient (``out.backward(grad)``). The chunks are the same as in step 2
   and each chunk's random state is re-seeded, so the recomputed embeddings are the mined ones and
   the parameter gradient is exactly that of the loss over the whole batch (batch norm sees the
   same chunk statistics both times);
5. one optimiser step (AdaGrad lr 0.05 as the paper, or AdamW) and one LR-schedule step.

Everything random is keyed on (seed, step, rank), so a run resumed from a checkpoint (model,
optimiser, scheduler, sampler state, step, config) continues bit for bit. Rank 0 writes
``metrics.csv`` (loss, active-triplet fraction, lr, step time), ``eval.csv`` (LFW accuracy on the
chips of ``data.eval_pairs``, with ``evaluate.lfw``'s 10-fold protocol), ``training.png`` and
``checkpoint.pt``. With torch.distributed initialised (torchrun, or :func:`launch_local`), the model
is wrapped in DDP; each rank draws its own P identities and mines within them.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import hashlib
import inspect
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from train.backbones import create_backbone
from train.checkpoint import read_checkpoint
from train.config import Config, config_from_dict
from train.data.augment import FaceAugment, chips_to_input
from train.data.chips import ChipDataset, align_faces
from train.data.datasets import face_lists
from train.data.sampler import PKSampler
from train.losses import active_fraction, triplet_loss
from train.mining import mine_triplets
from train.optim import make_optimizer, make_scheduler

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.csv"
EVAL = "eval.csv"
PLOT = "training.png"
SUMMARY = "summary.json"
_CHECKPOINT_FORMAT = 1
METRIC_FIELDS = (
    "step", "loss", "active_fraction", "batch_active_fraction", "triplets", "pairs", "faces",
    "lr", "step_seconds", "cpu_seconds", "elapsed_seconds", "distill",
)
EVAL_FIELDS = ("step", "accuracy", "accuracy_std", "auc", "tar_at_far", "far", "threshold", "seconds")

# Purposes of the random streams derived from (seed, step, rank).
_AUGMENT, _CHUNK, _MINING = 1, 2, 3


def derive_seed(*parts: int) -> int:
    """A 63-bit seed from integers (numpy's SeedSequence hashing: nearby inputs, unrelated streams)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] >> np.uint64(1))


@dataclass
class BatchTriplets:
    """What mining found in one selection batch.

    active_fraction is over the mined triplets (with semi-hard mining it is 1 by construction:
    every semi-hard triplet violates the margin, and their loss is ~alpha/2 whatever the model);
    batch_active_fraction is over EVERY valid (a, p, n) of the batch, d(a,n) < d(a,p) + alpha:
    the measure of how far the batch is from separated, and the one that falls as the model learns.
    """

    loss: float
    active_fraction: float
    batch_active_fraction: float
    triplets: int  # mined
    pairs: int  # anchor-positive pairs in the batch
    distill: float  # mean squared L2 of the unit embeddings from the frozen initial network's (0: off)


@dataclass
class StepStats(BatchTriplets):
    """What one optimiser step did (fractions and loss averaged over ranks; counts summed)."""

    faces: int
    lr: float
    seconds: float  # wall time of this rank
    cpu_seconds: float  # CPU time of this process (all its threads): what the step costs on a shared machine


def triplet_step(
    model: nn.Module,
    synced_model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    *,
    margin: float,
    mode: str,
    fallback: str,
    chunk: int,
    seed: int,
    reduction: str = "mean",
    teacher: nn.Module | None = None,
    distill: float = 0.0,
    flip_mean: bool = False,
) -> BatchTriplets:
    """Steps 2-4 of the module docstring: accumulate the parameter gradients of the triplet loss.

    model: the bare network (embeds without gradients); synced_model: the same network, possibly
    DDP-wrapped (its backward passes reduce gradients across ranks; all but the last chunk run
    under ``no_sync``). teacher, distill, flip_mean: a frozen network and the weight of the mean
    squared L2 between its unit embeddings (of the face and its mirror, averaged, with flip_mean)
    and the model's, added to the loss (``distill`` config section).
    Returns what the batch's mining found and its loss.
    """
    starts = list(range(0, len(x), chunk))

    def forward(net: nn.Module, start: int) -> torch.Tensor:
        torch.manual_seed(derive_seed(seed, _CHUNK, start))  # dropout draws the same masks twice
        return net(x[start : start + chunk])

    with torch.no_grad():
        raw = torch.cat([forward(model, s) for s in starts])
    unit = F.normalize(raw, dim=1)
    a, p, n = mine_triplets(unit, labels, margin=margin, mode=mode, seed=derive_seed(seed, _MINING), fallback=fallback)
    leaf = raw.detach().requires_grad_(True)
    emb = F.normalize(leaf, dim=1)
    loss = triplet_loss(emb, a, p, n, margin, reduction=reduction)
    loss_value, active = float(loss.detach()), float(active_fraction(emb.detach(), a, p, n, margin))
    distill_value = 0.0
    if teacher is not None and distill > 0:
        with torch.no_grad():
            target = F.normalize(torch.cat([teacher(x[s : s + chunk]) for s in starts]), dim=1)
            if flip_mean:
                mirrored = torch.cat([teacher(x[s : s + chunk].flip(-1)) for s in starts])
                target = F.normalize(target + F.normalize(mirrored, dim=1), dim=1)
        drift = (emb - target).pow(2).sum(dim=1).mean()
        distill_value = float(drift.detach())
        loss = loss + distill * drift
    # With no triplet and no drift the gradient is zero; the synced backward below still runs
    # (DDP needs every rank).
    loss.backward()
    grad = leaf.grad
    assert grad is not None
    needed = [s for s in starts[:-1] if bool(grad[s : s + chunk].any())] + [starts[-1]]
    no_sync = getattr(synced_model, "no_sync", contextlib.nullcontext)
    for s in needed:
        with no_sync() if s != starts[-1] else contextlib.nullcontext():
            forward(synced_model, s).backward(grad[s : s + chunk])
    batch_active, pairs = batch_active_fraction(unit, labels, margin)
    return BatchTriplets(loss_value, active, batch_active, len(a), pairs, distill_value)


def batch_active_fraction(unit: torch.Tensor, labels: torch.Tensor, margin: float) -> tuple[float, int]:
    """(fraction of all valid triplets with d(a,n) < d(a,p) + margin, number of anchor-positive pairs).

    O(B^2 log B): each anchor's negative distances are sorted once and every positive's threshold
    is located by binary search, so FaceNet's 1,800-face batches need no B^3 tensor.
    """
    with torch.no_grad():
        d = torch.cdist(unit.float(), unit.float()).pow(2)
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        negatives = torch.where(same, torch.inf, d).sort(dim=1).values
        violating = torch.searchsorted(negatives, (d + margin).contiguous())  # [a, p]: negatives under d(a,p) + margin
        total = (positive.sum(1) * (~same).sum(1)).sum()
        count = violating[positive].sum()
        return (float(count) / float(total) if int(total) else 0.0), int(positive.sum())


def freeze(model: nn.Module, prefixes: list[str]) -> None:
    """Keep the parameters whose names start with one of ``prefixes`` fixed."""
    names = [name for name, _ in model.named_parameters()]
    unmatched = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unmatched:
        raise ValueError(f"backbone.freeze: {unmatched[0]!r} names no parameter; parameters start with "
                         f"{', '.join(sorted({n.split('.')[0] for n in names}))}")  # fmt: skip
    for name, parameter in model.named_parameters():
        if any(name.startswith(p) for p in prefixes):
            parameter.requires_grad_(False)


def embed_chips(
    model: nn.Module,
    chips: np.ndarray,
    batch: int = 64,
    device: torch.device | str = "cpu",
    memory_format: torch.memory_format = torch.contiguous_format,
) -> np.ndarray:
    """Unit embeddings float32 [N, 128] of uint8 chips, the model in eval mode (restored after)."""
    was_training = model.training
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(chips), batch):
            x = chips_to_input(np.asarray(chips[i : i + batch])).to(device).contiguous(memory_format=memory_format)
            out.append(F.normalize(model(x), dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, 128), np.float32)


class LfwEvaluation:
    """LFW verification on a pairs file, with chips cut once (``missing="mean"``, as ``evaluate.lfw``)."""

    def __init__(
        self, data: Path, pairs_file: str, detector: str = "auto", cache_dir: str | None = None, progress: bool = True
    ) -> None:
        from evaluate.lfw import read_pairs

        lfw = data / "lfw"
        self.pairs = read_pairs(lfw / pairs_file, lfw / "images_deepfunneled")
        self.images = self.pairs.images()
        self.aligned = align_faces(
            self.images,
            name=f"lfw-{Path(pairs_file).stem}",
            detector=detector,
            missing="mean",
            cache_dir=cache_dir,
            progress=progress,
        )
        self.name = Path(pairs_file).stem

    def __call__(
        self, model: nn.Module, device: torch.device | str = "cpu", memory_format: torch.memory_format = torch.contiguous_format
    ) -> Any:
        """evaluate.lfw.Verification of `model` (10-fold accuracy, AUC, TAR at FAR 1e-3)."""
        from evaluate.lfw import evaluate

        unit = embed_chips(model, self.aligned.chips, device=device, memory_format=memory_format)
        return evaluate(self.distances(unit), self.pairs)

    def distances(self, unit: np.ndarray) -> np.ndarray:
        """Squared L2 of every pair from the unit embeddings of ``self.aligned.chips``, in order."""
        from evaluate.lfw import Embedded, pair_distances

        embeddings = np.empty_like(unit)
        embeddings[self.aligned.index] = unit
        failed = np.zeros(len(self.images), bool)
        failed[self.aligned.no_face] = True
        return pair_distances(Embedded(embeddings, failed, {}), self.images, self.pairs)


class Trainer:
    """Runs a :class:`~train.config.Config` into the folder `out` (see the module docstring).

    rank / world_size: this process in torch.distributed (already initialised when world_size > 1).
    dataset: a prepared ChipDataset (tests); None builds it from ``config.data``.
    """

    def __init__(
        self,
        config: Config,
        out: str | Path,
        *,
        resume: bool = False,
        rank: int = 0,
        world_size: int = 1,
        device: str | torch.device | None = None,
        progress: bool = True,
        dataset: ChipDataset | None = None,
    ) -> None:
        self.config, self.out, self.rank, self.world_size = config, Path(out), rank, world_size
        self.progress = progress and rank == 0
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = torch.device(device) if device is not None else _pick_device(config.device)
        checkpoint_path = self.out / CHECKPOINT
        if rank == 0:
            if checkpoint_path.exists() and not resume:
                raise FileExistsError(f"{checkpoint_path} exists: pass --resume to continue it, or choose another --out")
            if resume and not checkpoint_path.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {checkpoint_path}")
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")

        self.model = initial_backbone(config).to(self.device)  # (DDP then broadcasts rank 0's weights)
        freeze(self.model, config.backbone.freeze)
        self.memory_format = torch.channels_last if config.channels_last else torch.contiguous_format
        self.model.to(memory_format=self.memory_format)
        self.model.train()
        # The initial network, frozen, for the distill term (built before --resume loads weights).
        self.teacher: nn.Module | None = None
        if config.distill.weight > 0:
            self.teacher = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.synced: nn.Module = self.model
        if world_size > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # No buffer broadcast at each forward: ranks may run different numbers of chunk
            # forwards in a step, and a collective per forward would then mismatch. Batch-norm
            # statistics are averaged over ranks after each step instead (_average_buffers).
            ddp = nn.parallel.DistributedDataParallel
            # Newer torch names the option forward_sync_buffers (buffers still synced at init).
            no_forward_sync = (
                {"forward_sync_buffers": False}
                if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
                else {"broadcast_buffers": False}
            )
            self.synced = ddp(self.model, device_ids=ids, **no_forward_sync)
        self.optimizer = make_optimizer(self.model, config)
        self.scheduler = make_scheduler(self.optimizer, config)
        a = config.augment
        self.augment = (
            FaceAugment(a.flip, a.scale, a.translate, a.rotate, a.brightness, a.contrast, a.saturation) if a.enabled else None
        )

        # Rank 0 detects and caches the chips (and builds the mining op); the others then read them.
        self.evaluation: LfwEvaluation | None = None
        if rank == 0:
            self.dataset = dataset if dataset is not None else self._load_dataset()
            _warm_up_mining()
            if config.data.eval_pairs:
                d = config.data
                self.evaluation = LfwEvaluation(self._data_root(), d.eval_pairs, d.detector, d.cache_dir, self.progress)
        self._barrier()
        if rank != 0:
            self.dataset = dataset if dataset is not None else self._load_dataset()
        s = config.sampler
        self.sampler = PKSampler(self.dataset.labels, s.identities, s.images, config.seed, rank, world_size, s.pad)
        self.step = 0
        self.elapsed = 0.0  # training seconds before this process (resumed runs)
        self.tensorboard = _tensorboard_writer(self.out) if rank == 0 else None
        if resume:
            self._load_checkpoint(checkpoint_path)
        if rank == 0:
            no_face = ", ".join(f"{k} {v}" for k, v in self.dataset.no_face.items())
            log.info(
                "train: %d faces of %d identities (images without a face, skipped: %s); %s on %s, world %d",
                len(self.dataset), len(self.dataset.identities), no_face, config.backbone.name, self.device, world_size,
            )

    # --- data ---------------------------------------------------------------------------------

    def _data_root(self) -> Path:
        from sdk.paths import data_dir

        root = Path(self.config.data.root) if self.config.data.root else data_dir()
        if not root.is_dir():
            raise FileNotFoundError(f"data folder {root} not found (set FACESDK_DATA or data.root)")
        return root

    def _load_dataset(self) -> ChipDataset:
        d = self.config.data
        lists = [faces for source in d.train for faces in face_lists(source, self._data_root())]
        return ChipDataset.from_lists(
            lists,
            min_images=d.min_images,
            max_identities=d.max_identities,
            detector=d.detector,
            cache_dir=d.cache_dir,
            progress=self.progress,
        )

    # --- the loop -----------------------------------------------------------------------------

    def train_step(self, step: int) -> StepStats:
        """One optimiser step on this rank's batch of `step`."""
        c = self.config
        start, cpu_start = time.perf_counter(), time.process_time()
        indices = self.sampler.batch(step)
        labels = torch.from_numpy(self.dataset.labels[indices]).to(self.device)
        chips = torch.from_numpy(self.dataset.gather(indices)).to(self.device)
        seed = derive_seed(c.seed, step, self.rank)
        if self.augment is not None:
            x = self.augment(chips, torch.Generator().manual_seed(derive_seed(seed, _AUGMENT)))
        else:
            x = chips_to_input(chips)
        x = x.contiguous(memory_format=self.memory_format)
        lr = c.optimizer.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)  # groups may scale it
        self.model.train()
        m = c.mining
        mined = triplet_step(
            self.model, self.synced, x, labels, margin=m.margin, mode=m.mode, fallback=m.fallback, chunk=m.chunk, seed=seed,
            reduction=m.reduction, teacher=self.teacher, distill=c.distill.weight,
            flip_mean=c.distill.flip_mean,
        )
        if c.optimizer.grad_clip:
            nn.utils.clip_grad_norm_(self.model.parameters(), c.optimizer.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._average_buffers()
        stats = torch.tensor(
            [mined.loss, mined.active_fraction, mined.batch_active_fraction, mined.distill, mined.triplets, mined.pairs,
             len(x)],
            dtype=torch.float64,
        )  # fmt: skip
        if self.world_size > 1:
            dist.all_reduce(stats)  # mean of losses and fractions, sum of counts
            stats[:4] /= self.world_size
        return StepStats(
            loss=float(stats[0]),
            active_fraction=float(stats[1]),
            batch_active_fraction=float(stats[2]),
            distill=float(stats[3]),
            triplets=int(stats[4]),
            pairs=int(stats[5]),
            faces=int(stats[6]),
            lr=lr,
            seconds=time.perf_counter() - start,
            cpu_seconds=time.process_time() - cpu_start,
        )

    def fit(self, stop_after: int | None = None) -> dict[str, Any]:
        """Train to ``config.steps`` (or ``max_minutes``), with logging, evaluation, checkpoints.

        stop_after: end this session after that many steps (checkpoint written) as if interrupted;
        the schedule still spans ``config.steps`` and ``--resume`` continues the same run.
        """
        from tqdm import tqdm

        c = self.config
        if self.rank == 0:
            _truncate_csv(self.out / METRICS, self.step)
            _truncate_csv(self.out / EVAL, self.step)
        if c.eval_at_start and self.step == 0:
            self.evaluate()
        bar = tqdm(total=c.steps, initial=self.step, desc=c.name, unit="step", disable=not self.progress)
        session_start = time.perf_counter()
        session_end = c.steps if stop_after is None else min(c.steps, self.step + stop_after)
        stopped_early = False
        while self.step < c.steps:
            stats = self.train_step(self.step)
            self.step += 1
            self.sampler.step = self.step
            elapsed = self.elapsed + time.perf_counter() - session_start
            if self.rank == 0:
                if self.step % c.log_every == 0 or self.step == c.steps:
                    row = [
                        self.step, stats.loss, stats.active_fraction, stats.batch_active_fraction, stats.triplets,
                        stats.pairs, stats.faces, stats.lr, stats.seconds, stats.cpu_seconds, elapsed, stats.distill,
                    ]
                    _append_csv(self.out / METRICS, METRIC_FIELDS, row)
                    if self.tensorboard is not None:
                        for name, value in zip(METRIC_FIELDS[1:], row[1:]):
                            self.tensorboard.add_scalar(f"train/{name}", value, self.step)
                bar.set_postfix(
                    loss=f"{stats.loss:.4f}", batch_active=f"{stats.batch_active_fraction:.3f}", lr=f"{stats.lr:.3g}"
                )
                bar.update(1)
            if (self._should_stop(elapsed) or self.step >= session_end) and self.step < c.steps:
                stopped_early = True
                break
            if self.step % c.checkpoint_every == 0 and self.step < c.steps:
                self._save_checkpoint(elapsed)
            if c.eval_every and self.step % c.eval_every == 0 and self.step < c.steps:
                self.evaluate()
        bar.close()
        elapsed = self.elapsed + time.perf_counter() - session_start
        self._save_checkpoint(elapsed)
        result = self.evaluate()
        if self.rank == 0:
            plot_metrics(self.out)
            if self.tensorboard is not None:
                self.tensorboard.close()
        digests = self._replica_digests()
        summary = {
            "name": c.name,
            "steps": self.step,
            "stopped_early": stopped_early,
            "elapsed_seconds": round(elapsed, 1),
            "world_size": self.world_size,
            "faces": len(self.dataset),
            "identities": len(self.dataset.identities),
            "no_face": self.dataset.no_face,
            "lfw": result,
            "replica_digests": digests,
        }
        if self.rank == 0:
            (self.out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
        return summary

    def _should_stop(self, elapsed: float) -> bool:
        """max_minutes reached (rank 0's clock decides for every rank)."""
        if self.config.max_minutes is None:
            return False
        stop = torch.tensor([float(elapsed > self.config.max_minutes * 60)])
        if self.world_size > 1:
            dist.broadcast(stop, 0)
        return bool(stop.item())

    def evaluate(self) -> dict[str, float] | None:
        """LFW verification of the current model on rank 0; logged to eval.csv and plotted."""
        result = None
        if self.rank == 0 and self.evaluation is not None:
            start = time.perf_counter()
            v = self.evaluation(self.model, self.device, self.memory_format)
            result = {
                "pairs": self.evaluation.name,
                "accuracy": v.accuracy,
                "accuracy_std": v.accuracy_std,
                "auc": v.auc,
                "tar_at_far": v.tar_at_far,
                "far": v.far,
                "threshold": v.threshold,
            }
            seconds = time.perf_counter() - start
            row = [self.step, v.accuracy, v.accuracy_std, v.auc, v.tar_at_far, v.far, v.threshold, seconds]
            _append_csv(self.out / EVAL, EVAL_FIELDS, row)
            if self.tensorboard is not None:
                for name, value in zip(EVAL_FIELDS[1:5], row[1:5]):
                    self.tensorboard.add_scalar(f"lfw/{name}", value, self.step)
            log.info(
                "step %d: LFW %s accuracy %.4f +- %.4f, AUC %.4f, TAR@FAR%g %.4f (%.1fs)",
                self.step, self.evaluation.name, v.accuracy, v.accuracy_std, v.auc, v.far, v.tar_at_far, seconds,
            )
            if self.progress:
                print(f"step {self.step}: LFW {self.evaluation.name} accuracy {v.accuracy:.4f} +- {v.accuracy_std:.4f}, "
                      f"AUC {v.auc:.4f}, TAR@FAR{v.far:g} {v.tar_at_far:.4f}", flush=True)
            plot_metrics(self.out)
        self._barrier()
        return result

    # --- checkpoints --------------------------------------------------------------------------

    def _save_checkpoint(self, elapsed: float) -> None:
        if self.rank != 0:
            return
        state = {
            "format": _CHECKPOINT_FORMAT,
            "step": self.step,
            "elapsed_seconds": elapsed,
            "config": self.config.to_dict(),
            "backbone": {"name": self.config.backbone.name, "options": self.config.backbone.options},
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "sampler": self.sampler.state_dict(),
            "world_size": self.world_size,
            "identities": list(self.dataset.identities),
        }
        path = self.out / CHECKPOINT
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)  # a crash never leaves half a checkpoint

    def _load_checkpoint(self, path: Path) -> None:
        state = read_checkpoint(path, map_location=self.device)
        if state.get("format") != _CHECKPOINT_FORMAT:
            raise ValueError(f"{path}: checkpoint format {state.get('format')}, this trainer reads {_CHECKPOINT_FORMAT}")
        saved = config_from_dict(state["config"], source=f"{path} (saved config)")
        if (saved.backbone.name, saved.backbone.options) != (self.config.backbone.name, self.config.backbone.options):
            raise ValueError(
                f"{path} holds a {saved.backbone.name} {saved.backbone.options}, the config asks for "
                f"{self.config.backbone.name} {self.config.backbone.options}"
            )
        changed = _changed_fields(saved.to_dict(), self.config.to_dict())
        if changed and self.rank == 0:
            log.warning("resuming with a changed config (the run is no longer the same run): %s", ", ".join(changed))
        if state["world_size"] != self.world_size and self.rank == 0:
            log.warning("resuming on %d processes, the checkpoint ran on %d", self.world_size, state["world_size"])
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.sampler.load_state_dict(state["sampler"])
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed_seconds"])

    # --- distributed helpers ------------------------------------------------------------------

    def _average_buffers(self) -> None:
        """Mean of the floating buffers (batch-norm running statistics) over ranks: identical replicas."""
        if self.world_size == 1:
            return
        for buffer in self.model.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= self.world_size

    def _barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def _replica_digests(self) -> list[str]:
        """sha256 of every rank's weights and buffers; they must be equal (DDP keeps replicas in sync)."""
        digest = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        mine = digest.hexdigest()
        if self.world_size == 1:
            return [mine]
        gathered: list[Any] = [None] * self.world_size
        dist.all_gather_object(gathered, mine)
        if len(set(gathered)) != 1:
            raise RuntimeError(f"DDP replicas diverged: weight digests {gathered}")
        return gathered


def _tensorboard_writer(out: Path) -> Any:
    """A TensorBoard SummaryWriter when the tensorboard package is installed, else None (CSV only)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(str(out / "tensorboard"))


def _pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device 'cuda' requested but torch {torch.__version__} sees no CUDA device")
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def _warm_up_mining() -> None:
    """Compile/load the mining op once before other ranks race to build it."""
    from train import mining

    mining.load_op()


def _changed_fields(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    changed = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict) and key != "options":
            changed += _changed_fields(a, b, f"{prefix}{key}.")
        elif a != b:
            changed.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return changed


# --- metrics files -----------------------------------------------------------------------------


def _append_csv(path: Path, fields: tuple[str, ...], row: list[Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(fields)
        writer.writerow([f"{v:.6g}" if isinstance(v, float) else v for v in row])


def _truncate_csv(path: Path, step: int) -> None:
    """Drop rows after `step`: a resumed run rewrites what the interrupted one logged past its checkpoint."""
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return
    kept = [rows[0]] + [r for r in rows[1:] if r and int(r[0]) <= step]
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(kept)


def read_csv(path: Path) -> dict[str, np.ndarray]:
    """A metrics CSV as column arrays (float)."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        return {name: np.zeros(0) for name in (rows[0] if rows else [])}
    return {name: np.array([float(r[i]) for r in rows[1:]]) for i, name in enumerate(rows[0])}


def plot_metrics(out: Path) -> Path | None:
    """training.png: loss, active-triplet fraction and LFW accuracy against step (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log.info("matplotlib not installed: no %s", PLOT)
        return None
    if not (out / METRICS).exists():
        return None
    m = read_csv(out / METRICS)
    e = read_csv(out / EVAL) if (out / EVAL).exists() else {}
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    window = max(1, len(m["step"]) // 50)
    smooth = np.convolve(m["loss"], np.ones(window) / window, mode="valid") if len(m["loss"]) >= window else m["loss"]
    axes[0].plot(m["step"], m["loss"], alpha=0.3, label="per step")
    axes[0].plot(m["step"][window - 1 :][: len(smooth)], smooth, label=f"mean of {window}")
    if "distill" in m and m["distill"].any():
        axes[0].plot(m["step"], m["distill"], label="distill: |u - u0|^2")
    axes[0].set(title="triplet loss (mined triplets)", xlabel="step")
    axes[0].legend()
    axes[1].plot(m["step"], m["batch_active_fraction"], label="all triplets of the batch")
    axes[1].plot(m["step"], m["active_fraction"], label="mined triplets")
    axes[1].set(title="fraction of active triplets (d(a,n) < d(a,p) + alpha)", xlabel="step", ylim=(0, 1.02))
    axes[1].legend()
    if e and len(e.get("step", [])):
        axes[2].errorbar(e["step"], e["accuracy"], yerr=e["accuracy_std"], marker="o", capsize=3)
    axes[2].set(title="LFW accuracy (10-fold)", xlabel="step")
    fig.tight_layout()
    path = out / PLOT
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# --- loading a trained model (export) and local multi-process runs -------------------------------


def initial_backbone(config: Config) -> nn.Module:
    """The network a run starts from: its backbone, initial weights seeded with ``config.seed``."""
    torch.manual_seed(config.seed)
    return create_backbone(config.backbone.name, **config.backbone.options)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _local_worker(
    rank: int, world_size: int, port: int, config_dict: dict[str, Any], out: str, resume: bool, threads: int
) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        config = config_from_dict(config_dict)
        config.threads = threads
        Trainer(config, out, resume=resume, rank=rank, world_size=world_size, device="cpu", progress=False).fit()
    finally:
        dist.destroy_process_group()


def launch_local(config: Config, out: str | Path, nprocs: int = 2, resume: bool = False) -> dict[str, Any]:
    """Train with `nprocs` CPU processes on this machine (DDP over gloo), as torchrun would; returns
    rank 0's summary. For tests and CPU boxes: on GPUs use ``torchrun --nproc_per_node N -m train``."""
    import torch.multiprocessing as mp

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the workers; see train.__main__
    threads = max(1, (os.cpu_count() or 1) // nprocs)
    mp.spawn(
        _local_worker,
        args=(nprocs, _free_port(), dataclasses.asdict(config), str(out), resume, threads),
        nprocs=nprocs,
        join=True,
    )
    return json.loads((Path(out) / SUMMARY).read_text())
