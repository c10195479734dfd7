"""Counting the scans of a JPEG before decoding it.

A progressive JPEG is a series of scans, and libjpeg runs over the image's coefficients for
every one: a file of a few kilobytes with thousands of tiny scans costs thousands of passes over
the whole image, and neither libjpeg-turbo's defaults nor Pillow set a limit. Encoders write 10
or so (libjpeg's standard progression), mozjpeg's scan optimisation a few more, so a limit far
above that refuses only crafted files. The walk reads marker headers and skips entropy-coded
data with `bytes.find`: cheap next to the decode it guards.
"""

from __future__ import annotations

from typing import Final

#: Scans a JPEG may have: ten times what encoders write.
MAX_JPEG_SCANS: Final = 100

_SOI: Final = 0xD8
_EOI: Final = 0xD9
_SOS: Final = 0xDA
#: Markers without a length: restart markers (RST0-7), TEM and SOI.
_STANDALONE: Final = frozenset({*range(0xD0, 0xD8), 0x01, _SOI})


def count_jpeg_scans(data: bytes, *, stop_after: int) -> int:
    """The number of scans (SOS segments) of the JPEG `data`'s first image, counting no further
    than `stop_after + 1`. A truncated or malformed stream gives the scans found before the
    damage: the decoder gives the verdict on the rest."""
    scans = 0
    position = 2  # after SOI
    while scans <= stop_after:
        position = _next_marker(data, position)
        if position < 0:
            return scans
        marker = data[position + 1]
        if marker == _EOI:
            return scans
        if marker in _STANDALONE:
            position += 2
            continue
        if position + 4 > len(data):
            return scans
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        position += 2 + length
        if marker == _SOS:
            scans += 1
    return scans


def _next_marker(data: bytes, position: int) -> int:
    """Where the next marker (0xFF, then a byte other than 0x00 or 0xFF) starts at or after
    `position`, skipping entropy-coded data; -1 at the end of the data."""
    while True:
        position = data.find(b"\xff", position)
        if position < 0 or position + 1 >= len(data):
            return -1
        following = data[position + 1]
        if following not in (0x00, 0xFF):
            return position
        # 0xFF00 is a stuffed data byte; 0xFFFF is fill before a marker.
        position += 1 if following == 0xFF else 2
