"""`toonq demo`: the whole system on one machine, on whatever the settings say (by default the
embedded ones: SQLite, a folder broker, a folder object store; no server).

It runs the production code path end to end: sample images go into the object store, the
producer submits jobs, a real `toonq worker` process consumes them, and the job table shows
what happened.
"""

from __future__ import annotations

import io
import os
import time
from pathlib import Path
from typing import NoReturn

import click
from tqdm import tqdm

from toonq.producer.cli.context import Context, pass_context
from toonq.producer.cli.render import print_jobs_table
from toonq.producer.client import ToonqClient
from toonq.shared.db.engine import migrate
from toonq.shared.job import Job, JobStatus
from toonq.shared.settings import Settings
from toonq.shared.storage import ObjectURI
from toonq.worker.harness.process import ProcessExitedError
from toonq.worker.harness.worker import WorkerProcess
from toonq.worker.samples import anime_sample

_SIZES = [(768, 1024), (1024, 1024), (640, 896), (1024, 768), (512, 512), (900, 1200)]


@click.command()
@click.option("--images", type=click.IntRange(1, 50), default=6, show_default=True)
@click.option("--timeout", type=float, default=900.0, show_default=True, help="Seconds.")
@pass_context
def demo(ctx: Context, images: int, timeout: float) -> None:
    """Matte a few generated anime-style images through the queue, end to end."""
    settings = ctx.settings
    migrate(settings.database_url)
    client = ctx.client
    demo_dir = settings.home / "demo"
    demo_dir.mkdir(parents=True, exist_ok=True)
    if settings.model.startswith("random:"):
        click.secho(
            f"TOONQ_MODEL={settings.model}: RANDOM WEIGHTS, a pipeline smoke test; "
            "the masks will be noise.",
            fg="yellow",
            err=True,
        )
    input_uris = _upload_samples(client, _inputs_prefix(settings), images)
    worker_log = demo_dir / "worker.log"
    click.echo(f"starting a worker (model {settings.model}); its log: {worker_log}", err=True)
    # Warm shutdown on leaving: finish the current job, then exit.
    with WorkerProcess(
        os.environ | {"TOONQ_HOME": str(settings.home), "TOONQ_LOG_FORMAT": "console"},
        worker_log,
        verbose=ctx.verbose,
    ) as worker:
        _wait_until_ready(worker, timeout)
        jobs = [client.submit(uri, bg_color=settings.bg_color) for uri in input_uris]
        click.echo(f"submitted {len(jobs)} jobs to queue {settings.queue!r}", err=True)
        jobs = _follow(client, jobs, worker, timeout)
    click.echo()
    print_jobs_table(jobs)
    click.echo()
    for job in jobs:
        timings = job.timings or {}
        image = f"{job.image_width}x{job.image_height}" if job.image_width else "-"
        click.echo(
            f"{str(job.id)[:8]}  {job.status:<9}  {image:>9}  "
            f"inference {timings.get('inference', 0):8.1f} ms  "
            f"total {sum(timings.values()):8.1f} ms"
        )
    succeeded = sum(job.status == JobStatus.SUCCEEDED for job in jobs)
    click.echo(f"\n{succeeded}/{len(jobs)} succeeded. Cut-outs: {_where(settings.output_prefix)}")
    if succeeded != len(jobs):
        raise SystemExit(1)


def _inputs_prefix(settings: Settings) -> str:
    """Where the samples go: never under an output prefix, which jobs may not read from. The
    first allowed input prefix, else a folder under TOONQ_HOME (readable where the output prefix
    is a `file://` one; with S3 outputs, set TOONQ_ALLOWED_INPUT_PREFIXES)."""
    if settings.allowed_input_prefixes:
        return f"{settings.allowed_input_prefixes[0]}/demo-inputs"
    return (settings.home / "demo" / "inputs").as_uri()


def _upload_samples(client: ToonqClient, prefix: str, count: int) -> list[str]:
    uris = []
    for i in range(count):
        image = anime_sample(seed=i, size=_SIZES[i % len(_SIZES)], transparent=i % 2 == 1)
        buffer = io.BytesIO()
        if i % 3 == 2:  # some JPEGs too: no alpha, a different decoder
            image.convert("RGB").save(buffer, "JPEG", quality=92)
            name = f"sample-{i}.jpg"
        else:
            image.save(buffer, "PNG")
            name = f"sample-{i}.png"
        uri = f"{prefix}/{name}"
        content_type = "image/jpeg" if name.endswith(".jpg") else "image/png"
        client.objects.put(uri, buffer.getvalue(), content_type=content_type)
        uris.append(uri)
    return uris


def _wait_until_ready(worker: WorkerProcess, timeout: float) -> None:
    """Submit nothing until the worker has its model: a missing model fails here, not jobs."""
    try:
        worker.wait_ready(timeout_s=timeout)
    except ProcessExitedError:
        _exited(worker)
    except TimeoutError:
        _timed_out(worker, "the worker to be ready")
    click.echo("worker ready", err=True)


def _follow(
    client: ToonqClient, jobs: list[Job], worker: WorkerProcess, timeout: float
) -> list[Job]:
    deadline = time.monotonic() + timeout
    latest = {job.id: job for job in jobs}
    with tqdm(total=len(jobs), unit="job", desc="matting") as bar:
        while True:
            latest = {job_id: client.get(job_id) for job_id in latest}
            done = sum(JobStatus(job.status).is_finished for job in latest.values())
            bar.update(done - bar.n)
            if done == len(jobs):
                return list(latest.values())
            if not worker.running:
                _exited(worker)
            if time.monotonic() > deadline:
                _timed_out(worker, "the jobs to finish")
            time.sleep(0.5)


def _exited(worker: WorkerProcess) -> NoReturn:
    tail = worker.log_tail(15)
    click.echo("\n".join(["the worker exited early; the end of its log:", *tail]), err=True)
    raise SystemExit(1)


def _timed_out(worker: WorkerProcess, waiting_for: str) -> NoReturn:
    click.echo(f"timed out waiting for {waiting_for}; see {worker.log_path}", err=True)
    raise SystemExit(1)


def _where(prefix: str) -> str:
    uri = ObjectURI.parse(prefix + "/x")
    return str(Path(uri.key).parent) if uri.scheme == "file" else prefix
