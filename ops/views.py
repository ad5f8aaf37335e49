"""/healthz for load balancers; /status and /metrics for monitoring. None needs a login; /status and
/metrics answer only the networks in METRICS_ALLOWED_NETWORKS (loopback by default), and never
through a proxy. All three answer over plain HTTP even with HTTPS=on (SECURE_REDIRECT_EXEMPT): a
load balancer and Prometheus ask the web server directly."""

import ipaddress

from django.conf import settings
from django.http import HttpResponseForbidden, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client.django import PrometheusDjangoView

from .exporter import registry
from .health import health_report, status_report

# Headers a reverse proxy adds: behind one, the peer address is the proxy's, not the client's.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


def report_response(report: dict) -> JsonResponse:
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


@never_cache
@require_safe
def healthz(request):
    """200 when this web process can serve requests, else 503; the JSON says what is wrong either way.
    Clusters and the broker are not in it (see /status)."""
    return report_response(health_report())


@never_cache
@require_safe
def status(request):
    """/healthz's checks plus the broker and the clusters: 503 when any fails (for alerts)."""
    if refusal := monitoring_refusal(request):
        return HttpResponseForbidden(refusal + "\n", content_type="text/plain")
    return report_response(status_report())


class MetricsView(PrometheusDjangoView):
    http_method_names = ["get", "head"]

    def dispatch(self, request, *args, **kwargs):
        if refusal := monitoring_refusal(request):
            return HttpResponseForbidden(refusal + "\n", content_type="text/plain")
        self.registry = registry()
        return super().dispatch(request, *args, **kwargs)


def monitoring_refusal(request) -> str:
    """Why this client may not read /metrics or /status, or "" when it may."""
    path = request.path
    if forwarded := [header for header in FORWARDING_HEADERS if header in request.headers]:
        return (
            f"{path} is not served through a proxy (the request carries {forwarded[0]}): "
            "let the monitoring ask the web server directly"
        )
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return f"{path}: the client address is unknown"
    if not any(address in network for network in settings.METRICS_ALLOWED_NETWORKS):
        return f"{path} is not served to {address}: add its network to METRICS_ALLOWED_NETWORKS"
    return ""
