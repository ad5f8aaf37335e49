from django.urls import path

from .views import MetricsView, healthz, status

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("status", status, name="status"),
    path("metrics", MetricsView.as_view(), name="metrics"),
]
