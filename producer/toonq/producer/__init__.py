"""The producer side of toonq: what the backend imports to submit and track matting jobs."""

from toonq.producer.client import SubmitRequest, ToonqClient, WaitTimeoutError
from toonq.shared.db.schema import JobStatus
from toonq.shared.jobstore import Job, JobEventRecord

__all__ = ["Job", "JobEventRecord", "JobStatus", "SubmitRequest", "ToonqClient", "WaitTimeoutError"]
