"""The SDK's front door: ``sdk.Verifier().match(frame)``.

A Verifier owns a detector, the canonical aligner, an embedding backend and an enrolment
gallery. Every face of a frame is embedded in one batch and matched against the gallery with
the C++ kernels. Thresholds are squared-L2 distances calibrated on labelled data and stored in
the model file. By default a search's threshold keeps the share of strangers' searches that
return anyone (FPIR) at DEFAULT_FPIR for the gallery's size (``facesdk eval fpir --write``);
``far=`` / ``threshold=`` fix a pairwise one instead (``facesdk calibrate --write``).

Presentation-attack detection: pass ``liveness=callable(frame_bgr, detection) -> bool`` and
faces it returns False for are reported with ``live=False``, never identified nor accepted.
``liveness="minifasnet"`` uses the MiniFASNet models (:mod:`sdk.liveness`, written once by
``facesdk export minifasnet``). Off by default; the hook runs before embedding, so a vetoed face
costs nothing else.

Probabilistic Face Embeddings (a model with a ``sigma_sq`` output, see :mod:`sdk.pfe`):

* ``scoring="l2"`` (the default, for every model) compares the model's mu by squared L2 with the
  squared-L2 thresholds. ``scoring="mls"`` compares faces by mutual likelihood score, higher =
  more alike; thresholds are MLS values (accept if ``MLS >= threshold``) from the model's
  ``mls_threshold`` / ``mls_threshold_table`` (``facesdk calibrate --scoring mls --write``).
  MLS is not the default: with our head it did not beat L2 on LFW, and at a threshold
  calibrated on clean faces it accepts far more impostor pairs of two poor faces than L2
  (README, "Probabilistic Face Embeddings").
  Where it wins (one poor face against good ones; quality gating) see README. Set
  ``min_quality`` when faces may be poor, whatever the scoring.
* Enrolment stores each face's sigma_sq and quality in the gallery; every Match carries its
  face's ``quality`` (``sdk.pfe.quality``: ln of the mean precision, higher = better).
* ``min_quality=q`` gates faces: enrolment of a face below it raises :class:`LowQualityError`
  and stores nothing; ``match`` reports such a face with ``accepted=False, reason="low_quality"``
  (never identified); ``verify`` answers ``same=False, reason="low_quality"``; ``identify``
  raises LowQualityError.
* Video: ``stream = v.stream()`` gives a :class:`FaceStream`; ``stream.match(frame)`` follows
  each face across frames (box IoU) and identifies the fusion of its last frames
  (:class:`sdk.pfe.FrameTracker`). A separate object rather than ``match(frame, track=True)``:
  the tracks belong to one camera, while one Verifier serves many threads and cameras.
  It works for any model: without sigma_sq the frames' embeddings are averaged.

``Match.reason`` says why a face was not accepted: ``"not_live"``, ``"low_quality"`` or
``"no_match"`` (nobody enrolled is close enough, or the gallery is empty); None when accepted.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from sdk import chips, detect, loader, paths, pfe
from sdk.embed import FRAME_TABLES, TRACK_TABLES, fpir_table
from sdk.errors import (
    AmbiguousFaceError,
    DuplicateFaceError,
    FaceSDKError,
    InconsistentFaceError,
    InvalidArgumentError,
    InvalidImageError,
    LowQualityError,
    NoFaceError,
)
from sdk.gallery import Gallery, clean_name
from sdk.images import MAX_PIXELS, Image, check_color, is_single_image, load_image  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

Liveness = Callable[[np.ndarray, detect.Detection], bool]
# Detection runs on a copy whose longer side is at most this; alignment uses full resolution.
DETECT_MAX_SIDE = 1280


# Enrolment checks, as calibrated false accept rates of the model's threshold table (README,
# "Clean enrolment"): another identity closer than the DUPLICATE_FAR threshold is taken to be
# this face under another name; a face farther than the CONSISTENT_FAR threshold from every
# face of the template is taken to be someone else.
DUPLICATE_FAR = 1e-5
CONSISTENT_FAR = 1e-3
# Squared L2 below which a face is the same image again (a re-encoded JPEG stays far below it,
# a resized copy or another photo far above).
SAME_IMAGE = 1e-3
ADDED, SKIPPED, REFUSED = "added", "skipped", "refused"

# The default operating point: at most this share of searches by people not enrolled return
# anyone, whatever the gallery's size (README, "Open set at gallery size N"). At N = 1 it is
# the pairwise FAR 1e-3 of the model's default threshold; a stranger trying one door ten times
# gets in about 1 % of the time, where FPIR 1e-2 would let about 10 % in.
DEFAULT_FPIR = 1e-3

SCORINGS = ("mls", "l2")
NOT_LIVE, LOW_QUALITY, NO_MATCH = "not_live", "low_quality", "no_match"


@dataclass(frozen=True)
class Match:
    """One face of a frame. identity is None unless accepted."""

    box: np.ndarray  # x1, y1, x2, y2 in frame pixels
    landmarks: np.ndarray  # [5, 2] in frame pixels
    score: float  # detector confidence
    identity: str | None
    # Squared L2 to the enrolled face that decided (scoring "l2": the nearest; "mls": the one of
    # highest MLS). inf: empty gallery, not live or low quality.
    distance: float
    accepted: bool  # within the threshold, live and of sufficient quality
    live: bool = True  # False when the liveness hook vetoed the face
    quality: float | None = None  # PFE models: sdk.pfe.quality of the face (stream: of the fused track)
    mls: float | None = None  # scoring "mls": the mutual likelihood score that decided
    reason: str | None = None  # why not accepted: "not_live", "low_quality", "no_match"; None when accepted
    track_id: int | None = None  # FaceStream only: the face's track across frames
    frames: int = 1  # FaceStream only: frames fused into this answer
    decided_at: int | None = None  # FaceStream only: frame index at which the track was first accepted as this identity


@dataclass(frozen=True)
class Verification:
    same: bool
    distance: float  # squared L2 between the two faces (mu for a PFE model)
    threshold: float  # in the units of `scoring`: squared L2 (same if <=) or MLS (same if >=)
    mls: float | None = None  # scoring "mls": the mutual likelihood score
    scoring: str = "l2"
    reason: str | None = None  # "low_quality" below min_quality; "not_live" (claims); "no_face" (FaceStream.claim)


@dataclass(frozen=True)
class EnrolResult:
    """What enrolment did with one image (:meth:`Verifier.enroll_each`)."""

    source: str  # the image's path, or a description of it
    status: str  # "added", "skipped" (the same image is already there) or "refused"
    reason: str | None = None  # why skipped or refused; None when added
    error: FaceSDKError | None = None  # refused: the error `enroll` raises for it
    other: str | None = None  # refused as a duplicate: the identity the face is enrolled under
    distance: float | None = None  # squared L2 that decided a skip or a refusal


class Verifier:
    """Face verification and identification against an enrolment gallery.

    model: a facesdk model file (default: the default model, written on first use; see
    :mod:`sdk.loader`). Its ``chip_scheme`` says how faces are cut (:mod:`sdk.chips`).
    backend: a key of ``sdk.loader.EMBEDDING_BACKENDS``: "onnxruntime" (providers e.g.
    ["CUDAExecutionProvider"]; an unavailable one raises BackendUnavailableError, never a silent
    CPU fallback) or "tensorrt" (``model`` is an engine built by ``facesdk export trt``; see
    docs/tensorrt.md, never run on real TensorRT yet).
    detector: a key of ``sdk.detect.DETECTORS`` ("auto": the packaged YuNet, else dlib's HOG;
    "yunet"; "dlib"), or an object with ``detect(bgr) -> list[Detection]``, ``name`` and ``scheme``.
    gallery: SQLite file (default ``$FACESDK_HOME/gallery.sqlite``), or None for in-memory.
    scoring: "l2" (default) or "mls" (PFE models only; see the module doc).
    threshold: squared L2 (scoring "l2") or MLS (scoring "mls"); default the model's calibrated
    one. far: pick the model's calibrated threshold for this false accept rate instead.
    fpir: the default (DEFAULT_FPIR, when the model has an ``fpir_threshold_table`` and neither
    far nor threshold is given): the threshold follows the gallery's size so that about this
    share of searches by people not enrolled return anyone (FPIR); see :meth:`operating_point`.
    ``far=`` or ``threshold=`` fix a pairwise threshold instead, whatever the gallery's size.
    min_quality: PFE models only: faces of lower :func:`sdk.pfe.quality` are refused (see the
    module doc); :meth:`quality_for` reads the model's calibrated values. Default None: no gate.
    model_sha256: pin the model file: InvalidModelError unless its SHA-256 is this (hex).
    gallery_precision: "fp32" (default), "fp16" or "int8": the gallery's rows in memory
    (:class:`sdk.gallery.Gallery`'s ``precision``); decisions are float32's either way.
    liveness: a callable(frame_bgr, detection) -> bool, or a name of ``sdk.liveness.LIVENESS``
    ("minifasnet"); see the module doc.
    The gallery records the network (graph) each precision enrolled with and refuses another
    network under the same model name and version (ModelMismatchError).

    Images (every method that takes one): a file path, a uint8 array or a PIL image
    (:func:`sdk.images.load_image`). Arrays are BGR (OpenCV's order); pass ``color="rgb"`` for
    an RGB one. Bad images raise InvalidImageError, bad arguments InvalidArgumentError.
    """

    def __init__(
        self,
        model: str | os.PathLike | None = None,
        backend: str = "onnxruntime",
        detector: str | Any = "auto",
        gallery: str | os.PathLike | None = "default",
        *,
        threshold: float | None = None,
        far: float | None = None,
        fpir: float | None = None,
        providers: Sequence[str] | None = None,
        threads: int | None = None,
        liveness: Liveness | str | None = None,
        scoring: str = "l2",
        min_quality: float | None = None,
        model_sha256: str | None = None,
        gallery_precision: str = "fp32",
    ) -> None:
        if scoring == "mls" and gallery_precision != "fp32":
            raise InvalidArgumentError("scoring='mls' reads float32 means: use gallery_precision='fp32'")
        if liveness is not None:  # first: a bad name fails before any file is opened
            from sdk.liveness import liveness_from  # its models load only when asked for

            liveness = liveness_from(liveness)
        self.embedder = loader.embedder(model, backend, providers=providers, threads=threads)
        if model_sha256 is not None:
            loader.check_pinned(self.embedder.path, model_sha256)
        meta = self.embedder.metadata
        self.chip = chips.ChipScheme.parse(meta["chip_scheme"])  # checked against input_size at load
        self.detector = detect.detector_from(detector)
        if gallery == "default":
            gallery = paths.home() / "gallery.sqlite"
            paths.private_dir(gallery.parent)
        digest = getattr(self.embedder, "network_sha256", None)  # TensorRT engines: not checked
        self.gallery = Gallery(
            gallery,
            model_name=meta["model_name"],
            model_version=meta["model_version"],
            dim=self.embedder.embedding_dim,
            network=None if digest is None else (meta.get("precision", "fp32"), digest),
            precision=gallery_precision,
        )
        # A PFE model also gives each face's variance sigma_sq.
        self.has_uncertainty = bool(getattr(self.embedder, "has_uncertainty", False))
        if scoring not in SCORINGS:
            raise InvalidArgumentError(f"scoring must be one of {', '.join(SCORINGS)}, got {scoring!r}")
        if scoring == "mls" and not self.has_uncertainty:
            raise FaceSDKError(
                f"scoring='mls' needs a PFE model (an output sigma_sq); {self.embedder.path} has none: use scoring='l2'"
            )
        self.scoring = scoring
        if min_quality is not None:
            if not self.has_uncertainty:
                raise FaceSDKError(f"min_quality needs a PFE model (an output sigma_sq); {self.embedder.path} has none")
            min_quality = _number(min_quality, "min_quality")
            if not math.isfinite(min_quality):
                raise InvalidArgumentError(f"min_quality must be a finite number, got {min_quality}")
        self.min_quality = min_quality
        # Every FPIR row of the track table, read once: 1:1 claims over a track use its N = 1 column.
        self._track_table = fpir_table(meta, TRACK_TABLES[0], str(self.embedder.path)) if TRACK_TABLES[0] in meta else {}
        self.fpir = None
        if fpir is None and far is None and threshold is None and scoring == "l2" and self._has_fpir(DEFAULT_FPIR):
            fpir = DEFAULT_FPIR
        if fpir is not None:
            if far is not None or threshold is not None:
                raise InvalidArgumentError("give fpir, far or threshold, not more than one")
            if scoring != "l2":
                raise InvalidArgumentError("fpir needs scoring='l2' (the FPIR table holds squared-L2 thresholds)")
            fpir = _number(fpir, "fpir")
            self._fpir_table = self._fpir_row(fpir, FRAME_TABLES)  # read once; fails now if the model has no such row
            # Fusing frames moves distances: a track has its own thresholds where the model has them.
            self._fpir_track_table = self._fpir_row(fpir, TRACK_TABLES) if TRACK_TABLES[0] in meta else self._fpir_table
            self.fpir = float(fpir)
            self._fixed_threshold = math.nan
        else:
            self._fixed_threshold = self.threshold_for(far) if threshold is None else self._checked_threshold(threshold)
        self._warned_size = 0
        self._threshold_at = (-1, math.nan)  # (gallery size, threshold) of the last decision
        self.liveness = liveness
        log.info("Verifier: %s", self.info())

    def info(self) -> dict[str, Any]:
        """What runs: backend, providers, model, detector, gallery, threshold."""
        return {
            "backend": self.embedder.backend,
            "providers": list(self.embedder.providers),
            "model": f"{self.embedder.metadata['model_name']} v{self.embedder.metadata['model_version']}",
            "model_path": str(self.embedder.path),
            "detector": self.detector.name,
            "gallery": str(self.gallery.path) if self.gallery.path else ":memory:",
            "scoring": self.scoring,
            "threshold": self.threshold,
            "min_quality": self.min_quality,
            **({"operating_point": self.operating_point()} if self.fpir is not None else {}),
        }

    @property
    def threshold(self) -> float:
        """The threshold decisions use now: fixed, or with ``fpir`` the one for the gallery's size."""
        if self.fpir is None:
            return self._fixed_threshold
        n = self.gallery.face_count()
        at = self._threshold_at  # one read: another thread may replace it meanwhile
        if at[0] != n:  # the table is read again only when the gallery's size changes
            at = self._threshold_at = (n, self.operating_point(n)["threshold"])
        return at[1]

    def _has_fpir(self, fpir: float) -> bool:
        meta = self.embedder.metadata
        if FRAME_TABLES[0] not in meta:
            return False
        return any(math.isclose(known, fpir, rel_tol=1e-6) for known in fpir_table(meta, FRAME_TABLES[0], str(self.embedder.path)))

    def _fpir_row(self, fpir: float, keys: tuple[str, str]) -> tuple[dict[int, float], dict[int, float] | None]:
        """The model's calibrated thresholds (and FNIR, when measured) by gallery size for `fpir`,
        from the tables `keys` (thresholds, FNIR)."""
        meta, source = self.embedder.metadata, str(self.embedder.path)
        if keys[0] not in meta:
            raise FaceSDKError(f"{source} has no {keys[0]}: run `facesdk eval fpir --write` or pass far= / threshold=")
        thresholds = fpir_table(meta, keys[0], source)
        fnir = fpir_table(meta, keys[1], source, 0.0, 1.0 + 1e-9, monotone=False) if keys[1] in meta else {}
        for known in thresholds:
            if math.isclose(known, fpir, rel_tol=1e-6):
                return thresholds[known], fnir.get(known)
        raise FaceSDKError(f"no threshold calibrated for FPIR {fpir:g}; the model has {sorted(thresholds)}")

    def operating_point(self, size: int | None = None, *, track: bool = False) -> dict[str, Any]:
        """The 1:N operating point for a gallery of `size` enrolled faces (default: the
        gallery's own), for a search by one frame or (``track``) by a fused track: threshold
        interpolated in log N between the calibrated sizes, the target FPIR, the FNIR measured
        there, and a warning when N is beyond what was measured (the threshold stays at the
        largest measured N's, so the FPIR grows past the target, roughly in proportion to N) or
        when most enrolled people would be missed.

        N counts faces, not identities: the tables were measured with one face per person, and a
        stranger meets every enrolled face, so a person enrolled with three images counts three
        (a little stricter than needed: one person's faces are alike)."""
        if self.fpir is None:
            raise FaceSDKError("operating_point needs a Verifier with an FPIR operating point (fpir=)")
        n = self.gallery.face_count() if size is None else int(size)
        thresholds, fnir = self._fpir_track_table if track else self._fpir_table
        sizes = sorted(thresholds)
        at = float(np.clip(math.log(max(n, 1)), math.log(sizes[0]), math.log(sizes[-1])))
        logs = [math.log(s) for s in sizes]
        point: dict[str, Any] = {
            "gallery_size": n,
            "search": "track" if track else "frame",
            "target_fpir": self.fpir,
            "threshold": float(np.interp(at, logs, [thresholds[s] for s in sizes])),
            "expected_fpir": self.fpir if n <= sizes[-1] else min(1.0, self.fpir * n / sizes[-1]),
            "expected_fnir": float(np.interp(at, logs, [fnir[s] for s in sizes])) if fnir else None,
            "measured_sizes": sizes,
            "warning": None,
        }
        if n > sizes[-1]:
            point["warning"] = (
                f"the gallery holds {n} faces, more than the {sizes[-1]} the FPIR table was measured for: "
                f"expect about {point['expected_fpir']:.2g} of strangers accepted, not {self.fpir:g}"
            )
        elif point["expected_fnir"] is not None and point["expected_fnir"] > 0.5:
            point["warning"] = (
                f"at FPIR {self.fpir:g} and {n} enrolled faces the model misses about {point['expected_fnir']:.0%} "
                "of enrolled people's searches by one frame: the gallery has outgrown this model at this FPIR; "
                "decide on tracks (Verifier.stream) or against a claimed identity (verify_claim)"
            )
        if point["warning"] and n > self._warned_size:  # once per size reached, not per search
            self._warned_size = n
            log.warning("%s", point["warning"])
        return point

    def threshold_for(self, far: float | None = None) -> float:
        """The model's calibrated threshold for the Verifier's scoring (for `far` when given)."""
        meta = self.embedder.metadata
        if self.scoring == "mls":
            try:
                return pfe.mls_threshold_for(meta, far)
            except (LookupError, ValueError) as e:
                raise FaceSDKError(f"{self.embedder.path}: {e}") from e
        if far is None:
            if "threshold" not in meta:
                raise FaceSDKError(
                    f"{self.embedder.path} has no calibrated threshold: run `facesdk calibrate --write` or pass threshold="
                )
            return float(meta["threshold"])
        value = self._l2_threshold_at(far)
        if value is None:
            known = sorted(float(k) for k in json.loads(meta.get("threshold_table", "{}")))
            raise FaceSDKError(f"no threshold calibrated for FAR {far:g}; the model has {known or 'none'}")
        return value

    def _l2_threshold_at(self, far: float) -> float | None:
        """The model's calibrated squared-L2 threshold for `far` (whatever the scoring), or None."""
        table = json.loads(self.embedder.metadata.get("threshold_table", "{}"))
        for known, value in table.items():
            if math.isclose(float(known), far, rel_tol=1e-6):
                return float(value)
        return None

    def quality_for(self, reject: float) -> float:
        """The model's quality threshold that rejects the fraction `reject` of its calibration
        faces (e.g. 0.05), for ``min_quality``."""
        try:
            return pfe.quality_threshold_for(self.embedder.metadata, _number(reject, "reject"))
        except (LookupError, ValueError) as e:
            raise FaceSDKError(f"{self.embedder.path}: {e}") from e

    # --- faces ---------------------------------------------------------------------------------

    def faces(self, image: Image, color: str = "bgr") -> tuple[np.ndarray, list[detect.Detection]]:
        """The BGR frame and its detections (largest first is not guaranteed: detector order)."""
        frame = load_image(image, color)
        h, w = frame.shape[:2]
        scale = min(1.0, DETECT_MAX_SIDE / max(h, w))
        small = frame if scale == 1.0 else cv2.resize(frame, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA)
        found = self.detector.detect(small)
        if scale != 1.0:
            found = [detect.make_detection(d.box / scale, d.score, d.landmarks / scale, d.scheme) for d in found]
        return frame, found

    def _chips(self, frame: np.ndarray, detections: Sequence[detect.Detection]) -> np.ndarray:
        return chips.face_chips(frame, detections, self.chip)

    def embed(self, frame: np.ndarray, detections: Sequence[detect.Detection]) -> np.ndarray:
        """Embeddings [n, D] of the detected faces, in one batch."""
        if not detections:
            return np.zeros((0, self.embedder.embedding_dim), np.float32)
        return self.embedder.embed(self._chips(frame, detections))

    def embed_with_uncertainty(
        self, frame: np.ndarray, detections: Sequence[detect.Detection]
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(mu, sigma_sq) [n, D] of the detected faces in one batch; sigma_sq is None for a
        model without uncertainty."""
        if not self.has_uncertainty:
            return self.embed(frame, detections), None
        if not detections:
            empty = np.zeros((0, self.embedder.embedding_dim), np.float32)
            return empty, empty.copy()
        return self.embedder.embed_with_uncertainty(self._chips(frame, detections))

    def _largest(self, image: Image, what: str, color: str) -> tuple[np.ndarray, detect.Detection]:
        frame, found = self.faces(image, color)
        if not found:
            raise NoFaceError(f"no face found in {_describe(image)}" + (f" ({what})" if what else ""))
        return frame, max(found, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))

    def embed_largest(self, image: Image, what: str = "", color: str = "bgr") -> np.ndarray:
        """The embedding of the largest face of an image; NoFaceError when it has none."""
        frame, largest = self._largest(image, what, color)
        return self.embed(frame, [largest])[0]

    def embed_largest_with_uncertainty(
        self, image: Image, what: str = "", color: str = "bgr"
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(mu [D], sigma_sq [D] or None) of the largest face of an image; NoFaceError when none."""
        frame, largest = self._largest(image, what, color)
        mu, sigma_sq = self.embed_with_uncertainty(frame, [largest])
        return mu[0], None if sigma_sq is None else sigma_sq[0]

    def _quality_ok(self, quality: float | None) -> bool:
        return quality is None or self.min_quality is None or quality >= self.min_quality

    def _decide(
        self, mu: np.ndarray, sigma_sq: np.ndarray | None, limit: float
    ) -> list[tuple[str | None, float, float | None, bool]]:
        """(identity or None, distance, mls, accepted) of each face against the gallery."""
        if len(mu) == 0:
            return []
        if self.scoring == "mls":
            names, scores, dist = self.gallery.search_mls(mu, sigma_sq, k=1)
            mls_scores: list[float | None] = scores[:, 0].tolist()
            within = [s >= limit for s in mls_scores]
        else:
            names, dist = self.gallery.search(mu, k=1)
            mls_scores = [None] * len(mu)
            within = [d <= limit for d in dist[:, 0].tolist()]
        out = []
        for (name, *_), d, score, ok in zip(names, dist[:, 0].tolist(), mls_scores, within):
            accepted = name is not None and ok
            out.append((name if accepted else None, float(d), score, accepted))
        return out

    # --- public API ------------------------------------------------------------------------------

    def enroll(
        self,
        identity: str,
        images: Image | Iterable[Image],
        *,
        color: str = "bgr",
        face: int | Sequence[float] | None = None,
        largest: bool = False,
        force: bool = False,
    ) -> int:
        """Add the face of each image to `identity`; returns the number of faces added.

        All or nothing: an image that is refused (unreadable, no face, several faces, below
        ``min_quality``, already enrolled under another identity, not agreeing with the rest of
        the template) raises its error and nothing is stored. An image whose face is already
        enrolled for `identity` (the same image again) is skipped, not stored twice.
        See :meth:`enroll_each` for the checks and the arguments.
        """
        results, rows = self._enrolment(identity, images, color, face, largest, force)
        refused = [r for r in results if r.status == REFUSED]
        if refused:
            error = refused[0].error
            more = f"; {len(refused)} of {len(results)} images refused" if len(refused) > 1 else ""
            error.args = (f"{error.args[0]}{more}; nothing was stored",)
            raise error
        for r in results:
            if r.status == SKIPPED:
                log.info("enrolling %r: %s skipped: %s", identity, r.source, r.reason)
        return self._store(identity, rows)

    def enroll_each(
        self,
        identity: str,
        images: Image | Iterable[Image],
        *,
        color: str = "bgr",
        face: int | Sequence[float] | None = None,
        largest: bool = False,
        force: bool = False,
    ) -> list[EnrolResult]:
        """Decide each image on its own, store the accepted ones (one transaction) and say what
        became of each: an :class:`EnrolResult` per image, in order ("added", "skipped",
        "refused" with the reason and error). Bad arguments still raise.

        An image must hold exactly one face, or the caller picks it: ``face`` an index into
        ``self.faces(image)[1]`` or a box (x1, y1, x2, y2) matched to the detected face it
        overlaps most (one image per call), or ``largest=True``. Otherwise it is refused
        (AmbiguousFaceError). A face closer than the model's FAR ``DUPLICATE_FAR`` threshold to
        another identity is refused (DuplicateFaceError naming it); a face farther than the FAR
        ``CONSISTENT_FAR`` threshold from every other face of the identity (stored or given in
        this call) is refused (InconsistentFaceError). ``force=True`` enrols both anyway.
        """
        results, rows = self._enrolment(identity, images, color, face, largest, force)
        added = self._store(identity, rows)
        assert added == sum(r.status == ADDED for r in results)
        return results

    def enrolment(
        self,
        identity: str,
        images: Image | Iterable[Image],
        *,
        color: str = "bgr",
        face: int | Sequence[float] | None = None,
        largest: bool = False,
        force: bool = False,
    ) -> tuple[list[EnrolResult], list[tuple[str | None, np.ndarray, np.ndarray | None]]]:
        """What :meth:`enroll_each` decides, checked against this gallery, without storing it: each
        image's result, and the rows to store (source, mu, sigma_sq or None). For a gallery that
        is written elsewhere and replicated here (a site's central store)."""
        return self._enrolment(identity, images, color, face, largest, force)

    def _store(self, identity: str, rows: list[tuple[str | None, np.ndarray, np.ndarray | None]]) -> int:
        if not rows:
            return 0
        sources = [src for src, _, _ in rows]
        vectors = np.stack([mu for _, mu, _ in rows])
        if not self.has_uncertainty:
            return self.gallery.add(identity, vectors, sources=sources)
        sigma_sq = np.stack([s for _, _, s in rows])
        quality = np.asarray(pfe.quality(sigma_sq))
        return self.gallery.add(identity, vectors, sigma_sq=sigma_sq, quality=quality, sources=sources)

    def _enrolment(
        self, identity: str, images: object, color: str, face: object, largest: bool, force: bool
    ) -> tuple[list[EnrolResult], list[tuple[str | None, np.ndarray, np.ndarray | None]]]:
        """Every image's result, and the rows to store (source, mu, sigma_sq) of those added."""
        name = clean_name(identity)  # a bad name fails before any image is read
        check_color(color)
        images = _image_list(images)
        if face is not None and largest:
            raise InvalidArgumentError("give face= or largest=True, not both")
        if face is not None and len(images) > 1:
            raise InvalidArgumentError("face= picks a face of one image: enrol one image per call")
        face = _face_choice(face)
        results: list[EnrolResult | None] = [None] * len(images)
        faces: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}
        for i, image in enumerate(images):
            try:
                faces[i] = self._enrolment_face(image, color, face, largest, f"enrolling {name!r}")
            except (NoFaceError, InvalidImageError, AmbiguousFaceError, LowQualityError) as e:
                results[i] = EnrolResult(_describe(image), REFUSED, str(e), e)
        try:
            template = self.gallery.embeddings(name).vectors.astype(np.float64)
        except KeyError:
            template = np.zeros((0, self.embedder.embedding_dim))
        # The same image again (stored, or earlier in this call): skipped.
        kept: list[int] = []
        for i, (mu, _) in faces.items():
            earlier = np.concatenate([template, [faces[j][0] for j in kept]]) if kept else template
            d = _nearest(mu, earlier)
            if d < SAME_IMAGE:
                results[i] = EnrolResult(_describe(images[i]), SKIPPED, f"the same face is already enrolled for {name!r}", distance=d)
            else:
                kept.append(i)
        if not force:
            kept = self._check_duplicates(name, images, faces, kept, results)
            kept = self._check_consistency(name, images, faces, kept, template, results)
        rows = []
        for i in kept:
            results[i] = EnrolResult(_describe(images[i]), ADDED)
            source = str(images[i]) if isinstance(images[i], (str, os.PathLike)) else None
            rows.append((source, *faces[i]))
        return results, rows

    def _enrolment_face(
        self, image: Image, color: str, face: int | np.ndarray | None, largest: bool, what: str
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(mu, sigma_sq) of the face to enrol from one image, or the error that refuses it."""
        frame, found = self.faces(image, color)
        if not found:
            raise NoFaceError(f"no face found in {_describe(image)} ({what})")
        if isinstance(face, int):
            if not -len(found) <= face < len(found):
                raise InvalidArgumentError(f"face={face}, but {_describe(image)} holds {len(found)} face(s)")
            chosen = found[face]
        elif face is not None:
            overlap = [_iou(face, d.box) for d in found]
            if max(overlap) < 0.3:  # the box must point at a detected face, not merely near one
                raise NoFaceError(f"no detected face at box {face.tolist()} in {_describe(image)} ({what})")
            chosen = found[int(np.argmax(overlap))]
        elif len(found) == 1 or largest:
            chosen = max(found, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]))
        else:
            raise AmbiguousFaceError(
                f"{_describe(image)} holds {len(found)} faces ({what}): pick one with face= (an index or box) "
                "or largest=True (CLI: --largest)"
            )
        mu, sigma_sq = self.embed_with_uncertainty(frame, [chosen])
        if sigma_sq is not None and not self._quality_ok(q := float(pfe.quality(sigma_sq[0]))):
            raise LowQualityError(
                f"the face in {_describe(image)} has quality {q:.3f} < min_quality {self.min_quality:.3f} "
                f"({what}; use sharper, larger, frontal images)"
            )
        return mu[0].astype(np.float64), None if sigma_sq is None else sigma_sq[0]

    def _check_duplicates(self, name, images, faces, kept, results) -> list[int]:
        """Refuse faces already enrolled under another identity."""
        if not kept or len(self.gallery) == 0:
            return kept
        limit = self._enrolment_threshold(DUPLICATE_FAR)
        near = self.gallery.within(np.stack([faces[i][0] for i in kept]).astype(np.float32), limit)
        out = []
        for i, found in zip(kept, near):
            other = next(((n, d) for n, d in found if n != name), None)
            if other is None:
                out.append(i)
                continue
            e = DuplicateFaceError(
                f"the face in {_describe(images[i])} is already enrolled as {other[0]!r} (squared L2 {other[1]:.3f} "
                f"<= {limit:.3f}, FAR {DUPLICATE_FAR:g}); not enrolled as {name!r} (force=True enrols it anyway)",
                other=other[0],
            )
            results[i] = EnrolResult(_describe(images[i]), REFUSED, str(e), e, other=other[0], distance=other[1])
        return out

    def _check_consistency(self, name, images, faces, kept, template, results) -> list[int]:
        """Refuse faces farther than the threshold from every other face of the template (the
        stored faces and the others of this call)."""
        if len(template) + len(kept) < 2:
            return kept
        limit = self._enrolment_threshold(CONSISTENT_FAR)
        out = []
        for i in kept:
            others = [faces[j][0] for j in kept if j != i]
            d = _nearest(faces[i][0], np.concatenate([template, others]) if others else template)
            if d <= limit:
                out.append(i)
                continue
            e = InconsistentFaceError(
                f"the face in {_describe(images[i])} does not agree with the other faces of {name!r} (nearest squared "
                f"L2 {d:.3f} > {limit:.3f}, FAR {CONSISTENT_FAR:g}): likely someone else (force=True enrols it anyway)"
            )
            results[i] = EnrolResult(_describe(images[i]), REFUSED, str(e), e, distance=d)
        return out

    def _enrolment_threshold(self, far: float) -> float:
        """The model's calibrated squared-L2 threshold for `far`, which enrolment checks need."""
        value = self._l2_threshold_at(far)
        if value is not None:
            return value
        raise FaceSDKError(
            f"{self.embedder.path} has no threshold calibrated for FAR {far:g}, which enrolment checks need: "
            "run `facesdk calibrate --write`, or pass force=True to skip the checks"
        )

    def match(
        self, frame: Image, far: float | None = None, threshold: float | None = None, *, color: str = "bgr"
    ) -> list[Match]:
        """Every face in the frame, identified against the gallery."""
        limit = self._limit(far, threshold)
        image, found = self.faces(frame, color)
        live = [self.liveness is None or bool(self.liveness(image, d)) for d in found]
        checked = [d for d, ok in zip(found, live) if ok]
        mu, sigma_sq = self.embed_with_uncertainty(image, checked)
        quality = [None] * len(checked) if sigma_sq is None else pfe.quality(sigma_sq).tolist()
        good = [self._quality_ok(q) for q in quality]
        decided = iter(self._decide(mu[good], None if sigma_sq is None else sigma_sq[good], limit))
        out, j = [], 0
        for d, ok in zip(found, live):
            if not ok:
                out.append(Match(d.box, d.landmarks, d.score, None, math.inf, False, live=False, reason=NOT_LIVE))
                continue
            q, usable = quality[j], good[j]
            j += 1
            if not usable:
                out.append(Match(d.box, d.landmarks, d.score, None, math.inf, False, quality=q, reason=LOW_QUALITY))
                continue
            name, distance, score, accepted = next(decided)
            reason = None if accepted else NO_MATCH
            out.append(Match(d.box, d.landmarks, d.score, name, distance, accepted, quality=q, mls=score, reason=reason))
        return out

    def stream(
        self,
        window: int = 10,
        iou_threshold: float = 0.3,
        max_missed: int = 5,
        fusion: str = pfe.DEFAULT_FUSION,
        appearance_gate: float | None = pfe.DEFAULT_APPEARANCE_GATE,
        k: int = 2,
        n: int = 3,
    ) -> FaceStream:
        """A :class:`FaceStream` for one video: ``stream.match(frame)`` per frame, in order.

        window, iou_threshold, max_missed, fusion, appearance_gate: see :class:`sdk.pfe.FrameTracker`.
        k, n: a track is accepted as an identity only when its fused template matches it and at
        least k of its last n usable frames, each decided alone, matched that same identity.
        """
        tracker = pfe.FrameTracker(iou_threshold, window, max_missed, fusion, appearance_gate=appearance_gate)
        return FaceStream(self, tracker, k, n)

    def verify(
        self, a: Image, b: Image, far: float | None = None, threshold: float | None = None, *, color: str = "bgr"
    ) -> Verification:
        """Are the largest faces of two images the same person? (1:1: under ``fpir`` the model's
        pairwise threshold, not the gallery's.)"""
        limit = self._pairwise_limit(far, threshold)
        ea, sa = self.embed_largest_with_uncertainty(a, "verify, first image", color)
        eb, sb = self.embed_largest_with_uncertainty(b, "verify, second image", color)
        distance = float(((ea.astype(np.float64) - eb) ** 2).sum())
        score = None if sa is None else float(pfe.mls_pairs(ea[None], sa[None], eb[None], sb[None])[0])
        if sa is not None and not (self._quality_ok(pfe.quality(sa)) and self._quality_ok(pfe.quality(sb))):
            return Verification(False, distance, limit, score, self.scoring, reason=LOW_QUALITY)
        same = score >= limit if self.scoring == "mls" else distance <= limit
        return Verification(same, distance, limit, score, self.scoring)

    def verify_claim(
        self, frame: Image, identity: str, far: float | None = None, threshold: float | None = None, *, color: str = "bgr"
    ) -> Verification:
        """1:1 against a claimed identity (a badge or PIN names who it should be): is the largest
        face in the frame `identity`? Its distance is to that identity's nearest enrolled face,
        and the threshold is the pairwise one (the model's for `far`, default the Verifier's
        fixed threshold, or the model's calibrated one under ``fpir``): one comparison, so no
        growth with the gallery. Squared L2 only. An identity not enrolled raises
        InvalidArgumentError."""
        if self.scoring != "l2":
            raise InvalidArgumentError("verify_claim compares squared L2 (scoring='l2')")
        limit = self._pairwise_limit(far, threshold)
        try:
            enrolled = self.gallery.embeddings(identity).vectors
        except KeyError:
            raise InvalidArgumentError(f"{identity!r} is not enrolled") from None
        image, face = self._largest(frame, f"claim of {identity}", color)
        mu = self.embed(image, [face])[0].astype(np.float64)
        distance = float(((enrolled.astype(np.float64) - mu) ** 2).sum(1).min())
        if self.liveness is not None and not self.liveness(image, face):
            return Verification(False, distance, limit, reason=NOT_LIVE)
        return Verification(distance <= limit, distance, limit)

    def identify(self, image: Image, k: int = 5, *, color: str = "bgr") -> list[tuple[str, float]]:
        """The k best enrolled identities of the largest face, best first: (name, squared L2)
        for scoring "l2", (name, MLS) for scoring "mls". A face below min_quality raises
        LowQualityError."""
        mu, sigma_sq = self.embed_largest_with_uncertainty(image, "identify", color)
        if sigma_sq is not None and not self._quality_ok(q := pfe.quality(sigma_sq)):
            raise LowQualityError(f"the face in {_describe(image)} has quality {q:.3f} < min_quality {self.min_quality:.3f}")
        if self.scoring == "mls":
            names, scores, _ = self.gallery.search_mls(mu[None], sigma_sq[None], k=k)
            return [(n, float(s)) for n, s in zip(names[0], scores[0]) if n is not None]
        names, dist = self.gallery.search(mu[None], k=k)
        return [(n, float(d)) for n, d in zip(names[0], dist[0]) if n is not None]

    def remove(self, identity: str) -> bool:
        return self.gallery.remove(identity)

    def identities(self) -> list[str]:
        return self.gallery.identities()

    def close(self) -> None:
        self.gallery.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _limit(self, far: float | None, threshold: float | None) -> float:
        if far is not None and threshold is not None:
            raise InvalidArgumentError("give far or threshold, not both")
        if threshold is not None:
            return self._checked_threshold(threshold)
        return self.threshold if far is None else self.threshold_for(_number(far, "far"))

    def _pairwise_limit(self, far: float | None, threshold: float | None) -> float:
        """1:1 decisions: one comparison, so the 1:N threshold of ``fpir`` does not apply."""
        if far is None and threshold is None and self.fpir is not None:
            return self.threshold_for(None)
        return self._limit(far, threshold)

    def _pairwise_track_limit(self, far: float | None, threshold: float | None) -> float:
        """1:1 against a fused track: the track table's N = 1 threshold (every search against one
        enrolled face) for FPIR = `far` (default the model's FAR), where the model has one;
        else the pairwise threshold of one frame."""
        if threshold is None:
            rate = _number(far, "far") if far is not None else float(self.embedder.metadata.get("threshold_far", "nan"))
            for known, row in self._track_table.items():
                if 1 in row and math.isclose(known, rate, rel_tol=1e-6):
                    return row[1]
        return self._pairwise_limit(far, threshold)

    def _track_limit(self, far: float | None, threshold: float | None) -> float:
        """The threshold for a track fusing several frames: under ``fpir`` the track table's."""
        if far is None and threshold is None and self.fpir is not None:
            return self.operating_point(track=True)["threshold"]
        return self._limit(far, threshold)

    def _checked_threshold(self, value: float) -> float:
        value = _number(value, "threshold")
        if self.scoring == "mls":
            if not math.isfinite(value):
                raise InvalidArgumentError(f"an MLS threshold must be a finite number, got {value}")
        elif not (math.isfinite(value) and value >= 0):
            raise InvalidArgumentError(f"threshold must be a finite squared-L2 distance >= 0, got {value}")
        return value


class FaceStream:
    """Identification over a video: faces are followed across consecutive frames by box and
    appearance (:class:`sdk.pfe.FrameTracker`) and each answer is for the fusion of the track's
    last ``window`` usable frames.

    A track is accepted as an identity only when (1) its fused template matches it and (2) at
    least ``k`` of its last ``n`` usable frames, each decided alone against the gallery, matched
    that same identity (all of them while the track has fewer than ``k``: a track's first frame
    is decided as a photo is). So a fused history cannot by itself name a face that keeps failing
    on its own, and one odd frame neither makes nor breaks a decision.

    ``Match.track_id`` names the track, ``Match.frames`` the frames fused, ``Match.decided_at``
    the frame index (0-based count of ``match`` calls on this stream) at which the track was
    first accepted as the answer's identity (None when not accepted), ``Match.quality`` the fused
    face's quality (PFE models). Frames below ``min_quality`` keep their track alive but are
    neither fused nor counted among the n; a track without a usable frame yet reports
    ``reason="low_quality"``. Faces vetoed by the liveness hook are not tracked. Feed frames in
    order, from one camera; not thread-safe (one FaceStream per stream; the Verifier itself is
    shared).
    """

    def __init__(self, verifier: Verifier, tracker: pfe.FrameTracker, k: int = 2, n: int = 3) -> None:
        for name, value in (("k", k), ("n", n)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}")
        if k > n:
            raise InvalidArgumentError(f"k ({k}) cannot exceed n ({n})")
        self.verifier = verifier
        self.tracker = tracker
        self.k, self.n = k, n
        self.frame_index = -1  # of the latest frame given to match
        self._votes: dict[int, deque] = {}  # track id -> identity (or None) of its last n usable frames
        self._decided: dict[int, tuple[str, int]] = {}  # track id -> (identity, frame first accepted)

    def match(
        self, frame: Image, far: float | None = None, threshold: float | None = None, *, color: str = "bgr"
    ) -> list[Match]:
        v = self.verifier
        limit, track_limit = v._limit(far, threshold), v._track_limit(far, threshold)
        image, found = v.faces(frame, color)
        self.frame_index += 1
        live = [v.liveness is None or bool(v.liveness(image, d)) for d in found]
        checked = [d for d, ok in zip(found, live) if ok]
        mu, sigma_sq = v.embed_with_uncertainty(image, checked)
        quality: list[float | None] = [None] * len(checked)
        if sigma_sq is None:  # no uncertainty: equal weights, the fusion is the frames' mean
            weights = np.ones_like(mu)
        else:
            weights = sigma_sq
            quality = pfe.quality(sigma_sq).tolist()
        usable = [v._quality_ok(q) for q in quality]
        tracks = self.tracker.update(np.array([d.box for d in checked]).reshape(-1, 4), mu, weights, usable)
        self._forget_ended()
        # Each usable frame's own answer is a vote of its track.
        alone = v._decide(mu, sigma_sq, limit)
        for track, ok, (name, *_) in zip(tracks, usable, alone):
            if ok:
                self._votes.setdefault(track.id, deque(maxlen=self.n)).append(name)
        decided = {}  # a track of one frame is decided as that frame is; a fused one at the track threshold
        for fused, at in ((False, limit), (True, track_limit)):
            ready = [t for t in tracks if t.mu is not None and (t.frames > 1) == fused]
            fused_mu = np.stack([t.mu for t in ready]) if ready else mu[:0]
            fused_sigma = None if sigma_sq is None else (np.stack([t.sigma_sq for t in ready]) if ready else sigma_sq[:0])
            decided.update(zip((id(t) for t in ready), v._decide(fused_mu, fused_sigma, at)))
        out, j = [], 0
        for d, ok in zip(found, live):
            if not ok:
                out.append(Match(d.box, d.landmarks, d.score, None, math.inf, False, live=False, reason=NOT_LIVE))
                continue
            track = tracks[j]
            j += 1
            if track.mu is None:
                out.append(
                    Match(d.box, d.landmarks, d.score, None, math.inf, False, quality=quality[j - 1],
                          reason=LOW_QUALITY, track_id=track.id, frames=0)
                )
                continue
            name, distance, score, accepted = decided[id(track)]
            accepted = accepted and self._agree(track.id, name)
            decided_at = self._decided_at(track.id, name) if accepted else None
            fused_quality = None if sigma_sq is None else track.quality
            out.append(
                Match(d.box, d.landmarks, d.score, name if accepted else None, distance, accepted,
                      quality=fused_quality, mls=score, reason=None if accepted else NO_MATCH,
                      track_id=track.id, frames=track.frames, decided_at=decided_at)
            )
        return out

    def claim(
        self, frame: Image, identity: str, far: float | None = None, threshold: float | None = None, *, color: str = "bgr"
    ) -> Verification:
        """1:1 against a claimed identity over a track (a badge or PIN names who should be at the
        door): the frame's largest face is followed across frames as :meth:`match` follows
        faces, and its track's fused template is compared with `identity`'s nearest enrolled face
        at the pairwise operating point of a fused track (the model's track table at N = 1, for
        FPIR `far`, default the model's FAR; one frame's pairwise threshold while the track has
        one frame). Accepted only when at least k of the track's last n frames, each alone at
        one frame's pairwise threshold, were within it too. A frame without a face answers
        ``same=False, reason="no_face"``; a face the liveness hook vetoes ``reason="not_live"``.
        Squared L2 only; an identity not enrolled raises InvalidArgumentError."""
        v = self.verifier
        if v.scoring != "l2":
            raise InvalidArgumentError("claim compares squared L2 (scoring='l2')")
        frame_limit, track_limit = v._pairwise_limit(far, threshold), v._pairwise_track_limit(far, threshold)
        try:
            enrolled = v.gallery.embeddings(identity).vectors.astype(np.float64)
        except KeyError:
            raise InvalidArgumentError(f"{identity!r} is not enrolled") from None
        image, found = v.faces(frame, color)
        self.frame_index += 1
        face = max(found, key=lambda d: (d.box[2] - d.box[0]) * (d.box[3] - d.box[1]), default=None)
        if face is None or (v.liveness is not None and not v.liveness(image, face)):
            none = np.zeros((0, v.embedder.embedding_dim), np.float32)
            self.tracker.update(np.zeros((0, 4)), none, none, [])
            self._forget_ended()
            return Verification(False, math.inf, frame_limit, reason="no_face" if face is None else NOT_LIVE)
        mu, sigma_sq = v.embed_with_uncertainty(image, [face])
        quality = None if sigma_sq is None else float(pfe.quality(sigma_sq)[0])
        usable = v._quality_ok(quality)
        track = self.tracker.update(np.array([face.box]), mu, np.ones_like(mu) if sigma_sq is None else sigma_sq, [usable])[0]
        self._forget_ended()
        if track.mu is None:
            return Verification(False, math.inf, frame_limit, reason=LOW_QUALITY)
        if usable:
            alone = float(((enrolled - mu[0]) ** 2).sum(1).min())
            self._votes.setdefault(track.id, deque(maxlen=self.n)).append(identity if alone <= frame_limit else None)
        distance = float(((enrolled - track.mu.astype(np.float64)) ** 2).sum(1).min())
        limit = track_limit if track.frames > 1 else frame_limit
        return Verification(distance <= limit and self._agree(track.id, identity), distance, limit)

    def _agree(self, track_id: int, name: str | None) -> bool:
        votes = self._votes.get(track_id, ())
        return name is not None and len(votes) > 0 and sum(vote == name for vote in votes) >= min(self.k, len(votes))

    def _decided_at(self, track_id: int, name: str) -> int:
        known = self._decided.get(track_id)
        if known is None or known[0] != name:
            known = self._decided[track_id] = (name, self.frame_index)
        return known[1]

    def _forget_ended(self) -> None:
        live = {t.id for t in self.tracker.tracks}
        for book in (self._votes, self._decided):
            for track_id in [t for t in book if t not in live]:
                del book[track_id]

    def reset(self) -> None:
        """Forget every track (e.g. after a scene cut); frame indices go on counting."""
        self.tracker.reset()
        self._votes.clear()
        self._decided.clear()


def _image_list(images: object) -> list[Image]:
    """The images of an ``images`` argument: one image, or a non-empty list (any iterable) of them."""
    if is_single_image(images):
        return [images]
    if images is None or isinstance(images, (bytes, bytearray, dict)) or not isinstance(images, Iterable):
        raise InvalidImageError(
            f"images must be an image (path, array, PIL image) or a list of them, got {type(images).__name__}"
        )
    out = list(images)
    if not out:
        raise InvalidImageError("no images given: at least one is needed")
    return out


def _face_choice(face: object) -> int | np.ndarray | None:
    """``face=`` as an index or a box [4], or InvalidArgumentError."""
    if face is None or (isinstance(face, (int, np.integer)) and not isinstance(face, bool)):
        return None if face is None else int(face)
    try:
        box = np.asarray(face, np.float64)
    except (TypeError, ValueError):
        box = None
    if box is None or box.shape != (4,) or not np.isfinite(box).all() or box[2] <= box[0] or box[3] <= box[1]:
        raise InvalidArgumentError(f"face must be an index or a box (x1, y1, x2, y2), got {face!r}")
    return box


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _nearest(mu: np.ndarray, others: np.ndarray) -> float:
    """Squared L2 from mu to the nearest row of others (inf when none)."""
    if len(others) == 0:
        return math.inf
    return float(((np.asarray(others, np.float64) - mu) ** 2).sum(axis=1).min())


def _number(value: object, what: str) -> float:
    if isinstance(value, bool):
        raise InvalidArgumentError(f"{what} must be a number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"{what} must be a number, got {value!r}") from None


def _describe(image: Image) -> str:
    if isinstance(image, np.ndarray):
        return f"the {image.shape} array"
    return str(image)
