"""FaceNet's batches: P identities x K images each, deterministic from (seed, step), DDP-aware.

FaceNet mines triplets inside large batches of ~40 faces per identity, so that every anchor has
many positives and the batch many negatives. :class:`PKSampler` draws, for step s, ``P * world``
distinct identities from a generator keyed on ``(seed, s)``; rank r takes the r-th block of P
(ranks never share an identity, so each rank mines its own P identities), and for each identity
K distinct images from a generator keyed on ``(seed, s, identity)``. Identities with fewer than K
images give all of theirs (a batch may hold fewer than P * K faces; with ``pad=True`` they are
drawn again instead, so each identity has exactly K, the repeats differing only by augmentation).

Batches are a pure function of (seed, step, rank, world), so the sampler's whole state is
``{"seed", "step"}``: a resumed run draws exactly the batches it would have drawn, on any number
of data-loading processes.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PKSampler:
    """Index batches of P identities x K images (see the module docstring)."""

    def __init__(
        self,
        labels: np.ndarray,
        identities_per_batch: int,
        images_per_identity: int,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = False,
    ) -> None:
        labels = np.asarray(labels)
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"labels must be a 1-D integer array, got {labels.dtype} {labels.shape}")
        if identities_per_batch < 1 or images_per_identity < 2:
            raise ValueError(
                f"need P >= 1 identities and K >= 2 images per identity, got P={identities_per_batch}, K={images_per_identity}"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.p, self.k, self.seed, self.rank, self.world_size, self.pad = (
            identities_per_batch,
            images_per_identity,
            int(seed),
            rank,
            world_size,
            pad,
        )
        order = np.argsort(labels, kind="stable")
        ids, starts, counts = np.unique(labels[order], return_index=True, return_counts=True)
        usable = counts >= 2  # a single image cannot form an anchor-positive pair
        self._members = [order[s : s + c] for s, c in zip(starts[usable], counts[usable])]
        self.identities = ids[usable]
        needed = identities_per_batch * world_size
        if len(self._members) < needed:
            raise ValueError(
                f"{len(self._members)} identities with >= 2 images, but P x world size = "
                f"{identities_per_batch} x {world_size} = {needed} distinct identities are needed per step"
            )
        self.step = 0

    def batch(self, step: int) -> np.ndarray:
        """int64 indices of this rank's faces at `step`, grouped by identity."""
        rng = np.random.default_rng([self.seed, step])
        chosen = rng.choice(len(self._members), self.p * self.world_size, replace=False)
        mine = chosen[self.rank * self.p : (self.rank + 1) * self.p]
        parts = []
        for identity in mine:
            members = self._members[identity]
            pick = np.random.default_rng([self.seed, step, 1 + int(identity)])
            if len(members) >= self.k:
                parts.append(members[pick.choice(len(members), self.k, replace=False)])
            elif self.pad:  # every image once, the rest drawn again
                extra = pick.choice(len(members), self.k - len(members), replace=True)
                parts.append(np.concatenate([members[pick.permutation(len(members))], members[extra]]))
            else:
                parts.append(members[pick.permutation(len(members))])
        return np.concatenate(parts).astype(np.int64)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Batches from the current step on, forever; advances ``step``."""
        while True:
            batch = self.batch(self.step)
            self.step += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "step": self.step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state has seed {state['seed']}, this sampler {self.seed}")
        self.step = int(state["step"])
