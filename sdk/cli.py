"""`facesdk` command line. Long work shows progress; results print as tables; exit codes:
0 success, 1 failure of the work, 2 bad usage (argparse).

    facesdk eval lfw [--data DIR] [--model PATH] [--detector auto|yunet|dlib] [--pairs FILE]
                     [--json PATH] [--plot PNG] [--distances CSV] [--compare-dlib]
    facesdk calibrate [--data DIR] [--model PATH] [--set celeba|lfw-devtrain] [--far 1e-3] [--write]
    facesdk bench kernels [...]            (python -m sdk.bench kernels)
    facesdk export onnx default -o PATH    (needs torch)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from sdk.data import data_dir

log = logging.getLogger("sdk")


def make_detector(name: str):
    from sdk import detect

    if name == "auto":
        detector, _ = detect.default_detector()
        return detector
    if name == "yunet":
        return detect.YuNetDetector()
    if name == "dlib":
        return detect.DlibHogDetector()
    raise ValueError(f"unknown detector {name!r}")


def calibration_sets() -> tuple[str, ...]:
    from sdk.calibration import SETS

    return SETS


def make_embedder(model: str | None):
    from sdk.embed import OnnxEmbedder, default_model_path

    return OnnxEmbedder(Path(model) if model else default_model_path())


# --- eval lfw -------------------------------------------------------------------------------------


def eval_lfw(args: argparse.Namespace) -> int:
    from sdk import lfw

    root = args.data / "lfw"
    pairs_file = args.pairs if args.pairs.is_absolute() or args.pairs.exists() else root / args.pairs
    pairs = lfw.read_pairs(pairs_file, root / "images_deepfunneled")
    images = pairs.images()
    detector, embedder = make_detector(args.detector), make_embedder(args.model)
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
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(lfw_summary(results, pairs_file, len(images), args.far), indent=2))
        print(f"wrote {args.json}")
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
                f"tar_at_far": v.tar_at_far,
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
        raise SystemExit(f"--plot needs matplotlib: pip install matplotlib ({e})") from e
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


# --- calibrate ------------------------------------------------------------------------------------


def calibrate_cmd(args: argparse.Namespace) -> int:
    from sdk import calibration, lfw
    from sdk.embed import set_metadata

    paths, labels = calibration.labelled_images(args.data, args.set)
    if args.max_images and len(paths) > args.max_images:
        keep = np.random.default_rng(0).choice(len(paths), args.max_images, replace=False)
        keep.sort()
        paths, labels = [paths[i] for i in keep], labels[keep]
    detector, embedder = make_detector(args.detector), make_embedder(args.model)
    embedded = lfw.embed_images(paths, detector, embedder, batch=args.batch)
    c = calibration.calibrate(embedded.embeddings, labels, args.far)
    print(
        f"{args.set}: {len(paths)} images, {len(np.unique(labels))} identities, {int(embedded.failed.sum())} without a face; "
        f"{c.genuine_pairs:,} genuine and {c.impostor_pairs:,} impostor pairs"
    )
    print(
        f"threshold {c.threshold:.4f} (squared L2): FAR {c.far:.2e} (target {c.target_far:g}), TAR {100 * c.tar:.2f}%"
    )
    if args.write:
        set_metadata(
            embedder.path,
            threshold=f"{c.threshold:.6f}",
            threshold_far=f"{c.target_far:g}",
            threshold_calibrated_on=f"{args.set}, {len(paths)} images, detector {detector.name}",
        )
        print(f"stored in {embedder.path}")
    return 0


def export_cmd(args: argparse.Namespace) -> int:
    from export import onnx  # torch lives there, never in the runtime

    onnx.main(args.rest)
    return 0


# --- entry point ----------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="facesdk", description="Face recognition SDK for edge devices.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what the SDK picks (backend, detector)")
    sub = parser.add_subparsers(dest="command", required=True)

    ev = sub.add_parser("eval", help="benchmarks on labelled data").add_subparsers(dest="dataset", required=True)
    lfw_p = ev.add_parser("lfw", help="LFW 10-fold verification on pairs.txt")
    lfw_p.add_argument("--data", type=Path, default=data_dir(), help="folder holding lfw/ (default $FACESDK_DATA)")
    lfw_p.add_argument("--model", help="ONNX model (default: the cached default model)")
    lfw_p.add_argument("--detector", choices=["auto", "yunet", "dlib"], default="auto")
    lfw_p.add_argument("--pairs", type=Path, default=Path("pairs.txt"), help="pairs file, e.g. pairsDevTest.txt")
    lfw_p.add_argument("--far", type=float, default=1e-3, help="FAR for the TAR@FAR figure")
    lfw_p.add_argument("--batch", type=int, default=32, help="faces per embedding batch")
    lfw_p.add_argument("--json", type=Path, help="write the figures as JSON")
    lfw_p.add_argument("--plot", type=Path, help="write the ROC as a PNG")
    lfw_p.add_argument("--distances", type=Path, help="write every pair's distance as CSV")
    lfw_p.add_argument("--compare-dlib", action="store_true", help="also run dlib-bin's own pipeline (slow)")
    lfw_p.set_defaults(run=eval_lfw)

    cal = sub.add_parser("calibrate", help="the threshold that meets a target FAR on a labelled set")
    cal.add_argument("--data", type=Path, default=data_dir(), help="data folder (default $FACESDK_DATA)")
    cal.add_argument("--set", choices=calibration_sets(), default="celeba", help="labelled set to calibrate on")
    cal.add_argument("--far", type=float, default=1e-3, help="target false accept rate")
    cal.add_argument("--model", help="ONNX model (default: the cached default model)")
    cal.add_argument("--detector", choices=["auto", "yunet", "dlib"], default="auto")
    cal.add_argument("--batch", type=int, default=32, help="faces per embedding batch")
    cal.add_argument("--max-images", type=int, help="calibrate on a random subset of this many images")
    cal.add_argument("--write", action="store_true", help="store the threshold in the model's metadata")
    cal.set_defaults(run=calibrate_cmd)

    bench = sub.add_parser("bench", help="benchmarks (see python -m sdk.bench -h)", add_help=False)
    bench.add_argument("rest", nargs=argparse.REMAINDER)
    bench.set_defaults(run=lambda a: __import__("sdk.bench").bench.main(a.rest))

    export = sub.add_parser("export", help="model export (see python -m export.onnx -h; needs torch)", add_help=False)
    export.add_argument("format", choices=["onnx"])
    export.add_argument("rest", nargs=argparse.REMAINDER)
    export.set_defaults(run=export_cmd)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.run(args)
    except (FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"facesdk: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
