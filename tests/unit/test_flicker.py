"""flicker_score: how much alpha moves where an animation's frames stand still, on tiny frames
whose scores are worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from tests.unit.test_temporal import ALPHAS, COLOURS, _frames, _mattes
from toonq.worker.engine.temporal import STATIC_TOLERANCE, stabilise_alpha
from toonq.worker.evaluation.metrics import flicker_score

# The frames of tests.unit.test_temporal, three of 2×3 pixels; S = static between the two frames
# (every channel within 2).
#   pixel  greys       pairs  alphas        |Δalpha| over static pairs
#   (0,0)  50 50 50    S S    10  20  40    10, 20
#   (0,1)  0  50 50    C S    100 200 210   -, 10
#   (0,2)  0  100 200  C C    5   50  250   -, -
#   (1,0)  0  2  4     S S    0   1   0     1, 1
#   (1,1)  0  3  3     C S    255 254 253   -, 1
#   (1,2)  7  7  90    S C    9   10  11    1, -
# 7 static pixel-pairs whose changes add up to 10 + 20 + 10 + 1 + 1 + 1 + 1 = 44: 44 / 7.


def test_the_hand_computed_frames() -> None:
    assert STATIC_TOLERANCE == 2  # the table above assumes it
    assert flicker_score(COLOURS, ALPHAS) == pytest.approx(44 / 7)


def test_two_frames_one_static_pixel() -> None:
    # Only the left pixel is static; its alpha moves by 6: the moving right pixel is ignored.
    colours = _frames([[30, 0]], [[31, 255]])
    alphas = _mattes([[100, 0]], [[94, 255]])
    assert flicker_score(colours, alphas) == pytest.approx(6.0)


def test_rgb_frames() -> None:
    colours = [np.zeros((1, 2, 3), dtype=np.uint8)] * 2
    alphas = _mattes([[0, 10]], [[4, 10]])
    assert flicker_score(colours, alphas) == pytest.approx(2.0)  # (4 + 0) / 2


def test_steady_mattes_score_zero() -> None:
    alphas = _mattes([[7, 9]], [[7, 9]], [[7, 9]])
    assert flicker_score(_frames([[1, 2]], [[1, 2]], [[1, 2]]), alphas) == 0.0


def test_stabilised_mattes_do_not_flicker_while_noisy_ones_do() -> None:
    rng = np.random.default_rng(4)
    colours, alphas = [], []
    for index in range(6):
        frame = np.full((12, 12, 4), 200, dtype=np.uint8)
        frame[2:6, 2 * index : 2 * index + 3] = (0, 0, 0, 255)  # a moving dark bar
        colours.append(frame)
        alphas.append(rng.integers(120, 136, (12, 12), dtype=np.uint8))  # a flickering matte
    noisy = flicker_score(colours, alphas)
    assert noisy is not None
    assert noisy > 0
    assert flicker_score(colours, stabilise_alpha(colours, alphas)) == 0.0


def test_undefined_with_fewer_than_two_frames() -> None:
    assert flicker_score([], []) is None
    assert flicker_score(COLOURS[:1], ALPHAS[:1]) is None


def test_undefined_without_static_pixels() -> None:
    colours = _frames([[0, 0]], [[100, 200]])
    assert flicker_score(colours, _mattes([[0, 0]], [[9, 9]])) is None


def test_mismatched_inputs() -> None:
    with pytest.raises(ValueError, match="mattes"):
        flicker_score(COLOURS, ALPHAS[:2])
    with pytest.raises(ValueError, match="matte"):
        flicker_score(COLOURS, [alpha[:1] for alpha in ALPHAS])
