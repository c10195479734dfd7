"""The database's time, read without a round trip.

Leases and due times are compared across hosts: a worker's lease expiry with the recovering
host's now, a retry's due time with the claiming host's. Each host's own clock would put them
apart by the hosts' skew, so every host reads the database's time instead: its own clock plus
the offset it measured against the database's `now()`, once when first read and again every
`REFRESH_S` on a connection the store has open anyway. No unit of work waits for a round trip
of its own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

from sqlalchemy import Connection, Engine, TextClause, text

from toonq.shared.db.engine import translate_db_errors
from toonq.shared.job import utc_now

#: How often the offset is measured again: host clocks drift slowly, if at all.
REFRESH_S: Final = 60.0
#: The database's time as each dialect gives it, to the microsecond where it can.
_NOW: Final[dict[str, TextClause]] = {
    "postgresql": text("SELECT now()"),
    "sqlite": text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"),
}


class DatabaseClock:
    """A clock that reads `local` (the host's UTC clock) corrected to the time of the database
    `engine` connects to."""

    def __init__(
        self,
        engine: Engine,
        local: Callable[[], datetime] = utc_now,
        *,
        refresh_s: float = REFRESH_S,
    ) -> None:
        self._engine = engine
        self._local = local
        self._refresh_s = refresh_s
        self._offset = timedelta()
        self._measure_at = float("-inf")  # time.monotonic() of the next measurement
        self._measuring = threading.Lock()

    def __call__(self) -> datetime:
        if self._measure_at == float("-inf"):
            with self._measuring:  # once: every caller waits for the first measurement
                if self._measure_at == float("-inf"):
                    with translate_db_errors(), self._engine.connect() as connection:
                        self._measure(connection)
        return self._local() + self._offset

    def measure_if_due(self, connection: Connection) -> None:
        """Measure the offset on `connection` if it is time to; one thread at a time does."""
        if time.monotonic() < self._measure_at or not self._measuring.acquire(blocking=False):
            return
        try:
            self._measure(connection)
        finally:
            self._measuring.release()

    def _measure(self, connection: Connection) -> None:
        self._offset = self._offset_on(connection)
        self._measure_at = time.monotonic() + self._refresh_s

    def _offset_on(self, connection: Connection) -> timedelta:
        before = self._local()
        read = connection.execute(_NOW[connection.dialect.name]).scalar_one()
        after = self._local()
        database: datetime = (
            datetime.fromisoformat(read).replace(tzinfo=UTC)  # SQLite's text, in UTC
            if isinstance(read, str)
            else read
        )
        # Read halfway through the round trip, on average.
        return database - (before + (after - before) / 2)
