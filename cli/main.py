"""`facesdk` command line. Long work shows progress; results print as tables (--json for
machines). Exit codes scripts can rely on: 0 success (verify: same person; match: a face was
accepted; identify: the best candidate is within the threshold), 3 the same commands' "no",
1 an error (message on stderr), 2 bad usage.

    facesdk enroll NAME IMAGE... [--gallery PATH]
    facesdk match IMAGE|DIR|VIDEO [--far F | --threshold T] [--every N]
    facesdk verify A B
    facesdk identify IMAGE [-k K]
    facesdk cluster DIR [--threshold T]
    facesdk gallery list | remove NAME | export PATH.npz
    facesdk eval lfw [--data DIR] [--model PATH] [--detector auto|yunet|dlib] [--pairs FILE]
                     [--json PATH] [--plot PNG] [--distances CSV] [--compare-dlib]
    facesdk calibrate [--data DIR] [--model PATH] [--set celeba|lfw-devtrain] [--far 1e-3] [--write]
    facesdk eval int8 FP32.onnx INT8.onnx  |  eval pfe lfw|degraded|risk|sets|all
    facesdk bench [run|kernels|pipeline] [--backend onnxruntime,torch,tensorrt] [--model PATH]...
    facesdk export onnx default -o PATH  |  export int8 MODEL -o OUT  |  export trt MODEL --precision P
    facesdk train --config FILE  |  train pfe features|train|...      (train and export onnx need torch)
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from sdk.paths import data_dir
from sdk.detect import DETECTORS
from sdk.errors import FaceSDKError

log = logging.getLogger("sdk")


def make_detector(name: str):
    from sdk.detect import detector_from

    return detector_from(name)


def calibration_sets() -> tuple[str, ...]:
    from evaluate.calibration import SETS

    return SETS


def make_embedder(model: str | None):
    from sdk.embed import OnnxEmbedder, default_model_path

    return OnnxEmbedder(Path(model) if model else default_model_path())


# --- eval lfw -------------------------------------------------------------------------------------


def eval_lfw(args: argparse.Namespace) -> int:
    from evaluate import lfw

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
    from evaluate import calibration, lfw
    from sdk.embed import set_metadata

    paths, labels = calibration.labelled_images(args.data, args.set)
    if args.max_images and len(paths) > args.max_images:
        keep = np.random.default_rng(0).choice(len(paths), args.max_images, replace=False)
        keep.sort()
        paths, labels = [paths[i] for i in keep], labels[keep]
    detector, embedder = make_detector(args.detector), make_embedder(args.model)
    embedded = lfw.embed_images(paths, detector, embedder, batch=args.batch)
    fars = sorted({args.far, *args.table}, reverse=True)
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


# --- the Verifier's commands ----------------------------------------------------------------------

NO = 3  # exit code of a well-formed "no" (different people, nobody recognised)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def make_verifier(args: argparse.Namespace):
    from sdk.verifier import Verifier

    return Verifier(
        model=args.model,
        detector=args.detector,
        gallery="default" if args.gallery is None else args.gallery,
        threshold=getattr(args, "threshold", None),
        far=getattr(args, "far", None),
        scoring=args.scoring,
        min_quality=args.min_quality,
    )


def emit(args: argparse.Namespace, payload: object, lines: list[str]) -> None:
    """Print JSON with --json, else the human-readable lines."""
    if args.json:
        print(json.dumps(payload, indent=2, default=_jsonable))
    else:
        print("\n".join(lines))


def _jsonable(value: object) -> object:
    if isinstance(value, np.ndarray):
        return value.round(2).tolist()
    if isinstance(value, (np.floating, np.integer)):
        return value.item()
    return str(value)


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def enroll_cmd(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        added = v.enroll(args.name, args.images)
        total = v.gallery.count(args.name)
    emit(args, {"identity": args.name, "added": added, "total": total},
         [f"enrolled {added} face(s) for {args.name!r} ({total} in the gallery)"])  # fmt: skip
    return 0


def frames(source: Path, every: int):
    """(label, frame) of an image, every image of a folder, or every `every`-th frame of a video."""
    import cv2

    if source.is_dir():
        for path in image_files(source):
            yield str(path), path
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        video = cv2.VideoCapture(str(source))
        if not video.isOpened():
            raise ValueError(f"cannot open video {source}")
        index = 0
        while True:
            ok, frame = video.read()
            if not ok:
                break
            if index % every == 0:
                yield f"{source.name}#{index}", frame
            index += 1
        video.release()
    else:
        yield str(source), source


def match_cmd(args: argparse.Namespace) -> int:
    results, lines, accepted = [], [], 0
    with make_verifier(args) as v:
        # --track: follow each face across the frames and answer for the fusion of its last frames.
        matcher = v.stream() if args.track else v
        lines.append(f"{'source':<40} {'face':>4} {'identity':<24} {'distance':>8} {'accepted':>8} {'why not':<11}  box")
        for label, frame in frames(Path(args.source), args.every):
            found = matcher.match(frame)
            for i, m in enumerate(found):
                accepted += m.accepted
                results.append({"source": label, "face": i, "identity": m.identity, "distance": m.distance,
                                "accepted": m.accepted, "reason": m.reason, "score": m.score, "quality": m.quality,
                                "mls": m.mls, "track": m.track_id, "frames": m.frames, "box": m.box,
                                "landmarks": m.landmarks})  # fmt: skip
                lines.append(f"{label[-40:]:<40} {i:>4} {m.identity or '-':<24} {m.distance:8.4f} "
                             f"{'yes' if m.accepted else 'no':>8} {m.reason or '':<11}  "
                             f"{np.round(m.box).astype(int).tolist()}")  # fmt: skip
            if not found:
                lines.append(f"{label[-40:]:<40} {'-':>4} no face")
    emit(args, results, lines)
    return 0 if accepted else NO


def verify_cmd(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        r = v.verify(args.a, args.b)
    emit(args, {"same": r.same, "distance": r.distance, "threshold": r.threshold},
         [f"{'same person' if r.same else 'different people'}: distance {r.distance:.4f}, threshold {r.threshold:.4f}"])  # fmt: skip
    return 0 if r.same else NO


def identify_cmd(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        candidates, limit = v.identify(args.image, k=args.k), v.threshold
    lines = [f"{'rank':>4} {'identity':<24} {'distance':>8} {'within threshold':>16}"]
    lines += [f"{r:>4} {n:<24} {d:8.4f} {'yes' if d <= limit else 'no':>16}" for r, (n, d) in enumerate(candidates, 1)]
    emit(args, {"threshold": limit, "candidates": [{"identity": n, "distance": d} for n, d in candidates]}, lines)
    return 0 if candidates and candidates[0][1] <= limit else NO


def gallery_cmd(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        g = v.gallery
        if args.action == "list":
            rows = [(name, g.count(name)) for name in g.identities()]
            emit(args, [{"identity": n, "faces": c} for n, c in rows],
                 [f"{n:<32} {c:>5}" for n, c in rows] + [f"{len(rows)} identities, {len(g)} faces"])  # fmt: skip
        elif args.action == "remove":
            if not args.name:
                raise ValueError("gallery remove needs the identity to remove")
            removed = g.remove(args.name)
            emit(args, {"removed": removed}, [f"{'removed' if removed else 'not enrolled:'} {args.name!r}"])
            return 0 if removed else NO
        else:
            if not args.name:
                raise ValueError("gallery export needs an output path (.npz)")
            g.export(Path(args.name))
            emit(args, {"exported": args.name}, [f"wrote {args.name}"])
    return 0


def cluster_cmd(args: argparse.Namespace) -> int:
    from evaluate.clustering import pairwise_precision_recall
    from sdk import clustering

    folder = Path(args.folder)
    paths = image_files(folder)
    if not paths:
        raise ValueError(f"no images in {folder}")
    with make_verifier(args) as v:
        threshold = v.threshold if args.threshold is None else args.threshold
        labels = clustering.cluster(paths, threshold, verifier=v)
    groups: dict[int, list[str]] = {}
    for path, label in zip(paths, labels):
        if label >= 0:
            groups.setdefault(int(label), []).append(str(path.relative_to(folder)))
    no_face = [str(p.relative_to(folder)) for p, label in zip(paths, labels) if label < 0]
    payload = {"threshold": threshold, "clusters": list(groups.values()), "no_face": no_face}
    lines = [f"{len(paths) - len(no_face)} faces in {len(groups)} clusters (threshold {threshold:.4f}); {len(no_face)} images without a face"]
    lines += [f"cluster {k}: {', '.join(members)}" for k, members in groups.items()]
    found = labels >= 0
    if all(len(p.relative_to(folder).parts) > 1 for p in paths):  # subfolders name the people
        truth = np.unique([p.relative_to(folder).parts[0] for p in paths], return_inverse=True)[1]
        precision, recall, f1 = pairwise_precision_recall(truth[found], labels[found])
        payload.update(precision=precision, recall=recall, f1=f1, identities=int(truth.max()) + 1)
        lines.append(f"against the subfolders ({int(truth.max()) + 1} people): pairwise precision {precision:.3f}, recall {recall:.3f}, F1 {f1:.3f}")
    emit(args, payload, lines)
    return 0


# --- open-set identification and the demo ---------------------------------------------------------


def openset_cmd(args: argparse.Namespace) -> int:
    from evaluate import openset
    from sdk.verifier import Verifier

    protocol = openset.att_protocol(args.data) if args.set == "att" else openset.lfw_protocol(args.data, args.min_images)
    with Verifier(args.model, detector=args.detector, gallery=None, far=args.far, threshold=args.threshold) as v:
        labels, thresholds = calibrated_thresholds(v)
        result = openset.run(v, protocol, thresholds)
    emit(args, {**result.__dict__, "figures": [f.__dict__ for f in result.figures]}, result.lines(labels))
    return 0


def calibrated_thresholds(v) -> tuple[list[str], list[float]]:
    """The Verifier's threshold and the model's calibrated table, as (labels, thresholds)."""
    table = json.loads(v.embedder.metadata.get("threshold_table", "{}"))
    rows = sorted(((float(t), f"FAR {far}") for far, t in table.items()), reverse=True)
    if all(abs(t - v.threshold) > 1e-9 for t, _ in rows):
        rows.append((v.threshold, "chosen"))
    return [label for _, label in rows], [t for t, _ in rows]


def ensure_default_model() -> None:
    """Export the default model once if it is missing and torch is here to do it."""
    from sdk.embed import default_model_path

    path = default_model_path()
    if path.is_file():
        return
    try:
        from export.onnx import export_dlib_default
    except ImportError as e:
        raise FileNotFoundError(
            f"the default model {path} is missing and cannot be exported here ({e}); "
            'install the exporter with `pip install -e ".[train]"` and run `python -m export.onnx default`'
        ) from e
    print(f"exporting the default model once to {path} ...", file=sys.stderr)
    export_dlib_default(path)


def demo_cmd(args: argparse.Namespace) -> int:
    """The main job on the embedded default: enrol AT&T people, match their unseen images."""
    from evaluate import openset
    from sdk.verifier import Verifier

    ensure_default_model()
    if not (args.data / "att").is_dir():
        print(
            f"no AT&T faces under {args.data}: set FACESDK_DATA to a folder holding att/, or use your own images:\n"
            "  facesdk enroll alice alice1.jpg alice2.jpg\n  facesdk match photo.jpg"
        )
        return 1
    with Verifier(gallery=None) as v:
        print("Verifier:", ", ".join(f"{k} {val}" for k, val in v.info().items() if k != "model_path"))
        labels, thresholds = calibrated_thresholds(v)
        result = openset.run(v, openset.att_protocol(args.data), thresholds)
        print("\n".join(result.lines(labels)))
        probe = args.data / "att" / "s3" / "9.pgm"
        for m in v.match(probe):
            print(f"match {probe}: identity {m.identity}, distance {m.distance:.4f}, accepted {m.accepted}")
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
    lfw_p.add_argument("--detector", choices=list(DETECTORS), default="auto")
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
    cal.add_argument("--far", type=float, default=1e-3, help="target false accept rate of `threshold`")
    cal.add_argument(
        "--table", type=float, nargs="*", default=[1e-2, 1e-3, 1e-4],
        help="FARs of the stored threshold table (per-call FAR in the Verifier)",
    )
    cal.add_argument("--model", help="ONNX model (default: the cached default model)")
    cal.add_argument("--detector", choices=list(DETECTORS), default="auto")
    cal.add_argument("--batch", type=int, default=32, help="faces per embedding batch")
    cal.add_argument("--max-images", type=int, help="calibrate on a random subset of this many images")
    cal.add_argument("--write", action="store_true", help="store the threshold in the model's metadata")
    cal.set_defaults(run=calibrate_cmd)

    def runtime(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        p.add_argument("--model", help="ONNX model (default: the cached default model)")
        p.add_argument("--detector", choices=list(DETECTORS), default="auto")
        p.add_argument("--gallery", help="gallery file (default $FACESDK_HOME/gallery.sqlite)")
        p.add_argument("--json", action="store_true", help="print JSON")
        p.add_argument("--scoring", choices=["l2", "mls"], default="l2", help="mls: PFE models only (see README)")
        p.add_argument("--min-quality", type=float, help="PFE models: refuse faces below this quality")
        return p

    def decision(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--far", type=float, help="use the model's threshold calibrated for this FAR")
        group.add_argument("--threshold", type=float, help="squared-L2 threshold")
        return p

    p = runtime(sub.add_parser("enroll", help="add a person's faces to the gallery"))
    p.add_argument("name")
    p.add_argument("images", nargs="+")
    p.set_defaults(run=enroll_cmd)
    p = decision(runtime(sub.add_parser("match", help="identify every face of an image, folder or video")))
    p.add_argument("source")
    p.add_argument("--every", type=int, default=1, help="video: match every N-th frame")
    p.add_argument("--track", action="store_true", help="video: follow faces across frames, fuse each track")
    p.set_defaults(run=match_cmd)
    p = decision(runtime(sub.add_parser("verify", help="are two images the same person?")))
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(run=verify_cmd)
    p = decision(runtime(sub.add_parser("identify", help="nearest enrolled identities of a face")))
    p.add_argument("image")
    p.add_argument("-k", type=int, default=5)
    p.set_defaults(run=identify_cmd)
    p = runtime(sub.add_parser("cluster", help="group the faces of a folder by identity"))
    p.add_argument("folder")
    p.add_argument("--threshold", type=float, help="squared-L2 linkage threshold (default: the model's)")
    p.set_defaults(run=cluster_cmd)
    p = runtime(sub.add_parser("gallery", help="list, remove from or export the gallery"))
    p.add_argument("action", choices=["list", "remove", "export"])
    p.add_argument("name", nargs="?", help="remove: the identity; export: the .npz path")
    p.set_defaults(run=gallery_cmd)

    p = ev.add_parser("openset", help="open-set identification: enrolled people vs strangers")
    p.add_argument("--data", type=Path, default=data_dir(), help="data folder (default $FACESDK_DATA)")
    p.add_argument("--set", choices=["lfw", "att"], default="lfw")
    p.add_argument("--min-images", type=int, default=10, help="lfw: people with at least this many images")
    p.add_argument("--model", help="ONNX model (default: the cached default model)")
    p.add_argument("--detector", choices=list(DETECTORS), default="auto")
    p.add_argument("--json", action="store_true", help="print JSON")
    decision(p).set_defaults(run=openset_cmd)

    p = sub.add_parser("demo", help="the Verifier on real faces: enrol AT&T people, match unseen images")
    p.add_argument("--data", type=Path, default=data_dir(), help="data folder holding att/ (default $FACESDK_DATA)")
    p.set_defaults(run=demo_cmd)

    # Commands owned by other modules, listed here for -h; main() forwards their arguments (FORWARDED).
    sub.add_parser("bench", help=FORWARDED[("bench",)][1], add_help=False)
    sub.add_parser("train", help="training (needs torch): train --config FILE | train pfe ...", add_help=False)
    ex = sub.add_parser("export", help="model export: onnx (needs torch), int8, trt").add_subparsers(required=True)
    for (group, *word), (_, text) in FORWARDED.items():
        if word and group in ("export", "eval"):
            (ex if group == "export" else ev).add_parser(word[0], help=text, add_help=False)
    return parser


# Command words -> (module whose main(argv) takes the rest of the arguments, help). The longest
# match wins: `train pfe ...` goes to train.pfe, `train --config ...` to train.
FORWARDED: dict[tuple[str, ...], tuple[tuple[str, ...], str]] = {
    ("bench",): (("cli.bench",), "benchmarks: pipeline per backend (default), kernels, pipeline"),
    ("train",): (("train.__main__",), "the FaceNet triplet trainer (--config FILE)"),
    ("train", "pfe"): (("train.pfe.__main__",), "PFE uncertainty head: features, train"),
    ("export", "onnx"): (("export.onnx",), "checkpoint or dlib's model -> facesdk ONNX"),
    ("export", "int8"): (("export.quantize", "int8"), "INT8 QDQ ONNX calibrated on CelebA faces"),
    ("export", "trt"): (("export.tensorrt",), "TensorRT engine from a facesdk ONNX (needs TensorRT)"),
    ("eval", "int8"): (("export.quantize", "compare"), "FP32 vs INT8 on LFW pairs"),
    ("eval", "pfe"): (("evaluate.pfe",), "PFE: MLS vs L2, degraded LFW, risk control, sets"),
}


def forwarded(argv: list[str]) -> tuple[str, list[str]] | None:
    """(module, its argv) when argv names a forwarded command."""
    for n in (2, 1):
        target = FORWARDED.get(tuple(argv[:n]))
        if target is not None:
            (module, *first), _ = target
            return module, [*first, *argv[n:]]
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    target = forwarded(argv)
    if target is not None:
        import importlib

        module, rest = target
        try:
            return importlib.import_module(module).main(rest) or 0
        except (FaceSDKError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
            print(f"facesdk: error: {e}", file=sys.stderr)
            return 1
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return args.run(args)
    except (FaceSDKError, FileNotFoundError, ValueError, RuntimeError, ImportError) as e:
        print(f"facesdk: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
