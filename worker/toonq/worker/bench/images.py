"""Cut-outs to time the codecs and the processing on, as the engine produces them.

The engine's output keeps the input's colours everywhere, background included, and puts the mask
in alpha, so a sample is a whole picture plus a subject mask: an anime character drawn over an
anime background with the character's hard-edged alpha, or a photo-like picture (smooth
multi-scale texture plus sensor noise, which compresses far worse) with a soft-edged subject.
"""

from __future__ import annotations

import io
import math
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw, ImageFilter

from toonq.worker.samples import anime_sample

Kind = Literal["anime", "photo"]
KINDS: Final[tuple[Kind, ...]] = ("anime", "photo")

#: Standard deviation of the photo-like sample's per-pixel noise, in grey levels.
_SENSOR_NOISE: Final = 3.0
#: How far the animated character sways and bobs, as shares of the width and the height.
_SWAY: Final = 0.08
_BOB: Final = 0.02


def solid_png(side: int) -> bytes:
    """A `side`×`side` opaque PNG of one colour: an input that costs nothing to process."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (200, 120, 60, 255)).save(buffer, "PNG")
    return buffer.getvalue()


def cutout(kind: Kind, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """An H×W×4 uint8 cut-out of `kind` and `size` (width, height); deterministic."""
    return _anime(size) if kind == "anime" else _photo(size)


def moving_cutouts(count: int, size: tuple[int, int]) -> list[npt.NDArray[np.uint8]]:
    """`count` frames of an animation as the engine produces them, each an H×W×4 uint8 anime
    cut-out of `size` (width, height): the character of `cutout("anime", size)` sways and bobs
    over its unmoving background, one loop over the frames, so that no frame repeats the one
    before (encoders would merge them). Deterministic."""
    character = anime_sample(seed=3, size=size, transparent=True)
    background = _anime_background(size)
    width, height = size
    frames = []
    for index in range(count):
        turn = 2 * math.pi * index / count
        offset = (round(_SWAY * width * math.sin(turn)), round(_BOB * height * math.sin(2 * turn)))
        moved = Image.new("RGBA", size)
        moved.paste(character, offset)
        frames.append(_over(np.asarray(moved), background))
    return frames


def _anime(size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    character = np.asarray(anime_sample(seed=3, size=size, transparent=True))
    return _over(character, _anime_background(size))


def _anime_background(size: tuple[int, int]) -> npt.NDArray[np.float32]:
    return np.asarray(anime_sample(seed=11, size=size).convert("RGB"), np.float32)


def _over(
    character: npt.NDArray[np.uint8], background: npt.NDArray[np.float32]
) -> npt.NDArray[np.uint8]:
    """The character drawn over the background, with the character's alpha."""
    alpha = character[..., 3:].astype(np.float32) / 255
    rgb = character[..., :3] * alpha + background * (1 - alpha)
    return np.dstack([rgb.round().astype(np.uint8), character[..., 3]])


def _photo(size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    width, height = size
    rng = np.random.default_rng(5)
    picture = np.zeros((height, width, 3), np.float32)
    for cells in (4, 16, 64, 256):  # texture at four scales, each a quarter of the contrast
        coarse = Image.fromarray(rng.integers(0, 256, (cells, cells, 3), dtype=np.uint8))
        picture += np.asarray(coarse.resize(size, Image.Resampling.BICUBIC), np.float32) / 4
    picture += rng.normal(0, _SENSOR_NOISE, picture.shape)
    mask = Image.new("L", size, 0)
    ImageDraw.Draw(mask).ellipse([width * 0.2, height * 0.1, width * 0.8, height * 0.95], fill=255)
    alpha = np.asarray(mask.filter(ImageFilter.GaussianBlur(width / 200)))
    return np.dstack([np.clip(picture, 0, 255).astype(np.uint8), alpha])
