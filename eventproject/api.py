"""The API plumbing every app's endpoints share: who may call, how often, path converters, pages and
the error responses the schema documents.

Reading user data is a privilege: each view names the Django model permissions its reads and its
writes need, the same ones the admin checks (see the groups in jobs/migrations/0005_groups.py).
"""

import asyncio
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import connections
from django.urls import register_converter
from drf_spectacular.utils import OpenApiResponse
from rest_framework import serializers
from rest_framework.exceptions import NotFound
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle


class ModelPermissions(BasePermission):
    """A login, plus the view's `read_permissions` for GET/HEAD and `write_permissions` for the rest.

    A view that writes nothing (`write_permissions` None) asks its read permissions of every method,
    so nobody learns more than a reader would. Superusers have every permission; an account without
    them gets 403 (anonymous: 401).
    """

    def has_permission(self, request: Request, view) -> bool:
        user = request.user
        if not (user and user.is_authenticated):
            return False
        needed = view.read_permissions if request.method in SAFE_METHODS else view.write_permissions
        return user.has_perms(view.read_permissions if needed is None else needed)


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

    # (drf-spectacular shows this docstring as the description of views without one: keep it short.)
    # Each view names its read permissions; there is no default, so forgetting them opens nothing.

    permission_classes = [ModelPermissions]
    throttle_classes = [ReadThrottle, WriteThrottle]
    read_permissions: tuple[str, ...]
    write_permissions: tuple[str, ...] | None = None


class IdConverter:
    """A database id: digits within a signed 64-bit integer. Anything else is no such page (404),
    not an overflow in the database driver (500)."""

    regex = "[0-9]{1,19}"

    def to_python(self, value: str) -> int:
        number = int(value)
        if number >= 2**63:
            raise ValueError("beyond 64 bits")
        return number

    def to_url(self, value: int) -> str:
        return str(value)


class UserIdConverter:
    """A user id as imported: 1 to 128 characters, no slash, no control characters (PostgreSQL
    refuses NUL in text)."""

    regex = "[^/\x00-\x1f\x7f]{1,128}"

    def to_python(self, value: str) -> str:
        return value

    def to_url(self, value: str) -> str:
        return value


# Described in the schema by SPECTACULAR_SETTINGS["PATH_CONVERTER_OVERRIDES"].
register_converter(IdConverter, "id")
register_converter(UserIdConverter, "user_id")


class NumberedPages(PageNumberPagination):
    """Numbered pages for short lists read newest first (jobs, imports)."""

    page_size = 20
    page_size_query_param = "page_size"
    max_page_size = 100


class IdCursorPages(CursorPagination):
    """Cursor pages in id order whose cursor, which a client can forge, must hold a valid id.

    For long lists (a job's million items, every event): a page must not count them all.
    """

    ordering = "id"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000

    def decode_cursor(self, request):
        cursor = super().decode_cursor(request)
        if cursor and cursor.position is not None:
            try:
                position = int(cursor.position)
            except ValueError:
                raise NotFound(self.invalid_cursor_message) from None
            if not 0 <= position < 2**63:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class Detail(serializers.Serializer):
    detail = serializers.CharField()


ERRORS = {
    401: OpenApiResponse(Detail, description="Not logged in (session or token)"),
    403: OpenApiResponse(Detail, description="Logged in without the permission"),
    404: OpenApiResponse(Detail, description="No such job"),
    429: OpenApiResponse(Detail, description="Too many requests: the per-user rate was reached"),
}


# Long responses under ASGI ------------------------------------------------------------------------
# Parts of a long synchronous body (an export) handed to the event loop per trip to its thread.
SYNC_PARTS_PER_TRIP = 64


def asgi_served(request) -> bool:
    """Whether the request came through ASGI (DRF's Request wraps Django's)."""
    return isinstance(getattr(request, "_request", request), ASGIRequest)


async def sync_body_as_async(parts: Iterator) -> AsyncIterator:
    """A synchronous streaming body (an export) served under ASGI part by part, never whole:
    Django would otherwise read it all into memory first. Its parts are made on a thread of its
    own (with its own database connection, closed at the end), a few dozen per trip there, so a
    long export holds neither the process's synchronous thread nor anyone's connection."""
    loop = asyncio.get_running_loop()
    thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="export")

    def some() -> list:
        return [part for _, part in zip(range(SYNC_PARTS_PER_TRIP), parts, strict=False)]

    def end() -> None:
        if hasattr(parts, "close"):
            parts.close()
        connections.close_all()  # this thread's

    try:
        while batch := await loop.run_in_executor(thread, some):
            for part in batch:
                yield part
    finally:
        await loop.run_in_executor(thread, end)
        thread.shutdown(wait=False)
