"""What a chunk's extraction sees of its job (the extractor's Control)."""

import time

from eventproject.work import cluster_stopping
from extraction.extractors import Control

from .. import transitions
from ..models import Job


def budget_caller(job_id: int) -> str:
    """The job's name among those spending an LLM provider's budget (extraction.llm_budget)."""
    return f"job:{job_id}"


class JobControl(Control):
    """The job as a long extraction sees it: stop when the job no longer runs (asked at most once a
    second), when the chunk's lease was lost, when its deadline (below the task timeout) is near, or
    when the cluster stops.
    Committed tokens are read afresh each time (only asked when a token cap is set, once per call),
    so the cap overshoots by no more than the calls in flight and the chunks not yet committed.

    Called from the extractor's threads too, each with its own connection.
    """

    def __init__(self, job_id: int, *, deadline: float | None = None):
        super().__init__()
        self.job_id = job_id
        self.deadline = deadline  # time.monotonic() by which the chunk must stop extracting
        self.checked_at = -1.0
        self.status: str = Job.Status.RUNNING
        self.priority: int = Job.Priority.NORMAL  # read with the status: it may change while the job runs
        self.lease_lost = False
        self.finished = False  # extraction is over: the commit (fenced) is all that is left

    def lose_lease(self) -> None:
        """Another worker took over (some of) this chunk's items: its work would be thrown away."""
        self.lease_lost = True

    def seconds_left(self) -> float | None:
        return None if self.deadline is None else max(self.deadline - time.monotonic(), 0.0)

    def stopped(self) -> bool:
        if self.lease_lost or self.seconds_left() == 0 or cluster_stopping():
            return True
        with self.lock:  # one thread reads; the others go on with the last status, not waiting
            due = time.monotonic() - self.checked_at >= 1  # (with a call's slot held) for the read
            if due:
                self.checked_at = time.monotonic()
        if due:
            row = Job.objects.filter(id=self.job_id).values_list("status", "priority").first()
            with self.lock:
                self.status, self.priority = row or (Job.Status.CANCELLED, self.priority)
        return self.status != Job.Status.RUNNING

    def tokens_used(self) -> int:
        tokens = Job.objects.filter(id=self.job_id).values_list("prompt_tokens", "completion_tokens").first()
        return sum(tokens or ())

    def budget_share(self) -> tuple[str, int]:
        self.stopped()  # reads the priority too (at most once a second)
        return budget_caller(self.job_id), self.priority

    def fail_job(self, message: str) -> None:
        transitions.job_fail(self.job_id, message)
        with self.lock:
            self.status = Job.Status.FAILED
