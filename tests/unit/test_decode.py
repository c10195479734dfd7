"""decode_image and decode_pixels: every pixel mode to 8-bit RGBA, EXIF orientation, first
frames, bad inputs, and the same pixels whichever decoder reads a PNG."""

from __future__ import annotations

import io
import struct
import time
import warnings

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from tests.image_corpus import chunk, exif_block, grey, many_scans_jpeg, opaque, png, save
from toonq.shared.errors import (
    ImageTooLargeError,
    InvalidImageError,
    PermanentJobError,
    UnsupportedFormatError,
)
from toonq.worker.engine import decode
from toonq.worker.engine.decode import decode_image, decode_pixels, image_to_array

LIMIT = 10_000_000
RNG = np.random.default_rng(1234)


def _decode(data: bytes, max_pixels: int = LIMIT) -> np.ndarray:
    image = decode_image(data, max_pixels=max_pixels)
    assert image.mode == "RGBA"
    return image_to_array(image)


# --- 8-bit modes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF", "WEBP"])
def test_rgb_becomes_opaque_rgba(fmt):
    rgb = RNG.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    options = {"lossless": True} if fmt == "WEBP" else {}
    assert np.array_equal(_decode(save(Image.fromarray(rgb), fmt, **options)), opaque(rgb))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "WEBP"])
def test_rgba_is_kept(fmt):
    rgba = RNG.integers(0, 256, (5, 7, 4), dtype=np.uint8)
    rgba[0, 0, 3] = 0
    options = {"lossless": True, "exact": True} if fmt == "WEBP" else {}
    assert np.array_equal(_decode(save(Image.fromarray(rgba), fmt, **options)), rgba)


def test_l_and_la():
    gray = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    alpha = RNG.integers(0, 256, (4, 6), dtype=np.uint8)
    assert np.array_equal(_decode(save(Image.fromarray(gray), "PNG")), grey(gray))
    la = Image.fromarray(np.dstack([gray, alpha]), mode="LA")
    assert np.array_equal(_decode(save(la, "PNG")), grey(gray, alpha))


def test_one_bit():
    bits = Image.new("1", (3, 2))
    bits.putpixel((1, 0), 1)
    expected = grey(np.array([[0, 255, 0], [0, 0, 0]], np.uint8))
    assert np.array_equal(_decode(save(bits, "PNG")), expected)


def test_palette_without_transparency():
    image = Image.new("P", (3, 1))
    image.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    image.putdata([2, 0, 1])
    expected = np.array([[[0, 0, 255, 255], [255, 0, 0, 255], [0, 255, 0, 255]]], np.uint8)
    assert np.array_equal(_decode(save(image, "PNG")), expected)


def test_palette_trns_becomes_alpha():
    # tRNS shorter than the palette: the entries it leaves out are opaque.
    palette = chunk(b"PLTE", bytes([255, 0, 0, 0, 255, 0, 0, 0, 255]))
    trns = chunk(b"tRNS", bytes([0, 128]))
    data = png(3, 1, color_type=3, rows=[bytes([0, 1, 2])], extra=palette + trns)
    expected = np.array([[[255, 0, 0, 0], [0, 255, 0, 128], [0, 0, 255, 255]]], np.uint8)
    assert np.array_equal(_decode(data), expected)


def test_gif_transparent_index():
    image = Image.new("P", (2, 1))
    image.putpalette([10, 20, 30, 40, 50, 60])
    image.putdata([0, 1])
    decoded = _decode(save(image, "GIF", transparency=1))
    assert decoded[0, 0].tolist() == [10, 20, 30, 255]
    assert decoded[0, 1, 3] == 0


def test_grey_and_rgb_trns_colour_becomes_alpha():
    grey = png(3, 1, color_type=0, rows=[bytes([0, 5, 200])], extra=chunk(b"tRNS", b"\x00\x05"))
    assert _decode(grey)[0, :, 3].tolist() == [255, 0, 255]
    rgb_trns = chunk(b"tRNS", struct.pack(">HHH", 4, 5, 6))
    rgb = png(2, 1, color_type=2, rows=[bytes([1, 2, 3, 4, 5, 6])], extra=rgb_trns)
    assert _decode(rgb).tolist() == [[[1, 2, 3, 255], [4, 5, 6, 0]]]


def test_cmyk_jpeg():
    cmyk = Image.new("CMYK", (16, 8), (0, 255, 255, 0))
    cmyk.paste((0, 0, 0, 0), (8, 0, 16, 8))
    decoded = _decode(save(cmyk, "JPEG", quality=100)).astype(int)
    assert np.abs(decoded[:, :8] - [255, 0, 0, 255]).max() <= 3  # C=0 M=Y=100%: red
    assert np.abs(decoded[:, 8:] - [255, 255, 255, 255]).max() <= 3  # no ink: white


def test_cmyk_tiff_exact():
    cmyk = Image.frombytes("CMYK", (3, 1), bytes([0, 255, 255, 0, 0, 0, 0, 255, 64, 0, 0, 0]))
    expected = [[[255, 0, 0, 255], [0, 0, 0, 255], [191, 255, 255, 255]]]
    assert _decode(save(cmyk, "TIFF")).tolist() == expected


def test_cielab_tiff_becomes_srgb():
    # L* on 0..255, signed a* and b*: white, black, L* 50.2 grey (sRGB 119.4), and sRGB red
    # (L* 53.2, a* 80.1, b* 67.2), which Pillow's conversion only approximates.
    samples = bytes([255, 0, 0, 0, 0, 0, 128, 0, 0, 136, 80, 67])
    decoded = _decode(save(Image.frombytes("LAB", (4, 1), samples), "TIFF")).astype(int)
    greys = np.array([[255] * 3, [0] * 3, [119] * 3])
    assert np.abs(decoded[0, :3, :3] - greys).max() <= 1
    assert np.abs(decoded[0, 3, :3] - [255, 0, 0]).max() <= 12
    assert decoded[0, :, 3].tolist() == [255] * 4


def test_premultiplied_grey_alpha_tiff():
    data = bytearray(save(Image.frombytes("LA", (2, 1), bytes([50, 102, 0, 0])), "TIFF"))
    # Flip ExtraSamples from 2 (straight alpha) to 1 (premultiplied): Pillow opens it as "La".
    entry = struct.pack("<HHIH", 338, 3, 1, 2)
    at = data.index(entry)
    data[at : at + len(entry)] = struct.pack("<HHIH", 338, 3, 1, 1)
    assert Image.open(io.BytesIO(bytes(data))).mode == "La"
    assert _decode(bytes(data)).tolist() == [[[125, 125, 125, 102], [0, 0, 0, 0]]]


# --- Deeper than 8 bits ---------------------------------------------------------------------------

# 32768 / 257 = 127.502 and 128 / 257 = 0.498, 129 / 257 = 0.502: rounding, not clipping or >> 8.
SIXTEEN = np.array([[0, 257, 65535, 32768, 128, 129]], np.uint16)
SIXTEEN_TO_8 = np.array([[0, 1, 255, 128, 0, 1]], np.uint8)


def test_sixteen_bit_grey_png_is_scaled():
    image = Image.fromarray(SIXTEEN)
    assert image.mode == "I;16"
    assert np.array_equal(_decode(save(image, "PNG")), grey(SIXTEEN_TO_8))


def test_sixteen_bit_grey_trns_compares_full_depth():
    trns = chunk(b"tRNS", struct.pack(">H", 128))
    data = png(6, 1, bit_depth=16, color_type=0, rows=[SIXTEEN.astype(">u2").tobytes()], extra=trns)
    # 128 and 129 both become 0 and 1 on 8 bits; only the exact 16-bit 128 is transparent.
    assert _decode(data)[0, :, 3].tolist() == [255, 255, 255, 255, 0, 255]


@pytest.mark.parametrize("mode", ["I;16", "I;16B", "I"])
def test_sixteen_bit_grey_tiff(mode):
    image = Image.new(mode, (6, 1))
    image.putdata(SIXTEEN.ravel().tolist())
    assert np.array_equal(_decode(save(image, "TIFF")), grey(SIXTEEN_TO_8))


def test_mode_i_outside_sixteen_bits_is_clipped():
    image = Image.new("I", (2, 1))
    image.putdata([-5, 70000])
    assert _decode(save(image, "TIFF"))[0, :, 0].tolist() == [0, 255]


def test_float_grey_is_taken_as_unit_range():
    image = Image.new("F", (4, 1))
    image.putdata([0.0, 0.25, 1.0, 3.0])
    assert _decode(save(image, "TIFF"))[0, :, 0].tolist() == [0, 64, 255, 255]


def test_sixteen_bit_rgb_and_rgba_png_keep_the_high_byte():
    samples = np.array([[0, 257, 65535, 32768, 511, 256]], np.uint16)
    rgb = png(2, 1, bit_depth=16, color_type=2, rows=[samples.astype(">u2").tobytes()])
    assert _decode(rgb).tolist() == [[[0, 1, 255, 255], [128, 1, 1, 255]]]
    rgba = png(1, 1, bit_depth=16, color_type=6, rows=[samples[:, :4].astype(">u2").tobytes()])
    assert _decode(rgba).tolist() == [[[0, 1, 255, 128]]]


# --- Orientation and animation --------------------------------------------------------------------

UPRIGHT = {  # EXIF orientation -> how the stored pixels must be turned to show upright
    1: lambda a: a,
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.transpose(1, 0, 2),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: a[::-1, ::-1].transpose(1, 0, 2),
    8: lambda a: np.rot90(a, 1),
}


@pytest.mark.parametrize("orientation", sorted(UPRIGHT))
def test_exif_orientation_is_applied(orientation):
    stored = RNG.integers(0, 256, (2, 3, 4), dtype=np.uint8)  # 3 wide, 2 high
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = save(Image.fromarray(stored), "PNG", exif=exif.tobytes())
    assert np.array_equal(_decode(data), UPRIGHT[orientation](stored))


def test_exif_orientation_jpeg_swaps_the_size():
    exif = Image.Exif()
    exif[0x0112] = 6
    data = save(Image.new("RGB", (30, 20)), "JPEG", exif=exif.tobytes())
    assert decode_image(data, max_pixels=LIMIT).size == (20, 30)


@pytest.mark.parametrize("orientation", [0, 9, 65535])
def test_orientation_outside_one_to_eight_leaves_the_pixels_as_stored(orientation):
    stored = RNG.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    data = save(Image.fromarray(stored), "PNG", exif=exif_block(orientation))
    assert np.array_equal(_decode(data), stored)


def test_xmp_orientation_is_applied_without_exif():
    xmp = (
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF></x:xmpmeta>'
    )
    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    stored = RNG.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    data = save(Image.fromarray(stored), "PNG", pnginfo=info)
    assert np.array_equal(_decode(data), np.rot90(stored, -1))


@pytest.mark.parametrize(
    ("fmt", "options"),
    [("GIF", {}), ("PNG", {}), ("WEBP", {"lossless": True})],
    ids=["gif", "apng", "webp"],
)
def test_animation_gives_the_first_frame(fmt, options):
    first, second = Image.new("RGB", (4, 4), (255, 0, 0)), Image.new("RGB", (4, 4), (0, 0, 255))
    data = save(first, fmt, save_all=True, append_images=[second], **options)
    assert getattr(Image.open(io.BytesIO(data)), "n_frames", 1) == 2
    assert np.array_equal(_decode(data), np.full((4, 4, 4), [255, 0, 0, 255], np.uint8))


# --- Bad inputs -----------------------------------------------------------------------------------


def _error(data: bytes, max_pixels: int = LIMIT) -> PermanentJobError:
    with pytest.raises((InvalidImageError, ImageTooLargeError)) as caught:
        decode_image(data, max_pixels=max_pixels)
    return caught.value


def test_empty_data_is_invalid():
    error = _error(b"")
    assert type(error) is InvalidImageError
    assert error.code == "invalid_image"
    assert "empty" in str(error)


@pytest.mark.parametrize(
    "data",
    [
        RNG.integers(0, 256, 1000, dtype=np.uint8).tobytes(),
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",
        save(Image.new("RGB", (4, 4)), "PPM"),  # Pillow reads it, but it is not allowed
        save(Image.new("RGB", (16, 16)), "ICO"),
    ],
    ids=["random", "eps", "ppm", "ico"],
)
def test_unrecognised_data_is_unsupported(data):
    error = _error(data)
    assert isinstance(error, UnsupportedFormatError)
    assert error.code == "unsupported_format"


def _noise(fmt: str) -> bytes:
    return save(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), fmt)


@pytest.mark.filterwarnings("ignore:Corrupt EXIF data")  # Pillow, on the cut TIFF header
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP"])
@pytest.mark.parametrize("keep", [0.5, 30], ids=["half", "header"])
def test_truncated_files_are_invalid(fmt, keep):
    data = _noise(fmt)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep
    error = _error(data[:cut])
    assert type(error) is InvalidImageError
    assert error.code == "invalid_image"


def test_zero_size_is_invalid():
    error = _error(png(0, 5, rows=[]))
    assert type(error) is InvalidImageError
    assert "zero width or height" in str(error)


def test_a_jpeg_with_too_many_scans_is_refused_before_its_decode_work():
    # 2000 scans: before the limit, each one a pass of libjpeg over the whole image.
    data = many_scans_jpeg(Image.fromarray(RNG.integers(0, 256, (256, 256, 3), np.uint8)), 200)
    started = time.perf_counter()
    with pytest.raises(InvalidImageError, match="the JPEG image has more than 100 scans"):
        decode_image(data, max_pixels=LIMIT)
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("repeats", [1, 10])
def test_progressive_jpegs_up_to_the_scan_limit_decode(repeats):
    # Pillow writes 10 scans for a colour image: 10 and 100.
    rgb = np.full((8, 8, 3), (10, 200, 30), np.uint8)
    data = many_scans_jpeg(Image.fromarray(rgb), repeats)
    assert np.abs(_decode(data).astype(int) - opaque(rgb).astype(int)).max() <= 4


def test_pixel_limit_checked_from_the_header_alone():
    # No pixel data at all: decoding it would fail as truncated (invalid_image), not too large.
    header_only = png(5000, 5000)
    error = _error(header_only, max_pixels=1_000_000)
    assert isinstance(error, ImageTooLargeError)
    assert error.code == "image_too_large"
    assert "5000x5000" in str(error)


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (100_000, 100_000),  # over twice Pillow's MAX_IMAGE_PIXELS, where Pillow refuses
        (10_000, 10_000),  # over Pillow's MAX_IMAGE_PIXELS, where Pillow warns
        (8_000, 8_000),  # under both of Pillow's thresholds
    ],
)
def test_too_many_pixels_is_one_error_with_the_configured_limit(width: int, height: int) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = _error(png(width, height), max_pixels=50_000_000)

    assert isinstance(error, ImageTooLargeError)
    assert str(error) == (
        f"the image is {width}x{height} = {width * height} pixels, "
        "over the limit of 50000000 pixels"
    )


def test_pillow_bomb_threshold_is_a_limit_too(monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        error = _error(save(Image.new("RGB", (11, 10)), "PNG"), max_pixels=LIMIT)
    assert isinstance(error, ImageTooLargeError)
    assert str(error).endswith("over the limit of 100 pixels")


def test_pixel_limit_is_inclusive():
    data = save(Image.new("RGB", (100, 50)), "PNG")
    assert decode_image(data, max_pixels=5000).size == (100, 50)
    assert isinstance(_error(data, max_pixels=4999), ImageTooLargeError)


# --- Plain PNGs: libpng when imagecodecs is installed, the same pixels as Pillow ----------------

IEND = chunk(b"IEND", b"")


def _with_chunk_after_the_pixels(data: bytes, kind: bytes, payload: bytes) -> bytes:
    assert data.endswith(IEND)
    return data[: -len(IEND)] + chunk(kind, payload) + IEND


def _pillow_pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGBA"))


@pytest.mark.parametrize("channels", [3, 4], ids=["rgb", "rgba"])
@pytest.mark.parametrize("imagecodecs", [True, False], ids=["imagecodecs", "pillow-only"])
def test_plain_png_pixels_are_pillows(monkeypatch, channels, imagecodecs):
    if not imagecodecs:
        monkeypatch.setattr(decode, "imagecodecs", None)  # as where the package is not installed
    stored = RNG.integers(0, 256, (9, 7, channels), dtype=np.uint8)
    # Ancillary chunks that change no pixel, before and after the image data.
    data = _with_chunk_after_the_pixels(
        save(Image.fromarray(stored), "PNG", optimize=True, dpi=(72, 72)),
        b"tEXt",
        b"parameters\x00a prompt",
    )
    pixels = decode_pixels(data, max_pixels=LIMIT)
    assert pixels.flags.writeable
    assert np.array_equal(pixels, _pillow_pixels(data))
    assert np.array_equal(_decode(data), pixels)


@pytest.mark.parametrize(
    ("kind", "payload"),
    [
        (b"eXIf", exif_block(6)[6:]),  # the chunk holds the TIFF block without "Exif\0\0"
        (
            b"iTXt",
            b"XML:com.adobe.xmp\x00\x00\x00\x00\x00"
            b'<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
            b'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
            b'xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="6"/></rdf:RDF>'
            b"</x:xmpmeta>",
        ),
    ],
    ids=["exif", "xmp"],
)
def test_an_orientation_after_the_pixels_is_applied(kind, payload):
    stored = RNG.integers(0, 256, (2, 3, 4), dtype=np.uint8)
    data = _with_chunk_after_the_pixels(save(Image.fromarray(stored), "PNG"), kind, payload)
    assert np.array_equal(decode_pixels(data, max_pixels=LIMIT), np.rot90(stored, -1))


def test_a_png_that_libpng_refuses_gets_pillows_verdict():
    # A wrong image data checksum: libpng refuses the file, Pillow does not check it.
    stored = RNG.integers(0, 256, (4, 5, 4), dtype=np.uint8)
    data = bytearray(save(Image.fromarray(stored), "PNG"))
    at = data.index(b"IDAT")
    data[at + 4 + struct.unpack(">I", data[at - 4 : at])[0]] ^= 0xFF
    assert np.array_equal(decode_pixels(bytes(data), max_pixels=LIMIT), stored)


def test_image_to_array_is_a_writable_copy():
    image = Image.new("RGBA", (3, 2), (1, 2, 3, 4))
    array = image_to_array(image)
    assert array.shape == (2, 3, 4)
    assert array.dtype == np.uint8
    assert array.flags.writeable
    with pytest.raises(ValueError, match="RGBA"):
        image_to_array(Image.new("RGB", (3, 2)))
