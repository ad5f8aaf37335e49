"""Schedules in the admin, made, changed, paused and resumed through jobs.schedules, with their runs."""

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.forms.fields import InvalidJSONInput
from django.http import HttpResponseRedirect
from django.utils import timezone
from django.utils.formats import date_format
from django.utils.html import format_html, format_html_join
from django.utils.text import capfirst
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext

from eventproject.admin_guards import GuardedAdmin
from eventproject.charts import status_badge
from eventproject.storable import depth_problem, json_problem, number_problem
from extraction.extractors import extractor_names

from ..errors import JobError, JobInvalid
from ..models import Schedule, ScheduleRun
from ..schedules import (
    FIELDS,
    schedule_clean,
    schedule_create,
    schedule_pause,
    schedule_resume,
    schedule_update,
)
from ..selectors import schedules_list
from ..user_ids import user_ids_split
from .jobs import job_link

RUNS_SHOWN = 50  # a schedule's latest runs on its page


class OptionsField(forms.JSONField):
    """JSON as the API takes it (eventproject.api.JSONParser): nested within API_MAX_JSON_DEPTH and
    holding only what the database stores. Anything else is a field error, shown back as typed
    (Django's field let Python's decoder run out of stack, or a huge number or a lone surrogate
    through, each a 500)."""

    def to_python(self, value):
        try:
            data = super().to_python(value)
        except RecursionError:
            raise ValidationError(depth_problem(settings.API_MAX_JSON_DEPTH)) from None
        except ValueError:  # a whole number of thousands of digits: past int()'s limit
            raise ValidationError(number_problem(2**64)) from None
        if problem := json_problem(data, max_depth=settings.API_MAX_JSON_DEPTH):
            path, reason = problem
            raise ValidationError(f"{path}: {reason}" if path else reason)
        return data

    def bound_data(self, data, initial):
        try:
            value = super().bound_data(data, initial)
        except (RecursionError, ValueError):
            return InvalidJSONInput(data)
        if json_problem(value, max_depth=settings.API_MAX_JSON_DEPTH):
            return InvalidJSONInput(data)
        return value


class ScheduleForm(forms.ModelForm):
    """What a schedule says, checked by jobs.schedules (the API's and the command's checks). Each
    field renders the value it was shown with, so that saving changes only what the operator changed
    (a pause made meanwhile stays)."""

    user_ids = forms.CharField(
        label=gettext_lazy("User ids"),
        required=False,
        widget=forms.Textarea(attrs={"rows": 4, "cols": 60}),
        help_text=gettext_lazy("For a list of users: separated by new lines, spaces or commas."),
    )
    options = OptionsField(
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
        names = extractor_names()
        if self.instance.pk and self.instance.extractor not in names:  # removed since: kept, to pause
            names = [*names, self.instance.extractor]
        self.fields["extractor"] = forms.ChoiceField(
            label=capfirst(Schedule._meta.get_field("extractor").verbose_name),
            choices=[(name, name) for name in names],
            initial="rules",
        )
        for field in self.fields.values():
            field.show_hidden_initial = True
        self.fields["cron"].help_text = _(
            "Five fields: minute, hour, day of month, month, day of week, in %(zone)s; "
            "e.g. 0 3 * * * for every day at 03:00."
        ) % {"zone": settings.TIME_ZONE}
        if self.instance.pk:
            self.initial["user_ids"] = "\n".join(self.instance.user_ids)

    def clean_user_ids(self) -> list[str]:
        return user_ids_split(self.cleaned_data["user_ids"] or "")

    def clean_options(self) -> dict:
        return self.cleaned_data["options"] or {}

    def _post_clean(self):
        """The service checks it all, naming fields; the model's own checks add nothing to that. A
        pause alone is not checked (jobs.schedules.schedule_update never refuses one)."""
        values = {name: self.cleaned_data.get(name, FIELDS[name]) for name in FIELDS}
        if self.errors or (self.changed_data == ["active"] and not values["active"]):
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

    # A schedule starts jobs in its maker's name: making or changing one takes the right to start jobs.
    def has_add_permission(self, request):
        return super().has_add_permission(request) and request.user.has_perm("jobs.add_job")

    def has_change_permission(self, request, obj=None):
        return super().has_change_permission(request, obj) and request.user.has_perm("jobs.add_job")

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        """A change refused as it is saved (the form was checked first: the schedule deleted, or
        its name taken, in between) is said on the page it came from, not a 500."""
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except JobError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        values = {name: form.cleaned_data[name] for name in FIELDS}
        if change:
            schedule_update(obj, **{name: values[name] for name in form.changed_data if name in FIELDS})
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
        self._bulk(
            request,
            queryset,
            schedule_pause,
            lambda n: ngettext("Paused %(count)s schedule.", "Paused %(count)s schedules.", n),
        )

    @admin.action(description=gettext_lazy("Resume selected schedules"), permissions=["change"])
    def resume_selected(self, request, queryset):
        self._bulk(
            request,
            queryset,
            schedule_resume,
            lambda n: ngettext("Resumed %(count)s schedule.", "Resumed %(count)s schedules.", n),
        )

    def _bulk(self, request, queryset, action, verb) -> None:
        """Apply `action` to each schedule; `verb(count)` is the message. One that cannot be changed
        (resumed while it no longer passes its checks, deleted meanwhile) is a warning saying why."""
        done = 0
        for schedule in queryset:
            try:
                action(schedule)
                done += 1
            except JobError as exc:
                self.message_user(request, f"{schedule.name}: {exc}", messages.WARNING)
        if done:
            self.message_user(request, verb(done) % {"count": done}, messages.SUCCESS)
