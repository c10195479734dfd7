"""Runs the parts of the check in turn and keeps going when one fails: on a machine lent for a
few minutes, one broken part must not cost the others' figures.

The parts run in `RUN_ORDER`: the throughput grid last, since it takes whatever time is left
(case by case), and the end-to-end part's ratio is filled in from it afterwards. The report
lists them in `REPORT_ORDER`.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

from toonq.worker.bench.gpu_check import (
    end_to_end,
    fixture,
    model_speed,
    oom,
    overlap,
    precision,
)
from toonq.worker.bench.gpu_check.context import CheckContext, describe_error, skipped
from toonq.worker.bench.report import Section


@dataclass(frozen=True)
class Part:
    name: str
    title: str
    run: Callable[[CheckContext], Section]


PARTS: Final = {
    part.name: part
    for part in (
        Part(fixture.NAME, fixture.TITLE, fixture.run),
        Part(precision.NAME, precision.TITLE, precision.run),
        Part(model_speed.NAME, model_speed.TITLE, model_speed.run),
        Part(oom.NAME, oom.TITLE, oom.run),
        Part(overlap.NAME, overlap.TITLE, overlap.run),
        Part(end_to_end.NAME, end_to_end.TITLE, end_to_end.run),
    )
}
REPORT_ORDER: Final = tuple(PARTS)
RUN_ORDER: Final = (
    fixture.NAME,
    precision.NAME,
    oom.NAME,
    overlap.NAME,
    end_to_end.NAME,
    model_speed.NAME,
)
#: Lines of a failed part's traceback kept in the report (a worker's failure ends with the end
#: of its log).
_TRACEBACK_LINES: Final = 30


def run_check(ctx: CheckContext, *, echo: Callable[[str], None]) -> list[Section]:
    """Every part, in the report's order; `echo` shows each one as it finishes."""
    done: dict[str, Section] = {}
    for name in RUN_ORDER:
        echo(f"\n== {name} ==")
        started = time.monotonic()
        section = _run_part(PARTS[name], ctx)
        seconds = round(time.monotonic() - started, 1)
        section = replace(section, data=dict(section.data) | {"seconds": seconds})
        echo(section.markdown)
        done[name] = section
    done[end_to_end.NAME] = end_to_end.with_model_ratio(done[end_to_end.NAME], ctx)
    sections = [done[name] for name in REPORT_ORDER]
    echo("\n== summary ==")
    for section in sections:
        echo(f"{section.name}: {section.summary}")
    return sections


def failed(sections: list[Section]) -> list[str]:
    """The names of the parts that failed."""
    return [section.name for section in sections if section.data.get("status") == "failed"]


def _run_part(part: Part, ctx: CheckContext) -> Section:
    if ctx.deadline.passed:
        return skipped(part.name, part.title, "time limit reached")
    try:
        return part.run(ctx)
    except Exception as exc:  # the report says what broke; the other parts still run
        error = describe_error(exc)
        lines = traceback.format_exc().splitlines()[-_TRACEBACK_LINES:]
        data = {"status": "failed", "error": error, "traceback": lines}
        return Section(part.name, part.title, data, f"FAILED: {error}", f"FAILED: {error}")
    finally:
        ctx.release_memory()
