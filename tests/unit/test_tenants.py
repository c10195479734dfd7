"""Tenants served in turn: what a tenant's submit sends, what recovery releases, and what the
queue commands say of tenants, with a client on the in-memory job store and the memory broker.
The claim's release is in `test_processor.py`; the fairness a worker gives is measured in
`tests/system/test_tenants_e2e.py`."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.unit.test_cli_queue import input_uri, toonq, toonq_json
from toonq.producer import SubmitRequest, ToonqClient
from toonq.shared.job import JobStatus
from toonq.shared.jobstore import InMemoryJobStore
from toonq.shared.recovery import RecoveryReason, recover
from toonq.shared.settings import Settings

if TYPE_CHECKING:
    from tests.conftest import ManualClock
    from tests.unit.conftest import MemoryBroker

RESEND_AFTER_S = 3600


def uri_list(settings: Settings, count: int) -> str:
    """A file of `count` URIs of distinct inputs, for `toonq submit --from`."""
    image = Path(input_uri(settings).removeprefix("file://")).read_bytes()
    sources = []
    for n in range(count):
        source = settings.home / "in" / f"{n}.png"
        source.write_bytes(image)
        sources.append(source.as_uri())
    listed = settings.home / "uris.txt"
    listed.write_text("\n".join(sources) + "\n")
    return str(listed)


def submitted_ids(client: ToonqClient, tenant: str | None, count: int) -> list[uuid.UUID]:
    """The ids of `count` jobs submitted at once for `tenant`, in the order submitted."""
    settings = client.settings
    uri = input_uri(settings)
    jobs = client.submit_many(
        SubmitRequest(uri, output_uri=f"{settings.output_prefix}/{tenant}-{n}.png", tenant=tenant)
        for n in range(count)
    )
    return [job.id for job in jobs]


def test_a_tenants_submit_sends_only_its_queue_slots_and_holds_the_rest(
    client: ToonqClient, settings: Settings, broker: MemoryBroker
) -> None:
    assert settings.tenant_queue_slots == 4  # the default
    listed = uri_list(settings, 10)

    result = toonq(client, "submit", "--from", listed, "--tenant", "acme", "--json")

    assert result.exit_code == 0, result.output
    jobs = toonq_json(client, "jobs", "--tenant", "acme")
    assert len(jobs) == 10
    assert {job["tenant"] for job in jobs} == {"acme"}
    assert {job["status"] for job in jobs} == {"queued"}
    oldest_first = [uuid.UUID(job["id"]) for job in reversed(jobs)]
    assert [message.job_id for message in broker.take_sent()] == oldest_first[:4]


def test_jobs_of_no_tenant_are_all_sent_at_once(client: ToonqClient, broker: MemoryBroker) -> None:
    ids = submitted_ids(client, None, 10)

    assert [message.job_id for message in broker.take_sent()] == ids
    assert [job.tenant for job in client.list()] == [None] * 10


def test_each_tenant_has_its_own_slots(client: ToonqClient, broker: MemoryBroker) -> None:
    acme = submitted_ids(client, "acme", 6)
    initech = submitted_ids(client, "initech", 1)

    assert [message.job_id for message in broker.take_sent()] == acme[:4] + initech


def test_jobs_tenant_lists_only_that_tenants_jobs(client: ToonqClient) -> None:
    acme = submitted_ids(client, "acme", 2)
    submitted_ids(client, "initech", 1)
    submitted_ids(client, None, 1)

    listed = toonq_json(client, "jobs", "--tenant", "acme")

    assert [job["id"] for job in listed] == [str(job_id) for job_id in reversed(acme)]
    assert toonq_json(client, "jobs", "--tenant", "nobody") == []
    assert [job.id for job in client.list(tenant="acme")] == list(reversed(acme))


def test_an_idempotency_conflict_names_the_tenant(client: ToonqClient, settings: Settings) -> None:
    uri = input_uri(settings)
    job = client.submit(uri, idempotency_key="sticker-9", tenant="acme")

    refused = toonq(client, "submit", uri, "--idempotency-key", "sticker-9", "--tenant", "other")

    assert refused.exit_code == 1
    assert refused.stderr == (
        f"error [idempotency_conflict]: idempotency key 'sticker-9' is already used by job "
        f"{job.id} with other parameters: tenant 'other' (the job's: 'acme')\n"
    )
    again = toonq_json(client, "submit", uri, "--idempotency-key", "sticker-9", "--tenant", "acme")
    assert again["id"] == str(job.id)


@pytest.mark.parametrize(
    ("tenant", "message"),
    [("", "a tenant must have 1 to 64 characters"), ("x" * 65, "1 to 64 characters")],
)
def test_a_tenant_the_database_cannot_store_is_refused(
    client: ToonqClient, settings: Settings, broker: MemoryBroker, tenant: str, message: str
) -> None:
    refused = toonq(client, "submit", input_uri(settings), "--tenant", tenant)

    assert refused.exit_code == 1
    assert refused.stderr.startswith("error [invalid_request]: ")
    assert message in refused.stderr
    assert client.list() == []
    assert broker.take_sent() == []


def test_recovery_releases_the_held_jobs_whose_release_was_lost_never_above_the_slots(
    client: ToonqClient, jobstore: InMemoryJobStore, broker: MemoryBroker, clock: ManualClock
) -> None:
    ids = submitted_ids(client, "acme", 10)
    broker.take_sent()
    # Two claims whose worker died before releasing the next jobs.
    for job_id in ids[:2]:
        assert jobstore.claim(job_id, worker="dead", lease_s=60) is not None
    clock.advance(1)

    first = recover(jobstore, client.sender, resend_after_s=RESEND_AFTER_S)
    second = recover(jobstore, client.sender, resend_after_s=RESEND_AFTER_S)

    assert [(item.job.id, item.reason) for item in first] == [
        (job_id, RecoveryReason.RELEASED) for job_id in ids[4:6]
    ]
    assert second == []
    assert [message.job_id for message in broker.take_sent()] == ids[4:6]


def test_held_jobs_are_not_taken_for_unsent_ones(
    client: ToonqClient, jobstore: InMemoryJobStore, broker: MemoryBroker, clock: ManualClock
) -> None:
    submitted_ids(client, "acme", 10)
    broker.take_sent()
    clock.advance(RESEND_AFTER_S - 1)  # long past the grace of an unsent job

    assert recover(jobstore, client.sender, resend_after_s=RESEND_AFTER_S) == []
    assert broker.take_sent() == []


def test_toonq_recover_reports_held_jobs_as_waiting_for_their_turn(
    client: ToonqClient, broker: MemoryBroker
) -> None:
    submitted_ids(client, "acme", 10)

    reported = toonq_json(client, "recover")
    told = toonq(client, "recover")
    forced = toonq_json(client, "recover", "--force")

    assert (reported["recovered"], reported["waiting"], reported["held"]) == (
        0,
        {"queued": 10},
        6,
    )
    assert "6 queued job(s) held for their tenant's turn" in told.stdout
    assert forced["forced"] == 4  # the memory broker cannot say what waits; held ones stay held
    assert forced["held"] == 6


def test_requeued_jobs_of_a_tenant_wait_for_its_turn_too(
    client: ToonqClient, jobstore: InMemoryJobStore, broker: MemoryBroker
) -> None:
    ids = submitted_ids(client, "acme", 6)
    for job_id in ids:
        client.cancel(job_id)
    broker.take_sent()

    result = client.requeue(ids)

    assert [job.status for job in result.requeued] == [JobStatus.QUEUED] * 6
    assert len(broker.take_sent()) == 4
