"""What every role of the job store stands on: the clock and a unit of work."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from toonq.shared.jobstore.transaction import Transaction


class StoreCore(ABC):
    """The clock and the store's unit of work (`Transaction`)."""

    def __init__(self, *, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    @abstractmethod
    def _transaction(self) -> AbstractContextManager[Transaction]:
        """A new unit of work."""
