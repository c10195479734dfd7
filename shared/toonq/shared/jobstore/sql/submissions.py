"""The producer's writes: creating jobs, once per idempotency key."""

from __future__ import annotations

import builtins
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from toonq.shared.db.schema import JobRow
from toonq.shared.job import Job, JobSpec
from toonq.shared.jobstore import transitions
from toonq.shared.jobstore.sql.base import SqlStoreBase, snapshot


class SqlSubmissions(SqlStoreBase):
    """Creates jobs."""

    def create(self, spec: JobSpec, *, actor: str) -> tuple[Job, bool]:
        """Create a job; returns (job, created). A repeated idempotency key returns the existing
        job with created=False, or raises IdempotencyConflictError if its parameters differ."""
        try:
            with self._transaction() as session:
                if spec.idempotency_key is not None:
                    existing = self._by_key(session, spec.idempotency_key)
                    if existing is not None:
                        return existing.reuse_for(spec), False
                return self._insert(session, spec, actor=actor), True
        except IntegrityError:
            # Another producer inserted the same key between our read and our insert.
            existing = self._existing_after_race(spec)
            if existing is None:
                raise
            return existing.reuse_for(spec), False

    def create_many(
        self, specs: Iterable[JobSpec], *, actor: str
    ) -> builtins.list[tuple[Job, bool]]:
        """`create` for a batch, in one transaction, so an idempotency conflict writes nothing
        (except after losing a race for a key to another producer: each job is then created in
        a transaction of its own)."""
        specs = builtins.list(specs)
        keys = sorted({spec.idempotency_key for spec in specs if spec.idempotency_key is not None})
        try:
            with self._transaction() as session:
                known = session.scalars(select(JobRow).where(JobRow.idempotency_key.in_(keys)))
                by_key = {row.idempotency_key: snapshot(Job, row) for row in known}
                results: builtins.list[tuple[Job, bool]] = []
                for spec in specs:
                    existing = by_key.get(spec.idempotency_key)
                    if existing is not None:
                        results.append((existing.reuse_for(spec), False))
                        continue
                    job = self._insert(session, spec, actor=actor)
                    if spec.idempotency_key is not None:
                        by_key[spec.idempotency_key] = job
                    results.append((job, True))
                return results
        except IntegrityError:
            # A concurrent producer took one of the keys: the batch was rolled back.
            return [self.create(spec, actor=actor) for spec in specs]

    def _by_key(self, session: Session, key: str) -> Job | None:
        row = session.scalars(select(JobRow).where(JobRow.idempotency_key == key)).one_or_none()
        return None if row is None else snapshot(Job, row)

    def _existing_after_race(self, spec: JobSpec) -> Job | None:
        if spec.idempotency_key is None:
            return None
        with self._transaction() as session:
            return self._by_key(session, spec.idempotency_key)

    def _insert(self, session: Session, spec: JobSpec, *, actor: str) -> Job:
        creation = transitions.created(spec, actor=actor, now=self._clock())
        row = JobRow(**creation.values)
        session.add(row)
        session.flush()
        self._record(session, row.id, creation)
        return snapshot(Job, row)
