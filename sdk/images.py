"""Image input: every picture the SDK is given passes through :func:`load_image`.

Accepted inputs
    * a path to a JPEG (baseline or progressive), PNG, BMP, PNM (PBM/PGM/PPM/PAM), TIFF or WebP
      file: read once (at most ``MAX_FILE_BYTES``), its format found by its magic bytes, its
      width and height read from its header and refused above ``MAX_PIXELS`` *before* anything
      is decoded, a truncated JPEG (no end-of-image marker after the last scan) or PNG (no IEND
      chunk) refused, then decoded by OpenCV;
    * a numpy uint8 array: HxW gray, HxWx3 or HxWx4, in the channel order named by ``color``
      ("bgr", OpenCV's order and the default, or "rgb", e.g. from PIL, matplotlib, imageio);
    * a ``PIL.Image.Image`` of any mode (PIL is never imported by the SDK: a PIL image is
      recognised by its class's module).

Every failure raises :class:`~sdk.errors.InvalidImageError` (a bad ``color`` raises
:class:`~sdk.errors.InvalidArgumentError`).

Video: :func:`check_video_size` refuses a ``cv2.VideoCapture`` whose frames exceed
``MAX_PIXELS`` before the first frame is decoded; :func:`video_frames` opens, checks and reads.
"""

from __future__ import annotations

import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Union

import numpy as np

from sdk.errors import InvalidArgumentError, InvalidImageError

# Frames above this many pixels are refused: a decoded 50 MP frame is already 150 MB.
MAX_PIXELS = 50_000_000
# Files above this size are refused unread: an uncompressed 50 MP frame with alpha fits.
MAX_FILE_BYTES = 256 * 1024 * 1024

COLORS = ("bgr", "rgb")
# Formats OpenCV may decode that the SDK does not accept, by magic bytes: named when refused.
_FOREIGN = (
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x59\xa6\x6a\x95", "Sun raster"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"#?RGBE", "Radiance HDR"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"PF", "PFM"),
    (b"Pf", "PFM"),
    (b"II+\x00", "BigTIFF"),
    (b"MM\x00+", "BigTIFF"),
)
ACCEPTED = "JPEG, PNG, BMP, PNM (PBM/PGM/PPM/PAM), TIFF, WebP"

Image = Union[str, os.PathLike, np.ndarray, Any]  # Any: a PIL.Image.Image


def load_image(image: Image, color: str = "bgr") -> np.ndarray:
    """A BGR uint8 [H, W, 3] C-contiguous frame from a path, an array or a PIL image.

    color: the channel order of an array ("bgr" or "rgb"); paths and PIL images carry their own.
    """
    color = check_color(color)
    if isinstance(image, (str, os.PathLike)):
        frame = decode_image(read_image_file(image), str(image))
    elif isinstance(image, np.ndarray):
        frame = _from_array(image, color)
    elif is_pil_image(image):
        frame = _from_pil(image)
    else:
        raise InvalidImageError(
            f"an image must be a file path, a numpy array or a PIL image, got {type(image).__name__}"
        )
    return frame


def is_single_image(x: object) -> bool:
    """Whether ``x`` is one image (as opposed to a collection of them)."""
    return isinstance(x, (str, os.PathLike, np.ndarray)) or is_pil_image(x)


def check_color(color: object) -> str:
    if not isinstance(color, str) or color.lower() not in COLORS:
        raise InvalidArgumentError(f"color must be one of {', '.join(map(repr, COLORS))}, got {color!r}")
    return color.lower()


def is_pil_image(x: object) -> bool:
    # By the class's module, so that PIL is never imported for a caller who does not use it.
    return any(c.__name__ == "Image" and c.__module__ == "PIL.Image" for c in type(x).__mro__)


def read_image_file(path: str | os.PathLike) -> bytes:
    """The bytes of an image file, refused unread when missing, not a regular file or too large."""
    name = os.fspath(path)
    if isinstance(name, bytes) or not name:
        raise InvalidImageError(f"an image path must be a non-empty str, got {name!r}")
    if "\0" in name:
        raise InvalidImageError(f"an image path cannot hold a NUL character: {name!r}")
    try:
        info = os.stat(name)
    except OSError as e:
        raise InvalidImageError(f"no such image file: {name} ({e.strerror})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InvalidImageError(f"{name} is a directory, not an image file")
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise InvalidImageError(f"{name} is not a regular file")
    try:
        with open(name, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise InvalidImageError(f"{name} has {size} bytes, more than the {MAX_FILE_BYTES} allowed for an image")
            data = f.read(MAX_FILE_BYTES + 1)  # the file may have grown since fstat
    except OSError as e:
        raise InvalidImageError(f"cannot read image {name}: {e}") from e
    if len(data) > MAX_FILE_BYTES:
        raise InvalidImageError(f"{name} has more than the {MAX_FILE_BYTES} bytes allowed for an image")
    return data


def decode_image(data: bytes, source: str = "the image") -> np.ndarray:
    """A BGR frame from an encoded file's bytes: format and size checked before decoding."""
    kind, width, height = image_header(data, source)
    check_size(width, height, f"{source} ({kind})")
    import cv2

    try:
        frame = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except (cv2.error, MemoryError, OverflowError) as e:
        raise InvalidImageError(f"{source} ({kind}) cannot be decoded: {e}") from e
    if frame is None:
        raise InvalidImageError(f"{source} is not a readable {kind} image (corrupt or truncated)")
    return _from_array(frame, "bgr")


def check_size(width: int, height: int, what: str = "the image") -> None:
    if width < 1 or height < 1:
        raise InvalidImageError(f"{what}: {width}x{height} pixels, empty")
    if width * height > MAX_PIXELS:
        raise InvalidImageError(
            f"{what}: {width}x{height} pixels, more than {MAX_PIXELS / 1e6:.0f} MP; downscale it first"
        )


def image_header(data: bytes, source: str = "the image") -> tuple[str, int, int]:
    """(format, width, height) of an encoded image, from its header; InvalidImageError for a
    format the SDK does not accept, a broken header or a truncated JPEG or PNG."""
    for magic, kind, parse in _PARSERS:
        if data.startswith(magic):
            try:
                width, height = parse(data)
            except _Broken as e:
                raise InvalidImageError(f"{source} is a broken {kind} file: {e}") from None
            except (struct.error, IndexError, ValueError):  # a read past the end, a bad number
                raise InvalidImageError(f"{source} is a broken {kind} file: its header is cut short or corrupt") from None
            return kind, width, height
    for magic, kind in _FOREIGN:
        if data.startswith(magic):
            raise InvalidImageError(f"{source} is a {kind} image; accepted formats: {ACCEPTED}")
    if data[4:8] == b"ftyp":
        raise InvalidImageError(f"{source} is an ISO media file (HEIF/AVIF/MP4); accepted formats: {ACCEPTED}")
    if not data:
        raise InvalidImageError(f"{source} is empty (0 bytes)")
    raise InvalidImageError(f"{source} is not an image of an accepted format ({ACCEPTED}); it starts {data[:8]!r}")


class _Broken(ValueError):
    """A header that is there but wrong (caught by image_header)."""


# --- per-format headers: each returns (width, height) or raises _Broken / struct.error ------------

# SOF0..SOF15 except DHT (C4), JPG (C8), DAC (CC): the frame header.
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker; anything
# else starts the next marker.
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7]")


def _jpeg(data: bytes) -> tuple[int, int]:
    """The frame header's size; walks every segment and scan to the EOI marker, so that a file
    cut anywhere is refused (libjpeg would fill the missing part with grey)."""
    size, pos, n = None, 2, len(data)
    while True:
        if pos >= n:
            raise _Broken("truncated: it ends before its end-of-image marker")
        if data[pos] != 0xFF:
            raise _Broken(f"no marker at byte {pos}")
        while pos < n and data[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            raise _Broken("truncated: it ends before its end-of-image marker")
        marker = data[pos]
        pos += 1
        if marker == 0xD9:  # EOI
            if size is None:
                raise _Broken("no image data (end-of-image before any scan)")
            return size
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            continue
        (length,) = struct.unpack_from(">H", data, pos)
        if length < 2 or pos + length > n:
            raise _Broken("truncated: a segment runs past the end of the file")
        if marker in _SOF and size is None:
            height, width = struct.unpack_from(">HH", data, pos + 3)
            if height == 0:
                raise _Broken("height 0 (a DNL marker) is not supported")
            size = (width, height)
        pos += length
        if marker == 0xDA:  # a scan: its entropy-coded data runs to the next marker
            if size is None:
                raise _Broken("a scan before the frame header")
            found = _NEXT_MARKER.search(data, pos)
            if found is None:
                raise _Broken("truncated: it ends inside a scan, before its end-of-image marker")
            pos = found.start()


def _png(data: bytes) -> tuple[int, int]:
    length, kind = struct.unpack_from(">I4s", data, 8)
    if kind != b"IHDR" or length != 13:
        raise _Broken("the first chunk is not IHDR")
    width, height = struct.unpack_from(">II", data, 16)
    pos, n = 8, len(data)
    while True:  # chunk framing only: length, type, data, CRC; libpng checks the rest
        if pos + 8 > n:
            raise _Broken("truncated: no IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        pos += 12 + length
        if pos > n:
            raise _Broken(f"truncated: chunk {kind!r} runs past the end of the file")
        if kind == b"IEND":
            return width, height


def _bmp(data: bytes) -> tuple[int, int]:
    (offset,) = struct.unpack_from("<I", data, 10)
    (header,) = struct.unpack_from("<I", data, 14)
    if header == 12:  # OS/2 BITMAPCOREHEADER
        width, height, _, bits = struct.unpack_from("<HHHH", data, 18)
        compression = 0
    else:
        width, height, _, bits, compression = struct.unpack_from("<iiHHI", data, 18)
    width, height = abs(width), abs(height)  # negative height: stored top-down
    if compression == 0 and bits in (1, 4, 8, 16, 24, 32):  # uncompressed: its size is known
        stride = (width * bits + 31) // 32 * 4
        if offset + stride * height > len(data):
            raise _Broken("truncated: the pixel rows run past the end of the file")
    return width, height


_PNM_TOKEN = re.compile(rb"(?:\s|#[^\n]*\n?)*(\S+)")


def _pnm(data: bytes) -> tuple[int, int]:
    kind = data[1:2]
    if kind == b"7":  # PAM: "WIDTH w", "HEIGHT h", ... "ENDHDR"
        fields = dict(re.findall(rb"^(WIDTH|HEIGHT|DEPTH|MAXVAL)\s+(\d+)", data[:1024], re.M))
        if b"WIDTH" not in fields or b"HEIGHT" not in fields:
            raise _Broken("PAM header without WIDTH and HEIGHT")
        return int(fields[b"WIDTH"]), int(fields[b"HEIGHT"])
    if kind not in (b"1", b"2", b"3", b"4", b"5", b"6"):
        raise _Broken(f"unknown PNM kind P{kind.decode('latin-1')}")
    values, pos = [], 2
    for _ in range(2 if kind in (b"1", b"4") else 3):  # width, height (and maxval)
        token = _PNM_TOKEN.match(data, pos)
        if token is None or not token[1].isdigit() or len(token[1]) > 12:
            raise _Broken("a header value is not a number")
        values.append(int(token[1]))
        pos = token.end()
    width, height = values[:2]
    if kind in (b"4", b"5", b"6"):  # binary: one whitespace, then exactly this many bytes
        channels = 3 if kind == b"6" else 1
        sample = 2 if kind != b"4" and values[2] > 255 else 1
        row = (width + 7) // 8 if kind == b"4" else width * channels * sample
        if pos + 1 + row * height > len(data):
            raise _Broken("truncated: the pixels run past the end of the file")
    return width, height


def _tiff(data: bytes) -> tuple[int, int]:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", data, 4)
    (count,) = struct.unpack_from(order + "H", data, ifd)
    found: dict[int, int] = {}
    for i in range(count):
        tag, kind, n = struct.unpack_from(order + "HHI", data, ifd + 2 + 12 * i)
        if tag in (256, 257) and n == 1:
            if kind == 3:  # SHORT, left-justified in the value field
                (found[tag],) = struct.unpack_from(order + "H", data, ifd + 10 + 12 * i)
            elif kind == 4:  # LONG
                (found[tag],) = struct.unpack_from(order + "I", data, ifd + 10 + 12 * i)
    if 256 not in found or 257 not in found:
        raise _Broken("the first IFD has no ImageWidth/ImageLength")
    return found[256], found[257]


def _webp(data: bytes) -> tuple[int, int]:
    if data[8:12] != b"WEBP":
        raise _Broken("a RIFF file that is not WebP")
    (riff_size,) = struct.unpack_from("<I", data, 4)
    if 8 + riff_size > len(data):
        raise _Broken("truncated: shorter than its RIFF header says")
    chunk = data[12:16]
    if chunk == b"VP8X":  # extended: the canvas size, 24-bit minus one
        b = data[24:30]
        if len(b) < 6:
            raise _Broken("VP8X chunk cut short")
        return 1 + int.from_bytes(b[:3], "little"), 1 + int.from_bytes(b[3:], "little")
    if chunk == b"VP8 ":  # lossy: a key frame's start code, then 14-bit sizes
        if data[23:26] != b"\x9d\x01\x2a":
            raise _Broken("VP8 chunk without a key frame start code")
        width, height = struct.unpack_from("<HH", data, 26)
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: signature 0x2f, then 14-bit sizes minus one
        if data[20:21] != b"\x2f":
            raise _Broken("VP8L chunk without its signature")
        (bits,) = struct.unpack_from("<I", data, 21)
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    raise _Broken(f"unknown WebP chunk {chunk!r}")


_PARSERS = (
    (b"\xff\xd8\xff", "JPEG", _jpeg),
    (b"\x89PNG\r\n\x1a\n", "PNG", _png),
    (b"BM", "BMP", _bmp),
    (b"II*\x00", "TIFF", _tiff),
    (b"MM\x00*", "TIFF", _tiff),
    (b"RIFF", "WebP", _webp),
    *((b"P" + bytes([k]), "PNM", _pnm) for k in b"1234567"),
)


# --- arrays and PIL images ---------------------------------------------------------------------


def _from_array(image: np.ndarray, color: str) -> np.ndarray:
    if image.ndim >= 2:
        check_size(int(image.shape[1]), int(image.shape[0]), f"the {image.shape} array")
    from sdk import detect

    if color == "rgb" and image.ndim == 3 and image.shape[-1] in (3, 4):
        image = image[..., 2::-1]  # RGB(A) -> BGR, alpha dropped (as_bgr drops it too)
    try:
        return detect.as_bgr(image)
    except (TypeError, ValueError) as e:
        raise InvalidImageError(str(e)) from e


def _from_pil(image: Any) -> np.ndarray:
    width, height = image.size  # from the header: a lazily opened file is not decoded yet
    check_size(int(width), int(height), f"the PIL image ({image.mode})")
    try:
        if image.mode == "L":
            return _from_array(np.asarray(image), "bgr")
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return _from_array(np.asarray(rgb), "rgb")
    except InvalidImageError:
        raise
    except Exception as e:  # PIL decodes lazily here: a truncated or corrupt file fails in its own ways
        raise InvalidImageError(f"the PIL image ({image.mode}) cannot be read: {e}") from e


# --- video ---------------------------------------------------------------------------------------


def check_video_size(capture: Any, source: str = "the video") -> tuple[int, int]:
    """(width, height) of an opened ``cv2.VideoCapture``; InvalidImageError when its frames would
    exceed MAX_PIXELS. Call it before the first ``read()``. (0, 0) when the container does not
    say: each frame is then checked as it comes (:func:`load_image` on the array)."""
    import cv2

    width = capture.get(cv2.CAP_PROP_FRAME_WIDTH)
    height = capture.get(cv2.CAP_PROP_FRAME_HEIGHT)
    if not (width > 0 and height > 0):  # unknown (0) or NaN
        return 0, 0
    check_size(int(width), int(height), f"{source}'s frames")
    return int(width), int(height)


def video_frames(path: str | os.PathLike, every: int = 1) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) of every ``every``-th frame of a video file, its size checked before
    the first frame is decoded; InvalidImageError when it cannot be opened or is too large."""
    import cv2

    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise InvalidArgumentError(f"every must be an int >= 1, got {every!r}")
    name = os.fspath(path)
    if not Path(name).is_file():
        raise InvalidImageError(f"no such video file: {name}")
    video = cv2.VideoCapture(name)
    try:
        if not video.isOpened():
            raise InvalidImageError(f"cannot open video {name}")
        check_video_size(video, name)
        index = 0
        while True:
            try:
                ok, frame = video.read()
            except cv2.error as e:
                raise InvalidImageError(f"{name}: frame {index} cannot be decoded: {e}") from e
            if not ok:
                return
            if index % every == 0:
                yield index, _from_array(frame, "bgr")
            index += 1
    finally:
        video.release()
