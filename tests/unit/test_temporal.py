"""static_pixels and stabilise_alpha: steady mattes where an animation's frames do not change,
on tiny frames whose expected mattes are worked out by hand."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from toonq.worker.engine.temporal import STATIC_TOLERANCE, stabilise_alpha, static_pixels


def _frames(*colours: list[list[int]]) -> list[np.ndarray]:
    """Grey RGBA frames from rows of grey levels (R = G = B = A = the level)."""
    return [np.repeat(np.array(grey, dtype=np.uint8)[..., None], 4, axis=2) for grey in colours]


def _mattes(*values: list[list[int]]) -> list[np.ndarray]:
    return [np.array(matte, dtype=np.uint8) for matte in values]


# Three frames of 2×3 pixels. Per pixel, with S = static (every channel within 2) and C = changed:
#   (0,0) 50 50 50     S S  alphas 10  20  40  -> one run: (10+20+40)/3 = 23.3  -> 23 23 23
#   (0,1) 0 50 50      C S  alphas 100 200 210 -> 100, then (200+210)/2 = 205 -> 100 205 205
#   (0,2) 0 100 200    C C  alphas 5   50  250 -> untouched                   -> 5 50 250
#   (1,0) 0 2 4        S S  alphas 0   1   0   -> (0+1+0)/3 = 0.33            -> 0 0 0
#   (1,1) 0 3 3        C S  alphas 255 254 253 -> 255, then 253.5 (half up)   -> 255 254 254
#   (1,2) 7 7 90       S C  alphas 9   10  11  -> 9.5 (half up), then 11      -> 10 10 11
COLOURS = _frames(
    [[50, 0, 0], [0, 0, 7]],
    [[50, 50, 100], [2, 3, 7]],
    [[50, 50, 200], [4, 3, 90]],
)
ALPHAS = _mattes(
    [[10, 100, 5], [0, 255, 9]],
    [[20, 200, 50], [1, 254, 10]],
    [[40, 210, 250], [0, 253, 11]],
)
STABILISED = _mattes(
    [[23, 100, 5], [0, 255, 10]],
    [[23, 205, 50], [0, 254, 10]],
    [[23, 205, 250], [0, 254, 11]],
)


def test_the_hand_computed_frames() -> None:
    assert STATIC_TOLERANCE == 2  # the table above assumes it
    stabilised = stabilise_alpha(COLOURS, ALPHAS)
    assert len(stabilised) == 3
    for got, expected in zip(stabilised, STABILISED, strict=True):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, expected)


def test_static_pixels_of_the_hand_computed_frames() -> None:
    np.testing.assert_array_equal(
        static_pixels(COLOURS[0], COLOURS[1]), [[True, False, False], [True, False, True]]
    )
    np.testing.assert_array_equal(
        static_pixels(COLOURS[1], COLOURS[2]), [[True, True, False], [True, True, False]]
    )


def test_static_up_to_the_tolerance_in_any_one_channel() -> None:
    previous = np.full((1, 4, 4), 100, dtype=np.uint8)
    current = previous.copy()
    current[0, 0, 0] += STATIC_TOLERANCE  # R within the tolerance
    current[0, 1, 3] -= STATIC_TOLERANCE  # A within it
    current[0, 2, 1] += STATIC_TOLERANCE + 1  # G beyond it
    current[0, 3, 3] -= STATIC_TOLERANCE + 1  # A beyond it
    np.testing.assert_array_equal(static_pixels(previous, current), [[True, True, False, False]])


def test_static_pixels_of_rgb_frames() -> None:
    previous = np.zeros((2, 2, 3), dtype=np.uint8)
    current = previous.copy()
    current[1, 1, 2] = 255
    np.testing.assert_array_equal(static_pixels(previous, current), [[True, True], [True, False]])


def test_a_pixel_static_for_three_frames_then_changing() -> None:
    greys = [10, 10, 11, 60, 120]  # static 0-1-2, then a change at every step
    colours = _frames(*[[[grey]] for grey in greys])
    alphas = _mattes(*[[[value]] for value in [10, 11, 15, 100, 30]])
    stabilised = stabilise_alpha(colours, alphas)
    # (10 + 11 + 15) / 3 = 12 over the run; the changing frames keep their predictions.
    assert [int(matte[0, 0]) for matte in stabilised] == [12, 12, 12, 100, 30]


def test_a_run_that_starts_after_a_change_ends_with_the_animation() -> None:
    colours = _frames([[0]], [[80]], [[80]], [[81]])
    alphas = _mattes([[7]], [[200]], [[201]], [[205]])
    # 7 alone, then (200 + 201 + 205) / 3 = 202.
    assert [int(matte[0, 0]) for matte in stabilise_alpha(colours, alphas)] == [7, 202, 202, 202]


def test_moving_pixels_keep_their_predictions() -> None:
    rng = np.random.default_rng(1)
    # Every pixel changes by far more than the tolerance at every step.
    colours = [np.full((8, 9, 4), 40 * index, dtype=np.uint8) for index in range(6)]
    alphas = [rng.integers(0, 256, (8, 9), dtype=np.uint8) for _ in colours]
    for got, predicted in zip(stabilise_alpha(colours, alphas), alphas, strict=True):
        np.testing.assert_array_equal(got, predicted)


def test_static_background_steadies_while_the_moving_square_is_untouched() -> None:
    rng = np.random.default_rng(2)
    colours, alphas, moving = [], [], []
    for index in range(5):
        frame = np.full((16, 16, 4), 90, dtype=np.uint8)
        frame[:, :, :3] += rng.integers(0, STATIC_TOLERANCE // 2 + 1, (16, 16, 3), dtype=np.uint8)
        square = np.zeros((16, 16), dtype=bool)
        square[4:8, 3 * index : 3 * index + 3] = True  # moves by its own width
        frame[square] = (255, 0, 0, 255)
        colours.append(frame)
        alphas.append(rng.integers(100, 200, (16, 16), dtype=np.uint8))
        moving.append(square)
    stabilised = stabilise_alpha(colours, alphas)
    changed_somewhere = np.logical_or.reduce(moving)
    for got in stabilised:
        # Pixels the square never covers are static throughout: one mean for the whole run.
        np.testing.assert_array_equal(got[~changed_somewhere], stabilised[0][~changed_somewhere])
    for index in range(1, len(stabilised) - 1):
        # A pixel that changed on entering and on leaving a frame keeps that frame's prediction.
        entering = moving[index - 1] ^ moving[index]
        leaving = moving[index] ^ moving[index + 1]
        both_sides = entering & leaving
        assert both_sides.any()
        np.testing.assert_array_equal(stabilised[index][both_sides], alphas[index][both_sides])


def _reference(colours: list[np.ndarray], alphas: list[np.ndarray]) -> list[np.ndarray]:
    """The definition, pixel by pixel: split the frames into static runs, average each run."""
    result = [alpha.copy() for alpha in alphas]
    height, width = alphas[0].shape
    for y in range(height):
        for x in range(width):
            changes = [
                index
                for index in range(1, len(colours))
                if np.abs(colours[index][y, x].astype(int) - colours[index - 1][y, x]).max()
                > STATIC_TOLERANCE
            ]
            bounds = [0, *changes, len(colours)]
            for start, end in itertools.pairwise(bounds):
                run = [int(alphas[index][y, x]) for index in range(start, end)]
                mean = math.floor(Fraction(sum(run), len(run)) + Fraction(1, 2))
                for index in range(start, end):
                    result[index][y, x] = mean
    return result


def test_agrees_with_the_definition_on_random_frames() -> None:
    rng = np.random.default_rng(3)
    # Each pixel keeps its colour (give or take 1) from one frame to the next with odds of 2 in
    # 3, and otherwise takes one at least 3 levels away: runs of every length occur.
    colours = [(rng.integers(0, 4, (6, 7, 4)) * 3).astype(np.uint8)]
    for _ in range(11):
        kept = rng.random((6, 7)) < 2 / 3
        moved = (colours[-1] + 3 * rng.integers(1, 4, (6, 7, 4))).astype(np.uint8)
        jittered = (colours[-1] + rng.integers(0, 2, (6, 7, 4))).astype(np.uint8)
        colours.append(np.where(kept[..., None], jittered, moved))
    alphas = [rng.integers(0, 256, (6, 7), dtype=np.uint8) for _ in colours]
    expected = _reference(colours, alphas)
    for got, wanted in zip(stabilise_alpha(colours, alphas), expected, strict=True):
        np.testing.assert_array_equal(got, wanted)


def test_one_frame_is_checked_too() -> None:
    with pytest.raises(ValueError, match="frames"):
        stabilise_alpha([np.zeros((2, 2), dtype=np.uint8)], [np.zeros((2, 2), dtype=np.uint8)])


def test_one_frame_is_returned_as_it_is() -> None:
    alpha = np.array([[1, 2]], dtype=np.uint8)
    (result,) = stabilise_alpha(_frames([[0, 0]]), [alpha])
    assert result is alpha


def test_no_frames() -> None:
    assert stabilise_alpha([], []) == []


def test_inputs_are_not_modified() -> None:
    colours = [frame.copy() for frame in COLOURS]
    alphas = [alpha.copy() for alpha in ALPHAS]
    stabilise_alpha(colours, alphas)
    for got, original in zip(colours + alphas, COLOURS + ALPHAS, strict=True):
        np.testing.assert_array_equal(got, original)


@pytest.mark.parametrize(
    ("colours", "alphas"),
    [
        (COLOURS, ALPHAS[:2]),  # one matte short
        (COLOURS, [alpha[:, :2] for alpha in ALPHAS]),  # mattes of another size
        (COLOURS, [alpha.astype(np.float32) for alpha in ALPHAS]),  # not uint8
        ([frame[..., :2] for frame in COLOURS], ALPHAS),  # two channels
        ([COLOURS[0], COLOURS[1][:, :2], COLOURS[2]], ALPHAS),  # frames of different sizes
    ],
)
def test_bad_inputs(colours: list[np.ndarray], alphas: list[np.ndarray]) -> None:
    with pytest.raises(ValueError, match=r"."):
        stabilise_alpha(colours, alphas)
