"""What jobs announce to webhooks: one call, `job_event_record`, in the transaction of each job
state change that ends a job (jobs.transitions). The webhooks app knows nothing of jobs;
this module registers the event types and builds their data."""

from django.utils.translation import gettext_lazy

from webhooks.event_types import event_type_register
from webhooks.services import event_record

from .models import Job

JOB_COMPLETED = "job.completed"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"


def event_types_register() -> None:
    """Called when the app is ready (jobs.apps)."""
    event_type_register(JOB_COMPLETED, gettext_lazy("a job completed (with its counts)"))
    event_type_register(JOB_FAILED, gettext_lazy("a job failed (with its error)"))
    event_type_register(JOB_CANCELLED, gettext_lazy("a job was cancelled"))


def job_event_record(job_id: int, event_type: str) -> None:
    """Record that the job reached the state `event_type` names, for every webhook endpoint that
    wants it. Call it in the transaction that made the change, after the change: it reads the
    job's row as that transaction sees it (a job stopped by its token cap fails saying so)."""
    event_record(type=event_type, data={"job": job_data(Job.objects.get(id=job_id))})


def job_data(job: Job) -> dict:
    """The job as receivers see it: what it ran, how it ended and its counts (no user ids)."""
    return {
        "id": job.id,
        "status": job.status,
        "extractor": job.extractor,
        "selection": job.selection,
        "priority": job.priority,
        "schedule": job.schedule_id,
        "parent": job.parent_id,
        "created_at": _iso(job.created_at),
        "started_at": _iso(job.started_at),
        "finished_at": _iso(job.finished_at),
        "error": job.error,
        "total_items": job.total_items,
        "succeeded_items": job.succeeded_items,
        "failed_items": job.failed_items,
        "cancelled_items": job.cancelled_items,
        "event_count": job.event_count,
        "prompt_tokens": job.prompt_tokens,
        "completion_tokens": job.completion_tokens,
    }


def _iso(value) -> str | None:
    return value.isoformat() if value else None
