"""`toonq matte` on files and folders, and `toonq demo` on the embedded defaults: real CLI
processes on a tiny model."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest
from PIL import Image

from tests.image_corpus import png
from tests.support import png_bytes, run_toonq
from toonq.worker.engine.weights import random_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("model") / "tiny"
    random_model("tiny").save_pretrained(path)
    return str(path)


def matte(*args: str, tiny_model: str) -> tuple[int, str]:
    env = dict(os.environ, TOONQ_LOG_FORMAT="json")
    result = run_toonq(
        "matte", *args, "--model", tiny_model, "--resolution", "64", "--device", "cpu", env=env
    )
    return result.returncode, result.stdout + result.stderr


def test_matte_writes_one_cutout_per_input_and_reports_bad_files(
    tiny_model: str, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    (inputs / "nested").mkdir(parents=True)
    (inputs / "a.png").write_bytes(png_bytes((64, 48)))
    buffer = io.BytesIO()
    Image.new("CMYK", (30, 20), (10, 20, 30, 0)).save(buffer, "JPEG")
    (inputs / "nested" / "b.jpg").write_bytes(buffer.getvalue())
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    out = tmp_path / "out"

    code, output = matte(str(inputs), "--out", str(out), "--batch-size", "2", tiny_model=tiny_model)

    assert code == 1  # one input failed
    assert "broken.png" in output
    assert "invalid_image" in output
    assert "2/3 succeeded" in output
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
    for name, size in (("a.png", (64, 48)), ("b.png", (30, 20))):
        image = Image.open(out / name)
        assert (image.mode, image.size) == ("RGBA", size)


def test_images_with_too_many_pixels_get_one_message_naming_the_limit(
    tiny_model: str, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    inputs.mkdir()
    # Headers alone: over twice Pillow's own threshold (where it refuses), and over it (where it
    # warns), both over the default TOONQ_MAX_IMAGE_PIXELS.
    (inputs / "huge.png").write_bytes(png(100_000, 100_000))
    (inputs / "big.png").write_bytes(png(10_000, 10_000))

    code, output = matte(str(inputs), "--out", str(tmp_path / "out"), tiny_model=tiny_model)

    assert code == 1
    for size in ("100000x100000 = 10000000000", "10000x10000 = 100000000"):
        assert f"the image is {size} pixels, over the limit of 50000000 pixels" in output
    assert output.count("image_too_large") == 2
    assert "Warning" not in output
    assert "0/2 succeeded" in output


def test_matte_mask_only_and_webp(tiny_model: str, tmp_path: Path) -> None:
    source = tmp_path / "pic.png"
    source.write_bytes(png_bytes((40, 30)))

    code, output = matte(
        str(source), "--out", str(tmp_path / "m"), "--mask-only", tiny_model=tiny_model
    )
    assert code == 0, output
    mask = Image.open(tmp_path / "m" / "pic.png")
    assert (mask.mode, mask.size) == ("L", (40, 30))

    code, output = matte(
        str(source), "--out", str(tmp_path / "w"), "--format", "webp", tiny_model=tiny_model
    )
    assert code == 0, output
    assert Image.open(tmp_path / "w" / "pic.webp").format == "WEBP"


def embedded_env(home: Path, model: str) -> dict[str, str]:
    """No TOONQ_* configuration but these: the embedded defaults."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("TOONQ_")}
    return env | {
        "TOONQ_HOME": str(home),
        "TOONQ_MODEL": model,
        "TOONQ_RESOLUTION": "64",
        "TOONQ_DEVICE": "cpu",
    }


def test_demo_runs_end_to_end_on_the_embedded_defaults(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "home", "random:tiny")
    result = run_toonq("demo", "--images", "3", env=env, timeout=300)

    assert result.returncode == 0, result.stdout + result.stderr
    assert "3/3 succeeded" in result.stdout
    outputs = sorted((tmp_path / "home" / "outputs").glob("*.png"))
    assert len(outputs) == 3
    assert all(Image.open(path).mode == "RGBA" for path in outputs)
    assert (tmp_path / "home" / "toonq.db").is_file()  # SQLite, no server


def test_demo_without_its_model_fails_before_submitting_anything(tmp_path: Path) -> None:
    env = embedded_env(tmp_path / "home", str(tmp_path / "missing.pth"))
    result = run_toonq("demo", env=env, timeout=120)

    assert result.returncode == 1
    assert result.stdout == ""  # what went wrong is a message: on stderr
    assert "error [model_unavailable]" in result.stderr
    assert run_toonq("jobs", "--json", env=env).stdout.strip() == "[]"
