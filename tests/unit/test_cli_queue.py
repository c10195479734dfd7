"""The queue commands (`toonq submit`, `status`, `watch`, `jobs`, `cancel`, `requeue`,
`recover`) through click's runner, with a client on the in-memory job store and the memory
broker."""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from click.testing import CliRunner, Result

from tests.support import png_bytes, succeed
from tests.unit.conftest import ACTOR, memory_client
from toonq.producer import ToonqClient
from toonq.producer.cli.context import Context
from toonq.producer.cli.main import cli
from toonq.shared.job import EventKind, Job, JobParams, JobSpec, JobStatus
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.recovery import UNSENT_GRACE_S
from toonq.shared.settings import Settings
from toonq.shared.storage import local_roots
from toonq.shared.storage.local import LocalStore

if TYPE_CHECKING:
    from tests.conftest import ManualClock
    from tests.unit.conftest import MemoryBroker


def toonq(client: ToonqClient, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), obj=Context(client), input=input)


def toonq_json(client: ToonqClient, *args: str) -> Any:
    result = toonq(client, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def input_uri(settings: Settings) -> str:
    source = settings.home / "in" / "cat.png"
    source.parent.mkdir(exist_ok=True)
    source.write_bytes(png_bytes())
    return source.as_uri()


def created_job(
    jobstore: InMemoryJobStore, settings: Settings, job_id: uuid.UUID | None = None
) -> Job:
    """A job created in the store (its message never sent)."""
    job_id = job_id or uuid.uuid4()
    job, _ = jobstore.create(
        JobSpec(
            id=job_id,
            input_uri=input_uri(settings),
            output_uri=f"{settings.output_prefix}/{job_id}.png",
            params=JobParams(bg_color="#808080", format="png", resolution=1024),
            max_attempts=1,
        ),
        actor="producer",
    )
    return job


def failed_job(
    jobstore: InMemoryJobStore, settings: Settings, error_code: str = "input_not_found"
) -> Job:
    job = created_job(jobstore, settings)
    claim = jobstore.claim(job.id, worker="w1", lease_s=60)
    assert claim is not None
    assert jobstore.mark_failed(claim, error_code=error_code, error_message="gone")
    return jobstore.get(job.id)


def test_submit_writes_a_queued_job_and_sends_its_message(
    client: ToonqClient, settings: Settings, broker: MemoryBroker
) -> None:
    data = toonq_json(client, "submit", input_uri(settings), "--priority", "5", "--mask-only")

    job = client.get(data["id"])
    assert data == job.to_dict()
    assert (job.status, job.priority, job.params.mask_only) == (JobStatus.QUEUED, 5, True)
    assert job.output_uri == f"{settings.output_prefix}/{job.id}.png"
    assert job.sent_at is not None
    assert [message.job_id for message in broker.take_sent()] == [job.id]
    assert [(event.kind, event.actor) for event in client.events(job.id)] == [
        (EventKind.CREATED, ACTOR)
    ]


def test_submit_writes_a_mask_as_webp(client: ToonqClient, settings: Settings) -> None:
    data = toonq_json(client, "submit", input_uri(settings), "--mask-only", "--format", "webp")

    assert (data["params"]["mask_only"], data["params"]["format"]) == (True, "webp")
    assert data["output_uri"] == f"{settings.output_prefix}/{data['id']}.webp"


def test_submit_asks_to_respect_the_input_alpha(client: ToonqClient, settings: Settings) -> None:
    asked = toonq_json(client, "submit", input_uri(settings), "--respect-input-alpha")
    plain = toonq_json(client, "submit", input_uri(settings))

    assert asked["params"]["respect_input_alpha"] is True
    assert client.get(asked["id"]).params.respect_input_alpha is True
    assert plain["params"]["respect_input_alpha"] is False  # off unless asked for


#: The sticker options of `toonq submit`, and the job parameters they ask for.
STICKER_OPTIONS = (
    *("--preset", "telegram", "--trim", "--margin", "8", "--outline", "4", "--shadow"),
    "--no-temporal-smoothing",
)
STICKER_PARAMS = {
    "preset": "telegram",
    "trim": True,
    "margin": 8,
    "outline": 4,
    "shadow": True,
    "temporal_smoothing": False,
}


def test_submit_passes_each_sticker_option_to_the_job(
    client: ToonqClient, settings: Settings
) -> None:
    asked = toonq_json(client, "submit", input_uri(settings), *STICKER_OPTIONS)
    plain = toonq_json(client, "submit", input_uri(settings))

    assert {name: asked["params"][name] for name in STICKER_PARAMS} == STICKER_PARAMS
    stored = client.get(asked["id"]).params
    assert {name: getattr(stored, name) for name in STICKER_PARAMS} == STICKER_PARAMS
    # Left out, each is off, and the edges of an animation are smoothed.
    assert {name: plain["params"][name] for name in STICKER_PARAMS} == {
        "preset": None,
        "trim": False,
        "margin": 0,
        "outline": 0,
        "shadow": False,
        "temporal_smoothing": True,
    }


def test_bulk_submit_passes_the_sticker_options_to_each_job(
    client: ToonqClient, settings: Settings
) -> None:
    uris = images(settings, "a.png", "b.png")

    submitted = json_lines(toonq(client, "submit", *uris, *STICKER_OPTIONS, "--json"))

    assert [{name: data["params"][name] for name in STICKER_PARAMS} for data in submitted] == [
        STICKER_PARAMS,
        STICKER_PARAMS,
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ("--margin", "8"),
            "margin 8 is kept around the trimmed subject: ask for trim too, or leave margin at 0",
        ),
        (("--outline", "129"), "outline must be a whole number of pixels from 0 to 128, got 129"),
        (
            ("--preset", "discord", "--format", "webp"),
            "preset 'discord' takes format png only (its stickers are PNG or APNG), not webp",
        ),
        (
            ("--mask-only", "--outline", "4"),
            "a mask has no colours to outline or shade and is no sticker to trim or fit to a "
            "platform: ask for mask_only or for outline, not both",
        ),
    ],
)
def test_submit_refuses_sticker_options_that_cannot_be_met(
    client: ToonqClient,
    settings: Settings,
    jobstore: InMemoryJobStore,
    broker: MemoryBroker,
    options: tuple[str, ...],
    message: str,
) -> None:
    refused = toonq(client, "submit", input_uri(settings), *options)

    assert refused.exit_code == 1
    assert refused.stderr == f"error [invalid_request]: {message}\n"
    assert jobstore.list() == []
    assert broker.take_sent() == []


def test_submit_refuses_to_refine_a_mask(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore, broker: MemoryBroker
) -> None:
    refused = toonq(client, "submit", input_uri(settings), "--mask-only", "--refine-foreground")

    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        "error [invalid_request]: refine_foreground estimates the cut-out's colours and a mask "
        "has none: ask for mask_only or refine_foreground, not both\n"
    )
    assert jobstore.list() == []
    assert broker.take_sent() == []


def test_submit_refuses_a_resolution_over_the_deployments_cap(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore, broker: MemoryBroker
) -> None:
    assert settings.max_resolution == 2048

    refused = toonq(client, "submit", input_uri(settings), "--resolution", "3072")

    assert refused.exit_code == 1
    assert refused.stdout == ""
    assert refused.stderr == (
        "error [invalid_request]: resolution must be a positive multiple of 32 up to 2048, "
        "got 3072\n"
    )
    assert jobstore.list() == []
    assert broker.take_sent() == []


def test_an_idempotency_conflict_names_what_differs(
    client: ToonqClient, settings: Settings
) -> None:
    uri = input_uri(settings)
    job = client.submit(uri, idempotency_key="sticker-9")

    refused = toonq(client, "submit", uri, "--idempotency-key", "sticker-9", "--priority", "7")

    assert refused.exit_code == 1
    assert refused.stderr == (
        f"error [idempotency_conflict]: idempotency key 'sticker-9' is already used by job "
        f"{job.id} with other parameters: priority 7 (the job's: 0)\n"
    )
    assert client.list() == [job]


def test_an_idempotency_conflict_names_respect_input_alpha(
    client: ToonqClient, settings: Settings
) -> None:
    uri = input_uri(settings)
    job = client.submit(uri, idempotency_key="sticker-9", respect_input_alpha=True)

    refused = toonq(client, "submit", uri, "--idempotency-key", "sticker-9")

    assert refused.exit_code == 1
    assert refused.stderr == (
        f"error [idempotency_conflict]: idempotency key 'sticker-9' is already used by job "
        f"{job.id} with other parameters: respect_input_alpha False (the job's: True)\n"
    )
    again = toonq_json(
        client, "submit", uri, "--idempotency-key", "sticker-9", "--respect-input-alpha"
    )
    assert again["id"] == str(job.id)
    assert client.list() == [job]


def test_an_idempotency_conflict_names_each_sticker_parameter_that_differs(
    client: ToonqClient, settings: Settings
) -> None:
    uri = input_uri(settings)
    job = client.submit(uri, idempotency_key="sticker-9", preset="line", trim=True, margin=2)

    refused = toonq(client, "submit", uri, "--idempotency-key", "sticker-9", *STICKER_OPTIONS)

    assert refused.exit_code == 1
    assert refused.stderr == (
        f"error [idempotency_conflict]: idempotency key 'sticker-9' is already used by job "
        f"{job.id} with other parameters: preset 'telegram' (the job's: 'line'), margin 8 "
        "(the job's: 2), outline 4 (the job's: 0), shadow True (the job's: False), "
        "temporal_smoothing False (the job's: True)\n"
    )
    again = toonq_json(
        client,
        "submit",
        uri,
        "--idempotency-key",
        "sticker-9",
        *("--preset", "line", "--trim", "--margin", "2", "--temporal-smoothing"),
    )
    assert again["id"] == str(job.id)
    assert client.list() == [job]


@pytest.mark.parametrize("name", ["toonq.db", "toonq.db-wal"])
def test_submit_never_writes_over_the_embedded_database(
    settings: Settings,
    jobstore: InMemoryJobStore,
    broker: MemoryBroker,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
) -> None:
    """Not even with an allowed output prefix that holds all of TOONQ_HOME."""
    uploads = tmp_path_factory.mktemp("uploads")
    source = uploads / "cat.png"
    source.write_bytes(png_bytes())
    settings = replace(
        settings,
        allowed_output_prefixes=(settings.home.as_uri(),),
        allowed_input_prefixes=(uploads.as_uri(),),
    )
    with ToonqClient(
        settings, objects=LocalStore(local_roots(settings)), store=jobstore, app=broker.app
    ) as client:
        refused = toonq(
            client, "submit", source.as_uri(), "--output", (settings.home / name).as_uri()
        )

    assert refused.exit_code == 1
    assert refused.stderr.startswith("error [invalid_uri]: output URI ")
    assert "which toonq keeps" in refused.stderr
    assert jobstore.list() == []
    assert broker.take_sent() == []


def test_an_output_another_job_has_is_refused(client: ToonqClient, settings: Settings) -> None:
    output = f"{settings.output_prefix}/sticker.png"
    job = client.submit(input_uri(settings), output_uri=output)

    refused = toonq(client, "submit", input_uri(settings), "--output", output)

    assert refused.exit_code == 1
    assert refused.stderr == (
        f"error [output_conflict]: output URI {output!r} is already the output of job {job.id}\n"
    )
    assert client.list() == [job]


def test_status_shows_the_job_and_its_history(client: ToonqClient, settings: Settings) -> None:
    job = client.submit(input_uri(settings))

    data = toonq_json(client, "status", str(job.id))

    assert data["id"] == str(job.id)
    assert data["status"] == "queued"
    assert [event["kind"] for event in data["events"]] == ["created"]
    assert toonq(client, "status", str(job.id)).stdout.startswith(f"id:             {job.id}\n")


def test_status_of_an_unknown_job_is_a_typed_error(client: ToonqClient) -> None:
    unknown = uuid.uuid4()

    result = toonq(client, "status", str(unknown))

    assert result.exit_code == 1
    assert result.stderr == f"error [job_not_found]: job {unknown} not found\n"


def test_jobs_lists_newest_first_with_filters(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings, clock: ManualClock
) -> None:
    failed = failed_job(jobstore, settings)
    clock.advance(1)
    queued = client.submit(input_uri(settings))

    assert [job["id"] for job in toonq_json(client, "jobs")] == [str(queued.id), str(failed.id)]
    assert [job["id"] for job in toonq_json(client, "jobs", "--status", "failed")] == [
        str(failed.id)
    ]
    table = toonq(client, "jobs", "--error-code", "input_not_found").stdout.splitlines()
    assert table[0].split() == [
        "ID",
        "STATUS",
        "ATTEMPTS",
        "ERROR_CODE",
        "INPUT_URI",
        "OUTPUT_URI",
    ]
    assert [line.split()[:4] for line in table[1:]] == [
        [str(failed.id), "failed", "1", "input_not_found"]
    ]


def test_cancel_records_who_cancelled_and_why(client: ToonqClient, settings: Settings) -> None:
    job = client.submit(input_uri(settings))

    result = toonq(client, "cancel", str(job.id), "--reason", "wrong input")

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{job.id} cancelled\n"
    cancelled = client.events(job.id)[-1]
    assert (cancelled.kind, cancelled.actor, cancelled.reason) == (
        EventKind.CANCELLED,
        ACTOR,
        "wrong input",
    )


def test_cancel_takes_several_ids_and_a_cancelled_job_is_a_note(
    client: ToonqClient, settings: Settings
) -> None:
    first, second = client.submit(input_uri(settings)), client.submit(input_uri(settings))
    client.cancel(first.id)
    history = client.events(first.id)

    result = toonq(client, "cancel", str(first.id), str(second.id)[:8])

    assert result.exit_code == 0, result.output
    assert result.stdout == f"{first.id} cancelled\n{second.id} cancelled\n"
    assert result.stderr == f"note: job {first.id} was already cancelled\n"
    assert client.events(first.id) == history
    assert client.get(second.id).status is JobStatus.CANCELLED


def test_cancel_of_a_finished_job_fails_after_cancelling_the_others(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings
) -> None:
    failed = failed_job(jobstore, settings)
    queued = client.submit(input_uri(settings))

    result = toonq(client, "cancel", str(failed.id), str(queued.id), "--json")

    assert result.exit_code == 1
    assert [job["id"] for job in json.loads(result.stdout)] == [str(queued.id)]
    assert result.stderr.startswith(f"error [invalid_transition]: job {failed.id} is failed")
    assert (client.get(queued.id).status, client.get(failed.id)) == (JobStatus.CANCELLED, failed)


def test_cancel_checks_every_id_before_cancelling_any(
    client: ToonqClient, settings: Settings
) -> None:
    queued = client.submit(input_uri(settings))
    unknown = uuid.uuid4()

    result = toonq(client, "cancel", str(queued.id), str(unknown))

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == f"error [job_not_found]: job {unknown} not found\n"
    assert client.get(queued.id).status is JobStatus.QUEUED


def test_commands_take_a_unique_id_prefix(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings
) -> None:
    failed = failed_job(jobstore, settings)
    prefix = str(failed.id)[:8]

    assert toonq_json(client, "status", prefix)["id"] == str(failed.id)
    requeued = toonq_json(client, "requeue", prefix.upper())["requeued"]
    assert [job["id"] for job in requeued] == [str(failed.id)]
    assert toonq_json(client, "cancel", prefix)["status"] == "cancelled"


@pytest.mark.parametrize(
    ("prefix", "error"),
    [
        (
            "abcdef0",
            "error [invalid_job_id]: not a job id: 'abcdef0'; give a full id or its first "
            "8 or more hex digits\n",
        ),
        (
            "abcdef01",
            "error [ambiguous_job_id]: 2 job ids start with 'abcdef01': give more of the id\n",
        ),
        ("abcdef02", "error [job_not_found]: no job id starts with 'abcdef02'\n"),
    ],
)
@pytest.mark.parametrize("command", ["status", "cancel", "requeue"])
def test_an_id_prefix_that_names_no_single_job_is_a_typed_error(
    client: ToonqClient,
    jobstore: InMemoryJobStore,
    settings: Settings,
    command: str,
    prefix: str,
    error: str,
) -> None:
    for last in "12":
        created_job(jobstore, settings, uuid.UUID(f"abcdef01-0000-4000-8000-00000000000{last}"))

    result = toonq(client, command, prefix)

    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == error


def test_requeue_dry_run_shows_what_the_run_does_and_changes_nothing(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings, broker: MemoryBroker
) -> None:
    transient = failed_job(jobstore, settings, "storage_unavailable")
    permanent = failed_job(jobstore, settings, "invalid_image")
    history = jobstore.events(transient.id)

    preview = toonq(client, "requeue", "--all", "--dry-run")

    assert preview.exit_code == 0, preview.output
    lines = preview.stdout.splitlines()
    assert [line.split()[:2] for line in lines[1:2]] == [[str(transient.id), "failed"]]
    assert lines[2] == "would requeue 1 job(s)"
    assert lines[3].startswith("would skip 1 job(s) that failed with a permanent error code")
    assert [line.split()[:4] for line in lines[5:]] == [
        [str(permanent.id), "failed", "1", "invalid_image"]
    ]
    assert jobstore.get(transient.id) == transient
    assert jobstore.events(transient.id) == history
    assert broker.take_sent() == []

    dry = toonq_json(client, "requeue", "--all", "--dry-run")
    done = toonq_json(client, "requeue", "--all")

    assert (dry["dry_run"], done["dry_run"]) == (True, False)
    assert [job["id"] for job in dry["requeued"]] == [job["id"] for job in done["requeued"]]
    assert dry["skipped"] == done["skipped"] == [permanent.to_dict()]
    assert [message.job_id for message in broker.take_sent()] == [transient.id]
    assert jobstore.get(permanent.id) == permanent


def test_requeue_by_filter_includes_permanent_failures_only_when_asked(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings, broker: MemoryBroker
) -> None:
    failed = failed_job(jobstore, settings)  # input_not_found: permanent

    skipped = toonq(client, "requeue", "--error-code", "input_not_found")

    assert skipped.exit_code == 0, skipped.output
    assert skipped.stdout.splitlines()[:2] == [
        "requeued 0 job(s)",
        "skipped 1 job(s) that failed with a permanent error code "
        "(--include-permanent requeues them):",
    ]
    assert jobstore.get(failed.id) == failed

    included = toonq_json(
        client, "requeue", "--error-code", "input_not_found", "--include-permanent"
    )

    assert [(job["id"], job["status"]) for job in included["requeued"]] == [
        (str(failed.id), "queued")
    ]
    assert included["skipped"] == []
    assert [message.job_id for message in broker.take_sent()] == [failed.id]


def test_requeue_sends_the_jobs_back_to_the_queue(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings, broker: MemoryBroker
) -> None:
    failed = failed_job(jobstore, settings)  # permanent, but named by its id

    data = toonq_json(client, "requeue", str(failed.id), "--reason", "fixed")

    [requeued] = data["requeued"]
    assert (requeued["id"], requeued["status"], requeued["attempts"]) == (
        str(failed.id),
        "queued",
        0,
    )
    assert data["skipped"] == []
    assert [message.job_id for message in broker.take_sent()] == [failed.id]
    event = jobstore.events(failed.id)[-1]
    assert (event.kind, event.actor, event.reason) == (EventKind.REQUEUED, ACTOR, "fixed")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "requeue needs JOB_IDs, a filter (--status, --error-code, --since) or --all"),
        (["--reason", "fixed", "--dry-run"], "requeue needs JOB_IDs"),
        (["--all", "--status", "failed"], "give JOB_IDs, filters or --all: only one of them"),
        (["ID", "--all"], "give JOB_IDs, filters or --all: only one of them"),
        (["ID", "--error-code", "invalid_image"], "only one of them"),
    ],
)
def test_requeue_without_one_selection_is_a_usage_error(
    client: ToonqClient,
    jobstore: InMemoryJobStore,
    settings: Settings,
    args: list[str],
    message: str,
) -> None:
    failed = failed_job(jobstore, settings, "storage_unavailable")
    args = [str(failed.id) if arg == "ID" else arg for arg in args]

    refused = toonq(client, "requeue", *args)

    assert refused.exit_code == 2
    assert refused.stdout == ""
    assert refused.stderr.startswith("Usage: ")
    assert message in refused.stderr
    assert jobstore.get(failed.id) == failed


def test_recover_sends_an_unsent_job_and_says_why(
    client: ToonqClient,
    jobstore: InMemoryJobStore,
    settings: Settings,
    broker: MemoryBroker,
    clock: ManualClock,
) -> None:
    unsent = created_job(jobstore, settings)  # its producer died before sending it
    clock.advance(UNSENT_GRACE_S + 1)

    reported = toonq_json(client, "recover")

    # Sent now: if its new message is lost too, it is presumed lost TOONQ_RESEND_AFTER_S later.
    sent_at = jobstore.get(unsent.id).sent_at
    assert sent_at is not None
    due = sent_at + timedelta(seconds=settings.resend_after_s)
    assert reported == {
        "recovered": 1,
        "by_status": {"queued": 1},
        "by_reason": {"unsent": 1},
        "forced": 0,
        "waiting": {"queued": 1},
        "in_queue": None,  # kombu's memory transport cannot be read
        "held": 0,
        "next_due_at": due.isoformat(),
        "last_due_at": due.isoformat(),
    }
    assert [message.job_id for message in broker.take_sent()] == [unsent.id]
    assert toonq(client, "recover").stdout == (
        "re-sent 0 job(s)\n"
        "still waiting: 1 queued\n"
        f"if no worker takes them, they are sent again when due: {due:%Y-%m-%d %H:%M:%S} UTC "
        "(`toonq recover --force` sends the queued ones now)\n"
    )


def test_recover_force_sends_the_queued_jobs_now(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings, broker: MemoryBroker
) -> None:
    sent = client.submit(input_uri(settings))
    broker.take_sent()  # and lost: the broker restarted without its data

    assert toonq_json(client, "recover")["recovered"] == 0
    forced = toonq_json(client, "recover", "--force")

    assert {key: forced[key] for key in ("recovered", "by_reason", "forced")} == {
        "recovered": 1,
        "by_reason": {"lost": 1},
        "forced": 1,
    }
    assert [message.job_id for message in broker.take_sent()] == [sent.id]


def test_sweep_is_a_hidden_deprecated_name_of_recover(
    client: ToonqClient, jobstore: InMemoryJobStore, settings: Settings, clock: ManualClock
) -> None:
    created_job(jobstore, settings)
    clock.advance(UNSENT_GRACE_S + 1)

    swept = toonq(client, "sweep", "--json")

    assert swept.exit_code == 0, swept.output
    assert json.loads(swept.stdout)["by_reason"] == {"unsent": 1}
    assert "deprecated" in swept.stderr
    assert "sweep" not in toonq(client, "--help").stdout


@pytest.mark.parametrize("args", [["-h"], ["status", "-h"], ["recover", "-h"]])
def test_dash_h_is_help(client: ToonqClient, args: list[str]) -> None:
    shown = toonq(client, *args)

    assert shown.exit_code == 0, shown.output
    assert shown.stdout.startswith("Usage: ")


def test_timeout_without_wait_is_refused_before_anything_is_written(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    refused = toonq(client, "submit", input_uri(settings), "--timeout", "5")

    assert refused.exit_code == 2
    assert "--wait" in refused.stderr
    assert jobstore.list() == []


def test_wait_that_times_out_still_prints_the_job_as_json(
    client: ToonqClient, settings: Settings
) -> None:
    waited = toonq(client, "submit", input_uri(settings), "--wait", "--timeout", "0.1", "--json")

    assert waited.exit_code == 124
    assert json.loads(waited.stdout)["status"] == "queued"
    assert "error [wait_timeout]" in waited.stderr


def test_wait_on_a_failed_job_prints_its_error_code_and_message(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    job = client.submit(input_uri(settings), idempotency_key="sticker-7")
    claim = jobstore.claim(job.id, worker="w1", lease_s=60)
    assert claim is not None
    jobstore.mark_failed(claim, error_code="input_not_found", error_message="no such object")

    waited = toonq(
        client, "submit", input_uri(settings), "--idempotency-key", "sticker-7", "--wait"
    )

    assert waited.exit_code == 1
    assert waited.stdout == f"{job.id} failed [input_not_found] no such object\n"


def finish_soon(jobstore: InMemoryJobStore, *jobs: Job) -> threading.Thread:
    """A thread that fails `jobs` one after the other, shortly after it starts."""

    def fail() -> None:
        for job in jobs:
            time.sleep(0.1)
            claim = jobstore.claim(job.id, worker="w1", lease_s=60)
            assert claim is not None
            jobstore.mark_failed(claim, error_code="input_not_found", error_message="gone")

    thread = threading.Thread(target=fail)
    thread.start()
    return thread


def test_watch_prints_each_job_as_it_finishes_the_finished_ones_first(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    running = created_job(jobstore, settings)
    done = failed_job(jobstore, settings)
    finishing = finish_soon(jobstore, running)

    watched = toonq(client, "watch", str(running.id), str(done.id)[:8], "--timeout", "5")
    finishing.join()

    assert watched.exit_code == 1, watched.output  # a job failed
    assert watched.stdout.splitlines() == [
        f"{done.id} failed [input_not_found] gone",
        f"{running.id} failed [input_not_found] gone",
    ]


def test_watch_gives_up_at_the_timeout_with_exit_124(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    job = created_job(jobstore, settings)

    watched = toonq(client, "watch", str(job.id), "--timeout", "0.2")

    assert watched.exit_code == 124
    assert watched.stdout == ""
    assert f"error [wait_timeout]: still unfinished after 0.2 s: {job.id}" in watched.stderr


def test_watch_without_ids_prints_every_job_that_finishes_as_json_lines(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    jobs = [created_job(jobstore, settings) for _ in range(2)]
    finishing = finish_soon(jobstore, *jobs)

    watched = toonq(client, "watch", "--json", "--timeout", "1.5")
    finishing.join()

    assert watched.exit_code == 0, watched.output
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [(line["id"], line["status"]) for line in lines] == [
        (str(job.id), "failed") for job in jobs
    ]


# --- Bulk submit ----------------------------------------------------------------------------------


def images(settings: Settings, *names: str) -> list[str]:
    """The URIs of new pictures under TOONQ_HOME/in."""
    uris = []
    for name in names:
        path = settings.home / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(png_bytes((8, 8)))
        uris.append(path.as_uri())
    return uris


def json_lines_of(result: Result) -> list[dict[str, Any]]:
    return [json.loads(line) for line in result.stdout.splitlines()]


def json_lines(result: Result) -> list[dict[str, Any]]:
    assert result.exit_code == 0, result.output
    return json_lines_of(result)


def test_submit_takes_several_uris_and_prints_a_line_per_job(
    client: ToonqClient, settings: Settings, broker: MemoryBroker
) -> None:
    uris = images(settings, "a.png", "b.png")

    submitted = toonq(client, "submit", *uris, uris[0], "--priority", "3")

    assert submitted.exit_code == 0, submitted.output
    jobs = {job.input_uri: job for job in client.list()}
    assert sorted(jobs) == uris  # the URI given twice is one job
    assert submitted.stdout == "".join(
        f"{jobs[uri].id} queued {jobs[uri].output_uri}\n" for uri in uris
    )
    assert submitted.stderr == "submitted 2 job(s): 2 new, 0 already there\n"
    assert {job.priority for job in jobs.values()} == {3}
    assert len(broker.take_sent()) == 2


def test_submit_reads_uris_from_a_file_and_from_stdin(
    client: ToonqClient, settings: Settings, tmp_path: Path
) -> None:
    a, b, c = images(settings, "a.png", "b.png", "c.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"# this week's uploads\n{a}\n\n  {b}  \n")

    from_file = json_lines(toonq(client, "submit", "--from", str(listing), "--json"))
    from_stdin = json_lines(toonq(client, "submit", "--from", "-", "--json", input=f"{c}\n"))

    assert [(line["input_uri"], line["created"]) for line in from_file + from_stdin] == [
        (a, True),
        (b, True),
        (c, True),
    ]
    assert {line["id"] for line in from_file + from_stdin} == {str(j.id) for j in client.list()}
    assert from_file[0] == client.get(from_file[0]["id"]).to_dict() | {"created": True}


def test_recursive_submits_the_images_under_a_folder_and_never_the_outputs(
    client: ToonqClient, settings: Settings
) -> None:
    uris = images(settings, "a.png", "sub/b.JPG", "sub/deeper/c.webp")
    (settings.home / "in" / "notes.txt").write_text("not an image")
    job = client.submit(uris[0])  # its output lands under TOONQ_HOME/outputs
    Path(job.output_uri.removeprefix("file://")).parent.mkdir(parents=True)
    Path(job.output_uri.removeprefix("file://")).write_bytes(png_bytes((8, 8)))

    result = toonq(client, "submit", "--recursive", settings.home.as_uri() + "/", "--json")

    assert [line["input_uri"] for line in json_lines(result)] == uris
    assert result.stderr == (
        f"note: skipped 1 object(s) under the output prefix {settings.output_prefix}: "
        "jobs do not read what jobs write\n"
        "submitted 3 job(s): 3 new, 0 already there\n"
    )


def test_a_rerun_with_an_idempotency_prefix_submits_nothing_new(
    client: ToonqClient, settings: Settings, broker: MemoryBroker
) -> None:
    uris = images(settings, "a.png", "b.png")
    args = ("submit", "--recursive", (settings.home / "in").as_uri(), "--idempotency-prefix", "w49")
    first = json_lines(toonq(client, *args, "--json"))
    assert len(broker.take_sent()) == 2
    images(settings, "c.png")  # a new upload since

    again = toonq(client, *args, "--json")

    assert [(line["input_uri"], line["created"]) for line in json_lines(again)] == [
        (uris[0], False),
        (uris[1], False),
        (images(settings, "c.png")[0], True),
    ]
    assert [line["id"] for line in json_lines(again)][:2] == [line["id"] for line in first]
    assert again.stderr == "submitted 3 job(s): 1 new, 2 already there\n"
    assert len(client.list()) == 3
    assert len(broker.take_sent()) == 1
    key = "w49:" + hashlib.sha256(uris[0].encode()).hexdigest()[:32]
    assert client.submit(uris[0], idempotency_key=key).id == uuid.UUID(first[0]["id"])

    rerun = toonq(client, *args)

    assert rerun.exit_code == 0, rerun.output
    assert rerun.stderr == "submitted 3 job(s): 0 new, 3 already there\n"
    assert len(client.list()) == 3
    assert broker.take_sent() == []


def test_an_invalid_uri_among_valid_ones_submits_nothing(
    client: ToonqClient, settings: Settings, broker: MemoryBroker, tmp_path: Path
) -> None:
    a, b = images(settings, "a.png", "b.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{b}\nhttps://example.com/c.png\n")

    from_list = toonq(client, "submit", a, "--from", str(listing))
    from_args = toonq(client, "submit", a, f"{settings.output_prefix}/x.png")

    assert (from_list.exit_code, from_list.stdout) == (2, "")
    assert from_list.stderr == (
        f"error [invalid_uri]: {listing} line 2: 'https://example.com/c.png': unsupported URI; "
        "expected s3://bucket/key or file:///absolute/path\n"
    )
    assert (from_args.exit_code, from_args.stdout) == (2, "")
    assert from_args.stderr.startswith("error [invalid_uri]: argument 2: input URI ")
    assert "lies under the output prefix" in from_args.stderr
    assert client.list() == []
    assert broker.take_sent() == []


@pytest.mark.parametrize("option", [["--output", "file:///tmp/x.png"], ["--idempotency-key", "k"]])
def test_options_for_one_job_are_refused_with_several_uris(
    client: ToonqClient, settings: Settings, option: list[str]
) -> None:
    refused = toonq(client, "submit", *images(settings, "a.png", "b.png"), *option)

    assert refused.exit_code == 2
    assert f"{option[0]} is for one job" in refused.stderr
    assert client.list() == []


def test_nothing_to_submit_is_an_error(
    client: ToonqClient, settings: Settings, tmp_path: Path
) -> None:
    (settings.home / "empty").mkdir()
    (tmp_path / "empty.txt").write_text("# nothing yet\n")

    no_images = toonq(client, "submit", "--recursive", (settings.home / "empty").as_uri())
    no_lines = toonq(client, "submit", "--from", str(tmp_path / "empty.txt"))
    no_args = toonq(client, "submit")
    long_prefix = toonq(
        client, "submit", *images(settings, "a.png"), "--idempotency-prefix", "p" * 223
    )

    assert (no_images.exit_code, no_lines.exit_code, no_args.exit_code) == (2, 2, 2)
    assert no_images.stderr == (
        f"error [invalid_request]: nothing to submit: no images under "
        f"{(settings.home / 'empty').as_uri()}\n"
    )
    assert "nothing to submit" in no_lines.stderr
    assert "needs URIs" in no_args.stderr
    assert long_prefix.exit_code == 2
    assert "1 to 222 characters" in long_prefix.stderr
    assert client.list() == []


def test_bulk_wait_prints_each_job_as_it_finishes_and_exits_as_watch_does(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    uris = images(settings, "a.png", "b.png")
    args = ("submit", *uris, "--idempotency-prefix", "w49", "--json")
    first = json_lines(toonq(client, *args))
    claim = jobstore.claim(uuid.UUID(first[0]["id"]), worker="w1", lease_s=60)
    assert claim is not None
    assert succeed(jobstore, claim, image_width=8, image_height=8)
    unfinished = first[1]["id"]

    timed_out = toonq(client, *args, "--wait", "--timeout", "0.2")

    assert timed_out.exit_code == 124
    assert [(line["id"], line["status"], line["created"]) for line in json_lines_of(timed_out)] == [
        (first[0]["id"], "succeeded", False)
    ]
    assert f"error [wait_timeout]: still unfinished after 0.2 s: {unfinished}" in timed_out.stderr

    client.cancel(unfinished)
    finished = toonq(client, "submit", *uris, "--idempotency-prefix", "w49", "--wait")

    assert finished.exit_code == 1  # one was cancelled
    assert sorted(finished.stdout.splitlines()) == sorted(
        [f"{first[0]['id']} succeeded {first[0]['output_uri']}", f"{unfinished} cancelled"]
    )
    assert finished.stderr == "submitted 2 job(s): 0 new, 2 already there\n"


# --- Webhooks ---------------------------------------------------------------------------------

WEBHOOK_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture
def webhook_client(
    settings: Settings, jobstore: InMemoryJobStore, broker: MemoryBroker
) -> Iterator[ToonqClient]:
    """A client whose jobs may call back 127.0.0.1:8080 (or any public address)."""
    allowing = replace(
        settings, webhook_secret=WEBHOOK_SECRET, webhook_allowed_hosts=("127.0.0.1:8080",)
    )
    with memory_client(allowing, jobstore, broker) as client:
        yield client


def test_submit_with_a_callback_url_shows_it_in_the_jobs_json(
    webhook_client: ToonqClient, settings: Settings
) -> None:
    url = "http://127.0.0.1:8080/hooks/toonq"

    data = toonq_json(webhook_client, "submit", input_uri(settings), "--callback-url", url)

    assert (data["callback_url"], data["webhook"]) == (url, None)  # no outcome yet


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://10.0.0.7/hook", "10.0.0.7, an address inside the network"),
        ("http://127.0.0.1:9090/hook", "127.0.0.1, an address inside the network"),
        ("gopher://example.com/", "a callback URL is http:// or https://"),
    ],
)
def test_a_forbidden_callback_url_is_refused_before_anything_is_written(
    webhook_client: ToonqClient,
    settings: Settings,
    jobstore: InMemoryJobStore,
    url: str,
    why: str,
) -> None:
    refused = toonq(webhook_client, "submit", input_uri(settings), "--callback-url", url)

    assert refused.exit_code == 1
    assert refused.stderr.startswith("error [invalid_callback_url]: ")
    assert why in refused.stderr
    assert jobstore.list() == []


def test_a_callback_url_without_a_signing_secret_is_a_configuration_error(
    client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    refused = toonq(
        client, "submit", input_uri(settings), "--callback-url", "https://93.184.215.14/hook"
    )

    assert refused.exit_code == 1
    assert refused.stderr == (
        "error [configuration_error]: a callback URL needs TOONQ_WEBHOOK_SECRET (whsec_...) "
        "to sign its webhooks\n"
    )
    assert jobstore.list() == []


def test_webhooks_lists_the_failed_ones_and_resends_them(
    webhook_client: ToonqClient, settings: Settings, jobstore: InMemoryJobStore
) -> None:
    job = webhook_client.submit(
        input_uri(settings), callback_url="http://127.0.0.1:8080/hooks/toonq"
    )
    quiet = webhook_client.submit(input_uri(settings))
    webhook_client.cancel(job.id)
    ((taken, _),) = jobstore.take_due_webhooks(hold_s=0)
    jobstore.record_webhook_missed(taken, actor="w1", problem="answered HTTP 410", retry_after=None)

    listed = toonq_json(webhook_client, "webhooks", "--failed")
    resent = toonq(webhook_client, "webhooks", "--resend", str(job.id)[:8], str(quiet.id))
    neither = toonq(webhook_client, "webhooks")

    assert [(row["id"], row["webhook"]["state"]) for row in listed] == [(str(job.id), "failed")]
    assert resent.exit_code == 0, resent.output
    assert resent.stdout == f"{job.id} webhook {taken.webhook_id} due again\n"
    assert f"job {quiet.id}'s webhook has not failed" in resent.stderr
    assert jobstore.get(job.id).to_dict()["webhook"]["state"] == "pending"
    assert neither.exit_code == 2
