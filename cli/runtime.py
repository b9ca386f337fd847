"""The Verifier's verbs: enroll, match, verify, identify, cluster, gallery, demo. Runtime only
(sdk, numpy, OpenCV, ONNX Runtime): they work in an install without torch."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from cli.common import calibrated_thresholds, data_option, detector_option, emit, model_option, positive

NO = 3  # exit code of a well-formed "no" (different people, nobody recognised)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".pgm", ".ppm", ".tif", ".tiff", ".webp"}
VIDEO_SUFFIXES = {".mp4", ".avi", ".mov", ".mkv", ".webm"}


def register(sub) -> None:
    p = runtime(sub.add_parser("enroll", help="add a person's faces to the gallery (one line per image)"))
    p.add_argument("name")
    p.add_argument("images", nargs="+", help="image files or folders (every image inside, sorted)")
    p.add_argument("--largest", action="store_true", help="an image of several faces: enrol its largest face")
    p.add_argument("--force", action="store_true",
                   help="enrol faces refused as enrolled under another name or unlike the person's other faces")  # fmt: skip
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
    p = runtime(sub.add_parser("claim", help="1:1: is the face in an image the person it claims to be (badge, PIN)?"))
    p.add_argument("name", help="the claimed identity, enrolled in the gallery")
    p.add_argument("image", help="an image; with --track a video or a folder of frames")
    p.add_argument("--track", action="store_true", help="follow the largest face across the frames, decide on its fused track")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--far", type=float, help="use the model's pairwise threshold calibrated for this FAR")
    group.add_argument("--threshold", type=float, help="squared-L2 threshold")
    p.set_defaults(run=claim_cmd)
    p = runtime(sub.add_parser("cluster", help="group the faces of a folder by identity"))
    p.add_argument("folder")
    p.add_argument("--threshold", type=float, help="squared-L2 linkage threshold (default: the model's)")
    p.set_defaults(run=cluster_cmd)
    actions = sub.add_parser("gallery", help="list, remove, check, export or import the gallery's identities")
    actions = actions.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = runtime(actions.add_parser("list", help="enrolled identities and their faces"))
    p.add_argument("--fpir", type=float, help="also the 1:N operating point for this FPIR at the gallery's size")
    p.set_defaults(run=gallery_list)
    p = runtime(actions.add_parser("remove", help="forget an identity and its faces"))
    p.add_argument("name")
    p.set_defaults(run=gallery_remove)
    p = runtime(actions.add_parser("check", help="embeddings that cannot be matched (a damaged file)"))
    p.add_argument("--repair", action="store_true", help="delete them")
    p.set_defaults(run=gallery_check)
    p = runtime(actions.add_parser("export", help="write every enrolled face's template to an .npz (biometric data)"))
    p.add_argument("path", type=Path)
    p.add_argument("--embeddings", action="store_true", required=True,
                   help="required: say that you mean to copy every enrolled face's template out of the gallery")  # fmt: skip
    p.add_argument("--sources", action="store_true", help="also where each face came from (e.g. image paths)")
    p.set_defaults(run=gallery_export)
    p = runtime(actions.add_parser("import", help="enrol every row of an export (.npz), in one transaction"))
    p.add_argument("path", type=Path)
    p.set_defaults(run=gallery_import)
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
    p.add_argument("--model-sha256", help="refuse the model file unless its SHA-256 is this (hex)")
    p.add_argument("--gallery-precision", choices=["fp32", "fp16", "int8"], default="fp32",
                   help="the gallery's rows in memory (decisions are float32's either way; README, compressed galleries)")  # fmt: skip
    return p


def decision(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--far", type=float, help="use the model's threshold calibrated for this FAR")
    group.add_argument("--threshold", type=float, help="squared-L2 threshold")
    group.add_argument("--fpir", type=float, help="1:N: the model's threshold for this FPIR at the gallery's size")
    return p


def make_verifier(args: argparse.Namespace, gallery: str | None = "read"):
    """The Verifier the options describe. ``gallery``: "read" (it must exist: a mistyped path is
    an error, not an empty gallery), "write" (created if missing) or None (none touched)."""
    from sdk.paths import home
    from sdk.verifier import Verifier

    path = None
    if gallery is not None:
        path = Path(args.gallery) if args.gallery else home() / "gallery.sqlite"
        if gallery == "read" and not path.exists():
            raise FileNotFoundError(f"no gallery at {path}: enrol someone first (facesdk enroll NAME IMAGE...)")
    return Verifier(
        model=args.model,
        detector=args.detector,
        gallery="default" if gallery is not None and args.gallery is None else path,
        threshold=getattr(args, "threshold", None),
        far=getattr(args, "far", None),
        fpir=getattr(args, "fpir", None),
        scoring=args.scoring,
        min_quality=args.min_quality,
        model_sha256=args.model_sha256,
        gallery_precision=args.gallery_precision,
    )


def image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)


def enroll_cmd(args: argparse.Namespace) -> int:
    """Each image is decided on its own: the accepted ones are stored, every refusal is reported
    with its reason and makes the exit status 1."""
    files: list[Path] = []
    for item in map(Path, args.images):
        if item.is_dir():
            found = image_files(item)
            if not found:
                raise ValueError(f"no images in {item}")
            files += found
        else:
            files.append(item)  # a missing file is refused with the others' results
    with make_verifier(args, "write") as v:
        results = v.enroll_each(args.name, [str(f) for f in files], largest=args.largest, force=args.force)
        total = v.gallery.count(args.name)
    counts = {status: sum(r.status == status for r in results) for status in ("added", "skipped", "refused")}
    lines = [f"{r.status:8} {r.source}" + (f": {r.reason}" if r.reason else "") for r in results]
    lines.append(f"{args.name!r}: " + ", ".join(f"{n} {status}" for status, n in counts.items()) + f" ({total} in the gallery)")
    rows = [{"source": r.source, "status": r.status, "reason": r.reason, "other": r.other} for r in results]
    emit(args, {"identity": args.name, **counts, "total": total, "images": rows}, lines)
    return 1 if counts["refused"] else 0


def frames(source: Path, every: int):
    """(label, frame) of an image, every image of a folder, or every `every`-th frame of a video."""
    from sdk.images import video_frames

    if source.is_dir():
        for path in image_files(source):
            yield str(path), path
    elif source.suffix.lower() in VIDEO_SUFFIXES:
        for index, frame in video_frames(source, every):
            yield f"{source.name}#{index}", frame
    else:
        yield str(source), source


def progress(items: list, what: str):
    """``items`` with a progress bar on stderr when there are many."""
    from tqdm import tqdm

    return tqdm(items, desc=what, unit="img", disable=len(items) < 50, leave=False)


def match_cmd(args: argparse.Namespace) -> int:
    from sdk.errors import FaceSDKError

    results, lines, accepted, failed = [], [], 0, 0
    source = Path(args.source)
    with make_verifier(args) as v:
        # --track: follow each face across the frames and answer for the fusion of its last frames.
        matcher = v.stream() if args.track else v
        lines.append(f"{'source':<40} {'face':>4} {'identity':<24} {'distance':>8} {'accepted':>8} {'why not':<11}  box")
        items = frames(source, args.every)
        for label, frame in progress(list(items), "match") if source.is_dir() else items:
            try:
                found = matcher.match(frame)
            except FaceSDKError as e:  # one bad file of a folder: report it, go on with the rest
                failed += 1
                results.append({"source": label, "error": str(e)})
                lines.append(f"{label[-40:]:<40} {'-':>4} error: {e}")
                continue
            for i, m in enumerate(found):
                accepted += m.accepted
                results.append({"source": label, "face": i, "identity": m.identity, "distance": m.distance,
                                "accepted": m.accepted, "reason": m.reason, "score": m.score, "quality": m.quality,
                                "mls": m.mls, "track": m.track_id, "frames": m.frames, "decided_at": m.decided_at, "box": m.box,
                                "landmarks": m.landmarks})  # fmt: skip
                lines.append(f"{label[-40:]:<40} {i:>4} {m.identity or '-':<24} {m.distance:8.4f} "
                             f"{'yes' if m.accepted else 'no':>8} {m.reason or '':<11}  "
                             f"{np.round(m.box).astype(int).tolist()}")  # fmt: skip
            if not found:
                lines.append(f"{label[-40:]:<40} {'-':>4} no face")
    emit(args, results, lines)
    if failed:
        print(f"facesdk: error: {failed} of the inputs could not be read (rows above)", file=sys.stderr)
        return 1
    return 0 if accepted else NO


def verify_cmd(args: argparse.Namespace) -> int:
    with make_verifier(args, gallery=None) as v:
        r = v.verify(args.a, args.b)
    emit(args, {"same": r.same, "distance": r.distance, "threshold": r.threshold},
         [f"{'same person' if r.same else 'different people'}: distance {r.distance:.4f}, threshold {r.threshold:.4f}"])  # fmt: skip
    return 0 if r.same else NO


def claim_cmd(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        if not args.track:
            r = v.verify_claim(args.image, args.name, far=args.far, threshold=args.threshold)
            verdict = f"{args.name}: {'accepted' if r.same else 'refused'}"
            emit(args, {"identity": args.name, "accepted": r.same, "distance": r.distance, "threshold": r.threshold, "reason": r.reason},
                 [f"{verdict}: distance {r.distance:.4f}, threshold {r.threshold:.4f}" + (f" ({r.reason})" if r.reason else "")])  # fmt: skip
            return 0 if r.same else NO
        stream, results, lines = v.stream(), [], []
        for label, frame in frames(Path(args.image), 1):
            r = stream.claim(frame, args.name, far=args.far, threshold=args.threshold)
            results.append({"source": label, "accepted": r.same, "distance": r.distance, "threshold": r.threshold, "reason": r.reason})
            lines.append(f"{label[-40:]:<40} {'accepted' if r.same else 'refused':<8} distance {r.distance:8.4f} "
                         f"threshold {r.threshold:.4f}" + (f" ({r.reason})" if r.reason else ""))  # fmt: skip
        first = next((r["source"] for r in results if r["accepted"]), None)
        lines.append(f"{args.name}: " + (f"accepted at {first}" if first else f"refused in all {len(results)} frames"))
        emit(args, {"identity": args.name, "accepted": first is not None, "first_accepted": first, "frames": results}, lines)
    return 0 if first else NO


def identify_cmd(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        candidates, limit = v.identify(args.image, k=args.k), v.threshold
    lines = [f"{'rank':>4} {'identity':<24} {'distance':>8} {'within threshold':>16}"]
    lines += [f"{r:>4} {n:<24} {d:8.4f} {'yes' if d <= limit else 'no':>16}" for r, (n, d) in enumerate(candidates, 1)]
    emit(args, {"threshold": limit, "candidates": [{"identity": n, "distance": d} for n, d in candidates]}, lines)
    return 0 if candidates and candidates[0][1] <= limit else NO


def gallery_list(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        g = v.gallery
        rows = [(name, g.count(name)) for name in g.identities()]
        point = None if v.fpir is None else v.operating_point()
        payload = {"identities": [{"identity": n, "faces": c} for n, c in rows], "threshold": v.threshold, "operating_point": point}
        lines = [f"{n:<32} {c:>5}" for n, c in rows] + [f"{len(rows)} identities, {len(g)} faces"]
        if point is None:
            lines.append(f"threshold {v.threshold:.4f} (pairwise, the same at any gallery size)")
        else:
            fnir = "not measured" if point["expected_fnir"] is None else f"{point['expected_fnir']:.1%}"
            lines.append(f"operating point at N = {point['gallery_size']}: threshold {point['threshold']:.4f}, "
                         f"expected FPIR {point['expected_fpir']:.2g} (target {point['target_fpir']:g}), expected FNIR {fnir}")  # fmt: skip
            if point["warning"]:
                lines.append(f"warning: {point['warning']}")
        emit(args, payload, lines)
    return 0


def gallery_remove(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        removed = v.gallery.remove(args.name)
    emit(args, {"removed": removed}, [f"{'removed' if removed else 'not enrolled:'} {args.name!r}"])
    return 0 if removed else NO


def gallery_check(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        bad = v.gallery.repair() if args.repair else v.gallery.check()
    verb = "removed" if args.repair else "found"
    emit(args, {"bad_rows": [b._asdict() for b in bad], "repaired": args.repair},
         [f"row {b.row} of {b.identity!r}: {b.reason}" for b in bad]
         + [f"{verb} {len(bad)} embedding(s) that cannot be matched" + ("" if args.repair or not bad else "; --repair deletes them")])  # fmt: skip
    return 0 if args.repair or not bad else NO


def gallery_export(args: argparse.Namespace) -> int:
    with make_verifier(args) as v:
        v.gallery.export(args.path, sources=args.sources)
    emit(args, {"exported": str(args.path)}, [f"wrote {args.path} (every enrolled face's template; keep it private)"])
    return 0


def gallery_import(args: argparse.Namespace) -> int:
    if not args.path.is_file():
        raise FileNotFoundError(f"no export at {args.path}")  # before a gallery is created for it
    with make_verifier(args, "write") as v:
        added = v.gallery.import_npz(args.path)
        total = len(v.gallery)
    emit(args, {"added": added, "total": total}, [f"imported {added} face(s) from {args.path} ({total} in the gallery)"])
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
    from sdk.errors import FaceSDKError, NoFaceError

    embeddings, rows, errors = [], [], {}
    with make_verifier(args, gallery=None) as v:
        threshold = v.threshold if args.threshold is None else args.threshold
        for i, path in enumerate(progress(paths, "cluster")):
            try:
                embeddings.append(v.embed_largest(path))
                rows.append(i)
            except NoFaceError:
                continue
            except FaceSDKError as e:  # one bad file: report it, go on with the rest
                errors[str(path.relative_to(folder))] = str(e)
    labels = np.full(len(paths), -1, np.int64)
    if embeddings:
        labels[rows] = clustering.cluster_embeddings(np.array(embeddings), threshold)
    groups: dict[int, list[str]] = {}
    for path, label in zip(paths, labels):
        if label >= 0:
            groups.setdefault(int(label), []).append(str(path.relative_to(folder)))
    no_face = [str(p.relative_to(folder)) for p, label in zip(paths, labels) if label < 0 and str(p.relative_to(folder)) not in errors]
    payload = {"threshold": threshold, "clusters": list(groups.values()), "no_face": no_face}
    lines = [f"{len(embeddings)} faces in {len(groups)} clusters (threshold {threshold:.4f}); {len(no_face)} images without a face"]
    lines += [f"cluster {k}: {', '.join(members)}" for k, members in groups.items()]
    found = labels >= 0
    if all(len(p.relative_to(folder).parts) > 1 for p in paths):  # subfolders name the people
        truth = np.unique([p.relative_to(folder).parts[0] for p in paths], return_inverse=True)[1]
        precision, recall, f1 = pairwise_precision_recall(truth[found], labels[found])
        payload.update(precision=precision, recall=recall, f1=f1, identities=int(truth.max()) + 1)
        lines.append(f"against the subfolders ({int(truth.max()) + 1} people): pairwise precision {precision:.3f}, recall {recall:.3f}, F1 {f1:.3f}")
    payload["errors"] = errors
    lines += [f"error: {name}: {message}" for name, message in errors.items()]
    emit(args, payload, lines)
    if errors:
        print(f"facesdk: error: {len(errors)} of the images could not be read (rows above)", file=sys.stderr)
        return 1
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
