"""An S3 server of one's own: moto in a process on a free port. boto3 talks real HTTP to it, so
timeouts and retries behave as they do against S3."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from toonq.worker.harness.network import answers_ok
from toonq.worker.harness.server import ProgramServer

#: The server accepts any credentials: these, never the operator's real ones.
LOCAL_S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Never read the operator's ~/.aws files.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}
#: Settings that would lead boto3 to another account or endpoint.
_OTHER_AWS_SETTINGS = ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL")


@contextmanager
def local_s3_credentials() -> Iterator[None]:
    """Only `LOCAL_S3_CREDENTIALS` in this process's environment, and so in that of the
    processes it starts, while the block runs."""
    saved = {name: os.environ.get(name) for name in (*LOCAL_S3_CREDENTIALS, *_OTHER_AWS_SETTINGS)}
    for name in _OTHER_AWS_SETTINGS:
        os.environ.pop(name, None)
    os.environ.update(LOCAL_S3_CREDENTIALS)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class MotoServer(ProgramServer):
    """A moto S3 server (the `moto[server]` package) at `url`."""

    start_timeout_s = 60.0

    def __init__(self, *, port: int | None = None) -> None:
        super().__init__("moto", port=port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]

    def answers(self) -> bool:
        return answers_ok(f"{self.url}/moto-api/")
