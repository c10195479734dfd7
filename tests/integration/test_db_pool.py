"""The database pool hands out live connections: one the server dropped while it sat idle in
the pool is replaced before anyone uses it."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import text

from toonq.shared.db import engine as db_engine
from toonq.shared.db.engine import create_db_engine

_BACKEND_PID = text("SELECT pg_backend_pid()")


def test_a_pooled_connection_dropped_while_idle_is_replaced_unseen(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_engine, "PING_AFTER_IDLE_S", 0.05)
    engine = create_db_engine(postgres_url, pool_size=1)
    admin = create_db_engine(postgres_url, pool_size=1)
    try:
        with engine.connect() as connection:
            dropped = connection.execute(_BACKEND_PID).scalar_one()
        with admin.connect() as connection:
            connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped})
        time.sleep(0.1)

        with engine.connect() as connection:
            replacement = connection.execute(_BACKEND_PID).scalar_one()
    finally:
        engine.dispose()
        admin.dispose()

    assert replacement != dropped
