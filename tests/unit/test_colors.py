"""Background colours as the API and the database spell them."""

import pytest

from toonq.shared.colors import format_color, normalize_color, parse_color
from toonq.shared.errors import InvalidRequestError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("#808080", (128, 128, 128)),
        ("808080", (128, 128, 128)),
        ("#888", (136, 136, 136)),
        ("888", (136, 136, 136)),
        ("#FfA500", (255, 165, 0)),
        (" #000000 ", (0, 0, 0)),
    ],
)
def test_parse_color(text, expected):
    assert parse_color(text) == expected


@pytest.mark.parametrize("text", ["", "#12", "12345", "#GGGGGG", "gray", "#80808080"])
def test_parse_color_rejects_with_a_typed_error(text):
    with pytest.raises(InvalidRequestError, match="invalid colour") as caught:
        parse_color(text)
    assert caught.value.code == "invalid_color"


def test_normalize_color_is_canonical_lowercase_hex():
    assert normalize_color("#ABC") == "#aabbcc"
    assert format_color((128, 128, 128)) == "#808080"
