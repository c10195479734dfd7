"""Procedural anime-style sample images for the demo and the benchmarks.

Flat-colour characters with dark outlines, cel shading and big eyes, on a gradient background
(or a transparent one, as sticker pipelines often produce): the statistics that matter to the
codecs and the engine, with no image files to ship.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw, ImageFilter

_OUTLINE = (34, 24, 40, 255)
_SKIN = [(255, 224, 200), (250, 210, 180), (240, 196, 170)]
_HAIR = [(250, 120, 160), (90, 160, 240), (250, 210, 90), (120, 90, 200), (60, 60, 70)]
_CLOTHES = [(240, 90, 80), (70, 190, 150), (250, 250, 250), (60, 80, 160), (250, 170, 60)]


def anime_sample(
    seed: int, size: tuple[int, int] = (768, 1024), *, transparent: bool = False
) -> Image.Image:
    """An RGBA character of `size` (width, height); `transparent` leaves the background empty."""
    rng = random.Random(seed)
    width, height = size
    image = Image.new("RGBA", size, (0, 0, 0, 0))
    if not transparent:
        image = _gradient(size, rng)
    draw = ImageDraw.Draw(image)
    cx = width * rng.uniform(0.42, 0.58)
    unit = min(width, height) / 10
    hair, skin, clothes = rng.choice(_HAIR), rng.choice(_SKIN), rng.choice(_CLOTHES)
    stroke = max(2, round(unit / 12))

    # Body and arms: a trapezoid robe and two rounded sleeves.
    top, bottom = height * 0.52, height * 0.98
    draw.polygon(
        [
            (cx - 1.2 * unit, top),
            (cx + 1.2 * unit, top),
            (cx + 2.4 * unit, bottom),
            (cx - 2.4 * unit, bottom),
        ],
        fill=clothes,
        outline=_OUTLINE,
        width=stroke,
    )
    for side in (-1, 1):
        inner, outer = cx + side * 1.4 * unit, cx + side * 2.3 * unit
        draw.rounded_rectangle(
            [min(inner, outer), top + 0.2 * unit, max(inner, outer), top + 3.2 * unit],
            radius=unit * 0.4,
            fill=clothes,
            outline=_OUTLINE,
            width=stroke,
        )
    # Hair behind the head, spiky.
    head_cy = height * 0.34
    head_r = 1.7 * unit
    spikes = [
        (cx + 2.3 * unit * math.cos(a), head_cy + 2.3 * unit * math.sin(a) * rng.uniform(0.9, 1.3))
        for a in _angles(rng.randint(9, 14), rng)
    ]
    draw.polygon(spikes, fill=hair, outline=_OUTLINE, width=stroke)
    # Head, with a cel-shaded jaw.
    draw.ellipse(
        [cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r * 1.1],
        fill=skin,
        outline=_OUTLINE,
        width=stroke,
    )
    shade = tuple(int(c * 0.88) for c in skin)
    draw.chord(
        [cx - head_r, head_cy - head_r, cx + head_r, head_cy + head_r * 1.1],
        start=20,
        end=160,
        fill=shade,
    )
    # Fringe.
    draw.pieslice(
        [cx - head_r * 1.1, head_cy - head_r * 1.25, cx + head_r * 1.1, head_cy + head_r * 0.6],
        start=180,
        end=360,
        fill=hair,
        outline=_OUTLINE,
        width=stroke,
    )
    # Big eyes with highlights, and a small mouth.
    eye_colour = rng.choice(_HAIR)
    for side in (-1, 1):
        ex, ey = cx + side * 0.7 * unit, head_cy + 0.35 * unit
        draw.ellipse(
            [ex - 0.38 * unit, ey - 0.55 * unit, ex + 0.38 * unit, ey + 0.55 * unit],
            fill=(255, 255, 255),
            outline=_OUTLINE,
            width=stroke,
        )
        draw.ellipse(
            [ex - 0.28 * unit, ey - 0.4 * unit, ex + 0.28 * unit, ey + 0.5 * unit], fill=eye_colour
        )
        draw.ellipse(
            [ex - 0.12 * unit, ey - 0.3 * unit, ex + 0.02 * unit, ey - 0.12 * unit],
            fill=(255, 255, 255),
        )
    draw.arc(
        [cx - 0.3 * unit, head_cy + 0.9 * unit, cx + 0.3 * unit, head_cy + 1.2 * unit],
        start=10,
        end=170,
        fill=_OUTLINE,
        width=stroke,
    )
    return image


def _gradient(size: tuple[int, int], rng: random.Random) -> Image.Image:
    top = tuple(rng.randint(150, 255) for _ in range(3))
    bottom = tuple(rng.randint(60, 200) for _ in range(3))
    column = Image.new("RGBA", (1, 256))
    for y in range(256):
        t = y / 255
        column.putpixel(
            (0, y), (*(round(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)), 255)
        )
    background = column.resize(size, Image.Resampling.BILINEAR)
    # Soft bokeh circles, so the background is not trivially separable by colour.
    glow = Image.new("RGBA", size, (0, 0, 0, 0))
    draw = ImageDraw.Draw(glow)
    for _ in range(12):
        bx, by = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        r = rng.uniform(20, size[0] / 6)
        draw.ellipse([bx - r, by - r, bx + r, by + r], fill=(255, 255, 255, rng.randint(30, 90)))
    return Image.alpha_composite(background, glow.filter(ImageFilter.GaussianBlur(8)))


def _angles(count: int, rng: random.Random) -> list[float]:
    """Spike directions fanning over the top of the head."""
    return [
        math.pi * (0.95 + 1.1 * i / (count - 1)) + rng.uniform(-0.08, 0.08) for i in range(count)
    ]
