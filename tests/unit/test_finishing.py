"""apply_finishing: trim, margin, outline and drop shadow on small RGBA frames."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from toonq.worker.engine.finishing import apply_finishing

SUBJECT_COLOUR = (200, 30, 60, 255)
WHITE = (255, 255, 255, 255)


def _frame(
    height: int, width: int, rows: slice, columns: slice, colour: tuple[int, ...] = SUBJECT_COLOUR
) -> np.ndarray:
    """A transparent frame with one solid rectangle."""
    frame = np.zeros((height, width, 4), dtype=np.uint8)
    frame[rows, columns] = colour
    return frame


def _opaque_box(alpha: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right), exclusive, of the pixels with alpha above 0."""
    rows, columns = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    return int(rows[0]), int(columns[0]), int(rows[-1]) + 1, int(columns[-1]) + 1


def test_all_off_returns_the_same_frames() -> None:
    frames = [_frame(4, 5, slice(1, 2), slice(1, 3)), _frame(4, 5, slice(0, 1), slice(0, 1))]
    finished = apply_finishing(frames)
    assert len(finished) == 2
    assert all(got is given for got, given in zip(finished, frames, strict=True))


def test_trim_to_the_box_plus_the_margin() -> None:
    frame = _frame(20, 30, slice(5, 9), slice(10, 16))  # a 4×6 subject
    (trimmed,) = apply_finishing([frame], trim=True, margin=3)
    assert trimmed.shape == (4 + 2 * 3, 6 + 2 * 3, 4)
    np.testing.assert_array_equal(trimmed[3:7, 3:9], frame[5:9, 10:16])
    assert np.count_nonzero(trimmed[..., 3]) == 4 * 6


def test_trim_without_margin_is_the_tight_box() -> None:
    frame = _frame(20, 30, slice(5, 9), slice(10, 16))
    (trimmed,) = apply_finishing([frame], trim=True)
    np.testing.assert_array_equal(trimmed, frame[5:9, 10:16])


def test_a_faint_pixel_belongs_to_the_subject() -> None:
    frame = _frame(10, 10, slice(4, 6), slice(4, 6))
    frame[1, 8, 3] = 1
    (trimmed,) = apply_finishing([frame], trim=True)
    assert trimmed.shape == (5, 5, 4)  # rows 1..5, columns 4..8


def test_the_margin_grows_the_canvas_past_the_image() -> None:
    frame = _frame(6, 6, slice(0, 2), slice(4, 6))  # in the top-right corner
    (trimmed,) = apply_finishing([frame], trim=True, margin=5)
    assert trimmed.shape == (12, 12, 4)
    np.testing.assert_array_equal(trimmed[5:7, 5:7], frame[0:2, 4:6])
    assert np.count_nonzero(trimmed[..., 3]) == 4


def test_one_box_for_all_frames() -> None:
    first = _frame(20, 20, slice(2, 5), slice(3, 6))
    second = _frame(20, 20, slice(10, 14), slice(12, 17))
    trimmed = apply_finishing([first, second], trim=True, margin=1)
    # The union of both subjects is rows 2..13 and columns 3..16: 12×14, plus 1 on each side.
    assert [frame.shape for frame in trimmed] == [(14, 16, 4), (14, 16, 4)]
    # Each subject keeps its place relative to the other: the frames stay aligned.
    np.testing.assert_array_equal(trimmed[0][1:4, 1:4], first[2:5, 3:6])
    np.testing.assert_array_equal(trimmed[1][9:13, 10:15], second[10:14, 12:17])
    assert np.count_nonzero(trimmed[0][..., 3]) == 9
    assert np.count_nonzero(trimmed[1][..., 3]) == 20


@pytest.mark.parametrize("width", [1, 4, 9])
def test_outline_width(width: int) -> None:
    frame = _frame(40, 40, slice(15, 25), slice(15, 25))
    (outlined,) = apply_finishing([frame], outline=width)
    assert outlined.shape == frame.shape
    np.testing.assert_array_equal(outlined[15:25, 15:25], frame[15:25, 15:25])  # subject on top
    # `width` px from the subject: white and opaque, on every side and along a diagonal.
    beside = [(20, 24 + width), (20, 15 - width), (24 + width, 20), (15 - width, 20)]
    diagonal = math.isqrt(width * width // 2)  # the farthest diagonal step within `width`
    if diagonal:
        beside.append((24 + diagonal, 24 + diagonal))
    for y, x in beside:
        assert tuple(outlined[y, x]) == WHITE, (y, x)
    # `width` + 2 px away: nothing.
    for y, x in [(20, 26 + width), (20, 13 - width), (26 + width, 20), (13 - width, 20)]:
        assert outlined[y, x, 3] == 0, (y, x)


def test_outline_is_clipped_without_trim_and_kept_with_it() -> None:
    frame = _frame(12, 12, slice(0, 4), slice(0, 4))  # touching the top-left edges
    (clipped,) = apply_finishing([frame], outline=3)
    assert clipped.shape == frame.shape
    assert tuple(clipped[0, 6]) == WHITE
    (trimmed,) = apply_finishing([frame], outline=3, trim=True)
    # The same stroke drawn on a larger canvas, where nothing reaches the edges.
    roomy = np.zeros((30, 30, 4), dtype=np.uint8)
    roomy[10:22, 10:22] = frame
    (reference,) = apply_finishing([roomy], outline=3)
    top, left, bottom, right = _opaque_box(reference[..., 3])
    np.testing.assert_array_equal(trimmed, reference[top:bottom, left:right])


def test_trim_with_margin_and_outline() -> None:
    frame = _frame(30, 30, slice(10, 14), slice(12, 20))
    (plain,) = apply_finishing([frame], outline=2, trim=True)
    (spaced,) = apply_finishing([frame], outline=2, trim=True, margin=4)
    assert spaced.shape == (plain.shape[0] + 8, plain.shape[1] + 8, 4)
    np.testing.assert_array_equal(spaced[4:-4, 4:-4], plain)
    # The trimmed canvas holds the whole stroke, and no more: its border rows and columns
    # touch it.
    assert _opaque_box(plain[..., 3]) == (0, 0, plain.shape[0], plain.shape[1])


def test_outline_under_a_soft_edge_shows_through_it() -> None:
    frame = _frame(20, 20, slice(8, 12), slice(8, 12))
    frame[8:12, 12] = (0, 0, 0, 128)  # a half-transparent black column on the right
    (outlined,) = apply_finishing([frame], outline=2)
    # Half black over opaque white: opaque, mid grey.
    assert outlined[10, 12, 3] == 255
    assert abs(int(outlined[10, 12, 0]) - 127) <= 1


def test_shadow_falls_down_right_and_is_translucent() -> None:
    frame = _frame(60, 60, slice(20, 40), slice(20, 40))
    (shaded,) = apply_finishing([frame], shadow=True)
    assert shaded.shape == frame.shape
    np.testing.assert_array_equal(shaded[20:40, 20:40], frame[20:40, 20:40])
    alpha = shaded[..., 3].astype(int)
    outside = np.ones(alpha.shape, dtype=bool)
    outside[20:40, 20:40] = False
    assert alpha[outside].max() > 0
    assert alpha[outside].max() < 255  # semi-transparent
    assert (shaded[outside & (alpha > 0), :3] == 0).all()  # black
    below, above = alpha[40:].sum(), alpha[:20].sum()
    right, left = alpha[:, 40:].sum(), alpha[:, :20].sum()
    assert below > above
    assert right > left
    assert alpha[41, 41] > alpha[18, 18]  # beyond the far corner rather than the near one


def test_shadow_is_cast_by_the_outline_too() -> None:
    frame = _frame(60, 60, slice(20, 40), slice(20, 40))
    (outlined,) = apply_finishing([frame], outline=5)
    (both,) = apply_finishing([frame], outline=5, shadow=True)
    stroke = (outlined[..., 3] == 255) & (frame[..., 3] == 0)
    np.testing.assert_array_equal(both[stroke], outlined[stroke])  # stroke over the shadow
    # The shadow reaches further than the subject's own would.
    (subject_only,) = apply_finishing([frame], shadow=True)
    assert np.count_nonzero(both[..., 3]) > np.count_nonzero(subject_only[..., 3])


def test_trim_keeps_the_whole_shadow() -> None:
    frame = _frame(24, 24, slice(12, 24), slice(12, 24))  # cut by the bottom-right edges
    (trimmed,) = apply_finishing([frame], shadow=True, outline=2, trim=True)
    # The same frame on a canvas with room to spare: the trimmed canvas holds all it draws.
    roomy = np.zeros((80, 80, 4), dtype=np.uint8)
    roomy[20:44, 20:44] = frame
    (reference,) = apply_finishing([roomy], shadow=True, outline=2)
    top, left, bottom, right = _opaque_box(reference[..., 3])
    inner_top, inner_left, inner_bottom, inner_right = _opaque_box(trimmed[..., 3])
    assert (inner_bottom - inner_top, inner_right - inner_left) == (bottom - top, right - left)
    np.testing.assert_array_equal(
        trimmed[inner_top:inner_bottom, inner_left:inner_right], reference[top:bottom, left:right]
    )


def test_an_animation_gets_one_geometry() -> None:
    frames = [_frame(40, 40, slice(10, 20), slice(5 + 3 * t, 15 + 3 * t)) for t in range(4)]
    finished = apply_finishing(frames, trim=True, margin=2, outline=3, shadow=True)
    assert len({frame.shape for frame in finished}) == 1
    # A frame whose subject moved by 3 px gives the same picture moved by 3 px.
    np.testing.assert_array_equal(finished[1][:, 3:], finished[0][:, :-3])


def test_fully_transparent_frames_come_back_as_they_are() -> None:
    frames = [np.zeros((5, 6, 4), dtype=np.uint8) for _ in range(2)]
    frames[1][..., :3] = 77  # colour under alpha 0 is not a subject
    each: list[dict[str, Any]] = [
        {"trim": True, "margin": 3},
        {"outline": 2, "shadow": True, "trim": True},
    ]
    for options in each:
        finished = apply_finishing(frames, **options)
        assert all(got is given for got, given in zip(finished, frames, strict=True))


def test_inputs_are_not_modified() -> None:
    frames = [
        _frame(30, 30, slice(10, 20), slice(8, 12)),
        _frame(30, 30, slice(0, 5), slice(25, 30)),
    ]
    originals = [frame.copy() for frame in frames]
    each: list[dict[str, Any]] = [
        {"trim": True},
        {"outline": 3},
        {"shadow": True},
        {"outline": 1, "shadow": True},
    ]
    for options in each:
        apply_finishing(frames, **options)
    for frame, original in zip(frames, originals, strict=True):
        np.testing.assert_array_equal(frame, original)


@pytest.mark.parametrize(
    ("frames", "options"),
    [
        ([_frame(4, 4, slice(1, 2), slice(1, 2))], {"margin": -1, "trim": True}),
        ([_frame(4, 4, slice(1, 2), slice(1, 2))], {"outline": -2}),
        ([np.zeros((4, 4, 3), dtype=np.uint8)], {"trim": True}),  # RGB
        ([np.zeros((4, 4, 4), dtype=np.float32)], {"trim": True}),
        ([np.zeros((4, 4, 4), dtype=np.uint8), np.zeros((4, 5, 4), dtype=np.uint8)], {}),
    ],
)
def test_bad_arguments(frames: list[np.ndarray], options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"."):
        apply_finishing(frames, **options)
