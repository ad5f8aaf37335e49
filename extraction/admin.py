"""Data in the admin: profiles, behaviours and events, all searchable by user id.

A user's page draws its behaviour timeline with its extracted events as spans over it, then lists
both, each event linked to the behaviours it came from. The events list counts events by type and
category (of what its filters select).
"""

from django.contrib import admin, messages
from django.contrib.admin.utils import quote, unquote
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from eventproject.admin_guards import GuardedAdmin
from eventproject.charts import COLORS, horizontal_bars_svg, progress_bar, status_badge, timeline_svg

from .forms import ImportUploadForm
from .imports import import_create, import_report, import_summary_text
from .models import Behavior, Category, DataImport, ExtractedEvent, ExtractionState, UserProfile
from .overview import event_counts
from .services import profiles_delete

TIMELINE_LIMIT = 2000


class ReadOnlyAdmin(GuardedAdmin):
    """Data arrives through imports and extraction, not through forms."""

    show_full_result_count = False  # tables of millions: one count is enough

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def user_link(user_id: str) -> str:
    """A link to the user's page; the id quoted as the admin quotes keys (`_` and `/` in ids)."""
    url = reverse("admin:extraction_userprofile_change", args=[quote(user_id)])
    return format_html('<a href="{}">{}</a>', url, user_id)


@admin.register(UserProfile)
class UserProfileAdmin(ReadOnlyAdmin):
    list_display = ["user_id", "attributes", "input_version", "updated_at"]
    search_exact = "user_id"
    readonly_fields = ["user_id", "attributes", "input_version", "created_at", "updated_at"]
    change_form_template = "admin/extraction/userprofile/change_form.html"

    def delete_model(self, request, obj):
        profiles_delete(UserProfile.objects.filter(pk=obj.pk))

    def delete_queryset(self, request, queryset):
        profiles_delete(queryset)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        """The profile, and next to it what else the viewer may see: behaviours, events, state."""
        profile = self.get_object(request, unquote(object_id))  # as the admin's own view unquotes it
        if profile is None or not self.has_view_permission(request, profile):
            return super().change_view(request, object_id, form_url, extra_context)  # its own answer
        may = request.user.has_perm
        behaviors, events = [], []
        if may("extraction.view_behavior"):
            behaviors = list(profile.behaviors.order_by("occurred_at", "id")[:TIMELINE_LIMIT])
        if may("extraction.view_extractedevent"):
            events = list(profile.events.order_by("sequence")[:TIMELINE_LIMIT])
        used_by = {}
        for event in events:
            for behavior_id in event.behavior_ids:
                used_by.setdefault(behavior_id, []).append(event.sequence)
        extra_context = {
            **(extra_context or {}),
            "may_see_behaviors": may("extraction.view_behavior"),
            "may_see_events": may("extraction.view_extractedevent"),
            "may_see_state": may("extraction.view_extractionstate"),
            "behaviors": [(b, used_by.get(b.id, [])) for b in behaviors],
            "events": events,
            "truncated": len(behaviors) == TIMELINE_LIMIT or len(events) == TIMELINE_LIMIT,
            "timeline": timeline_svg(behaviors, events),
            "timeline_limit": TIMELINE_LIMIT,
            "state": ExtractionState.objects.filter(user=profile).first(),
        }
        return super().change_view(request, object_id, form_url, extra_context)


@admin.register(Behavior)
class BehaviorAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "user",
        "occurred_at",
        "action",
        "item",
        "app",
        "media",
        "place",
        "duration_seconds",
    ]
    search_exact = "user_id"
    list_select_related = False
    raw_id_fields = ["user"]


class CategoryFilter(admin.SimpleListFilter):
    title = gettext_lazy("category")
    parameter_name = "category"

    def lookups(self, request, model_admin):
        return Category.choices

    def queryset(self, request, queryset):
        return queryset.filter(category=self.value()) if self.value() else queryset


@admin.register(ExtractedEvent)
class ExtractedEventAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "user_id_link",
        "sequence",
        "event_type",
        "label",
        "category",
        "starts_at",
        "ends_at",
    ]
    search_exact = "user_id"
    list_filter = [CategoryFilter]
    raw_id_fields = ["user"]
    change_list_template = "admin/extraction/extractedevent/change_list.html"

    class Media:
        css = {"all": ["jobs/admin.css"]}

    @admin.display(description=gettext_lazy("user"), ordering="user")
    def user_id_link(self, event: ExtractedEvent) -> str:
        return user_link(event.user_id)

    def changelist_view(self, request, extra_context=None):
        """The list, and above it the counts by type and category of the events its filters select."""
        response = super().changelist_view(request, extra_context)
        changelist = getattr(response, "context_data", {}).get("cl")
        if changelist is not None:
            counts = event_counts(changelist.queryset)
            response.context_data["event_counts"] = counts
            response.context_data["type_chart"] = horizontal_bars_svg(
                [
                    {
                        "label": f"{row['label'] or row['event_type']} · {row['event_type']}",
                        "count": row["count"],
                        "color": COLORS.get(row["category"], "#417690"),
                    }
                    for row in counts["by_type"]
                ],
                label=_("Events by type"),
            )
            response.context_data["category_chart"] = horizontal_bars_svg(
                [
                    {
                        "label": Category(category).label,
                        "count": count,
                        "color": COLORS.get(category, "#417690"),
                    }
                    for category, count in counts["by_category"]
                ],
                label=_("Events by category"),
            )
        return response


@admin.register(ExtractionState)
class ExtractionStateAdmin(ReadOnlyAdmin):
    list_display = [
        "user_id_link",
        "status",
        "attempted_at",
        "event_count",
        "extractor",
        "input_version",
        "error",
    ]
    list_filter = ["status"]
    search_exact = "user_id"
    raw_id_fields = ["user"]

    @admin.display(description=gettext_lazy("user"), ordering="user")
    def user_id_link(self, state: ExtractionState) -> str:
        return user_link(state.user_id)


@admin.register(DataImport)
class DataImportAdmin(GuardedAdmin):
    """Upload a file of behaviours or profiles; a cluster imports it; follow it live to its report."""

    list_display = [
        "id",
        "file_name",
        "kind",
        "status_badge",
        "progress",
        "rows_read",
        "imported",
        "duplicates",
        "rejected",
        "created_by",
        "created_at",
    ]
    list_display_links = ["id", "file_name"]
    list_filter = ["status", "kind"]
    list_select_related = ["created_by"]
    change_form_template = "admin/extraction/dataimport/change_form.html"
    exclude = ["errors", "claim_token", "stored_name", "rung_at"]

    class Media:
        css = {"all": ["jobs/admin.css"]}

    def get_readonly_fields(self, request, obj=None):
        return [field.name for field in DataImport._meta.fields if field.name not in self.exclude]

    def has_change_permission(self, request, obj=None):
        return False  # an import changes only as it runs

    def has_delete_permission(self, request, obj=None):
        return False  # the record of what came in

    @admin.display(description=gettext_lazy("status"), ordering="status")
    def status_badge(self, data_import: DataImport) -> str:
        return status_badge(data_import.status, data_import.get_status_display())

    @admin.display(description=gettext_lazy("progress"))
    def progress(self, data_import: DataImport) -> str:
        return progress_bar(data_import.percent)

    def get_urls(self):
        prefix = f"{self.opts.app_label}_{self.opts.model_name}"
        own = [path("add/", self.admin_site.admin_view(self.upload_view), name=f"{prefix}_add")]
        return own + super().get_urls()

    def upload_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_add_permission(request):
            raise PermissionDenied
        form = ImportUploadForm(request.POST or None, request.FILES or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            data_import = import_create(
                kind=data["kind"],
                upload=data["upload"],
                created_by=request.user,
                file_format=data["file_format"],
                encoding=data["encoding"],
                tz=data["timezone"],
            )
            self.message_user(
                request,
                _("Import %(id)s of %(name)s queued: a cluster imports it in the background.")
                % {"id": data_import.id, "name": data_import.file_name},
                messages.SUCCESS,
            )
            return HttpResponseRedirect(reverse("admin:extraction_dataimport_change", args=[data_import.id]))
        context = {
            **self.admin_site.each_context(request),
            "title": _("Import a file"),
            "opts": self.opts,
            "form": form,
        }
        return TemplateResponse(request, "admin/extraction/dataimport/upload.html", context)

    def change_view(self, request, object_id, form_url="", extra_context=None):
        data_import = self.get_object(request, object_id)
        if data_import is None or not self.has_view_permission(request, data_import):
            return super().change_view(request, object_id, form_url, extra_context)
        extra_context = {
            **(extra_context or {}),
            "data_import": data_import,
            "status_name": data_import.get_status_display(),
            "progress_url": reverse("import", args=[data_import.id]),
            "report": import_report(data_import),
            "summary": import_summary_text(data_import),
        }
        return super().change_view(request, object_id, form_url, extra_context)
