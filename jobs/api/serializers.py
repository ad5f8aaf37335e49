"""The shapes of the jobs API: input serializers validate (user ids counted before they are checked,
priorities by name), output serializers render. Nothing here writes; JobDetail reads the job's
progress (jobs.progress) as it renders."""

from django.conf import settings
from django.contrib.auth.models import User
from django.utils.translation import gettext as _
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from ..models import PRIORITY_NAMES, Job, JobItem
from ..progress import job_progress


class UserIds(serializers.ListField):
    """A list of user ids, counted with duplicates (the admin's start form counts the same way), and
    counted before any is validated, so an oversized list costs nothing."""

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "child", serializers.CharField(max_length=settings.USER_ID_MAX_CHARS, trim_whitespace=True)
        )
        super().__init__(allow_empty=False, max_length=settings.JOBS_MAX_USER_IDS, **kwargs)

    def to_internal_value(self, data):
        limit = settings.JOBS_MAX_USER_IDS
        if isinstance(data, list) and len(data) > limit:
            raise serializers.ValidationError(
                _("%(count)s user ids; at most %(limit)s per job (JOBS_MAX_USER_IDS). Split the list.")
                % {"count": f"{len(data):,}", "limit": f"{limit:,}"}
            )
        return super().to_internal_value(data)


class PriorityField(serializers.ChoiceField):
    """A job's priority by name (low, normal, high, urgent), its weight in the fair share."""

    NAMES = {value: name for name, value in PRIORITY_NAMES.items()}

    def __init__(self, **kwargs):
        kwargs.setdefault(
            "help_text",
            "Its share of the workers beside other running jobs: "
            + ", ".join(f"{name} ({value})" for value, name in self.NAMES.items())
            + "; a job of weight 4 gets twice the workers' time of one of 2",
        )
        super().__init__(choices=list(self.NAMES.values()), **kwargs)

    def to_representation(self, value: int) -> str:  # type: ignore[override]
        return self.NAMES.get(value, str(value))

    # (The stubs' ChoiceField gives back the name; this field gives its number.)
    def to_internal_value(self, data) -> int:  # type: ignore[override]
        name = super().to_internal_value(data)
        return {name: value for value, name in self.NAMES.items()}[name]


class JobShare(serializers.Serializer):
    """A job's share of the workers, chosen at start and changeable while it runs."""

    priority = PriorityField(required=False)
    max_workers = serializers.IntegerField(
        required=False,
        allow_null=True,
        min_value=1,
        max_value=settings.JOBS_MAX_WORKERS_LIMIT,
        help_text="The most workers it may hold at once (null: no cap)",
    )


class JobStartInput(JobShare):
    user_ids = UserIds(
        allow_null=True,
        required=False,
        default=None,
        help_text="Users to extract; null (the default) means every user needing extraction and not "
        "already in an active job. At most JOBS_MAX_USER_IDS (100,000) ids.",
    )
    everyone = serializers.BooleanField(
        default=False,
        help_text="With user_ids null: every user not already in an active job, whether or not it "
        "needs extraction (a new extractor or model over everyone)",
    )
    extractor = serializers.CharField(
        default="rules", max_length=32, help_text="An extractor name, e.g. rules"
    )
    options = serializers.DictField(default=dict, help_text="Extractor options, checked by the extractor")
    chunk_size = serializers.IntegerField(
        required=False, min_value=1, max_value=settings.JOBS_CHUNK_SIZE_LIMIT
    )
    max_attempts = serializers.IntegerField(
        required=False, min_value=1, max_value=settings.JOBS_MAX_ATTEMPTS_LIMIT
    )


class JobResumeInput(serializers.Serializer):
    max_total_tokens = serializers.IntegerField(
        required=False,
        min_value=1,
        help_text="A new token cap (options.max_total_tokens), above what the job has spent: needed to "
        "resume a job its old cap stopped",
    )


class TopError(serializers.Serializer):
    error = serializers.CharField()
    count = serializers.IntegerField()


class Adaptation(serializers.Serializer):
    refused = serializers.CharField(help_text="What the endpoint refused, e.g. max_tokens")
    instead = serializers.CharField(
        allow_blank=True, help_text="What is sent in its place (empty: nothing), e.g. max_completion_tokens"
    )


class Service(serializers.Serializer):
    """The LLM endpoint a job calls, as far as what it accepts is known."""

    endpoint = serializers.CharField(help_text="OPENAI_BASE_URL without credentials")
    model = serializers.CharField()
    response_format = serializers.ChoiceField(
        choices=["json_schema", "json_object", "text"], help_text="How answers are asked for"
    )
    adapted = Adaptation(many=True, help_text="Parameters the endpoint and model refused, learned once")


class Progress(serializers.Serializer):
    """Where a job stands, computed from the database (exact after any crash)."""

    id = serializers.IntegerField()
    priority = PriorityField()
    max_workers = serializers.IntegerField(allow_null=True)
    workers = serializers.IntegerField(help_text="Workers serving the job now")
    waiting_for = serializers.ChoiceField(
        choices=["worker", "provider_limit"],
        allow_null=True,
        help_text="What the job waits for: a free worker, or the LLM provider's rate limit",
    )
    activity = serializers.CharField(
        allow_blank=True,
        help_text='What it is doing, in words: "running on 2 workers", "waiting for a worker", '
        '"held back by the provider\'s limit"',
    )
    status = serializers.ChoiceField(choices=Job.Status.choices)
    extractor = serializers.CharField()
    total = serializers.IntegerField()
    processed = serializers.IntegerField(help_text="succeeded + failed")
    succeeded = serializers.IntegerField()
    failed = serializers.IntegerField()
    cancelled = serializers.IntegerField()
    pending = serializers.IntegerField()
    running = serializers.IntegerField()
    percent = serializers.FloatField()
    current_batch = serializers.IntegerField()
    total_batches = serializers.IntegerField()
    current_user_ids = serializers.ListField(child=serializers.CharField(), help_text="At most 20")
    throughput_per_second = serializers.FloatField(help_text="Users finished per second over the last minute")
    estimated_seconds_remaining = serializers.IntegerField(allow_null=True)
    event_count = serializers.IntegerField()
    prompt_tokens = serializers.IntegerField(help_text="LLM tokens paid so far, over all attempts")
    completion_tokens = serializers.IntegerField()
    reasoning_tokens = serializers.IntegerField(
        help_text="Of the completion tokens, those the model spent reasoning (reported, or estimated "
        "from its reasoning text)"
    )
    llm = Service(allow_null=True, help_text="For an LLM job: its endpoint and what was adapted to it")
    created_at = serializers.DateTimeField()
    started_at = serializers.DateTimeField(allow_null=True)
    finished_at = serializers.DateTimeField(allow_null=True)
    elapsed_seconds = serializers.FloatField(allow_null=True)
    average_per_second = serializers.FloatField(help_text="Users processed over the elapsed time")
    error = serializers.CharField(allow_blank=True)
    top_errors = TopError(many=True)


class JobSummary(serializers.ModelSerializer):
    created_by: serializers.SlugRelatedField[User] = serializers.SlugRelatedField(
        slug_field="username", read_only=True, allow_null=True
    )
    priority = PriorityField(read_only=True)
    percent = serializers.FloatField(read_only=True)

    class Meta:
        model = Job
        fields = [
            "id",
            "status",
            "extractor",
            "options",
            "selection",
            "created_by",
            "parent",
            "schedule",
            "chunk_size",
            "max_attempts",
            "priority",
            "max_workers",
            "created_at",
            "started_at",
            "finished_at",
            "items_pruned_at",
            "error",
            "total_items",
            "succeeded_items",
            "failed_items",
            "cancelled_items",
            "event_count",
            "percent",
        ]
        read_only_fields = fields


class JobDetail(JobSummary):
    progress = serializers.SerializerMethodField()

    class Meta(JobSummary.Meta):
        fields = [*JobSummary.Meta.fields, "progress"]
        read_only_fields = fields

    @extend_schema_field(Progress)
    def get_progress(self, job: Job) -> dict:
        return Progress(job_progress(job)).data


class JobItemOutput(serializers.ModelSerializer):
    class Meta:
        model = JobItem
        fields = [
            "id",
            "user_id",
            "status",
            "attempts",
            "error",
            "event_count",
            "prompt_tokens",
            "completion_tokens",
            "started_at",
            "finished_at",
        ]
        read_only_fields = fields


class Conflict(serializers.Serializer):
    detail = serializers.CharField()
    user_ids = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="At most 20 of the users already in an active job",
    )
    job_ids = serializers.ListField(
        child=serializers.IntegerField(), required=False, help_text="The active jobs holding them"
    )


class JobFilter(serializers.Serializer):
    status = serializers.ChoiceField(required=False, choices=Job.Status.choices)
    extractor = serializers.CharField(required=False, max_length=32)


class ItemFilter(serializers.Serializer):
    status = serializers.ChoiceField(required=False, choices=JobItem.Status.choices)
