"""`toonq bench` (and `make bench`): measure this machine, write a JSON and a Markdown report."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import click

from toonq.worker.allocator import keep_freed_memory
from toonq.worker.bench import SECTIONS
from toonq.worker.bench.machine import describe_machine
from toonq.worker.bench.report import BenchOptions, describe_machine_line, write_report

T = TypeVar("T")


def _csv(
    kind: Callable[[str], T],
) -> Callable[[click.Context, click.Parameter, str | None], list[T] | None]:
    def parse(_: click.Context, param: click.Parameter, value: str | None) -> list[T] | None:
        if value is None:
            return None
        try:
            return [kind(item.strip()) for item in value.split(",") if item.strip()]
        except ValueError as exc:
            raise click.BadParameter(str(exc), param=param) from None

    return parse


def _on_off(value: str) -> bool:
    if value not in ("on", "off"):
        raise ValueError(f"expected on or off, got {value!r}")
    return value == "on"


@click.command()
@click.option(
    "--sections",
    callback=_csv(str),
    help="Comma-separated sections to run, in their order [default: all].",
)
@click.option("--quick", is_flag=True, help="Small sizes, one run per case: a check, not figures.")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=".toonq/bench",
    show_default=True,
    help="Where the reports go.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option(
    "--model",
    "model_spec",
    help="Weights to time [default: random:toonout on a GPU, random:tiny on a CPU].",
)
@click.option("--resolution", type=int, help="Model input size [default: 1024].")
@click.option(
    "--precisions", callback=_csv(str), help="[default: fp16,bf16,fp32 on a GPU; fp32 on a CPU]."
)
@click.option(
    "--batch-sizes", callback=_csv(int), help="[default: 1,2,4,8,16 on a GPU; 1,2 on a CPU]."
)
@click.option(
    "--compile",
    "compile_",
    callback=_csv(_on_off),
    help="torch.compile: on, off [default: off,on on a GPU; off on a CPU].",
)
@click.option("--repeat", type=click.IntRange(1), default=5, show_default=True)
def bench(
    sections: list[str] | None,
    quick: bool,
    out_dir: Path,
    device: str,
    model_spec: str | None,
    resolution: int | None,
    precisions: list[str] | None,
    batch_sizes: list[int] | None,
    compile_: list[bool] | None,
    repeat: int,
) -> None:
    """Measure model throughput, pipeline efficiency, per-stage CPU cost, animated inputs, queue
    overhead and scaling.

    Prints the machine, each section as it finishes, and last the line `report: PATH`.
    """
    names = sections or list(SECTIONS)
    unknown = [name for name in names if name not in SECTIONS]
    if unknown:
        raise click.BadParameter(
            f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}",
            param_hint="--sections",
        )
    options = BenchOptions(
        device=device,
        model=model_spec,
        resolution=resolution,
        precisions=precisions,
        batch_sizes=batch_sizes,
        compile=compile_,
        repeat=repeat,
        quick=quick,
        out_dir=out_dir,
    )
    keep_freed_memory()  # as a worker does: the stages are timed as a worker runs them
    machine = describe_machine()
    click.echo(describe_machine_line(machine))
    done = []
    for name in names:
        click.echo(f"\n== {name} ==")
        section = SECTIONS[name](options)
        click.echo(section.markdown)
        done.append(section)
    path = write_report(done, machine, out_dir=out_dir)
    click.echo(f"\nreport: {path}")
