"""Bounded fuzzing of what the SDK reads from outside: image files, gallery files, model metadata.

Random mutations (bit flips, truncations, insertions, overwritten runs) of real small files must
give either a valid result or the SDK's documented error, never another exception:

* image files (JPEG, progressive JPEG, PNG, BMP, PGM, TIFF, WebP made from a real LFW face)
  through ``sdk.images.load_image``: a BGR uint8 frame or InvalidImageError;
* a real small gallery file through ``sdk.gallery.Gallery``: a gallery that answers (identities,
  count, search) or GalleryError / ModelMismatchError;
* model metadata (dicts of strings around a valid one) through ``sdk.embed.parse_metadata``:
  a valid (input_size, dim) or ValueError.

The CI run is bounded (well under 60 s in all). A deeper run raises every test's number of
examples::

    FACESDK_FUZZ_EXAMPLES=100000 PYTHONPATH=. python -m pytest -q -p no:cacheprovider tests/test_fuzz.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sdk.embed import REQUIRED_KEYS, parse_metadata
from sdk.errors import GalleryError, InvalidImageError
from sdk.gallery import Gallery
from sdk.images import MAX_PIXELS, decode_image, load_image

DEEP = int(os.environ.get("FACESDK_FUZZ_EXAMPLES", "0"))


def examples(ci: int) -> settings:
    return settings(
        max_examples=DEEP or ci,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        database=None,  # no .hypothesis folder in the tree
    )


# One mutation: (kind, where in the file as a fraction, a byte value, a length).
MUTATION = st.tuples(
    st.sampled_from(["flip", "truncate", "insert", "overwrite", "delete"]),
    st.floats(0, 1, allow_nan=False),
    st.integers(0, 255),
    st.integers(1, 64),
)


def mutate(data: bytes, mutations: list[tuple[str, float, int, int]]) -> bytes:
    out = bytearray(data)
    for kind, where, value, length in mutations:
        at = min(int(where * len(out)), max(len(out) - 1, 0))
        if kind == "flip" and out:
            out[at] ^= 1 << (value % 8)
        elif kind == "truncate":
            del out[at:]
        elif kind == "insert":
            out[at:at] = bytes([value]) * length
        elif kind == "overwrite":
            out[at : at + length] = bytes([value]) * min(length, len(out) - at)
        elif kind == "delete":
            del out[at : at + length]
    return bytes(out)


# --- images --------------------------------------------------------------------------------------

FORMATS = {
    "jpg": (".jpg", []),
    "progressive": (".jpg", [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]),
    "png": (".png", []),
    "bmp": (".bmp", []),
    "pgm": (".pgm", []),
    "tif": (".tif", []),
    "webp": (".webp", []),
}


@pytest.fixture(scope="module")
def seeds(data: Path) -> dict[str, bytes]:
    """Small real encodings of one LFW face (small: each example decodes one)."""
    path = data / "lfw" / "images_deepfunneled" / "Colin_Powell" / "Colin_Powell_0001.jpg"
    if not path.is_file():
        pytest.skip(f"LFW not found under {data}")
    face = cv2.resize(cv2.imread(str(path)), (40, 32), interpolation=cv2.INTER_AREA)
    out = {}
    for name, (ext, params) in FORMATS.items():
        image = cv2.cvtColor(face, cv2.COLOR_BGR2GRAY) if ext == ".pgm" else face
        out[name] = cv2.imencode(ext, image, params)[1].tobytes()
    return out


def valid_frame(frame: np.ndarray) -> bool:
    return (
        isinstance(frame, np.ndarray) and frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
        and frame.flags.c_contiguous and 0 < frame.shape[0] * frame.shape[1] <= MAX_PIXELS
    )  # fmt: skip


@examples(ci=3000)
@given(name=st.sampled_from(sorted(FORMATS)), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_images_decode_or_raise_invalid_image(seeds: dict[str, bytes], name: str, mutations) -> None:
    data = mutate(seeds[name], mutations)
    try:
        frame = decode_image(data)
    except InvalidImageError as e:
        event(f"{name}: refused" + (", truncated" if "truncated" in str(e) else ""))
        return
    event(f"{name}: decoded")
    assert valid_frame(frame)


@examples(ci=300)
@given(name=st.sampled_from(sorted(FORMATS)), mutations=st.lists(MUTATION, min_size=1, max_size=4))
def test_mutated_image_files_load_or_raise_invalid_image(
    seeds: dict[str, bytes], tmp_path_factory: pytest.TempPathFactory, name: str, mutations
) -> None:
    path = tmp_path_factory.getbasetemp() / f"fuzz{FORMATS[name][0]}"
    path.write_bytes(mutate(seeds[name], mutations))
    try:
        frame = load_image(path)
    except InvalidImageError:
        return
    assert valid_frame(frame)


@examples(ci=1000)
@given(st.binary(max_size=256))
def test_random_bytes_raise_invalid_image(data: bytes) -> None:
    try:
        frame = decode_image(data)
    except InvalidImageError:
        return
    assert valid_frame(frame)


# --- gallery files -------------------------------------------------------------------------------

MODEL = {"model_name": "fuzz", "model_version": "1", "dim": 8}


@pytest.fixture(scope="module")
def gallery_seed(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real small gallery file: two identities, five faces, written by the SDK."""
    path = tmp_path_factory.mktemp("gallery_seed") / "seed.sqlite"
    rng = np.random.default_rng(0)
    with Gallery(path, **MODEL) as g:
        g.add("alice", rng.normal(size=(3, 8)), sources=["a1.jpg", "a2.jpg", None])
        g.add("bob", rng.normal(size=(2, 8)), sigma_sq=rng.uniform(0.1, 1, (2, 8)), quality=[1.0, 2.0])
    return path.read_bytes()


@examples(ci=800)
@given(mutations=st.lists(MUTATION, min_size=1, max_size=3))
def test_mutated_galleries_open_or_raise_gallery_error(
    gallery_seed: bytes, tmp_path_factory: pytest.TempPathFactory, mutations
) -> None:
    folder = tmp_path_factory.getbasetemp() / "fuzz_gallery"
    shutil.rmtree(folder, ignore_errors=True)  # also the -wal / -shm files of the last example
    folder.mkdir()
    path = folder / "g.sqlite"
    path.write_bytes(mutate(gallery_seed, mutations))
    try:
        g = Gallery(path, **MODEL)
    except GalleryError as e:  # ModelMismatchError is one
        event(f"refused: {type(e).__name__}")
        return
    event("opened")
    with g:
        try:  # an opened gallery answers, or says GalleryError (a page that quick_check missed)
            names = g.identities()
            assert all(isinstance(n, str) for n in names)
            assert g.count() >= 0
            found, dist = g.search(np.ones((1, 8)), k=2)
            assert len(found) == 1 and dist.shape == (1, 2)
            for name in names:
                assert g.embeddings(name).vectors.shape[1] == 8
        except GalleryError:
            pass


# --- model metadata ------------------------------------------------------------------------------

VALID_METADATA = {
    "model_name": "dlib_resnet_v1", "model_version": "1", "input_size": "150x150", "input_layout": "NHWC",
    "input_color": "RGB", "chip_scheme": "dlib5_150_0.25", "embedding_dim": "128", "embedding_normalized": "1",
    "distance": "squared_l2", "source": "fuzz", "threshold": "0.19", "uncertainty": "sigma_sq",
}  # fmt: skip
assert set(REQUIRED_KEYS) <= set(VALID_METADATA)

TEXT = st.one_of(st.text(max_size=20), st.from_regex(r"[0-9x_.a-z-]{0,12}", fullmatch=True))


@st.composite
def metadata(draw) -> dict[str, str]:
    """A valid dict with some values replaced by random text, some keys dropped, some added."""
    out = {}
    for key, value in VALID_METADATA.items():
        choice = draw(st.sampled_from(["keep"] * 8 + ["replace", "drop"]))
        if choice == "keep":
            out[key] = value
        elif choice == "replace":
            out[key] = draw(TEXT)
    out.update(draw(st.dictionaries(TEXT, TEXT, max_size=3)))
    return out


@examples(ci=2000)
@given(meta=st.one_of(metadata(), st.dictionaries(TEXT, TEXT, max_size=12)))
def test_metadata_parses_or_raises_value_error(meta: dict[str, str]) -> None:
    try:
        (height, width), dim = parse_metadata(meta, "fuzz.onnx")
    except ValueError:
        event("refused")
        return
    event("parsed")
    assert height == width >= 1 and dim >= 1


def test_the_valid_metadata_parses() -> None:
    assert parse_metadata(VALID_METADATA, "fuzz.onnx") == ((150, 150), 128)
