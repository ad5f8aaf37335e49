"""The operators' screen for jobs: start, watch, cancel, resume and retry them in the admin's own look.

Every action goes through jobs.services, the same functions the API and the commands call.
"""

import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, re_path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from eventproject.admin_guards import GuardedAdmin
from eventproject.charts import COLORS, progress_bar, stacked_bar_svg, status_badge, throughput_svg
from extraction.extractors import make_extractor

from ..errors import JobConflict, JobError, JobInvalid
from ..forms import JobStartForm
from ..models import Job
from ..progress import elapsed_seconds, job_service
from ..selectors import job_estimate, job_outcome_mix, job_throughput_series
from ..services import job_cancel, job_resume, job_retry_failed, job_share_set, job_start

STATUS_COLORS = {
    "queued": "#79aec8",
    "running": "#417690",
    "cancelling": "#c4a000",
    "cancelled": "#999",
    "completed": "#2e7d32",
    "failed": "#ba2121",
}
# A job's users by outcome (job_outcome_mix) as people read them, for its outcome chart.
OUTCOME_NAMES = {
    "succeeded": gettext_lazy("succeeded"),
    "failed": gettext_lazy("failed"),
    "cancelled": gettext_lazy("cancelled"),
    "left": gettext_lazy("not yet processed"),
}


def job_link(job_id: int) -> str:
    """A link to a job's page, as the items' list and the schedules' runs show it too."""
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
        values[name] = None if text == "" else int(text) if text.isdecimal() and len(text) <= 15 else text
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
    if not value.isdecimal() or len(value) > 15:
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
        return job_estimate(
            user_ids=arguments["user_ids"], extractor=extractor, everyone=arguments.get("everyone", False)
        )

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
