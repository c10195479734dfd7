"""The producer side of toonq: what the backend imports to submit and track matting jobs.

A job's history rows (`ToonqClient.events`) are `toonq.shared.job.JobEvent`s, which this API
names `JobEventRecord`.
"""

from toonq.producer.client import SubmitRequest, Submitted, ToonqClient
from toonq.producer.watching import WaitTimeoutError
from toonq.shared.job import Job, JobStatus
from toonq.shared.job import JobEvent as JobEventRecord

__all__ = [
    "Job",
    "JobEventRecord",
    "JobStatus",
    "SubmitRequest",
    "Submitted",
    "ToonqClient",
    "WaitTimeoutError",
]
