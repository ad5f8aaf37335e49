"""The extraction app's endpoints, under /api/v1/ (eventproject/urls.py)."""

from django.urls import path

import eventproject.api  # noqa: F401  (registers the id and user_id path converters)

from . import views

urlpatterns = [
    # Events first: a user id may hold '/' (see UserIdConverter).
    path("users/<user_id:user_id>/events/", views.UserEventsView.as_view(), name="user-events"),
    path("users/<user_id:user_id>/", views.UserView.as_view(), name="user"),
    path("events/", views.EventsView.as_view(), name="events"),
    path("events/export.csv", views.EventsExportView.as_view(file_format="csv"), name="events-export-csv"),
    path(
        "events/export.jsonl",
        views.EventsExportView.as_view(file_format="jsonl"),
        name="events-export-jsonl",
    ),
    path("imports/", views.ImportsView.as_view(), name="imports"),
    path("imports/<id:pk>/", views.ImportView.as_view(), name="import"),
]
