"""What every role of the job store stands on: the clock and a unit of work."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from datetime import datetime

from toonq.shared.jobstore.transaction import Transaction


class StoreCore(ABC):
    """The clock and the store's unit of work (`Transaction`)."""

    #: Whether the store's transactions claim a waiting job in one statement
    #: (`Transaction.claim_if_waiting`), which a claim then tries first.
    _claims_in_one_statement = False

    def __init__(self, *, clock: Callable[[], datetime]) -> None:
        self._clock = clock

    def now(self) -> datetime:
        """The store's time, which its leases and due times are in."""
        return self._clock()

    @abstractmethod
    def _transaction(self, *, single_write: bool = False) -> AbstractContextManager[Transaction]:
        """A new unit of work. `single_write`: it writes at most one change (`update` or
        `apply`), after its reads; a store that writes a change in one statement may then run
        it without a transaction, since the change's guard is checked when it is written."""
