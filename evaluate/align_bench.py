"""``facesdk bench align``: dlib's 5 landmarks and the chip cut, ours against dlib-bin's own.

    facesdk bench align [--images 32] [--passes 5] [--json PATH]

On real LFW faces (250x250 JPEGs), each face found by YuNet (input side 160) and given the
box dlib's HOG detector would give it (``sdk.detect.dlib_box_from_yunet``, rounded to dlib's
integer rectangle so that both predictors see the same box), p50 per call of:

* landmarks: ``sdk.landmarks.ShapePredictor.predict`` (our C++ kernel) and dlib-bin's
  ``shape_predictor`` (the reference, on the RGB image as dlib's Python API takes it);
* chip: ``sdk.chips.cut`` (our C++ sampler, once per instruction set it can use) and dlib-bin's
  ``get_face_chip`` (150 px, padding 0.25), both from dlib's own 5 points.

Each twice: ``hot`` (one call after another, the model in cache) and ``evicted`` (a 32 MB
buffer written before every call: as in a frame, where the embedder's weights and the gallery
pass through the caches and the TLB between two faces). The time of the eviction is not
counted. Ratios are dlib-bin over ours, measured in the same run; the run also checks that our
points round to dlib's and that our chips are dlib's, byte for byte.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

import numpy as np

EVICT_BYTES = 32 << 20


def _faces(count: int) -> list[dict[str, Any]]:
    """Decoded LFW frames with the dlib rectangle YuNet's face maps to (those where YuNet finds one)."""
    import cv2

    from evaluate.bench import lfw_jpegs
    from sdk.chips import central_face
    from sdk.detect import YuNetDetector, dlib_box_from_yunet

    yunet = YuNetDetector(max_side=160)
    faces = []
    for jpeg in lfw_jpegs(count)[1]:
        bgr = cv2.imdecode(jpeg, cv2.IMREAD_COLOR)
        face = central_face(yunet.detect(bgr), bgr.shape)
        if face is None:
            continue
        x1, y1, x2, y2 = np.floor(dlib_box_from_yunet(face.box, face.landmarks) + 0.5).astype(int).tolist()
        faces.append({"bgr": bgr, "rgb": cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), "box": (x1, y1, x2, y2)})
    return faces


def _p50(call: Callable[[dict], Any], faces: list[dict], passes: int, evict: np.ndarray | None) -> float:
    times = []
    for _ in range(passes):
        for face in faces:
            if evict is not None:
                evict[::64] += 1  # a write per cache line
            t0 = time.perf_counter()
            call(face)
            times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def bench_align(args: argparse.Namespace) -> dict:
    import dlib

    from evaluate.bench import device_info, versions
    from sdk import kernels
    from sdk.chips import cut
    from sdk.dlib_format import dlib_model_path
    from sdk.landmarks import DEFAULT_PREDICTOR, ShapePredictor

    faces = _faces(args.images)
    if not faces:
        raise RuntimeError("YuNet found no face in the LFW frames")
    ours = ShapePredictor()
    theirs = dlib.shape_predictor(str(dlib_model_path(DEFAULT_PREDICTOR)))
    same_points = same_chips = 0
    for f in faces:
        f["rect"] = dlib.rectangle(f["box"][0], f["box"][1], f["box"][2] - 1, f["box"][3] - 1)
        f["shape"] = theirs(f["rgb"], f["rect"])
        f["points"] = np.array([(p.x, p.y) for p in f["shape"].parts()], np.float64)
        same_points += np.array_equal(np.floor(ours.predict(f["bgr"], f["box"]) + 0.5), f["points"])
        same_chips += np.array_equal(cut(f["bgr"], f["points"], "dlib5"), dlib.get_face_chip(f["rgb"], f["shape"], 150, 0.25))

    # (stage, who, instruction set of our kernels or None, one call on a face)
    cases: list[tuple[str, str, str | None, Callable[[dict], Any]]] = [
        ("landmarks", "ours", None, lambda f: ours.predict(f["bgr"], f["box"])),
        ("landmarks", "dlib-bin", None, lambda f: theirs(f["rgb"], f["rect"])),
    ]
    for isa in kernels.available_isas():
        cases.append(("chip", f"ours [{isa}]", isa, lambda f: cut(f["bgr"], f["points"], "dlib5")))
    cases.append(("chip", "dlib-bin", None, lambda f: dlib.get_face_chip(f["rgb"], f["shape"], 150, 0.25)))

    before = kernels.isa()
    evict = np.zeros(EVICT_BYTES, np.uint8)
    print(f"  {len(cases)} cases x {len(faces)} faces x {args.passes} passes, hot and evicted ...", file=sys.stderr, flush=True)
    rows = []
    try:
        for stage, who, isa, call in cases:
            kernels.set_isa(isa or before)
            call(faces[0])  # warm-up
            rows.append({"stage": stage, "who": who, "hot_ms": _p50(call, faces, args.passes, None),
                         "evicted_ms": _p50(call, faces, args.passes, evict)})  # fmt: skip
    finally:
        kernels.set_isa(before)
    for r in rows:  # dlib-bin over ours, same stage, same run
        ref = next(x for x in rows if x["stage"] == r["stage"] and x["who"] == "dlib-bin")
        r["dlib_over_ours"] = {k: ref[k] / r[k] for k in ("hot_ms", "evicted_ms")}
    return {
        "device": device_info(0),
        "versions": {**versions(), "dlib": dlib.__version__},
        "faces": len(faces),
        "passes": args.passes,
        "points_equal_to_dlib": int(same_points),
        "chips_equal_to_dlib": int(same_chips),
        "rows": rows,
    }


def print_align(result: dict) -> None:
    d = result["device"]
    print(f"device: {d['cpu']}, {d['cores']} cores [{' '.join(d['isa'])}]; dlib-bin {result['versions']['dlib']}")
    print(f"{result['faces']} LFW faces x {result['passes']} passes; p50 ms per face; evicted: 32 MB written before each call")
    print(f"{'stage':<10} {'who':<16} {'hot':>7} {'evicted':>8} {'dlib/ours hot':>14} {'evicted':>8}")
    for r in result["rows"]:
        ratio = r["dlib_over_ours"]
        print(f"{r['stage']:<10} {r['who']:<16} {r['hot_ms']:7.3f} {r['evicted_ms']:8.3f} "
              f"{ratio['hot_ms']:13.2f}x {ratio['evicted_ms']:7.2f}x")  # fmt: skip
    n = result["faces"]
    print(f"points equal to dlib's (after its rounding): {result['points_equal_to_dlib']}/{n}; "
          f"chips equal to dlib's, byte for byte: {result['chips_equal_to_dlib']}/{n}")  # fmt: skip
    print("Shared, noisy machine: compare within one run.")
