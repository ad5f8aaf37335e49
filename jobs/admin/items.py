"""A job's items in the admin: one row per user, read-only, reached from the job's page."""

from django.contrib import admin
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from eventproject.admin_guards import GuardedAdmin, integer_id
from extraction.admin import user_link

from ..models import JobItem
from .jobs import job_link


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
    search_exact = "user_id"
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
        return user_link(item.user_id)
