"""`toonq matte`: the worker's pipeline over files, with a progress bar.

As in a worker, a bounded pool of threads each takes one file at a time: it reads, decodes and
prepares it, hands its model input to the GPU loop (`InferenceBatcher`, which runs the model on
dynamic batches of what the threads prepared), then finishes, encodes and writes the cut-out.
Reading and writing overlap with the model, and only the files in the threads' hands are in
memory, however many files there are.
"""

from __future__ import annotations

import sys
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from pathlib import Path

from tqdm import tqdm

from toonq.shared.errors import ToonqError
from toonq.shared.job import JobParams
from toonq.worker.batcher import InferenceBatcher
from toonq.worker.cpus import CpuSlots
from toonq.worker.engine.matting import MattingEngine, StackedBatch
from toonq.worker.matte_input import matte_input
from toonq.worker.pipeline import Pipeline

#: The code of a file that could not be read or written.
IO_ERROR = "io_error"


def matte_files(
    engine: MattingEngine,
    files: list[Path],
    out_dir: Path,
    params: JobParams,
    *,
    pipeline: Pipeline,
) -> int:
    """Matte `files` into the existing folder `out_dir`; returns how many failed. A bad file
    is reported by name with its error code and does not stop the others; a file whose output
    name an earlier file already takes is refused."""
    outputs, clashes = _outputs(files, out_dir, params)
    batcher = pipeline.batcher(engine)
    cpu = CpuSlots(pipeline.cpu_workers)
    failures = 0
    with tqdm(total=len(files), unit="img", file=sys.stderr) as bar:

        def fail(path: Path, message: str) -> None:
            nonlocal failures
            failures += 1
            bar.write(f"{path}: {message}", file=sys.stderr)

        for source, target, taken_by in clashes:
            fail(source, f"error: output {target} would overwrite the cut-out of {taken_by}")
            bar.update(1)
        batcher.start()
        pool = ThreadPoolExecutor(pipeline.concurrency, thread_name_prefix="toonq-matte")
        try:
            running: dict[Future[tuple[str, ...]], Path] = {
                pool.submit(_matte_file, engine, batcher, cpu, source, target, params): source
                for source, target in outputs.items()
            }
            for done in as_completed(running):
                if (problem := _problem(done)) is not None:
                    fail(running[done], problem)
                elif changes := done.result():
                    bar.write(f"{running[done]}: {params.preset}: {'; '.join(changes)}")
                bar.update(1)
        finally:
            # When interrupted, the files not started are dropped and those in hand fail fast.
            batcher.stop()
            pool.shutdown(cancel_futures=True)
    return failures


def _outputs(
    files: list[Path], out_dir: Path, params: JobParams
) -> tuple[dict[Path, Path], list[tuple[Path, Path, Path]]]:
    """Each file's output path (OUT/<stem>.<format>), and the files refused because an earlier
    file takes that path: (file, path, earlier file)."""
    outputs: dict[Path, Path] = {}
    taken: dict[Path, Path] = {}
    clashes: list[tuple[Path, Path, Path]] = []
    for source in files:
        target = out_dir / f"{source.stem}.{params.format}"
        if target in taken:
            clashes.append((source, target, taken[target]))
        else:
            taken[target] = source
            outputs[source] = target
    return outputs, clashes


def _matte_file(
    engine: MattingEngine,
    batcher: InferenceBatcher[StackedBatch],
    cpu: CpuSlots,
    source: Path,
    target: Path,
    params: JobParams,
) -> tuple[str, ...]:
    """One file, start to finish, in a pool thread; the model step runs in the GPU loop.
    Returns what fitting the output to its preset changed."""
    result = matte_input(engine, batcher, cpu, source.read_bytes(), params)
    # A preset may write another container than the format's (telegram's animated WebM).
    target.with_suffix(f".{result.extension}").write_bytes(result.data)
    return result.changes


def _problem(done: Future[tuple[str, ...]]) -> str | None:
    """What went wrong with one file, with its error code, or None if it was written."""
    try:
        done.result()
    except ToonqError as exc:
        return f"error [{exc.code}]: {exc}"
    except OSError as exc:
        return f"error [{IO_ERROR}]: {exc}"
    except Exception as exc:
        # A fault of the model or the device (e.g. out of memory) fails this file only.
        return f"error [{ToonqError.code}]: {type(exc).__name__}: {exc}"
    return None
