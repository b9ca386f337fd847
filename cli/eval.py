"""``facesdk eval ...``: benchmarks on labelled data. lfw, openset and liveness run on the runtime alone;
int8, pfe, clustering, trt-parity, yunet-template and dlib-port load more inside their commands."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cli.common import (
    UsageError, calibrated_thresholds, data_option, detector_option, emit, make_detector, make_embedder,
    model_option, positive, write_json,
)  # fmt: skip
from sdk.detect import DETECTORS


def register(sub) -> None:
    ev = sub.add_parser("eval", help="benchmarks on labelled data (LFW, open set, INT8, PFE, clustering, ...)")
    verbs = ev.add_subparsers(dest="eval_verb", required=True)

    p = verbs.add_parser("lfw", help="LFW 10-fold verification on pairs.txt")
    data_option(p, "lfw/")
    model_option(p)
    detector_option(p)
    p.add_argument("--detect-max-side", type=positive, metavar="N",
                   help="YuNet runs on images downscaled to this longer side (faster when faces are large)")  # fmt: skip
    p.add_argument("--pairs", type=Path, default=Path("pairs.txt"), help="pairs file, e.g. pairsDevTest.txt")
    p.add_argument("--far", type=float, default=1e-3, help="FAR for the TAR@FAR figure")
    p.add_argument("--batch", type=positive, default=32, help="faces per embedding batch")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.add_argument("--plot", type=Path, help="write the ROC as a PNG")
    p.add_argument("--distances", type=Path, help="write every pair's distance as CSV")
    p.add_argument("--compare-dlib", action="store_true", help="also run dlib-bin's own pipeline (slow)")
    p.set_defaults(run=lfw_cmd)

    p = verbs.add_parser("openset", help="open-set identification: enrolled people vs strangers")
    data_option(p)
    p.add_argument("--set", choices=["lfw", "att"], default="lfw")
    p.add_argument("--min-images", type=positive, default=10, help="lfw: people with at least this many images")
    model_option(p)
    detector_option(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--far", type=float, help="use the model's threshold calibrated for this FAR")
    group.add_argument("--threshold", type=float, help="squared-L2 threshold")
    p.set_defaults(run=openset_cmd)

    p = verbs.add_parser("fpir", help="1:N with distractor galleries: FNIR at target FPIR for each gallery size N, DET")
    data_option(p, "lfw/ and celeba_subset/")
    model_option(p)
    detector_option(p)
    p.add_argument("--sizes", type=positive, nargs="+", default=None,
                   help="gallery sizes N; N = 1 is every (search, enrolled face) pair "
                        "(default 1 100 1000 5000; 1 100 300 1000 3000 with --pool calibration)")  # fmt: skip
    p.add_argument("--fpir", type=float, nargs="+", default=[1e-1, 1e-2, 1e-3], help="target FPIRs")
    p.add_argument("--strangers", type=positive, default=300, help="never-enrolled people searched")
    p.add_argument("--probe-frames", type=positive, default=1,
                   help="fuse this many images of a person into each search, as a track fuses frames (--write then "
                        "stores the track table, fpir_track_threshold_table)")  # fmt: skip
    p.add_argument("--flip", choices=["none", "enrolment", "both"], default="none",
                   help="embed enrolment images (or every image) as the mean of the face and its mirror")  # fmt: skip
    p.add_argument("--pool", choices=["lfw-test", "calibration"], default="lfw-test",
                   help="lfw-test: strangers from LFW peopleDevTest, everyone else enrolled; calibration: CelebA and "
                        "LFW peopleDevTrain people only (what --write uses)")  # fmt: skip
    p.add_argument("--cache", type=Path, help="embeddings .npz: read if it exists, else written (each image once)")
    p.add_argument("--plot", type=Path, help="write the DET (FNIR vs FPIR, one curve per N) as a PNG")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.add_argument("--write", action="store_true",
                   help="store the thresholds and FNIR in the model's metadata (fpir_threshold_table); needs --pool calibration")  # fmt: skip
    p.set_defaults(run=fpir_cmd)

    p = verbs.add_parser("int8", help="FP32 vs INT8 model on LFW pairs: accuracy, TAR, AUC, cosine, speed")
    p.add_argument("fp32", type=Path)
    p.add_argument("int8", type=Path)
    p.add_argument("--pairs", type=Path, default=None, help="pairs file (default: LFW pairs.txt)")
    p.add_argument("--data", type=Path, default=None, help="data folder (default $FACESDK_DATA)")
    p.add_argument("--batch", type=positive, default=32)
    p.add_argument("--threads", type=positive, default=None, help="ONNX Runtime intra-op threads (default: its own)")
    p.add_argument("--json", type=Path, default=None, help="also write the results as JSON")
    p.set_defaults(run=int8_cmd)

    p = verbs.add_parser("pfe", help="PFE on LFW: MLS vs L2, degraded images, risk control, sets")
    p.add_argument("which", choices=["lfw", "degraded", "risk", "sets", "all"], help="an evaluation, or all four")
    model_option(p, "PFE ONNX model (default: the cached PFE model)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "pfe_eval", help="folder for plots, JSON and summary.txt")
    data_option(p, "lfw/")
    p.add_argument("--pairs", default="pairs.txt", help="LFW pairs file (pairsDevTest.txt for a quick run)")
    detector_option(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=positive, default=32)
    p.add_argument("--threads", type=positive, default=None, help="ONNX Runtime intra-op threads")
    p.add_argument("--cache", type=Path, default=None, help="embedding cache (default $FACESDK_HOME/pfe_eval)")
    p.add_argument("--no-cache", action="store_true")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(run=pfe_cmd)

    from sdk.clustering import METHODS

    p = verbs.add_parser("clustering", help="cluster LFW people's faces: pairwise precision, recall, F1, a sweep")
    p.add_argument("--lfw-min-images", type=positive, default=10, help="LFW people with at least this many images")
    p.add_argument("--threshold", type=float, help="squared L2 (default: the model's calibrated one, else 0.19)")
    p.add_argument("--method", choices=METHODS, default="average")
    data_option(p, "lfw/")
    model_option(p)
    p.add_argument("--json", type=Path, help="write the figures here")
    p.set_defaults(run=clustering_cmd)

    p = verbs.add_parser("trt-parity", help="a TensorRT engine vs ONNX Runtime on LFW faces (GPU with TensorRT)")
    p.add_argument("engine", type=Path)
    p.add_argument("--onnx", type=Path, default=None, help="reference model (default: the engine's source ONNX)")
    p.add_argument("--faces", type=positive, default=200)
    p.add_argument("--batch", type=positive, nargs="+", default=[1, 8, 32])
    p.add_argument("--repeat", type=positive, default=20)
    p.add_argument("--device", type=int, default=0)
    p.set_defaults(run=trt_parity_cmd)

    p = verbs.add_parser("yunet-template", help="measure where YuNet's 5 points sit in dlib's chip (sdk.align)")
    p.add_argument("--people", type=positive, default=1000, help="first N people of LFW's peopleDevTrain.txt")
    p.add_argument("--yunet-model", type=Path, default=None, help="default: $FACESDK_MODELS/yunet/yunet_s_640_640.onnx")
    p.set_defaults(run=yunet_template_cmd)

    p = verbs.add_parser("detectors", help="LFW pairs.txt with one model and several detectors: TAR at strict FAR, McNemar")
    p.add_argument("detectors", nargs="+", choices=list(DETECTORS), help="the first is the baseline")
    p.add_argument("--out", type=Path, required=True, help="folder for each detector's pair distances (reused)")
    p.add_argument("--far", type=float, nargs="+", default=[1e-3, 1e-4])
    model_option(p)
    data_option(p, "lfw/")
    p.set_defaults(run=detectors_cmd)

    p = verbs.add_parser("detect-rate", help="faces found by YuNet at smaller input sizes (CelebA: one face per image)")
    p.add_argument("--max-side", type=positive, nargs="+", default=[192, 160, 128], help="input sizes besides full size")
    p.add_argument("--set", default="celeba", choices=["celeba", "lfw-devtrain"])
    p.add_argument("--limit", type=positive, help="only the first N images")
    data_option(p, "celeba_subset/")
    p.add_argument("--json", action="store_true", help="print the figures as JSON")
    p.set_defaults(run=detect_rate_cmd)

    p = verbs.add_parser("landmark-box", help="fit the YuNet-to-dlib box map of the yunet+dlib5 detector (sdk.detect)")
    data_option(p, "lfw/")
    p.set_defaults(run=landmark_box_cmd)

    p = verbs.add_parser("tracking", help="the video tracker's appearance gate, and strangers after enrolled people")
    p.add_argument("what", choices=["gate", "strangers"])
    model_option(p)
    p.add_argument("--people", type=positive, default=150, help="gate: LFW DevTrain people to measure")
    p.add_argument("--threshold", type=float, help="strangers: squared-L2 threshold (default: the model's)")
    data_option(p, "lfw/")
    p.set_defaults(run=tracking_cmd)

    p = verbs.add_parser("liveness", help="liveness (MiniFASNet) on live faces: BPCER per set, ms per face")
    data_option(p, "lfw/, celeba_subset/ and att/")
    p.add_argument("--sets", nargs="+", choices=["lfw", "celeba", "att", "lfw-gray"], default=["lfw", "celeba", "att"],
                   help="lfw-gray: LFW's images in grayscale (default: lfw celeba att)")  # fmt: skip
    p.add_argument("--count", type=positive, default=1000, help="images drawn per set (AT&T has 400: all)")
    p.add_argument("--all", action="store_true", help="every image of each set instead of --count")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threshold", type=float, default=None, help="live score threshold (default: the SDK's)")
    p.add_argument("--threads", type=positive, default=1, help="ONNX Runtime intra-op threads per model")
    p.add_argument("--json", type=Path, help="write the figures as JSON")
    p.set_defaults(run=liveness_cmd)

    p = verbs.add_parser("dlib-port", help="dlib's ResNet in PyTorch vs dlib-bin on LFW faces (needs torch, dlib)")
    p.add_argument("--faces", type=positive, default=100, help="LFW faces to compare")
    data_option(p, "lfw/")
    p.add_argument("--batch", type=positive, default=32)
    p.set_defaults(run=dlib_port_cmd)


# --- lfw ------------------------------------------------------------------------------------------


def lfw_cmd(args: argparse.Namespace) -> int:
    from evaluate import lfw

    root = args.data / "lfw"
    pairs_file = args.pairs if args.pairs.is_absolute() or args.pairs.exists() else root / args.pairs
    if not pairs_file.is_file():
        raise FileNotFoundError(f"no LFW pairs file {pairs_file} (set FACESDK_DATA or --data, or give --pairs PATH)")
    pairs = lfw.read_pairs(pairs_file, root / "images_deepfunneled")
    images = pairs.images()
    detector, embedder = make_detector(args.detector, args.detect_max_side), make_embedder(args.model)
    print(
        f"LFW {pairs_file.name}: {len(pairs)} pairs, {len(images)} images, 10 folds; "
        f"model {embedder.name} ({embedder.backend}: {', '.join(embedder.providers)}); detector {detector.name}",
        file=sys.stderr,
    )
    runs = {f"ours ({detector.name})": lfw.embed_images(images, detector, embedder, batch=args.batch)}
    if args.compare_dlib:
        runs["dlib-bin (HOG, 5-point, ResNet)"] = lfw.embed_images_dlib(images)
    results = {}
    for name, embedded in runs.items():
        dist = lfw.pair_distances(embedded, images, pairs)
        results[name] = (embedded, dist, lfw.evaluate(dist, pairs, far=args.far))
    print_lfw(results, args.far)
    if args.plot:
        plot_roc(results, args.plot, title=f"LFW {pairs_file.name}")
        print(f"wrote {args.plot}")
    if args.distances:
        write_distances(args.distances, pairs, images, results)
        print(f"wrote {args.distances}")
    write_json(args.json, lfw_summary(results, pairs_file, len(images), args.far))
    return 0


def lfw_summary(results: dict, pairs_file: Path, n_images: int, far: float) -> dict:
    return {
        "pairs_file": str(pairs_file),
        "images": n_images,
        "far": far,
        "pipelines": {
            name: {
                "accuracy": v.accuracy,
                "accuracy_std": v.accuracy_std,
                "fold_accuracy": v.fold_accuracy.tolist(),
                "fold_threshold": v.fold_threshold.tolist(),
                "threshold": v.threshold,
                "tar_at_far": v.tar_at_far,
                "threshold_at_far": v.threshold_at_far,
                "auc": v.auc,
                "eer": v.eer,
                "images_without_face": int(e.failed.sum()),
                "ms_per_face": e.ms_per_face(),
            }
            for name, (e, _, v) in results.items()
        },
    }


def print_lfw(results: dict, far: float) -> None:
    header = (
        f"{'pipeline':<34} {'accuracy %':>14} {f'TAR@FAR={far:g}':>13} {'AUC':>7} {'EER %':>6} "
        f"{'threshold':>9} {'no face':>7} {'ms/face':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, (e, _, v) in results.items():
        print(
            f"{name:<34} {100 * v.accuracy:7.2f} ± {100 * v.accuracy_std:4.2f} {100 * v.tar_at_far:12.2f}% "
            f"{v.auc:7.4f} {100 * v.eer:6.2f} {v.threshold:9.4f} {int(e.failed.sum()):7d} {e.ms_per_face()['total']:8.1f}"
        )
    for name, (e, _, _) in results.items():
        stages = ", ".join(f"{k} {ms:.1f}" for k, ms in e.ms_per_face().items() if k != "total")
        print(f"  {name}: ms per face by stage: {stages}")
    print("accuracy: 10-fold mean ± std, threshold chosen on the other 9 folds; threshold: squared L2 on all pairs;")
    print("no face: images where the detector found none, aligned with the mean landmarks of the others.")


def plot_roc(results: dict, path: Path, title: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"--plot needs matplotlib: pip install matplotlib ({e})") from e
    fig, ax = plt.subplots(figsize=(6, 4.5))
    # Below one impostor pair the ROC says nothing: start the axis there.
    floor = min(float(v.roc_far[v.roc_far > 0].min()) for _, _, v in results.values())
    for name, (_, _, v) in results.items():
        ax.plot(np.maximum(v.roc_far, floor), v.roc_tar, label=f"{name}: acc {100 * v.accuracy:.2f}%, AUC {v.auc:.4f}")
    ax.set_xscale("log")
    ax.set_xlim(floor, 1)
    # Zoom on the part that differs: good models sit near TAR 1 over the whole range.
    low = min(float(np.interp(floor, v.roc_far, v.roc_tar)) for _, _, v in results.values())
    ax.set_ylim(max(0.0, low - 0.05), 1.002)
    ax.set_xlabel("false accept rate (impostor pairs)")
    ax.set_ylabel("true accept rate (genuine pairs)")
    ax.set_title(f"{title}: ROC")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_distances(path: Path, pairs, images: list[Path], results: dict) -> None:
    import csv

    row = {p: i for i, p in enumerate(images)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        names = list(results)
        w.writerow(["fold", "same", "left", "right", *(f"distance[{n}]" for n in names), *(f"no_face[{n}]" for n in names)])
        for i in range(len(pairs)):
            l, r = pairs.left[i], pairs.right[i]
            w.writerow(
                [int(pairs.fold[i]), int(pairs.same[i]), l.name, r.name]
                + [f"{results[n][1][i]:.6f}" for n in names]
                + [int(results[n][0].failed[row[l]] or results[n][0].failed[row[r]]) for n in names]
            )


# --- openset, int8 --------------------------------------------------------------------------------


def openset_cmd(args: argparse.Namespace) -> int:
    from evaluate import openset
    from sdk.verifier import Verifier

    if not (args.data / args.set).is_dir():
        raise FileNotFoundError(f"no {args.set}/ under {args.data} (set FACESDK_DATA or --data)")
    protocol = openset.att_protocol(args.data) if args.set == "att" else openset.lfw_protocol(args.data, args.min_images)
    with Verifier(args.model, detector=args.detector, gallery=None, far=args.far, threshold=args.threshold) as v:
        labels, thresholds = calibrated_thresholds(v)
        result = openset.run(v, protocol, thresholds)
    emit(args, {**result.__dict__, "figures": [f.__dict__ for f in result.figures]}, result.lines(labels))
    return 0


def fpir_cmd(args: argparse.Namespace) -> int:
    from evaluate import openset
    from sdk.embed import FRAME_TABLES, TRACK_TABLES, fpir_table, set_metadata

    if args.write and args.pool != "calibration":
        raise UsageError("--write calibrates on CelebA and LFW DevTrain people only: add --pool calibration")
    sizes = tuple(args.sizes or ((1, 100, 300, 1000, 3000) if args.pool == "calibration" else openset.GALLERY_SIZES))
    tables = TRACK_TABLES if args.probe_frames > 1 else FRAME_TABLES
    persons = openset.people(args.data)
    embedder = make_embedder(args.model)
    if args.write and args.flip != "none":
        raise UsageError("--write stores the tables of plain embeddings, the runtime's: drop --flip")

    def embedded(cache: Path | None, model) -> dict:
        if cache and cache.exists():
            return openset.load_embeddings(cache)
        out = openset.embed_people(persons, make_detector(args.detector), model)
        if cache:
            openset.save_embeddings(cache, out)
        return out

    embeddings = embedded(args.cache, embedder)
    gallery, strangers = openset.split_people(persons, args.strangers, args.pool)
    if args.flip != "none":
        flip_cache = args.cache.with_name(args.cache.stem + ".flip.npz") if args.cache else None
        flipped = embedded(flip_cache, openset.FlipAveraged(embedder))
        embeddings = flipped if args.flip == "both" else {**embeddings, **{p.images[0]: flipped[p.images[0]] for p in gallery}}
    # Before: the pairwise default threshold at every N. After: the model's FPIR table, if any.
    meta = embedder.metadata
    labels = {"pairwise default": float(meta["threshold"])} if "threshold" in meta else {}
    table = fpir_table(meta, tables[0], str(embedder.path)) if tables[0] in meta else {}
    result = openset.one_to_n(embeddings, gallery, strangers, sizes, tuple(args.fpir), labels, args.probe_frames)
    for fpir, row in table.items():
        known = sorted(row)
        for n, r in result["sizes"].items():
            at = float(np.clip(np.log(n), np.log(known[0]), np.log(known[-1])))
            t = float(np.interp(at, np.log(known), [row[k] for k in known]))
            r["at"][f"table FPIR {fpir:g}"] = openset.figures_at(r, t)
    print(f"1:N, pool {args.pool}: {len(strangers)} strangers ({result['nonmated_searches']} non-mated searches), "
          f"gallery of one image per person, other images (at most 5 each) as mated searches; rank-1 candidate list")  # fmt: skip
    print(f"{'N':>6} {'mated':>6} {'rank-1 %':>8} " + " ".join(f"{'FNIR@' + f'{f:g}':>11} {'thr':>7}" for f in args.fpir))
    for n, r in result["sizes"].items():
        cells = " ".join(f"{100 * r['targets'][f'{f:g}']['fnir']:10.1f}% {r['targets'][f'{f:g}']['threshold']:7.4f}" for f in args.fpir)
        print(f"{n:>6} {r['mated_searches']:>6} {100 * r['rank1']:8.1f} {cells}")
    for label in next(iter(result["sizes"].values()))["at"] if result["sizes"] else []:
        print(f"at {label}:")
        for n, r in result["sizes"].items():
            a = r["at"][label]
            print(f"{n:>6}  threshold {a['threshold']:.4f}  FPIR {100 * a['fpir']:5.1f}%  FNIR {100 * a['fnir']:5.1f}%")
    if args.plot:
        openset.plot_det(result, args.plot, f"1:N DET ({args.pool}), {result['nonmated_searches']} non-mated searches")
    write_json(args.json, {**result, "sizes": {n: {k: v for k, v in r.items() if k not in ("det", "_scores")} for n, r in result["sizes"].items()}})
    if args.write:
        key = lambda f: f"{f:g}"  # noqa: E731
        thresholds = {key(f): {str(n): round(r["targets"][key(f)]["threshold"], 6) for n, r in result["sizes"].items()} for f in args.fpir}
        fnir = {key(f): {str(n): round(r["targets"][key(f)]["fnir"], 4) for n, r in result["sizes"].items()} for f in args.fpir}
        set_metadata(embedder.path, **{tables[0]: json.dumps(thresholds), tables[1]: json.dumps(fnir)})
        print(f"stored in {embedder.path}: {tables[0]} and {tables[1]} for N = {', '.join(map(str, result['sizes']))}")
    return 0


def int8_cmd(args: argparse.Namespace) -> int:
    from export.quantize import compare, print_comparison

    result = compare(args.fp32, args.int8, pairs_file=args.pairs, data=args.data, batch=args.batch, threads=args.threads)
    print_comparison(result)
    write_json(args.json, result)
    return 0


# --- pfe ------------------------------------------------------------------------------------------


def pfe_cmd(args: argparse.Namespace) -> int:
    from evaluate.pfe import Context, FaceBank, Report, eval_degraded, eval_lfw, eval_risk, eval_sets
    from sdk.embed import OnnxEmbedder, default_pfe_model_path

    if not (args.data / "lfw" / args.pairs).is_file():
        raise FileNotFoundError(f"no LFW {args.pairs} under {args.data} (set FACESDK_DATA or --data)")
    model = args.model or default_pfe_model_path()
    if not model.is_file():
        raise FileNotFoundError(f"PFE model {model} not found: export it with `facesdk export onnx pfe` or pass --model")
    embedder = OnnxEmbedder(model, threads=args.threads)
    if not embedder.has_uncertainty:
        raise UsageError(f"{model} has no sigma_sq output: not a PFE model")
    detector = make_detector(args.detector)
    bank = FaceBank(embedder, detector, args.cache, args.batch, not args.quiet, not args.no_cache)
    args.out.mkdir(parents=True, exist_ok=True)
    say = Report()
    say(
        f"model {embedder.metadata['model_name']} v{embedder.metadata['model_version']} ({model}); detector {detector.name}; "
        f"MLS on the C++ kernels; seed {args.seed}"
    )
    ctx = Context(bank, args.data, args.out, args.data / "lfw" / args.pairs, args.seed, say, {})
    start = time.perf_counter()
    evals = {"lfw": eval_lfw, "degraded": eval_degraded, "risk": eval_risk, "sets": eval_sets}
    for name in evals if args.which == "all" else [args.which]:
        evals[name](ctx)
    say(f"\ntotal {time.perf_counter() - start:.0f} s")
    suffix = "" if args.which == "all" else f"_{args.which}"
    summary = args.out / f"summary{suffix}.txt"
    summary.write_text("\n".join(say.lines) + "\n")
    (args.out / f"results{suffix}.json").write_text(json.dumps(ctx.results, indent=1))
    print(f"tables: {summary}")
    return 0


# --- clustering -----------------------------------------------------------------------------------


def clustering_cmd(args: argparse.Namespace) -> int:
    from evaluate.clustering import SWEEP, _scored, lfw_people, model_threshold
    from evaluate.lfw import embed_images
    from sdk.detect import default_detector

    if not (args.data / "lfw" / "lfw-names.txt").is_file():
        raise FileNotFoundError(f"LFW not found: no {args.data / 'lfw' / 'lfw-names.txt'} (set --data or FACESDK_DATA)")
    paths, labels, names = lfw_people(args.data / "lfw", args.lfw_min_images)
    if not names:
        raise ValueError(f"no LFW person has {args.lfw_min_images} images")
    detector, _ = default_detector()
    embedder = make_embedder(args.model)
    print(f"LFW people with >= {args.lfw_min_images} images: {len(names)} identities, {len(paths):,} faces")
    print(f"model {embedder.name} ({embedder.path}), detector {detector.name}")
    start = time.perf_counter()
    embedded = embed_images(paths, detector, embedder)
    embed_seconds = time.perf_counter() - start
    no_face = int(embedded.failed.sum())
    print(f"embedded in {embed_seconds:.1f} s; no face found in {no_face} images (aligned with the mean landmarks)")

    if args.threshold is None:
        threshold, source = model_threshold(embedder.metadata)
    else:
        threshold, source = args.threshold, "--threshold"
    result = _scored(embedded.embeddings, labels, threshold, args.method)
    print(f"threshold {threshold:.4f} ({source}), method {args.method}")
    print(
        f"true identities {len(names)}, clusters {result['clusters']}, pairwise precision {result['precision']:.4f}, "
        f"recall {result['recall']:.4f}, F1 {result['f1']:.4f}, clustering time {result['seconds']:.2f} s"
    )
    sweep = [_scored(embedded.embeddings, labels, t, args.method) for t in sorted({*SWEEP, threshold})]
    print("\n| threshold | clusters | precision | recall | F1 | seconds |\n|---:|---:|---:|---:|---:|---:|")
    for row in sweep:
        print(
            f"| {row['threshold']:.4f} | {row['clusters']} | {row['precision']:.4f} | {row['recall']:.4f} "
            f"| {row['f1']:.4f} | {row['seconds']:.2f} |"
        )
    summary = {
        "min_images": args.lfw_min_images,
        "identities": len(names),
        "faces": len(paths),
        "no_face": no_face,
        "model": str(embedder.path),
        "detector": detector.name,
        "method": args.method,
        "threshold_source": source,
        "embed_seconds": embed_seconds,
        **result,
        "sweep": sweep,
    }
    write_json(args.json, summary)
    return 0


# --- trt-parity, yunet-template, dlib-port --------------------------------------------------------


def trt_parity_cmd(args: argparse.Namespace) -> int:
    from evaluate.lfw import lfw_chips
    from evaluate.tensorrt import _ms_per_face, engine_parity
    from sdk.embed import OnnxEmbedder, default_model_path
    from sdk.paths import data_dir
    from sdk.tensorrt import TensorRTEmbedder, sha256_file

    with TensorRTEmbedder(args.engine, device=args.device) as engine:
        source = Path(engine.engine_info["onnx"]["path"])
        reference_path = args.onnx or (source if source.is_file() else default_model_path())
        reference = OnnxEmbedder(reference_path)
        same = sha256_file(reference_path) == engine.engine_info["onnx"]["sha256"]
        chips = lfw_chips(data_dir(), max(args.faces, *args.batch))
        print(f"engine {args.engine}: {engine.providers[0]}, profile {engine.batch_profile}")
        print(f"reference {reference_path} ({'the engine source' if same else 'NOT the engine source'}), ONNX Runtime CPU")
        for line in engine_parity(engine, reference, chips[: args.faces]).lines():
            print(line)
        print("batch  tensorrt ms/face  onnxruntime ms/face")
        for batch in args.batch:
            trt_ms = _ms_per_face(engine.embed, chips[:batch], args.repeat)
            ort_ms = _ms_per_face(reference.embed, chips[:batch], max(args.repeat // 4, 1))
            print(f"{batch:5d}  {trt_ms:15.3f}  {ort_ms:18.3f}")
    return 0


def yunet_template_cmd(args: argparse.Namespace) -> int:
    from evaluate.yunet_template import measure_yunet_template
    from sdk.paths import data_dir, models_dir

    model = args.yunet_model or models_dir() / "yunet" / "yunet_s_640_640.onnx"
    if not model.is_file():
        raise FileNotFoundError(f"no YuNet model at {model} (pass --yunet-model or set FACESDK_MODELS)")
    template, spread, diff, found = measure_yunet_template(args.people, data_dir() / "lfw", model)
    print(f"{found} faces found by both detectors")
    print("YUNET5_TEMPLATE = np.array(\n    [")
    for x, y in template:
        print(f"        [{x:.6f}, {y:.6f}],")
    print("    ]\n)")
    print("std in a 150-pixel chip (x, y):", np.round(spread, 2).tolist())
    print(f"mean |yunet5 chip - dlib5 chip|: {diff:.2f} grey levels")
    return 0


def detect_rate_cmd(args: argparse.Namespace) -> int:
    from evaluate.detectors import detection_rate

    rows = detection_rate(args.data, [None, *args.max_side], args.set, args.limit)
    lines = [f"{'detector':<28} {'found':>12} {'rate %':>8} {'cpu ms/img':>10} {'vs full size':>12}"]
    for r in rows:
        speed = rows[0]["cpu_ms_per_image"] / r["cpu_ms_per_image"]
        lines.append(f"{r['detector']:<28} {r['found']:>5} / {r['images']:<5} {100 * r['rate']:8.2f} "
                     f"{r['cpu_ms_per_image']:10.2f} {speed:11.2f}x")  # fmt: skip
    lines.append("cpu ms: detection CPU time of one thread per image, sizes interleaved image by image.")
    emit(args, rows, lines)
    return 0


def detectors_cmd(args: argparse.Namespace) -> int:
    from evaluate.detectors import compare

    print("\n".join(compare(args.detectors, args.out, args.data, args.far, args.model)))
    return 0


def landmark_box_cmd(args: argparse.Namespace) -> int:
    from evaluate.landmark_box import fit_box_map

    print("\n".join(fit_box_map(args.data)))
    return 0


def tracking_cmd(args: argparse.Namespace) -> int:
    from evaluate.tracking import measure_gate, stranger_frames_accepted
    from sdk.verifier import Verifier

    with Verifier(args.model, detector="yunet", gallery=None, threshold=args.threshold) as v:
        if args.what == "gate":
            rows = measure_gate(v, args.data, args.people)
        else:
            print(f"threshold {v.threshold:.4f}")
            rows = stranger_frames_accepted(v, args.data)
    for key, value in rows.items():
        print(f"{key}\t{value:.4f}" if isinstance(value, float) else f"{key}\t{value}")
    return 0


def dlib_port_cmd(args: argparse.Namespace) -> int:
    from train.backbones.dlib_resnet import check

    check(args.faces, args.data, args.batch)
    return 0


# --- liveness -------------------------------------------------------------------------------------

LIVENESS_THRESHOLDS = [0.1, 0.3, 0.5, 0.7, 0.9]


def liveness_cmd(args: argparse.Namespace) -> int:
    from evaluate import liveness
    from sdk.liveness import DEFAULT_THRESHOLD

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    if not 0.0 <= threshold <= 1.0:
        raise UsageError(f"--threshold must be in [0, 1], got {threshold}")
    model, results = liveness.run(
        args.data, args.sets, None if args.all else args.count, args.seed, threshold, args.threads
    )
    print("\n".join(liveness.report(model, results, LIVENESS_THRESHOLDS)))
    write_json(args.json, liveness.summary(model, results, LIVENESS_THRESHOLDS))
    return 0
