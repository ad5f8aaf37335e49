"""django-q2 entry points. A task carries only a job id: every fact lives in the tables."""

import logging

from . import engine, services

logger = logging.getLogger(__name__)


def drain_job(job_id: int) -> None:
    engine.job_drain(job_id)


def resume_stalled_jobs() -> list[str]:
    """Run every minute by the schedule the jobs migrations install."""
    done = services.jobs_resume_stalled()
    for line in done:
        logger.info("resume_jobs: %s", line)
    return done
