"""/healthz for load balancers and /metrics for Prometheus: both without a login, /metrics only
for the networks in METRICS_ALLOWED_NETWORKS (loopback by default)."""

import ipaddress

from django.conf import settings
from django.http import HttpResponseForbidden, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_safe
from prometheus_client.django import PrometheusDjangoView

from .exporter import registry
from .health import health_report

# Headers a reverse proxy adds: behind one, the peer address is the proxy's, not the client's.
FORWARDING_HEADERS = ("Forwarded", "X-Forwarded-For", "X-Real-IP")


@never_cache
@require_safe
def healthz(request):
    """200 when this server can do its work, else 503; the JSON says what is wrong either way."""
    report = health_report()
    return JsonResponse(report, status=200 if report["status"] == "ok" else 503)


class MetricsView(PrometheusDjangoView):
    http_method_names = ["get", "head"]

    def dispatch(self, request, *args, **kwargs):
        if refusal := metrics_refusal(request):
            return HttpResponseForbidden(refusal + "\n", content_type="text/plain")
        self.registry = registry()
        return super().dispatch(request, *args, **kwargs)


def metrics_refusal(request) -> str:
    """Why this client may not read /metrics, or "" when it may."""
    if forwarded := [header for header in FORWARDING_HEADERS if header in request.headers]:
        return (
            f"/metrics is not served through a proxy (the request carries {forwarded[0]}): "
            "let Prometheus scrape the web server directly"
        )
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return "/metrics: the client address is unknown"
    if not any(address in network for network in settings.METRICS_ALLOWED_NETWORKS):
        return f"/metrics is not served to {address}: add its network to METRICS_ALLOWED_NETWORKS"
    return ""
