"""`toonq eval`: score masks against ground truth, or compare two sources (A/B)."""

from __future__ import annotations

from pathlib import Path

import click

from toonq.producer.cli.context import Context, pass_context
from toonq.producer.cli.params import job_param_option
from toonq.producer.cli.render import print_json
from toonq.shared.job import JobParams
from toonq.worker.cli.commands import (
    build_engine,
    device_option,
    precision_option,
    resolution_option,
)
from toonq.worker.evaluation.comparison import compare, verdict
from toonq.worker.evaluation.dataset import EvalDataset, ImageLimits, open_dataset
from toonq.worker.evaluation.report import (
    ContactSheet,
    ab_payload,
    scores_table,
    summary_table,
    verdict_text,
    write_ab_report,
)
from toonq.worker.evaluation.runner import EngineSource, FolderSource, PredictionSource, evaluate

#: Where an A/B comparison writes its report when --report is not given.
DEFAULT_REPORT_DIR = Path("eval-report")

folder = click.Path(path_type=Path)


@click.command("eval")
@click.option("--gt", "gt_dir", required=True, type=folder, help="Ground-truth masks (gt/).")
@click.option(
    "--pred",
    "pred_dirs",
    multiple=True,
    type=folder,
    help="Predicted masks (or cut-outs), matched to --gt by file stem. Twice for A/B.",
)
@click.option(
    "--images",
    "images_dir",
    type=folder,
    help="Input images (im/): needed by --model, and for the halo score.",
)
@click.option(
    "--model",
    "model_specs",
    multiple=True,
    help="Run this model on --images first (a `toonq matte --model` spec). Twice for A/B.",
)
@click.option(
    "--report",
    "report_dir",
    type=folder,
    help=f"A/B only: the report folder [default: {DEFAULT_REPORT_DIR}].",
)
@click.option(
    "--allow-empty-gt",
    is_flag=True,
    help="Score ground truths without foreground (pixel_accuracy null) instead of failing.",
)
@resolution_option
@job_param_option("temporal_smoothing")
@device_option
@precision_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@pass_context
def eval_command(
    ctx: Context,
    gt_dir: Path,
    pred_dirs: tuple[Path, ...],
    images_dir: Path | None,
    model_specs: tuple[str, ...],
    report_dir: Path | None,
    allow_empty_gt: bool,
    resolution: int | None,
    temporal_smoothing: bool | None,
    device: str | None,
    precision: str | None,
    as_json: bool,
) -> None:
    """Score predicted masks against ground truth: ToonOut's Pixel Accuracy, IoU, MAE,
    boundary F and halo (with --images), per image and on average; and the flicker of
    animated images' predicted frames (with --images).

    Give --pred DIR (masks on disk) or --model SPEC (run on --images). With two of either,
    also compare them: a Markdown report with a paired sign test, a chart and a contact sheet
    of the images where they differ most, in --report. A model mattes an animated image as the
    worker does, temporal smoothing included unless --no-temporal-smoothing.
    """
    sources_given = len(pred_dirs) + len(model_specs)
    if pred_dirs and model_specs:
        raise click.UsageError("give --pred folders or --model specs, not both")
    if sources_given not in (1, 2):
        raise click.UsageError("give one or two --pred folders, or one or two --model specs")
    if model_specs and images_dir is None:
        raise click.UsageError("--model runs on the input images: give --images too")
    if report_dir is not None and sources_given == 1:
        raise click.UsageError("--report is for A/B comparisons: give two --pred or --model")
    if temporal_smoothing is not None and not model_specs:
        raise click.UsageError(
            "--[no-]temporal-smoothing applies to --model: a --pred folder is matted already"
        )

    limits = ImageLimits.from_settings(ctx.settings)
    dataset = open_dataset(gt_dir, images_dir)
    if pred_dirs:
        sources = _folder_sources(dataset, pred_dirs, limits=limits)
    else:
        params = JobParams.with_defaults(
            ctx.settings,
            resolution=resolution,
            mask_only=True,
            temporal_smoothing=temporal_smoothing is not False,
        )
        sources = _model_sources(ctx, model_specs, device, precision, params, limits=limits)

    if len(sources) == 1:
        (result,) = evaluate(dataset, sources, limits=limits, allow_empty_gt=allow_empty_gt)
        if as_json:
            print_json(result.to_dict())
        else:
            click.echo(scores_table(result))
        return

    sheet = ContactSheet((sources[0].label, sources[1].label))
    a, b = evaluate(dataset, sources, limits=limits, allow_empty_gt=allow_empty_gt, observer=sheet)
    comparisons = compare(a.scores, b.scores)
    decision = verdict(comparisons)
    files = write_ab_report(
        report_dir or DEFAULT_REPORT_DIR, dataset, (a, b), comparisons, decision, sheet
    )
    if as_json:
        print_json(ab_payload((a, b), comparisons, decision, files))
    else:
        click.echo(summary_table(a, b, comparisons))
        click.echo("")
        for line in verdict_text(a, b, decision):
            click.echo(line)
        click.echo(f"\nreport: {files.markdown}")


def _folder_sources(
    dataset: EvalDataset, folders: tuple[Path, ...], *, limits: ImageLimits
) -> list[PredictionSource]:
    labels = _labels([path.name for path in folders], [str(path) for path in folders])
    sources: list[PredictionSource] = []
    for path, label in zip(folders, labels, strict=True):
        source = FolderSource.open(path, dataset, label=label, limits=limits)
        if source.unused:
            click.echo(
                f"note: {len(source.unused)} file(s) in {path} have no ground truth and are "
                "left out",
                err=True,
            )
        sources.append(source)
    return sources


def _model_sources(
    ctx: Context,
    specs: tuple[str, ...],
    device: str | None,
    precision: str | None,
    params: JobParams,
    *,
    limits: ImageLimits,
) -> list[PredictionSource]:
    return [
        EngineSource(
            label, build_engine(ctx, spec, device, precision, params.resolution), params, limits
        )
        for spec, label in zip(specs, _labels(list(specs), list(specs)), strict=True)
    ]


def _labels(short: list[str], full: list[str]) -> list[str]:
    """Names for the sources in tables: the short names unless two are equal, then the full
    ones, then the full ones marked A and B."""
    for names in (short, full):
        if len(set(names)) == len(names):
            return names
    return [f"{name} ({side})" for name, side in zip(full, "AB", strict=False)]
