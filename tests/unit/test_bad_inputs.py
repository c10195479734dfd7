"""Every odd or hostile input ends in the right output or the right typed error: through the
decoder, through the matting engine and under a memory cap (`tests/system/test_bad_inputs_worker.py`
sends the same files through a real worker process).

The inputs and their expected outcomes are in `tests/image_corpus.py`.
"""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.image_corpus import CORPUS, MAX_PIXELS, Decoded, Item, corpus_item
from tests.support import matte_batch, matte_one
from toonq.shared.job import JobParams
from toonq.worker.engine.decode import decode_image, image_to_array
from toonq.worker.engine.matting import MatteResult, MattingEngine
from toonq.worker.engine.weights import load_model

WAIT_S = 120


def _ids(items: list[Item]) -> list[str]:
    return [item.name for item in items]


def _assert_pixels(actual: np.ndarray, expected: Decoded) -> None:
    assert actual.shape == expected.pixels.shape
    difference = np.abs(actual.astype(int) - expected.pixels.astype(int)).max()
    assert difference <= expected.tolerance


# --- The decoder ----------------------------------------------------------------------------------


@pytest.mark.parametrize("item", CORPUS, ids=_ids(CORPUS))
def test_decode_gives_the_expected_pixels_or_typed_error(item: Item) -> None:
    if isinstance(item.expected, Decoded):
        image = decode_image(item.data, max_pixels=MAX_PIXELS)
        assert (image.mode, image.size) == ("RGBA", item.expected.size)
        _assert_pixels(image_to_array(image), item.expected)
    else:
        with pytest.raises(item.expected) as raised:
            decode_image(item.data, max_pixels=MAX_PIXELS)
        assert type(raised.value) is item.expected


# --- The engine -----------------------------------------------------------------------------------

DECODABLE = [item for item in CORPUS if isinstance(item.expected, Decoded)]
REFUSED = [item for item in CORPUS if not isinstance(item.expected, Decoded)]
EXTREME_SIZES = ["wide-20000x2.png", "tall-2x20000.png", "one-pixel.png"]
PARAMS = JobParams(bg_color="#808080", format="png", resolution=64)


@pytest.fixture(scope="module")
def engine() -> MattingEngine:
    return MattingEngine(load_model("random:tiny"), device="cpu", resolution=PARAMS.resolution)


@pytest.fixture(scope="module")
def cutouts(engine: MattingEngine) -> dict[str, MatteResult]:
    """Every decodable item matted in one batch (CPU inference is slow), keyed by name."""
    images = [engine.decode(item.data) for item in DECODABLE]
    results = matte_batch(engine, images, PARAMS)
    return {item.name: result for item, result in zip(DECODABLE, results, strict=True)}


@pytest.mark.parametrize("item", REFUSED, ids=_ids(REFUSED))
def test_the_engine_raises_the_typed_error(engine: MattingEngine, item: Item) -> None:
    assert not isinstance(item.expected, Decoded)
    with pytest.raises(item.expected) as raised:
        matte_one(engine, item.data, PARAMS)
    assert type(raised.value) is item.expected


@pytest.mark.parametrize("item", DECODABLE, ids=_ids(DECODABLE))
def test_the_engine_mattes_every_decodable_image(
    cutouts: dict[str, MatteResult], item: Item
) -> None:
    assert isinstance(item.expected, Decoded)
    result = cutouts[item.name]
    output = Image.open(io.BytesIO(result.data))
    assert (output.format, output.mode, output.size) == ("PNG", "RGBA", item.expected.size)
    assert (result.width, result.height) == item.expected.size
    # The cut-out carries the decoded colours wherever it is not fully transparent.
    pixels = np.asarray(output).astype(int)
    visible = pixels[..., 3] > 0
    expected_rgb = item.expected.pixels[..., :3].astype(int)
    difference = np.abs(pixels[..., :3][visible] - expected_rgb[visible]).max(initial=0)
    assert difference <= item.expected.tolerance


def test_extreme_sizes_give_masks_of_their_size(engine: MattingEngine) -> None:
    items = [corpus_item(name) for name in EXTREME_SIZES]
    images = [engine.decode(item.data) for item in items]

    results = matte_batch(engine, images, replace(PARAMS, mask_only=True))

    for item, result in zip(items, results, strict=True):
        assert isinstance(item.expected, Decoded)
        mask = Image.open(io.BytesIO(result.data))
        assert (mask.mode, mask.size) == ("L", item.expected.size), item.name


# --- Decompression bombs under a memory cap -------------------------------------------------------

# Decodes stdin under an address-space cap of what the process maps already plus argv[2] bytes,
# and prints the outcome (an error code, "MemoryError" or "decoded") and the seconds it took.
_CAPPED_DECODE = """
import resource, sys, time
from toonq.worker.engine.decode import decode_image

data = sys.stdin.buffer.read()
with open("/proc/self/status") as status:
    mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
resource.setrlimit(resource.RLIMIT_AS, (mapped + int(sys.argv[2]), hard))
start = time.perf_counter()
try:
    decode_image(data, max_pixels=int(sys.argv[1]))
    outcome = "decoded"
except MemoryError:
    outcome = "MemoryError"
except Exception as exc:
    outcome = getattr(exc, "code", type(exc).__name__)
print(outcome, time.perf_counter() - start)
"""
HEADROOM_BYTES = 128 << 20


def _capped_decode(data: bytes, max_pixels: int) -> tuple[str, float]:
    result = subprocess.run(
        [sys.executable, "-c", _CAPPED_DECODE, str(max_pixels), str(HEADROOM_BYTES)],
        input=data,
        capture_output=True,
        timeout=60,
        check=True,
    )
    outcome, seconds = result.stdout.decode().split()
    return outcome, float(seconds)


linux_only = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads the mapped size from Linux's /proc"
)


@linux_only
@pytest.mark.parametrize("name", ["bomb-100000x100000.png", "bomb-8000x7000.png"])
def test_bombs_are_refused_fast_before_any_pixel_is_allocated(name: str) -> None:
    outcome, seconds = _capped_decode(corpus_item(name).data, MAX_PIXELS)

    assert outcome == "image_too_large"
    assert seconds < 1.0


@linux_only
def test_the_memory_cap_would_stop_decoding_the_bomb() -> None:
    # The control for the test above: without the pixel limit, the 8000x7000 file (55 KB)
    # needs more memory than the cap allows.
    outcome, _ = _capped_decode(corpus_item("bomb-8000x7000.png").data, 10**9)

    assert outcome == "MemoryError"
