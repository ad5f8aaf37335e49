"""The operators' screen: start, watch, cancel, resume and retry jobs in the admin's own look.

Every action goes through jobs.services, the same functions the API and the commands call.
"""

import json

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, re_path, reverse
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from eventproject.admin_guards import GuardedAdmin, integer_id
from eventproject.charts import COLORS, progress_bar, stacked_bar_svg, status_badge, throughput_svg
from extraction.extractors import extractor_names, make_extractor

from .forms import USER_ID_SEPARATORS, JobStartForm
from .models import Job, JobItem, Schedule, ScheduleRun
from .progress import elapsed_seconds, job_service
from .schedules import (
    FIELDS,
    schedule_clean,
    schedule_create,
    schedule_pause,
    schedule_resume,
    schedule_update,
)
from .selectors import job_estimate, job_outcome_mix, job_throughput_series, schedules_list
from .services import (
    JobConflict,
    JobError,
    JobInvalid,
    job_cancel,
    job_resume,
    job_retry_failed,
    job_share_set,
    job_start,
)

STATUS_COLORS = {
    "queued": "#79aec8",
    "running": "#417690",
    "cancelling": "#c4a000",
    "cancelled": "#999",
    "completed": "#2e7d32",
    "failed": "#ba2121",
}
RUNS_SHOWN = 50  # a schedule's latest runs on its page
# A job's users by outcome (job_outcome_mix) as people read them, for its outcome chart.
OUTCOME_NAMES = {
    "succeeded": gettext_lazy("succeeded"),
    "failed": gettext_lazy("failed"),
    "cancelled": gettext_lazy("cancelled"),
    "left": gettext_lazy("not yet processed"),
}


def job_link(job_id: int) -> str:
    return format_html(
        '<a href="{}">{}</a>',
        reverse("admin:jobs_job_change", args=[job_id]),
        _("job %(id)s") % {"id": job_id},
    )


def _share(form) -> dict:
    """The share form's priority and most workers (empty: no cap), as job_share_set takes them;
    what is not a number goes as it is, to be refused by name."""
    values = {}
    for name in ("priority", "max_workers"):
        text = form.get(name, "").strip()
        values[name] = None if text == "" else int(text) if text.isdigit() else text
    return values


def _share_said(job: Job) -> str:
    values = {"id": job.id, "priority": job.get_priority_display(), "workers": job.max_workers}
    if job.max_workers:
        return _("Job %(id)s: priority %(priority)s, at most %(workers)s workers.") % values
    return _("Job %(id)s: priority %(priority)s, no cap on its workers.") % values


def _token_cap(form) -> int | None:
    """The new token cap typed in the resume form, if any (JobInvalid for what is not a number)."""
    value = (form.get("max_total_tokens") or "").strip()
    if not value:
        return None
    if not value.isdigit() or len(value) > 15:
        raise JobInvalid({"max_total_tokens": _("must be a whole number of tokens")})
    return int(value)


class ExtractorFilter(admin.SimpleListFilter):
    title = gettext_lazy("extractor")
    parameter_name = "extractor"

    def lookups(self, request, model_admin):
        return [
            (name, name) for name in Job.objects.order_by().values_list("extractor", flat=True).distinct()
        ]

    def queryset(self, request, queryset):
        return queryset.filter(extractor=self.value()) if self.value() else queryset


@admin.register(Job)
class JobAdmin(GuardedAdmin):
    list_display = [
        "id",
        "status_badge",
        "progress",
        "succeeded_items",
        "failed_items",
        "extractor",
        "priority",
        "created_by",
        "started_at",
        "duration",
    ]
    list_display_links = ["id", "status_badge"]
    list_filter = ["status", "priority", ExtractorFilter]
    list_select_related = ["created_by"]
    list_per_page = 50
    actions = ["cancel_selected", "resume_selected", "retry_failed_selected"]
    change_form_template = "admin/jobs/job/change_form.html"
    fieldsets = [
        (
            None,
            {"fields": ["status", "extractor", "options", "selection", "parent", "schedule", "created_by"]},
        ),
        (gettext_lazy("Timing"), {"fields": ["created_at", "started_at", "finished_at", "items_pruned_at"]}),
        (
            gettext_lazy("Counts"),
            {
                "fields": [
                    "total_items",
                    "succeeded_items",
                    "failed_items",
                    "cancelled_items",
                    "event_count",
                    "prompt_tokens",
                    "completion_tokens",
                    "reasoning_tokens",
                    "chunk_size",
                    "max_attempts",
                ]
            },
        ),
        (gettext_lazy("Error"), {"fields": ["error"]}),
    ]

    class Media:
        css = {"all": ["jobs/admin.css"]}

    # Everything is read-only: a job changes only through its actions.
    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in Job._meta.fields]

    def has_change_permission(self, request, obj=None):
        return False  # the page is read-only; cancel, resume and retry are actions

    def has_delete_permission(self, request, obj=None):
        return False  # jobs are the history of what was extracted

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("jobs.view_job")  # as in the API: watching needs view, not change

    def has_cancel_permission(self, request, obj=None):
        return request.user.has_perm("jobs.change_job")

    def has_retry_permission(self, request, obj=None):
        return request.user.has_perm("jobs.add_job")

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_badge(self, job: Job) -> str:
        return status_badge(job.status, job.get_status_display())

    @admin.display(description=gettext_lazy("progress"))
    def progress(self, job: Job) -> str:
        return progress_bar(job.percent, STATUS_COLORS.get(job.status, "#417690"))

    @admin.display(description=gettext_lazy("duration"))
    def duration(self, job: Job) -> str:
        elapsed = elapsed_seconds(job.started_at, job.finished_at, timezone.now())
        if elapsed is None:
            return "—"
        seconds = int(elapsed)
        return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

    # Start, cancel, resume, retry ---------------------------------------------------------------
    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [
            path("add/", self.admin_site.admin_view(self.start_view), name=f"{prefix}_add"),
            re_path(
                r"^(?P<job_id>\d+)/(?P<action>cancel|resume|retry-failed|share)/$",
                self.admin_site.admin_view(self.action_view),
                name=f"{prefix}_action",
            ),
        ]
        return own + super().get_urls()

    def start_view(self, request: HttpRequest) -> HttpResponse:
        """The start form. "Estimate" shows what the job would cost (users, calls, tokens, as
        `extract --estimate`) without starting it; the page's script asks for it in the background
        and shows the answer under the form, which keeps what was typed and chosen."""
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = JobStartForm(request.POST or None, request.FILES or None)
        estimate = None
        if request.method == "POST" and form.is_valid():
            if "_estimate" in request.POST:
                estimate = self._estimate(form)
            else:
                response = self._start(request, form)
                if response:
                    return response
        if request.headers.get("X-Requested-With") == "fetch":  # the estimate, asked by the page's script
            return TemplateResponse(
                request,
                "admin/jobs/job/estimate.html",
                {"estimate": estimate, "form": form, "fetched": True},
                status=200 if estimate else 400,
            )
        context = {
            **self.admin_site.each_context(request),
            "title": _("Start an extraction job"),
            "opts": self.opts,
            "form": form,
            "estimate": estimate,
            "media": self.media + form.media,
        }
        return TemplateResponse(request, "admin/jobs/job/start.html", context)

    def _start(self, request: HttpRequest, form: JobStartForm) -> HttpResponse | None:
        try:
            job = job_start(**form.job_arguments(), created_by=request.user)
        except JobInvalid as exc:
            form.add_service_errors(exc.errors)
        except JobConflict as exc:
            links = format_html_join(", ", "{}", ((job_link(job_id),) for job_id in exc.job_ids))
            form.add_error(None, format_html("{} {} {}.", str(exc), _("See"), links))
        else:
            self.message_user(
                request,
                _("Started job %(id)s over %(count)s users.") % {"id": job.id, "count": job.total_items},
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.id]))
        return None

    def _estimate(self, form: JobStartForm) -> dict | None:
        arguments = form.job_arguments()
        try:
            extractor = make_extractor(arguments["extractor"], arguments["options"])
        except ValidationError as exc:
            form.add_service_errors({field: " ".join(errors) for field, errors in exc.message_dict.items()})
            return None
        return job_estimate(user_ids=arguments["user_ids"], extractor=extractor)

    def action_view(self, request: HttpRequest, job_id: int, action: str) -> HttpResponse:
        """POST cancel, resume or retry-failed for one job, then back to a job page with a message."""
        actions = {
            "cancel": (
                self.has_cancel_permission,
                job_cancel,
                lambda job: (
                    _("Job %(id)s is %(status)s.") % {"id": job.id, "status": job.get_status_display()}
                ),
            ),
            "resume": (
                self.has_cancel_permission,
                lambda job: job_resume(job, max_total_tokens=_token_cap(request.POST)),
                lambda job: _("Job %(id)s resumed.") % {"id": job.id},
            ),
            "retry-failed": (
                self.has_retry_permission,
                lambda job: job_retry_failed(job, created_by=request.user),
                lambda job: _("Started job %(id)s to retry the failed users.") % {"id": job.id},
            ),
            "share": (
                self.has_cancel_permission,
                lambda job: job_share_set(job, **_share(request.POST)),
                _share_said,
            ),
        }
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        allowed, act, done = actions[action]
        if not allowed(request):
            raise PermissionDenied
        job = self.get_object(request, job_id)
        if job is None:
            raise Http404(_("No job %(id)s") % {"id": job_id})
        try:
            job = act(job)
        except JobError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(request, done(job), messages.SUCCESS)
        return HttpResponseRedirect(reverse("admin:jobs_job_change", args=[job.id]))

    def change_view(self, request, object_id, form_url="", extra_context=None):
        job = self.get_object(request, object_id)
        if job is None:  # the admin's own answer: back to the list, saying there is no such job
            return super().change_view(request, object_id, form_url, extra_context)
        may_change, may_retry = self.has_cancel_permission(request), self.has_retry_permission(request)
        series = job_throughput_series(job)
        mix = job_outcome_mix(job)
        extra_context = {
            **(extra_context or {}),
            "job": job,
            "can_cancel": may_change and job.can_cancel,
            "can_resume": may_change and job.can_resume,
            "can_retry": may_retry and job.can_retry,
            "can_share": may_change and job.status != Job.Status.COMPLETED,
            "priorities": Job.Priority.choices,
            "finished_statuses": json.dumps(Job.FINISHED),
            "token_cap": job.options.get("max_total_tokens") or 0,
            "tokens_spent": job.prompt_tokens + job.completion_tokens,
            "items_url": reverse("admin:jobs_jobitem_changelist") + f"?job={job.id}",
            "progress_url": reverse("job-progress", args=[job.id]),
            "llm": job_service(job),
            "status_name": job.get_status_display(),
            "percent": job.percent,
            "throughput_chart": throughput_svg(series),
            "average_throughput": series["average"],
            "outcome_chart": stacked_bar_svg(mix, label=_("Users by outcome"), names=OUTCOME_NAMES),
            "outcomes": [
                {**part, "name": OUTCOME_NAMES[part["outcome"]], "color": COLORS[part["outcome"]]}
                for part in mix
            ],
        }
        return super().change_view(request, object_id, form_url, extra_context)

    # Bulk actions ---------------------------------------------------------------------------------
    def _bulk(self, request, queryset, action, verb) -> None:
        """Apply `action` to each job; `verb(count)` is the message, with %(ids)s for the job ids."""
        done, refused = [], []
        for job in queryset:
            try:
                action(job)
                done.append(str(job.id))
            except JobError as exc:
                refused.append(str(exc))
        if done:
            self.message_user(request, verb(len(done)) % {"ids": ", ".join(done)}, messages.SUCCESS)
        for reason in refused:
            self.message_user(request, reason, messages.WARNING)

    @admin.action(description=gettext_lazy("Cancel selected jobs"), permissions=["cancel"])
    def cancel_selected(self, request, queryset):
        self._bulk(
            request,
            queryset,
            job_cancel,
            lambda n: ngettext("Cancelled job %(ids)s.", "Cancelled jobs %(ids)s.", n),
        )

    @admin.action(description=gettext_lazy("Resume selected jobs"), permissions=["cancel"])
    def resume_selected(self, request, queryset):
        self._bulk(
            request,
            queryset,
            job_resume,
            lambda n: ngettext("Resumed job %(ids)s.", "Resumed jobs %(ids)s.", n),
        )

    @admin.action(description=gettext_lazy("Retry the failed users of selected jobs"), permissions=["retry"])
    def retry_failed_selected(self, request, queryset):
        self._bulk(
            request,
            queryset,
            lambda job: job_retry_failed(job, created_by=request.user),
            lambda n: ngettext(
                "Retried the failed users of job %(ids)s.", "Retried the failed users of jobs %(ids)s.", n
            ),
        )


class JobFilter(admin.SimpleListFilter):
    """Items of one job, chosen by id (a list of every job would not scale)."""

    title = gettext_lazy("job")
    parameter_name = "job"

    def lookups(self, request, model_admin):
        value = self.value()
        return [(value, _("job %(id)s") % {"id": value})] if value else []

    def queryset(self, request, queryset):
        if self.value():
            job_id = integer_id(self.value())
            return queryset.none() if job_id is None else queryset.filter(job_id=job_id)
        return queryset


@admin.register(JobItem)
class JobItemAdmin(GuardedAdmin):
    """Read-only: one row per user of a job, reached from the job page, never as an inline."""

    list_display = [
        "id",
        "job_link",
        "user_link",
        "status",
        "attempts",
        "error",
        "event_count",
        "started_at",
        "finished_at",
    ]
    list_filter = [JobFilter, "status"]
    search_fields = ["=user__user_id"]
    show_full_result_count = False  # a second count over millions of items helps nobody
    list_per_page = 100

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def has_view_permission(self, request, obj=None):
        return request.user.has_perm("jobs.view_job")  # items are part of a job, as in the API

    def get_list_display(self, request):
        """Users link to their profile page only for those who may open it."""
        if request.user.has_perm("extraction.view_userprofile"):
            return self.list_display
        return ["user_id" if name == "user_link" else name for name in self.list_display]

    @admin.display(description=gettext_lazy("job"), ordering="job")
    def job_link(self, item: JobItem) -> str:
        return job_link(item.job_id)

    @admin.display(description=gettext_lazy("user"), ordering="user")
    def user_link(self, item: JobItem) -> str:
        url = reverse("admin:extraction_userprofile_change", args=[item.user_id])
        return format_html('<a href="{}">{}</a>', url, item.user_id)


# Schedules -------------------------------------------------------------------------------------------
class ScheduleForm(forms.ModelForm):
    """What a schedule says, checked by jobs.schedules (the API's and the command's checks)."""

    user_ids = forms.CharField(
        label=gettext_lazy("User ids"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text=gettext_lazy("For a list of users: separated by new lines, spaces or commas."),
    )
    options = forms.JSONField(
        label=capfirst(Schedule._meta.get_field("options").verbose_name),
        required=False,
        initial=dict,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text=gettext_lazy('Extractor options as JSON, e.g. {"model": "gpt-4o-mini"}.'),
    )

    class Meta:
        model = Schedule
        fields = [
            "name",
            "cron",
            "users",
            "user_ids",
            "extractor",
            "options",
            "priority",
            "max_workers",
            "active",
        ]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if "cron" not in self.fields:  # shown read-only, to those who may only look
            return
        self.fields["extractor"] = forms.ChoiceField(
            label=capfirst(Schedule._meta.get_field("extractor").verbose_name),
            choices=[(name, name) for name in extractor_names()],
            initial="rules",
        )
        self.fields["cron"].help_text = _(
            "Five fields: minute, hour, day of month, month, day of week, in %(zone)s; "
            "e.g. 0 3 * * * for every day at 03:00."
        ) % {"zone": settings.TIME_ZONE}
        if self.instance.pk:
            self.initial["user_ids"] = "\n".join(self.instance.user_ids)

    def clean_user_ids(self) -> list[str]:
        return [part for part in USER_ID_SEPARATORS.split(self.cleaned_data["user_ids"] or "") if part]

    def clean_options(self) -> dict:
        return self.cleaned_data["options"] or {}

    def _post_clean(self):
        """The service checks it all, naming fields; the model's own checks add nothing to that."""
        values = {name: self.cleaned_data.get(name, FIELDS[name]) for name in FIELDS}
        if self.errors:
            return
        try:
            self.cleaned_data.update(schedule_clean(values))
        except JobInvalid as exc:
            for name, message in exc.errors.items():
                self.add_error(name if name in self.fields else None, message)
        taken = Schedule.objects.filter(name=self.cleaned_data.get("name")).exclude(pk=self.instance.pk)
        if "name" not in self.errors and taken.exists():
            self.add_error(
                "name", _("a schedule named %(name)r exists") % {"name": self.cleaned_data["name"]}
            )


@admin.register(Schedule)
class ScheduleAdmin(GuardedAdmin):
    form = ScheduleForm
    list_display = ["name", "cron", "users", "extractor", "priority", "active", "next_run_at", "last_run"]
    list_filter = ["active", "users", "extractor"]
    search_fields = ["name"]
    actions = ["pause_selected", "resume_selected"]
    readonly_fields = ["next_run_at", "time_zone", "created_by", "created_at", "run_list"]

    class Media:
        css = {"all": ["jobs/admin.css"]}

    def get_fields(self, request, obj=None):
        fields = list(ScheduleForm.Meta.fields)
        return [*fields, *self.readonly_fields] if obj else fields

    def get_queryset(self, request):
        return schedules_list()

    def save_model(self, request, obj, form, change):
        values = {name: form.cleaned_data[name] for name in FIELDS}
        if change:
            schedule_update(obj, **values)
        else:
            obj.pk = schedule_create(**values, created_by=request.user).pk
            obj.refresh_from_db()

    @admin.display(description=gettext_lazy("time zone"))
    def time_zone(self, schedule: Schedule) -> str:
        return settings.TIME_ZONE

    @admin.display(description=gettext_lazy("last run"))
    def last_run(self, schedule: Schedule) -> str:
        latest = getattr(schedule, "latest", None)
        return self._run_text(latest[0]) if latest else "—"

    @admin.display(description=gettext_lazy("runs"))
    def run_list(self, schedule: Schedule) -> str:
        """The latest runs: when each was due, what came of it, and its job's outcome."""
        runs = schedule.runs.select_related("job").order_by("-id")[:RUNS_SHOWN]
        if not runs:
            return _("No run yet.")
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    date_format(timezone.localtime(run.due_at), "DATETIME_FORMAT"),
                    run.get_outcome_display(),
                    self._job_cell(run),
                    run.message,
                )
                for run in runs
            ),
        )
        head = format_html(
            "<tr><th>{}</th><th>{}</th><th>{}</th><th>{}</th></tr>",
            _("due at"),
            _("outcome"),
            _("job"),
            _("message"),
        )
        return format_html('<table class="schedule-runs">{}{}</table>', head, rows)

    def _job_cell(self, run: ScheduleRun) -> str:
        if run.job is None:
            return "—"
        return format_html(
            "{} {}", job_link(run.job.id), status_badge(run.job.status, run.job.get_status_display())
        )

    def _run_text(self, run: ScheduleRun) -> str:
        if run.job is None:
            return run.get_outcome_display()
        return format_html(
            "{} · {} {}",
            run.get_outcome_display(),
            job_link(run.job.id),
            status_badge(run.job.status, run.job.get_status_display()),
        )

    @admin.action(description=gettext_lazy("Pause selected schedules"), permissions=["change"])
    def pause_selected(self, request, queryset):
        for schedule in queryset:
            schedule_pause(schedule)
        self.message_user(
            request, _("Paused %(count)s schedules.") % {"count": len(queryset)}, messages.SUCCESS
        )

    @admin.action(description=gettext_lazy("Resume selected schedules"), permissions=["change"])
    def resume_selected(self, request, queryset):
        for schedule in queryset:
            schedule_resume(schedule)
        self.message_user(
            request, _("Resumed %(count)s schedules.") % {"count": len(queryset)}, messages.SUCCESS
        )
