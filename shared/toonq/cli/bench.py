"""`toonq bench` (and `make bench`): engine benchmarks on this machine's device."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import click

from toonq.cli.context import Context, needs_engine, pass_context


def _csv(kind: type, value: str) -> list:  # type: ignore[type-arg]
    return [kind(v) for v in value.split(",") if v]


@click.command()
@click.option("--model", "model_spec", default="random:tiny", show_default=True)
@click.option("--resolution", type=int, default=1024, show_default=True)
@click.option("--device", default="auto", show_default=True)
@click.option("--precisions", help="Comma-separated [default: fp32 on CPU; fp16,bf16 on GPU].")
@click.option("--batch-sizes", default="1,2", show_default=True)
@click.option("--image-size", default="1024x1024", show_default=True, help="WxH of the sample.")
@click.option("--repeat", type=click.IntRange(1), default=3, show_default=True)
@click.option("--json-out", type=click.Path(path_type=Path), help="Also write the figures here.")
@pass_context
@needs_engine
def bench(
    ctx: Context,
    model_spec: str,
    resolution: int,
    device: str,
    precisions: str | None,
    batch_sizes: str,
    image_size: str,
    repeat: int,
    json_out: Path | None,
) -> None:
    """Time codecs, processing, and the model per precision and batch size."""
    import torch

    from toonq.worker.bench import Bench
    from toonq.worker.engine.matting import MatteOptions, MattingEngine
    from toonq.worker.engine.weights import load_model

    loaded = load_model(model_spec)
    engine = MattingEngine(loaded, device=device, precision="fp32", resolution=resolution)
    width, height = (int(v) for v in image_size.lower().split("x"))
    on_gpu = engine.device.type == "cuda"
    card = torch.cuda.get_device_name(engine.device) if on_gpu else platform.processor() or "cpu"
    click.echo(f"device: {card}; model {loaded.name}; torch {torch.__version__}")
    if not on_gpu:
        click.echo("CPU run: compare ratios within this run; absolute times are not GPU figures.")
    bench_ = Bench(engine, image_size=(width, height), repeat=repeat)
    bench_.codecs()
    bench_.processing()
    # Half precision on a CPU runs tens of times slower than fp32: not worth timing there.
    default_precisions = "fp16,bf16" if on_gpu else "fp32"
    bench_.model(_csv(str, precisions or default_precisions), _csv(int, batch_sizes))
    stages = bench_.end_to_end(MatteOptions())
    group = None
    for m in bench_.results:
        if m.group != group:
            group = m.group
            click.echo(f"\n{group}")
        click.echo(
            f"  {m.name:<34} {m.ms_per_image:>10.2f} ms/img  x{m.ratio:<7.3f}"
            f" {m.images_per_s:>8.2f} img/s"
        )
    click.echo(f"\nengine.matte, one {width}x{height} PNG, fp32, per stage (ms):")
    click.echo("  " + "  ".join(f"{k} {v}" for k, v in stages.items()))
    if json_out:
        json_out.write_text(
            json.dumps(
                {
                    "device": card,
                    "model": loaded.name,
                    "resolution": resolution,
                    "results": [m.to_dict() for m in bench_.results],
                    "matte_stages_ms": stages,
                },
                indent=2,
            )
        )
