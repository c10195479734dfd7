"""The worker's commands: `toonq worker`, `toonq matte` and `toonq model`."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from toonq.producer.cli.context import Context, pass_context
from toonq.producer.cli.params import job_param_option, job_params_options
from toonq.shared.choices import IMAGE_SUFFIXES, PRECISIONS
from toonq.shared.errors import ConfigurationError
from toonq.shared.job import JobParams
from toonq.shared.storage import open_store
from toonq.worker.allocator import keep_freed_memory
from toonq.worker.birefnet import PRESETS
from toonq.worker.cli.matte_files import matte_files
from toonq.worker.engine.device import resolve_device
from toonq.worker.engine.matting import MattingEngine
from toonq.worker.engine.weights import load_model, random_model
from toonq.worker.gpu import pin_gpu
from toonq.worker.main import run_worker
from toonq.worker.pipeline import Pipeline

model_option = click.option(
    "--model",
    "model_spec",
    help="Weights: file, save_pretrained dir, s3:// URI, hub id org/name[@rev] or random:PRESET "
    "[default: TOONQ_MODEL or joelseytre/toonout].",
)
device_option = click.option("--device", help="auto, cpu, cuda or cuda:N [default: TOONQ_DEVICE].")
precision_option = click.option(
    "--precision",
    type=click.Choice(PRECISIONS),
    help="[default: TOONQ_PRECISION or auto: fp16 on GPU, fp32 on CPU].",
)
resolution_option = job_param_option("resolution")


@click.command()
@click.option("--gpu", type=click.IntRange(min=0), help="Pin this process to GPU N.")
@device_option
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    help="Jobs in flight [default: TOONQ_CONCURRENCY, or 4 x the batch size + 2].",
)
@pass_context
def worker(ctx: Context, gpu: int | None, device: str | None, concurrency: int | None) -> None:
    """Run a GPU worker: load the model, warm it up, then process jobs until SIGTERM.

    A worker asked for a GPU (--gpu N, or the device cuda or cuda:N) that it cannot use exits at
    once, before loading the model; a CPU worker runs with --device cpu (or auto).
    """
    target = _worker_device(gpu, device or ctx.settings.device)
    if gpu is not None:
        pin_gpu(gpu)
    try:
        resolve_device(target)
    except ConfigurationError as exc:
        raise ConfigurationError(f"--gpu {gpu}: {exc}" if gpu is not None else str(exc)) from None
    run_worker(replace(ctx.settings, device=target), gpu=gpu, concurrency=concurrency)


def _worker_device(gpu: int | None, device: str) -> str:
    """The device a worker runs on: with --gpu, the GPU it is pinned to (then `cuda:0`), which
    `auto` must not quietly replace by the CPU when the GPU cannot be used."""
    if gpu is None:
        return device
    if device == "auto":
        return "cuda"
    if device == "cpu":
        raise ConfigurationError(
            f"--gpu {gpu} pins a GPU but the device is cpu: drop --gpu for a CPU worker"
        )
    return device


@click.command()
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder the cut-outs are written to, created if missing.",
)
@model_option
@device_option
@precision_option
@job_params_options
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    help="Most images per model batch [default: TOONQ_MAX_BATCH_SIZE, else 8 on a GPU, 1 on "
    "a CPU]. As in a worker, 4 x this + 2 files are in flight (TOONQ_CONCURRENCY overrides).",
)
@pass_context
def matte(
    ctx: Context,
    inputs: tuple[Path, ...],
    out_dir: Path,
    model_spec: str | None,
    device: str | None,
    precision: str | None,
    job_options: dict[str, Any],
    batch_size: int | None,
) -> None:
    """Remove the backgrounds of image files (or folders of them) into OUT.

    Writes OUT/<stem>.png (or .webp), through the worker's pipeline: files are read, decoded
    and written in threads while the model runs on batches of them. A bad file is reported
    with its error code and skipped; the exit status is 1 if any file failed.
    """
    # Everything that can be refused is checked before the model loads.
    params = JobParams.with_defaults(ctx.settings, **job_options)
    _create_folder(out_dir)
    files = _expand(inputs)
    keep_freed_memory()
    engine = build_engine(ctx, model_spec, device, precision, params.resolution)
    pipeline = Pipeline.for_device(ctx.settings, engine, max_batch_size=batch_size)
    failures = matte_files(engine, files, out_dir, params, pipeline=pipeline)
    click.echo(f"{len(files) - failures}/{len(files)} succeeded; outputs in {out_dir}")
    if failures:
        raise SystemExit(1)


def _create_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.BadParameter(
            f"cannot create {out_dir}: {exc.strerror or exc}", param_hint="'--out'"
        ) from None


def _expand(inputs: tuple[Path, ...]) -> list[Path]:
    files: list[Path] = []
    for path in inputs:
        if path.is_dir():
            files.extend(sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES))
        else:
            files.append(path)
    return files


def build_engine(
    ctx: Context,
    model_spec: str | None,
    device: str | None,
    precision: str | None,
    resolution: int,
) -> MattingEngine:
    """The engine of `toonq matte` and `toonq eval`. The device is checked before the weights
    load, which can take minutes."""
    settings = ctx.settings
    target = resolve_device(device or settings.device)
    spec = model_spec or settings.model
    store = open_store(settings) if spec.startswith("s3://") else None
    return MattingEngine(
        load_model(spec, store=store),
        device=str(target),
        precision=precision or settings.precision,
        resolution=resolution,
        max_image_pixels=settings.max_image_pixels,
        max_frames=settings.max_frames,
        max_animation_s=settings.max_animation_s,
        png_compress_level=settings.png_compress_level,
    )


@click.group()
def model() -> None:
    """Manage model weights."""


@model.command("random")
@click.option("--preset", type=click.Choice(sorted(PRESETS)), required=True)
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path))
def model_random(preset: str, out_dir: Path) -> None:
    """Write a RANDOMLY initialised model directory, to smoke-test deployments."""
    random_model(preset).save_pretrained(out_dir)
    banner = "!" * 78
    click.secho(banner, fg="yellow", err=True)
    click.secho(
        f"  RANDOM WEIGHTS: {out_dir} holds an untrained {preset} model.\n"
        "  Its masks are noise. Use it only to smoke-test a deployment, never for real jobs.",
        fg="yellow",
        err=True,
    )
    click.secho(banner, fg="yellow", err=True)
    click.echo(str(out_dir))


@model.command("fetch")
@model_option
@pass_context
def model_fetch(ctx: Context, model_spec: str | None) -> None:
    """Download and verify the weights now (e.g. while building an image), then load them once."""
    spec = model_spec or ctx.settings.model
    store = open_store(ctx.settings) if spec.startswith("s3://") else None
    loaded = load_model(spec, store=store)
    click.echo(f"{loaded.name} revision {loaded.revision or '-'}: ready")
