"""django-q2 entry points. A task carries only a job id: every fact lives in the tables."""

from . import engine


def drain_job(job_id: int, drain_id: int | None = None) -> None:
    engine.job_drain(job_id, drain_id=drain_id)
