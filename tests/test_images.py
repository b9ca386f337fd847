"""sdk.images: headers read before decoding (decompression bombs refused unread), truncated
files refused, every header format's size parse on real encodings, colour order, PIL images,
video size checks, and the SDK's own error for every bad argument of the public entry points."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest

import sdk
from conftest import REPO
from sdk.errors import FaceSDKError, GalleryError, InvalidArgumentError, InvalidImageError
from sdk.gallery import Gallery
from sdk.images import MAX_PIXELS, check_video_size, decode_image, image_header, load_image, video_frames
from sdk.verifier import Verifier

PEOPLE = ["Colin_Powell", "Tony_Blair"]
THRESHOLD = 0.19  # as tests/test_verifier.py


def lfw_image(data: Path, name: str, number: int) -> Path:
    path = data / "lfw" / "images_deepfunneled" / name / f"{name}_{number:04d}.jpg"
    if not path.is_file():
        pytest.skip(f"LFW not found under {data}")
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR of this size, then a tiny IDAT and IEND: a bomb's header."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def face(data: Path) -> np.ndarray:
    """A real LFW face, cropped non-square (250 x 180) so that a swapped width/height shows."""
    return cv2.imread(str(lfw_image(data, PEOPLE[0], 1)))[20:200]


@pytest.fixture()
def verifier(default_onnx, data, tmp_path):
    lfw_image(data, PEOPLE[0], 1)
    with Verifier(default_onnx, detector="yunet", gallery=tmp_path / "gallery.sqlite", threshold=THRESHOLD) as v:
        for name in PEOPLE:
            v.enroll(name, [lfw_image(data, name, i) for i in (1, 2)], largest=True)
        yield v


# --- headers -------------------------------------------------------------------------------------

ENCODINGS = {
    "jpg": (".jpg", []),
    "progressive jpg": (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "png": (".png", []),
    "bmp": (".bmp", []),
    "pgm": (".pgm", []),
    "ppm": (".ppm", []),
    "pam": (".pam", []),
    "tif": (".tif", []),
    "webp lossy": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 80]),
    "webp lossless": (".webp", [cv2.IMWRITE_WEBP_QUALITY, 101]),
}
KINDS = {"jpg": "JPEG", "png": "PNG", "bmp": "BMP", "pgm": "PNM", "ppm": "PNM", "pam": "PNM", "tif": "TIFF", "webp": "WebP"}


@pytest.mark.parametrize("name", ENCODINGS)
def test_header_size_of_real_encodings(face: np.ndarray, name: str) -> None:
    ext, params = ENCODINGS[name]
    image = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if ext == ".pgm" else face
    ok, buf = cv2.imencode(ext, image, params)
    assert ok
    data = buf.tobytes()
    assert image_header(data) == (KINDS[ext[1:]], 250, 180)
    assert decode_image(data).shape == (180, 250, 3)
    if name.startswith("progressive"):
        assert b"\xff\xc2" in data  # SOF2: really progressive


def test_header_of_big_endian_tiff() -> None:
    """A TIFF in Motorola byte order (cv2 writes Intel's): an 8 x 6 gray strip, made by hand."""
    width, height = 8, 6
    pixels = bytes(range(width * height))
    entries = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 0), (277, 3, 1, 1), (278, 3, 1, height), (279, 4, 1, len(pixels))]  # fmt: skip
    ifd_size = 2 + 12 * len(entries) + 4
    body = struct.pack(">H", len(entries))
    for tag, kind, count, value in entries:
        value = 8 + ifd_size if tag == 273 else value  # the strip follows the IFD
        packed = struct.pack(">HI", value, 0)[:4] if kind == 3 else struct.pack(">I", value)
        body += struct.pack(">HHI", tag, kind, count) + packed
    data = b"MM\x00*" + struct.pack(">I", 8) + body + b"\0\0\0\0" + pixels
    assert image_header(data) == ("TIFF", width, height)
    frame = decode_image(data)
    assert frame.shape == (height, width, 3) and frame[1, 0, 0] == width


def test_header_of_extended_webp(face: np.ndarray, tmp_path: Path) -> None:
    """WebP with alpha is written with a VP8X chunk (cv2 never writes one)."""
    image = pytest.importorskip("PIL.Image")
    path = tmp_path / "alpha.webp"
    rgba = cv2.cvtColor(face, cv2.COLOR_BGR2RGBA)
    rgba[:50, :, 3] = 128  # real transparency: an opaque alpha is dropped by the encoder
    image.fromarray(rgba).save(path, quality=80)
    data = path.read_bytes()
    assert data[12:16] == b"VP8X"
    assert image_header(data) == ("WebP", 250, 180)
    assert load_image(path).shape == (180, 250, 3)


@pytest.mark.parametrize(
    "data, named",
    [(b"GIF89a\x01\x00\x01\x00", "GIF"), (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
     (b"#?RADIANCE\n", "Radiance"), (b"\x59\xa6\x6a\x95", "Sun raster"), (b"PF\n2 2\n-1\n", "PFM"),
     (b"\x00\x00\x00\x20ftypavif", "AVIF"), (b"II+\x00", "BigTIFF"), (b"", "empty"),
     (b"%PDF-1.4", "not an image")],
)  # fmt: skip
def test_other_formats_are_refused_by_name(data: bytes, named: str) -> None:
    with pytest.raises(InvalidImageError, match=named):
        decode_image(data)


# --- decompression bombs -------------------------------------------------------------------------


@pytest.mark.parametrize("side", [20_000, 50_000])
def test_bomb_is_refused_before_decoding(side: int, tmp_path: Path) -> None:
    path = tmp_path / "bomb.png"
    path.write_bytes(png_claiming(side, side))
    assert image_header(path.read_bytes()) == ("PNG", side, side)
    # In a fresh interpreter, so that its peak memory is this load's alone.
    code = (
        "import json, sys\nfrom sdk.errors import InvalidImageError\nfrom sdk.images import load_image\n"
        "try:\n    load_image(sys.argv[1])\n    error = None\n"
        "except InvalidImageError as e:\n    error = str(e)\n"
        # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the forked parent (pytest, ~1 GB).
        "peak = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))\n"
        "print(json.dumps({'error': error, 'peak_kb': peak}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["error"] and f"{side}x{side}" in result["error"] and "MP" in result["error"]
    assert result["peak_kb"] < 400_000  # cv2 + numpy alone; one decoded row of the bomb would not fit 3 of these


def _status_kb(field: str) -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field + ":"))


@pytest.mark.parametrize("side", [20_000, 50_000])
def test_bomb_is_refused_at_every_entry_point(verifier: Verifier, side: int, tmp_path: Path, data: Path) -> None:
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(side, side))
    good = lfw_image(data, PEOPLE[0], 3)
    calls = {
        "enroll": lambda: verifier.enroll("mallory", [good, bomb]),
        "match": lambda: verifier.match(bomb),
        "verify": lambda: verifier.verify(good, bomb),
        "identify": lambda: verifier.identify(bomb),
        "embed_largest": lambda: verifier.embed_largest(bomb),
        "stream": lambda: verifier.stream().match(bomb),
        "cluster": lambda: sdk.cluster([good, bomb], verifier=verifier),
    }
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # peak := current, so a decode in the calls below would show however large pytest is
    before = _status_kb("VmRSS")
    for name, call in calls.items():
        start = time.perf_counter()
        with pytest.raises(InvalidImageError, match="MP"):
            call()
        assert time.perf_counter() - start < 10, name
    assert _status_kb("VmHWM") - before < 500_000  # a decoded 20,000 x 20,000 frame is 1.2 GB
    assert "mallory" not in verifier.identities()


def test_array_and_pil_sizes_are_checked_too() -> None:
    tall = np.lib.stride_tricks.as_strided(np.zeros(1, np.uint8), (MAX_PIXELS + 1, 1), (0, 0))  # no memory
    with pytest.raises(InvalidImageError, match="MP"):
        load_image(tall)

    class FakePil:  # only the size is read before conversion
        size, mode = (10_000, 10_000), "RGB"

    FakePil.__module__ = "PIL.Image"
    FakePil.__name__ = "Image"
    with pytest.raises(InvalidImageError, match="MP"):
        load_image(FakePil())


# --- truncation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".jpg", ".png"])
def test_truncated_files_are_refused(data: Path, tmp_path: Path, ext: str) -> None:
    original = lfw_image(data, PEOPLE[0], 1)
    whole = original.read_bytes() if ext == ".jpg" else cv2.imencode(ext, cv2.imread(str(original)))[1].tobytes()
    for cut in (len(whole) // 2, len(whole) - 2, 100):
        path = tmp_path / f"cut{cut}{ext}"
        path.write_bytes(whole[:cut])
        with pytest.raises(InvalidImageError, match="truncated|cut short"):
            load_image(path)
    progressive = cv2.imencode(".jpg", cv2.imread(str(original)), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    with pytest.raises(InvalidImageError, match="truncated"):
        decode_image(progressive[: len(progressive) * 3 // 4])


def test_a_jpeg_cut_in_half_is_not_enrolled(verifier: Verifier, data: Path, tmp_path: Path) -> None:
    whole = lfw_image(data, PEOPLE[0], 4).read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(whole[: len(whole) // 2])
    with pytest.raises(InvalidImageError, match="truncated"):
        verifier.enroll("half", half)
    assert "half" not in verifier.identities()


def test_bytes_after_the_end_marker_are_fine(data: Path) -> None:
    whole = lfw_image(data, PEOPLE[0], 1).read_bytes()
    assert decode_image(whole + b"trailing junk \xff\xda").shape == (250, 250, 3)


# --- colour order and PIL ------------------------------------------------------------------------


def test_rgb_arrays_with_color_rgb_match_like_bgr(verifier: Verifier, data: Path) -> None:
    bgr = cv2.imread(str(lfw_image(data, PEOPLE[1], 5)))
    rgb = np.ascontiguousarray(bgr[:, :, ::-1])
    want = [(m.identity, round(m.distance, 5)) for m in verifier.match(bgr)]
    assert want and want[0][0] == PEOPLE[1]
    assert [(m.identity, round(m.distance, 5)) for m in verifier.match(rgb, color="rgb")] == want
    assert [(m.identity, round(m.distance, 5)) for m in verifier.match(rgb, color="RGB")] == want
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)
    np.testing.assert_array_equal(load_image(rgba, color="rgb"), bgr)
    other = cv2.imread(str(lfw_image(data, PEOPLE[1], 6)))
    assert verifier.verify(rgb, np.ascontiguousarray(other[:, :, ::-1]), color="rgb") == verifier.verify(bgr, other)
    assert verifier.identify(rgb, color="rgb")[0][0] == PEOPLE[1]
    assert verifier.stream().match(rgb, color="rgb")[0].identity == PEOPLE[1]
    assert np.allclose(verifier.embed_largest(rgb, color="rgb"), verifier.embed_largest(bgr), atol=1e-6)
    for bad in ("rbg", None, 3, ""):
        with pytest.raises(InvalidArgumentError, match="color"):
            verifier.match(bgr, color=bad)


def test_pil_images(verifier: Verifier, data: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    path = lfw_image(data, PEOPLE[1], 5)
    bgr = cv2.imread(str(path))
    with image.open(path) as lazy:  # opened, not yet decoded
        np.testing.assert_array_equal(load_image(lazy), bgr)
        assert verifier.match(lazy)[0].identity == PEOPLE[1]
    rgb = image.fromarray(bgr[:, :, ::-1])
    for mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
        frame = load_image(rgb.convert(mode))
        assert frame.shape == bgr.shape and frame.dtype == np.uint8 and frame.flags.c_contiguous, mode
    gray = load_image(rgb.convert("L"))
    assert gray.shape == bgr.shape and (gray[..., 0] == gray[..., 2]).all()
    assert verifier.enroll("pil person", [rgb], color="rgb") == 1  # color is ignored for PIL images


def test_truncated_pil_file_is_an_invalid_image(data: Path, tmp_path: Path) -> None:
    image = pytest.importorskip("PIL.Image")
    whole = lfw_image(data, PEOPLE[0], 1).read_bytes()
    half = tmp_path / "half.jpg"
    half.write_bytes(whole[: len(whole) // 2])
    with image.open(half) as lazy, pytest.raises(InvalidImageError, match="PIL"):
        load_image(lazy)


# --- video ---------------------------------------------------------------------------------------


class FakeCapture:
    def __init__(self, width: float, height: float) -> None:
        self.props = {cv2.CAP_PROP_FRAME_WIDTH: width, cv2.CAP_PROP_FRAME_HEIGHT: height}

    def get(self, prop: int) -> float:
        return self.props[prop]

    def read(self):  # never reached for a refused size
        raise AssertionError("a frame was read")


def test_check_video_size() -> None:
    assert check_video_size(FakeCapture(640, 480)) == (640, 480)
    assert check_video_size(FakeCapture(0, 0)) == (0, 0)  # unknown: frames are checked as read
    with pytest.raises(InvalidImageError, match="20000x20000"):
        check_video_size(FakeCapture(20_000, 20_000), "big.mp4")


def test_video_frames(face: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, (250, 180))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write MJPG video")
    for _ in range(5):
        writer.write(face)
    writer.release()
    frames = list(video_frames(path, every=2))
    assert [i for i, _ in frames] == [0, 2, 4] and frames[0][1].shape == (180, 250, 3)
    with pytest.raises(InvalidImageError):
        list(video_frames(tmp_path / "missing.avi"))
    (tmp_path / "junk.avi").write_bytes(b"not a video")
    with pytest.raises(InvalidImageError):
        list(video_frames(tmp_path / "junk.avi"))
    with pytest.raises(InvalidArgumentError):
        list(video_frames(path, every=0))


# --- bad arguments: always the SDK's errors --------------------------------------------------------

BAD_NAMES = [None, 5, "", "   ", "a\nb", "\x00", "x" * 10_000, b"bob", ["alice"], "ok\ud800"]


def bad_images(tmp_path: Path) -> dict[str, object]:
    (tmp_path / "folder").mkdir(exist_ok=True)
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    return {
        "None": None, "int": 5, "dict": {"a": 1}, "list with None": [None], "empty list": [],
        "folder": str(tmp_path / "folder"), "missing file": tmp_path / "missing.jpg", "empty str": "",
        "empty file": tmp_path / "empty.jpg", "text file": tmp_path / "text.jpg", "bytes": b"\xff\xd8\xff",
        "float array": np.zeros((50, 50, 3), np.float32), "1-D array": np.zeros(10, np.uint8),
        "empty array": np.zeros((0, 0, 3), np.uint8), "5 channels": np.zeros((9, 9, 5), np.uint8),
        "NUL in path": "a\x00b.jpg", "/dev/zero": "/dev/zero",
    }  # fmt: skip


def test_bad_names_raise_sdk_errors(verifier: Verifier, data: Path) -> None:
    good = lfw_image(data, PEOPLE[0], 3)
    for name in BAD_NAMES:
        with pytest.raises(InvalidArgumentError):
            verifier.enroll(name, good)
        with pytest.raises(InvalidArgumentError):
            verifier.remove(name)
    with Gallery(None, model_name="m", model_version="1", dim=4) as g:
        for name in BAD_NAMES:
            calls = [lambda: g.add(name, np.ones((1, 4))), lambda: g.embeddings(name), lambda: g.remove(name)]
            if name is not None:  # count(None) counts every row
                calls.append(lambda: g.count(name))
            for call in calls:
                with pytest.raises(InvalidArgumentError):
                    call()
        assert len(g) == 0


def test_bad_images_raise_sdk_errors(verifier: Verifier, data: Path, tmp_path: Path) -> None:
    good = lfw_image(data, PEOPLE[0], 3)
    for label, bad in bad_images(tmp_path).items():
        calls = {
            "enroll": lambda: verifier.enroll("x", bad),
            "match": lambda: verifier.match(bad),
            "verify": lambda: verifier.verify(good, bad),
            "identify": lambda: verifier.identify(bad),
            "stream": lambda: verifier.stream().match(bad),
            "cluster": lambda: sdk.cluster(bad if label in ("empty list", "dict", "None", "int") else [bad],
                                           verifier=verifier),
        }  # fmt: skip
        for entry, call in calls.items():
            if entry == "cluster" and label == "empty list":
                assert len(call()) == 0  # nothing to cluster is not an error
                continue
            with pytest.raises(InvalidImageError):
                call()
    assert "x" not in verifier.identities()


def test_bad_arguments_raise_sdk_errors(verifier: Verifier, data: Path, default_onnx: Path) -> None:
    good = lfw_image(data, PEOPLE[0], 3)
    calls = [
        lambda: verifier.match(good, threshold="x"),
        lambda: verifier.match(good, threshold=-1),
        lambda: verifier.match(good, far=0.1, threshold=0.2),
        lambda: verifier.match(good, far="x"),
        lambda: verifier.identify(good, k=0),
        lambda: verifier.identify(good, k="1"),
        lambda: verifier.quality_for("x"),
        lambda: Verifier(default_onnx, gallery=None, scoring="cosine"),
        lambda: sdk.cluster([good], verifier=verifier, method="complete"),
        lambda: sdk.cluster(np.ones((2, 4)), threshold=None),
        lambda: verifier.gallery.search(np.ones((1, 3))),
        lambda: verifier.gallery.within(np.ones((1, 128)), threshold=-1.0),
        lambda: verifier.gallery.within(np.ones((1, 128)), threshold="0.2"),
        lambda: Gallery(None, model_name="", model_version="1", dim=4),
        lambda: Gallery(None, model_name="m", model_version="1", dim=0),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(FaceSDKError) as raised:
            call()
        assert not isinstance(raised.value, GalleryError) or i >= 10, i


def test_sdk_errors_are_still_the_builtins() -> None:
    assert issubclass(InvalidArgumentError, ValueError) and issubclass(InvalidArgumentError, TypeError)
    assert issubclass(InvalidImageError, ValueError)
    assert sdk.InvalidArgumentError is InvalidArgumentError
