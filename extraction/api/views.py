"""Results and imports over HTTP: a user, its event sequence, events across users, a streamed export,
and the imports started in the admin. Views stay thin: validate the input, call a selector, render."""

import csv
import io

import orjson
from django.http import StreamingHttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, OpenApiTypes, extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from eventproject.api import (
    ERRORS,
    ExportThrottle,
    Guarded,
    IdCursorPages,
    NumberedPages,
    SequenceCursorPages,
    asgi_served,
    sync_body_as_async,
)

from ..models import UserProfile
from ..selectors import (
    EXPORT_COLUMNS,
    events_export_batches,
    events_filter,
    imports_list,
    user_events,
    user_summaries,
)
from .access import VIEW_EVENT, VIEW_IMPORT, VIEW_PROFILE
from .serializers import EventFilter, EventOutput, ImportOutput, UserOutput

# The permissions these reads need (analysts hold the first two, operators the last).

EXPORT_BATCH = 2000
CSV_TIMES = {EXPORT_COLUMNS.index(name) for name in ("starts_at", "ends_at")}
CSV_JSON = {EXPORT_COLUMNS.index(name) for name in ("context", "behavior_ids")}
# A cell starting with one of these is run as a formula by spreadsheets (OWASP: CSV injection);
# the full-width forms too, which Excel reads as formulas in Chinese and Japanese locales.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")


def csv_cell(value):
    """A value as a CSV cell a spreadsheet shows as text: a leading formula sign gets a ' before it."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def event_filters(request: Request) -> dict:
    """The request's validated event filters (400 for a bad one)."""
    filters = EventFilter(data=request.query_params)
    filters.is_valid(raise_exception=True)
    return filters.validated_data


@extend_schema(
    tags=["results"],
    summary="A user: profile, behaviour count, extraction state",
    responses={200: UserOutput, **ERRORS},
)
class UserView(Guarded, generics.RetrieveAPIView):
    read_permissions = (VIEW_PROFILE,)
    serializer_class = UserOutput
    lookup_field = "user_id"

    def get_queryset(self):
        return user_summaries()


@extend_schema(
    tags=["results"],
    summary="A user's events in time order, a page at a time",
    responses={200: EventOutput(many=True), **ERRORS},
)
class UserEventsView(Guarded, generics.ListAPIView):
    read_permissions = (VIEW_EVENT,)
    serializer_class = EventOutput
    pagination_class = SequenceCursorPages  # a user may have tens of thousands of events

    def get_queryset(self):
        return user_events(get_object_or_404(UserProfile, user_id=self.kwargs["user_id"]))


@extend_schema(
    tags=["results"],
    summary="Events, filterable by user, type, category and start time",
    parameters=[EventFilter],
    responses={200: EventOutput(many=True), 400: OpenApiResponse(description="Bad filter"), **ERRORS},
)
class EventsView(Guarded, generics.ListAPIView):
    read_permissions = (VIEW_EVENT,)
    serializer_class = EventOutput
    pagination_class = IdCursorPages

    def get_queryset(self):
        return events_filter(**event_filters(self.request))


@extend_schema(
    tags=["results"],
    summary="Export events as CSV or JSON Lines, streamed",
    description="Same filters as the event list. Rows are read in batches and streamed, so memory stays "
    "flat whatever the number of events. context and behavior_ids are JSON in CSV cells; a CSV cell "
    "starting with = + - @ (or a tab or line break) gets a ' before it, so spreadsheets show it as "
    "text instead of running it. Throttled per user at API_EXPORT_RATE, apart from other reads.",
    parameters=[EventFilter],
    responses={
        (200, "text/csv"): OpenApiTypes.STR,
        (200, "application/x-ndjson"): OpenApiTypes.STR,
        400: OpenApiResponse(description="Bad filter"),
        401: ERRORS[401],
        403: ERRORS[403],
        429: ERRORS[429],
    },
)
class EventsExportView(Guarded, APIView):
    read_permissions = (VIEW_EVENT,)
    throttle_classes = [ExportThrottle]
    file_format = "csv"

    def get(self, request: Request):
        batches = events_export_batches(batch_size=EXPORT_BATCH, **event_filters(request))
        if self.file_format == "csv":
            body, content_type = self.csv_lines(batches), "text/csv; charset=utf-8"
        else:
            body, content_type = self.json_lines(batches), "application/x-ndjson"
        if asgi_served(request):
            body = sync_body_as_async(body)
        response = StreamingHttpResponse(body, content_type=content_type)
        response["Content-Disposition"] = f'attachment; filename="events.{self.file_format}"'
        return response

    @staticmethod
    def csv_lines(batches):
        """The CSV text, one part per batch of rows."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        buffer.write("\ufeff")  # a BOM, so spreadsheets read the Chinese labels as UTF-8
        writer.writerow(EXPORT_COLUMNS)
        for batch in batches:
            writer.writerows(
                (
                    value.isoformat()
                    if i in CSV_TIMES
                    else orjson.dumps(value).decode()
                    if i in CSV_JSON
                    else csv_cell(value)
                    for i, value in enumerate(row)
                )
                for row in batch
            )
            yield buffer.getvalue()
            buffer.seek(0)
            buffer.truncate()
        if text := buffer.getvalue():  # no batch at all: the header alone
            yield text

    @staticmethod
    def json_lines(batches):
        """The JSON Lines, one part per batch of rows."""
        for batch in batches:
            yield b"".join(orjson.dumps(dict(zip(EXPORT_COLUMNS, row, strict=True))) + b"\n" for row in batch)


class ImportsBase(Guarded):
    """Reads need extraction.view_dataimport (operators have it)."""

    read_permissions = (VIEW_IMPORT,)
    serializer_class: type[BaseSerializer] | None = ImportOutput

    def get_queryset(self):
        return imports_list()


@extend_schema(
    tags=["imports"], summary="Imports, newest first", responses={200: ImportOutput(many=True), **ERRORS}
)
class ImportsView(ImportsBase, generics.ListAPIView):
    pagination_class = NumberedPages


@extend_schema(
    tags=["imports"],
    summary="An import with its progress and report",
    description="Poll it while `status` is queued or running: `percent` is how far through the file "
    "(compressed bytes for .gz), the counts and `report` (rejected rows as `file:line: reason`, the "
    "first 1,000) grow with every batch; `summary` is the line `import_data` prints.",
    responses={200: ImportOutput, **ERRORS},
)
class ImportView(ImportsBase, generics.RetrieveAPIView):
    pass
