"""Request latency for /metrics (ops.metrics.REQUEST_SECONDS)."""

import time

from django.conf import settings

from .metrics import REQUEST_SECONDS

# Other methods share one label value, so odd requests cannot grow the label set without bound.
METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}


def request_latency(get_response):
    static_prefix = "/" + settings.STATIC_URL.lstrip("/")

    def middleware(request):
        started = time.perf_counter()
        response = get_response(request)
        match = getattr(request, "resolver_match", None)
        if match is not None:
            route = match.route  # the URL pattern, not the path: /jobs/<int:pk>/ is one route
        elif request.path.startswith(static_prefix):
            route = "static"
        else:
            route = "unmatched"
        method = request.method if request.method in METHODS else "other"
        REQUEST_SECONDS.labels(method, route, str(response.status_code)).observe(
            time.perf_counter() - started
        )
        return response

    return middleware
