"""The producer side of toonq: what the backend imports to submit and track matting jobs."""

from toonq.producer.client import SubmitRequest, ToonqClient, WaitTimeoutError
from toonq.shared.jobstore import Job, JobEventRecord
from toonq.shared.models import JobStatus

__all__ = ["Job", "JobEventRecord", "JobStatus", "SubmitRequest", "ToonqClient", "WaitTimeoutError"]
