"""The benchmark harness measures what it says, on a tiny model (not a speed test)."""

from __future__ import annotations

from toonq.worker.bench import Bench
from toonq.worker.engine.matting import MatteOptions, MattingEngine
from toonq.worker.engine.weights import load_model


def test_bench_reports_every_group_relative_to_its_baseline() -> None:
    engine = MattingEngine(load_model("random:tiny"), device="cpu", resolution=64)
    bench = Bench(engine, image_size=(96, 64), repeat=1)

    bench.codecs()
    bench.processing()
    bench.model(["fp32", "bf16"], [1, 2])
    stages = bench.end_to_end(MatteOptions())

    groups: dict[str, list[float]] = {}
    for measurement in bench.results:
        groups.setdefault(measurement.group, []).append(measurement.ratio)
        assert measurement.ms_per_image > 0
    assert set(groups) == {"decode", "encode", "processing", "model forward 64x64"}
    assert all(ratios[0] == 1.0 for ratios in groups.values())
    assert len(groups["model forward 64x64"]) == 4
    assert set(stages) == {"decode", "preprocess", "inference", "postprocess", "encode"}
    # The engine's own model is untouched by the per-precision copies.
    assert next(engine.model.parameters()).dtype == engine.dtype
