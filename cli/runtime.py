"""The Verifier's verbs: enroll, match, verify, identify, cluster, gallery, demo. Runtime only
(sdk, numpy, OpenCV, ONNX Runtime): they work in an install without torch."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from cli.common import calibrated_thresholds, data_option, detector_option, emit, model_option, positive

NO = 3  # exit code of a well-formed "no" (different people, nobody recognised)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def register(sub) -> None:
    p = runtime(sub.add_parser("enroll", help="add a person's faces to the gallery"))
    p.add_argument("name")
    p.add_argument("images", nargs="+")
    p.set_defaults(run=enroll_cmd)
    p = decision(runtime(sub.add_parser("match", help="identify every face of an image, folder or video")))
    p.add_argument("source")
    p.add_argument("--every", type=positive, default=1, help="video: match every N-th frame")
    p.add_argument("--track", action="store_true", help="video: follow faces across frames, fuse each track")
    p.set_defaults(run=match_cmd)
    p = decision(runtime(sub.add_parser("verify", help="are two images the same person?")))
    p.add_argument("a")
    p.add_argument("b")
    p.set_defaults(run=verify_cmd)
    p = decision(runtime(sub.add_parser("identify", help="nearest enrolled identities of a face")))
    p.add_argument("image")
    p.add_argument("-k", type=positive, default=5)
    p.set_defaults(run=identify_cmd)
    p = runtime(sub.add_parser("cluster", help="group the faces of a folder by identity"))
    p.add_argument("folder")
    p.add_argument("--threshold", type=float, help="squared-L2 linkage threshold (default: the model's)")
    p.set_defaults(run=cluster_cmd)
    p = runtime(sub.add_parser("gallery", help="list, remove from or export the gallery"))
    p.add_argument("action", choices=["list", "remove", "export"])
    p.add_argument("name", nargs="?", help="remove: the identity; export: the .npz path")
    p.set_defaults(run=gallery_cmd)
    p = sub.add_parser("demo", help="the Verifier on real faces: enrol AT&T people, match unseen images")
    data_option(p, "att/")
    p.set_defaults(run=demo_cmd)


def runtime(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    model_option(p)
    detector_option(p)
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
        if not source.is_file():
            raise FileNotFoundError(f"no video at {source}")
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
    from cli.common import UsageError

    if args.action != "list" and not args.name:
        raise UsageError("gallery remove needs the identity to remove" if args.action == "remove"
                         else "gallery export needs an output path (.npz)")  # fmt: skip
    with make_verifier(args) as v:
        g = v.gallery
        if args.action == "list":
            rows = [(name, g.count(name)) for name in g.identities()]
            emit(args, [{"identity": n, "faces": c} for n, c in rows],
                 [f"{n:<32} {c:>5}" for n, c in rows] + [f"{len(rows)} identities, {len(g)} faces"])  # fmt: skip
        elif args.action == "remove":
            removed = g.remove(args.name)
            emit(args, {"removed": removed}, [f"{'removed' if removed else 'not enrolled:'} {args.name!r}"])
            return 0 if removed else NO
        else:
            g.export(Path(args.name))
            emit(args, {"exported": args.name}, [f"wrote {args.name}"])
    return 0


def cluster_cmd(args: argparse.Namespace) -> int:
    from evaluate.clustering import pairwise_precision_recall
    from sdk import clustering

    folder = Path(args.folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"no folder {folder}")
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


def demo_cmd(args: argparse.Namespace) -> int:
    """The main job on the embedded default: enrol AT&T people, match their unseen images."""
    from cli.models import install
    from evaluate import openset
    from sdk.embed import default_model_path
    from sdk.verifier import Verifier

    if not (args.data / "att").is_dir():
        raise FileNotFoundError(
            f"no AT&T faces under {args.data}: set FACESDK_DATA to a folder holding att/, or use your own images: "
            "facesdk enroll alice alice1.jpg alice2.jpg; facesdk match photo.jpg"
        )
    if not default_model_path().is_file():
        install(default_model_path())
    with Verifier(gallery=None) as v:
        print("Verifier:", ", ".join(f"{k} {val}" for k, val in v.info().items() if k != "model_path"))
        labels, thresholds = calibrated_thresholds(v)
        result = openset.run(v, openset.att_protocol(args.data), thresholds)
        print("\n".join(result.lines(labels)))
        probe = args.data / "att" / "s3" / "9.pgm"
        for m in v.match(probe):
            print(f"match {probe}: identity {m.identity}, distance {m.distance:.4f}, accepted {m.accepted}")
    return 0
