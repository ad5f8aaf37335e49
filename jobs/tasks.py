"""django-q2 entry points. A task carries no facts, only a doorbell: every fact lives in the tables."""

from .worker.drain import drain as drain_work


def drain(drain_id: int | None = None) -> None:
    """Serve whichever jobs are due, chunk by chunk, until nothing is left or the budget is spent."""
    drain_work(drain_id=drain_id)


def drain_job(job_id: int, drain_id: int | None = None) -> None:
    """The task of earlier versions (one job's drain), still in queues during an upgrade: a drain
    now serves whichever job is due."""
    drain_work(drain_id=drain_id)
