"""The jobs app's endpoints, under /api/v1/ (eventproject/urls.py)."""

from django.urls import path

import eventproject.api  # noqa: F401  (registers the id and user_id path converters)

from . import legacy, schedules, views

urlpatterns = [
    path("jobs/", views.JobsView.as_view(), name="jobs"),
    path("jobs/<id:pk>/", views.JobView.as_view(), name="job"),
    path("jobs/<id:pk>/progress/", views.JobProgressView.as_view(), name="job-progress"),
    path("jobs/<id:pk>/stream/", views.JobStreamView.as_view(), name="job-stream"),
    path("jobs/<id:pk>/items/", views.JobItemsView.as_view(), name="job-items"),
    path("jobs/<id:pk>/cancel/", views.JobCancelView.as_view(), name="job-cancel"),
    path("jobs/<id:pk>/resume/", views.JobResumeView.as_view(), name="job-resume"),
    path("jobs/<id:pk>/retry-failed/", views.JobRetryFailedView.as_view(), name="job-retry-failed"),
    path("schedules/", schedules.SchedulesView.as_view(), name="schedules"),
    path("schedules/<id:pk>/", schedules.ScheduleView.as_view(), name="schedule"),
    path("schedules/<id:pk>/runs/", schedules.ScheduleRunsView.as_view(), name="schedule-runs"),
    # The predecessor's endpoints.
    path("events/extract/start", legacy.LegacyStartView.as_view(), name="legacy-start"),
    path("events/extract/progress", legacy.LegacyProgressView.as_view(), name="legacy-progress"),
    path("events/extract", legacy.LegacySyncView.as_view(), name="legacy-extract"),
]
