"""Schedules: jobs started at the times a cron expression names, and a record of each time one came
due (jobs.schedules holds their use cases)."""

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy

from eventproject.fields import (
    choices_constraint,
    created_at_field,
    created_by_field,
    link_field,
    moment_field,
)

from .jobs import Job, max_workers_field, priority_field, share_constraints


class ScheduleUsers(models.TextChoices):
    NEEDING_EXTRACTION = "needing_extraction", gettext_lazy("users needing extraction")
    ALL = "all", gettext_lazy("all users")
    LIST = "list", gettext_lazy("a list of users")


class Schedule(models.Model):
    """Starts a job at the times a cron expression names (wall-clock times in TIME_ZONE), over the
    users needing extraction (new or changed behaviours since their last successful run), all
    users, or a list. Every cluster checks for due schedules as it heals; moving `next_run_at` on in
    one conditional UPDATE is the claim, so a due schedule starts its job once however many
    clusters look (jobs.schedules)."""

    Users = ScheduleUsers
    NAME_MAX_CHARS = CRON_MAX_CHARS = 100  # the service, the API and the columns check these

    name = models.CharField(max_length=NAME_MAX_CHARS, unique=True, verbose_name=gettext_lazy("name"))
    cron = models.CharField(
        max_length=CRON_MAX_CHARS,
        help_text=gettext_lazy(
            "Five fields: minute, hour, day of month, month, day of week, in the server's time zone; "
            "e.g. 0 3 * * * for every day at 03:00"
        ),
        verbose_name=gettext_lazy("cron expression"),
    )
    users = models.CharField(
        max_length=32,
        choices=ScheduleUsers.choices,
        default=ScheduleUsers.NEEDING_EXTRACTION,
        verbose_name=gettext_lazy("users"),
    )
    user_ids = models.JSONField(
        default=list,
        blank=True,
        help_text=gettext_lazy("The users of a list schedule"),
        verbose_name=gettext_lazy("user ids"),
    )
    extractor = models.CharField(max_length=32, default="rules", verbose_name=gettext_lazy("extractor"))
    options = models.JSONField(default=dict, blank=True, verbose_name=gettext_lazy("options"))
    priority = priority_field()
    max_workers = max_workers_field(
        gettext_lazy("The most workers its jobs may hold at once (empty: no cap)")
    )
    active = models.BooleanField(
        default=True,
        help_text=gettext_lazy("A paused schedule starts nothing"),
        verbose_name=gettext_lazy("active"),
    )
    next_run_at = moment_field(
        gettext_lazy("next run at"),
        help_text=gettext_lazy("When it starts its next job (empty while paused)"),
    )
    created_by = created_by_field()
    created_at = created_at_field()

    class Meta:
        verbose_name = gettext_lazy("schedule")
        verbose_name_plural = gettext_lazy("schedules")
        ordering = ["name"]
        constraints = [
            choices_constraint("users", ScheduleUsers, "schedule_users_valid"),
            *share_constraints("schedule"),
        ]
        indexes = [
            # The due check every cluster runs as it heals.
            models.Index(fields=["next_run_at"], condition=Q(active=True), name="schedule_due"),
        ]

    def __str__(self) -> str:
        return self.name


class ScheduleRunOutcome(models.TextChoices):
    STARTED = "started", gettext_lazy("started")
    SKIPPED = "skipped", gettext_lazy("skipped")
    REFUSED = "refused", gettext_lazy("refused")


class ScheduleRun(models.Model):
    """A time a schedule came due, and what came of it: a job started, skipped (its previous job
    was still active), or refused (the start failed, e.g. its users were busy in another job)."""

    Outcome = ScheduleRunOutcome

    schedule = models.ForeignKey(
        Schedule, on_delete=models.CASCADE, related_name="runs", verbose_name=gettext_lazy("schedule")
    )
    due_at = models.DateTimeField(verbose_name=gettext_lazy("due at"))
    ran_at = models.DateTimeField(verbose_name=gettext_lazy("ran at"))
    outcome = models.CharField(
        max_length=16, choices=ScheduleRunOutcome.choices, verbose_name=gettext_lazy("outcome")
    )
    job = link_field(Job, "schedule_run", gettext_lazy("job"), field=models.OneToOneField)
    message = models.TextField(blank=True, verbose_name=gettext_lazy("message"))

    class Meta:
        verbose_name = gettext_lazy("schedule run")
        verbose_name_plural = gettext_lazy("schedule runs")
        ordering = ["-id"]
        constraints = [
            choices_constraint("outcome", ScheduleRunOutcome, "schedulerun_outcome_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.schedule} at {self.due_at:%Y-%m-%d %H:%M} ({self.outcome})"
