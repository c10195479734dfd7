"""What a benchmark run is asked to do, what each section gives back, and the report files.

A run writes `report-<UTC timestamp>.json` and `.md` side by side. The JSON holds the machine,
every section's data under its name, and, when the pipeline section ran, its efficiency ratios
again at the top level (`pipeline_efficiency`, keyed by image size in megapixels), where
scripts and reviewers look first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

#: Where reports go unless told otherwise (git-ignored with the rest of `.toonq/`).
DEFAULT_OUT_DIR: Final = Path(".toonq/bench")

#: The pipeline section's data key whose value is copied to the report's top level.
PIPELINE_EFFICIENCY: Final = "pipeline_efficiency"


@dataclass(frozen=True)
class BenchOptions:
    """What to measure. `None` means the device's default, chosen by each section."""

    device: str = "auto"
    #: Weights to time (`random:PRESET` costs the same as real weights of that architecture).
    model: str | None = None
    resolution: int | None = None
    precisions: Sequence[str] | None = None
    batch_sizes: Sequence[int] | None = None
    #: `torch.compile` settings to time: False (eager), True (compiled), or both.
    compile: Sequence[bool] | None = None
    #: Timed runs per case; each figure is their median, after one warm-up run.
    repeat: int = 5
    #: Small sizes and one run per case: checks that everything runs, in seconds.
    quick: bool = False
    out_dir: Path = DEFAULT_OUT_DIR


@dataclass(frozen=True)
class Section:
    """One part of the report."""

    name: str
    title: str
    #: JSON-able figures, under the section's name in the JSON report.
    data: Mapping[str, Any]
    #: The section's part of the Markdown report (tables and notes).
    markdown: str
    #: A few lines for the terminal while the run goes on.
    summary: str = field(default="")


def write_report(
    sections: Sequence[Section],
    machine: Mapping[str, Any],
    *,
    out_dir: Path = DEFAULT_OUT_DIR,
    title: str = "toonq benchmark",
    top_level: Mapping[str, Any] | None = None,
) -> Path:
    """Write the JSON and Markdown reports into `out_dir`; returns the JSON report's path.
    `top_level` adds keys to the JSON report's top level, before the machine."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
    report: dict[str, Any] = {
        **(top_level or {}),
        "machine": dict(machine),
        "sections": {section.name: section.data for section in sections},
    }
    for section in sections:
        if PIPELINE_EFFICIENCY in section.data:
            report[PIPELINE_EFFICIENCY] = section.data[PIPELINE_EFFICIENCY]
    json_path = out_dir / f"report-{stamp}.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    json_path.with_suffix(".md").write_text(_markdown(sections, machine, f"{title}, {stamp}"))
    return json_path


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; numbers are right-aligned."""
    numeric = [bool(rows) and all(_is_number(row[i]) for row in rows) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join("---:" if right else "---" for right in numeric) + "|",
    ]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def percent(share: float | None) -> str:
    """A share (0 to 1) as a table cell: `87%`, or empty where it was not measured."""
    return "" if share is None else f"{share:.0%}"


def describe_machine_line(machine: Mapping[str, Any]) -> str:
    """One line naming the machine: the accelerator if any, then the CPU."""
    cpu = f"{machine['cpu']} ({machine['cpu_count']} cores, {machine['memory_gib']} GiB)"
    gpu = machine.get("cuda_device")
    where = f"{gpu} (capability {machine['cuda_capability']}); CPU {cpu}" if gpu else f"CPU {cpu}"
    return f"machine: {where}; torch {machine['torch']}"


def _markdown(sections: Sequence[Section], machine: Mapping[str, Any], heading: str) -> str:
    parts = [
        f"# {heading}",
        describe_machine_line(machine),
        markdown_table(["", ""], [(key, value) for key, value in machine.items()]),
    ]
    parts += [f"## {section.title}\n\n{section.markdown}" for section in sections]
    return "\n\n".join(parts) + "\n"


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value).replace("|", "\\|")
