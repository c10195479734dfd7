"""The frames of a GIF, APNG or animated WebP, and each one's duration, read from the headers.

Each walker reads the container's block or chunk headers only, no pixel data, so that an
animation's frame count and running time are checked against the limits before any frame is
decoded. A walker stops at the first header it cannot read: a truncated file lists the frames
whose headers are complete (their pixel data may still be cut short).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

_GIF_EXTENSION: Final = 0x21
_GIF_IMAGE: Final = 0x2C
_GIF_GRAPHIC_CONTROL: Final = 0xF9
_PNG_SIGNATURE_SIZE: Final = 8
_RIFF_HEADER_SIZE: Final = 12
#: VP8X flags: the file holds an animation (ANIM and ANMF chunks).
_WEBP_ANIMATION_FLAG: Final = 0x02


@dataclass(frozen=True)
class FrameHeaders:
    """What the headers say of an animation's frames."""

    durations_ms: list[int]
    #: APNG only: the IDAT image is a default image shown by viewers without APNG support, not
    #: a frame of the animation (Pillow numbers it frame 0).
    has_default_image: bool = False


def may_be_animated(data: bytes) -> bool:
    """False where `data` is a still by its first bytes alone: a PNG whose chunks before its
    image data hold no acTL, a WebP without the VP8X animation flag, and every format without
    animation. True leaves the verdict to `read_frame_headers`. No parse: what every job asks
    first, most of them of a still."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        position = _PNG_SIGNATURE_SIZE
        while position + 8 <= len(data):
            length, kind = struct.unpack_from(">I4s", data, position)
            if kind == b"acTL":
                return True
            if kind in (b"IDAT", b"IEND"):
                return False
            position += 12 + length  # length, type, data, CRC
        return False
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return data[12:16] == b"VP8X" and len(data) > 20 and bool(data[20] & _WEBP_ANIMATION_FLAG)
    return data.startswith((b"GIF87a", b"GIF89a"))


def read_frame_headers(image_format: str | None, data: bytes) -> FrameHeaders:
    """The frames of `data`, a file of Pillow's `image_format`; none for a format without
    animation (or a PNG without an acTL chunk)."""
    if image_format == "GIF":
        return FrameHeaders(_gif_durations(data))
    if image_format == "PNG":
        return _apng_frames(data)
    if image_format == "WEBP":
        return FrameHeaders(_webp_durations(data))
    return FrameHeaders([])


def _gif_durations(data: bytes) -> list[int]:
    """GIF89a: a Graphic Control Extension before an image descriptor holds its delay in
    centiseconds; a frame without one has none."""
    if len(data) < 13:
        return []
    position = 13 + _gif_colour_table_size(data[10])
    durations: list[int] = []
    delay_ms = 0
    while position < len(data):
        introducer = data[position]
        if introducer == _GIF_EXTENSION and position + 2 <= len(data):
            label, block = data[position + 1], position + 2
            if label == _GIF_GRAPHIC_CONTROL and block + 4 < len(data) and data[block] >= 4:
                delay_ms = int.from_bytes(data[block + 2 : block + 4], "little") * 10
            position = _skip_gif_sub_blocks(data, block)
        elif introducer == _GIF_IMAGE and position + 10 <= len(data):
            # descriptor (10 bytes), local colour table, LZW code size, then the pixel data
            position += 10 + _gif_colour_table_size(data[position + 9]) + 1
            if position > len(data):
                break
            durations.append(delay_ms)
            delay_ms = 0
            position = _skip_gif_sub_blocks(data, position)
        else:  # the trailer, or bytes that are not a block
            break
    return durations


def _gif_colour_table_size(packed: int) -> int:
    return 3 << ((packed & 0x07) + 1) if packed & 0x80 else 0


def _skip_gif_sub_blocks(data: bytes, position: int) -> int:
    while position < len(data):
        size = data[position]
        position += 1 + size
        if size == 0:
            return position
    return len(data)


def _apng_frames(data: bytes) -> FrameHeaders:
    """APNG: acTL declares the frames, each fcTL starts one with its delay as a fraction of a
    second (a zero denominator means 1/100). An IDAT before the first fcTL is a default image."""
    frames_declared: int | None = None
    durations: list[int] = []
    has_default_image = False
    position = _PNG_SIGNATURE_SIZE
    while position + 8 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, position)
        body = position + 8
        if body + length > len(data) or kind == b"IEND":
            break
        if kind == b"acTL" and length >= 8:
            frames_declared = int.from_bytes(data[body : body + 4], "big")
        elif kind == b"IDAT" and not durations:
            has_default_image = frames_declared is not None
        elif kind == b"fcTL" and length >= 26:
            numerator, denominator = struct.unpack_from(">HH", data, body + 20)
            durations.append(round(numerator * 1000 / (denominator or 100)))
        position = body + length + 4  # data, then the CRC
    if frames_declared is None:
        return FrameHeaders([])
    return FrameHeaders(durations[:frames_declared], has_default_image=has_default_image)


def _webp_durations(data: bytes) -> list[int]:
    """Animated WebP: each ANMF chunk is a frame, its duration in milliseconds at bytes 12..14
    of the chunk's data (after its offset and size)."""
    durations: list[int] = []
    position = _RIFF_HEADER_SIZE
    while position + 8 <= len(data):
        kind = data[position : position + 4]
        size = int.from_bytes(data[position + 4 : position + 8], "little")
        body = position + 8
        if kind == b"ANMF" and size >= 16 and body + 16 <= len(data):
            durations.append(int.from_bytes(data[body + 12 : body + 15], "little"))
        position = body + size + (size & 1)  # chunks are padded to an even size
    return durations
