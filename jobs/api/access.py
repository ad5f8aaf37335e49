"""Who may call what, and how often: the API's permissions, per-user throttles and stream slots.

Reading user data is a privilege: each view names the Django model permissions its reads and its
writes need, the same ones the admin checks (see the groups in jobs/migrations/0005_groups.py).
"""

from django.conf import settings
from django.core.cache import cache
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

VIEW_JOB = "jobs.view_job"
VIEW_PROFILE = "extraction.view_userprofile"
VIEW_EVENT = "extraction.view_extractedevent"
VIEW_IMPORT = "extraction.view_dataimport"


class ModelPermissions(BasePermission):
    """A login, plus the view's `read_permissions` for GET/HEAD and `write_permissions` for the rest.

    Superusers have every permission; an account without them gets 403 (anonymous: 401).
    """

    def has_permission(self, request: Request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        needed = view.read_permissions if request.method in SAFE_METHODS else view.write_permissions
        return user.has_perms(needed)


class UserThrottle(SimpleRateThrottle):
    """Per user, at the rate in the setting `rate_setting` (read at each request)."""

    rate_setting = ""

    def __init__(self):  # the rate is read per request, not from DRF's settings
        pass

    def applies(self, request: Request) -> bool:
        return True

    def allow_request(self, request: Request, view) -> bool:
        if not self.applies(request):
            return True
        self.rate = getattr(settings, self.rate_setting)
        self.num_requests, self.duration = self.parse_rate(self.rate)
        return super().allow_request(request, view)

    def get_cache_key(self, request: Request, view) -> str:
        return self.cache_format % {"scope": self.scope, "ident": request.user.pk}


class ReadThrottle(UserThrottle):
    scope, rate_setting = "reads", "API_READ_RATE"

    def applies(self, request: Request) -> bool:
        return request.method in SAFE_METHODS


class WriteThrottle(UserThrottle):
    scope, rate_setting = "writes", "API_WRITE_RATE"

    def applies(self, request: Request) -> bool:
        return request.method not in SAFE_METHODS


class ExportThrottle(UserThrottle):
    """Exports read whole tables: a separate, tighter budget (they do not count as reads)."""

    scope, rate_setting = "exports", "API_EXPORT_RATE"


class Guarded:
    """Mixin for API views: permissions and throttles as above."""

    permission_classes = [ModelPermissions]
    throttle_classes = [ReadThrottle, WriteThrottle]
    read_permissions: tuple[str, ...] = (VIEW_JOB,)
    write_permissions: tuple[str, ...] = ("jobs.add_job",)


def stream_slot_take(user_id: int) -> str | None:
    """Take one of the user's API_STREAMS_PER_USER stream slots; None when all are taken.

    Slots live in the cache (Redis across web processes); each expires by itself shortly after a
    stream's longest life, so a crashed process cannot hold one forever.
    """
    ttl = settings.API_STREAM_MAX_SECONDS + 30
    for n in range(settings.API_STREAMS_PER_USER):
        key = f"stream-slot:{user_id}:{n}"
        if cache.add(key, 1, timeout=ttl):
            return key
    return None


def stream_slot_release(key: str) -> None:
    cache.delete(key)
