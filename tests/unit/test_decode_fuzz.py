"""Property-based tests of the decode path: whatever the bytes, `decode_image` returns an 8-bit
RGBA image within the pixel limit or raises one of the typed image errors, and it does so quickly.

Inputs are valid files of every allowed format (and of some animated, 16-bit and EXIF variants)
with bytes overwritten, inserted or cut off, plus raw bytes and PNG headers of any size.
Derandomized and with no example database, so every CI run tries the same inputs.
"""

from __future__ import annotations

import struct
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from tests.image_corpus import CORPUS, chunk, exif_block, noise, png, save
from toonq.shared.errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError
from toonq.worker.engine.decode import decode_image, image_to_array

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning"),  # Pillow on malformed metadata
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]

MAX_PIXELS = 100_000
TYPED_ERRORS = (InvalidImageError, UnsupportedFormatError, ImageTooLargeError)
FUZZ = settings(
    max_examples=200,
    deadline=timedelta(seconds=2),
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


def _valid_files() -> list[bytes]:
    picture = Image.fromarray(noise(12, 16, 3, seed=11))
    with_alpha = Image.fromarray(noise(12, 16, 4, seed=12))
    second = Image.new("RGB", (16, 12), (0, 0, 255))
    exif = exif_block(6)
    return [
        save(picture, "PNG"),
        save(with_alpha, "PNG", exif=exif),
        save(picture, "JPEG", exif=exif),
        save(picture, "JPEG", progressive=True),
        save(with_alpha, "WEBP", lossless=True),
        save(picture, "WEBP", save_all=True, append_images=[second]),
        save(picture, "GIF", save_all=True, append_images=[second]),
        save(picture, "BMP"),
        save(picture, "TIFF", compression="tiff_lzw", exif=exif),
        save(picture.convert("CMYK"), "TIFF", compression="tiff_deflate"),
        save(picture.convert("1"), "TIFF", compression="group4"),
        save(picture.convert("P"), "BMP"),
    ]


VALID_FILES = _valid_files()
SEEDS = VALID_FILES + [item.data for item in CORPUS if item.data and len(item.data) < 4096]


@st.composite
def mutated_files(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(0, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["overwrite", "insert", "cut", "field", "tag type"]))
        if kind == "overwrite":
            data[at : at + 1] = draw(st.binary(min_size=1, max_size=1))
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "cut":
            del data[at:]
        elif kind == "field":
            # A length, offset or size field set to an extreme value.
            extreme = draw(st.sampled_from([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
            data[at : at + 4] = struct.pack(draw(st.sampled_from(["<I", ">I"])), extreme)
        else:
            # A TIFF/EXIF field type (BYTE, ASCII, SHORT... DOUBLE): values of unexpected types.
            data[at : at + 2] = struct.pack(
                draw(st.sampled_from(["<H", ">H"])), draw(st.integers(1, 12))
            )
    return bytes(data)


def _outcome(data: bytes) -> type[Exception] | None:
    """The typed error that decoding `data` raises, or None after checking the image."""
    try:
        image = decode_image(data, max_pixels=MAX_PIXELS)
    except TYPED_ERRORS as exc:
        return type(exc)
    _check_image(image)
    return None


def _check_image(image: Image.Image) -> None:
    assert image.mode == "RGBA"
    width, height = image.size
    assert 1 <= width * height <= MAX_PIXELS
    assert image_to_array(image).shape == (height, width, 4)


@pytest.mark.timeout(300)
@FUZZ
@given(mutated_files())
def test_mutated_files_decode_or_raise_a_typed_error(data: bytes) -> None:
    assert _outcome(data) in (None, *TYPED_ERRORS)


@pytest.mark.timeout(120)
@FUZZ
@given(st.binary(max_size=512))
def test_arbitrary_bytes_decode_or_raise_a_typed_error(data: bytes) -> None:
    assert _outcome(data) in (None, *TYPED_ERRORS)


SIDES = st.one_of(st.integers(0, 512), st.integers(0, 2**31 - 1))
#: (bit depth, colour type) pairs that the PNG specification allows.
PNG_MODES = [(1, 0), (8, 0), (16, 0), (8, 2), (16, 2), (8, 3), (8, 4), (8, 6), (16, 6)]


@pytest.mark.timeout(120)
@FUZZ
@given(
    width=SIDES,
    height=SIDES,
    mode=st.sampled_from([*PNG_MODES, (3, 5), (16, 3)]),
)
def test_png_headers_of_any_size(width: int, height: int, mode: tuple[int, int]) -> None:
    # A header, then two short rows: the pixel limit is judged from the header alone.
    bit_depth, colour_type = mode
    palette = chunk(b"PLTE", bytes(range(6))) if colour_type == 3 else b""
    rows = [bytes(8)] * 2
    data = png(width, height, bit_depth=bit_depth, color_type=colour_type, rows=rows, extra=palette)
    outcome = _outcome(data)
    if mode not in PNG_MODES or width == 0 or height == 0:
        assert outcome is InvalidImageError
    elif width * height > MAX_PIXELS:
        assert outcome is ImageTooLargeError
    else:  # decoded, or too few rows for the size
        assert outcome in (None, InvalidImageError)


def test_the_valid_files_decode() -> None:
    # The mutations start from valid files: a broken one would only test the error paths.
    for data in VALID_FILES:
        _check_image(decode_image(data, max_pixels=MAX_PIXELS))
