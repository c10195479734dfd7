"""`toonq matte` in-process: what it refuses before loading a model (through click's runner,
with weights that do not exist, so that reaching the model would fail otherwise), and the
worker's pipeline over files on a tiny random model."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import torch
from click.testing import CliRunner, Result
from PIL import Image

from tests.support import matte_one
from toonq.producer.cli.main import cli
from toonq.shared.job import JobParams
from toonq.worker.cli.matte_files import matte_files
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import load_model
from toonq.worker.pipeline import Pipeline

RESOLUTION = 64
PARAMS = JobParams(bg_color="#808080", format="png", resolution=RESOLUTION)


def picture(size: tuple[int, int], seed: int) -> bytes:
    """Random colours under a half-transparent, half-opaque alpha: each seed a different mask."""
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    pixels[:, : size[0] // 2, 3] = 0
    pixels[:, size[0] // 2 :, 3] = 255
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


# --- Refused before the model loads ---------------------------------------------------------------


@pytest.fixture
def source(tmp_path: Path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(picture((40, 30), seed=0))
    return path


def matte(source: Path, *args: str) -> Result:
    missing_model = str(source.parent / "missing.pth")
    return CliRunner().invoke(cli, ["matte", str(source), "--model", missing_model, *args])


def test_the_missing_model_is_what_fails_when_the_arguments_are_good(
    source: Path, tmp_path: Path
) -> None:
    result = matte(source, "--out", str(tmp_path / "out"), "--device", "cpu")

    assert result.exit_code == 1
    assert "error [model_unavailable]" in result.output


@pytest.mark.parametrize("resolution", ["100", "-32", "0"])
def test_a_bad_resolution_is_refused_as_submit_refuses_it(
    source: Path, tmp_path: Path, resolution: str
) -> None:
    out = tmp_path / "out"
    result = matte(source, "--out", str(out), "--device", "cpu", "--resolution", resolution)

    assert result.exit_code == 1
    assert (
        "error [invalid_request]: resolution must be a positive multiple of 32 up to 4096, "
        f"got {resolution}"
    ) in result.output
    assert "Traceback" not in result.output
    assert not out.exists()


def test_a_refined_mask_is_refused_as_submit_refuses_it(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = matte(
        source, "--out", str(out), "--device", "cpu", "--mask-only", "--refine-foreground"
    )

    assert result.exit_code == 1
    assert (
        "error [invalid_request]: refine_foreground estimates the cut-out's colours and a mask "
        "has none: ask for mask_only or refine_foreground, not both"
    ) in result.output
    assert not out.exists()


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (("--preset", "line", "--format", "webp"), "preset 'line' takes format png only"),
        (("--trim", "--margin", "1025"), "margin must be a whole number of pixels from 0 to 1024"),
        (("--margin", "4"), "margin 4 is kept around the trimmed subject"),
        (("--mask-only", "--shadow"), "a mask has no colours to outline or shade"),
    ],
)
def test_sticker_options_are_refused_as_submit_refuses_them(
    source: Path, tmp_path: Path, options: tuple[str, ...], message: str
) -> None:
    out = tmp_path / "out"
    result = matte(source, "--out", str(out), "--device", "cpu", *options)

    assert result.exit_code == 1
    assert f"error [invalid_request]: {message}" in result.output
    assert not out.exists()


def test_sticker_options_that_agree_reach_the_model(source: Path, tmp_path: Path) -> None:
    sticker = [
        *("--preset", "telegram", "--trim", "--margin", "8", "--outline", "4", "--shadow"),
        "--no-temporal-smoothing",
    ]
    result = matte(source, "--out", str(tmp_path / "out"), "--device", "cpu", *sticker)

    assert result.exit_code == 1
    assert "error [model_unavailable]" in result.output


def test_an_output_folder_that_is_a_file_is_a_usage_error(source: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")

    for out in (taken, taken / "sub"):
        result = matte(source, "--out", str(out), "--device", "cpu")

        assert result.exit_code == 2, result.output
        assert "Invalid value for '--out'" in result.output
    assert taken.read_text() == "not a folder"


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_refused_before_the_model_loads(source: Path, tmp_path: Path) -> None:
    result = matte(source, "--out", str(tmp_path / "out"), "--device", "cuda")

    assert result.exit_code == 1
    assert "error [configuration_error]: device 'cuda' requested but CUDA is not available" in (
        result.output
    )


# --- The pipeline over files ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine() -> MattingEngine:
    return MattingEngine(
        load_model("random:tiny"), device="cpu", resolution=RESOLUTION, max_image_pixels=20_000
    )


def matte_on_tiny_model(source: Path, out: Path, *args: str) -> Result:
    """`toonq matte SOURCE --out OUT ARGS` on the tiny random model, on the CPU."""
    model = ["--model", "random:tiny", "--resolution", str(RESOLUTION), "--device", "cpu"]
    return CliRunner().invoke(cli, ["matte", str(source), "--out", str(out), *model, *args])


def test_a_mask_asked_as_webp_is_written_as_webp(source: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = matte_on_tiny_model(source, out, "--mask-only", "--format", "webp")

    assert result.exit_code == 0, result.output
    assert [path.name for path in out.iterdir()] == ["cat.webp"]
    mask = Image.open(out / "cat.webp")
    assert (mask.format, mask.size) == ("WEBP", (40, 30))
    channels = np.asarray(mask.convert("RGB"))
    assert (channels == channels[..., :1]).all()  # grey: each channel holds the mask


@pytest.mark.parametrize("mask_only", [False, True], ids=["cutout", "mask"])
def test_respect_input_alpha_keeps_transparent_input_transparent(
    tmp_path: Path, mask_only: bool
) -> None:
    # Transparent on the left, a gradient in the middle, opaque on the right.
    pixels = np.random.default_rng(1).integers(0, 256, (30, 60, 4), dtype=np.uint8)
    pixels[..., 3] = np.linspace(-255, 510, 60).clip(0, 255).astype(np.uint8)  # each row
    source = tmp_path / "sticker.png"
    Image.fromarray(pixels, "RGBA").save(source)
    input_alpha = pixels[..., 3]

    def output_alpha(*args: str) -> npt.NDArray[np.uint8]:
        out = tmp_path / "-".join(("out", *args))
        result = matte_on_tiny_model(source, out, *(["--mask-only"] if mask_only else []), *args)
        assert result.exit_code == 0, result.output
        assert "1/1 succeeded" in result.stdout
        written = np.asarray(Image.open(out / "sticker.png"))
        return written if mask_only else written[..., 3]

    predicted, capped = output_alpha(), output_alpha("--respect-input-alpha")

    assert predicted[input_alpha == 0].max() > 0  # the model's alpha alone is not zero there
    np.testing.assert_array_equal(capped, np.minimum(predicted, input_alpha))
    assert (capped[input_alpha == 0] == 0).all()


def test_each_file_gets_its_own_cutout_and_bad_files_do_not_stop_the_others(
    engine: MattingEngine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    good = {f"p{seed}": picture((30 + 7 * seed, 50 - 3 * seed), seed) for seed in range(9)}
    for stem, data in good.items():
        (inputs / f"{stem}.png").write_bytes(data)
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (inputs / "huge.png").write_bytes(picture((200, 150), seed=99))  # over max_image_pixels
    (inputs / "p0.jpg").write_bytes(good["p0"])  # the output name p0.png is taken
    files = [*sorted(inputs.glob("*.png")), inputs / "p0.jpg"]
    out = tmp_path / "out"
    out.mkdir()
    # Fewer threads than files and batches of up to 2: threads are reused, batches formed.
    pipeline = Pipeline(concurrency=3, max_batch_size=2, max_wait_s=0.01, cpu_workers=2)

    failures = matte_files(engine, files, out, PARAMS, pipeline=pipeline)

    assert failures == 3
    errors = capsys.readouterr().err
    assert f"{inputs / 'broken.png'}: error [invalid_image]" in errors
    assert f"{inputs / 'huge.png'}: error [image_too_large]" in errors
    assert (
        f"{inputs / 'p0.jpg'}: error: output {out / 'p0.png'} would overwrite the cut-out of "
        f"{inputs / 'p0.png'}"
    ) in errors
    assert sorted(path.stem for path in out.iterdir()) == sorted(good)
    for stem, data in good.items():
        written = np.asarray(Image.open(out / f"{stem}.png"))
        alone = np.asarray(Image.open(io.BytesIO(matte_one(engine, data, PARAMS).data)))
        assert written.shape == alone.shape
        # The file's own mask, whatever batch it ran in (batching moves it by at most 1).
        assert np.abs(written.astype(int) - alone.astype(int)).max() <= 1
