"""The API plumbing every app's endpoints share: who may call, how often, path converters, pages and
the error responses the schema documents.

Reading user data is a privilege: each view names the Django model permissions its reads and its
writes need, the same ones the admin checks (see the groups in jobs/migrations/0005_groups.py).
"""

import asyncio
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.handlers.asgi import ASGIRequest
from django.db import close_old_connections
from django.urls import register_converter
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiResponse
from rest_framework import parsers, serializers
from rest_framework.authentication import TokenAuthentication
from rest_framework.exceptions import NotFound, ParseError, ValidationError
from rest_framework.pagination import CursorPagination, PageNumberPagination
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request
from rest_framework.throttling import BaseThrottle, SimpleRateThrottle
from rest_framework.utils import json

from .storable import depth_problem, json_problem

if TYPE_CHECKING:
    from rest_framework.permissions import _PermissionClass


class CachedTokenAuthentication(TokenAuthentication):
    """DRF's token authentication, remembering each token's user for API_AUTH_CACHE_SECONDS in this
    process (0: not at all). The user's permissions come with it: Django caches them on the user
    object (ModelBackend's _perm_cache), which lives no longer than the entry. So a poller's request
    costs no query for who it is and what it may do; the price is that a deleted token, a
    deactivated account or a removed permission stops working only once its entry expires, at most
    API_AUTH_CACHE_SECONDS later, in every web process. Unknown tokens are never remembered."""

    def authenticate_credentials(self, key):
        now = clock()
        entry = _TOKENS.get(key)
        if entry is not None and entry[0] > now:
            return entry[1], entry[2]
        user, token = super().authenticate_credentials(key)
        if (seconds := settings.API_AUTH_CACHE_SECONDS) > 0:
            if len(_TOKENS) >= TOKENS_KEPT:  # many tokens at once: forget the expired ones
                for stale in [k for k, (until, *_) in _TOKENS.copy().items() if until <= now]:
                    _TOKENS.pop(stale, None)
                if len(_TOKENS) >= TOKENS_KEPT:
                    _TOKENS.clear()
            _TOKENS[key] = (now + seconds, user, token)
        return user, token


clock = time.monotonic  # the auth cache's clock (tests move it)
TOKENS_KEPT = 10_000
# token key -> (expires at, its user, the token), read and written only whole (safe across threads).
_TOKENS: dict[str, tuple[float, object, object]] = {}


def auth_cache_clear() -> None:
    _TOKENS.clear()


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

    # Declared as APIView declares them (the stubs' alias), so that views may mix this class in.
    permission_classes: "Sequence[_PermissionClass]" = [ModelPermissions]
    throttle_classes: Sequence[type[BaseThrottle]] = [ReadThrottle, WriteThrottle]
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
    """A user id as imported: 1 to USER_ID_MAX_CHARS characters, no control characters (PostgreSQL
    refuses NUL in text). Slashes are allowed, as imports allow them (a server decodes %2F to '/'
    before routing), so a route with more path after the id must come before the id's own route: an
    id that ends in that path ("x/events") is read by ?user= instead."""

    regex = f"[^\x00-\x1f\x7f]{{1,{settings.USER_ID_MAX_CHARS}}}"

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
    position_limit = 2**63  # the ordering column's range (ids: 64 bits)
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
            if not 0 <= position < self.position_limit:
                raise NotFound(self.invalid_cursor_message)
        return cursor


class SequenceCursorPages(IdCursorPages):
    """One user's events in sequence order, a page at a time: a user with tens of thousands of
    events is not read (nor rendered) whole."""

    ordering = "sequence"
    position_limit = 2**31  # an integer column


# JSON request bodies ------------------------------------------------------------------------------
JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}:]')


class JSONParser(parsers.JSONParser):
    """DRF's JSON parser (strict: no NaN), also refusing with a 400 naming the field what would fail
    deeper down as a 500: nesting beyond API_MAX_JSON_DEPTH (Python's decoder runs out of stack
    near a thousand levels), and text or numbers the database cannot store (eventproject.storable).
    Every JSON body of the API comes through here, whichever view reads it."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = (parser_context or {}).get("encoding", settings.DEFAULT_CHARSET)
        limit = settings.API_MAX_JSON_DEPTH
        text = ""
        try:
            text = stream.read().decode(encoding)
            data = json.loads(text)
        except RecursionError:
            problem = (field_nested_too_deep(text, limit), depth_problem(limit))
        except ValueError as exc:  # bad JSON, or bytes that are not the charset's
            raise ParseError(_("JSON parse error - %s") % exc) from None
        except LookupError:  # a charset Python does not know, or not a text encoding (rot13)
            raise ParseError(_("JSON parse error - unknown charset %r") % encoding) from None
        else:
            problem = json_problem(data, max_depth=limit)
        if problem is None:
            return data
        field, reason = problem
        if field:
            raise ValidationError({field: [reason]})
        raise ParseError(reason)


def field_nested_too_deep(text: str, limit: int) -> str:
    """The top-level field of a JSON object whose value nests deeper than `limit` ("" when the
    document is not an object): for bodies too deep to decode at all. One linear scan."""
    depth, field, last_string = 0, "", ""
    for token in JSON_TOKEN.findall(text):
        if token in ("[", "{"):
            depth += 1
            if depth > limit:
                return field
        elif token in ("]", "}"):
            depth -= 1
        elif token == ":":
            if depth == 1:
                field = json.loads(last_string)
        else:
            last_string = token
    return field


class Detail(serializers.Serializer):
    detail = serializers.CharField()


ERRORS = {
    401: OpenApiResponse(Detail, description="Not logged in (session or token)"),
    403: OpenApiResponse(Detail, description="Logged in without the permission"),
    404: OpenApiResponse(Detail, description="No such job"),
    429: OpenApiResponse(Detail, description="Too many requests: the per-user rate was reached"),
}


# Long responses under ASGI ------------------------------------------------------------------------
# The threads every long synchronous body (an export) of a web process shares to make its parts:
# a body holds one only while it makes a part, never while its client is slow to read it.
BODY_THREADS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="body")


def asgi_served(request) -> bool:
    """Whether the request came through ASGI (DRF's Request wraps Django's)."""
    return isinstance(getattr(request, "_request", request), ASGIRequest)


async def sync_body_as_async(parts: Iterator) -> AsyncIterator:
    """A synchronous streaming body (an export) served under ASGI part by part, never whole:
    Django would otherwise read it all into memory first. Each part is made on one of the
    process's BODY_THREADS, which keep their database connections as request threads do
    (CONN_MAX_AGE). A body whose parts are short queries of their own (an export's batches)
    thus holds neither a thread nor a connection while its client reads, or stalls: the
    connections a web process holds for exports are bounded by its body threads, however many
    clients there are. (WEB_SEND_TIMEOUT ends a stalled one; eventproject/asgi.py.)"""
    done = object()

    def part():
        close_old_connections()
        try:
            return next(parts, done)
        finally:
            close_old_connections()

    future = None
    try:
        while True:
            future = BODY_THREADS.submit(part)
            if (made := await asyncio.wrap_future(future)) is done:
                break
            yield made
    finally:
        if hasattr(parts, "close") and future is not None:
            # After the part in flight, if any (a generator cannot close while it runs).
            future.add_done_callback(lambda _: BODY_THREADS.submit(parts.close))
