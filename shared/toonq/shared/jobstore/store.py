"""The job store: its methods written once, one module per role, over the few primitives each
store implements (`Transaction`). What each transition writes is `transitions`', which jobs a
guard or a read selects `selections`'. `SqlJobStore` and `InMemoryJobStore` supply the
primitives."""

from __future__ import annotations

from toonq.shared.jobstore.admin import Administration
from toonq.shared.jobstore.attempts import Attempts
from toonq.shared.jobstore.delivery import Delivery
from toonq.shared.jobstore.reads import Reads
from toonq.shared.jobstore.submissions import Submissions
from toonq.shared.jobstore.webhooks import Webhooks


class JobStore(Submissions, Reads, Administration, Attempts, Delivery, Webhooks):
    """Creates, reads and transitions jobs: the producer's submissions, reads, the operators'
    administration, the worker's attempts, the delivery bookkeeping recovery reads, and the
    webhook outbox."""
