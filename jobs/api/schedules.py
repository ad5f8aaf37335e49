"""Schedules over HTTP: list, make, read, change (pause or resume with `active`), delete, and their
runs. Permissions like the jobs' own: reads need jobs.view_schedule, writes the add, change or
delete permission; making or changing one also jobs.add_job, since a schedule starts jobs. Views
stay thin: validate the input, call jobs.schedules, render."""

from functools import partial

from django.conf import settings
from django.contrib.auth.models import User
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_field, extend_schema_view
from rest_framework import generics, serializers, status
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from eventproject.api import ERRORS, Guarded, NumberedPages

from ..models import Job, Schedule, ScheduleRun
from ..schedules import schedule_create, schedule_delete, schedule_update
from ..selectors import schedules_list
from .serializers import PriorityField
from .views import write_response

VIEW_SCHEDULE = "jobs.view_schedule"
# A schedule starts jobs in its maker's name: making or changing one takes the right to start jobs.
WRITES = {
    "POST": ("jobs.add_schedule", "jobs.add_job"),
    "PATCH": ("jobs.change_schedule", "jobs.add_job"),
    "DELETE": ("jobs.delete_schedule",),
}
INVALID = OpenApiResponse(description="Bad fields, each named with what is wrong with it")


class ScheduleInput(serializers.Serializer):
    name = serializers.CharField(max_length=Schedule.NAME_MAX_CHARS)
    cron = serializers.CharField(
        max_length=Schedule.CRON_MAX_CHARS,
        help_text="Five fields (minute hour day-of-month month day-of-week) or an @alias, read as "
        "wall-clock times in the server's TIME_ZONE, e.g. `0 3 * * *`",
    )
    users = serializers.ChoiceField(
        choices=Schedule.Users.choices,
        default=Schedule.Users.NEEDING_EXTRACTION,
        help_text="needing_extraction: new or changed behaviours since their last successful run; all; "
        "or list (user_ids)",
    )
    user_ids = serializers.ListField(
        child=serializers.CharField(max_length=settings.USER_ID_MAX_CHARS),
        max_length=settings.JOBS_MAX_USER_IDS,
        default=list,
        help_text="The users of a `list` schedule (at most JOBS_MAX_USER_IDS)",
    )
    extractor = serializers.CharField(default="rules", max_length=32)
    options = serializers.DictField(default=dict, help_text="Extractor options, checked by the extractor")
    priority = PriorityField(default=Job.Priority.NORMAL)
    max_workers = serializers.IntegerField(
        min_value=1, max_value=settings.JOBS_MAX_WORKERS_LIMIT, allow_null=True, default=None
    )
    active = serializers.BooleanField(default=True, help_text="false pauses it")


class ScheduleRunOutput(serializers.ModelSerializer):
    job_status = serializers.ChoiceField(
        source="job.status", choices=Job.Status.choices, allow_null=True, read_only=True, default=None
    )

    class Meta:
        model = ScheduleRun
        fields = ["id", "due_at", "ran_at", "outcome", "job", "job_status", "message"]
        read_only_fields = fields


class ScheduleSummary(serializers.ModelSerializer):
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    priority = PriorityField(read_only=True)
    time_zone = serializers.SerializerMethodField(help_text="The zone its cron expression is read in")
    user_count = serializers.SerializerMethodField(help_text="Users of a list schedule")
    last_run = serializers.SerializerMethodField()

    class Meta:
        model = Schedule
        fields = [
            "id",
            "name",
            "cron",
            "time_zone",
            "users",
            "user_count",
            "extractor",
            "options",
            "priority",
            "max_workers",
            "active",
            "next_run_at",
            "last_run",
            "created_by",
            "created_at",
        ]
        read_only_fields = fields

    def get_time_zone(self, schedule: Schedule) -> str:
        return settings.TIME_ZONE

    def get_user_count(self, schedule: Schedule) -> int:
        return len(schedule.user_ids)

    @extend_schema_field(ScheduleRunOutput(allow_null=True))
    def get_last_run(self, schedule: Schedule) -> dict | None:
        latest = getattr(schedule, "latest", None)  # prefetched by schedules_list()
        if latest is None:
            latest = list(schedule.runs.select_related("job")[:1])
        return ScheduleRunOutput(latest[0]).data if latest else None


class ScheduleDetail(ScheduleSummary):
    class Meta(ScheduleSummary.Meta):
        fields = [*ScheduleSummary.Meta.fields, "user_ids"]
        read_only_fields = fields


class SchedulesBase(Guarded, APIView):
    """Reads need jobs.view_schedule; each write its own permissions (see WRITES)."""

    read_permissions = (VIEW_SCHEDULE,)

    @property  # (per request: Guarded's plain attribute becomes a property here)
    def write_permissions(self) -> tuple[str, ...]:  # type: ignore[override]
        return WRITES.get(self.request.method or "", WRITES["PATCH"])


@extend_schema_view(
    get=extend_schema(
        summary="List schedules by name", responses={200: ScheduleSummary(many=True), **ERRORS}
    ),
    post=extend_schema(
        summary="Make a schedule",
        request=ScheduleInput,
        responses={201: ScheduleDetail, 400: INVALID, **ERRORS},
    ),
)
@extend_schema(tags=["schedules"])
class SchedulesView(SchedulesBase, generics.ListAPIView):
    serializer_class = ScheduleSummary
    pagination_class = NumberedPages

    def get_queryset(self):
        return schedules_list()

    def post(self, request: Request) -> Response:
        create = partial(schedule_create, created_by=request.user)
        return write_response(
            ScheduleInput(data=request.data), create, ScheduleDetail, status.HTTP_201_CREATED
        )


@extend_schema_view(
    get=extend_schema(summary="A schedule", responses={200: ScheduleDetail, **ERRORS}),
    patch=extend_schema(
        summary="Change a schedule (`active: false` pauses it)",
        request=ScheduleInput(partial=True),
        responses={200: ScheduleDetail, 400: INVALID, **ERRORS},
    ),
    delete=extend_schema(
        summary="Delete a schedule and its runs (the jobs it started stay)",
        responses={204: OpenApiResponse(description="Deleted"), **ERRORS},
    ),
)
@extend_schema(tags=["schedules"])
class ScheduleView(SchedulesBase, generics.RetrieveAPIView):
    serializer_class = ScheduleDetail

    def get_queryset(self):
        return schedules_list()

    def patch(self, request: Request, pk: int) -> Response:
        update = partial(schedule_update, get_object_or_404(Schedule, pk=pk))
        return write_response(ScheduleInput(data=request.data, partial=True), update, ScheduleDetail)

    def delete(self, request: Request, pk: int) -> Response:
        schedule_delete(get_object_or_404(Schedule, pk=pk))
        return Response(status=status.HTTP_204_NO_CONTENT)


@extend_schema(
    tags=["schedules"],
    summary="A schedule's runs, newest first: the jobs it started, the runs it skipped or was refused",
    responses={200: ScheduleRunOutput(many=True), **ERRORS},
)
class ScheduleRunsView(SchedulesBase, generics.ListAPIView):
    serializer_class = ScheduleRunOutput
    pagination_class = NumberedPages

    def get_queryset(self):
        schedule = get_object_or_404(Schedule, pk=self.kwargs["pk"])
        return schedule.runs.select_related("job").order_by("-id")
