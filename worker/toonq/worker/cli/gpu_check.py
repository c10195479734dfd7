"""`toonq gpu-check` (and `make gpu-check`): check and time toonq on this machine's CUDA GPU.

Without a CUDA device it prints `skipped: no CUDA device` and exits 0, writing no report. With
`--device cpu --quick` it runs every part at tiny sizes on the CPU instead, in seconds: a check
that the check works.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import click
import torch

from toonq.worker.bench.birefnet_dev import FIXTURE_DIR
from toonq.worker.bench.gpu_check.context import CheckContext, Deadline
from toonq.worker.bench.gpu_check.plan import DEFAULT_OUT_DIR, FULL, QUICK, TIME_LIMIT_S
from toonq.worker.bench.gpu_check.runner import failed, run_check
from toonq.worker.bench.machine import describe_machine
from toonq.worker.bench.report import describe_machine_line, write_report
from toonq.worker.engine.device import resolve_device

NO_CUDA: str = "skipped: no CUDA device"


@click.command("gpu-check")
@click.option(
    "--device",
    default="auto",
    show_default=True,
    help="auto or cuda[:N]; cpu (with --quick only) runs every part on the CPU.",
)
@click.option(
    "--quick", is_flag=True, help="Tiny sizes (random:tiny at 32x32): checks that every part runs."
)
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_OUT_DIR,
    show_default=True,
    help="Where the reports go.",
)
@click.option(
    "--time-limit",
    "time_limit_s",
    type=click.FloatRange(min=0),
    default=TIME_LIMIT_S,
    show_default=True,
    help="Seconds for the whole check: what would run past it is skipped, and says so.",
)
@click.option(
    "--fixture",
    "fixture_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=FIXTURE_DIR,
    show_default=True,
    help="The birefnet-dev fixture's folder.",
)
def gpu_check(
    device: str, quick: bool, out_dir: Path, time_limit_s: float, fixture_dir: Path
) -> None:
    """Check toonq on a CUDA GPU: the fixture against the CPU reference, fp16/bf16 against fp32,
    images/s by precision x batch x torch.compile, an out-of-memory split, and jobs/s through a
    worker process.

    Prints each part as it finishes and last the line `report: PATH`; exits 1 if a part failed.
    """
    if not device.startswith("cpu") and not torch.cuda.is_available():
        click.echo(NO_CUDA)
        return
    resolved = resolve_device(device)
    if resolved.type == "cpu" and not quick:
        raise click.UsageError("--device cpu needs --quick: ToonOut takes minutes an image there")
    sizes = QUICK if quick else FULL
    started = time.monotonic()
    ctx = CheckContext(resolved, sizes, Deadline(time_limit_s), fixture_dir)
    machine = describe_machine()
    click.echo(describe_machine_line(machine))
    sections = run_check(ctx, echo=click.echo)
    check = {
        "device": str(resolved),
        "quick": quick,
        "time_limit_s": time_limit_s,
        "seconds": round(time.monotonic() - started, 1),
        "sizes": asdict(sizes),
        "failed": failed(sections),
    }
    path = write_report(
        sections, machine, out_dir=out_dir, title="toonq gpu-check", top_level={"check": check}
    )
    click.echo(f"\nreport: {path}")
    if check["failed"]:
        raise SystemExit(1)
