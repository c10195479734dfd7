"""The evaluation metrics on tiny hand-made masks, against values worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from toonq.worker.evaluation.comparison import compare, sign_test, verdict
from toonq.worker.evaluation.metrics import (
    ImageScores,
    boundary_f_measure,
    boundary_tolerance,
    edge_map,
    halo,
    iou,
    mae,
    mean_over_frames,
    mean_score,
    pixel_accuracy,
    resize_linear,
    score_image,
)


def square(size: int, top: int, left: int, side: int, value: int = 255) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[top : top + side, left : left + side] = value
    return mask


# A 20×20 ground truth whose foreground is a 10×10 square: 100 foreground pixels.
GT = square(20, 5, 5, 10)


# --- Pixel Accuracy -------------------------------------------------------------------------------


def test_pa_is_one_for_a_perfect_prediction() -> None:
    assert pixel_accuracy(GT.copy(), GT) == 1.0


def test_pa_tolerates_ten_grey_levels_but_not_eleven() -> None:
    gt = np.where(GT > 0, 200, 0).astype(np.uint8)
    assert pixel_accuracy(gt + 10, gt) == 1.0
    # Every pixel wrong: nothing erodes (the border does not erode either), so 400 wrong pixels
    # against 100 foreground ones: score 1 - 400/100 = -3, squared to 9.
    assert pixel_accuracy(gt + 11, gt) == pytest.approx(9.0)


def test_pa_ignores_an_isolated_wrong_pixel() -> None:
    pred = GT.copy()
    pred[9, 9] = 0
    assert pixel_accuracy(pred, GT) == 1.0


def test_pa_ignores_a_four_pixel_wide_wrong_stripe() -> None:
    pred = GT.copy()
    pred[:, 8:12] = 255 - pred[:, 8:12]  # 4 columns, top to bottom, all wrong
    assert pixel_accuracy(pred, GT) == 1.0


def test_pa_counts_what_survives_a_5x5_erosion_of_a_wrong_block() -> None:
    pred = GT.copy()
    pred[7:12, 7:12] = 0  # 5×5 wrong block (255 -> 0: wrong only when computed in int16)
    assert pixel_accuracy(pred, GT) == pytest.approx((1 - 1 / 100) ** 2)  # its centre survives
    pred[6:13, 6:13] = 0  # 7×7: its 3×3 core survives
    assert pixel_accuracy(pred, GT) == pytest.approx((1 - 9 / 100) ** 2)


def test_pa_border_does_not_erode() -> None:
    pred = GT.copy()
    pred[:, 0:3] = 255  # a 3-px wrong stripe along the left border, top to bottom
    # Column 0 sees only wrong pixels (beyond the border counts as wrong): its 20 pixels survive.
    # Column 1 sees column 3, which is right, so it erodes, and so does column 2.
    assert pixel_accuracy(pred, GT) == pytest.approx((1 - 20 / 100) ** 2)


def test_pa_goes_negative_before_squaring() -> None:
    gt = square(20, 14, 14, 3)  # 9 foreground pixels (missed: they erode away)
    pred = square(20, 0, 0, 10)  # a 10×10 block of wrong pixels in the corner
    # The corner block erodes to rows/columns 0..7 (the border does not erode): 64 survive.
    # score = 1 - 64/9 < 0; PA = score².
    assert pixel_accuracy(pred, gt) == pytest.approx((1 - 64 / 9) ** 2)


def corner_error(side: int) -> np.ndarray:
    """A 40×40 ground truth with 100 foreground pixels, predicted exactly plus a wrong block
    of `side`² pixels in the corner, which erodes to (side - 2)² wrong pixels."""
    pred = square(40, 25, 25, 10)
    pred[:side, :side] = 255
    return pred


def test_score_image_says_whether_pa_ranks_the_mask() -> None:
    gt = square(40, 25, 25, 10)
    fewer = score_image(corner_error(10), gt)  # 64 wrong: score 0.36
    more = score_image(corner_error(14), gt)  # 144 wrong: score -0.44
    # More wrong pixels, yet a higher PA, still within [0, 1]: only the sign tells.
    assert fewer.pixel_accuracy == pytest.approx(0.36**2)
    assert more.pixel_accuracy == pytest.approx(0.44**2)
    assert (fewer.pixel_accuracy_ranks, more.pixel_accuracy_ranks) == (True, False)
    assert score_image(gt, np.zeros_like(gt)).pixel_accuracy_ranks is None


def test_pa_is_undefined_without_foreground() -> None:
    empty = np.zeros((20, 20), dtype=np.uint8)
    empty[0, 0] = 128  # not above 128: still no foreground
    assert pixel_accuracy(GT, empty) is None


# --- Resize ---------------------------------------------------------------------------------------


def test_resize_upscales_with_half_pixel_centres_and_clamped_edges() -> None:
    row = np.array([[0, 200], [0, 200]], dtype=np.uint8)
    expected = np.tile(np.array([0, 50, 150, 200], dtype=np.uint8), (4, 1))
    assert np.array_equal(resize_linear(row, (4, 4)), expected)
    column = np.array([[0], [100]], dtype=np.uint8)
    assert resize_linear(column, (4, 1)).ravel().tolist() == [0, 25, 75, 100]


def test_resize_rounds_like_cv2_fixed_point() -> None:
    # At x = 3 the exact value is 0.1 × 73 + 0.9 × 238 = 221.5; cv2's 11-bit weights (205, 1843)
    # and its vertical pass, ((453599 >> 4) × 2048 >> 16 = 885, then (885 + 2) >> 2), give 221.
    row = np.array([[73, 238]], dtype=np.uint8)
    assert resize_linear(row, (1, 5)).ravel().tolist() == [73, 90, 156, 221, 238]


def test_resize_clamps_rows_but_keeps_their_weights() -> None:
    # Row 0 of 4 sits at y = -0.25: cv2 reads source row 0 twice with weights (0.25, 0.75) and
    # floors each product. At x = 1 (x = 0.5: 95 and 130 averaged, 230400 in fixed point):
    # (14400 × 512 >> 16) + (14400 × 1536 >> 16) = 112 + 337, and (449 + 2) >> 2 = 112, where
    # the exact value is 112.5.
    square_ = np.array([[95, 130], [194, 217]], dtype=np.uint8)
    assert resize_linear(square_, (4, 3)).tolist() == [
        [95, 112, 130],
        [120, 136, 152],
        [169, 182, 195],
        [194, 205, 217],
    ]


def test_resize_downscales_without_antialias() -> None:
    row = np.array([[0, 100, 200, 40]], dtype=np.uint8)
    assert resize_linear(row, (1, 2)).ravel().tolist() == [50, 120]


def test_resize_keeps_a_mask_of_the_right_size() -> None:
    assert resize_linear(GT, (20, 20)) is GT


def test_a_smaller_prediction_is_resized_to_the_ground_truth() -> None:
    gt = np.zeros((8, 8), dtype=np.uint8)
    gt[:, :4] = 255
    pred = np.zeros((4, 4), dtype=np.uint8)
    pred[:, :2] = 255
    # Upscaled, each row becomes 255 255 255 191 64 0 0 0 (191.25 and 63.75 in cv2's rounding).
    assert resize_linear(pred, (8, 8))[0].tolist() == [255, 255, 255, 191, 64, 0, 0, 0]
    scores = score_image(pred, gt)
    assert scores.mae == pytest.approx(2 * 64 / 8 / 255)
    assert scores.pixel_accuracy == 1.0  # a 2-px-wide wrong stripe erodes away
    assert scores.iou == 1.0  # 191 is foreground, 64 is not


# --- IoU, MAE -------------------------------------------------------------------------------------


def test_iou_of_overlapping_squares() -> None:
    pred, gt = square(8, 0, 0, 4), square(8, 2, 2, 4)
    assert iou(pred, gt) == pytest.approx(4 / 28)  # 2×2 overlap, 16 + 16 - 4 in the union


def test_iou_thresholds_above_128_and_is_undefined_when_both_are_empty() -> None:
    gt = square(8, 0, 0, 4)
    assert iou(square(8, 0, 0, 4, value=128), gt) == 0.0
    assert iou(square(8, 0, 0, 4, value=129), gt) == 1.0
    assert iou(np.zeros((8, 8), np.uint8), np.zeros((8, 8), np.uint8)) is None


def test_mae_is_the_mean_absolute_difference_over_255() -> None:
    gt = np.zeros((10, 10), dtype=np.uint8)
    gt[0, :] = 255
    assert mae(np.zeros_like(gt), gt) == pytest.approx(0.1)
    assert mae(np.full((10, 10), 51, np.uint8), np.zeros((10, 10), np.uint8)) == pytest.approx(0.2)


# --- Edges and boundary F -------------------------------------------------------------------------


def test_edge_map_is_the_inner_boundary_and_ignores_the_frame() -> None:
    assert np.count_nonzero(edge_map(square(10, 2, 2, 4) > 128)) == 12
    corner = edge_map(square(10, 0, 0, 4) > 128)  # touches the top and left of the frame
    assert np.count_nonzero(corner) == 7  # only its bottom row and right column
    assert not corner[0, :3].any()


def test_boundary_f_of_a_square_shifted_by_one_pixel() -> None:
    gt, pred = square(10, 2, 2, 4), square(10, 2, 3, 4)
    # Exact matching: the top and bottom rows share 3 pixels each, 6 of 12 edge pixels.
    assert boundary_f_measure(pred, gt, tolerance=0) == pytest.approx(0.5)
    # Within 1 pixel every edge pixel finds a partner.
    assert boundary_f_measure(pred, gt, tolerance=1) == pytest.approx(1.0)


def test_boundary_f_tolerance_is_a_disk() -> None:
    gt, pred = square(10, 2, 2, 4), square(10, 3, 3, 4)  # shifted diagonally
    # Only the far corners, (6, 6) of the prediction and (2, 2) of the ground truth, are more
    # than 1 pixel (√2) from the other edge: 11 of 12 on each side.
    assert boundary_f_measure(pred, gt, tolerance=1) == pytest.approx(11 / 12)


def test_boundary_f_without_edges() -> None:
    empty = np.zeros((10, 10), dtype=np.uint8)
    assert boundary_f_measure(empty, empty) is None
    assert boundary_f_measure(empty, square(10, 2, 2, 4)) == 0.0


def test_boundary_tolerance_follows_the_diagonal() -> None:
    assert boundary_tolerance((10, 10)) == 1
    assert boundary_tolerance((1024, 1024)) == 12  # ceil(0.008 × 1448.2)


# --- Halo -----------------------------------------------------------------------------------------

# A 10×10 cut-out whose alpha is an 8×8 square: edge 28 pixels, then layers of 20 and 12.
ALPHA = square(10, 1, 1, 8)


def test_halo_counts_bright_band_pixels_per_edge_pixel() -> None:
    white = np.full((10, 10, 3), 255, dtype=np.uint8)
    assert halo(white, ALPHA) == pytest.approx((28 + 20 + 12) / 28)
    ring = np.zeros_like(white)
    ring[ALPHA > 0] = 255
    ring[2:8, 2:8] = 0  # white only on the edge itself
    assert halo(ring, ALPHA) == pytest.approx(1.0)


def test_halo_composites_on_black_and_thresholds_luminance() -> None:
    white = np.full((10, 10, 3), 255, dtype=np.uint8)
    soft = ALPHA.copy()
    soft[edge_map(ALPHA > 128)] = 200  # still foreground, but 200/255 = 0.78 on black
    assert halo(white, soft) == pytest.approx((20 + 12) / 28)
    green = np.zeros_like(white)
    green[..., 1] = 255  # luma 0.7152: not bright
    assert halo(green, ALPHA) == 0.0
    cream = np.full((10, 10, 3), (255, 255, 200), dtype=np.uint8)  # luma 0.984
    assert halo(cream, ALPHA) == pytest.approx(60 / 28)


def test_halo_is_undefined_without_an_edge() -> None:
    white = np.full((10, 10, 3), 255, dtype=np.uint8)
    assert halo(white, np.zeros((10, 10), np.uint8)) is None
    assert halo(white, np.full((10, 10), 255, np.uint8)) is None


def test_score_image_computes_halo_only_with_the_image() -> None:
    white = np.full((10, 10, 3), 255, dtype=np.uint8)
    assert score_image(ALPHA, ALPHA).halo is None
    assert score_image(ALPHA, ALPHA, white).halo == pytest.approx(60 / 28)


# --- Aggregation and the paired comparison --------------------------------------------------------


def test_mean_score_leaves_undefined_values_out() -> None:
    assert mean_score([1.0, None, 0.5]) == pytest.approx(0.75)
    assert mean_score([None]) is None


def test_mean_over_frames_averages_each_defined_metric() -> None:
    gt = square(40, 25, 25, 10)
    exact, missed = score_image(gt, gt), score_image(np.zeros_like(gt), gt)
    animation = mean_over_frames([exact, missed, exact])
    assert animation.iou == pytest.approx(2 / 3)
    assert animation.mae == pytest.approx(100 / 1600 / 3)
    assert animation.halo is None  # defined for no frame
    assert animation.pixel_accuracy_ranks is True
    assert mean_over_frames([exact]) == exact


def test_mean_over_frames_ranks_only_where_every_frame_ranks() -> None:
    gt = square(40, 25, 25, 10)
    ranked, unranked = score_image(corner_error(10), gt), score_image(corner_error(14), gt)
    assert mean_over_frames([ranked, unranked]).pixel_accuracy_ranks is False
    undefined = score_image(gt, np.zeros_like(gt))
    assert mean_over_frames([undefined, ranked]).pixel_accuracy_ranks is True
    assert mean_over_frames([undefined, undefined]).pixel_accuracy_ranks is None


def test_sign_test_is_exact_and_two_sided() -> None:
    assert sign_test(6, 0) == pytest.approx(2 / 64)
    assert sign_test(1, 9) == pytest.approx(2 * (1 + 10) / 1024)
    assert sign_test(3, 3) == 1.0
    assert sign_test(0, 0) == 1.0


def scores(pa: float | None, mae_: float, flicker: float | None = None) -> ImageScores:
    return ImageScores(
        pixel_accuracy=pa,
        iou=None,
        mae=mae_,
        boundary_f=None,
        halo=None,
        flicker=flicker,
        pixel_accuracy_ranks=None if pa is None else pa <= 1,
    )


def test_compare_counts_wins_in_each_metrics_direction() -> None:
    a = {"x": scores(0.9, 0.1), "y": scores(0.8, 0.2), "z": scores(None, 0.3)}
    b = {"x": scores(0.95, 0.05), "y": scores(0.8, 0.4), "z": scores(0.7, 0.3)}
    result = compare(a, b)
    pa = result["pixel_accuracy"]
    assert (pa.count, pa.a_better, pa.b_better, pa.ties) == (2, 0, 1, 1)
    assert pa.mean_difference == pytest.approx(0.025)
    assert pa.better == "B"
    error = result["mae"]  # lower is better: B wins x, A wins y, z is a tie
    assert (error.a_better, error.b_better, error.ties) == (1, 1, 1)
    assert error.mean_difference == pytest.approx((-0.05 + 0.2 + 0) / 3)
    assert error.better == "A"
    assert result["iou"].count == 0
    assert result["iou"].better is None


def test_compare_ranks_flicker_lower_is_better_over_animated_images() -> None:
    a = {"anim": scores(0.9, 0.1, flicker=0.5), "still": scores(0.9, 0.1)}
    b = {"anim": scores(0.9, 0.1, flicker=2.0), "still": scores(0.9, 0.1)}
    comparisons = compare(a, b)
    flicker = comparisons["flicker"]
    assert (flicker.count, flicker.a_better, flicker.b_better) == (1, 1, 0)
    assert flicker.mean_difference == pytest.approx(1.5)
    assert flicker.better == "A"
    # Flicker is reported, never the verdict: the masks themselves are equally good.
    decision = verdict(comparisons)
    assert decision.decided_by.metric.name == "pixel_accuracy"
    assert decision.better is None


def test_verdict_is_pixel_accuracy_when_it_ranks_every_image() -> None:
    a = {"x": scores(0.9, 0.1), "y": scores(0.8, 0.2)}
    b = {"x": scores(0.95, 0.15), "y": scores(0.85, 0.25)}
    decision = verdict(compare(a, b))
    assert decision.decided_by.metric.name == "pixel_accuracy"
    assert decision.better == "B"
    assert decision.pixel_accuracy.unranked == ()


def test_verdict_never_prefers_the_higher_pixel_accuracy_above_one() -> None:
    # Both masks are very wrong; B's 3.74 is more wrong pixels than A's 3.30, and a worse MAE.
    a = {"x": scores(3.30, 0.30), "y": scores(0.9, 0.05)}
    b = {"x": scores(3.74, 0.35), "y": scores(0.9, 0.05)}
    comparisons = compare(a, b)
    pa = comparisons["pixel_accuracy"]
    assert pa.unranked == ("x",)
    assert not pa.comparable
    assert pa.better is None
    decision = verdict(comparisons)
    assert decision.decided_by.metric.name == "mae"
    assert decision.better == "A"
    assert "does not rank 1 image(s)" in decision.reason
    assert decision.to_dict()["pixel_accuracy_unranked"] == ["x"]


def test_verdict_falls_back_where_pixel_accuracy_misranks_below_one() -> None:
    gt = square(40, 25, 25, 10)
    a = {"x": score_image(corner_error(10), gt)}
    b = {"x": score_image(corner_error(14), gt)}  # higher PA, more wrong pixels
    decision = verdict(compare(a, b))
    assert decision.decided_by.metric.name == "mae"
    assert decision.better == "A"


def test_verdict_falls_back_when_pixel_accuracy_is_never_defined() -> None:
    decision = verdict(compare({"x": scores(None, 0.2)}, {"x": scores(None, 0.1)}))
    assert decision.decided_by.metric.name == "mae"
    assert decision.better == "B"
    assert decision.pixel_accuracy.unranked == ()
