"""Encode animations: APNG, animated WebP and VP9 WebM with alpha, each frame kept as given.

Frames are H×W×4 uint8 RGBA arrays of one size, each shown for its duration in milliseconds.
`loop` is the number of plays in all, 0 for ever: APNG's `num_plays` and WebP's loop count
both mean that.

APNG and WebP are assembled here from one still image per frame rather than by Pillow's
animation writers, which merge identical consecutive frames (adding their durations): a
caller that asks for N frames gets exactly N, each with its duration. Every frame replaces
the canvas' pixels where it is drawn rather than blending over them: a whole frame in WebP,
the rectangle that changed in APNG.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator, Mapping, Sequence
from fractions import Fraction
from itertools import pairwise
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import numpy.typing as npt
from PIL import Image

from toonq.worker.engine.encode import encode_rgba_pixels

if TYPE_CHECKING:
    from av.container import OutputContainer
    from av.packet import Packet

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
#: The chunks of a frame's PNG that the animation's header shares (a palette and its alpha).
_PNG_SHARED_CHUNKS: Final = (b"PLTE", b"tRNS")
#: fcTL's operations: leave the canvas as it is after a frame; replace the canvas' pixels
#: (alpha included) with the frame's rather than compositing over them.
_APNG_DISPOSE_NONE: Final = 0
_APNG_BLEND_SOURCE: Final = 0
#: fcTL stores a delay as a fraction of two uint16s.
_UINT16_MAX: Final = 0xFFFF

#: WebP's frame chunks that carry pixels (the others are metadata of the still it came from).
_WEBP_IMAGE_CHUNKS: Final = (b"ALPH", b"VP8 ", b"VP8L")
_WEBP_VP8X_ANIMATION: Final = 0x02
_WEBP_VP8X_ALPHA: Final = 0x10
#: ANMF flags: no blending (a frame replaces the canvas), no disposal.
_WEBP_ANMF_NO_BLEND: Final = 0x02
#: ANMF stores sizes and durations in 24 bits.
_UINT24_MAX: Final = 0xFFFFFF

#: WebM timestamps in milliseconds, so that each frame keeps its own duration.
_WEBM_TIME_BASE: Final = Fraction(1, 1000)
#: libvpx's fastest good-quality speed: `cpu-used` 0-8, higher is faster for slightly larger
#: files at one crf; 6 is several times faster than the default for stickers.
_VP9_CPU_USED: Final = 6


def encode_apng(
    frames: Sequence[npt.NDArray[np.uint8]],
    durations_ms: Sequence[int],
    loop: int,
    *,
    compress_level: int = 1,
    colours: int | None = None,
) -> bytes:
    """An APNG of `frames`, each shown for its duration, played `loop` times (0: for ever).

    Lossless by default. With `colours`, every frame is quantised to one shared palette of at
    most that many RGBA colours (2-256): much smaller files, lossy. Each frame after the first
    stores only the rectangle that differs from the frame before (a frame like its
    predecessor, one pixel), which replaces those pixels of the canvas.
    """
    check_animation(frames, durations_ms, loop)
    delays = [_apng_delay(duration) for duration in durations_ms]
    if colours is None:
        regions = _changed_regions(frames)
        pngs = [
            encode_rgba_pixels(
                frame[top:bottom, left:right], fmt="png", png_compress_level=compress_level
            )
            for frame, (left, top, right, bottom) in zip(frames, regions, strict=True)
        ]
    else:
        images = quantise(frames, colours)
        regions = _changed_regions([np.asarray(image) for image in images])
        pngs = [
            _save(image.crop(region), "PNG", compress_level=compress_level)
            for image, region in zip(images, regions, strict=True)
        ]
    header = dict(_png_chunks(pngs[0]))
    parts = [_PNG_SIGNATURE, _png_chunk(b"IHDR", header[b"IHDR"])]
    parts.append(_png_chunk(b"acTL", struct.pack(">II", len(frames), loop)))
    parts.extend(_png_chunk(kind, header[kind]) for kind in _PNG_SHARED_CHUNKS if kind in header)
    sequence = 0
    for index, (png, (left, top, right, bottom), (numerator, denominator)) in enumerate(
        zip(pngs, regions, delays, strict=True)
    ):
        control = struct.pack(
            ">IIIIIHHBB",
            sequence,
            right - left,
            bottom - top,
            left,
            top,
            numerator,
            denominator,
            _APNG_DISPOSE_NONE,
            _APNG_BLEND_SOURCE,
        )
        parts.append(_png_chunk(b"fcTL", control))
        sequence += 1
        for kind, data in _png_chunks(png):
            if kind != b"IDAT":
                continue
            if index == 0:  # the first frame is also the default image non-APNG readers show
                parts.append(_png_chunk(b"IDAT", data))
            else:
                parts.append(_png_chunk(b"fdAT", struct.pack(">I", sequence) + data))
                sequence += 1
    parts.append(_png_chunk(b"IEND", b""))
    return b"".join(parts)


def quantise(frames: Sequence[npt.NDArray[np.uint8]], colours: int) -> list[Image.Image]:
    """`frames` as palette images sharing one palette of at most `colours` RGBA colours.

    The frames are quantised together, stacked into one image, so that every colour of the
    animation competes for the same palette (APNG frames cannot have palettes of their own).
    """
    if not 2 <= colours <= 256:
        raise ValueError(f"a palette holds 2 to 256 colours, got {colours}")
    height, width = frames[0].shape[:2]
    stacked = Image.fromarray(np.concatenate(frames, axis=0))
    palette_image = stacked.quantize(colours, method=Image.Quantize.FASTOCTREE)
    return [
        palette_image.crop((0, top, width, top + height))
        for top in range(0, height * len(frames), height)
    ]


def encode_animated_webp(
    frames: Sequence[npt.NDArray[np.uint8]],
    durations_ms: Sequence[int],
    loop: int,
    *,
    lossless: bool = True,
    quality: int = 0,
    method: int = 0,
) -> bytes:
    """An animated WebP of `frames`, each shown for its duration, played `loop` times
    (0: for ever).

    Lossless (with `exact`: visible pixels are stored as given) by default, where `quality` is
    the effort; lossy with `lossless=False`, where it is the quality (0-100). `method` trades
    speed (0) for size (6).
    """
    check_animation(frames, durations_ms, loop)
    if loop > _UINT16_MAX:
        raise ValueError(f"WebP stores at most {_UINT16_MAX} plays, got {loop}")
    if max(durations_ms) > _UINT24_MAX:
        raise ValueError(f"WebP stores durations up to {_UINT24_MAX} ms, got {max(durations_ms)}")
    height, width = frames[0].shape[:2]
    header = (
        struct.pack("<B3x", _WEBP_VP8X_ANIMATION | _WEBP_VP8X_ALPHA)
        + _uint24(width - 1)
        + _uint24(height - 1)
    )
    chunks = [
        _riff_chunk(b"VP8X", header),
        _riff_chunk(b"ANIM", struct.pack("<4BH", 0, 0, 0, 0, loop)),
    ]
    for frame, duration in zip(frames, durations_ms, strict=True):
        still = encode_webp_still(frame, lossless=lossless, quality=quality, method=method)
        placement = (
            _uint24(0) + _uint24(0) + _uint24(width - 1) + _uint24(height - 1) + _uint24(duration)
        )
        image = b"".join(
            _riff_chunk(kind, data)
            for kind, data in _riff_chunks(still)
            if kind in _WEBP_IMAGE_CHUNKS
        )
        chunks.append(_riff_chunk(b"ANMF", placement + bytes([_WEBP_ANMF_NO_BLEND]) + image))
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def encode_webp_still(
    pixels: npt.NDArray[np.uint8], *, lossless: bool = True, quality: int = 0, method: int = 0
) -> bytes:
    """One RGBA WebP image: lossless with `exact`, or lossy at `quality` (0-100) with a
    lossless alpha."""
    return _save(
        Image.fromarray(pixels),
        "WEBP",
        lossless=lossless,
        quality=quality,
        method=method,
        exact=lossless,
    )


def encode_webm(
    frames: Sequence[npt.NDArray[np.uint8]],
    durations_ms: Sequence[int],
    *,
    crf: int = 30,
    bitrate: int | None = None,
) -> bytes:
    """A VP9 WebM with alpha (yuva420p) of `frames`, each shown for its duration, without audio.

    Quality is constant (`crf`, 0-63, higher is smaller) or, with `bitrate` (bits per second),
    aimed at that average (libvpx's VBR: content it cannot bring down to the bitrate at its
    coarsest quantiser overshoots). Timestamps are in milliseconds, so frames may have durations
    of their own. 4:2:0 needs even sides: an odd width or height gets one more column or row,
    transparent, on the right or the bottom.
    """
    import av  # the worker's dependency for video only

    check_animation(frames, durations_ms, 0)
    if min(durations_ms) < 1:  # a frame of its own needs a timestamp of its own
        raise ValueError(f"each WebM frame lasts at least 1 ms, got {min(durations_ms)}")
    if not 0 <= crf <= 63:
        raise ValueError(f"the VP9 crf must be in 0..63, got {crf}")
    height, width = frames[0].shape[:2]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="webm") as container:
        # The nominal rate, which rate control and readers' frame rate go by, is the average.
        average_rate = Fraction(1000 * len(frames), sum(durations_ms))
        stream = container.add_stream("libvpx-vp9", rate=average_rate)
        stream.width = width + width % 2
        stream.height = height + height % 2
        stream.pix_fmt = "yuva420p"
        stream.time_base = _WEBM_TIME_BASE
        stream.codec_context.time_base = _WEBM_TIME_BASE
        options: dict[str, object] = {
            "cpu-used": str(_VP9_CPU_USED),
            "row-mt": "1",
            "auto-alt-ref": "0",
        }
        if bitrate is None:
            options |= {"crf": str(crf), "b": "0"}
        else:
            stream.bit_rate = bitrate
        stream.options = options
        # The encoder gives every packet the stream rate's duration: each is given its
        # frame's, found by its timestamp (VP9 here has no reordering or hidden frames).
        duration_at: dict[int, int] = {}
        start = 0
        for frame, duration in zip(frames, durations_ms, strict=True):
            video_frame = av.VideoFrame.from_ndarray(_even_sides(frame), format="rgba")
            video_frame.pts = start
            video_frame.time_base = _WEBM_TIME_BASE
            duration_at[start] = duration
            _mux(container, stream.encode(video_frame), duration_at)
            start += duration
        _mux(container, stream.encode(None), duration_at)
    return buffer.getvalue()


def _mux(
    container: OutputContainer, packets: Sequence[Packet[Any]], duration_at: Mapping[int, int]
) -> None:
    for packet in packets:
        if packet.pts is not None:
            packet.duration = duration_at[packet.pts]
        container.mux(packet)


def _changed_regions(
    frames: Sequence[npt.NDArray[np.uint8]],
) -> list[tuple[int, int, int, int]]:
    """Each frame's (left, top, right, bottom) rectangle that differs from the frame before:
    the first frame whole, a frame like its predecessor one pixel (a frame cannot be empty)."""
    height, width = frames[0].shape[:2]
    regions = [(0, 0, width, height)]
    for previous, frame in pairwise(frames):
        differs = previous != frame
        if differs.ndim == 3:
            differs = differs.any(axis=2)
        rows = np.flatnonzero(differs.any(axis=1))
        columns = np.flatnonzero(differs.any(axis=0))
        if rows.size:
            regions.append((int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1))
        else:
            regions.append((0, 0, 1, 1))
    return regions


def _even_sides(frame: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    height, width = frame.shape[:2]
    if not (height % 2 or width % 2):
        return frame
    return np.pad(frame, ((0, height % 2), (0, width % 2), (0, 0)))


def check_animation(
    frames: Sequence[npt.NDArray[np.uint8]], durations_ms: Sequence[int], loop: int
) -> None:
    """ValueError unless `frames` are one or more H×W×4 uint8 arrays of one size, each with a
    duration of 0 ms or more, played `loop` (0 or more) times."""
    if not frames:
        raise ValueError("an animation needs at least one frame")
    if len(durations_ms) != len(frames):
        raise ValueError(f"{len(frames)} frames but {len(durations_ms)} durations")
    shape = frames[0].shape
    if len(shape) != 3 or shape[2] != 4:
        raise ValueError(f"frames must be H×W×4 RGBA, got shape {shape}")
    for frame in frames:
        if frame.dtype != np.uint8 or frame.shape != shape:
            raise ValueError(
                f"frames must all be uint8 of one size, {shape}, got {frame.dtype} {frame.shape}"
            )
    if min(durations_ms) < 0:
        raise ValueError(f"a frame's duration is 0 ms or more, got {min(durations_ms)}")
    if loop < 0:
        raise ValueError(f"loop is a number of plays, 0 for ever, got {loop}")


def _apng_delay(duration_ms: int) -> tuple[int, int]:
    """`duration_ms` as fcTL's delay fraction of seconds, exactly."""
    for denominator in (1000, 100, 10, 1):
        numerator, remainder = divmod(duration_ms * denominator, 1000)
        if not remainder and numerator <= _UINT16_MAX:
            return numerator, denominator
    raise ValueError(f"APNG cannot store a frame of {duration_ms} ms exactly")


def _png_chunks(png: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = len(_PNG_SIGNATURE)
    while position < len(png):
        (length,) = struct.unpack_from(">I", png, position)
        yield png[position + 4 : position + 8], png[position + 8 : position + 8 + length]
        position += 12 + length  # length, type, data, CRC


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _riff_chunks(webp: bytes) -> Iterator[tuple[bytes, bytes]]:
    position = 12  # RIFF, size, WEBP
    while position < len(webp):
        kind = webp[position : position + 4]
        (length,) = struct.unpack_from("<I", webp, position + 4)
        yield kind, webp[position + 8 : position + 8 + length]
        position += 8 + length + length % 2


def _riff_chunk(kind: bytes, data: bytes) -> bytes:
    return kind + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _uint24(value: int) -> bytes:
    return value.to_bytes(3, "little")


def _save(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()
