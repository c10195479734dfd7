"""`toonq bench`: what this machine sustains, section by section, written to a JSON report.

Each section is a function `run(BenchOptions) -> Section`, registered in `SECTIONS` in the order
the report shows them. Figures are medians of timed runs after a warm-up; on a CPU, compare the
ratios within one run: absolute times mean something only on the machine the report names.
"""

from __future__ import annotations

from collections.abc import Callable

from toonq.worker.bench import animation, model, pipeline, queue_overhead, scaling, stages
from toonq.worker.bench.report import BenchOptions, Section

SECTIONS: dict[str, Callable[[BenchOptions], Section]] = {
    "model": model.run,
    "pipeline": pipeline.run,
    "stages": stages.run,
    "animation": animation.run,
    "queue": queue_overhead.run,
    "scaling": scaling.run,
}

__all__ = ["SECTIONS", "BenchOptions", "Section"]
