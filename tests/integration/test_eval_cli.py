"""`toonq eval` through the real CLI, on small datasets written to disk: scores, the A/B report,
a model run, and the errors for bad inputs."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.support import run_json, run_toonq

ENV = dict(os.environ, TOONQ_LOG_FORMAT="json", TOONQ_DEVICE="cpu")
SIZE = 48
COUNT = 6
BLUE, WHITE = (40, 60, 200), (250, 250, 250)


def disc(radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:SIZE, :SIZE]
    inside = (yy - SIZE / 2 + 0.5) ** 2 + (xx - SIZE / 2 + 0.5) ** 2 < radius**2
    return np.where(inside, 255, 0).astype(np.uint8)


def save(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)


def save_animation(path: Path, frames: list[np.ndarray]) -> None:
    """An animated file of `frames` (the suffix picks GIF or APNG), 100 ms each, looping."""
    path.parent.mkdir(parents=True, exist_ok=True)
    first, *rest = (Image.fromarray(frame) for frame in frames)
    first.save(path, save_all=True, append_images=rest, duration=100, loop=0)


def moving_square(frame: int) -> np.ndarray:
    """The mask of an 8×8 square that moves 4 px to the right each frame: between two frames,
    8 rows × 4 columns change on each side of it, 64 pixels, and the other 2240 stay."""
    mask = np.zeros((SIZE, SIZE), np.uint8)
    mask[20:28, 10 + 4 * frame : 18 + 4 * frame] = 255
    return mask


def on_white(mask: np.ndarray) -> np.ndarray:
    image = np.empty((SIZE, SIZE, 3), np.uint8)
    image[:] = WHITE
    image[mask > 0] = BLUE
    return image


def cut_out(alpha: np.ndarray) -> np.ndarray:
    return np.dstack([np.zeros((SIZE, SIZE, 3), np.uint8), alpha])


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """gt/ holds discs of radius 8..13; im/ blue discs on white; good/ the ground truths
    themselves; bad/ discs 6 px too large (a wrong ring wider than the 5×5 erosion, and an edge
    band on the white background)."""
    for index in range(COUNT):
        name, gt = f"img{index}", disc(8 + index)
        save(tmp_path / "gt" / f"{name}.png", gt)
        image = np.empty((SIZE, SIZE, 3), np.uint8)
        image[:] = WHITE
        image[gt > 0] = BLUE
        save(tmp_path / "im" / f"{name}.png", image)
        save(tmp_path / "good" / f"{name}.png", gt)
        save(tmp_path / "bad" / f"{name}.png", disc(14 + index))
    return tmp_path


def eval_json(*args: str) -> Any:
    return run_json("eval", *args, env=ENV)


def test_scores_masks_by_stem(dataset: Path) -> None:
    gt = np.asarray(Image.open(dataset / "gt" / "img0.png"))
    foreground = int(np.count_nonzero(gt))
    holed = gt.copy()
    holed[22:27, 22:27] = 0  # a 5×5 hole inside the disc
    save(dataset / "good" / "img0.png", holed)
    # A half-size prediction of a square, aligned so that upscaling blurs only its 1-px rim.
    square = np.zeros((SIZE, SIZE), np.uint8)
    square[16:32, 16:32] = 255
    save(dataset / "gt" / "img1.png", square)
    save(dataset / "good" / "img1.png", square[::2, ::2])

    result = eval_json("--gt", str(dataset / "gt"), "--pred", str(dataset / "good"))

    images = {item["name"]: item for item in result["images"]}
    assert sorted(images) == [f"img{i}" for i in range(COUNT)]
    hole = images["img0"]
    assert hole["pixel_accuracy"] == pytest.approx((1 - 1 / foreground) ** 2)
    assert hole["iou"] == pytest.approx((foreground - 25) / foreground)
    assert hole["mae"] == pytest.approx(25 / SIZE**2)
    assert hole["halo"] is None  # no --images
    resized = images["img1"]
    assert resized["pixel_accuracy"] == 1.0
    assert resized["iou"] == 1.0
    assert 0 < resized["mae"] < 0.1
    exact = images["img2"]
    assert (exact["pixel_accuracy"], exact["iou"], exact["mae"], exact["boundary_f"]) == (
        1.0,
        1.0,
        0.0,
        1.0,
    )
    values = [item["pixel_accuracy"] for item in result["images"]]
    assert result["mean"]["pixel_accuracy"] == pytest.approx(sum(values) / COUNT)
    assert result["mean"]["halo"] is None
    assert hole["flicker"] is None  # stills do not flicker
    assert result["mean"]["flicker"] is None


def test_ab_report_names_the_better_source(dataset: Path) -> None:
    report = dataset / "report"
    result = eval_json(
        "--gt",
        str(dataset / "gt"),
        "--images",
        str(dataset / "im"),
        "--pred",
        str(dataset / "good"),
        "--pred",
        str(dataset / "bad"),
        "--report",
        str(report),
    )

    good, bad = result["sources"]
    assert (good["label"], bad["label"]) == ("good", "bad")
    assert good["mean"]["halo"] == 0.0  # the band inside the edge is blue: dark
    assert bad["mean"]["halo"] > 1.0  # the band lies on the white background
    for name in ("pixel_accuracy", "iou", "mae", "boundary_f", "halo"):
        comparison = result["comparison"][name]
        assert (comparison["a_better"], comparison["b_better"]) == (COUNT, 0), name
        assert comparison["better"] == "A"
        assert comparison["p_value"] == pytest.approx(2 / 2**COUNT)
    assert result["verdict"]["metric"] == "pixel_accuracy"
    assert result["verdict"]["better"] == "A"
    assert (good["mean"]["flicker"], bad["mean"]["flicker"]) == (None, None)  # no animation
    assert result["comparison"]["flicker"]["images"] == 0
    assert result["comparison"]["flicker"]["better"] is None
    assert json.loads((report / "report.json").read_text()) == result

    markdown = (report / "report.md").read_text()
    summary = {line.split("|")[1].strip(): line for line in markdown.splitlines() if "|" in line}
    for row in ("Pixel accuracy ↑", "IoU ↑", "MAE ↓", "Boundary F ↑", "Halo ↓"):
        assert summary[row].rstrip().endswith("| **good** |"), summary[row]
    assert summary["Flicker ↓"].rstrip().endswith("| n/a |"), summary["Flicker ↓"]
    assert "![Contact sheet](contact-sheet.png)" in markdown
    with Image.open(report / "chart.png") as chart:
        assert chart.format == "PNG"
    with Image.open(report / "contact-sheet.png") as sheet:
        # image, ground truth, A and B in 192-px cells; every image differs, up to 8 rows.
        assert sheet.width == 4 * 192
        assert sheet.height > COUNT * 192


def test_ab_verdict_never_prefers_a_pixel_accuracy_above_one(tmp_path: Path) -> None:
    """Both sources miss a small disc badly: `near/` by a disc of radius 15 (PA about 1.9),
    `far/` by one of radius 16 (PA about 4.4, more wrong pixels). The higher PA is the worse
    mask, so MAE decides, on the terminal and in the report."""
    for index in range(COUNT):
        save(tmp_path / "gt" / f"img{index}.png", disc(6))
        save(tmp_path / "near" / f"img{index}.png", disc(15))
        save(tmp_path / "far" / f"img{index}.png", disc(16))
    args = ["--gt", str(tmp_path / "gt"), "--pred", str(tmp_path / "near")]
    args += ["--pred", str(tmp_path / "far"), "--report", str(tmp_path / "report")]

    printed = run_toonq("eval", *args, env=ENV)
    assert printed.returncode == 0, printed.stderr
    assert "Verdict: A (near) is better by MAE" in printed.stdout
    assert "Caution: Pixel accuracy does not rank" in printed.stdout
    summary = {
        line.split("|")[1].strip(): line for line in printed.stdout.splitlines() if "|" in line
    }
    assert summary["Pixel accuracy ↑"].rstrip().endswith("| not comparable |")

    result = eval_json(*args)
    near, far = (source["mean"]["pixel_accuracy"] for source in result["sources"])
    assert 1 < near < far
    assert result["verdict"]["metric"] == "mae"
    assert result["verdict"]["better"] == "A"
    assert result["verdict"]["pixel_accuracy_unranked"] == [f"img{i}" for i in range(COUNT)]
    assert result["comparison"]["pixel_accuracy"]["better"] is None
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "**Verdict:** A (near) is better by MAE" in markdown
    assert "**Caution:** Pixel accuracy does not rank" in markdown


def test_ab_report_scores_the_flicker_of_animated_predictions(tmp_path: Path) -> None:
    """`anim` is a 3-frame GIF of a moving square (its ground truth the first frame's mask),
    `still` a still. `steady/` follows the square exactly; so does `jittery/`, whose alpha also
    moves on pixels that stay white: a 4×4 corner goes 0 -> 30 -> 0 (16 px by 30 levels in each
    pair of frames) and 8 more pixels go 0 -> 5 in the last frame. Over the 2240 static pixels
    of each of the 2 pairs, that is (16·30 + 16·30 + 8·5) / (2·2240). Both match every ground
    truth, so the verdict names neither: flicker does not decide it."""
    frames = [moving_square(index) for index in range(3)]
    save_animation(tmp_path / "im" / "anim.gif", [on_white(mask) for mask in frames])
    save(tmp_path / "gt" / "anim.png", frames[0])
    save_animation(tmp_path / "steady" / "anim.png", [cut_out(mask) for mask in frames])
    jittery = [mask.copy() for mask in frames]
    jittery[1][:4, :4] = 30
    jittery[2][40:42, :4] = 5
    save_animation(tmp_path / "jittery" / "anim.png", [cut_out(mask) for mask in jittery])
    for folder in ("gt", "steady", "jittery"):
        save(tmp_path / folder / "still.png", disc(10))
    save(tmp_path / "im" / "still.png", on_white(disc(10)))
    args = ["--gt", str(tmp_path / "gt"), "--images", str(tmp_path / "im")]
    args += ["--pred", str(tmp_path / "steady"), "--pred", str(tmp_path / "jittery")]
    args += ["--report", str(tmp_path / "report")]
    expected = (16 * 30 + 16 * 30 + 8 * 5) / (2 * 2240)

    result = eval_json(*args)

    steady, jittery_result = result["sources"]
    for source, flicker in ((steady, 0.0), (jittery_result, expected)):
        images = {item["name"]: item for item in source["images"]}
        assert images["anim"]["flicker"] == pytest.approx(flicker)
        assert images["anim"]["pixel_accuracy"] == 1.0  # the first frame is the ground truth
        assert images["still"]["flicker"] is None
        assert source["mean"]["flicker"] == pytest.approx(flicker)  # over the animated image
    flicker = result["comparison"]["flicker"]
    assert (flicker["images"], flicker["a_better"], flicker["b_better"]) == (1, 1, 0)
    assert flicker["mean_difference"] == pytest.approx(expected)
    assert flicker["better"] == "A"
    assert result["verdict"]["metric"] == "pixel_accuracy"
    assert result["verdict"]["better"] is None

    markdown = (tmp_path / "report" / "report.md").read_text()
    summary = {line.split("|")[1].strip(): line for line in markdown.splitlines() if "|" in line}
    assert f"| 0.0000 | {expected:.4f} |" in summary["Flicker ↓"]
    assert summary["Flicker ↓"].rstrip().endswith("| steady |")
    assert "Flicker A | Flicker B" in markdown  # the per-image table
    printed = run_toonq("eval", *args, env=ENV)
    assert printed.returncode == 0, printed.stderr
    assert any(
        line.startswith("| Flicker ↓ | 0.0000 | 0.2232 |") and line.endswith("| steady |")
        for line in printed.stdout.splitlines()
    ), printed.stdout


def test_animated_ground_truth_is_scored_frame_by_frame(tmp_path: Path) -> None:
    """With an animated ground truth, each frame is scored against its own, and the scores
    averaged. The prediction loses the square in the middle frame (PA (1 - 16/64)² there: the
    8×8 miss erodes to 4×4; IoU 0; MAE 64/2304). That also flickers: the 32 pixels the square
    covers in two consecutive frames stay blue, and their alpha goes 255 -> 0 -> 255."""
    frames = [moving_square(index) for index in range(3)]
    save_animation(tmp_path / "im" / "anim.gif", [on_white(mask) for mask in frames])
    save_animation(tmp_path / "gt" / "anim.gif", frames)
    lost = [frames[0], np.zeros_like(frames[1]), frames[2]]
    save_animation(tmp_path / "pred" / "anim.png", [cut_out(mask) for mask in lost])

    result = eval_json(
        "--gt",
        str(tmp_path / "gt"),
        "--images",
        str(tmp_path / "im"),
        "--pred",
        str(tmp_path / "pred"),
    )

    (scores,) = result["images"]
    assert scores["pixel_accuracy"] == pytest.approx((1 + 0.75**2 + 1) / 3)
    assert scores["iou"] == pytest.approx(2 / 3)
    assert scores["mae"] == pytest.approx(64 / SIZE**2 / 3)
    assert scores["flicker"] == pytest.approx(2 * 32 * 255 / (2 * 2240))


def test_runs_a_model_on_the_images(dataset: Path) -> None:
    # One thread: on a few shared cores, CPU inference with more thrashes.
    env = dict(ENV, TOONQ_RESOLUTION="64", OMP_NUM_THREADS="1")
    result = run_json(
        "eval",
        "--gt",
        str(dataset / "gt"),
        "--images",
        str(dataset / "im"),
        "--model",
        "random:tiny",
        env=env,
    )

    assert result["source"] == "model random:tiny"
    assert len(result["images"]) == COUNT
    for item in result["images"]:
        assert item["pixel_accuracy"] >= 0
        assert 0 <= item["iou"] <= 1
        assert 0 <= item["mae"] <= 1
        assert item["halo"] is not None  # the images are there
    assert set(result["mean"]) == {"pixel_accuracy", "iou", "mae", "boundary_f", "halo", "flicker"}


def test_a_model_mattes_every_frame_of_an_animation(tmp_path: Path) -> None:
    """Temporal smoothing (on by default, as in the worker) gives a pixel one alpha over each
    run of frames where its input holds still: no flicker at all. Without it each frame is
    matted alone, and the moving square changes the model's view of the still pixels too."""
    frames = [moving_square(index) for index in range(3)]
    save_animation(tmp_path / "im" / "anim.gif", [on_white(mask) for mask in frames])
    save(tmp_path / "gt" / "anim.png", frames[0])
    env = dict(ENV, TOONQ_RESOLUTION="64", OMP_NUM_THREADS="1")
    args = ["eval", "--gt", str(tmp_path / "gt"), "--images", str(tmp_path / "im")]
    args += ["--model", "random:tiny"]

    smoothed = run_json(*args, env=env)
    unsmoothed = run_json(*args, "--no-temporal-smoothing", env=env)

    assert smoothed["images"][0]["flicker"] == 0.0
    assert smoothed["mean"]["flicker"] == 0.0
    assert unsmoothed["images"][0]["flicker"] > 0
    for result in (smoothed, unsmoothed):
        assert 0 <= result["images"][0]["mae"] <= 1


def test_empty_ground_truth_fails_unless_allowed(dataset: Path) -> None:
    save(dataset / "gt" / "img3.png", np.full((SIZE, SIZE), 128, np.uint8))
    args = ("eval", "--gt", str(dataset / "gt"), "--pred", str(dataset / "good"))

    failed = run_toonq(*args, env=ENV)
    assert failed.returncode == 1
    assert "error [empty_ground_truth]" in failed.stderr
    assert "img3.png" in failed.stderr

    result = run_json(*args, "--allow-empty-gt", env=ENV)
    images = {item["name"]: item for item in result["images"]}
    assert images["img3"]["pixel_accuracy"] is None
    assert result["mean"]["pixel_accuracy"] == pytest.approx(1.0)  # over the other five


@pytest.mark.parametrize(
    ("breakage", "code", "detail"),
    [
        ("missing_folder", "dataset_not_found", "does not exist"),
        ("other_stems", "unmatched_files", "no file stem"),
        ("missing_prediction", "unmatched_files", "img4"),
        ("unreadable", "unreadable_image", "img2.png"),
        ("size_mismatch", "image_size_mismatch", "img1"),
        ("frame_count", "frame_count_mismatch", "img2"),
    ],
)
def test_bad_inputs_fail_with_a_typed_error(
    dataset: Path, breakage: str, code: str, detail: str
) -> None:
    pred, images = dataset / "good", dataset / "im"
    if breakage == "missing_folder":
        pred = dataset / "nowhere"
    elif breakage == "other_stems":
        pred = dataset / "renamed"
        save(pred / "other.png", disc(5))
    elif breakage == "missing_prediction":
        (pred / "img4.png").unlink()
    elif breakage == "unreadable":
        (pred / "img2.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    elif breakage == "frame_count":
        save_animation(pred / "img2.png", [disc(10), disc(11)])  # for a still input
    else:
        save(images / "img1.png", np.zeros((SIZE, SIZE + 1, 3), np.uint8))

    result = run_toonq(
        "eval",
        "--gt",
        str(dataset / "gt"),
        "--pred",
        str(pred),
        "--images",
        str(images),
        env=ENV,
    )

    assert result.returncode == 1, result.stdout
    assert f"error [{code}]" in result.stderr
    assert detail in result.stderr


def test_usage_errors(dataset: Path) -> None:
    gt = str(dataset / "gt")
    no_images = run_toonq("eval", "--gt", gt, "--model", "random:tiny", env=ENV)
    assert no_images.returncode == 2
    assert "--images" in no_images.stderr
    report_alone = run_toonq(
        "eval", "--gt", gt, "--pred", str(dataset / "good"), "--report", "r", env=ENV
    )
    assert report_alone.returncode == 2
    smoothing_folders = run_toonq(
        "eval", "--gt", gt, "--pred", str(dataset / "good"), "--no-temporal-smoothing", env=ENV
    )
    assert smoothing_folders.returncode == 2
    assert "--model" in smoothing_folders.stderr
