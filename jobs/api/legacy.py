"""The predecessor's endpoints, kept for its front end and scripts.

Its envelope: {"code": 0, "message": "...", "data": {...}}; code 0 is success. Business refusals
(a job already running) answer HTTP 200 with a non-zero code, as the old service did; bad input,
authentication and permission errors keep their HTTP status and carry it as the code too.
"""

from django.conf import settings
from django.db import transaction
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import exceptions, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from eventproject.api import Guarded
from eventproject.db import transaction_lock
from extraction.api.access import VIEW_EVENT
from extraction.api.serializers import EventOutput

from ..errors import JobConflict, JobError, JobInvalid
from ..models import Job
from ..progress import job_progress
from ..selectors import job_events, job_latest, job_results
from ..services import job_run_here, job_start
from .access import ADD_JOB, VIEW_JOB
from .serializers import UserIds

CODE_JOB_RUNNING = 1001
CODE_USERS_BUSY = 1002
CODE_JOB_FAILED = 1003
CODE_TOO_MANY_EVENTS = 1004
LEGACY_STATUS: dict[str, str] = {
    Job.Status.QUEUED: "running",
    Job.Status.RUNNING: "running",
    Job.Status.CANCELLING: "running",
    Job.Status.COMPLETED: "completed",
    Job.Status.FAILED: "failed",
    Job.Status.CANCELLED: "failed",
}


def envelope(data=None, *, code: int = 0, message: str = "success", http_status: int = 200) -> Response:
    return Response({"code": code, "message": message, "data": data}, status=http_status)


@extend_schema_field({"const": None})
class NullField(serializers.JSONField):
    """The envelope's data of an error: always null."""


def envelope_schema(name: str, data: serializers.Serializer | None):
    fields: dict[str, serializers.Field] = {
        "code": serializers.IntegerField(),
        "message": serializers.CharField(),
    }
    fields["data"] = data if data is not None else NullField()
    return inline_serializer(name, fields)


class UserIdsInput(serializers.Serializer):
    user_ids = UserIds(allow_null=True, required=False, default=None)


class LegacyView(Guarded, APIView):
    """Errors in the old envelope too. Reads need jobs.view_job, starts jobs.add_job."""

    read_permissions = (VIEW_JOB,)
    write_permissions: tuple[str, ...] = (ADD_JOB, VIEW_JOB)

    def handle_exception(self, exc):
        response = super().handle_exception(exc)
        if isinstance(exc, exceptions.ValidationError):
            message = "; ".join(f"{field}: {_said(errors)}" for field, errors in exc.detail.items())
        else:
            message = str(getattr(exc, "detail", exc))
        response.data = {"code": response.status_code, "message": message, "data": None}
        return response

    def refused(self, exc: JobError) -> Response:
        if isinstance(exc, JobInvalid):
            return envelope(code=400, message=str(exc), http_status=status.HTTP_400_BAD_REQUEST)
        return envelope(
            code=CODE_USERS_BUSY if isinstance(exc, JobConflict) else CODE_JOB_RUNNING, message=str(exc)
        )


def _said(errors) -> str:
    """A field's errors as words, a list's items' too ({0: ["may not be null"]} → "item 0: ...")."""
    if isinstance(errors, dict):
        return "; ".join(f"item {key}: {_said(value)}" for key, value in errors.items())
    if isinstance(errors, list):
        return " ".join(_said(error) for error in errors)
    return str(errors)


StartData = inline_serializer(
    "LegacyStartData",
    {
        "status": serializers.CharField(),
        "job_id": serializers.IntegerField(),
        "total_users": serializers.IntegerField(required=False),
    },
    allow_null=True,  # a refusal's (code 1002: users busy)
)


@extend_schema(
    tags=["legacy"],
    summary="Start an extraction (predecessor's endpoint)",
    description=f"Refused with code {CODE_JOB_RUNNING} while any job is active.",
    request=UserIdsInput,
    responses={
        200: envelope_schema("LegacyStart", StartData),
        400: envelope_schema("LegacyError", None),
        401: envelope_schema("LegacyAuth", None),
        403: envelope_schema("LegacyForbidden", None),
        429: envelope_schema("LegacyThrottled", None),
    },
)
class LegacyStartView(LegacyView):
    def post(self, request: Request) -> Response:
        data = UserIdsInput(data=request.data)
        data.is_valid(raise_exception=True)
        try:
            with transaction.atomic():
                transaction_lock("legacy start")  # two starts at once: the second sees the first's job
                if active := job_latest(active=True):
                    return envelope(
                        {"status": "running", "job_id": active.id},
                        code=CODE_JOB_RUNNING,
                        message=f"an extraction job is already running (job {active.id})",
                    )
                job = job_start(user_ids=data.validated_data["user_ids"], created_by=request.user)
        except JobError as exc:
            return self.refused(exc)
        return envelope(
            {"status": "started", "job_id": job.id, "total_users": job.total_items},
            message="extraction started",
        )


ProgressData = inline_serializer(
    "LegacyProgressData",
    {
        "status": serializers.ChoiceField(choices=["idle", "running", "completed", "failed"]),
        "job_id": serializers.IntegerField(allow_null=True),
        "total_users": serializers.IntegerField(),
        "processed_users": serializers.IntegerField(),
        "success_count": serializers.IntegerField(),
        "failed_count": serializers.IntegerField(),
        "current_batch": serializers.IntegerField(),
        "total_batches": serializers.IntegerField(),
        "current_user_ids": serializers.ListField(child=serializers.CharField()),
        "progress_percent": serializers.FloatField(),
        "estimated_remaining_seconds": serializers.IntegerField(allow_null=True),
        "start_time": serializers.DateTimeField(allow_null=True),
        "end_time": serializers.DateTimeField(allow_null=True),
        "error_message": serializers.CharField(allow_null=True),
    },
)


# The predecessor's progress fields, each with the job_progress() figure it shows, and that figure
# before any job (status "idle").
LEGACY_FIELDS = {
    "total_users": ("total", 0),
    "processed_users": ("processed", 0),
    "success_count": ("succeeded", 0),
    "failed_count": ("failed", 0),
    "current_batch": ("current_batch", 0),
    "total_batches": ("total_batches", 0),
    "current_user_ids": ("current_user_ids", []),
    "progress_percent": ("percent", 0.0),
    "estimated_remaining_seconds": ("estimated_seconds_remaining", None),
    "start_time": ("started_at", None),
    "end_time": ("finished_at", None),
}


def legacy_progress(job: Job | None) -> dict:
    if job is None:
        idle = {old: before for old, (_new, before) in LEGACY_FIELDS.items()}
        return {"status": "idle", "job_id": None, **idle, "error_message": None}
    progress = job_progress(job)
    error = progress.error or (f"job {job.id} was cancelled" if job.status == Job.Status.CANCELLED else None)
    figures = {old: getattr(progress, new) for old, (new, _idle) in LEGACY_FIELDS.items()}
    return {"status": LEGACY_STATUS[job.status], "job_id": job.id, **figures, "error_message": error}


@extend_schema(
    tags=["legacy"],
    summary="Progress of the latest job (predecessor's endpoint and field names)",
    responses={
        200: envelope_schema("LegacyProgress", ProgressData),
        401: envelope_schema("LegacyAuth2", None),
        403: envelope_schema("LegacyForbidden2", None),
        429: envelope_schema("LegacyThrottled2", None),
    },
)
class LegacyProgressView(LegacyView):
    def get(self, request: Request) -> Response:
        job = job_latest()
        return envelope(type(ProgressData)(legacy_progress(job)).data)  # times rendered like the rest


SyncData = inline_serializer(
    "LegacySyncData",
    {
        "job_id": serializers.IntegerField(),
        "events": serializers.DictField(
            child=EventOutput(many=True),
            required=False,
            help_text="Each user's events from this run: none for a failed one (its earlier events are "
            "kept, see `failed`). Absent when the job ended otherwise (1003) or the users have more "
            "events than answered here (1004, LEGACY_SYNC_MAX_EVENTS)",
        ),
        "failed": serializers.DictField(
            child=serializers.CharField(),
            required=False,
            help_text="Absent when the job ended otherwise (1003)",
        ),
    },
    allow_null=True,  # a refusal's (code 1002: users busy)
)


@extend_schema(
    tags=["legacy"],
    summary="Extract a few users synchronously (predecessor's endpoint)",
    description="For small lists (LEGACY_SYNC_MAX_USERS, default 100); runs as a job in this request and "
    "answers every user's events, up to LEGACY_SYNC_MAX_EVENTS (default 10,000) in all.",
    request=inline_serializer(
        "LegacySyncInput",
        {
            "user_ids": serializers.ListField(
                child=serializers.CharField(max_length=settings.USER_ID_MAX_CHARS), allow_empty=False
            )
        },
    ),
    responses={
        200: envelope_schema("LegacySync", SyncData),
        400: envelope_schema("LegacySyncError", None),
        401: envelope_schema("LegacyAuth3", None),
        403: envelope_schema("LegacyForbidden3", None),
        429: envelope_schema("LegacyThrottled3", None),
    },
)
class LegacySyncView(LegacyView):
    # It answers the users' events: reading them needs their permission too.
    write_permissions = (ADD_JOB, VIEW_JOB, VIEW_EVENT)

    def post(self, request: Request) -> Response:
        limit = settings.LEGACY_SYNC_MAX_USERS
        data = UserIdsInput(data=request.data)
        data.is_valid(raise_exception=True)
        user_ids = data.validated_data["user_ids"]
        if not user_ids:
            raise exceptions.ValidationError({"user_ids": ["give the users to extract"]})
        if len(user_ids) > limit:
            raise exceptions.ValidationError(
                {"user_ids": [f"at most {limit} users here; start a job with /api/v1/events/extract/start"]}
            )
        try:
            job = job_start(user_ids=user_ids, created_by=request.user, enqueue=False)
        except JobError as exc:
            return self.refused(exc)
        job_run_here(job)
        if job.status != Job.Status.COMPLETED:
            return envelope(
                {"job_id": job.id}, code=CODE_JOB_FAILED, message=job.error or f"job {job.status}"
            )
        events, failed = job_results(job, at_most=(most := settings.LEGACY_SYNC_MAX_EVENTS))
        if events is None:
            return envelope(
                {"job_id": job.id, "failed": failed},
                code=CODE_TOO_MANY_EVENTS,
                message=f"the users have {job_events(job).count():,} events, more than the {most:,} "
                "answered here (LEGACY_SYNC_MAX_EVENTS): they are saved; read them a user at a time "
                "at /api/v1/users/{id}/events/",
            )
        shown = {user_id: EventOutput(sequence, many=True).data for user_id, sequence in events.items()}
        return envelope(
            {"job_id": job.id, "events": shown, "failed": failed},
            message=f"{len(shown) - len(failed)} users extracted",
        )
