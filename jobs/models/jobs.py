"""Jobs, their items and the drains at work on them: the table is the truth, the task queue only
rings the bell.

A Job is a batch extraction over many users; a JobItem is one user of it. Every status change is
one conditional UPDATE naming the allowed source states (jobs.transitions), so two actors racing for
the same change cannot both win.
"""

import math
from typing import Any

from django.conf import settings
from django.db import models
from django.db.models import Exists, OuterRef, Q
from django.utils.translation import gettext, gettext_lazy
from django_stubs_ext import StrOrPromise

from eventproject.fields import (
    choices_constraint,
    count_field,
    created_at_field,
    created_by_field,
    link_field,
    moment_field,
    status_field,
    unchecked_link,
)
from eventproject.statuses import StatusChoices
from extraction.models import UserProfile


def percent_done(processed: int, total: int) -> float:
    """How far a job is: users processed (succeeded or failed) of all, in percent to two places; a
    job of nobody is done. The one definition every screen shows."""
    return round(100 * processed / total, 2) if total else 100.0


class JobStatus(StatusChoices):
    QUEUED = "queued"
    RUNNING = "running"
    CANCELLING = "cancelling"
    CANCELLED = "cancelled"
    COMPLETED = "completed"
    FAILED = "failed"


class ItemStatus(StatusChoices):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobPriority(models.IntegerChoices):
    """A job's share of the workers, as a weight: among running jobs with work to do, one of weight
    4 gets about twice the chunks of one of weight 2."""

    LOW = 1, gettext_lazy("low")
    NORMAL = 2, gettext_lazy("normal")
    HIGH = 4, gettext_lazy("high")
    URGENT = 8, gettext_lazy("urgent")


# The priorities by the names the API and the commands take.
PRIORITY_NAMES = {priority.name.lower(): priority.value for priority in JobPriority}


def share_errors(priority: Any, max_workers: Any) -> dict[str, str]:
    """What is wrong with a job's or a schedule's share of the workers, by field: job_start,
    job_share_set and schedule_clean all check it here."""
    errors = {}
    if isinstance(priority, bool) or priority not in JobPriority.values:
        names = ", ".join(f"{value} ({label})" for value, label in JobPriority.choices)
        errors["priority"] = gettext("must be one of %(names)s") % {"names": names}
    limit = settings.JOBS_MAX_WORKERS_LIMIT
    if max_workers is not None and (
        isinstance(max_workers, bool) or not isinstance(max_workers, int) or not 1 <= max_workers <= limit
    ):
        errors["max_workers"] = gettext("must be an integer from 1 to %(limit)s, or empty for no cap") % {
            "limit": limit
        }
    return errors


def priority_field(help_text: StrOrPromise = "") -> models.PositiveSmallIntegerField:
    """A job's or a schedule's weight among running jobs (see JobPriority)."""
    return models.PositiveSmallIntegerField(
        choices=JobPriority.choices,
        default=JobPriority.NORMAL,
        help_text=help_text,
        verbose_name=gettext_lazy("priority"),
    )


def max_workers_field(help_text: StrOrPromise) -> models.PositiveSmallIntegerField:
    return models.PositiveSmallIntegerField(
        null=True, blank=True, help_text=help_text, verbose_name=gettext_lazy("max workers")
    )


def share_constraints(prefix: str) -> list[models.CheckConstraint]:
    """What the database holds a share of the workers to, on the jobs' and the schedules' rows."""
    return [
        choices_constraint("priority", JobPriority, f"{prefix}_priority_valid"),
        models.CheckConstraint(
            condition=Q(max_workers__isnull=True) | Q(max_workers__gte=1),
            name=f"{prefix}_max_workers_positive",
        ),
    ]


class Job(models.Model):
    """A batch extraction over many users. Its statuses and what each allows live here, for the
    services, the engine, the admin, the API, the console and the page's script alike."""

    Status = JobStatus
    Priority = JobPriority
    ACTIVE = (Status.QUEUED, Status.RUNNING, Status.CANCELLING)  # its users are not free
    FINISHED = (Status.CANCELLED, Status.COMPLETED, Status.FAILED)
    WORKING = (Status.QUEUED, Status.RUNNING)  # drains may work on it: it can be cancelled
    STOPPED = (Status.CANCELLED, Status.FAILED)  # it can be resumed, if it left users undone

    status = status_field(JobStatus, JobStatus.QUEUED)
    extractor = models.CharField(max_length=32, verbose_name=gettext_lazy("extractor"))
    options = models.JSONField(default=dict, blank=True, verbose_name=gettext_lazy("options"))
    selection = models.JSONField(
        default=dict,
        blank=True,
        help_text=gettext_lazy("How the users were chosen: needing extraction, a list, a retry"),
        verbose_name=gettext_lazy("selection"),
    )
    created_by = created_by_field()
    parent = link_field(
        "self",
        "retries",
        gettext_lazy("parent"),
        gettext_lazy("The job whose failed users this job retries"),
    )
    chunk_size = models.PositiveIntegerField(verbose_name=gettext_lazy("chunk size"))
    priority = priority_field(gettext_lazy("Its share of the workers beside other running jobs"))
    max_workers = max_workers_field(gettext_lazy("The most workers it may hold at once (empty: no cap)"))
    # The fair-share scheduler's measure (jobs.worker.scheduler): seconds of work its chunks took,
    # each divided by its priority. A worker serves the running job with the least once the stints
    # in progress on it are counted; a job that starts running begins level with the others
    # (transitions.job_mark_running).
    virtual_time = models.FloatField(default=0.0, verbose_name=gettext_lazy("virtual time"))
    max_attempts = models.PositiveIntegerField(verbose_name=gettext_lazy("max attempts"))
    created_at = created_at_field()
    started_at = moment_field(gettext_lazy("started at"))
    finished_at = moment_field(gettext_lazy("finished at"))
    error = models.TextField(blank=True, verbose_name=gettext_lazy("error"))
    # Counters, changed in the same transaction as the item rows they count;
    # job_counters_reconcile() recomputes them from the items.
    total_items = count_field(gettext_lazy("total items"), big=False)
    succeeded_items = count_field(gettext_lazy("succeeded items"), big=False)
    failed_items = count_field(gettext_lazy("failed items"), big=False)
    cancelled_items = count_field(gettext_lazy("cancelled items"), big=False)
    event_count = count_field(gettext_lazy("event count"))
    prompt_tokens = count_field(gettext_lazy("prompt tokens"))
    completion_tokens = count_field(gettext_lazy("completion tokens"))
    # Of the completion tokens, those the model spent reasoning (where the endpoint reports them,
    # or its reasoning text shows them).
    reasoning_tokens = count_field(gettext_lazy("reasoning tokens"))
    # Fail-fast: how many item attempts in a row failed with the same kind of error (messages
    # differ by the user or behaviour ids they name), and the last such message.
    error_streak = count_field(gettext_lazy("error streak"), big=False)
    error_streak_kind = models.CharField(
        max_length=200, blank=True, verbose_name=gettext_lazy("error streak kind")
    )
    error_streak_message = models.TextField(blank=True, verbose_name=gettext_lazy("error streak message"))
    # When the job was last rung by its start, a resume or a heal (database clock): healing rings it
    # again only once that bell has gone unanswered for the stale time.
    bell_rung_at = moment_field(gettext_lazy("bell rung at"))
    # Set when prune_jobs starts deleting the items of this finished job: the counters are then
    # all that is left of them, so the job can no longer be resumed, retried or reconciled.
    items_pruned_at = moment_field(
        gettext_lazy("items pruned at"),
        help_text=gettext_lazy("When its items were deleted (prune_jobs); its counts remain"),
    )
    schedule = link_field(
        "Schedule", "jobs", gettext_lazy("schedule"), gettext_lazy("The schedule that started it")
    )

    class Meta:
        verbose_name = gettext_lazy("job")
        verbose_name_plural = gettext_lazy("jobs")
        ordering = ["-id"]
        constraints = [
            choices_constraint("status", JobStatus, "job_status_valid"),
            *share_constraints("job"),
            models.CheckConstraint(
                condition=Q(
                    total_items__gte=models.F("succeeded_items")
                    + models.F("failed_items")
                    + models.F("cancelled_items")
                ),
                name="job_counts_within_total",
            ),
        ]
        indexes = [
            # resume_jobs and the admin's status filter.
            models.Index(fields=["status"], name="job_status"),
        ]

    def __str__(self) -> str:
        return gettext("Job %(id)s (%(status)s)") % {"id": self.pk, "status": self.get_status_display()}

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def can_cancel(self) -> bool:
        return self.status in self.WORKING

    @property
    def can_resume(self) -> bool:
        """A stopped job with cancelled users to put back to work (a working one is only rung again)."""
        return self.status in self.STOPPED and self.cancelled_items > 0 and not self.items_pruned_at

    @property
    def can_retry(self) -> bool:
        """A finished job with failed users left to retry as a new job."""
        finished = self.status in self.FINISHED and self.failed_items > 0 and not self.items_pruned_at
        return finished and self.retry_items().exists()

    def retry_items(self) -> "models.QuerySet[JobItem]":
        """The failed items a retry takes: users whose profile still exists and whom no retry of this
        job has extracted since (another retry would run them, and pay for them, again)."""
        profile = UserProfile.objects.filter(user_id=OuterRef("user_id"))
        retried = JobItem.objects.filter(
            job__parent=self, user_id=OuterRef("user_id"), status=JobItem.Status.SUCCEEDED
        )
        failed = JobItem.objects.filter(job=self, status=JobItem.Status.FAILED)
        return failed.filter(Exists(profile), ~Exists(retried))

    @property
    def drains_wanted(self) -> int:
        """How many drains it is rung for while it has work: JOBS_DRAIN_TASKS, or its cap if lower."""
        return min(settings.JOBS_DRAIN_TASKS, self.max_workers or settings.JOBS_DRAIN_TASKS)

    @property
    def processed_items(self) -> int:
        return self.succeeded_items + self.failed_items

    @property
    def percent(self) -> float:
        return percent_done(self.processed_items, self.total_items)

    @property
    def total_batches(self) -> int:
        return math.ceil(self.total_items / self.chunk_size) if self.chunk_size else 0


class JobItem(models.Model):
    Status = ItemStatus
    ACTIVE = (Status.PENDING, Status.RUNNING)
    PROCESSED = (Status.SUCCEEDED, Status.FAILED)
    FINISHED = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    # No database constraint: PostgreSQL checks it row by row when the transaction commits, 45 s of a
    # 10,000,000-item start (measured). Job rows are never deleted (neither the admin nor any code
    # does), and prune_jobs deletes items, never jobs.
    job = unchecked_link(Job, models.CASCADE, "items", gettext_lazy("job"))
    # No database constraint: a profile deleted mid-job must not take the job's history with it;
    # the item then fails with "unknown user".
    user = unchecked_link(UserProfile, models.DO_NOTHING, "job_items", gettext_lazy("user"))
    status = status_field(ItemStatus, ItemStatus.PENDING)
    attempts = models.PositiveSmallIntegerField(default=0, verbose_name=gettext_lazy("attempts"))
    # Times its chunk was cut short by something that was not about this user: its worker died or
    # froze past its lease, or the database or the network went away. Not attempts: an outage never
    # fails a user. An item cut short this way is claimed again in ever smaller chunks, so that a
    # user who kills every worker that takes it (a poison pill) ends up alone, and then fails.
    # A database default, as items are created by INSERT … SELECT.
    interruptions = models.PositiveSmallIntegerField(db_default=0, verbose_name=gettext_lazy("interruptions"))
    claim_token = models.UUIDField(null=True, blank=True, verbose_name=gettext_lazy("claim token"))
    lease_expires_at = moment_field(gettext_lazy("lease expires at"))
    retry_at = moment_field(
        gettext_lazy("retry at"), help_text=gettext_lazy("Not claimed again before this time")
    )
    started_at = moment_field(gettext_lazy("started at"))
    finished_at = moment_field(gettext_lazy("finished at"))
    error = models.TextField(blank=True, verbose_name=gettext_lazy("error"))
    event_count = models.PositiveIntegerField(null=True, blank=True, verbose_name=gettext_lazy("event count"))
    # Tokens paid for this user over all its attempts (LLM extractors). A database default, as
    # items are created by INSERT … SELECT.
    prompt_tokens = models.PositiveIntegerField(db_default=0, verbose_name=gettext_lazy("prompt tokens"))
    completion_tokens = models.PositiveIntegerField(
        db_default=0, verbose_name=gettext_lazy("completion tokens")
    )

    class Meta:
        verbose_name = gettext_lazy("job item")
        verbose_name_plural = gettext_lazy("job items")
        constraints = [
            choices_constraint("status", ItemStatus, "jobitem_status_valid"),
            # A user is in at most one active job: concurrent starts cannot double-process anyone.
            models.UniqueConstraint(
                fields=["user"],
                condition=Q(status__in=["pending", "running"]),
                name="jobitem_one_active_per_user",
            ),
        ]
        # All partial, so an item's index entries exist only while it is in that state:
        # PostgreSQL rewrites every index on each status change, and a claim scanning a
        # (job, status) index would wade through the dead entries of claimed items.
        indexes = [
            # The claim: pending items of a job in id order.
            models.Index(fields=["job", "id"], condition=Q(status="pending"), name="jobitem_pending"),
            # Reclaiming expired leases, and the progress card's "users being processed now".
            models.Index(
                fields=["job", "lease_expires_at"], condition=Q(status="running"), name="jobitem_running"
            ),
            # Throughput over the last minute, from recent finished_at stamps. Not "status IN
            # (succeeded, failed)": SQLite cannot prove a parameterised IN implies that and scans.
            models.Index(
                fields=["job", "finished_at"], condition=Q(finished_at__isnull=False), name="jobitem_finished"
            ),
            # The failed-items list and the most common errors.
            models.Index(fields=["job", "id"], condition=Q(status="failed"), name="jobitem_failed"),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} in job {self.job_id} ({self.status})"


class Drain(models.Model):
    """A drain task at work, and the job it serves now: each beats while it lives. At most
    min(JOBS_DRAIN_TASKS, the job's max_workers) serve one job at once; a drain that finds no job
    with room for it leaves, so ringing is always safe. A drain that has not beaten for
    JOBS_DRAIN_STALE_SECONDS belongs to a dead or frozen worker: its row is removed and its place
    taken. Progress counts a job's live drains ("running on N workers"), healing too.
    """

    job = models.ForeignKey(Job, null=True, blank=True, on_delete=models.SET_NULL, related_name="drains")
    started_at = models.DateTimeField()
    seen_at = models.DateTimeField(help_text="Last heartbeat, on the database's clock")

    def __str__(self) -> str:
        return f"drain {self.pk} of job {self.job_id}"
