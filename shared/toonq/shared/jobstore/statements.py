"""The SQL store's selections and guarded writes, each built once per shape and run with
parameters.

A worker writes a few changes per job, and building a SQLAlchemy statement costs more Python
than running it. A statement depends on the shape of its selection and of its values (which
fields, compared how), never on the values themselves: so each shape is built once, cached, and
bound to the values of each call (`Bound`). This is also the one place a `Selection` becomes SQL.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    Column,
    ColumnElement,
    Executable,
    Select,
    UnaryExpression,
    and_,
    bindparam,
    func,
    insert,
    inspect,
    or_,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.sql.dml import Update

from toonq.shared.db.schema import Base, JobEventRow, JobRow
from toonq.shared.job import WAITING_STATUSES, JobParams, JobStatus
from toonq.shared.jobstore.selections import Clause, Order, Selection

JOBS: Final = Base.metadata.tables[JobRow.__tablename__]
EVENTS: Final = Base.metadata.tables[JobEventRow.__tablename__]
#: The columns `JobParams` is stored in, in the order of its fields.
PARAM_COLUMNS: Final[tuple[Column[Any], ...]] = tuple(inspect(JobRow).composites["params"].columns)

#: A clause's shape: the fields it compares, and how (an `equal` None is an IS NULL).
_ClauseShape = tuple[
    tuple[tuple[str, bool], ...],  # equal: (field, value is None)
    tuple[str, ...],  # among
    tuple[str, ...],  # before
    tuple[str, ...],  # not_before
    tuple[str, ...],  # within
    tuple[tuple[str, bool], ...],  # empty
]
_Shape = tuple[_ClauseShape, ...]


@dataclass(frozen=True)
class Bound:
    """A cached statement and the parameters of one call."""

    statement: Executable
    parameters: dict[str, Any]


def columns(values: Mapping[str, Any]) -> dict[str, Any]:
    """A job's field values by column: `params` spread over its columns."""
    by_column = dict(values)
    params = by_column.pop("params", None)
    if params is not None:
        by_column |= {
            column.name: getattr(params, f.name)
            for column, f in zip(PARAM_COLUMNS, fields(JobParams), strict=True)
        }
    return by_column


def selected(selection: Selection, order: Order, limit: int | None) -> Bound:
    """SELECT the jobs `selection` matches, in `order`, at most `limit` of them."""
    statement = _select(_shape(selection), tuple(order), limit)
    return Bound(statement, _selection_parameters(selection))


def tenants_of(selection: Selection) -> Bound:
    """SELECT the tenants of the jobs `selection` matches, each once, in order."""
    return Bound(_tenants(_shape(selection)), _selection_parameters(selection))


def guarded_update(
    job_id: uuid.UUID, guard: Selection, values: Mapping[str, Any], *, whole_row: bool = True
) -> Bound:
    """UPDATE the job WHERE `guard` RETURNING its row, or only its id unless `whole_row`: the
    driver describes every column a statement returns, which costs more than the update."""
    by_column = columns(values)
    statement = _update(_shape(guard), tuple(by_column), whole_row)
    return Bound(statement, _update_parameters(job_id, guard, by_column))


def guarded_update_all(guard: Selection, values: Mapping[str, Any]) -> Bound:
    """UPDATE every job `guard` matches RETURNING their ids."""
    by_column = columns(values)
    return Bound(
        _update_all(_shape(guard), tuple(by_column)),
        _selection_parameters(guard) | _value_parameters(by_column),
    )


def guarded_update_with_events(
    job_id: uuid.UUID,
    guard: Selection,
    values: Mapping[str, Any],
    events: Sequence[Mapping[str, Any]],
    *,
    whole_row: bool = True,
) -> Bound:
    """The guarded update and the INSERT of its events in one PostgreSQL statement (both as
    data-modifying CTEs), returning the job's row (only its id unless `whole_row`): nothing is
    written if the guard fails."""
    by_column = columns(values)
    names = tuple(tuple(event) for event in events)
    statement = _update_with_events(_shape(guard), tuple(by_column), names, whole_row)
    parameters = _update_parameters(job_id, guard, by_column)
    for number, event in enumerate(events):
        parameters |= {f"e{number}_{name}": value for name, value in event.items()}
    return Bound(statement, parameters)


def claim_if_waiting(
    job_id: uuid.UUID,
    *,
    due_by: datetime | None,
    start: Mapping[str, Any],
    event: Mapping[str, Any],
) -> Bound:
    """Start the next attempt of a job that waits for it (queued, or retrying and due by
    `due_by` unless it is None) in one PostgreSQL statement, its event with it: the job's row as
    written, with the `waited_*` fields of before, or no row if the job is anything else or is
    locked (the caller then claims it the general way). `start` is what a start writes, but
    for `attempts`, which the statement counts up; the event's details name that attempt."""
    by_column = {name: value for name, value in columns(start).items() if name != "attempts"}
    recorded = {name: value for name, value in event.items() if name != "details"}
    statement = _claim_if_waiting(due_by is not None, tuple(by_column), tuple(recorded))
    parameters = {"job_id": job_id, "due_by": due_by}
    parameters |= _value_parameters(by_column)
    parameters |= {f"e_{name}": value for name, value in recorded.items()}
    return Bound(statement, parameters)


# --- Shapes and parameters ------------------------------------------------------------------------


def _shape(selection: Selection) -> _Shape:
    return tuple(
        (
            tuple(sorted((name, value is None) for name, value in clause.equal.items())),
            tuple(sorted(clause.among)),
            tuple(sorted(clause.before)),
            tuple(sorted(clause.not_before)),
            tuple(sorted(clause.within)),
            tuple(sorted(clause.empty.items())),
        )
        for clause in selection.clauses
    )


def _selection_parameters(selection: Selection) -> dict[str, Any]:
    parameters: dict[str, Any] = {}
    for number, clause in enumerate(selection.clauses):
        parameters |= _clause_parameters(number, clause)
    return parameters


def _update_parameters(
    job_id: uuid.UUID, guard: Selection, by_column: Mapping[str, Any]
) -> dict[str, Any]:
    return {"job_id": job_id, **_selection_parameters(guard), **_value_parameters(by_column)}


def _value_parameters(by_column: Mapping[str, Any]) -> dict[str, Any]:
    return {f"v_{name}": value for name, value in by_column.items()}


def _clause_parameters(number: int, clause: Clause) -> dict[str, Any]:
    prefix = f"g{number}"
    parameters = {
        f"{prefix}_eq_{name}": value for name, value in clause.equal.items() if value is not None
    }
    parameters |= {f"{prefix}_in_{name}": sorted(v) for name, v in clause.among.items()}
    parameters |= {f"{prefix}_lt_{name}": value for name, value in clause.before.items()}
    parameters |= {f"{prefix}_ge_{name}": value for name, value in clause.not_before.items()}
    for name, (lowest, highest) in clause.within.items():
        parameters |= {f"{prefix}_lo_{name}": lowest, f"{prefix}_hi_{name}": highest}
    return parameters


# --- The statements, one per shape ----------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _select(selection: _Shape, order: tuple[str, ...], limit: int | None) -> Select[Any]:
    return select(JOBS).where(_condition(selection)).order_by(*map(_order_by, order)).limit(limit)


@functools.lru_cache(maxsize=64)
def _tenants(selection: _Shape) -> Select[Any]:
    tenant = JOBS.c.tenant
    return (
        select(tenant).where(_condition(selection), tenant.is_not(None)).distinct().order_by(tenant)
    )


@functools.lru_cache(maxsize=256)
def _update(guard: _Shape, value_columns: tuple[str, ...], whole_row: bool) -> Update:
    return (
        update(JOBS)
        .where(JOBS.c.id == bindparam("job_id"), _condition(guard))
        .values({name: _param("v_", name) for name in value_columns})
        .returning(*((JOBS,) if whole_row else (JOBS.c.id,)))
    )


@functools.lru_cache(maxsize=16)
def _update_all(guard: _Shape, value_columns: tuple[str, ...]) -> Update:
    return (
        update(JOBS)
        .where(_condition(guard))
        .values({name: _param("v_", name) for name in value_columns})
        .returning(JOBS.c.id)
    )


@functools.lru_cache(maxsize=256)
def _update_with_events(
    guard: _Shape,
    value_columns: tuple[str, ...],
    events: tuple[tuple[str, ...], ...],
    whole_row: bool,
) -> Executable:
    written = _update(guard, value_columns, whole_row).cte("written")
    # One INSERT for all the events, in order: the CTEs of a statement run in no set order.
    rows = union_all(
        *(
            select(
                written.c.id,
                *(bindparam(f"e{number}_{name}", type_=EVENTS.c[name].type) for name in names),
            )
            for number, names in enumerate(events)
        )
    )
    recorded = insert(EVENTS).from_select(["job_id", *events[0]], rows).cte("recorded")
    return select(written).add_cte(recorded)


#: The fields a claimed job had while it waited, which say since when it waited.
WAITED: Final = ("next_attempt_at", "sent_at", "updated_at")


@functools.lru_cache(maxsize=4)
def _claim_if_waiting(
    check_due: bool, value_columns: tuple[str, ...], event_columns: tuple[str, ...]
) -> Executable:
    job = JOBS.c
    conditions = [job.id == bindparam("job_id"), job.status.in_(sorted(WAITING_STATUSES))]
    if check_due:
        conditions.append(
            or_(
                job.status != JobStatus.RETRYING,
                job.next_attempt_at.is_(None),
                job.next_attempt_at <= bindparam("due_by", type_=job.next_attempt_at.type),
            )
        )
    # SKIP LOCKED: a job that another transaction holds is claimed the general way, in a
    # transaction of its own, so that no lock is waited for outside one.
    waiting = (
        select(job.id, job.attempts, job.next_attempt_at, job.sent_at, job.updated_at)
        .where(*conditions)
        .with_for_update(skip_locked=True)
        .cte("waiting")
    )
    values: dict[str, Any] = {name: _param("v_", name) for name in value_columns}
    claimed = (
        update(JOBS)
        .where(job.id == waiting.c.id)
        .values(attempts=waiting.c.attempts + 1, **values)
        .returning(
            JOBS,
            *(waiting.c[name].label(f"waited_{name}") for name in WAITED),
        )
        .cte("claimed")
    )
    recorded = (
        insert(EVENTS)
        .from_select(
            ["job_id", *event_columns, "details"],
            select(
                claimed.c.id,
                *(bindparam(f"e_{name}", type_=EVENTS.c[name].type) for name in event_columns),
                func.json_build_object("attempt", claimed.c.attempts),
            ),
        )
        .cte("recorded")
    )
    return select(claimed).add_cte(recorded)


def _condition(guard: _Shape) -> ColumnElement[bool]:
    return or_(*(_clause_condition(number, clause) for number, clause in enumerate(guard)))


def _clause_condition(number: int, shape: _ClauseShape) -> ColumnElement[bool]:
    equal, among, before, not_before, within, empty = shape
    prefix = f"g{number}"
    column = JOBS.c
    conditions = [
        column[name].is_(None) if is_none else column[name] == _param(f"{prefix}_eq_", name)
        for name, is_none in equal
    ]
    conditions += [
        column[name].in_(bindparam(f"{prefix}_in_{name}", expanding=True, type_=column[name].type))
        for name in among
    ]
    conditions += [column[name] < _param(f"{prefix}_lt_", name) for name in before]
    conditions += [column[name] >= _param(f"{prefix}_ge_", name) for name in not_before]
    conditions += [
        column[name].between(_param(f"{prefix}_lo_", name), _param(f"{prefix}_hi_", name))
        for name in within
    ]
    conditions += [
        column[name].is_(None) if is_empty else column[name].is_not(None)
        for name, is_empty in empty
    ]
    return and_(true(), *conditions)


def _order_by(name: str) -> UnaryExpression[Any]:
    column: ColumnElement[Any] = JOBS.c[name.removeprefix("-")]
    return column.desc() if name.startswith("-") else column.asc()


def _param(prefix: str, name: str) -> Any:
    return bindparam(prefix + name, type_=JOBS.c[name].type)
