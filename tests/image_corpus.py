"""Image files made by the tests, and the outcome each one must have.

`CORPUS` holds the odd and hostile inputs a matting service meets: files that are no images,
truncated files, decompression bombs, and unusual but valid images (16-bit, CMYK, palettes with
transparency, animations, EXIF rotations, extreme sizes). Each item states what decoding it must
give: the exact upright RGBA pixels (computed here from the source values, never by decoding), or
the typed error. The helpers also build files Pillow will not write (hand-made PNG chunks).
"""

from __future__ import annotations

import io
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

from toonq.shared.errors import (
    ImageTooLargeError,
    InvalidImageError,
    ToonqError,
    UnsupportedFormatError,
)
from toonq.shared.settings import Settings

#: The worker's default pixel limit (TOONQ_MAX_IMAGE_PIXELS), which the corpus is judged against.
MAX_PIXELS = Settings().max_image_pixels
EXIF_ORIENTATION = 0x0112

Pixels = npt.NDArray[np.uint8]


# --- Building files -------------------------------------------------------------------------------


def save(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def chunk(kind: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, payload, CRC."""
    crc = zlib.crc32(kind + payload)
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", crc)


def png(
    width: int,
    height: int,
    *,
    bit_depth: int = 8,
    color_type: int = 2,
    rows: list[bytes] | None = None,
    extra: bytes = b"",
) -> bytes:
    """A hand-made PNG (for what Pillow will not write); `rows=None` leaves out the pixel data."""
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra
    if rows is not None:
        body += chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows)))
    return body + chunk(b"IEND", b"")


def many_scans_jpeg(image: Image.Image, repeats: int) -> bytes:
    """A progressive JPEG of `image` whose scans (with the tables before each) are repeated
    `repeats` times: libjpeg decodes it (with warnings), one pass over the image per scan."""
    data = save(image, "JPEG", progressive=True)
    first_scan = data.index(b"\xff\xda")  # SOS: 0xFF 0xDA never occurs in entropy-coded data
    return data[:first_scan] + data[first_scan:-2] * repeats + data[-2:]


def black_grey_png(width: int, height: int) -> bytes:
    """A complete, valid 8-bit grey PNG of zeros: a few hundred KB that decode to width × height
    bytes. Compressed row by row, so that building it never holds the decoded size."""
    compressor = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the samples
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    return png(width, height, color_type=0, extra=chunk(b"IDAT", data))


def exif_block(orientation: int, *extra_entries: bytes) -> bytes:
    """An EXIF block as JPEG's APP1 holds it (PNG's eXIf takes it too): a little-endian TIFF
    header with one IFD, the orientation, then `extra_entries`."""
    entries = [ifd_entry(EXIF_ORIENTATION, 3, 1, struct.pack("<HH", orientation, 0))]
    entries += extra_entries
    return (
        b"Exif\x00\x00II*\x00"
        + struct.pack("<IH", 8, len(entries))
        + b"".join(sorted(entries))
        + struct.pack("<I", 0)
    )


def ifd_entry(tag: int, kind: int, count: int, value: bytes) -> bytes:
    return struct.pack("<HHI", tag, kind, count) + value


def noise(height: int, width: int, channels: int, *, seed: int = 0) -> Pixels:
    return np.random.default_rng(seed).integers(0, 256, (height, width, channels), dtype=np.uint8)


def opaque(rgb: Pixels) -> Pixels:
    return np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])


def grey(values: Pixels, alpha: Pixels | int = 255) -> Pixels:
    rgba = np.empty((*values.shape, 4), np.uint8)
    rgba[..., :3] = values[..., None]
    rgba[..., 3] = alpha
    return rgba


# --- The corpus -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decoded:
    """The upright RGBA pixels an item decodes to, within `tolerance` levels (lossy formats)."""

    pixels: Pixels
    tolerance: int = 0

    @property
    def size(self) -> tuple[int, int]:
        height, width = self.pixels.shape[:2]
        return width, height


@dataclass(frozen=True)
class Item:
    name: str
    data: bytes
    expected: Decoded | type[ToonqError]


def _not_images() -> list[Item]:
    html = b"<!DOCTYPE html>\n<html><head><title>404</title></head><body>Not Found</body></html>"
    svg = b'<svg xmlns="http://www.w3.org/2000/svg" width="9" height="9"><circle r="4"/></svg>'
    return [
        Item("empty.png", b"", InvalidImageError),
        Item("notes.png", b"eggs, milk, flour\n" * 20, UnsupportedFormatError),
        Item("page.png", html, UnsupportedFormatError),
        Item("drawing.png", svg, UnsupportedFormatError),
        Item("document.png", b"%PDF-1.7\n1 0 obj <<>> endobj\n%%EOF\n", UnsupportedFormatError),
        Item("noise.png", noise(1, 4096, 1, seed=1).tobytes(), UnsupportedFormatError),
    ]


def _broken_images() -> list[Item]:
    picture = Image.fromarray(noise(64, 64, 3))
    items = [
        Item(f"truncated.{ext}", (data := save(picture, fmt))[: len(data) // 2], InvalidImageError)
        for fmt, ext in (("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp"))
    ]
    # A TIFF whose StripOffsets tag is a FLOAT: Pillow itself fails on it with a TypeError.
    tiff = bytearray(save(Image.new("RGB", (3, 2)), "TIFF"))
    at = tiff.index(struct.pack("<HH", 273, 4))
    tiff[at + 2 : at + 4] = struct.pack("<H", 11)
    items += [
        Item("zero-width.png", png(0, 5, rows=[]), InvalidImageError),
        Item("float-strip-offset.tif", bytes(tiff), InvalidImageError),
        # A header declaring 10^10 pixels, then the first compressed rows of the "image".
        Item(
            "bomb-100000x100000.png",
            png(100_000, 100_000, color_type=0, rows=[bytes(100_000)] * 4),
            ImageTooLargeError,
        ),
        # Complete and valid, under Pillow's own bomb limit, over toonq's.
        Item("bomb-8000x7000.png", black_grey_png(8000, 7000), ImageTooLargeError),
        # 200 scans, each a pass over the image: bounded work per decode.
        Item("scans-200.jpg", many_scans_jpeg(picture, 20), InvalidImageError),
    ]
    return items


def _deep_and_odd_modes() -> list[Item]:
    # 16-bit grey is scaled with rounding (v / 257), not clipped: 32768 -> 128, 128 -> 0.
    sixteen = np.array([[0, 257, 65535, 32768, 128, 129, 40000, 1000]], np.uint16)
    grey16 = png(8, 1, bit_depth=16, color_type=0, rows=[sixteen.astype(">u2").tobytes()])
    # 16-bit RGB keeps each sample's high byte (Pillow's decoder), never more than 1 level from
    # the rounded value.
    rgb16 = np.random.default_rng(3).integers(0, 65536, (3, 5, 3), dtype=np.uint16)
    rgb16_png = png(
        5, 3, bit_depth=16, color_type=2, rows=[row.astype(">u2").tobytes() for row in rgb16]
    )
    # CMYK: R = (255 - C)(255 - K) / 255, and so on, without colour management.
    cmyk = noise(4, 6, 4, seed=4)
    ink = (255 - cmyk[..., :3].astype(float)) * (255 - cmyk[..., 3:].astype(float)) / 255
    cmyk_jpeg = Image.new("CMYK", (16, 8), (0, 255, 255, 0))  # red on the left
    cmyk_jpeg.paste((0, 0, 0, 0), (8, 0, 16, 8))  # no ink on the right: white
    red_white = np.zeros((8, 16, 4), np.uint8)
    red_white[:, :8] = (255, 0, 0, 255)
    red_white[:, 8:] = 255
    # Palette + tRNS shorter than the palette: the entries it leaves out are opaque.
    palette = bytes([255, 0, 0, 0, 255, 0, 0, 0, 255])
    indexed = png(
        3,
        2,
        color_type=3,
        rows=[bytes([0, 1, 2]), bytes([2, 1, 0])],
        extra=chunk(b"PLTE", palette) + chunk(b"tRNS", bytes([0, 128])),
    )
    red, green, blue = [255, 0, 0, 0], [0, 255, 0, 128], [0, 0, 255, 255]
    grey_alpha = noise(5, 4, 2, seed=5)
    return [
        Item(
            "sixteen-bit-grey.png", grey16, Decoded(grey(np.round(sixteen / 257).astype(np.uint8)))
        ),
        Item("sixteen-bit-rgb.png", rgb16_png, Decoded(opaque((rgb16 >> 8).astype(np.uint8)))),
        Item(
            "cmyk.tif",
            save(Image.frombytes("CMYK", (6, 4), cmyk.tobytes()), "TIFF"),
            Decoded(opaque(np.round(ink).astype(np.uint8)), tolerance=1),
        ),
        Item("cmyk.jpg", save(cmyk_jpeg, "JPEG", quality=100), Decoded(red_white, tolerance=3)),
        Item(
            "palette-transparency.png",
            indexed,
            Decoded(np.array([[red, green, blue], [blue, green, red]], np.uint8)),
        ),
        Item(
            "grey-alpha.png",
            save(Image.fromarray(grey_alpha, "LA"), "PNG"),
            Decoded(grey(grey_alpha[..., 0], grey_alpha[..., 1])),
        ),
    ]


def _animations() -> list[Item]:
    palette = [255, 0, 0, 0, 0, 255, 0, 255, 0]
    first, second = Image.new("P", (4, 2), 0), Image.new("P", (4, 2), 1)
    for frame in (first, second):
        frame.putpalette(palette)
    first.putpixel((1, 1), 2)  # the transparent index
    gif = save(first, "GIF", save_all=True, append_images=[second], transparency=2, duration=50)
    expected = np.full((2, 4, 4), [255, 0, 0, 255], np.uint8)
    expected[1, 1] = [0, 255, 0, 0]
    webp_first = noise(6, 5, 4, seed=6)
    webp = save(
        Image.fromarray(webp_first),
        "WEBP",
        save_all=True,
        append_images=[Image.new("RGBA", (5, 6), (0, 0, 255, 255))],
        lossless=True,
        exact=True,
    )
    return [
        Item("animated.gif", gif, Decoded(expected)),
        Item("animated.webp", webp, Decoded(webp_first)),
    ]


def _orientations_and_sizes() -> list[Item]:
    # Stored 32 wide, 16 high, red left and blue right; orientation 6 means "turn 90° clockwise
    # to show": upright it is 16 wide, 32 high, red on top. 4:4:4 so that colours stay flat.
    halves = Image.new("RGB", (32, 16), (255, 0, 0))
    halves.paste((0, 0, 255), (16, 0, 32, 16))
    upright = np.zeros((32, 16, 4), np.uint8)
    upright[:16] = (255, 0, 0, 255)
    upright[16:] = (0, 0, 255, 255)
    jpeg = save(halves, "JPEG", quality=95, subsampling=0, exif=exif_block(6))
    stored = noise(3, 5, 4, seed=7)
    # An EXIF block with a tag of the wrong type (XResolution as text): still readable.
    malformed = exif_block(6, ifd_entry(0x011A, 2, 4, b"abc\x00"))
    wide = noise(2, 20_000, 3, seed=8)
    progressive = save(halves, "JPEG", quality=95, subsampling=0, progressive=True)
    stored_halves = np.zeros((16, 32, 4), np.uint8)
    stored_halves[:, :16] = (255, 0, 0, 255)
    stored_halves[:, 16:] = (0, 0, 255, 255)
    return [
        Item("exif-rotated.jpg", jpeg, Decoded(upright, tolerance=4)),
        Item("progressive.jpg", progressive, Decoded(stored_halves, tolerance=4)),
        Item(
            "exif-rotated.png",
            save(Image.fromarray(stored), "PNG", exif=exif_block(8)),
            Decoded(np.rot90(stored, 1)),
        ),
        Item(
            "malformed-exif.png",
            save(Image.fromarray(stored), "PNG", exif=malformed),
            Decoded(np.rot90(stored, -1)),
        ),
        Item(
            "one-pixel.png",
            save(Image.new("RGBA", (1, 1), (9, 8, 7, 200)), "PNG"),
            Decoded(np.array([[[9, 8, 7, 200]]], np.uint8)),
        ),
        Item("wide-20000x2.png", save(Image.fromarray(wide), "PNG"), Decoded(opaque(wide))),
        Item(
            "tall-2x20000.png",
            save(Image.fromarray(wide.transpose(1, 0, 2).copy()), "PNG"),
            Decoded(opaque(wide.transpose(1, 0, 2))),
        ),
    ]


CORPUS: list[Item] = [
    *_not_images(),
    *_broken_images(),
    *_deep_and_odd_modes(),
    *_animations(),
    *_orientations_and_sizes(),
]


def corpus_item(name: str) -> Item:
    (item,) = (item for item in CORPUS if item.name == name)
    return item
