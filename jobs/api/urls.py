from django.urls import path

from . import legacy, results, views

urlpatterns = [
    path("jobs/", views.JobsView.as_view(), name="jobs"),
    path("jobs/<int:pk>/", views.JobView.as_view(), name="job"),
    path("jobs/<int:pk>/progress/", views.JobProgressView.as_view(), name="job-progress"),
    path("jobs/<int:pk>/stream/", views.JobStreamView.as_view(), name="job-stream"),
    path("jobs/<int:pk>/items/", views.JobItemsView.as_view(), name="job-items"),
    path("jobs/<int:pk>/cancel/", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<int:pk>/resume/", views.JobResumeView.as_view(), name="job-resume"),
    path("jobs/<int:pk>/retry-failed/", views.JobRetryFailedView.as_view(), name="job-retry-failed"),
    path("users/<str:user_id>/", results.UserView.as_view(), name="user"),
    path("users/<str:user_id>/events/", results.UserEventsView.as_view(), name="user-events"),
    path("events/", results.EventsView.as_view(), name="events"),
    path("events/export.csv", results.EventsExportView.as_view(file_format="csv"), name="events-export-csv"),
    path(
        "events/export.jsonl",
        results.EventsExportView.as_view(file_format="jsonl"),
        name="events-export-jsonl",
    ),
    # The predecessor's endpoints.
    path("events/extract/start", legacy.LegacyStartView.as_view(), name="legacy-start"),
    path("events/extract/progress", legacy.LegacyProgressView.as_view(), name="legacy-progress"),
    path("events/extract", legacy.LegacySyncView.as_view(), name="legacy-extract"),
]
