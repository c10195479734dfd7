"""Decode untrusted image bytes into one 8-bit RGBA image.

Every input ends up in the same shape (mode "RGBA", 8 bits per channel, EXIF orientation applied,
first frame of an animation) so the rest of the pipeline handles a single case. Failures raise the
job error taxonomy: `InvalidImageError` (empty, corrupt, truncated, zero-size),
`UnsupportedFormatError` (not one of `ALLOWED_FORMATS`) and `ImageTooLargeError` (pixel limit).
A JPEG of more than `MAX_JPEG_SCANS` scans is an `InvalidImageError` before any decode work.

Pillow identifies every input and reads its header. The most common input, a PNG of plain 8-bit
RGB or RGBA pixels, is then decoded by libpng through imagecodecs when it is installed: the same
pixels, into a NumPy array, for less CPU than Pillow's decoder and its copy out of Pillow's
memory. Whatever libpng refuses, and every other image, Pillow decodes.
"""

from __future__ import annotations

import io
import struct
from typing import Final

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, UnidentifiedImageError

from toonq.shared.errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError
from toonq.worker.engine.jpeg_scans import MAX_JPEG_SCANS, count_jpeg_scans

try:
    import imagecodecs
except ImportError:  # an optional speed-up: Pillow decodes the same pixels
    imagecodecs = None  # type: ignore[assignment]

#: Pillow format names tried, in this order. Restricting them keeps Pillow's other parsers
#: (EPS runs Ghostscript, PSD, ...) away from untrusted data.
ALLOWED_FORMATS: Final = ("PNG", "JPEG", "WEBP", "GIF", "BMP", "TIFF")

# Leading bytes of the allowed formats (WebP, a RIFF container, is checked apart). They tell a
# supported file that Pillow cannot read (invalid_image) from data of another kind
# (unsupported_format), which Pillow reports with the same exception.
_SIGNATURES: Final = (
    ("PNG", (b"\x89PNG\r\n\x1a\n",)),
    ("JPEG", (b"\xff\xd8\xff",)),
    ("GIF", (b"GIF87a", b"GIF89a")),
    ("BMP", (b"BM",)),
    ("TIFF", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")),  # classic and BigTIFF
)

# Single-channel modes deeper than 8 bits, which Pillow's own convert() clips instead of scaling.
_DEEP_GRAY_MODES: Final = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})

#: EXIF orientation -> the transpose that shows the stored pixels upright (EXIF 2.32, tag 0x0112).
_UPRIGHT: Final = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_JPEG_SIGNATURE: Final = b"\xff\xd8"
#: IHDR (bit depth, colour type) of the PNGs libpng decodes here: 8-bit RGB and RGBA.
_PLAIN_PNG_PIXELS: Final = frozenset({(8, 2), (8, 6)})
#: Chunks that change what Pillow makes of the pixels: tRNS (a colour that becomes transparent),
#: APNG's frames, and EXIF, which may hold an orientation.
_PNG_CHUNKS_FOR_PILLOW: Final = frozenset({b"tRNS", b"acTL", b"fcTL", b"fdAT", b"eXIf"})
_PNG_TEXT_CHUNKS: Final = frozenset({b"tEXt", b"zTXt", b"iTXt"})
#: Text keywords that Pillow reads an orientation from (EXIF or XMP metadata).
_PNG_METADATA_KEYWORDS: Final = frozenset(
    {b"exif", b"Raw profile type exif", b"XML:com.adobe.xmp", b"xmp"}
)


def decode_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """Decode `data` (PNG, JPEG, WebP, GIF, BMP or TIFF) into a new 8-bit "RGBA" image.

    The pixel count is checked against `max_pixels` from the header, before any pixel data is
    decoded. Pillow's own bomb threshold (`PIL.Image.MAX_IMAGE_PIXELS`) counts as a limit too,
    so the effective limit is the smaller of the two; either way the error is one
    `ImageTooLargeError` naming that limit, and no `DecompressionBombWarning` is raised.
    The EXIF orientation (or the XMP `tiff:Orientation`, or the TIFF tag) is applied, so width
    and height are those of the upright image; an orientation outside 1..8 counts as 1.
    Animations (GIF, APNG, WebP) and multi-page TIFFs give their first frame.

    Mode conversions: tRNS transparency (palette entries, or one grey or RGB colour) becomes
    alpha; 16-bit grey ("I;16*", and "I" taken as 16-bit) is scaled with rounding,
    0..65535 -> 0..255; float "F" is taken as 0..1; 16-bit RGB(A) PNGs keep the high byte of each
    sample (done by Pillow's decoder); CMYK is converted without colour management.
    """
    decoded = _decode(data, max_pixels)
    return Image.fromarray(decoded) if isinstance(decoded, np.ndarray) else decoded


def decode_pixels(data: bytes, *, max_pixels: int) -> npt.NDArray[np.uint8]:
    """What `decode_image` decodes, as a new writable H×W×4 uint8 array."""
    decoded = _decode(data, max_pixels)
    return decoded if isinstance(decoded, np.ndarray) else image_to_array(decoded)


def image_size(data: bytes, *, max_pixels: int) -> tuple[int, int]:
    """(width, height) as stored, from the header alone, after the checks `decode_image` makes
    before it decodes (and with the same errors): what a caller sizes memory by. The EXIF
    orientation may swap them; the pixel count is the same."""
    return open_image(data, max_pixels=max_pixels).size


def image_to_array(image: Image.Image) -> npt.NDArray[np.uint8]:
    """Pixels of an "RGBA" image as a writable H×W×4 uint8 array (a copy, so `torch.from_numpy`
    can share it: NumPy's view of a Pillow image is read-only)."""
    if image.mode != "RGBA":
        raise ValueError(f"expected an RGBA image, got mode {image.mode!r}")
    return np.array(image, dtype=np.uint8)


def _decode(data: bytes, max_pixels: int) -> Image.Image | npt.NDArray[np.uint8]:
    """The upright 8-bit RGBA pixels of `data`: an H×W×4 array from libpng, or a Pillow image."""
    image = open_image(data, max_pixels=max_pixels)
    if imagecodecs is not None and _is_plain_png(data):
        try:
            return _rgba_array(imagecodecs.png_decode(data))
        except MemoryError:
            raise
        except Exception:
            pass  # libpng refused these bytes: Pillow's decoder gives the verdict on them
    try:
        image.load()
        return to_rgba(_upright(image))
    except MemoryError:
        raise  # the machine's state, not the data's: the job is retried
    except Exception as exc:
        # Pillow's parsers raise many types on malformed data (OSError, SyntaxError, ValueError,
        # EOFError, struct.error, TypeError from a TIFF tag of the wrong type...): all of them
        # mean that these bytes are not a decodable image.
        raise InvalidImageError(f"the {image.format} image is corrupt or truncated: {exc}") from exc


def open_image(data: bytes, *, max_pixels: int) -> Image.Image:
    """`data` opened by Pillow, header read, pixel count (and a JPEG's scans) checked, nothing
    decoded yet: the checks `decode_image` makes before it decodes, with the same errors."""
    if not data:
        raise InvalidImageError("the image data is empty (0 bytes)")
    limit = pixel_limit(max_pixels)
    image = _open(data, limit)
    _check_pixel_count(image.size, limit)
    _check_jpeg_scans(data)
    return image


def _is_plain_png(data: bytes) -> bool:
    """Whether `data` is a PNG whose pixels, as Pillow shows them, are its 8-bit RGB(A) samples
    as stored: not interlaced, and without a chunk that makes Pillow change them. Walks the
    chunk headers only; chunks it cannot walk are left to Pillow."""
    if not data.startswith(_PNG_SIGNATURE) or data[12:16] != b"IHDR" or len(data) < 33:
        return False
    bit_depth, colour_type, interlace = data[24], data[25], data[28]
    if (bit_depth, colour_type) not in _PLAIN_PNG_PIXELS or interlace:
        return False
    position = len(_PNG_SIGNATURE)
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        if kind in _PNG_CHUNKS_FOR_PILLOW:
            return False
        if kind in _PNG_TEXT_CHUNKS:
            keyword = data[position + 8 : position + 8 + min(length, 80)].split(b"\0", 1)[0]
            if keyword in _PNG_METADATA_KEYWORDS:
                return False
        if kind == b"IEND":
            return True
        position += 12 + length  # length, type, data, CRC
    return False


def _rgba_array(pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """H×W×4 from libpng's H×W×4 (RGBA) or H×W×3 (RGB, made opaque)."""
    if pixels.shape[-1] == 4:
        return pixels
    rgba = np.empty((*pixels.shape[:2], 4), dtype=np.uint8)
    rgba[..., :3] = pixels
    rgba[..., 3] = 255
    return rgba


def _open(data: bytes, limit: int) -> Image.Image:
    """Identify the format and read the header only (Pillow decodes lazily)."""
    try:
        return _read_header(data)
    except Image.DecompressionBombError as exc:
        # A format's own check of what its header promises beyond the image's size (a GIF
        # frame larger than its canvas), at twice Pillow's threshold.
        raise ImageTooLargeError(
            f"the image has more pixels than the limit of {limit} pixels"
        ) from exc
    except MemoryError:
        raise
    except Exception as exc:  # UnidentifiedImageError, or a parser error (see decode_image)
        kind = _sniff_format(data)
        if kind is None:
            raise UnsupportedFormatError(
                "the data is not a PNG, JPEG, WebP, GIF, BMP or TIFF image"
            ) from exc
        # Pillow refuses headers with a zero width or height here as well.
        raise InvalidImageError(
            f"the {kind} image cannot be read: its header is corrupt or truncated, "
            "or it has a zero width or height"
        ) from exc


def _read_header(data: bytes) -> Image.Image:
    """What `Image.open(..., formats=ALLOWED_FORMATS)` does, less its decompression-bomb check:
    that check refuses at a threshold of Pillow's own (twice MAX_IMAGE_PIXELS) with a text of
    its own, and below it emits a `DecompressionBombWarning` that cannot be silenced per call
    (the warning filters are process-wide and not thread-safe). `_check_pixel_count` applies
    the limit instead, to the size read here."""
    Image.init()  # registers the formats' openers; at once after the first call
    stream = io.BytesIO(data)
    for name in ALLOWED_FORMATS:
        factory, accept = Image.OPEN[name]
        accepted = accept is None or accept(data[:16])
        if isinstance(accepted, str) or not accepted:  # a string: recognised but unsupported
            continue
        stream.seek(0)
        try:
            return factory(stream, "")
        except (SyntaxError, IndexError, TypeError, struct.error):
            continue  # what Image.open takes for "not this format"
    raise UnidentifiedImageError("cannot identify the image data")


def _sniff_format(data: bytes) -> str | None:
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    for name, magics in _SIGNATURES:
        if data.startswith(magics):
            return name
    return None


def pixel_limit(max_pixels: int) -> int:
    """The pixel limit applied: `max_pixels`, or Pillow's bomb threshold where it is smaller."""
    # Pillow only *warns* between MAX_IMAGE_PIXELS and twice that; here its threshold refuses.
    pillow_limit = Image.MAX_IMAGE_PIXELS
    return max_pixels if pillow_limit is None else min(max_pixels, pillow_limit)


def _check_pixel_count(size: tuple[int, int], limit: int) -> None:
    width, height = size
    if width * height > limit:
        raise ImageTooLargeError(
            f"the image is {width}x{height} = {width * height} pixels, "
            f"over the limit of {limit} pixels"
        )


def _check_jpeg_scans(data: bytes) -> None:
    # Each scan is a pass over the whole image: bound the decode's work, not only its size.
    if data.startswith(_JPEG_SIGNATURE):
        scans = count_jpeg_scans(data, stop_after=MAX_JPEG_SCANS)
        if scans > MAX_JPEG_SCANS:
            raise InvalidImageError(
                f"the JPEG image has more than {MAX_JPEG_SCANS} scans: "
                "refused, as decoding each is a pass over the whole image"
            )


def _upright(image: Image.Image) -> Image.Image:
    method = upright_transpose(image)
    return image if method is None else image.transpose(method)


def upright_transpose(image: Image.Image) -> Image.Transpose | None:
    """The transpose that shows `image` upright (from its EXIF, XMP or TIFF orientation), or
    None where it is upright already or its orientation is outside 1..8."""
    # Only the orientation is read: Pillow's ImageOps.exif_transpose also rewrites the EXIF
    # block, which raises TypeError on some malformed (but readable) tags.
    orientation = image.getexif().get(ExifTags.Base.Orientation)
    return _UPRIGHT.get(orientation) if isinstance(orientation, int) else None


def to_rgba(image: Image.Image) -> Image.Image:
    """`image` in mode "RGBA", 8 bits per channel, with the conversions `decode_image` makes."""
    if image.mode == "RGBA":
        return image
    if image.mode in _DEEP_GRAY_MODES:
        return _deep_gray_to_rgba(image)
    if image.mode == "La":
        # Premultiplied grey + alpha (TIFF): Pillow converts it only to straight "LA".
        image = image.convert("LA")
    # Pillow turns tRNS transparency (palette entries, or one grey/RGB colour) into alpha.
    return image.convert("RGBA")


def _deep_gray_to_rgba(image: Image.Image) -> Image.Image:
    raw = np.asarray(image)  # uint16 of either byte order, int32 or float32
    if image.mode == "F":
        gray = np.rint(np.clip(raw, 0.0, 1.0) * 255.0).astype(np.uint8)
    else:
        # round(v * 255 / 65535) in integers; v / 257 is never exactly halfway, so no tie rule.
        wide = np.clip(raw, 0, 65535).astype(np.uint32)
        gray = ((wide * 255 + 32767) // 65535).astype(np.uint8)
    rgba = np.empty((*raw.shape, 4), dtype=np.uint8)
    rgba[..., :3] = gray[..., np.newaxis]
    transparent = image.info.get("transparency")
    # A tRNS grey value marks the samples equal to it, compared at full depth.
    rgba[..., 3] = 255 if transparent is None else np.where(raw == transparent, 0, 255)
    return Image.fromarray(rgba)
