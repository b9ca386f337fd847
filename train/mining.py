"""FaceNet's online triplet mining as a compiled torch op (CPU and CUDA kernels).

``mine_triplets(embeddings, labels)`` returns index tensors ``(a, p, n)`` (pytorch-metric-learning's
miner convention) of triplets for the triplet loss on squared L2 distances. The rule, for
L2-normalised embeddings ``x`` [B, D], labels [B] and margin ``alpha``:

- ``d(i, j) = |x_i - x_j|^2``, computed in float64 (summed over the dimensions in order, no fused
  multiply-add), so the CPU op, the CUDA op and ``mine_triplets_reference`` agree bit for bit.
- Every anchor-positive pair ``(a, p)``, ``a != p`` with one label, is considered, in (a, p) order.
- ``mode="semihard"`` (FaceNet): one negative ``n`` (another label) with
  ``d(a,p) < d(a,n) < d(a,p) + alpha``, drawn *uniformly* among the pair's semi-hard negatives by
  a counter-based generator keyed on ``(seed, a, p)`` (SplitMix64): the k-th semi-hard negative in
  index order, ``k = hash(seed, a, p) mod count``. Why random rather than the hardest semi-hard
  negative (the closest one above ``d(a,p)``): that choice depends on the positive only through
  ``d(a,p)``, so an anchor's ~40 positives pick among the few negatives nearest the anchor, and
  a batch puts its gradient on a handful of faces; a uniform draw uses the whole semi-hard band,
  as FaceNet's selection intends, and stays reproducible (a seed; any thread count or device).
  When a pair has no semi-hard negative, ``fallback`` decides: ``"none"`` (default) skips the
  pair, like pytorch-metric-learning; ``"easy"`` takes the closest negative with
  ``d(a,n) > d(a,p)`` (outside the margin: zero loss, it only keeps the pair in a mean over
  pairs, as TensorFlow's ``triplet_semihard_loss`` does); ``"hardest"`` takes the closest
  negative (a hard one: FaceNet warns that hardest negatives early in training collapse the model).
- ``mode="hardest"``: the closest negative of the anchor, for every pair.
- ``mode="batch_all"``: every triplet with positive loss, ``d(a,n) < d(a,p) + alpha``, in
  (a, p, n) order. Their number grows as B^3 (up to 1.2e8 at FaceNet's batch of 1,800), so the
  output is capped at ``max_triplets`` (default 2^22 = 4,194,304 triplets, 100 MB of indices):
  when N > cap triplets qualify, a systematic sample of exactly ``cap`` of them is returned,
  ranks ``floor((i*N + s) / cap)`` with ``s`` in [0, N) drawn from the seed, so the kept triplets
  are spread evenly over anchors and pairs.
- Ties between equal distances go to the lower index. Working memory is O(B^2) (the distance
  matrix and one value per pair), never O(B^3); the output is at most ``max_triplets`` long.

The op is built from ``csrc/mining`` on first use with ``torch.utils.cpp_extension.load`` (JIT,
cached under ``$FACESDK_HOME/torch_extensions`` or ``~/.cache/facesdk/torch_extensions``); the CUDA
kernel is added when torch has CUDA and nvcc is found.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import numpy as np
import torch

log = logging.getLogger(__name__)

Mode = Literal["semihard", "hardest", "batch_all"]
Fallback = Literal["none", "easy", "hardest"]
MODES: tuple[str, ...] = ("semihard", "hardest", "batch_all")
FALLBACKS: tuple[str, ...] = ("none", "easy", "hardest")
DEFAULT_MAX_TRIPLETS = 1 << 22

_SOURCES = Path(__file__).resolve().parents[1] / "csrc" / "mining"
_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # the constants of csrc/mining/mining.h
_SAMPLE_SALT = 0xD1B54A32D192ED03

Triplets = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class MiningBuildError(RuntimeError):
    """The mining op could not be compiled or loaded (no compiler, no ninja, a build error)."""


# --- the op ---------------------------------------------------------------------------------------


def mine_triplets(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    mode: Mode = "semihard",
    seed: int = 0,
    fallback: Fallback = "none",
    max_triplets: int = DEFAULT_MAX_TRIPLETS,
) -> Triplets:
    """Triplets ``(a, p, n)`` (int64, on the embeddings' device) mined by the compiled op.

    embeddings: [B, D] floating point (converted to float32), L2-normalised for FaceNet's margin
    to mean what it says; labels: [B] integer identities on the same device; B >= 2 and at least
    one pair of faces must share a label. See the module docstring for the rule of each mode.
    Gradients do not flow through mining (the indices select rows for the loss).
    """
    emb, lab, seed64 = _validated(embeddings, labels, margin, mode, seed, fallback, max_triplets)
    op = load_op(cuda=emb.is_cuda)
    with torch.no_grad():
        return op(emb, lab, float(margin), mode, seed64, fallback, int(max_triplets))


def load_op(cuda: bool = False) -> Callable[..., Triplets]:
    """``torch.ops.facesdk.mine_triplets``, compiling it on first use (cached on disk).

    The build includes the CUDA kernel when torch has CUDA and nvcc is found; it serves CPU
    tensors either way. cuda=True: raise MiningBuildError if the loaded build has no CUDA kernel.
    """
    global _loaded_with_cuda
    with _load_lock:
        if _loaded_with_cuda is None:
            with_cuda = torch.cuda.is_available() and _nvcc() is not None
            _build(with_cuda)
            _loaded_with_cuda = with_cuda
    if cuda and not _loaded_with_cuda:
        raise MiningBuildError(
            "mine_triplets on CUDA tensors needs torch with CUDA and nvcc when the op is first built "
            f"(torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, nvcc: {_nvcc()})"
        )
    return torch.ops.facesdk.mine_triplets


_load_lock = threading.Lock()
_loaded_with_cuda: bool | None = None  # None: not loaded yet in this process


def build_dir(with_cuda: bool) -> Path:
    """Where the JIT build of the op is cached (one folder per torch version and CUDA flavour)."""
    from sdk.paths import home

    flavour = f"cu{torch.version.cuda}" if with_cuda else "cpu"
    return home() / "torch_extensions" / f"mining-torch{torch.__version__}-{flavour}"


def _build(with_cuda: bool) -> None:
    from torch.utils import cpp_extension

    compiler = os.environ.get("CXX", "c++")
    if shutil.which(compiler) is None:
        raise MiningBuildError(
            f"no C++ compiler ({compiler!r} not found; set CXX or install g++): "
            "the mining op is compiled on first use"
        )
    if not cpp_extension.is_ninja_available():
        raise MiningBuildError("ninja not found (pip install ninja): torch builds the mining op with it")
    sources = [_SOURCES / "mining_cpu.cpp", _SOURCES / "mining_torch.cpp"]
    if with_cuda:
        sources += [_SOURCES / "mining_cuda.cu", _SOURCES / "mining_torch_cuda.cpp"]
    directory = build_dir(with_cuda)
    directory.mkdir(parents=True, exist_ok=True)
    flavour = "CPU+CUDA" if with_cuda else "CPU"
    log.info("loading the mining op (%s) from %s; the first use compiles it", flavour, directory)
    try:
        cpp_extension.load(
            name="facesdk_mining",
            sources=[str(s) for s in sources],
            # No FMA contraction: the distances must round the same way on every device.
            extra_cflags=["-O3", "-ffp-contract=off"],
            extra_cuda_cflags=["-O3", "--fmad=false"],
            extra_include_paths=[str(_SOURCES)],
            build_directory=str(directory),
            with_cuda=with_cuda,
            is_python_module=False,
            verbose=False,
        )
    except (RuntimeError, OSError, ImportError) as e:
        message = str(e)[-3000:]  # the compiler's last words
        raise MiningBuildError(f"building the mining op from {_SOURCES} in {directory} failed:\n{message}") from e


def _nvcc() -> str | None:
    from torch.utils import cpp_extension

    if cpp_extension.CUDA_HOME is not None and (Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc").is_file():
        return str(Path(cpp_extension.CUDA_HOME) / "bin" / "nvcc")
    return shutil.which("nvcc")


# --- input checks, shared by the op and the reference ----------------------------------------------


def _validated(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float,
    mode: str,
    seed: int,
    fallback: str,
    max_triplets: int,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(float32 contiguous detached embeddings, int64 labels, seed as a signed 64-bit int)."""
    if not isinstance(embeddings, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise TypeError(
            "embeddings and labels must be torch tensors, "
            f"got {type(embeddings).__name__} and {type(labels).__name__}"
        )
    if embeddings.dim() != 2 or embeddings.shape[1] < 1:
        raise ValueError(f"embeddings must be [B, D] with D >= 1, got shape {tuple(embeddings.shape)}")
    if not embeddings.is_floating_point():
        raise TypeError(f"embeddings must be floating point, got {embeddings.dtype}")
    batch = embeddings.shape[0]
    if batch < 2:
        raise ValueError(f"mining needs at least 2 embeddings, got {batch}")
    if labels.dim() != 1 or labels.shape[0] != batch:
        raise ValueError(f"labels must be [B] = [{batch}], got shape {tuple(labels.shape)}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    if labels.device != embeddings.device:
        raise ValueError(f"labels are on {labels.device}, embeddings on {embeddings.device}")
    if embeddings.device.type not in ("cpu", "cuda"):
        raise ValueError(f"mining runs on cpu or cuda tensors, got {embeddings.device}")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback must be one of {', '.join(FALLBACKS)}, got {fallback!r}")
    if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not math.isfinite(margin) or margin < 0:
        raise ValueError(f"margin must be a finite number >= 0, got {margin!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an integer, got {seed!r}")
    if isinstance(max_triplets, bool) or not isinstance(max_triplets, (int, np.integer)) or max_triplets < 1:
        raise ValueError(f"max_triplets must be an integer >= 1, got {max_triplets!r}")
    emb = embeddings.detach().to(torch.float32).contiguous()
    if not bool(torch.isfinite(emb).all()):
        raise ValueError("embeddings contain NaN or Inf (or overflow float32)")
    lab = labels.detach().to(torch.int64).contiguous()
    _, counts = torch.unique(lab, return_counts=True)
    if int(counts.max()) < 2:
        raise ValueError(f"no anchor-positive pair: all {batch} labels differ (sample several faces per identity)")
    seed64 = int(seed) & _MASK64
    return emb, lab, seed64 - (1 << 64) if seed64 >= 1 << 63 else seed64


# --- the plain PyTorch reference: the same rule, for tests ----------------------------------------


def mine_triplets_reference(
    embeddings: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 0.2,
    mode: Mode = "semihard",
    seed: int = 0,
    fallback: Fallback = "none",
    max_triplets: int = DEFAULT_MAX_TRIPLETS,
    chunk: int = 1 << 22,
) -> Triplets:
    """The rule of ``mine_triplets`` in plain PyTorch (numpy for the 64-bit hash), for tests.

    Same arguments and the same result, bit for bit, on the CPU. Memory: the [B, B] distance
    matrix and about ``chunk`` elements of masks at a time (pairs are processed in groups).
    """
    emb, lab, seed64 = _validated(embeddings, labels, margin, mode, seed, fallback, max_triplets)
    emb, lab = emb.cpu(), lab.cpu()
    seed_u = seed64 & _MASK64
    with torch.no_grad():
        dist = squared_distances_f64(emb)
        batch = emb.shape[0]
        same = lab[:, None] == lab[None, :]
        anchors, positives = (same & ~torch.eye(batch, dtype=torch.bool)).nonzero(as_tuple=True)
        pieces: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        step = max(1, chunk // batch)
        for start in range(0, len(anchors), step):
            a, p = anchors[start : start + step], positives[start : start + step]
            pieces.append(_mine_pairs(dist, same, a, p, margin, mode, seed_u, fallback))
        out = [torch.cat([piece[i] for piece in pieces]) for i in range(3)]
        total = len(out[0])
        if total > max_triplets:
            if total * max_triplets >= 1 << 63:
                raise OverflowError("the reference's cap arithmetic needs total * max_triplets < 2^63")
            offset = _mix64_int(_mix64_int((seed_u + _GOLDEN) & _MASK64) ^ _SAMPLE_SALT) % total
            ranks = (torch.arange(max_triplets, dtype=torch.int64) * total + offset) // max_triplets
            out = [o[ranks] for o in out]
    device = embeddings.device
    return out[0].to(device), out[1].to(device), out[2].to(device)


def squared_distances_f64(embeddings: torch.Tensor) -> torch.Tensor:
    """[B, B] squared L2 in float64, summed over the dimensions in order (the kernels' rounding)."""
    columns = embeddings.to(torch.float64).t().contiguous()  # [D, B]: contiguous broadcasts are fast
    batch = columns.shape[1]
    dist = torch.zeros(batch, batch, dtype=torch.float64, device=columns.device)
    rows = max(1, (1 << 17) // batch)  # a block of rows stays in cache across the D steps
    diff = torch.empty(rows, batch, dtype=torch.float64, device=columns.device)
    for start in range(0, batch, rows):
        block, scratch = dist[start : start + rows], diff[: min(rows, batch - start)]
        for column in columns:
            torch.sub(column[start : start + rows, None], column[None, :], out=scratch)
            block.add_(scratch.mul_(scratch))  # square and round, then add and round: no FMA
    return dist


def _mine_pairs(
    dist: torch.Tensor,
    same: torch.Tensor,
    a: torch.Tensor,
    p: torch.Tensor,
    margin: float,
    mode: str,
    seed_u: int,
    fallback: str,
) -> Triplets:
    """The triplets of the anchor-positive pairs (a, p), in pair order."""
    rows = dist[a]  # [pairs, B]: d(a, n) for every n
    negative = ~same[a]
    ap = dist[a, p][:, None]
    hi = ap + margin
    if mode == "batch_all":
        pair, n = (negative & (rows < hi)).nonzero(as_tuple=True)
        return a[pair], p[pair], n
    inf = torch.tensor(torch.inf, dtype=torch.float64)
    closest = torch.where(negative, rows, inf).min(dim=1)  # ties: the first (lowest) index
    has_negative = closest.values < inf
    if mode == "hardest":
        return a[has_negative], p[has_negative], closest.indices[has_negative]
    band = negative & (rows > ap) & (rows < hi)
    count = band.sum(dim=1)
    key = (a.numpy().astype(np.uint64) << np.uint64(32)) | p.numpy().astype(np.uint64)
    draws = _mix64(key ^ np.uint64(_mix64_int((seed_u + _GOLDEN) & _MASK64)))
    k = torch.from_numpy((draws % np.maximum(count.numpy(), 1).astype(np.uint64)).astype(np.int64))
    kth = band & (band.cumsum(dim=1) == (k + 1)[:, None])
    chosen = torch.where(count > 0, kth.to(torch.int8).argmax(dim=1), -1)
    if fallback == "easy":
        easy = torch.where(negative & (rows > ap), rows, inf).min(dim=1)
        chosen = torch.where((count == 0) & (easy.values < inf), easy.indices, chosen)
    elif fallback == "hardest":
        chosen = torch.where((count == 0) & has_negative, closest.indices, chosen)
    keep = chosen >= 0
    return a[keep], p[keep], chosen[keep]


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64 arrays (wrapping arithmetic), as in mining.h."""
    x = x.astype(np.uint64)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _mix64_int(x: int) -> int:
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)
