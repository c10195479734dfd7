"""The URI policy: what `ObjectURI.parse` accepts and how URIs print. Bucket names, keys and
file paths that could cause harm are in test_security.py."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from toonq.shared.errors import ConfigurationError, InvalidURIError
from toonq.shared.settings import Settings
from toonq.shared.storage import ObjectURI, UriPolicy
from toonq.shared.storage.uri import STAGING_FOLDER, staged_output_uri


def test_parse_s3_uri() -> None:
    uri = ObjectURI.parse("s3://bucket/some/key with spaces.png")
    assert (uri.scheme, uri.bucket, uri.key) == ("s3", "bucket", "some/key with spaces.png")
    assert str(uri) == "s3://bucket/some/key with spaces.png"


def test_parse_file_uri_round_trips_path_as_uri(tmp_path: Path) -> None:
    path = tmp_path / "a folder" / "cat #1 ü.png"

    uri = ObjectURI.parse(path.as_uri())

    assert (uri.scheme, uri.path) == ("file", path)
    assert str(uri) == path.as_uri()
    assert ObjectURI.parse("file://localhost/tmp/x.png").path == Path("/tmp/x.png")


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "/tmp/cat.png",
        "cat.png",
        "http://example.com/cat.png",
        "S3://bucket/key",
        "s3://",
        "s3://bucket",
        "s3://bucket/",
        "s3:///key",
        "file://host/tmp/cat.png",
        "file:///tmp/folder/",
        "file:///tmp/cat.png?version=2",
    ],
)
def test_parse_rejects_invalid_uris(uri: str) -> None:
    with pytest.raises(InvalidURIError, match="URI") as raised:
        ObjectURI.parse(uri)
    assert raised.value.code == "invalid_uri"


# --- Where a job may read and write ---------------------------------------------------------------


def policy(tmp_path: Path, **env: str) -> UriPolicy:
    return UriPolicy.from_settings(Settings.from_env({"TOONQ_HOME": str(tmp_path), **env}))


S3 = {"TOONQ_OUTPUT_PREFIX": "s3://media/out"}


@pytest.mark.parametrize(
    "uri", ["s3://media/out/a.png", "s3://media/out/deep/a.png", "s3://extra/any/a.png"]
)
def test_outputs_under_the_output_prefixes_are_accepted(tmp_path: Path, uri: str) -> None:
    allowed = policy(tmp_path, **S3, TOONQ_ALLOWED_OUTPUT_PREFIXES=" s3://extra/ , ")

    assert str(allowed.check_output(uri)) == uri


@pytest.mark.parametrize(
    "uri",
    [
        "s3://media/outside.png",  # a prefix ends at a path segment
        "s3://media/in/a.png",
        "s3://other/out/a.png",
    ],
)
def test_outputs_elsewhere_are_refused(tmp_path: Path, uri: str) -> None:
    with pytest.raises(InvalidURIError, match="outside the output prefixes"):
        policy(tmp_path, **S3).check_output(uri)


@pytest.mark.parametrize(
    ("output", "folder"),
    [
        ("s3://media/out/deep/a.png", "s3://media/out/deep/.toonq-staging/"),
        ("s3://extra/a.webp", "s3://extra/.toonq-staging/"),
    ],
)
def test_an_attempt_stages_its_output_beside_the_output_under_a_name_of_its_own(
    tmp_path: Path, output: str, folder: str
) -> None:
    allowed = policy(tmp_path, **S3, TOONQ_ALLOWED_OUTPUT_PREFIXES="s3://extra")
    job_id = uuid.uuid4()

    staged = {staged_output_uri(output, job_id, 2) for _ in range(3)}

    assert len(staged) == 3  # each upload its own key, even for the same attempt
    for uri in staged:
        assert uri.startswith(f"{folder}{job_id}-2-")
        assert uri.endswith(Path(output).suffix)
        assert str(allowed.check_staged(uri)) == uri
        with pytest.raises(InvalidURIError, match=r"lies in a \.toonq-staging folder"):
            allowed.check_output(uri)  # no job may name one as its output


def test_a_file_output_is_staged_in_its_folder(tmp_path: Path) -> None:
    output = (tmp_path / "out" / "a.png").as_uri()
    allowed = policy(tmp_path, TOONQ_OUTPUT_PREFIX=(tmp_path / "out").as_uri())

    staged = staged_output_uri(output, uuid.uuid4(), 1)

    assert ObjectURI.parse(staged).path.parent == tmp_path / "out" / STAGING_FOLDER
    assert str(allowed.check_staged(staged)) == staged


def test_inputs_may_be_confined_and_never_come_from_under_an_output_prefix(
    tmp_path: Path,
) -> None:
    anywhere = policy(tmp_path, **S3)
    confined = policy(tmp_path, **S3, TOONQ_ALLOWED_INPUT_PREFIXES="s3://media/in,s3://uploads")

    assert str(anywhere.check_input("s3://private/a.png")) == "s3://private/a.png"
    assert str(confined.check_input("s3://uploads/u/1.png")) == "s3://uploads/u/1.png"
    with pytest.raises(InvalidURIError, match="outside the allowed input prefixes"):
        confined.check_input("s3://private/a.png")
    for checked in (anywhere, confined):
        with pytest.raises(InvalidURIError, match="under the output prefix s3://media/out"):
            checked.check_input("s3://media/out/other-job.png")


def test_the_weights_are_neither_read_nor_written(tmp_path: Path) -> None:
    weights = "s3://media/out/models/toonout.safetensors"
    checked = policy(tmp_path, **S3, TOONQ_MODEL=weights)

    for check in (checked.check_input, checked.check_output):
        with pytest.raises(InvalidURIError, match="which toonq keeps"):
            check(weights)


def test_file_uris_need_a_file_prefix(tmp_path: Path) -> None:
    source = (tmp_path / "in" / "a.png").as_uri()

    with pytest.raises(InvalidURIError, match="file:// URIs are accepted only"):
        policy(tmp_path, **S3).check_input(source)
    assert str(policy(tmp_path).check_input(source)) == source
    uploads = (tmp_path / "uploads").as_uri()
    on_s3_with_files = policy(tmp_path, **S3, TOONQ_ALLOWED_INPUT_PREFIXES=uploads)
    assert str(on_s3_with_files.check_input(f"{uploads}/a.png")) == f"{uploads}/a.png"


@pytest.mark.parametrize("name", ["toonq.db", "toonq.db-wal", "toonq.db-journal", "broker/x.msg"])
def test_the_embedded_database_and_broker_are_never_outputs(tmp_path: Path, name: str) -> None:
    """Not even where an allowed prefix holds all of TOONQ_HOME."""
    whole_home = policy(tmp_path, TOONQ_ALLOWED_OUTPUT_PREFIXES=tmp_path.as_uri())

    with pytest.raises(InvalidURIError, match="which toonq keeps"):
        whole_home.check_output((tmp_path / name).as_uri())
    assert whole_home.check_output((tmp_path / "cut-outs" / "a.png").as_uri())


def test_a_link_is_judged_by_where_it_leads(tmp_path: Path) -> None:
    outputs = tmp_path / "outputs"
    outputs.mkdir()
    (outputs / "link.png").symlink_to(tmp_path / "inputs" / "a.png")

    with pytest.raises(InvalidURIError, match="outside the output prefixes"):
        policy(tmp_path).check_output((outputs / "link.png").as_uri())


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("TOONQ_ALLOWED_OUTPUT_PREFIXES", "s3://Bad_Bucket/out"),
        ("TOONQ_ALLOWED_INPUT_PREFIXES", "https://example.com/in"),
        ("TOONQ_OUTPUT_PREFIX", "s3://media/../out"),
    ],
)
def test_a_prefix_that_is_no_location_is_a_configuration_error(
    tmp_path: Path, variable: str, value: str
) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        policy(tmp_path, **{variable: value})
