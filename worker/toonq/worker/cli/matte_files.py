"""`toonq matte`: run the engine in-process over files, in batches, with a progress bar."""

from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image
from tqdm import tqdm

from toonq.shared.errors import ToonqError
from toonq.shared.job import JobParams
from toonq.worker.engine.matting import MattingEngine


def matte_files(
    engine: MattingEngine,
    files: list[Path],
    out_dir: Path,
    params: JobParams,
    *,
    batch_size: int,
) -> int:
    """Matte `files` into `out_dir`; returns how many failed. A bad file is reported by name
    and does not stop the others."""
    out_dir.mkdir(parents=True, exist_ok=True)
    claimed: dict[Path, Path] = {}
    pending: list[tuple[Path, Path, Image.Image]] = []
    failures = 0
    with tqdm(total=len(files), unit="img", file=sys.stderr) as bar:

        def fail(path: Path, message: str) -> None:
            nonlocal failures
            failures += 1
            bar.write(f"{path}: {message}", file=sys.stderr)

        def flush() -> None:
            try:
                prepared = [engine.prepare(image, params) for *_, image in pending]
                logits = engine.infer(prepared)
                results = [
                    engine.finish(item, logit) for item, logit in zip(prepared, logits, strict=True)
                ]
            except (ToonqError, RuntimeError) as exc:
                for path, *_ in pending:
                    fail(path, f"error: {exc}")
            else:
                for (_, target, _), result in zip(pending, results, strict=True):
                    target.write_bytes(result.data)
            bar.update(len(pending))
            pending.clear()

        for path in files:
            target = out_dir / f"{path.stem}.{params.file_format}"
            if target in claimed:
                fail(
                    path, f"error: output {target} would overwrite the cut-out of {claimed[target]}"
                )
                bar.update(1)
                continue
            try:
                image = engine.decode(path.read_bytes())
            except (ToonqError, OSError) as exc:
                code = getattr(exc, "code", "io_error")
                fail(path, f"error [{code}]: {exc}")
                bar.update(1)
                continue
            claimed[target] = path
            pending.append((path, target, image))
            if len(pending) == batch_size:
                flush()
        if pending:
            flush()
    return failures
