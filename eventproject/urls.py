from django.contrib import admin
from django.contrib.auth.decorators import login_required
from django.http import JsonResponse
from django.urls import include, path, reverse_lazy
from django.utils.translation import gettext as _
from django.views.defaults import page_not_found
from django.views.i18n import JavaScriptCatalog
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from eventproject.api import ReadThrottle


class SchemaView(SpectacularAPIView):
    """The OpenAPI schema, to logged-in users (SPECTACULAR_SETTINGS["SERVE_PERMISSIONS"]), counted as
    a read like any other (it is built at each request). `?format=json` or `?format=yaml` chooses the
    encoding (else the Accept header; YAML by default): the rest of the API keeps "format" as an
    ordinary query parameter."""

    throttle_classes = [ReadThrottle]

    def get_format_suffix(self, **kwargs):
        return self.request.query_params.get("format") or None


# The docs page is for people: one not logged in is sent to the admin's login, then back.
docs = login_required(
    SpectacularSwaggerView.as_view(url_name="schema"), login_url=reverse_lazy("admin:login")
)

urlpatterns = [
    path("admin/", admin.site.urls),
    # The admin pages' scripts' words in the page's language (the project's djangojs catalog).
    path("jsi18n/", JavaScriptCatalog.as_view(), name="javascript-catalog"),
    path("api/v1/", include("jobs.api.urls")),
    path("api/v1/", include("extraction.api.urls")),
    path("api/schema/", SchemaView.as_view(), name="schema"),
    path("api/docs/", docs, name="docs"),
    path("", include("ops.urls")),  # /healthz, /status, /metrics
]


def not_found(request, exception):
    """API clients get JSON, like every other API error; people get the HTML page."""
    if request.path.startswith("/api/"):
        return JsonResponse({"detail": _("Not found.")}, status=404)
    return page_not_found(request, exception)


handler404 = not_found
