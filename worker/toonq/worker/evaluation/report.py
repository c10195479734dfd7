"""Human-readable results: Markdown score tables, and the A/B report folder.

An A/B report is four files: `report.md` (sources, a summary with the paired comparison, and
per-image scores), `chart.png` (per-image scores of A against B, one panel per metric),
`contact-sheet.png` (the images where the two predictions differ most: image, ground truth,
A, B) and `report.json` (what `toonq eval --json` prints).
"""

from __future__ import annotations

import heapq
import itertools
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageOps

from toonq.worker.evaluation.comparison import PairedComparison, Verdict
from toonq.worker.evaluation.dataset import EvalDataset
from toonq.worker.evaluation.metrics import METRICS, Mask, MetricInfo
from toonq.worker.evaluation.runner import Sample, SourceResult

CONTACT_SHEET_ROWS: Final = 8
#: The caution names this many images at most (all are in report.json).
CAUTION_NAMES: Final = 10
_CELL: Final = 192  # contact-sheet thumbnail box, pixels
_CAPTION: Final = 22  # height of the text strip above each contact-sheet row
_BACKGROUND: Final = (255, 255, 255)
_PANEL: Final = (236, 236, 236)


@dataclass(frozen=True)
class ReportFiles:
    markdown: Path
    chart: Path
    contact_sheet: Path
    json: Path

    def to_dict(self) -> dict[str, str]:
        return {
            "markdown": str(self.markdown),
            "chart": str(self.chart),
            "contact_sheet": str(self.contact_sheet),
            "json": str(self.json),
        }


def scores_table(result: SourceResult) -> str:
    """Per-image scores of one source, with a mean row, as a Markdown table."""
    header = ["image", *(_heading(metric) for metric in METRICS)]
    rows = [
        [name, *(_number(scores.as_dict()[m.name]) for m in METRICS)]
        for name, scores in result.scores.items()
    ]
    means = result.means()
    rows.append(["**mean**", *(_number(means[m.name]) for m in METRICS)])
    return _table(header, rows, numeric_columns=range(1, len(header)))


def summary_table(
    a: SourceResult, b: SourceResult, comparisons: dict[str, PairedComparison]
) -> str:
    """Means of A and B and their paired comparison, one row per metric."""
    header = [
        "metric",
        f"A: {a.label}",
        f"B: {b.label}",
        "B − A",
        "A better",
        "B better",
        "ties",
        "sign test p",
        "better",
    ]
    means_a, means_b = a.means(), b.means()
    rows = []
    for metric in METRICS:
        comparison = comparisons[metric.name]
        winner = {"A": a.label, "B": b.label, None: "tie"}[comparison.better]
        if comparison.better and comparison.p_value < 0.05:
            winner = f"**{winner}**"
        rows.append(
            [
                _heading(metric),
                _number(means_a[metric.name]),
                _number(means_b[metric.name]),
                _number(comparison.mean_difference, signed=True),
                str(comparison.a_better),
                str(comparison.b_better),
                str(comparison.ties),
                f"{comparison.p_value:.3g}",
                _winner_cell(comparison, winner),
            ]
        )
    return _table(header, rows, numeric_columns=range(1, len(header) - 1))


def verdict_text(a: SourceResult, b: SourceResult, verdict: Verdict) -> list[str]:
    """The verdict as lines for the terminal and the report: which source is better, by which
    metric and why that one, then the Pixel Accuracy caveat where it applies."""
    decided_by = verdict.decided_by
    if verdict.better is None:
        outcome = f"neither is better by {decided_by.metric.title}"
    else:
        label = a.label if verdict.better == "A" else b.label
        outcome = (
            f"{verdict.better} ({label}) is better by {decided_by.metric.title} "
            f"(sign test p = {decided_by.p_value:.3g})"
        )
    lines = [f"Verdict: {outcome}. {verdict.reason}"]
    if verdict.pixel_accuracy.unranked:
        lines.append(
            "Caution: Pixel accuracy does not rank "
            f"{_names(verdict.pixel_accuracy.unranked)}. ToonOut squares "
            "1 - wrong / foreground, which is negative when more pixels are wrong than the "
            "ground truth has foreground: there a higher score means a worse mask (above 1 "
            "past twice the foreground), so its means and win counts do not rank the models."
        )
    return lines


class ContactSheet:
    """Collects, while the evaluation runs, the images where predictions A and B differ most
    (mean |A − B| over the mask), as thumbnails; `render` draws them one row each."""

    def __init__(self, labels: tuple[str, str], rows: int = CONTACT_SHEET_ROWS) -> None:
        self.labels = labels
        self.rows = rows
        self._order = itertools.count()  # breaks ties between equal differences
        self._kept: list[tuple[float, int, _SheetRow]] = []  # min-heap on the difference
        self._with_images = False

    def __call__(self, sample: Sample) -> None:
        pred_a, pred_b = sample.predictions
        difference = float(np.mean(np.abs(pred_a.astype(np.int16) - pred_b))) / 255.0
        if len(self._kept) == self.rows and difference <= self._kept[0][0]:
            return
        image = None
        if sample.rgb is not None:
            image = _thumbnail(Image.fromarray(np.ascontiguousarray(sample.rgb)))
        self._with_images = image is not None
        pa_a, pa_b = (scores.pixel_accuracy for scores in sample.scores)
        row = _SheetRow(
            caption=f"{sample.name}   mean |A - B| {difference:.4f}   "
            f"PA {_number(pa_a)} vs {_number(pa_b)}",
            cells=[
                *([image] if image is not None else []),
                _mask_thumbnail(sample.gt),
                _mask_thumbnail(pred_a),
                _mask_thumbnail(pred_b),
            ],
        )
        entry = (difference, next(self._order), row)
        if len(self._kept) < self.rows:
            heapq.heappush(self._kept, entry)
        else:
            heapq.heapreplace(self._kept, entry)

    def render(self, path: Path) -> None:
        titles = [
            *(["image"] if self._with_images else []),
            "ground truth",
            f"A: {self.labels[0]}",
            f"B: {self.labels[1]}",
        ]
        rows = [row for *_, row in sorted(self._kept, key=lambda e: (-e[0], e[1]))]
        sheet = Image.new(
            "RGB",
            (len(titles) * _CELL, _CAPTION + len(rows) * (_CAPTION + _CELL)),
            _BACKGROUND,
        )
        draw = ImageDraw.Draw(sheet)
        font = ImageFont.load_default(size=14)
        for column, title in enumerate(titles):
            draw.text((column * _CELL + 6, 4), title, fill=(0, 0, 0), font=font)
        for index, row in enumerate(rows):
            top = _CAPTION + index * (_CAPTION + _CELL)
            draw.text((6, top + 4), row.caption, fill=(60, 60, 60), font=font)
            for column, cell in enumerate(row.cells):
                sheet.paste(cell, (column * _CELL, top + _CAPTION))
        sheet.save(path)


def write_ab_report(
    out_dir: Path,
    dataset: EvalDataset,
    results: tuple[SourceResult, SourceResult],
    comparisons: dict[str, PairedComparison],
    verdict: Verdict,
    contact_sheet: ContactSheet,
) -> ReportFiles:
    """Write the A/B report files into `out_dir` (created if needed; files are replaced)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = ReportFiles(
        markdown=out_dir / "report.md",
        chart=out_dir / "chart.png",
        contact_sheet=out_dir / "contact-sheet.png",
        json=out_dir / "report.json",
    )
    write_chart(files.chart, *results)
    contact_sheet.render(files.contact_sheet)
    markdown = _markdown(dataset, results, comparisons, verdict, files)
    files.markdown.write_text(markdown, encoding="utf-8")
    payload = ab_payload(results, comparisons, verdict, files)
    files.json.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return files


def ab_payload(
    results: Sequence[SourceResult],
    comparisons: dict[str, PairedComparison],
    verdict: Verdict,
    files: ReportFiles,
) -> dict[str, Any]:
    """The A/B results as JSON-ready data (`toonq eval --json` and report.json)."""
    return {
        "sources": [result.to_dict() for result in results],
        "comparison": {name: comparison.to_dict() for name, comparison in comparisons.items()},
        "verdict": verdict.to_dict(),
        "report": files.to_dict(),
    }


def write_chart(path: Path, a: SourceResult, b: SourceResult) -> None:
    """Per-image scores of B against A, one scatter panel per metric, with the diagonal."""
    # The object-oriented API renders with Agg and leaves pyplot's global state alone.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(4.2 * len(METRICS), 4.6), layout="constrained")
    axes = figure.subplots(1, len(METRICS))
    for ax, metric in zip(axes, METRICS, strict=True):
        pairs = [
            (a_value, b_value)
            for name, scores in a.scores.items()
            if name in b.scores
            and (a_value := scores.as_dict()[metric.name]) is not None
            and (b_value := b.scores[name].as_dict()[metric.name]) is not None
        ]
        direction = "higher" if metric.higher_is_better else "lower"
        above = "B" if metric.higher_is_better else "A"
        ax.set_title(f"{metric.title} ({direction} is better)\nabove the diagonal: {above} better")
        if not pairs:
            ax.text(0.5, 0.5, "not computed", ha="center", va="center", transform=ax.transAxes)
            ax.set_axis_off()
            continue
        xs, ys = zip(*pairs, strict=True)
        low, high = min(*xs, *ys), max(*xs, *ys)
        margin = (high - low) * 0.05 or 0.01
        limits = (low - margin, high + margin)
        ax.plot(limits, limits, "--", color="grey", linewidth=1)
        ax.scatter(xs, ys, s=16, alpha=0.7)
        ax.set_xlim(limits)
        ax.set_ylim(limits)
        ax.set_aspect("equal")
        ax.set_xlabel(f"A: {a.label}")
        ax.set_ylabel(f"B: {b.label}")
    figure.suptitle(f"Per-image scores, A: {a.label} vs B: {b.label}")
    figure.savefig(path, dpi=100)


def _markdown(
    dataset: EvalDataset,
    results: tuple[SourceResult, SourceResult],
    comparisons: dict[str, PairedComparison],
    verdict: Verdict,
    files: ReportFiles,
) -> str:
    a, b = results
    images = (
        f"`{dataset.images_dir}`"
        if dataset.images_dir is not None
        else "not given, so halo is not computed"
    )
    per_image_header = ["image"]
    for metric in METRICS:
        per_image_header += [f"{metric.title} A", f"{metric.title} B"]
    per_image_rows = []
    for name in a.scores:
        score_a, score_b = a.scores[name].as_dict(), b.scores[name].as_dict()
        cells = [[_number(score_a[m.name]), _number(score_b[m.name])] for m in METRICS]
        per_image_rows.append([name, *itertools.chain.from_iterable(cells)])
    return "\n".join(
        [
            f"# Evaluation: A = {a.label}, B = {b.label}",
            "",
            f"- **A** `{a.label}`: {a.description}",
            f"- **B** `{b.label}`: {b.description}",
            f"- Ground truth: `{dataset.gt_dir}` ({len(a.scores)} images)",
            f"- Input images: {images}",
            "",
            "## Summary",
            "",
            *itertools.chain.from_iterable(
                (f"**{line.replace(': ', ':** ', 1)}", "") for line in verdict_text(a, b, verdict)
            ),
            summary_table(a, b, comparisons),
            "",
            "Means are over the images where a metric is defined. B − A, the win counts and the "
            "exact two-sided sign test are over the images where both scores are (ties left out "
            "of the test). The better side is the one with the better mean, in **bold** when "
            "p < 0.05; a metric that cannot rank the pair names none. ↑: higher is better; "
            "↓: lower is better. Flicker is over the animated images: the mean change of alpha, "
            "in 8-bit levels, between consecutive frames where the input frame did not change.",
            "",
            f"![Per-image scores]({files.chart.name})",
            "",
            "## Where A and B differ most",
            "",
            f"![Contact sheet]({files.contact_sheet.name})",
            "",
            "## Per image",
            "",
            _table(
                per_image_header, per_image_rows, numeric_columns=range(1, len(per_image_header))
            ),
            "",
        ]
    )


@dataclass(frozen=True)
class _SheetRow:
    caption: str
    cells: list[Image.Image]


def _thumbnail(image: Image.Image) -> Image.Image:
    cell = Image.new("RGB", (_CELL, _CELL), _PANEL)
    fitted = ImageOps.contain(image, (_CELL - 4, _CELL - 4), Image.Resampling.BILINEAR)
    cell.paste(fitted, ((_CELL - fitted.width) // 2, (_CELL - fitted.height) // 2))
    return cell


def _mask_thumbnail(mask: Mask) -> Image.Image:
    return _thumbnail(Image.fromarray(mask).convert("RGB"))


def _names(names: Sequence[str], shown: int = CAUTION_NAMES) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def _winner_cell(comparison: PairedComparison, winner: str) -> str:
    if comparison.unranked:
        return "not comparable"
    return winner if comparison.count else "n/a"


def _heading(metric: MetricInfo) -> str:
    return f"{metric.title} {'↑' if metric.higher_is_better else '↓'}"


def _number(value: float | None, *, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    return f"{value:+.4f}" if signed else f"{value:.4f}"


def _table(header: list[str], rows: list[list[str]], *, numeric_columns: range) -> str:
    """A Markdown table; the `numeric_columns` are right-aligned."""
    align = ["---:" if i in numeric_columns else "---" for i in range(len(header))]
    lines = [header, align, *rows]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
