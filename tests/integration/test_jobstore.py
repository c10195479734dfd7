"""The job store's contract: every operation and transition, each test run on PostgreSQL and on
the in-memory store (the `jobstore` fixture). What only the SQL store has is in
`test_sql_jobstore.py`."""

from __future__ import annotations

import functools
import itertools
import json
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.support import staged_output, succeed
from toonq.shared.errors import (
    AlreadyCancelledError,
    AmbiguousJobIdError,
    DuplicateJobIdError,
    IdempotencyConflictError,
    InvalidRequestError,
    InvalidTransitionError,
    JobNotFoundError,
    OutputConflictError,
)
from toonq.shared.job import (
    Claim,
    EventKind,
    Job,
    JobParams,
    JobSpec,
    JobStatus,
    NotDue,
    iso_utc,
)
from toonq.shared.jobstore import JobStore

if TYPE_CHECKING:
    from tests.conftest import ManualClock

LEASE_S = 60.0
T = TypeVar("T")


PARAMS = JobParams(bg_color="#808080", format="png", resolution=1024)


def make_spec(**overrides: Any) -> JobSpec:
    """A job's spec; its output is its own (every job writes another URI) unless overridden."""
    key = overrides.get("idempotency_key") or uuid.uuid4().hex
    fields: dict[str, Any] = {
        "input_uri": "s3://in/cat.png",
        "output_uri": f"s3://out/{key}.png",
        "params": PARAMS,
        "max_attempts": 3,
    }
    return JobSpec(**(fields | overrides))


def create(store: JobStore, **overrides: Any) -> Job:
    job, created = store.create(make_spec(**overrides), actor="producer")
    assert created
    return job


def claim(store: JobStore, job: Job, worker: str = "w1") -> Claim:
    result = store.claim(job.id, worker=worker, lease_s=LEASE_S)
    assert result is not None
    return result


def kinds(store: JobStore, job: Job) -> list[EventKind]:
    return [event.kind for event in store.events(job.id)]


def finish(store: JobStore, job: Job, status: JobStatus) -> Job:
    """Bring a new job to a finished `status`."""
    if status is JobStatus.CANCELLED:
        return store.cancel(job.id, actor="cli:test@host")
    current = claim(store, job)
    if status is JobStatus.SUCCEEDED:
        assert succeed(
            store,
            current,
            model_name="toonout",
            model_revision="abc123",
            image_width=640,
            image_height=480,
            timings={"inference": 12.5},
        )
    else:
        assert store.mark_failed(current, error_code="input_not_found", error_message="gone")
    return store.get(job.id)


def retry(store: JobStore, job: Job, next_attempt_at: datetime) -> None:
    """Claim a waiting job, and fail that attempt with a transient error."""
    assert store.mark_retrying(
        claim(store, job),
        error_code="storage_unavailable",
        error_message="503",
        next_attempt_at=next_attempt_at,
    )


def fail(store: JobStore, job: Job, error_code: str) -> Job:
    """Claim a new job, and fail it with `error_code`."""
    assert store.mark_failed(claim(store, job), error_code=error_code, error_message="failed")
    return store.get(job.id)


FINISHED = [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]


# --- Create and read ------------------------------------------------------------------------------


def test_create_queues_a_job_with_its_created_event(jobstore: JobStore) -> None:
    params = replace(PARAMS, mask_only=True, respect_input_alpha=True)
    job = create(jobstore, priority=7, params=params, idempotency_key="k1")

    assert job.status is JobStatus.QUEUED
    assert (job.attempts, job.max_attempts, job.priority) == (0, 3, 7)
    assert job.params == params
    assert job.to_dict()["params"] == {
        "bg_color": "#808080",
        "format": "png",
        "resolution": 1024,
        "refine_foreground": False,
        "mask_only": True,
        "respect_input_alpha": True,
        "preset": None,
        "trim": False,
        "margin": 0,
        "outline": 0,
        "shadow": False,
        "temporal_smoothing": True,
    }
    assert job.created_at.tzinfo is UTC
    assert jobstore.get(job.id) == job
    [event] = jobstore.events(job.id)
    assert (event.kind, event.actor, event.job_id) == (EventKind.CREATED, "producer", job.id)


STICKER = replace(
    PARAMS,
    preset="telegram",
    trim=True,
    margin=12,
    outline=4,
    shadow=True,
    temporal_smoothing=False,
)


def assert_sticker_parameters_round_trip(store: JobStore) -> None:
    """A job's sticker parameters, and a plain job's defaults, read back as written: by `get`,
    by `list`, and in the job a transition returns."""
    sticker = create(store, params=STICKER)
    plain = create(store, params=PARAMS)

    assert [store.get(sticker.id).params, store.get(plain.id).params] == [STICKER, PARAMS]
    assert {job.id: job.params for job in store.list()} == {sticker.id: STICKER, plain.id: PARAMS}
    assert claim(store, sticker).job.params == STICKER
    assert {
        name: store.get(sticker.id).to_dict()["params"][name]
        for name in ("preset", "trim", "margin", "outline", "shadow", "temporal_smoothing")
    } == {
        "preset": "telegram",
        "trim": True,
        "margin": 12,
        "outline": 4,
        "shadow": True,
        "temporal_smoothing": False,
    }


def test_the_sticker_parameters_round_trip(jobstore: JobStore) -> None:
    assert_sticker_parameters_round_trip(jobstore)


def test_the_sticker_parameters_round_trip_on_sqlite(sqlite_jobstore: JobStore) -> None:
    assert_sticker_parameters_round_trip(sqlite_jobstore)


def test_create_with_an_id_chosen_by_the_caller(jobstore: JobStore) -> None:
    chosen = uuid.uuid4()
    assert create(jobstore, id=chosen).id == chosen


def test_an_id_chosen_twice_is_a_typed_error(jobstore: JobStore) -> None:
    taken = create(jobstore, idempotency_key="first")

    for specs in (
        [make_spec(id=taken.id)],
        [make_spec(id=taken.id, idempotency_key="other")],
        [make_spec(), make_spec(id=taken.id)],
    ):
        with pytest.raises(DuplicateJobIdError, match=f"^job {taken.id} already exists$"):
            jobstore.create_many(specs, actor="producer")
    twice = uuid.uuid4()
    with pytest.raises(DuplicateJobIdError, match=str(twice)) as duplicate:
        jobstore.create_many([make_spec(id=twice), make_spec(id=twice)], actor="producer")

    assert duplicate.value.code == "duplicate_job_id"
    assert jobstore.list() == [taken]


def test_create_with_a_known_idempotency_key_returns_the_existing_job(jobstore: JobStore) -> None:
    first = create(jobstore, idempotency_key="same")

    again, created = jobstore.create(make_spec(idempotency_key="same"), actor="producer")

    assert (again, created) == (first, False)
    assert [job.id for job in jobstore.list()] == [first.id]
    assert kinds(jobstore, first) == [EventKind.CREATED]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (
            {"input_uri": "s3://in/dog.png"},
            "input_uri 's3://in/dog.png' (the job's: 's3://in/cat.png')",
        ),
        (
            {"params": replace(PARAMS, bg_color="#000000")},
            "bg_color '#000000' (the job's: '#808080')",
        ),
        ({"params": replace(PARAMS, mask_only=True)}, "mask_only True (the job's: False)"),
        (
            {"params": replace(PARAMS, respect_input_alpha=True)},
            "respect_input_alpha True (the job's: False)",
        ),
        ({"params": replace(PARAMS, preset="line")}, "preset 'line' (the job's: None)"),
        (
            {"params": replace(PARAMS, trim=True, margin=3)},
            "trim True (the job's: False), margin 3 (the job's: 0)",
        ),
        ({"params": replace(PARAMS, outline=2)}, "outline 2 (the job's: 0)"),
        ({"params": replace(PARAMS, shadow=True)}, "shadow True (the job's: False)"),
        (
            {"params": replace(PARAMS, temporal_smoothing=False)},
            "temporal_smoothing False (the job's: True)",
        ),
        ({"priority": 9}, "priority 9 (the job's: 0)"),
        ({"max_attempts": 1}, "max_attempts 1 (the job's: 3)"),
        (
            {"priority": 5, "params": replace(PARAMS, format="webp")},
            "priority 5 (the job's: 0), format 'webp' (the job's: 'png')",
        ),
    ],
)
def test_create_with_a_known_key_and_other_parameters_conflicts(
    jobstore: JobStore, change: dict[str, Any], named: str
) -> None:
    first = create(jobstore, idempotency_key="same")

    with pytest.raises(IdempotencyConflictError) as conflict:
        jobstore.create(make_spec(idempotency_key="same", **change), actor="producer")

    assert str(conflict.value) == (
        f"idempotency key 'same' is already used by job {first.id} with other parameters: {named}"
    )
    assert [job.id for job in jobstore.list()] == [first.id]


SHARED_OUTPUT = "s3://out/shared.png"


@pytest.mark.parametrize(
    "status", [JobStatus.QUEUED, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED]
)
def test_an_output_uri_belongs_to_one_job(jobstore: JobStore, status: JobStatus) -> None:
    """Whatever its status: a finished job's output is still read, a failed one may be
    requeued."""
    first = create(jobstore, output_uri=SHARED_OUTPUT)
    if status is not JobStatus.QUEUED:
        first = finish(jobstore, first, status)

    for specs in (
        [make_spec(output_uri=SHARED_OUTPUT)],
        [make_spec(idempotency_key="other", output_uri=SHARED_OUTPUT)],
        [make_spec(), make_spec(output_uri=SHARED_OUTPUT)],
    ):
        with pytest.raises(OutputConflictError) as conflict:
            jobstore.create_many(specs, actor="producer")
        assert str(conflict.value) == (
            f"output URI {SHARED_OUTPUT!r} is already the output of job {first.id}"
        )
        assert conflict.value.code == "output_conflict"
    assert jobstore.list() == [first]


def test_one_batch_cannot_give_two_jobs_one_output(jobstore: JobStore) -> None:
    with pytest.raises(OutputConflictError):
        jobstore.create_many(
            [make_spec(output_uri=SHARED_OUTPUT), make_spec(output_uri=SHARED_OUTPUT)],
            actor="producer",
        )

    assert jobstore.list() == []


def test_producers_racing_for_one_new_output_uri_leave_it_to_one_job(jobstore: JobStore) -> None:
    def submit(output_uri: str) -> bool:
        try:
            jobstore.create(make_spec(output_uri=output_uri), actor="producer")
        except OutputConflictError:
            return False
        return True

    for race in range(20):
        output_uri = f"s3://out/race-{race}.png"

        created = run_concurrently(4, functools.partial(submit, output_uri))

        assert created.count(True) == 1
        assert [job.output_uri for job in jobstore.list(limit=1000)].count(output_uri) == 1


def test_an_idempotent_resubmit_keeps_its_output(jobstore: JobStore) -> None:
    first = create(jobstore, idempotency_key="same", output_uri=SHARED_OUTPUT)

    results = jobstore.create_many(
        [
            make_spec(idempotency_key="same", output_uri=SHARED_OUTPUT),
            make_spec(idempotency_key="same", output_uri=SHARED_OUTPUT),
        ],
        actor="producer",
    )

    assert results == [(first, False), (first, False)]


def test_concurrent_creates_with_one_key_make_one_job(jobstore: JobStore) -> None:
    results = run_concurrently(
        8, lambda: jobstore.create(make_spec(idempotency_key="raced"), actor="producer")
    )

    assert len({job.id for job, _ in results}) == 1
    assert sorted(created for _, created in results) == [False] * 7 + [True]


def test_create_many_in_one_transaction(jobstore: JobStore) -> None:
    existing = create(jobstore, idempotency_key="old")

    results = jobstore.create_many(
        [
            make_spec(idempotency_key="old"),
            make_spec(idempotency_key="new"),
            make_spec(idempotency_key="new"),
            make_spec(),
        ],
        actor="producer",
    )

    assert [created for _, created in results] == [False, True, False, True]
    assert results[0][0] == existing
    assert results[1][0] == results[2][0]
    assert len(jobstore.list()) == 3


def test_create_many_returns_the_jobs_in_the_specs_order_each_with_its_event(
    jobstore: JobStore,
) -> None:
    # Keyed specs are created in key order, which is not the specs' order.
    specs = [make_spec(idempotency_key=f"key-{n:02}") for n in (7, 3, 9, 1)] + [make_spec()]

    results = jobstore.create_many(specs, actor="producer")

    assert [job.id for job, _ in results] == [spec.id for spec in specs]
    assert [job.idempotency_key for job, _ in results] == [s.idempotency_key for s in specs]
    for job, _ in results:
        assert kinds(jobstore, job) == [EventKind.CREATED]
        assert jobstore.get(job.id) == job


def test_concurrent_batches_sharing_keys_in_opposite_orders_both_succeed(
    jobstore: JobStore,
) -> None:
    keys = [f"key-{n:03}" for n in range(200)]
    batches = [keys, keys[::-1]]  # locked in opposite orders, they would wait on each other
    start = threading.Barrier(len(batches))

    def submit(batch: list[str]) -> dict[str | None, uuid.UUID]:
        start.wait()
        results = jobstore.create_many(
            [make_spec(idempotency_key=key) for key in batch], actor="producer"
        )
        return {job.idempotency_key: job.id for job, _ in results}

    with ThreadPoolExecutor(len(batches)) as pool:
        first, second = pool.map(submit, batches)

    assert first == second  # one job per key, whichever batch created it
    assert len(set(first.values())) == len(keys)


def test_create_many_with_a_conflict_writes_nothing(jobstore: JobStore) -> None:
    create(jobstore, idempotency_key="old")

    with pytest.raises(IdempotencyConflictError):
        jobstore.create_many(
            [make_spec(), make_spec(idempotency_key="old", params=replace(PARAMS, format="webp"))],
            actor="producer",
        )

    assert len(jobstore.list()) == 1


@pytest.mark.parametrize(
    "overrides",
    [
        {"priority": 10},
        {"priority": -1},
        {"max_attempts": 0},
        {"idempotency_key": ""},
    ],
)
def test_spec_rejects_what_the_schema_forbids(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequestError):
        make_spec(**overrides)


def test_unknown_job(jobstore: JobStore) -> None:
    unknown = uuid.uuid4()
    for call in (
        lambda: jobstore.get(unknown),
        lambda: jobstore.events(unknown),
        lambda: jobstore.claim(unknown, worker="w1", lease_s=LEASE_S),
        lambda: jobstore.cancel(unknown, actor="cli"),
        lambda: jobstore.requeue([unknown], actor="cli"),
    ):
        with pytest.raises(JobNotFoundError, match=str(unknown)):
            call()
    assert not jobstore.mark_enqueued(unknown)


def test_resolve_a_job_id_from_a_unique_prefix(jobstore: JobStore) -> None:
    first, second, lowest, highest = (
        create(jobstore, id=uuid.UUID(text)).id
        for text in (
            "abcdef01-2345-4000-8000-000000000001",
            "abcdef01-2345-4000-8000-100000000000",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
        )
    )

    assert jobstore.resolve(first) == first
    assert jobstore.resolve(str(second)) == second
    assert jobstore.resolve("abcdef01-2345-4000-8000-0") == first
    assert jobstore.resolve("ABCDEF0123454000800010") == second  # no dashes, any case
    assert jobstore.resolve("00000000") == lowest
    assert jobstore.resolve("ffffffff") == highest
    with pytest.raises(AmbiguousJobIdError, match=r"^2 job ids start with 'abcdef01'") as ambiguous:
        jobstore.resolve("abcdef01")
    assert ambiguous.value.code == "ambiguous_job_id"
    with pytest.raises(JobNotFoundError, match="abcdef02"):
        jobstore.resolve("abcdef02")


@pytest.mark.parametrize("text", ["abcdef0", "abcdef0g", "", "abcdef01 "])
def test_resolve_refuses_text_that_is_no_job_id(jobstore: JobStore, text: str) -> None:
    create(jobstore, id=uuid.UUID("abcdef01-2345-4000-8000-000000000001"))

    with pytest.raises(InvalidRequestError) as refused:
        jobstore.resolve(text)
    assert refused.value.code == "invalid_job_id"


def test_list_newest_first_with_filters(jobstore: JobStore, clock: ManualClock) -> None:
    oldest = create(jobstore)
    clock.advance(10)
    middle = finish(jobstore, create(jobstore), JobStatus.FAILED)
    clock.advance(10)
    newest = create(jobstore)

    assert [job.id for job in jobstore.list()] == [newest.id, middle.id, oldest.id]
    assert [job.id for job in jobstore.list(limit=1)] == [newest.id]
    assert [job.id for job in jobstore.list(status="failed")] == [middle.id]
    assert [job.id for job in jobstore.list(error_code="input_not_found")] == [middle.id]
    assert [job.id for job in jobstore.list(since=middle.created_at)] == [newest.id, middle.id]
    with pytest.raises(InvalidRequestError, match="unknown status"):
        jobstore.list(status="done")
    with pytest.raises(InvalidRequestError, match="timezone"):
        jobstore.list(since=datetime(2024, 1, 1))


def test_to_dict_is_json_with_utc_times(jobstore: JobStore) -> None:
    job = finish(jobstore, create(jobstore, idempotency_key="k"), JobStatus.SUCCEEDED)

    data = json.loads(json.dumps(job.to_dict()))

    assert data["id"] == str(job.id)
    assert data["status"] == "succeeded"
    assert data["model"] == "toonout@abc123"
    assert data["image"] == {"width": 640, "height": 480}
    assert data["timings"] == {"inference": 12.5}
    assert data["params"]["format"] == "png"
    assert data["worker"] == "w1"
    assert data["next_attempt_at"] is None
    for key in ("created_at", "updated_at", "started_at", "finished_at"):
        assert datetime.fromisoformat(data[key]).utcoffset() == timedelta(0)
    assert {
        "input_uri",
        "output_uri",
        "attempts",
        "max_attempts",
        "error_code",
        "error_message",
        "idempotency_key",
        "priority",
    } <= data.keys()


def test_model_and_image_of_an_unfinished_job(jobstore: JobStore) -> None:
    data = create(jobstore).to_dict()
    assert (data["model"], data["image"], data["timings"]) == (None, None, None)


# --- Claims ---------------------------------------------------------------------------------------


def test_claim_starts_an_attempt(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)

    current = claim(jobstore, job, worker="gpu-0")

    assert current.attempt == 1
    assert current.worker == "gpu-0"
    running = current.job
    assert (running.status, running.attempts, running.worker) == (JobStatus.RUNNING, 1, "gpu-0")
    assert running.started_at is not None
    assert running.lease_expires_at == running.started_at + timedelta(seconds=LEASE_S)
    assert running.started_at - clock() < timedelta(seconds=1)
    assert kinds(jobstore, job) == [EventKind.CREATED, EventKind.STARTED]
    started = jobstore.events(job.id)[-1]
    assert (started.kind, started.actor, started.details) == (
        EventKind.STARTED,
        "gpu-0",
        {"attempt": 1},
    )


def test_a_duplicate_message_cannot_claim_a_running_job(jobstore: JobStore) -> None:
    job = create(jobstore)
    claim(jobstore, job, worker="w1")

    assert jobstore.claim(job.id, worker="w2", lease_s=LEASE_S) is None
    assert jobstore.claim(job.id, worker="w1", lease_s=LEASE_S) is None
    assert jobstore.get(job.id).attempts == 1
    assert kinds(jobstore, job) == [EventKind.CREATED, EventKind.STARTED]


@pytest.mark.parametrize("status", FINISHED)
def test_a_finished_job_cannot_be_claimed(jobstore: JobStore, status: JobStatus) -> None:
    job = finish(jobstore, create(jobstore), status)

    assert jobstore.claim(job.id, worker="w2", lease_s=LEASE_S) is None
    assert jobstore.get(job.id) == job


def test_a_job_whose_worker_was_lost_is_reclaimed(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    lost = claim(jobstore, job, worker="w1")
    clock.advance(LEASE_S - 1)
    assert jobstore.claim(job.id, worker="w2", lease_s=LEASE_S) is None  # lease still live

    clock.advance(2)
    taken = claim(jobstore, job, worker="w2")

    assert (taken.attempt, taken.job.worker) == (2, "w2")
    reclaimed = jobstore.events(job.id)[-2]
    assert (reclaimed.kind, reclaimed.actor) == (EventKind.RECLAIMED, "w2")
    assert reclaimed.details == {"lost_worker": "w1", "lost_attempt": 1}
    # The lost worker comes back: its outcome no longer counts.
    assert not succeed(jobstore, lost)
    assert jobstore.get(job.id).status is JobStatus.RUNNING


def test_a_job_that_lost_its_worker_on_every_attempt_fails(
    jobstore: JobStore, clock: ManualClock
) -> None:
    job = create(jobstore, max_attempts=2)
    claim(jobstore, job, worker="w1")
    clock.advance(LEASE_S + 1)
    claim(jobstore, job, worker="w2")
    clock.advance(LEASE_S + 1)

    assert jobstore.claim(job.id, worker="w3", lease_s=LEASE_S) is None

    failed = jobstore.get(job.id)
    assert (failed.status, failed.error_code, failed.attempts) == (
        JobStatus.FAILED,
        "worker_lost",
        2,
    )
    assert failed.finished_at is not None
    assert failed.lease_expires_at is None
    event = jobstore.events(job.id)[-1]
    assert (event.kind, event.actor) == (EventKind.FAILED, "w3")
    assert event.details == {"error_code": "worker_lost", "attempt": 2, "lost_worker": "w2"}


def test_extend_lease_keeps_a_long_job(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    current = claim(jobstore, job)
    clock.advance(LEASE_S - 5)

    assert jobstore.extend_lease(current, LEASE_S)

    clock.advance(10)
    assert jobstore.claim(job.id, worker="w2", lease_s=LEASE_S) is None
    assert jobstore.due_for_recovery(unsent_grace_s=0, lost_after_s=3600) == []


def test_concurrent_claims_have_one_winner(jobstore: JobStore) -> None:
    for _ in range(10):
        job = create(jobstore)
        claims = run_concurrently(
            2, functools.partial(jobstore.claim, job.id, worker="w", lease_s=LEASE_S)
        )
        assert sum(result is not None for result in claims) == 1
        assert jobstore.get(job.id).attempts == 1
        assert kinds(jobstore, job).count(EventKind.STARTED) == 1


# --- Outcomes -------------------------------------------------------------------------------------


def test_commit_then_mark_succeeded(jobstore: JobStore) -> None:
    job = create(jobstore)
    current = claim(jobstore, job, worker="gpu-1")
    staged = staged_output(
        current,
        model_name="toonout",
        model_revision=None,
        image_width=800,
        image_height=600,
        timings={"download": 3.5, "inference": 40.0},
    )

    assert jobstore.commit_output(current, staged)

    committed = jobstore.get(job.id)
    assert (committed.status, committed.staged_output, committed.model) == (
        JobStatus.RUNNING,
        staged,
        None,
    )
    assert committed.to_dict()["staged_output_uri"] == staged.uri
    assert kinds(jobstore, job) == [EventKind.CREATED, EventKind.STARTED]

    assert jobstore.mark_succeeded(current, staged)

    done = jobstore.get(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert (done.model, done.image_width, done.image_height) == ("toonout", 800, 600)
    assert done.timings == {"download": 3.5, "inference": 40.0}
    assert done.finished_at is not None
    assert done.lease_expires_at is None
    assert done.staged_output is None
    event = jobstore.events(job.id)[-1]
    assert (event.kind, event.actor, event.details) == (
        EventKind.SUCCEEDED,
        "gpu-1",
        {"attempt": 1, "staged_attempt": 1, "staged_output_uri": staged.uri},
    )


def test_a_job_commits_one_output_and_publishes_only_that_one(jobstore: JobStore) -> None:
    job = create(jobstore)
    current = claim(jobstore, job)
    staged = staged_output(current)
    other = staged_output(current, uri=f"{job.output_uri}.other")

    assert not jobstore.mark_succeeded(current, staged)  # nothing committed yet
    assert jobstore.commit_output(current, staged)
    assert not jobstore.commit_output(current, other)
    assert not jobstore.mark_succeeded(current, other)

    assert jobstore.get(job.id).staged_output == staged
    assert jobstore.mark_succeeded(current, staged)


def test_a_committed_output_whose_object_is_gone_can_be_dropped_for_another(
    jobstore: JobStore,
) -> None:
    job = create(jobstore)
    current = claim(jobstore, job)
    expired = staged_output(current)
    assert jobstore.commit_output(current, expired)

    assert not jobstore.drop_output(current, staged_output(current, uri="s3://out/other.png"))
    assert jobstore.drop_output(current, expired)

    assert jobstore.get(job.id).staged_output is None
    assert succeed(jobstore, current, uri=f"{job.output_uri}.again")


def test_a_stale_attempt_cannot_commit(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    stale = claim(jobstore, job, worker="w1")
    clock.advance(LEASE_S + 1)
    current = claim(jobstore, job, worker="w2")

    assert not jobstore.commit_output(stale, staged_output(stale))

    assert jobstore.get(job.id).staged_output is None
    assert jobstore.commit_output(current, staged_output(current))


def test_a_committed_job_whose_worker_was_lost_on_its_last_attempt_is_reclaimed(
    jobstore: JobStore, clock: ManualClock
) -> None:
    """Publishing a committed output runs no model: a lost worker is no reason to fail it."""
    job = create(jobstore, max_attempts=1)
    lost = claim(jobstore, job, worker="w1")
    staged = staged_output(lost)
    assert jobstore.commit_output(lost, staged)
    clock.advance(LEASE_S + 1)

    publishing = claim(jobstore, job, worker="w2")

    assert (publishing.attempt, publishing.job.staged_output) == (2, staged)
    assert not jobstore.mark_succeeded(lost, staged)
    assert jobstore.mark_succeeded(publishing, staged)
    done = jobstore.get(job.id)
    assert (done.status, done.worker, done.model) == (JobStatus.SUCCEEDED, "w2", "m")


def test_a_requeue_keeps_the_committed_output(jobstore: JobStore) -> None:
    job = create(jobstore)
    current = claim(jobstore, job)
    staged = staged_output(current)
    assert jobstore.commit_output(current, staged)
    jobstore.cancel(job.id, actor="cli:test@host")

    jobstore.requeue([job.id], actor="cli:test@host")

    assert jobstore.get(job.id).staged_output == staged
    assert claim(jobstore, job).job.staged_output == staged


def test_mark_retrying_then_the_next_attempt(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    first = claim(jobstore, job)
    due = clock() + timedelta(seconds=30)

    assert jobstore.mark_retrying(
        first, error_code="storage_unavailable", error_message="503", next_attempt_at=due
    )

    retrying = jobstore.get(job.id)
    assert (retrying.status, retrying.error_code, retrying.next_attempt_at) == (
        JobStatus.RETRYING,
        "storage_unavailable",
        due,
    )
    assert retrying.lease_expires_at is None
    event = jobstore.events(job.id)[-1]
    assert (event.kind, event.reason) == (EventKind.RETRIED, "503")
    assert event.details == {
        "error_code": "storage_unavailable",
        "attempt": 1,
        "next_attempt_at": due.isoformat(),
    }

    second = claim(jobstore, job, worker="w2")
    assert second.attempt == 2
    assert second.job.next_attempt_at is None
    assert not jobstore.mark_failed(first, error_code="x", error_message="stale claim")


def test_a_retry_claimed_early_is_left_waiting(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    due = clock() + timedelta(seconds=30)
    retry(jobstore, job, due)
    waiting = jobstore.get(job.id)

    early = jobstore.claim(job.id, worker="w2", lease_s=LEASE_S, early_tolerance_s=1.0)

    assert early == NotDue(waiting)
    assert early.due_at == due
    assert jobstore.get(job.id) == waiting
    clock.advance(29.5)  # within the tolerance of its due time
    on_time = jobstore.claim(job.id, worker="w2", lease_s=LEASE_S, early_tolerance_s=1.0)
    assert isinstance(on_time, Claim)
    assert (on_time.attempt, on_time.waited_since) == (2, due)


def test_a_claim_says_since_when_the_job_waited(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    assert jobstore.mark_enqueued(job.id)
    sent = jobstore.get(job.id).sent_at
    clock.advance(5)

    current = claim(jobstore, job)

    assert current.waited_since == sent
    assert current.job == jobstore.get(job.id)


def test_mark_failed(jobstore: JobStore) -> None:
    job = create(jobstore)
    current = claim(jobstore, job)

    assert jobstore.mark_failed(current, error_code="invalid_image", error_message="truncated")

    failed = jobstore.get(job.id)
    assert (failed.status, failed.error_code, failed.error_message) == (
        JobStatus.FAILED,
        "invalid_image",
        "truncated",
    )
    assert failed.finished_at is not None
    event = jobstore.events(job.id)[-1]
    assert (event.kind, event.reason, event.details) == (
        EventKind.FAILED,
        "truncated",
        {"error_code": "invalid_image", "attempt": 1},
    )


OUTCOMES: dict[str, Callable[[JobStore, Claim], bool]] = {
    "succeeded": lambda store, current: succeed(
        store,
        current,
        model_name="m",
        model_revision="r",
        image_width=1,
        image_height=1,
        timings={},
    ),
    "retrying": lambda store, current: store.mark_retrying(
        current,
        error_code="storage_unavailable",
        error_message="503",
        next_attempt_at=datetime.now(UTC),
    ),
    "failed": lambda store, current: store.mark_failed(
        current, error_code="invalid_image", error_message="bad"
    ),
    "extend_lease": lambda store, current: store.extend_lease(current, LEASE_S),
}


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_an_outcome_after_cancel_changes_nothing(jobstore: JobStore, outcome: str) -> None:
    job = create(jobstore)
    current = claim(jobstore, job)
    cancelled = jobstore.cancel(job.id, actor="cli:ops@laptop", reason="wrong input")
    history = jobstore.events(job.id)

    assert OUTCOMES[outcome](jobstore, current) is False

    assert jobstore.get(job.id) == cancelled
    assert jobstore.events(job.id) == history


@pytest.mark.parametrize("outcome", OUTCOMES)
def test_an_outcome_cannot_overwrite_a_recorded_one(jobstore: JobStore, outcome: str) -> None:
    job = create(jobstore)
    current = claim(jobstore, job)
    assert jobstore.mark_failed(current, error_code="invalid_image", error_message="bad")
    failed = jobstore.get(job.id)

    assert OUTCOMES[outcome](jobstore, current) is False
    assert jobstore.get(job.id) == failed


# --- Cancel ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("running", [False, True])
def test_cancel(jobstore: JobStore, running: bool) -> None:
    job = create(jobstore)
    if running:
        claim(jobstore, job)

    cancelled = jobstore.cancel(job.id, actor="cli:ops@laptop", reason="wrong input")

    assert cancelled.status is JobStatus.CANCELLED
    assert cancelled.finished_at is not None
    assert cancelled.lease_expires_at is None
    event = jobstore.events(job.id)[-1]
    assert (event.kind, event.actor, event.reason) == (
        EventKind.CANCELLED,
        "cli:ops@laptop",
        "wrong input",
    )


@pytest.mark.parametrize("status", FINISHED)
def test_a_finished_job_cannot_be_cancelled(jobstore: JobStore, status: JobStatus) -> None:
    job = finish(jobstore, create(jobstore), status)

    with pytest.raises(InvalidTransitionError, match=status.value) as refused:
        jobstore.cancel(job.id, actor="cli")
    assert isinstance(refused.value, AlreadyCancelledError) == (status is JobStatus.CANCELLED)
    assert jobstore.get(job.id) == job


# --- Requeue --------------------------------------------------------------------------------------


def test_requeue_by_ids(jobstore: JobStore) -> None:
    failed = finish(jobstore, create(jobstore), JobStatus.FAILED)
    cancelled = finish(jobstore, create(jobstore), JobStatus.CANCELLED)

    result = jobstore.requeue([cancelled.id, failed.id], actor="cli:ops@laptop", reason="fixed")

    # Jobs named by id are requeued even when they failed permanently (input_not_found).
    assert {job.id for job in result.requeued} == {failed.id, cancelled.id}
    assert result.skipped == []
    for job in result.requeued:
        assert job == jobstore.get(job.id)
        assert (job.status, job.attempts) == (JobStatus.QUEUED, 0)
        assert job.error_code is job.error_message is job.worker is None
        assert job.started_at is job.finished_at is job.lease_expires_at is None
    event = jobstore.events(failed.id)[-1]
    assert (event.kind, event.actor, event.reason) == (
        EventKind.REQUEUED,
        "cli:ops@laptop",
        "fixed",
    )
    assert event.details == {"from": "failed", "error_code": "input_not_found", "attempts": 1}
    assert claim(jobstore, failed).attempt == 1


@pytest.mark.parametrize("status", [JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.SUCCEEDED])
def test_requeue_by_ids_refuses_other_statuses(jobstore: JobStore, status: JobStatus) -> None:
    failed = finish(jobstore, create(jobstore), JobStatus.FAILED)
    other = create(jobstore)
    if status is JobStatus.RUNNING:
        claim(jobstore, other)
    elif status is JobStatus.SUCCEEDED:
        finish(jobstore, other, status)

    with pytest.raises(InvalidTransitionError, match=str(other.id)):
        jobstore.requeue([failed.id, other.id], actor="cli")

    assert jobstore.get(failed.id) == failed


def test_requeue_by_filter_and_dry_run(jobstore: JobStore, clock: ManualClock) -> None:
    old = finish(jobstore, create(jobstore), JobStatus.FAILED)
    clock.advance(60)
    recent = finish(jobstore, create(jobstore), JobStatus.FAILED)
    other_code = fail(jobstore, create(jobstore), "invalid_image")
    cancelled = finish(jobstore, create(jobstore), JobStatus.CANCELLED)
    history = {job.id: jobstore.events(job.id) for job in (old, recent, other_code, cancelled)}
    selection: dict[str, Any] = {
        "error_code": "input_not_found",
        "since": recent.created_at,
        "include_permanent": True,
    }

    preview = jobstore.requeue(actor="cli", dry_run=True, **selection)

    assert [job.id for job in preview.requeued] == [recent.id]
    assert preview.requeued[0].status is JobStatus.FAILED
    assert {job_id: jobstore.events(job_id) for job_id in history} == history

    requeued = jobstore.requeue(actor="cli", **selection).requeued

    assert [job.id for job in requeued] == [recent.id]
    assert requeued[0].status is JobStatus.QUEUED
    assert jobstore.get(old.id).status is JobStatus.FAILED
    assert [job.id for job in jobstore.requeue(status="cancelled", actor="cli").requeued] == [
        cancelled.id
    ]
    everything = jobstore.requeue(all=True, include_permanent=True, actor="cli")
    assert [job.id for job in everything.requeued] == [old.id, other_code.id]


@pytest.mark.parametrize("dry_run", [True, False])
def test_requeue_by_filter_skips_permanent_failures(jobstore: JobStore, dry_run: bool) -> None:
    permanent = fail(jobstore, create(jobstore), "invalid_image")
    transient = fail(jobstore, create(jobstore), "storage_unavailable")
    internal = fail(jobstore, create(jobstore), "internal_error")

    result = jobstore.requeue(all=True, actor="cli", dry_run=dry_run)

    assert [job.id for job in result.requeued] == [transient.id, internal.id]
    assert result.skipped == [permanent]
    assert jobstore.get(permanent.id) == permanent
    expected = JobStatus.FAILED if dry_run else JobStatus.QUEUED
    assert {jobstore.get(job.id).status for job in result.requeued} == {expected}
    by_code = jobstore.requeue(error_code="invalid_image", actor="cli", dry_run=dry_run)
    assert (by_code.requeued, by_code.skipped) == ([], [permanent])


@pytest.mark.parametrize(
    "selection",
    [
        {},
        {"job_ids": [], "error_code": "internal_error"},
        {"job_ids": [], "all": True},
        {"all": True, "since": datetime(2026, 1, 1, tzinfo=UTC)},
    ],
    ids=["nothing", "ids-and-filter", "ids-and-all", "all-and-filter"],
)
def test_requeue_needs_one_selection(jobstore: JobStore, selection: dict[str, Any]) -> None:
    failed = fail(jobstore, create(jobstore), "internal_error")

    with pytest.raises(InvalidRequestError, match="requeue"):
        jobstore.requeue(actor="cli", **selection)

    assert jobstore.get(failed.id) == failed


def test_requeue_only_selects_failed_or_cancelled(jobstore: JobStore) -> None:
    with pytest.raises(InvalidRequestError):
        jobstore.requeue(status=JobStatus.QUEUED, actor="cli")


# --- Delivery bookkeeping -------------------------------------------------------------------------


def test_due_for_recovery(jobstore: JobStore, clock: ManualClock) -> None:
    unsent = create(jobstore)
    sent = create(jobstore)
    assert jobstore.mark_enqueued(sent.id)
    running = create(jobstore)
    claim(jobstore, running)
    retrying = create(jobstore)
    retry(jobstore, retrying, clock() + timedelta(seconds=30))
    finish(jobstore, create(jobstore), JobStatus.FAILED)

    def due(after_s: float) -> set[uuid.UUID]:
        now = clock() + timedelta(seconds=after_s)
        found = jobstore.due_for_recovery(unsent_grace_s=10, lost_after_s=600, now=now)
        return {job.id for job in found}

    assert due(0) == set()
    assert due(11) == {unsent.id}  # never sent: the grace period is over
    assert due(41) == {unsent.id, retrying.id}  # due 30 s from now, and never sent
    assert due(LEASE_S + 1) == {unsent.id, retrying.id, running.id}  # lease expired
    assert due(601) == {unsent.id, sent.id, retrying.id, running.id}  # presumed lost


def test_mark_enqueued_applies_to_waiting_jobs_and_lost_running_ones(
    jobstore: JobStore, clock: ManualClock
) -> None:
    queued = create(jobstore)
    running = create(jobstore)
    claim(jobstore, running)

    assert jobstore.mark_enqueued(queued.id)
    assert jobstore.get(queued.id).sent_at is not None
    assert not jobstore.mark_enqueued(running.id)  # its worker holds a live lease
    assert jobstore.get(running.id).sent_at is None
    clock.advance(LEASE_S + 1)
    assert jobstore.mark_enqueued(running.id)  # the message that will reclaim it


def test_mark_all_enqueued_records_the_sends_that_apply_at_once(
    jobstore: JobStore, clock: ManualClock
) -> None:
    queued = [create(jobstore) for _ in range(3)]
    running = create(jobstore)
    claim(jobstore, running)
    unknown = uuid.uuid4()

    marked = jobstore.mark_all_enqueued([*(job.id for job in queued), running.id, unknown])

    assert marked == {job.id for job in queued}
    assert all(jobstore.get(job.id).sent_at is not None for job in queued)
    assert jobstore.get(running.id).sent_at is None  # its worker holds a live lease
    assert jobstore.mark_all_enqueued([]) == set()
    clock.advance(LEASE_S + 1)
    assert jobstore.mark_all_enqueued([running.id, queued[0].id]) == {running.id, queued[0].id}


def test_enqueued_at_stays_once_the_job_is_claimed(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    assert jobstore.mark_enqueued(job.id)
    sent = jobstore.get(job.id).enqueued_at
    clock.advance(5)

    claim(jobstore, job)

    claimed = jobstore.get(job.id)
    assert claimed.sent_at is None  # no message is waiting for it any more
    assert claimed.enqueued_at == sent
    assert claimed.to_dict()["enqueued_at"] is not None


def test_a_lost_running_job_is_recovered_once_not_at_every_pass(
    jobstore: JobStore, clock: ManualClock
) -> None:
    running = create(jobstore)
    claim(jobstore, running)
    clock.advance(LEASE_S + 1)

    def due() -> set[uuid.UUID]:
        return {job.id for job in jobstore.due_for_recovery(unsent_grace_s=10, lost_after_s=600)}

    assert due() == {running.id}
    assert jobstore.mark_enqueued(running.id)
    assert due() == set()
    clock.advance(601)  # that message is presumed lost too
    assert due() == {running.id}


def test_jobs_due_for_recovery_come_most_urgent_first(
    jobstore: JobStore, clock: ManualClock
) -> None:
    low = create(jobstore, priority=0)
    clock.advance(1)
    high = create(jobstore, priority=9)
    clock.advance(1)
    later_low = create(jobstore, priority=0)

    def due(limit: int) -> list[uuid.UUID]:
        found = jobstore.due_for_recovery(unsent_grace_s=0, lost_after_s=600, limit=limit)
        return [job.id for job in found]

    clock.advance(1)
    assert due(10) == [high.id, low.id, later_low.id]
    assert due(2) == [high.id, low.id]


def test_held_jobs_are_left_to_their_tenants_release(
    jobstore: JobStore, clock: ManualClock
) -> None:
    held = create(jobstore, tenant="acme")
    unsent = create(jobstore)
    clock.advance(60)

    def due(*, hold_tenants: bool) -> set[uuid.UUID]:
        found = jobstore.due_for_recovery(
            unsent_grace_s=10, lost_after_s=600, hold_tenants=hold_tenants
        )
        return {job.id for job in found}

    assert due(hold_tenants=True) == {unsent.id}
    assert due(hold_tenants=False) == {held.id, unsent.id}
    assert jobstore.held_tenants() == ["acme"]


def test_releasable_fills_a_tenants_slots_most_urgent_first(
    jobstore: JobStore, clock: ManualClock
) -> None:
    jobs = []
    for priority in (0, 0, 9, 0, 0):
        jobs.append(create(jobstore, tenant="acme", priority=priority))
        clock.advance(1)
    create(jobstore, tenant="initech")
    first, second, urgent, *_ = jobs

    def releasable(**limits: int) -> list[uuid.UUID]:
        return [job.id for job in jobstore.releasable("acme", queue_slots=2, **limits)]

    assert releasable() == [urgent.id, first.id]
    for job_id in releasable():
        assert jobstore.mark_enqueued(job_id)
    assert releasable() == []  # its two slots are taken
    claim(jobstore, urgent)
    assert releasable() == [second.id]
    # Sent and running count against a cap on jobs in flight.
    assert releasable(max_in_flight=2) == []
    assert releasable(max_in_flight=3) == [second.id]
    assert jobstore.held_tenants() == ["acme", "initech"]
    assert {job.id for job in jobstore.list(tenant="acme")} == {job.id for job in jobs}


def test_waiting_after_send(jobstore: JobStore, clock: ManualClock) -> None:
    start = clock()
    unsent = create(jobstore)
    sent = create(jobstore, priority=5)
    assert jobstore.mark_enqueued(sent.id)
    running = create(jobstore)
    assert jobstore.mark_enqueued(running.id)
    claim(jobstore, running)
    retrying = create(jobstore)
    retry(jobstore, retrying, clock() + timedelta(seconds=30))
    retrying_unsent = create(jobstore)
    retry(jobstore, retrying_unsent, clock())
    assert jobstore.mark_enqueued(retrying.id)

    def waiting(sent_s: float, due_s: float) -> list[uuid.UUID]:
        found = jobstore.waiting_after_send(
            sent_before={(0, 9): start + timedelta(seconds=sent_s)},
            due_before=start + timedelta(seconds=due_s),
        )
        return [job.id for job in found]

    assert waiting(0, 0) == []  # sent after `start`; the retry is not due yet
    assert waiting(1, 0) == [sent.id]
    assert waiting(1, 31) == [sent.id, retrying.id]
    assert unsent.id not in waiting(3600, 3600)
    assert retrying_unsent.id not in waiting(3600, 3600)
    assert jobstore.waiting_after_send(
        sent_before={(0, 9): start + timedelta(seconds=1)},
        due_before=start + timedelta(seconds=31),
        limit=1,
    ) == [jobstore.get(sent.id)]


def test_waiting_after_send_compares_each_band_of_priorities_with_its_own_cutoff(
    jobstore: JobStore, clock: ManualClock
) -> None:
    start = clock()
    low, high = create(jobstore, priority=0), create(jobstore, priority=8)
    for job in (low, high):
        assert jobstore.mark_enqueued(job.id)
    lapsed, renewed = create(jobstore, priority=8), create(jobstore, priority=8)
    claims = {job.id: claim(jobstore, job) for job in (lapsed, renewed)}
    clock.advance(LEASE_S + 1)
    for job in (lapsed, renewed):
        assert jobstore.mark_enqueued(job.id)  # the message that will reclaim it
    assert jobstore.extend_lease(claims[renewed.id], LEASE_S)  # its worker was alive after all
    later = clock() + timedelta(seconds=1)

    def waiting(**sent_before: datetime) -> set[uuid.UUID]:
        bands = {"low": (0, 0), "high": (7, 9)}
        found = jobstore.waiting_after_send(
            sent_before={bands[name]: cutoff for name, cutoff in sent_before.items()},
            due_before=later,
        )
        return {job.id for job in found}

    assert waiting(low=start, high=later) == {high.id, lapsed.id}
    assert waiting(low=later, high=start) == {low.id}
    assert waiting(high=later) == {high.id, lapsed.id}  # no band given for priority 0


# --- History --------------------------------------------------------------------------------------


def test_events_tell_the_story_oldest_first(jobstore: JobStore, clock: ManualClock) -> None:
    job = create(jobstore)
    first = claim(jobstore, job, worker="w1")
    jobstore.mark_retrying(
        first, error_code="storage_unavailable", error_message="503", next_attempt_at=clock()
    )
    second = claim(jobstore, job, worker="w2")
    jobstore.mark_failed(second, error_code="invalid_image", error_message="bad")
    jobstore.requeue([job.id], actor="cli:ops@laptop")
    jobstore.cancel(job.id, actor="cli:ops@laptop")

    events = jobstore.events(job.id)

    assert [(event.kind, event.actor) for event in events] == [
        (EventKind.CREATED, "producer"),
        (EventKind.STARTED, "w1"),
        (EventKind.RETRIED, "w1"),
        (EventKind.STARTED, "w2"),
        (EventKind.FAILED, "w2"),
        (EventKind.REQUEUED, "cli:ops@laptop"),
        (EventKind.CANCELLED, "cli:ops@laptop"),
    ]
    assert [event.id for event in events] == sorted(event.id for event in events)
    assert all(earlier.at <= later.at for earlier, later in itertools.pairwise(events))
    assert json.loads(json.dumps(events[2].to_dict()))["kind"] == "retried"


def test_each_event_leads_to_the_status_its_kind_names(
    jobstore: JobStore, clock: ManualClock
) -> None:
    job = create(jobstore)
    seen: list[EventKind] = []

    def check() -> None:
        """The events since the last check all lead to the status the job has now."""
        events = jobstore.events(job.id)[len(seen) :]
        assert events
        status = jobstore.get(job.id).status
        assert [event.kind.status for event in events] == [status] * len(events)
        seen.extend(event.kind for event in events)

    check()
    claim(jobstore, job, worker="w1")
    check()
    clock.advance(LEASE_S + 1)
    current = claim(jobstore, job, worker="w2")  # reclaimed, then started
    check()
    jobstore.mark_retrying(
        current, error_code="storage_unavailable", error_message="503", next_attempt_at=clock()
    )
    check()
    current = claim(jobstore, job)
    check()
    jobstore.hand_back(current, reason="stopping")
    check()
    current = claim(jobstore, job)
    check()
    jobstore.mark_failed(current, error_code="invalid_image", error_message="bad")
    check()
    jobstore.requeue([job.id], actor="cli:ops@laptop")
    check()
    jobstore.cancel(job.id, actor="cli:ops@laptop")
    check()
    jobstore.requeue([job.id], actor="cli:ops@laptop")
    check()
    current = claim(jobstore, job)
    check()
    succeed(jobstore, current)
    check()

    assert set(seen) == {kind for kind in EventKind if kind.status is not None}


# --- Webhook outbox -------------------------------------------------------------------------------

CALLBACK = "https://hooks.example.com/toonq"


@pytest.mark.parametrize("status", [JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED])
def test_an_outcome_makes_its_webhook_due_with_an_id_of_its_own(
    jobstore: JobStore, clock: ManualClock, status: JobStatus
) -> None:
    job = finish(jobstore, create(jobstore, callback_url=CALLBACK), status)
    silent = finish(jobstore, create(jobstore), status)
    clock.advance(1)

    taken = jobstore.take_due_webhooks(hold_s=60)

    assert [(held.id, held.webhook_id) for held, _ in taken] == [(job.id, job.webhook_id)]
    assert job.webhook_id is not None
    assert job.webhook_id.startswith("msg_")
    assert job.to_dict()["webhook"] == {
        "id": job.webhook_id,
        "state": "pending",
        "attempts": 0,
        "next_attempt_at": job.to_dict()["finished_at"],
    }
    assert silent.to_dict()["webhook"] is None


def test_a_taken_webhook_is_left_alone_until_its_hold_lapses(
    jobstore: JobStore, clock: ManualClock
) -> None:
    job = finish(jobstore, create(jobstore, callback_url=CALLBACK), JobStatus.SUCCEEDED)
    clock.advance(1)
    assert len(jobstore.take_due_webhooks(hold_s=60)) == 1

    assert jobstore.take_due_webhooks(hold_s=60) == []  # another deliverer finds nothing
    clock.advance(61)  # the first one died before recording its attempt
    ((again, _),) = jobstore.take_due_webhooks(hold_s=60)
    assert again.webhook_id == job.webhook_id


def test_attempts_are_recorded_as_events_until_sent_or_failed_for_good(
    jobstore: JobStore, clock: ManualClock
) -> None:
    job = finish(jobstore, create(jobstore, callback_url=CALLBACK), JobStatus.FAILED)
    clock.advance(1)
    ((taken, history),) = jobstore.take_due_webhooks(hold_s=60)
    assert [event.kind for event in history] == ["created", "started", "failed"]

    retried = jobstore.record_webhook_missed(
        taken, actor="w1", problem="answered HTTP 503", retry_after=timedelta(seconds=5)
    )
    assert retried is not None
    assert (retried.webhook_state, retried.webhook_attempts) == ("pending", 1)
    assert jobstore.take_due_webhooks(hold_s=60) == []  # not due yet
    clock.advance(6)
    ((taken, _),) = jobstore.take_due_webhooks(hold_s=60)
    failed = jobstore.record_webhook_missed(taken, actor="w1", problem="timeout", retry_after=None)
    assert failed is not None
    assert (failed.webhook_state, failed.webhook_attempts) == ("failed", 2)
    assert jobstore.failed_webhooks() == [failed]

    (resent,) = jobstore.resend_webhooks([job.id, create(jobstore).id])
    assert (resent.webhook_id, resent.webhook_state, resent.webhook_attempts) == (
        job.webhook_id,
        "pending",
        0,
    )
    clock.advance(1)
    ((taken, _),) = jobstore.take_due_webhooks(hold_s=60)
    sent = jobstore.record_webhook_sent(taken, actor="w2", status_code=204)
    assert sent is not None
    assert sent.webhook_state == "sent"
    events = jobstore.events(job.id)[3:]
    assert [(e.kind, e.reason, e.details) for e in events] == [
        (
            "webhook_retry",
            "answered HTTP 503",
            {
                "webhook_id": job.webhook_id,
                "attempt": 1,
                "next_attempt_at": iso_utc(retried.webhook_next_at),
            },
        ),
        ("webhook_failed", "timeout", {"webhook_id": job.webhook_id, "attempt": 2}),
        ("webhook_sent", None, {"webhook_id": job.webhook_id, "attempt": 1, "status_code": 204}),
    ]
    assert jobstore.get(job.id).status == JobStatus.FAILED  # the webhook changes no status


def test_a_requeue_supersedes_the_webhook_of_the_outcome_before(
    jobstore: JobStore, clock: ManualClock
) -> None:
    job = finish(jobstore, create(jobstore, callback_url=CALLBACK), JobStatus.FAILED)
    clock.advance(1)
    ((taken, _),) = jobstore.take_due_webhooks(hold_s=60)

    jobstore.requeue([job.id], actor="cli:ops@laptop")

    assert jobstore.record_webhook_sent(taken, actor="w1", status_code=200) is None
    assert jobstore.get(job.id).to_dict()["webhook"] is None
    again = finish(jobstore, jobstore.get(job.id), JobStatus.SUCCEEDED)
    assert again.webhook_id not in (None, job.webhook_id)


# --- Helpers --------------------------------------------------------------------------------------


def run_concurrently(threads: int, call: Callable[[], T]) -> list[T]:
    """Run `call` in `threads` threads released together; re-raises the first error."""
    start = threading.Barrier(threads)
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        start.wait()
        try:
            results.append(call())
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise errors[0]
    return results


def test_a_stale_worker_cannot_record_over_the_attempt_of_a_requeued_job(
    jobstore: JobStore,
) -> None:
    job = create(jobstore)
    stale = claim(jobstore, job, worker="w1")
    jobstore.cancel(job.id, actor="cli:test@host")
    jobstore.requeue([job.id], actor="cli:test@host")
    current = claim(jobstore, job, worker="w2")
    assert current.attempt == stale.attempt == 1  # the attempt count alone cannot tell them apart

    assert not jobstore.mark_failed(stale, error_code="input_not_found", error_message="gone")
    assert not jobstore.extend_lease(stale, LEASE_S)
    assert succeed(jobstore, current)
    done = jobstore.get(job.id)
    assert (done.status, done.worker, done.error_code) == (JobStatus.SUCCEEDED, "w2", None)
