"""``facesdk calibrate``: thresholds that meet target false accept rates on a labelled set, for
squared-L2 scoring (any model) or MLS (PFE models, with the quality table), optionally stored in
the model's metadata where the Verifier reads them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from cli.common import UsageError, data_option, detector_option, make_detector, model_option, positive

L2_TABLE = (1e-2, 1e-3, 1e-4)
MLS_ONLY = ("reject", "cache", "no_cache")


def register(sub) -> None:
    from evaluate.calibration import SETS

    cal = sub.add_parser("calibrate", help="the thresholds that meet target FARs on a labelled set (L2 or MLS)")
    cal.add_argument("--scoring", choices=["l2", "mls"], default="l2", help="l2: any model; mls: PFE models (default l2)")
    data_option(cal)
    cal.add_argument("--set", choices=SETS, default="celeba", help="labelled set to calibrate on")
    cal.add_argument("--far", type=float, default=1e-3, help="target false accept rate of the default threshold")
    cal.add_argument("--table", type=float, nargs="*",
                     help="FARs of the stored threshold table (default l2: 1e-2 1e-3 1e-4; mls: 1e-1 .. 1e-5)")  # fmt: skip
    model_option(cal, "ONNX model (default: the cached default model; mls: the cached PFE model)")
    detector_option(cal)
    cal.add_argument("--batch", type=positive, default=32, help="faces per embedding batch")
    cal.add_argument("--max-images", type=positive, help="calibrate on a random subset of this many images")
    cal.add_argument("--write", action="store_true", help="store the thresholds in the model's metadata")
    mls = cal.add_argument_group("mls only")
    mls.add_argument("--reject", type=float, nargs="*", help="fractions of quality_reject_table (default 0.01 .. 0.2)")
    mls.add_argument("--cache", type=Path, help="embedding cache folder (default $FACESDK_HOME/pfe_eval)")
    mls.add_argument("--no-cache", action="store_true", default=None, help="do not cache embeddings")
    cal.set_defaults(run=calibrate_cmd)


def calibrate_cmd(args: argparse.Namespace) -> int:
    given = [f"--{name.replace('_', '-')}" for name in MLS_ONLY if getattr(args, name) is not None]
    if args.scoring == "l2" and given:
        raise UsageError(f"{', '.join(given)}: only with --scoring mls")
    if not 0 < args.far < 1 or any(not 0 < f < 1 for f in args.table or []):
        raise UsageError("--far and --table: false accept rates between 0 and 1")
    if any(not 0 < r < 1 for r in args.reject or []):
        raise UsageError("--reject: fractions between 0 and 1")
    from evaluate import calibration

    try:
        paths, labels = calibration.labelled_images(args.data, args.set)
    except FileNotFoundError as e:
        raise FileNotFoundError(f"no {args.set} set under {args.data} (set FACESDK_DATA or --data): {e}") from e
    if args.max_images and len(paths) > args.max_images:
        keep = np.sort(np.random.default_rng(0).choice(len(paths), args.max_images, replace=False))
        paths, labels = [paths[i] for i in keep], labels[keep]
    return (calibrate_l2 if args.scoring == "l2" else calibrate_mls)(args, paths, labels)


def calibrate_l2(args: argparse.Namespace, paths, labels) -> int:
    from evaluate import calibration, lfw
    from sdk.embed import OnnxEmbedder, default_model_path, set_metadata

    detector, embedder = make_detector(args.detector), OnnxEmbedder(args.model or default_model_path())
    embedded = lfw.embed_images(paths, detector, embedder, batch=args.batch)
    fars = sorted({args.far, *(L2_TABLE if args.table is None else args.table)}, reverse=True)
    results = calibration.calibrate(embedded.embeddings, labels, fars)
    first = results[0]
    print(
        f"{args.set}: {len(paths)} images, {len(np.unique(labels))} identities, "
        f"{int(embedded.failed.sum())} without a face; {first.genuine_pairs:,} genuine and "
        f"{first.impostor_pairs:,} impostor pairs; detector {detector.name}"
    )
    print(f"{'target FAR':>10} {'threshold':>10} {'FAR':>10} {'TAR %':>7}")
    for c in results:
        print(f"{c.target_far:>10g} {c.threshold:10.4f} {c.far:10.2e} {100 * c.tar:7.2f}")
    if args.write:
        main = next(c for c in results if c.target_far == args.far)
        set_metadata(
            embedder.path,
            threshold=f"{main.threshold:.6f}",
            threshold_far=f"{args.far:g}",
            threshold_table=json.dumps({f"{c.target_far:g}": round(c.threshold, 6) for c in results}),
            threshold_calibrated_on=f"{args.set}, {len(paths)} images, detector {detector.name}",
        )
        print(f"stored in {embedder.path}: threshold {main.threshold:.4f} at FAR {args.far:g}, and the table")
    return 0


def calibrate_mls(args: argparse.Namespace, paths, labels) -> int:
    from evaluate import calibration
    from evaluate.pfe import CALIBRATION_FARS, QUALITY_REJECT, FaceBank, store_calibration
    from sdk.embed import OnnxEmbedder, default_pfe_model_path

    model = args.model or default_pfe_model_path()
    if not model.is_file():
        raise FileNotFoundError(f"PFE model {model} not found: export it with `facesdk export onnx pfe` or pass --model")
    embedder, detector = OnnxEmbedder(model), make_detector(args.detector)
    if not embedder.has_uncertainty:
        raise UsageError(f"--scoring mls: {model} has no sigma_sq output, not a PFE model")
    bank = FaceBank(embedder, detector, args.cache, args.batch, progress=True, use_cache=not args.no_cache)
    faces = bank.faces(paths, "clean")
    fars = sorted({args.far, *(CALIBRATION_FARS if args.table is None else args.table)}, reverse=True)
    results = calibration.calibrate_mls(faces.mu, faces.sigma_sq, labels, fars)
    l2 = calibration.calibrate(faces.mu, labels, fars)  # the same faces by squared L2, for comparison
    qualities = calibration.calibrate_quality(faces.sigma_sq, QUALITY_REJECT if args.reject is None else args.reject)
    first = results[0]
    print(
        f"{args.set}: {len(paths)} images, {len(np.unique(labels))} identities, {int(faces.failed.sum())} without "
        f"a face; {first.genuine_pairs:,} genuine and {first.impostor_pairs:,} impostor pairs; detector {detector.name}"
    )
    print(f"{'target FAR':>10} {'MLS threshold':>14} {'FAR':>10} {'TAR %':>7}   {'L2 threshold':>12} {'L2 TAR %':>8}")
    for c, d in zip(results, l2):
        print(f"{c.target_far:>10g} {c.threshold:14.4f} {c.far:10.2e} {100 * c.tar:7.2f}   {d.threshold:12.4f} {100 * d.tar:8.2f}")
    print(f"{'reject':>10} {'quality <':>10}")
    for r, q in qualities.items():
        print(f"{r:>10g} {q:10.4f}")
    if args.write:
        calibrated_on = f"{args.set}, {len(paths)} images, detector {detector.name}"
        chosen = store_calibration(model, results, args.far, qualities, calibrated_on)
        print(f"stored in {model}: mls_threshold {chosen.threshold:.4f} at FAR {args.far:g}, mls_threshold_table, quality_reject_table")
    return 0
