"""Jobs over HTTP. Views stay thin: validate the input, call a service or selector, render."""

import json
import time
from collections.abc import Callable
from functools import partial
from typing import Any, cast

from django.conf import settings
from django.http import Http404, HttpResponse, HttpResponseNotModified, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import get_object_or_404
from django.utils import translation
from django.utils.http import parse_etags
from django.utils.translation import gettext as _
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, OpenApiTypes, extend_schema
from rest_framework import generics, status
from rest_framework.exceptions import APIException, Throttled
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.serializers import BaseSerializer
from rest_framework.views import APIView

from eventproject.api import ERRORS, Detail, Guarded, IdCursorPages, NumberedPages, asgi_served

from ..errors import JobConflict, JobError, JobInvalid
from ..models import Job
from ..progress import job_progress, job_progress_state
from ..selectors import job_items, jobs_list
from ..services import job_cancel, job_resume, job_retry_failed, job_share_set, job_start
from .access import ADD_JOB, CHANGE_JOB, VIEW_JOB, stream_slot_release, stream_slot_take, thread_streams
from .serializers import (
    Conflict,
    ItemFilter,
    JobDetail,
    JobFilter,
    JobItemOutput,
    JobResumeInput,
    JobShare,
    JobStartInput,
    JobSummary,
    Progress,
)
from .streams import (
    STREAM_END_ID,
    STREAM_RETRY_MILLISECONDS,
    ProgressStream,
    Snapshot,
    feed_fresh,
    feed_refresh,
)

WRITE_ERRORS = {
    **ERRORS,
    409: OpenApiResponse(Conflict, description="The job's status does not allow it, or users are busy"),
}


class JobsBase(Guarded):
    """Reads need jobs.view_job; starting and retrying need jobs.add_job."""

    read_permissions = (VIEW_JOB,)
    write_permissions = (ADD_JOB,)


def job_error_response(exc: JobError) -> Response:
    if isinstance(exc, JobInvalid):
        return Response(
            {field: [message] for field, message in exc.errors.items()}, status.HTTP_400_BAD_REQUEST
        )
    if isinstance(exc, JobConflict):
        body = {"detail": str(exc), "user_ids": list(exc.busy), "job_ids": exc.job_ids}
        return Response(body, status.HTTP_409_CONFLICT)
    return Response({"detail": str(exc)}, status.HTTP_409_CONFLICT)


def write_response(
    given: BaseSerializer,
    act: Callable[..., Any],
    shown: type[BaseSerializer],
    code: int = status.HTTP_200_OK,
) -> Response:
    """The writes' one shape: validate what was given, call the service with it, answer with what it
    made or changed, or with why it refused."""
    given.is_valid(raise_exception=True)
    try:
        result = act(**given.validated_data)
    except JobError as exc:
        return job_error_response(exc)
    return Response(shown(result).data, code)


@extend_schema(tags=["jobs"])
class JobsView(JobsBase, generics.ListAPIView):
    serializer_class = JobSummary
    pagination_class = NumberedPages

    @extend_schema(
        summary="List jobs, newest first",
        parameters=[JobFilter],
        responses={200: JobSummary(many=True), 400: OpenApiResponse(description="Bad filter"), **ERRORS},
    )
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    def get_queryset(self):
        filters = JobFilter(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return jobs_list(**filters.validated_data)

    @extend_schema(
        summary="Start a job",
        request=JobStartInput,
        responses={
            201: JobDetail,
            400: OpenApiResponse(description="Bad fields, unknown users or extractor (by field)"),
            **WRITE_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        start = partial(job_start, created_by=request.user)
        return write_response(JobStartInput(data=request.data), start, JobDetail, status.HTTP_201_CREATED)


@extend_schema(tags=["jobs"])
class JobView(JobsBase, generics.RetrieveAPIView):
    """A job with its progress; PATCH changes its share of the workers, also while it runs."""

    serializer_class = JobDetail
    write_permissions = (CHANGE_JOB,)
    http_method_names = ["get", "head", "patch", "options"]

    def get_queryset(self):
        return jobs_list()

    @extend_schema(summary="A job with its progress", responses={200: JobDetail, **ERRORS})
    def get(self, request, *args, **kwargs):
        return super().get(request, *args, **kwargs)

    @extend_schema(
        summary="Change a job's priority or its most workers (from its next chunk on)",
        request=JobShare,
        responses={200: JobDetail, 400: OpenApiResponse(description="Bad fields (by field)"), **WRITE_ERRORS},
    )
    def patch(self, request: Request, pk: int) -> Response:
        return write_response(
            JobShare(data=request.data), partial(job_share_set, self.get_object()), JobDetail
        )


def progress_etag(tag: str) -> str:
    """A weak ETag: the same while nothing but time-derived figures (rate, ETA, elapsed) changed."""
    return f'W/"{tag}"'


def etag_matches(if_none_match: str, etag: str) -> bool:
    """If-None-Match's weak comparison (RFC 9110 13.1.2): W/ is ignored on both sides."""
    tags = parse_etags(if_none_match)
    return "*" in tags or etag.removeprefix("W/") in {tag.removeprefix("W/") for tag in tags}


@extend_schema(
    tags=["jobs"],
    summary="A job's progress alone",
    description="Cheap enough to poll every second. Send the ETag back in If-None-Match: "
    "304 while unchanged.",
    parameters=[OpenApiParameter("If-None-Match", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False)],
    responses={200: Progress, 304: OpenApiResponse(description="Not modified"), **ERRORS},
)
class JobProgressView(JobsBase, APIView):
    """A client whose copy is current gets 304 from what this process's feed of the job read at
    most API_STREAM_POLL_SECONDS ago (under ASGI: no query; jobs/api/streams.py), else from one
    small query (job_progress_state). A changed progress is the feed's when its body was read that
    recently too (a running job's, which changes at every commit), else read in full: rates and
    top errors are read only when something the progress shows changed."""

    def get(self, request: Request, pk: int) -> HttpResponseBase:
        if_none_match = request.headers.get("If-None-Match", "")
        if asgi_served(request) and (snapshot := feed_fresh(pk, start=bool(if_none_match))) is not None:
            etag = progress_etag(snapshot.tag)
            if etag_matches(if_none_match, etag):
                return not_modified(etag)
            if time.monotonic() - snapshot.made_at <= settings.API_STREAM_POLL_SECONDS:
                # Its body too was read that recently: as fresh as a poll's own read, but shared.
                return Response(
                    snapshot.progress(translation.get_language()),
                    headers={"ETag": etag, "Cache-Control": "no-cache"},
                )
        began = time.monotonic()
        found = job_progress_state(pk)
        if found is None:
            raise Http404
        job, state = found
        etag = progress_etag(state.tag())
        if etag_matches(if_none_match, etag):
            if asgi_served(request):  # the feed lagged: this read serves the polls after it
                feed_refresh(pk, began, state.tag())
            return not_modified(etag)
        progress = job_progress(job, state=state)
        snapshot = Snapshot(progress.tag(), progress, job.status in Job.FINISHED, began)
        if asgi_served(request):
            feed_refresh(pk, began, snapshot.tag, snapshot)
        # The tag of what is sent, read after the state above: never older than the body.
        headers = {"ETag": progress_etag(snapshot.tag), "Cache-Control": "no-cache"}
        return Response(snapshot.progress(translation.get_language()), headers=headers)


def not_modified(etag: str) -> HttpResponseNotModified:
    response = HttpResponseNotModified()
    response["ETag"], response["Cache-Control"] = etag, "no-cache"
    return response


class JobActionView(JobsBase, APIView):
    """POST-only actions on one job: cancel, resume, retry-failed."""

    write_permissions = (CHANGE_JOB,)
    action_name = ""

    def post(self, request: Request, pk: int) -> Response:
        job = get_object_or_404(Job, pk=pk)
        try:
            result = self.act(job, request)
        except JobError as exc:
            return job_error_response(exc)
        return Response(JobDetail(result).data, self.success_status)

    def act(self, job: Job, request: Request) -> Job:
        raise NotImplementedError

    success_status: int = status.HTTP_200_OK


@extend_schema(
    tags=["jobs"], summary="Cancel a job", request=None, responses={200: JobDetail, **WRITE_ERRORS}
)
class JobCancelView(JobActionView):
    def act(self, job, request):
        return job_cancel(job)


@extend_schema(
    tags=["jobs"],
    summary="Resume a job",
    description="A queued or running job gets its drain tasks again; a cancelled or failed job puts its "
    "cancelled users back to work. A job stopped by its token cap resumes only with a higher "
    "`max_total_tokens` (else 409).",
    request=JobResumeInput,
    responses={200: JobDetail, 400: OpenApiResponse(description="A bad token cap"), **WRITE_ERRORS},
)
class JobResumeView(JobActionView):
    def act(self, job, request):
        data = JobResumeInput(data=request.data)
        data.is_valid(raise_exception=True)
        return job_resume(job, **data.validated_data)


@extend_schema(
    tags=["jobs"],
    summary="Retry the failed users of a finished job as a new job",
    request=None,
    responses={201: JobDetail, **WRITE_ERRORS},
)
class JobRetryFailedView(JobActionView):
    write_permissions = (ADD_JOB,)
    success_status = status.HTTP_201_CREATED

    def act(self, job, request):
        return job_retry_failed(job, created_by=request.user)


@extend_schema(
    tags=["jobs"],
    summary="A job's items (one per user), with their errors",
    parameters=[ItemFilter],
    responses={200: JobItemOutput(many=True), 400: OpenApiResponse(description="Bad filter"), **ERRORS},
)
class JobItemsView(JobsBase, generics.ListAPIView):
    serializer_class = JobItemOutput
    pagination_class = IdCursorPages  # a job may have a million items: a page must not count them

    def get_queryset(self):
        job = get_object_or_404(Job, pk=self.kwargs["pk"])
        filters = ItemFilter(data=self.request.query_params)
        filters.is_valid(raise_exception=True)
        return job_items(job, **filters.validated_data)


# An event of the stream as OpenAPI 3.2 describes Server-Sent Events: its data is JSON.
STREAM_EVENT = {
    "oneOf": [
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": "progress"},
                "id": {"type": "string", "description": "Send it back in Last-Event-ID"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": "#/components/schemas/Progress"},
                },
            },
        },
        {
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": {"const": "end"},
                "id": {"const": STREAM_END_ID},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {
                        "type": "object",
                        "required": ["id", "status"],
                        "properties": {"id": {"type": "integer"}, "status": {"type": "string"}},
                    },
                },
            },
        },
    ]
}


class StreamsBusy(APIException):
    """Served as WSGI, every thread this process lets streams hold is taken (access.thread_streams)."""

    status_code = status.HTTP_503_SERVICE_UNAVAILABLE
    default_code = "streams_busy"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.wait = STREAM_RETRY_MILLISECONDS / 1000  # DRF's handler sends it as Retry-After


class EventStreamRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "txt"

    def render(self, data, accepted_media_type=None, renderer_context=None):
        return json.dumps(data).encode() if not isinstance(data, bytes | str) else data


@extend_schema(
    tags=["jobs"],
    summary="Progress pushed as Server-Sent Events",
    description="`event: progress` (its `id` names that state) each time the progress changes, comments "
    "as keep-alives, and `event: end` (id `end`) when the job has finished. A stream closes after "
    "API_STREAM_MAX_SECONDS and the client reconnects, sending the last id it saw in `Last-Event-ID`: "
    "a state it already has is not sent again, and a finished job it saw end answers 204 (EventSource "
    "then stops). At most API_STREAMS_PER_USER streams per user are open at once (429 beyond); served "
    "as WSGI, at most WEB_THREADS - 1 per process (503 beyond: one thread stays for other requests).",
    parameters=[OpenApiParameter("Last-Event-ID", OpenApiTypes.STR, OpenApiParameter.HEADER, required=False)],
    responses={
        (200, "text/event-stream"): OpenApiResponse(STREAM_EVENT, description="One object per event"),
        204: OpenApiResponse(description="The job has ended, and the client saw it end"),
        **ERRORS,
        503: OpenApiResponse(
            Detail, description="Served as WSGI, the threads a process lets streams hold are all taken"
        ),
    },
)
class JobStreamView(JobsBase, APIView):
    renderer_classes = [JSONRenderer, EventStreamRenderer]

    def get(self, request: Request, pk: int):
        job = get_object_or_404(Job, pk=pk)
        last_id = request.headers.get("Last-Event-ID", "")
        if last_id == STREAM_END_ID and job.status in Job.FINISHED:
            return Response(status=status.HTTP_204_NO_CONTENT)
        slot = stream_slot_take(cast(int, request.user.pk))  # (signed in: ModelPermissions)
        if slot is None:
            raise Throttled(
                wait=STREAM_RETRY_MILLISECONDS / 1000,
                detail=_(
                    "at most %(count)s progress streams may be open per user; close one, or poll "
                    "/api/v1/jobs/%(id)s/progress/"
                )
                % {"count": settings.API_STREAMS_PER_USER, "id": job.id},
            )
        asynchronous = asgi_served(request)
        if not asynchronous and not thread_streams.take():
            stream_slot_release(slot)
            raise StreamsBusy(
                _(
                    "this server's threads for progress streams are all taken; poll "
                    "/api/v1/jobs/%(id)s/progress/ or try again shortly"
                )
                % {"id": job.id}
            )
        language = translation.get_language()  # the client's (Accept-Language): the events speak it
        stream = ProgressStream(job.id, last_id, slot, asynchronous=asynchronous, language=language)
        return self._stream_headers(StreamingHttpResponse(stream, content_type="text/event-stream"))

    def head(self, request: Request, pk: int):
        """What a GET would answer, without starting a stream: a HEAD's body is never sent, and a
        stream made for one would run unread to its end, holding a slot (and, served as WSGI, a
        thread) all that time."""
        get_object_or_404(Job, pk=pk)
        return self._stream_headers(HttpResponse(content_type="text/event-stream"))

    @staticmethod
    def _stream_headers(response: HttpResponseBase) -> HttpResponseBase:
        response["Cache-Control"] = "no-cache"
        response["X-Accel-Buffering"] = "no"  # nginx: do not buffer the stream
        return response
