"""Guards that sit in front of every view."""

import logging
import re

from django.conf import settings
from django.contrib import messages
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.utils.translation import gettext as _
from django.views.debug import SafeExceptionReporterFilter

from .outages import is_outage

logger = logging.getLogger(__name__)
OUTAGE_RETRY_AFTER_SECONDS = 5


def request_body_limit(get_response):
    """Refuse a request whose body is larger than UPLOAD_MAX_BYTES before anything reads it.

    Django reads no more than Content-Length, so checking the header is enough (under ASGI,
    eventproject/asgi.py sees to it that nothing was read before, and cuts off a chunked body
    without one). A form page of the admin gets itself back with the message (a person is looking
    at it); others get 413.
    """

    def middleware(request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = 0
        if length > settings.UPLOAD_MAX_BYTES:
            if request.path.startswith("/admin/") and hasattr(request, "_messages"):
                message = body_too_large_message()
                messages.error(request, message + " " + _("Split the file and try again with each part."))
                return HttpResponseRedirect(request.get_full_path())
            return body_too_large(request.path)
        return get_response(request)

    return middleware


def body_too_large_message() -> str:
    return _("The request is larger than %(limit)s MB (UPLOAD_MAX_BYTES); nothing was read.") % {
        "limit": f"{settings.UPLOAD_MAX_BYTES / 1_000_000:g}"
    }


def body_too_large(path: str) -> HttpResponse:
    """413 saying the limit: JSON for the API, like its other errors; plain text elsewhere."""
    if path.startswith("/api/"):
        return JsonResponse({"detail": body_too_large_message()}, status=413)
    return HttpResponse(body_too_large_message(), status=413, content_type="text/plain; charset=utf-8")


class SecretsHiddenReporterFilter(SafeExceptionReporterFilter):
    """Also hides *_URL settings, which may carry credentials (user:password@, ?api-key=), and any
    URL with a password wherever a setting holds it (the Redis URL in CACHES and Q_CLUSTER)."""

    hidden_settings = re.compile("API|TOKEN|KEY|SECRET|PASS|SIGNATURE|HTTP_COOKIE|URL", flags=re.I)
    url_with_password = re.compile(r"://[^/@\s]*:[^/@\s]*@")

    def cleanse_setting(self, key, value):
        cleansed = super().cleanse_setting(key, value)  # recurses through this method into dicts
        if type(cleansed) is str and self.url_with_password.search(cleansed):  # (not a lazy proxy)
            return self.cleansed_substitute
        return cleansed


class OutageAnswer:
    """A request that meets an outage (the database away, a dropped connection) is answered 503
    with Retry-After, saying so, instead of a 500: nothing was lost, and the client may try again
    in a moment. Jobs wait for the database meanwhile; /healthz reports it."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not is_outage(exception):
            return None
        logger.warning("%s %s: an outage (%s); answered 503", request.method, request.path, exception)
        message = _("The database cannot be reached right now; nothing was lost. Try again in a moment.")
        if request.path.startswith("/api/"):
            response: HttpResponse = JsonResponse({"detail": message}, status=503)
        else:
            response = HttpResponse(message, status=503, content_type="text/plain; charset=utf-8")
        response["Retry-After"] = str(OUTAGE_RETRY_AFTER_SECONDS)
        return response
