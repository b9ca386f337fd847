"""Probabilistic Face Embeddings (Shi & Jain, ICCV 2019) at run time: scoring, fusion, quality.

A PFE model gives each face a Gaussian N(mu, diag(sigma_sq)): mu is the ordinary unit
embedding, sigma_sq > 0 its per-dimension variance (``OnnxEmbedder.embed_with_uncertainty``).

Scoring
    Mutual likelihood score, higher = more likely the same person::

        MLS(mu1, s1, mu2, s2) = -1/2 sum_d [(mu1 - mu2)^2 / (s1 + s2) + log(s1 + s2)] - D/2 log(2 pi)

    :func:`mls` (all pairs), :func:`mls_topk` and :func:`mls_match` run the C++ kernels
    (``sdk.kernels.mls*``); :func:`mls_reference` is the float64 numpy ground truth of the
    tests. :func:`mls_pairs` scores row i against row i (a pairs protocol such as LFW's).

    With a threshold calibrated on clean faces, MLS accepts more impostor pairs of two degraded
    faces than L2 does: a larger variance shrinks the distance term more than it lowers the log
    term. Gate on quality (``min_quality``) when faces may be poor. README ("Probabilistic Face
    Embeddings") has the measured figures.

Fusion (:func:`fuse`) of n faces of one person into one Gaussian, per dimension:
    ``mu_hat = sum(mu_i / s_i) / sum(1 / s_i)`` in both modes (each face weighted by its
    precision), then

    * ``"closed_form"``: ``1/s_hat = sum 1/s_i``, the paper's product of Gaussians;
    * ``"min_sigma"``: ``s_hat = min_i s_i``, what the authors' released code does
      (``aggregate_PFE``).

    The default is ``"min_sigma"``, which measured better on templates with degraded faces
    (``facesdk eval pfe sets``; figures in README): the closed form's variance shrinks as
    1/n, so a fused template claims a certainty no single face had and MLS between two templates
    is dominated by small mu differences divided by tiny variances. mu_hat is re-normalised to
    unit length (``normalize=True``, as the released code does): the weighted mean of unit
    vectors is shorter than 1, while the model's mu and both kinds of calibrated threshold live
    on the unit sphere.

Quality (:func:`quality`)
    The paper's quality is the harmonic mean of sigma^2 over dimensions, lower = better. Here
    ``quality = ln(mean_d 1/sigma_d^2) = -ln(harmonic mean of sigma^2)``: the log of the mean
    precision, **higher = better**, and ranking faces by it is exactly the paper's ranking.
    :func:`harmonic_mean_sigma_sq` gives the paper's figure. A reject threshold
    (``min_quality``) refuses faces below it; ``evaluate.calibration.calibrate_quality`` gives the
    quality below which a chosen fraction of a labelled set's faces falls (stored in the model as
    ``quality_reject_table``).

Thresholds
    ``evaluate.calibration.calibrate_mls`` finds, as for squared L2, the MLS threshold
    (accept if ``MLS >= threshold``) meeting a target FAR over all pairs of a labelled set;
    ``facesdk calibrate --scoring mls --model PATH --write`` stores ``mls_threshold``,
    ``mls_threshold_far``, ``mls_threshold_table`` (JSON {far: threshold}),
    ``mls_threshold_calibrated_on`` and ``quality_reject_table`` in the model's metadata.

Frames (:class:`FrameTracker`)
    A face continues a track only when both its box overlaps the track's last box
    (IoU >= ``iou_threshold``) and its mu is near the track's faces (squared L2 to the track's
    fused mu or to its latest face <= ``appearance_gate``); pairs are matched greedily, nearest
    in appearance first. A face that passes no track starts a new one, so one person's history is
    never fused with another's. Each track fuses the (mu, sigma_sq) of its last ``window`` usable
    frames; a track not seen for more than ``max_missed`` frames ends, and a face seen after that
    starts a new track. README ("Following faces in video") says how the default gate was measured.
"""

from __future__ import annotations

import json
import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from sdk import kernels

__all__ = [
    "FUSION_MODES",
    "DEFAULT_FUSION",
    "mls",
    "mls_reference",
    "mls_pairs",
    "mls_topk",
    "mls_match",
    "MLSMatches",
    "fuse",
    "quality",
    "harmonic_mean_sigma_sq",
    "mls_threshold_for",
    "quality_threshold_for",
    "Track",
    "FrameTracker",
    "DEFAULT_APPEARANCE_GATE",
    "box_iou",
]

FUSION_MODES = ("closed_form", "min_sigma")
DEFAULT_FUSION = "min_sigma"
# Squared L2 between unit mu: a face farther than this from a track's faces starts a new track.
# Picked on LFW DevTrain photo pairs (README, "Following faces in video").
DEFAULT_APPEARANCE_GATE = 0.12
LOG_2PI = math.log(2 * math.pi)
# Reference chunks hold at most this many float64 elements ([rows, ng, D]): ~128 MB.
_CHUNK_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------- checks


def _gaussians(
    mu: ArrayLike, sigma_sq: ArrayLike, what: str, dtype: type = np.float64, check: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma_sq) as C-contiguous ``dtype`` [n, D] after checks: same shape, finite,
    sigma_sq > 0. ``check=False`` skips the value checks (arrays validated when stored)."""
    m = np.asarray(mu)
    s = np.asarray(sigma_sq)
    for name, arr in ((f"{what} mu", m), (f"{what} sigma_sq", s)):
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        if arr.ndim != 2 or arr.shape[1] < 1:
            raise ValueError(f"{name} must be 2-D [rows, dim], got shape {arr.shape}")
    if m.shape != s.shape:
        raise ValueError(f"{what} mu {m.shape} and sigma_sq {s.shape} differ in shape")
    m, s = np.ascontiguousarray(m, dtype), np.ascontiguousarray(s, dtype)
    if check and m.size:
        # Reductions, not elementwise masks: no temporary as large as a gallery. min/max propagate NaN.
        if not (np.isfinite(m.min()) and np.isfinite(m.max())):
            raise ValueError(f"{what} mu holds NaN or Inf")
        if not (s.min() > 0 and np.isfinite(s.max())):
            raise ValueError(f"{what} sigma_sq must be finite and > 0 (variances)")
    return m, s


def _two_sets(q_mu, q_s, g_mu, g_s, dtype: type = np.float64, check_gallery: bool = True):
    qm, qs = _gaussians(q_mu, q_s, "query", dtype)
    gm, gs = _gaussians(g_mu, g_s, "gallery", dtype, check_gallery)
    if qm.shape[1] != gm.shape[1]:
        raise ValueError(f"queries and gallery differ in dim: {qm.shape[1]} vs {gm.shape[1]}")
    return qm, qs, gm, gs


# -------------------------------------------------------------------------------------- scoring


def mls_reference(q_mu: ArrayLike, q_sigma_sq: ArrayLike, g_mu: ArrayLike, g_sigma_sq: ArrayLike) -> np.ndarray:
    """MLS of every (query, gallery) pair in float64, ``[nq, ng]``: the ground truth."""
    qm, qs, gm, gs = _two_sets(q_mu, q_sigma_sq, g_mu, g_sigma_sq)
    nq, ng, dim = len(qm), len(gm), qm.shape[1]
    out = np.empty((nq, ng), np.float64)
    rows = max(1, _CHUNK_ELEMENTS // max(1, ng * dim))
    for start in range(0, nq, rows):
        stop = min(nq, start + rows)
        var = qs[start:stop, None, :] + gs[None, :, :]
        diff = qm[start:stop, None, :] - gm[None, :, :]
        out[start:stop] = -0.5 * (diff * diff / var + np.log(var)).sum(-1)
    return out - 0.5 * dim * LOG_2PI


def mls(q_mu: ArrayLike, q_sigma_sq: ArrayLike, g_mu: ArrayLike, g_sigma_sq: ArrayLike) -> np.ndarray:
    """MLS of every (query, gallery) pair, float32 ``[nq, ng]`` (C++ kernels when built)."""
    return np.asarray(kernels.mls(*_two_sets(q_mu, q_sigma_sq, g_mu, g_sigma_sq, np.float32)), np.float32)


def mls_pairs(mu1: ArrayLike, sigma_sq1: ArrayLike, mu2: ArrayLike, sigma_sq2: ArrayLike) -> np.ndarray:
    """MLS of row i of the first set with row i of the second, float64 ``[n]``."""
    m1, s1 = _gaussians(mu1, sigma_sq1, "first")
    m2, s2 = _gaussians(mu2, sigma_sq2, "second")
    if m1.shape != m2.shape:
        raise ValueError(f"pairs need sets of one shape, got {m1.shape} and {m2.shape}")
    var = s1 + s2
    diff = m1 - m2
    return -0.5 * (diff * diff / var + np.log(var)).sum(1) - 0.5 * m1.shape[1] * LOG_2PI


def mls_topk(
    q_mu: ArrayLike,
    q_sigma_sq: ArrayLike,
    g_mu: ArrayLike,
    g_sigma_sq: ArrayLike,
    k: int,
    check_gallery: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-MLS gallery rows of each query, highest first (ties: lower index).

    Returns ``(idx, score)``: int64 and float32 ``[nq, k]``; a gallery of fewer than ``k``
    rows pads with ``idx = -1``, ``score = -inf``. ``check_gallery=False`` skips the pass over
    the gallery's values (for galleries validated when stored, e.g. a Gallery's snapshot).
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise TypeError(f"k must be an integer, got {type(k).__name__}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    sets = _two_sets(q_mu, q_sigma_sq, g_mu, g_sigma_sq, np.float32, check_gallery)
    idx, score = kernels.mls_topk(*sets, int(k))
    return np.asarray(idx, np.int64), np.asarray(score, np.float32)


class MLSMatches(NamedTuple):
    """Pairs at or above an MLS threshold, sorted by (query, gallery)."""

    query: np.ndarray  # int64 [m]
    gallery: np.ndarray  # int64 [m]
    score: np.ndarray  # float32 [m], MLS


def mls_match(
    q_mu: ArrayLike,
    q_sigma_sq: ArrayLike,
    g_mu: ArrayLike,
    g_sigma_sq: ArrayLike,
    threshold: float,
    check_gallery: bool = True,
) -> MLSMatches:
    """Every (query, gallery) pair with ``MLS >= threshold`` (check_gallery: see :func:`mls_topk`)."""
    threshold = float(threshold)
    if not math.isfinite(threshold):
        raise ValueError(f"an MLS threshold must be a finite number, got {threshold}")
    found = kernels.mls_match(*_two_sets(q_mu, q_sigma_sq, g_mu, g_sigma_sq, np.float32, check_gallery), threshold)
    return MLSMatches(np.asarray(found[0], np.int64), np.asarray(found[1], np.int64), np.asarray(found[2], np.float32))


# --------------------------------------------------------------------------------------- fusion


def fuse(
    mus: ArrayLike, sigma_sq: ArrayLike, mode: str = DEFAULT_FUSION, normalize: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """One Gaussian (mu [D], sigma_sq [D], float32) for n faces of one person (see module doc).

    mus, sigma_sq: [n, D], n >= 1. mode: "closed_form" (1/s = sum 1/s_i) or "min_sigma"
    (s = min_i s_i); mu is the precision-weighted mean in both, unit-normalised unless
    ``normalize=False``.
    """
    if mode not in FUSION_MODES:
        raise ValueError(f"unknown fusion mode {mode!r}; choose from {', '.join(FUSION_MODES)}")
    m, s = _gaussians(mus, sigma_sq, "fused")
    if len(m) == 0:
        raise ValueError("fuse needs at least one face")
    precision = 1.0 / s
    total = precision.sum(0)
    mu_hat = (m * precision).sum(0) / total
    sigma_hat = 1.0 / total if mode == "closed_form" else s.min(0)
    if normalize:
        norm = np.linalg.norm(mu_hat)
        if norm > 0:
            mu_hat = mu_hat / norm
    return mu_hat.astype(np.float32), sigma_hat.astype(np.float32)


# -------------------------------------------------------------------------------------- quality


def _variances(sigma_sq: ArrayLike) -> np.ndarray:
    s = np.asarray(sigma_sq)
    if s.dtype.kind not in "fiu" or s.ndim not in (1, 2) or s.shape[-1] < 1:
        raise ValueError(f"sigma_sq must be real [D] or [n, D], got {s.dtype} {s.shape}")
    s = s.astype(np.float64)
    if not (np.isfinite(s).all() and (s > 0).all()):
        raise ValueError("sigma_sq must be finite and > 0 (variances)")
    return s


def harmonic_mean_sigma_sq(sigma_sq: ArrayLike) -> np.ndarray | float:
    """The paper's uncertainty: harmonic mean of sigma^2 over dimensions (lower = better)."""
    s = _variances(sigma_sq)
    h = s.shape[-1] / (1.0 / s).sum(-1)
    return float(h) if s.ndim == 1 else h


def quality(sigma_sq: ArrayLike) -> np.ndarray | float:
    """Face quality ``ln(mean_d 1/sigma_d^2)``, higher = better: ``-ln`` of the paper's
    harmonic mean of sigma^2. A float for one face [D], an array for [n, D]."""
    s = _variances(sigma_sq)
    q = np.log((1.0 / s).mean(-1))
    return float(q) if s.ndim == 1 else q


def _table(metadata: Mapping[str, str], key: str) -> dict[float, float]:
    try:
        return {float(k): float(v) for k, v in json.loads(metadata.get(key, "{}")).items()}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"model metadata {key} is not a JSON object of numbers: {e}") from e


def _lookup(table: dict[float, float], wanted: float) -> float | None:
    for known, value in table.items():
        if math.isclose(known, wanted, rel_tol=1e-6):
            return value
    return None


def mls_threshold_for(metadata: Mapping[str, str], far: float | None = None) -> float:
    """The model's calibrated MLS threshold (at ``far``, or the default one).

    Raises LookupError, saying how to calibrate, when the model has none.
    """
    how = "run `facesdk calibrate --scoring mls --model MODEL --write` or pass threshold="
    if far is None:
        if "mls_threshold" not in metadata:
            raise LookupError(f"the model has no calibrated MLS threshold: {how}")
        return float(metadata["mls_threshold"])
    table = _table(metadata, "mls_threshold_table")
    value = _lookup(table, far)
    if value is None:
        raise LookupError(f"no MLS threshold calibrated for FAR {far:g}; the model has {sorted(table) or 'none'} ({how})")
    return value


def quality_threshold_for(metadata: Mapping[str, str], reject: float) -> float:
    """The model's quality threshold rejecting the fraction ``reject`` of its calibration faces."""
    table = _table(metadata, "quality_reject_table")
    value = _lookup(table, reject)
    if value is None:
        raise LookupError(
            f"no quality threshold for reject fraction {reject:g}; the model has {sorted(table) or 'none'} "
            "(run `facesdk calibrate --scoring mls --model MODEL --write`)"
        )
    return value


# --------------------------------------------------------------------------------------- frames


def box_iou(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """IoU of every box of ``a`` [n, 4] with every box of ``b`` [m, 4] (x1, y1, x2, y2): [n, m]."""
    a = np.asarray(a, np.float64).reshape(-1, 4)
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(w, 0, None) * np.clip(h, 0, None)
    area_a = (a[:, 2] - a[:, 0]).clip(0) * (a[:, 3] - a[:, 1]).clip(0)
    area_b = (b[:, 2] - b[:, 0]).clip(0) * (b[:, 3] - b[:, 1]).clip(0)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class Track:
    """One face followed across frames.

    ``mu``/``sigma_sq``: the fusion of the last ``window`` usable frames (None until one was
    usable); ``frames``: how many frames that fusion holds; ``seen``: frames the face was
    detected in since the track began; ``missed``: consecutive frames without it; ``last_mu``:
    the latest face's mu (usable or not), which the appearance gate also compares with.
    """

    id: int
    box: np.ndarray
    mu: np.ndarray | None = None
    last_mu: np.ndarray | None = None
    sigma_sq: np.ndarray | None = None
    frames: int = 0
    seen: int = 1
    missed: int = 0
    history: deque = field(default_factory=deque, repr=False)

    @property
    def quality(self) -> float | None:
        return None if self.sigma_sq is None else quality(self.sigma_sq)


class FrameTracker:
    """Associates the faces of consecutive frames and fuses each face's embeddings.

    iou_threshold: least box IoU between a track's last box and a detection to continue it.
    window: frames fused per track (the most recent usable ones). max_missed: a track not
    detected for more than this many consecutive frames ends. fusion, normalize: see
    :func:`fuse`. appearance_gate: largest squared L2 between a detection's unit mu and the
    track's (fused or latest) unit mu to continue it; None follows boxes only (for embeddings
    that are not face embeddings). Not thread-safe: one tracker per video stream.
    """

    def __init__(
        self,
        iou_threshold: float = 0.3,
        window: int = 10,
        max_missed: int = 5,
        fusion: str = DEFAULT_FUSION,
        normalize: bool = True,
        appearance_gate: float | None = DEFAULT_APPEARANCE_GATE,
    ) -> None:
        if not 0 < iou_threshold <= 1:
            raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
        if appearance_gate is not None and not (isinstance(appearance_gate, (int, float)) and 0 < appearance_gate <= 4):
            raise ValueError(f"appearance_gate must be a squared L2 in (0, 4] or None, got {appearance_gate!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"window must be an int >= 1, got {window!r}")
        if isinstance(max_missed, bool) or not isinstance(max_missed, int) or max_missed < 0:
            raise ValueError(f"max_missed must be an int >= 0, got {max_missed!r}")
        if fusion not in FUSION_MODES:
            raise ValueError(f"unknown fusion mode {fusion!r}; choose from {', '.join(FUSION_MODES)}")
        self.iou_threshold, self.window, self.max_missed = float(iou_threshold), window, max_missed
        self.fusion, self.normalize = fusion, normalize
        self.appearance_gate = None if appearance_gate is None else float(appearance_gate)
        self._tracks: list[Track] = []
        self._next_id = 0

    @property
    def tracks(self) -> list[Track]:
        """The live tracks (seen within the last ``max_missed`` frames)."""
        return list(self._tracks)

    def reset(self) -> None:
        self._tracks.clear()

    def update(
        self,
        boxes: ArrayLike,
        mus: ArrayLike,
        sigma_sq: ArrayLike,
        usable: Sequence[bool] | None = None,
    ) -> list[Track]:
        """One frame's faces: boxes [n, 4], mus and sigma_sq [n, D]; returns their tracks, in order.

        ``usable[i] = False`` (e.g. a face below the quality threshold) keeps face i's track alive
        and moves its box, but leaves the face out of the fusion.
        """
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        n = len(boxes)
        if n:
            m, s = _gaussians(mus, sigma_sq, "frame")
            if len(m) != n:
                raise ValueError(f"{n} boxes but {len(m)} embeddings")
        else:
            m = s = np.zeros((0, 1))
        ok = [True] * n if usable is None else [bool(u) for u in usable]
        if len(ok) != n:
            raise ValueError(f"{n} boxes but {len(ok)} usable flags")

        # Greedy association over the pairs passing both gates, nearest in appearance first (then
        # best overlap): where two boxes overlap, as two people cross, the face decides.
        assigned: dict[int, Track] = {}
        if n and self._tracks:
            iou = box_iou(boxes, np.stack([t.box for t in self._tracks]))
            look = self._appearance(m) if self.appearance_gate is not None else np.zeros_like(iou)
            allowed = iou >= self.iou_threshold
            if self.appearance_gate is not None:
                allowed &= look <= self.appearance_gate
            taken: set[int] = set()
            for flat in np.lexsort((-iou.ravel(), look.ravel())):
                i, j = divmod(int(flat), iou.shape[1])
                if not allowed[i, j] or i in assigned or j in taken:
                    continue
                assigned[i] = self._tracks[j]
                taken.add(j)
        continued = {id(t) for t in assigned.values()}
        for t in self._tracks:
            if id(t) not in continued:
                t.missed += 1
        self._tracks = [t for t in self._tracks if t.missed <= self.max_missed]

        out = []
        for i in range(n):
            track = assigned.get(i)
            if track is None:
                track = Track(id=self._next_id, box=boxes[i].copy(), history=deque(maxlen=self.window))
                self._next_id += 1
                self._tracks.append(track)
            else:
                track.box, track.missed, track.seen = boxes[i].copy(), 0, track.seen + 1
            track.last_mu = m[i].copy()
            if ok[i]:
                track.history.append((m[i], s[i]))
                track.mu, track.sigma_sq = fuse(
                    np.stack([h[0] for h in track.history]),
                    np.stack([h[1] for h in track.history]),
                    self.fusion,
                    self.normalize,
                )
                track.frames = len(track.history)
            out.append(track)
        return out

    def _appearance(self, mus: np.ndarray) -> np.ndarray:
        """Squared L2 [n, tracks] of each face's unit mu to the nearer of each track's unit fused
        mu and unit latest mu."""
        faces = _unit(mus)
        out = np.full((len(mus), len(self._tracks)), np.inf)
        for j, t in enumerate(self._tracks):
            for ref in (t.mu, t.last_mu):
                if ref is not None:
                    out[:, j] = np.minimum(out[:, j], ((faces - _unit(ref[None])) ** 2).sum(1))
        return out


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float64)
    norm = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norm, out=np.zeros_like(v), where=norm > 0)
