"""The producer's writes: creating jobs, once per idempotency key, each with an output of its
own.

An output URI belongs to the first job created with it: another job asking for it is refused
with OutputConflictError, whatever the first one's status (a finished job's output is still
read by whoever submitted it; a failed one may be requeued and write it). The check runs in the
creating transaction, after reserving the URIs (`Transaction.reserve_outputs`): of two producers
inserting the same new URI at the same instant, the second sees the first's job.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from toonq.shared.job import Job, JobSpec
from toonq.shared.jobstore import selections, transitions
from toonq.shared.jobstore.core import StoreCore


class Submissions(StoreCore):
    """Creates jobs."""

    def create(self, spec: JobSpec, *, actor: str) -> tuple[Job, bool]:
        """Create a job; returns (job, created). A repeated idempotency key returns the existing
        job with created=False, or raises IdempotencyConflictError if its parameters differ. An
        output URI that another job has raises OutputConflictError."""
        (result,) = self._create_at_once([spec], actor=actor)
        return result

    def create_many(
        self, specs: Iterable[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        """`create` for a batch, all at once, so a conflict writes nothing."""
        return self._create_at_once(builtins.list(specs), actor=actor)

    def _create_at_once(
        self, specs: builtins.list[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        keys = {spec.idempotency_key for spec in specs if spec.idempotency_key is not None}
        # Inserted in key order: batches sharing keys then lock them in the same order, and one
        # waits for the other instead of each waiting for the other (a deadlock on PostgreSQL).
        # The sort is stable: of a key repeated in the batch, the first spec creates the job.
        order = sorted(range(len(specs)), key=lambda index: specs[index].idempotency_key or "")
        with self._transaction() as transaction:
            # Outputs first: a job that a concurrent producer commits with the same key between
            # the two reads is then found by its key (the same job), not taken for another
            # job holding the output.
            outputs = {spec.output_uri for spec in specs}
            transaction.reserve_outputs(outputs)
            by_output = {
                job.output_uri: job
                for job in transaction.select(selections.writing(outputs), ("id",))
            }
            by_key = transaction.with_keys(sorted(keys))
            results: dict[int, tuple[Job, bool]] = {}
            new: builtins.list[int] = []
            #: A spec that repeats a key new in this batch -> the spec that creates its job.
            repeats: dict[int, int] = {}
            creating: dict[str, int] = {}  # by key
            writers = {uri: job.id for uri, job in by_output.items()}
            for index in order:
                spec = specs[index]
                key = spec.idempotency_key
                if key is not None and (existing := by_key.get(key)) is not None:
                    results[index] = (existing.reuse_for(spec), False)
                elif key is not None and key in creating:
                    repeats[index] = creating[key]
                elif (holder := writers.get(spec.output_uri)) is not None:
                    raise transitions.output_conflict(spec, holder)
                else:
                    if key is not None:
                        creating[key] = index
                    writers[spec.output_uri] = spec.id
                    new.append(index)
            creations = [transitions.created(specs[i], actor=actor, now=self._clock()) for i in new]
            jobs = transaction.insert_all(creations)
            results |= {index: (job, True) for index, job in zip(new, jobs, strict=True)}
            for index, first in repeats.items():
                results[index] = (results[first][0].reuse_for(specs[index]), False)
            return [results[index] for index in range(len(specs))]
