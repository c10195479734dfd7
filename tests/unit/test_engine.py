"""The matting engine end to end in-process, on a tiny random model at a small resolution."""

from __future__ import annotations

import io
from dataclasses import replace

import numpy as np
import numpy.typing as npt
import pytest
import torch
from PIL import Image

from tests.support import matte_one
from toonq.shared.errors import ImageTooLargeError, InvalidImageError
from toonq.shared.job import JobParams
from toonq.worker.engine.compositing import _swap_bg_to_gray
from toonq.worker.engine.matting import MattingEngine, batch_bucket
from toonq.worker.engine.transforms import to_model_input
from toonq.worker.engine.weights import load_model

RESOLUTION = 64
PARAMS = JobParams(bg_color="#808080", format="png", resolution=RESOLUTION)


@pytest.fixture(scope="module")
def engine() -> MattingEngine:
    return MattingEngine(load_model("random:tiny"), device="cpu", resolution=RESOLUTION)


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


def sticker(size: tuple[int, int] = (90, 70)) -> Image.Image:
    """Random colours under a half-transparent, half-opaque alpha."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8)
    pixels[:, : size[0] // 2, 3] = 0
    pixels[:, size[0] // 2 :, 3] = 255
    return Image.fromarray(pixels, "RGBA")


def decode(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def test_cutout_has_the_input_size_and_keeps_the_original_colours(engine: MattingEngine) -> None:
    source = sticker()
    result = matte_one(engine, encode(source), PARAMS)

    output = decode(result.data)
    assert (output.mode, output.size) == ("RGBA", source.size)
    assert (result.width, result.height, result.content_type) == (90, 70, "image/png")
    out, src = np.asarray(output), np.asarray(source)
    visible = out[..., 3] > 0
    assert visible.any()
    # The cut-out carries the input's own RGB, never the gray composite the model saw.
    np.testing.assert_array_equal(out[..., :3][visible], src[..., :3][visible])
    assert set(result.timings_ms) == {"decode", "preprocess", "inference", "postprocess", "encode"}


def test_mask_only_writes_an_8bit_mask_of_the_input_size(engine: MattingEngine) -> None:
    result = matte_one(engine, encode(sticker((33, 47))), replace(PARAMS, mask_only=True))
    mask = decode(result.data)
    assert (mask.mode, mask.size, result.content_type) == ("L", (33, 47), "image/png")


def test_a_mask_is_written_in_the_format_asked_for(engine: MattingEngine) -> None:
    source = encode(sticker((33, 47)))
    png = decode(matte_one(engine, source, replace(PARAMS, mask_only=True)).data)
    result = matte_one(engine, source, replace(PARAMS, mask_only=True, format="webp"))
    webp = decode(result.data)
    assert (webp.format, webp.size, result.content_type) == ("WEBP", (33, 47), "image/webp")
    np.testing.assert_array_equal(np.asarray(webp.convert("L")), np.asarray(png))


def test_webp_output_is_lossless(engine: MattingEngine) -> None:
    source = sticker()
    png = decode(matte_one(engine, encode(source), PARAMS).data)
    webp = decode(matte_one(engine, encode(source), replace(PARAMS, format="webp")).data)
    assert webp.format == "WEBP"
    np.testing.assert_array_equal(np.asarray(webp.convert("RGBA")), np.asarray(png))


def alphas(
    engine: MattingEngine, images: list[Image.Image], bg_colors: list[str]
) -> list[torch.Tensor]:
    """The alpha mattes of `images`, run as one batch, each composited onto its colour."""
    prepared = [
        engine.prepare(image, replace(PARAMS, bg_color=color))
        for image, color in zip(images, bg_colors, strict=True)
    ]
    logits = engine.infer(prepared)
    return [engine.alpha(item, logit) for item, logit in zip(prepared, logits, strict=True)]


def test_the_background_colour_reaches_the_model(engine: MattingEngine) -> None:
    transparent = sticker()
    gray, white = alphas(engine, [transparent, transparent], ["#808080", "#ffffff"])
    assert not torch.equal(gray, white)
    # An opaque image has nothing to composite: the colour changes nothing.
    opaque = sticker().convert("RGB").convert("RGBA")
    gray, white = alphas(engine, [opaque, opaque], ["#808080", "#ffffff"])
    assert torch.equal(gray, white)


@pytest.mark.parametrize(
    "size", [(90, 70), (RESOLUTION, RESOLUTION)], ids=["resized", "model-size"]
)
def test_the_model_sees_the_composite_resized_and_normalised(
    engine: MattingEngine, size: tuple[int, int]
) -> None:
    source = sticker(size)
    options = replace(PARAMS, bg_color="#ff0037")
    prepared = engine.prepare(encode(source), options)
    rgba = torch.from_numpy(np.array(source)).permute(2, 0, 1).unsqueeze(0)
    expected = to_model_input(_swap_bg_to_gray(rgba, (255, 0, 55)), RESOLUTION)
    assert torch.equal(prepared.model_input, expected)


def test_finishing_twice_gives_the_same_cutout(engine: MattingEngine) -> None:
    source = sticker()
    before = np.array(source)
    prepared = engine.prepare(source, PARAMS)
    (logits,) = engine.infer([prepared])
    first, second = engine.finish(prepared, logits), engine.finish(prepared, logits)
    assert first.data == second.data
    np.testing.assert_array_equal(np.asarray(decode(first.data))[..., :3], before[..., :3])
    np.testing.assert_array_equal(np.array(source), before)  # the caller's image is untouched


def test_a_batch_gives_the_masks_of_one_by_one(engine: MattingEngine) -> None:
    images = [sticker((90, 70)), sticker((40, 64))]
    together = alphas(engine, images, ["#808080"] * 2)
    alone = [alphas(engine, [image], ["#808080"])[0] for image in images]
    for batched, single in zip(together, alone, strict=True):
        assert batched.shape == single.shape
        assert (batched.int() - single.int()).abs().max() <= 1


def test_refine_foreground_changes_only_the_colours(engine: MattingEngine) -> None:
    source = encode(sticker())
    plain = np.asarray(decode(matte_one(engine, source, PARAMS).data))
    refined = np.asarray(
        decode(matte_one(engine, source, replace(PARAMS, refine_foreground=True)).data)
    )
    np.testing.assert_array_equal(refined[..., 3], plain[..., 3])
    assert not np.array_equal(refined[..., :3], plain[..., :3])


def feathered(size: tuple[int, int] = (90, 70)) -> Image.Image:
    """A sticker whose alpha also has every level in between: a transparent left third, a
    gradient, an opaque right third."""
    pixels = np.array(sticker(size))
    third = size[0] // 3
    pixels[:, :third, 3] = 0
    pixels[:, third : 2 * third, 3] = np.linspace(1, 254, third, dtype=np.uint8)
    pixels[:, 2 * third :, 3] = 255
    return Image.fromarray(pixels, "RGBA")


def predicted_alpha(engine: MattingEngine, source: bytes) -> npt.NDArray[np.uint8]:
    """The model's own alpha for `source`, before anything caps it."""
    prepared = engine.prepare(source, PARAMS)
    (logits,) = engine.infer([prepared])
    return engine.alpha(prepared, logits).numpy()


@pytest.mark.parametrize("mask_only", [False, True], ids=["cutout", "mask"])
def test_respect_input_alpha_caps_the_output_alpha_at_the_inputs(
    engine: MattingEngine, mask_only: bool
) -> None:
    source = feathered()
    data, input_alpha = encode(source), np.asarray(source)[..., 3]
    predicted = predicted_alpha(engine, data)
    # What the flag is for: the model finds some subject where the input is transparent.
    assert predicted[input_alpha == 0].max() > 0

    def output_alpha(respect_input_alpha: bool) -> npt.NDArray[np.uint8]:
        options = replace(PARAMS, mask_only=mask_only, respect_input_alpha=respect_input_alpha)
        output = np.asarray(decode(matte_one(engine, data, options).data))
        return output if mask_only else output[..., 3]

    np.testing.assert_array_equal(output_alpha(False), predicted)
    capped = output_alpha(True)
    np.testing.assert_array_equal(capped, np.minimum(predicted, input_alpha))
    assert (capped[input_alpha == 0] == 0).all()
    assert (capped <= input_alpha).all()


def test_respect_input_alpha_changes_nothing_for_an_opaque_input(engine: MattingEngine) -> None:
    opaque = encode(sticker().convert("RGB"))
    respected = replace(PARAMS, respect_input_alpha=True)
    assert matte_one(engine, opaque, respected).data == matte_one(engine, opaque, PARAMS).data


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_half_precisions_run_on_cpu(precision: str) -> None:
    try:
        engine = MattingEngine(
            load_model("random:tiny"), device="cpu", precision=precision, resolution=RESOLUTION
        )
        result = matte_one(engine, encode(sticker()), replace(PARAMS, mask_only=True))
    except RuntimeError as exc:
        if "not implemented for" not in str(exc):  # only a missing CPU kernel is a skip
            raise
        pytest.skip(f"{precision} unsupported on this CPU: {exc}")
    assert decode(result.data).size == (90, 70)


def test_bad_inputs_raise_typed_errors(engine: MattingEngine) -> None:
    with pytest.raises(InvalidImageError):
        matte_one(engine, b"", PARAMS)
    with pytest.raises(InvalidImageError):
        matte_one(engine, encode(sticker())[:50], PARAMS)
    small = MattingEngine(
        load_model("random:tiny"), device="cpu", resolution=RESOLUTION, max_image_pixels=1000
    )
    with pytest.raises(ImageTooLargeError):
        matte_one(small, encode(sticker()), PARAMS)


def test_resolution_must_be_a_multiple_of_32() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        MattingEngine(load_model("random:tiny"), device="cpu", resolution=100)


def test_the_gpu_loop_steps_give_what_infer_gives(engine: MattingEngine) -> None:
    source = encode(sticker())
    prepared = engine.prepare(source, PARAMS)
    (logits,) = engine.run_batch(engine.stack_batch([prepared.model_input]))
    staged = engine.finish(prepared, logits)
    assert staged.data == matte_one(engine, source, PARAMS).data
    assert {"decode", "preprocess", "postprocess", "encode"} <= staged.timings_ms.keys()


@pytest.mark.parametrize(("count", "bucket"), [(1, 1), (2, 2), (3, 4), (5, 8), (8, 8), (9, 16)])
def test_compiled_batches_are_padded_to_powers_of_two(count: int, bucket: int) -> None:
    assert batch_bucket(count) == bucket


def test_a_job_at_another_resolution_never_reaches_the_compiled_model() -> None:
    """Compiled, only batches at the engine's resolution reach the compiled graphs: a job at
    another one runs the eager model, pads nothing and compiles nothing (compiling for real
    takes minutes on a CPU, so nothing here runs at the engine's resolution)."""
    from torch._dynamo.utils import counters

    compiled = MattingEngine(
        load_model("random:tiny"), device="cpu", resolution=RESOLUTION, compile_mode="default"
    )
    frames_before = counters["frames"]["total"]
    other = replace(PARAMS, resolution=2 * RESOLUTION)
    inputs = [compiled.prepare(encode(sticker()), other).model_input for _ in range(3)]

    stacked = compiled.stack_batch(inputs)
    logits = compiled.run_batch(stacked)

    assert (stacked.tensor.shape[0], len(logits)) == (3, 3)  # not padded to 4
    assert compiled.compiled_shapes == frozenset()
    assert counters["frames"]["total"] == frames_before
    at_its_resolution = compiled.prepare(encode(sticker()), PARAMS).model_input
    assert compiled.stack_batch([at_its_resolution] * 3).tensor.shape[0] == 4
