"""The object store that `open_store` builds: each URI goes to the backend of its scheme."""

from __future__ import annotations

from pathlib import Path

import pytest

from toonq.shared.errors import InvalidURIError
from toonq.shared.settings import Settings
from toonq.shared.storage import open_store

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


def test_open_store_routes_by_scheme(s3_server: str, s3_bucket: str, tmp_path: Path) -> None:
    settings = Settings.from_env({"TOONQ_HOME": str(tmp_path), "TOONQ_S3_ENDPOINT_URL": s3_server})
    store = open_store(settings)
    s3_uri = f"s3://{s3_bucket}/cat.png"
    file_uri = (tmp_path / "cat.png").as_uri()

    store.put(s3_uri, PNG, content_type="image/png")
    store.put(file_uri, PNG[::-1], content_type="image/png")

    assert store.get(s3_uri, max_bytes=len(PNG)) == PNG
    assert store.get(file_uri, max_bytes=len(PNG)) == PNG[::-1]
    assert store.exists_bucket(s3_uri)
    assert store.exists_bucket(file_uri)
    with pytest.raises(InvalidURIError):
        store.get("gs://bucket/cat.png", max_bytes=1)
