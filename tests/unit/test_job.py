"""The job model: a job's parameters, validated in one place, and the words for its states."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import click
import pytest
from click.testing import CliRunner

from toonq.producer.cli.params import job_params_options
from toonq.shared.errors import InvalidRequestError
from toonq.shared.job import EventKind, Job, JobParams, JobStatus, Outcome
from toonq.shared.settings import Settings

PARAMS = JobParams(bg_color="#808080", format="png", resolution=1024)


def test_the_colour_is_normalised_and_read_as_rgb() -> None:
    params = replace(PARAMS, bg_color="ABC")
    assert (params.bg_color, params.bg_rgb) == ("#aabbcc", (170, 187, 204))
    assert params == replace(PARAMS, bg_color="#AaBbCc")


@pytest.mark.parametrize(
    ("change", "code", "message"),
    [
        ({"bg_color": "grey"}, "invalid_color", "invalid colour"),
        ({"format": "gif"}, "invalid_request", "output format must be one of png, webp"),
        ({"resolution": 0}, "invalid_request", "resolution must be a positive multiple of 32"),
        ({"resolution": 1000}, "invalid_request", "multiple of 32"),
        ({"resolution": 4128}, "invalid_request", "up to 4096"),
        (
            {"refine_foreground": True, "mask_only": True},
            "invalid_request",
            "ask for mask_only or refine_foreground, not both",
        ),
        (
            {"preset": "whatsapp"},
            "invalid_request",
            "preset must be one of telegram, line, discord; got 'whatsapp'",
        ),
        ({"trim": True, "margin": -1}, "invalid_request", "margin must be .* 0 to 1024, got -1"),
        ({"trim": True, "margin": 1025}, "invalid_request", "margin must be .* 0 to 1024"),
        ({"outline": 129}, "invalid_request", "outline must be .* 0 to 128, got 129"),
        ({"outline": 2.5}, "invalid_request", "outline must be a whole number of pixels"),
        ({"outline": True}, "invalid_request", "outline must be a whole number of pixels"),
        (
            {"margin": 8},
            "invalid_request",
            "margin 8 is kept around the trimmed subject: ask for trim too",
        ),
        (
            {"preset": "line", "format": "webp"},
            "invalid_request",
            "preset 'line' takes format png only .*, not webp",
        ),
        ({"preset": "discord", "format": "webp"}, "invalid_request", "preset 'discord' takes"),
    ],
)
def test_invalid_parameters_raise_typed_errors(
    change: dict[str, Any], code: str, message: str
) -> None:
    with pytest.raises(InvalidRequestError, match=message) as raised:
        replace(PARAMS, **change)
    assert raised.value.code == code


@pytest.mark.parametrize(
    ("finish", "named"),
    [
        ({"preset": "telegram"}, "preset"),
        ({"trim": True}, "trim"),
        ({"trim": True, "margin": 4}, "trim"),
        ({"outline": 6}, "outline"),
        ({"shadow": True}, "shadow"),
        ({"preset": "line", "outline": 6, "shadow": True}, "preset and outline and shadow"),
    ],
)
def test_a_mask_cannot_be_finished_as_a_sticker(finish: dict[str, Any], named: str) -> None:
    with pytest.raises(InvalidRequestError) as raised:
        replace(PARAMS, mask_only=True, **finish)

    assert str(raised.value) == (
        "a mask has no colours to outline or shade and is no sticker to trim or fit to a "
        f"platform: ask for mask_only or for {named}, not both"
    )


@pytest.mark.parametrize(
    "change",
    [
        {"preset": "telegram", "format": "webp"},
        {"preset": "line"},
        {"trim": True, "margin": 1024, "outline": 128, "shadow": True},
        {"trim": True},  # no margin: the bounding box itself
        {"mask_only": True, "temporal_smoothing": False},  # a mask's edges move too
    ],
)
def test_sticker_parameters_that_agree_are_kept(change: dict[str, Any]) -> None:
    params = replace(PARAMS, **change)

    assert {name: getattr(params, name) for name in change} == change


def test_a_request_leaves_colour_and_resolution_to_the_settings() -> None:
    settings = Settings.from_env({"TOONQ_BG_COLOR": "#fff", "TOONQ_RESOLUTION": "512"})

    assert JobParams.with_defaults(settings) == JobParams(
        bg_color="#ffffff", format="png", resolution=512
    )
    assert JobParams.with_defaults(
        settings, bg_color="#000", format="webp", resolution=64, mask_only=True
    ) == JobParams(bg_color="#000000", format="webp", resolution=64, mask_only=True)


@pytest.mark.parametrize(
    ("given", "message"),
    [({"resolution": 0}, "resolution must be a positive"), ({"bg_color": ""}, "invalid colour")],
)
def test_only_a_value_left_out_takes_the_setting(given: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        JobParams.with_defaults(Settings.from_env({}), **given)


def a_job(**changes: Any) -> Job:
    """A queued job, with `changes`."""
    now = datetime.now(UTC)
    job = Job(
        id=uuid.uuid4(),
        status=JobStatus.QUEUED,
        idempotency_key=None,
        input_uri="s3://in/a.png",
        output_uri="s3://out/a.png",
        params=PARAMS,
        priority=0,
        attempts=0,
        max_attempts=3,
        error_code=None,
        error_message=None,
        worker=None,
        model_name=None,
        model_revision=None,
        image_width=None,
        image_height=None,
        timings=None,
        created_at=now,
        updated_at=now,
        started_at=None,
        finished_at=None,
        next_attempt_at=None,
        lease_expires_at=None,
        enqueued_at=None,
        sent_at=None,
        callback_url=None,
        webhook_id=None,
        webhook_state=None,
        webhook_attempts=0,
        webhook_next_at=None,
        staged_output_uri=None,
        staged_result=None,
    )
    return replace(job, **changes)


def test_the_json_of_a_jobs_parameters() -> None:
    job = a_job(params=replace(PARAMS, refine_foreground=True, respect_input_alpha=True))
    assert job.to_dict()["params"] == {
        "bg_color": "#808080",
        "format": "png",
        "resolution": 1024,
        "refine_foreground": True,
        "mask_only": False,
        "respect_input_alpha": True,
        "preset": None,
        "trim": False,
        "margin": 0,
        "outline": 0,
        "shadow": False,
        "temporal_smoothing": True,
    }
    sticker = a_job(
        params=replace(PARAMS, preset="telegram", trim=True, margin=12, outline=4, shadow=True)
    )
    assert {
        name: sticker.to_dict()["params"][name]
        for name in ("preset", "trim", "margin", "outline", "shadow", "temporal_smoothing")
    } == {
        "preset": "telegram",
        "trim": True,
        "margin": 12,
        "outline": 4,
        "shadow": True,
        "temporal_smoothing": True,
    }


def test_the_json_names_the_model_and_its_revision() -> None:
    job = a_job(model_name="joelseytre/toonout", model_revision="4f1c2e9")

    shown = job.to_dict()

    assert shown["model"] == "joelseytre/toonout@4f1c2e9"
    assert (shown["model_name"], shown["model_revision"]) == ("joelseytre/toonout", "4f1c2e9")


def test_the_command_line_has_one_option_per_parameter() -> None:
    received: list[dict[str, Any]] = []

    @click.command()
    @job_params_options
    def command(job_options: dict[str, Any]) -> None:
        received.append(job_options)

    runner = CliRunner()
    given = [
        *("--bg-color", "FFF", "--format", "webp", "--resolution", "64"),
        *("--mask-only", "--respect-input-alpha"),
    ]
    sticker = [
        *("--preset", "telegram", "--trim", "--margin", "8", "--outline", "4", "--shadow"),
        "--no-temporal-smoothing",
    ]
    assert runner.invoke(command, given).exit_code == 0
    assert runner.invoke(command, []).exit_code == 0
    assert runner.invoke(command, sticker).exit_code == 0
    assert runner.invoke(command, ["--temporal-smoothing"]).exit_code == 0
    assert runner.invoke(command, ["--format", "gif"]).exit_code == 2
    assert runner.invoke(command, ["--preset", "whatsapp"]).exit_code == 2

    # Options left out are left to the defaults of the receiver.
    flags_left_out = {
        "refine_foreground": False,
        "mask_only": False,
        "respect_input_alpha": False,
        "trim": False,
        "shadow": False,
    }
    assert received == [
        flags_left_out
        | {
            "bg_color": "FFF",
            "format": "webp",
            "resolution": 64,
            "mask_only": True,
            "respect_input_alpha": True,
        },
        flags_left_out,
        flags_left_out
        | {
            "preset": "telegram",
            "trim": True,
            "margin": 8,
            "outline": 4,
            "shadow": True,
            "temporal_smoothing": False,
        },
        flags_left_out | {"temporal_smoothing": True},
    ]
    settings = Settings.from_env({})
    assert JobParams.with_defaults(settings, **received[0]) == JobParams(
        bg_color="#ffffff", format="webp", resolution=64, mask_only=True, respect_input_alpha=True
    )
    assert JobParams.with_defaults(settings, **received[2]) == JobParams(
        bg_color=settings.bg_color,
        format="png",
        resolution=settings.resolution,
        preset="telegram",
        trim=True,
        margin=8,
        outline=4,
        shadow=True,
        temporal_smoothing=False,
    )
    assert JobParams.with_defaults(settings, **received[1]).temporal_smoothing is True


# --- States, events and outcomes ------------------------------------------------------------------


def test_each_event_kind_names_the_status_it_leads_to() -> None:
    leads_to = {
        status: {kind.value for kind in EventKind if kind.status is status} for status in JobStatus
    }
    assert leads_to == {
        JobStatus.QUEUED: {"created", "requeued", "handed_back"},
        JobStatus.RUNNING: {"started", "reclaimed"},
        JobStatus.RETRYING: {"retried"},
        JobStatus.SUCCEEDED: {"succeeded"},
        JobStatus.FAILED: {"failed"},
        JobStatus.CANCELLED: {"cancelled"},
    }


def test_an_outcome_that_changed_the_job_is_named_after_its_status() -> None:
    statuses = {status.value for status in JobStatus}
    changed = {outcome for outcome in Outcome if outcome.value in statuses}
    assert changed == {Outcome.SUCCEEDED, Outcome.RETRYING, Outcome.FAILED}
