"""Background colours as the API and the database spell them: `#rrggbb`."""

from __future__ import annotations

import re

from toonq.shared.errors import InvalidRequestError

RGB = tuple[int, int, int]
_HEX = re.compile(r"^#?([0-9a-fA-F]{3}|[0-9a-fA-F]{6})$")


def parse_color(text: str) -> RGB:
    """`#808080`, `808080` or the short `#888` to an (r, g, b) triple."""
    match = _HEX.match(text.strip())
    if match is None:
        raise InvalidRequestError(
            f"invalid colour {text!r}: use hex such as #808080", code="invalid_color"
        )
    digits = match[1]
    if len(digits) == 3:
        digits = "".join(d * 2 for d in digits)
    r, g, b = (int(digits[i : i + 2], 16) for i in (0, 2, 4))
    return r, g, b


def format_color(rgb: RGB) -> str:
    return "#{:02x}{:02x}{:02x}".format(*rgb)


def normalize_color(text: str) -> str:
    return format_color(parse_color(text))
