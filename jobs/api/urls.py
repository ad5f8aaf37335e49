from django.urls import path, register_converter

from . import imports, legacy, results, views


class IdConverter:
    """A database id: digits within a signed 64-bit integer. Anything else is no such page (404),
    not an overflow in the database driver (500)."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number >= 2**63:
            raise ValueError("beyond 64 bits")
        return number

    def to_url(self, value: int) -> str:
        return str(value)


class UserIdConverter:
    """A user id as imported: 1 to 128 characters, no slash, no control characters (PostgreSQL
    refuses NUL in text)."""

    regex = "[^/\x00-\x1f\x7f]{1,128}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


register_converter(IdConverter, "id")
register_converter(UserIdConverter, "user_id")

urlpatterns = [
    path("jobs/", views.JobsView.as_view(), name="jobs"),
    path("jobs/<id:pk>/", views.JobView.as_view(), name="job"),
    path("jobs/<id:pk>/progress/", views.JobProgressView.as_view(), name="job-progress"),
    path("jobs/<id:pk>/stream/", views.JobStreamView.as_view(), name="job-stream"),
    path("jobs/<id:pk>/items/", views.JobItemsView.as_view(), name="job-items"),
    path("jobs/<id:pk>/cancel/", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<id:pk>/resume/", views.JobResumeView.as_view(), name="job-resume"),
    path("jobs/<id:pk>/retry-failed/", views.JobRetryFailedView.as_view(), name="job-retry-failed"),
    path("users/<user_id:user_id>/", results.UserView.as_view(), name="user"),
    path("users/<user_id:user_id>/events/", results.UserEventsView.as_view(), name="user-events"),
    path("events/", results.EventsView.as_view(), name="events"),
    path("events/export.csv", results.EventsExportView.as_view(file_format="csv"), name="events-export-csv"),
    path(
        "events/export.jsonl",
        results.EventsExportView.as_view(file_format="jsonl"),
        name="events-export-jsonl",
    ),
    path("imports/", imports.ImportsView.as_view(), name="imports"),
    path("imports/<id:pk>/", imports.ImportView.as_view(), name="import"),
    # The predecessor's endpoints.
    path("events/extract/start", legacy.LegacyStartView.as_view(), name="legacy-start"),
    path("events/extract/progress", legacy.LegacyProgressView.as_view(), name="legacy-progress"),
    path("events/extract", legacy.LegacySyncView.as_view(), name="legacy-extract"),
]
