"""The extraction domain: users, their raw behaviours, and the events extracted from them."""

from typing import Any, NamedTuple

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy

from eventproject.fields import (
    choices_constraint,
    count_field,
    created_at_field,
    created_by_field,
    moment_field,
    status_field,
    unchecked_link,
)
from eventproject.statuses import StatusChoices


class UserProfile(models.Model):
    """The registry of users: one row per user id, with whatever columns the source had.

    `input_version` goes up whenever the user's behaviours or profile change, so
    "needs extraction" is a comparison with the version the last success saw.
    """

    user_id = models.CharField(
        max_length=settings.USER_ID_MAX_CHARS, primary_key=True, verbose_name=gettext_lazy("user id")
    )
    attributes = models.JSONField(default=dict, blank=True, verbose_name=gettext_lazy("attributes"))
    input_version = count_field(gettext_lazy("input version"), big=False)
    created_at = created_at_field()
    updated_at = models.DateTimeField(auto_now=True, verbose_name=gettext_lazy("updated at"))

    class Meta:
        verbose_name = gettext_lazy("user profile")
        verbose_name_plural = gettext_lazy("user profiles")
        ordering = ["user_id"]

    def __str__(self) -> str:
        return self.user_id


class Behavior(models.Model):
    """One raw behaviour from a user's log (browse, search, visit, purchase…)."""

    # No database-level foreign key: bulk imports write millions of rows and create the profile
    # rows themselves in the same transaction. The natural-key index starts with user_id.
    user = unchecked_link(UserProfile, models.CASCADE, "behaviors", gettext_lazy("user"))
    action = models.CharField(max_length=64, verbose_name=gettext_lazy("action"))
    occurred_at = models.DateTimeField(verbose_name=gettext_lazy("occurred at"))
    item = models.CharField(max_length=255, blank=True, default="", verbose_name=gettext_lazy("item"))
    app = models.CharField(max_length=128, blank=True, default="", verbose_name=gettext_lazy("app"))
    media = models.CharField(max_length=128, blank=True, default="", verbose_name=gettext_lazy("media"))
    place = models.CharField(max_length=255, blank=True, default="", verbose_name=gettext_lazy("place"))
    duration_seconds = models.FloatField(null=True, blank=True, verbose_name=gettext_lazy("duration seconds"))
    extra = models.JSONField(default=dict, blank=True, verbose_name=gettext_lazy("extra"))

    class Meta:
        verbose_name = gettext_lazy("behaviour")
        verbose_name_plural = gettext_lazy("behaviours")
        constraints = [
            # Re-importing a file adds nothing. Also the index that reads one
            # user's behaviours in time order (extraction's hot query).
            models.UniqueConstraint(
                fields=["user", "occurred_at", "action", "item", "app", "media", "place"],
                name="behavior_natural_key",
            ),
            models.CheckConstraint(
                condition=Q(duration_seconds__isnull=True) | Q(duration_seconds__gte=0),
                name="behavior_duration_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id} {self.action} {self.item} @ {self.occurred_at:%Y-%m-%d %H:%M}"


class Category(models.TextChoices):
    CONVERSION = "conversion", gettext_lazy("conversion")
    ENGAGEMENT = "engagement", gettext_lazy("engagement")


class ExtractedEvent(models.Model):
    """A higher-level event made from one or more behaviours of one user."""

    # No foreign key in the database: its check, a trigger per event row, cost a third of a rules
    # chunk's database time. The commit locks the users' profiles once per chunk instead
    # (extraction.services.extraction_results_write), and profiles_delete locks them first.
    # The (user, sequence) constraint's index serves its lookups.
    user = unchecked_link(UserProfile, models.CASCADE, "events", gettext_lazy("user"))
    sequence = models.PositiveIntegerField(
        help_text=gettext_lazy("Position in the user's event sequence"), verbose_name=gettext_lazy("sequence")
    )
    event_type = models.CharField(max_length=64, verbose_name=gettext_lazy("event type"))
    label = models.CharField(max_length=64, blank=True, verbose_name=gettext_lazy("label"))
    category = models.CharField(
        max_length=16, choices=Category.choices, verbose_name=gettext_lazy("category")
    )
    starts_at = models.DateTimeField(verbose_name=gettext_lazy("starts at"))
    ends_at = models.DateTimeField(verbose_name=gettext_lazy("ends at"))
    context = models.JSONField(default=dict, blank=True, verbose_name=gettext_lazy("context"))
    behavior_ids = models.JSONField(default=list, verbose_name=gettext_lazy("behavior ids"))
    extractor = models.CharField(max_length=32, verbose_name=gettext_lazy("extractor"))
    extractor_version = models.CharField(
        max_length=255, verbose_name=gettext_lazy("extractor version")
    )  # "1+" and the model name
    created_at = models.DateTimeField(verbose_name=gettext_lazy("created at"))

    class Meta:
        verbose_name = gettext_lazy("extracted event")
        verbose_name_plural = gettext_lazy("extracted events")
        ordering = ["user_id", "sequence"]
        constraints = [
            # Also the index for "a user's events in order".
            models.UniqueConstraint(fields=["user", "sequence"], name="event_user_sequence"),
            choices_constraint("category", Category, "event_category_valid"),
            models.CheckConstraint(
                condition=Q(ends_at__gte=models.F("starts_at")), name="event_ends_after_start"
            ),
        ]
        # The list and the exports filter by type and page in id order: this index hands them a type's
        # events already in that order (by type and start time, a page sorted all of a type's matches),
        # and a commit adds each type's new events at its end, where (type, start time) put them all
        # over the index: a rules commit's COPY took 17-37 % less time (three runs, 185,000 events).
        indexes = [models.Index(fields=["event_type", "id"], name="event_type_id")]

    def __str__(self) -> str:
        return f"{self.user_id} #{self.sequence} {self.event_type}"


class EventRow(NamedTuple):
    """One extracted event as stored: its fields are its table's columns, in order (for COPY; the
    writer builds plain tuples in this order)."""

    user_id: str
    sequence: int
    event_type: str
    label: str
    category: str
    starts_at: Any  # a datetime, as the database takes it (see datetime_adapter)
    ends_at: Any
    context: Any  # JSON, as the database takes it (see json_adapter)
    behavior_ids: Any
    extractor: str
    extractor_version: str
    created_at: Any


EVENT_COLUMNS = EventRow._fields


class ExtractionState(models.Model):
    """Per user: how the last extraction went and which input the stored events came from."""

    class Outcome(StatusChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    user = models.OneToOneField(
        UserProfile,
        on_delete=models.CASCADE,
        primary_key=True,
        related_name="extraction_state",
        verbose_name=gettext_lazy("user"),
    )
    status = models.CharField(max_length=16, choices=Outcome.choices, verbose_name=gettext_lazy("status"))
    attempted_at = models.DateTimeField(verbose_name=gettext_lazy("attempted at"))
    error = models.TextField(blank=True, verbose_name=gettext_lazy("error"))
    # The fields below describe the stored events, i.e. the last success.
    extracted_at = moment_field(gettext_lazy("extracted at"))
    event_count = count_field(gettext_lazy("event count"), big=False)
    extractor = models.CharField(max_length=32, blank=True, verbose_name=gettext_lazy("extractor"))
    extractor_version = models.CharField(
        max_length=255, blank=True, verbose_name=gettext_lazy("extractor version")
    )
    input_version = count_field(gettext_lazy("input version"), big=False)
    input_fingerprint = models.CharField(
        max_length=64, blank=True, verbose_name=gettext_lazy("input fingerprint")
    )

    class Meta:
        verbose_name = gettext_lazy("extraction state")
        verbose_name_plural = gettext_lazy("extraction states")
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["succeeded", "failed"]), name="state_status_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user_id}: {self.status}"


class LLMCacheEntry(models.Model):
    """A validated answer of the LLM to one exact request, so a resumed or retried job does not
    pay twice for work already done."""

    key = models.CharField(max_length=64, unique=True, help_text="sha256 of model, settings and messages")
    model = models.CharField(max_length=128)
    response = models.TextField()
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)  # pruned by age

    def __str__(self) -> str:
        return f"{self.model} {self.key[:12]}"


class LLMEndpointProfile(models.Model):
    """What one LLM endpoint and model accept, learned from their refusals and shared by every
    worker on every machine, so that a refused parameter costs one extra call per endpoint and
    model, not one per request. The first request to a new endpoint and model goes alone (a probe,
    `probe_until`); the others wait until its shape was accepted (`accepted_at`)."""

    class TokenParameter(models.TextChoices):
        MAX_TOKENS = "max_tokens"
        MAX_COMPLETION_TOKENS = "max_completion_tokens"

    class ResponseFormat(models.TextChoices):
        """Best first: an automatic choice starts at json_schema and steps down on each refusal."""

        JSON_SCHEMA = "json_schema"
        JSON_OBJECT = "json_object"
        TEXT = "text"

    endpoint = models.CharField(max_length=500, help_text="OPENAI_BASE_URL without credentials or query")
    model = models.CharField(max_length=200)
    token_parameter = models.CharField(
        max_length=32, choices=TokenParameter.choices, default=TokenParameter.MAX_TOKENS
    )
    sends_temperature = models.BooleanField(default=True)
    response_format = models.CharField(
        max_length=16, choices=ResponseFormat.choices, default=ResponseFormat.JSON_SCHEMA
    )
    accepted_at = models.DateTimeField(
        null=True, blank=True, help_text="A request of this shape was answered"
    )
    probe_until = models.DateTimeField(null=True, blank=True, help_text="A worker is probing until then")
    # What the endpoint reported for this model so far (the cost estimate's reasoning share).
    completion_tokens = models.PositiveBigIntegerField(default=0)
    reasoning_tokens = models.PositiveBigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "model"], name="llm_profile_endpoint_model"),
            models.CheckConstraint(
                condition=Q(token_parameter__in=["max_tokens", "max_completion_tokens"]),
                name="llm_profile_token_parameter_valid",
            ),
            models.CheckConstraint(
                condition=Q(response_format__in=["json_schema", "json_object", "text"]),
                name="llm_profile_response_format_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.model} at {self.endpoint}"


class LLMBudget(models.Model):
    """The provider's budget for one endpoint and model (requests and tokens per minute), shared by
    every worker on every machine (extraction.llm_budget). Two buckets kept by virtual scheduling:
    `requests_at` and `tokens_at` are the times (the database's clock, Unix seconds) up to which
    their rates are spent; a 429 stops every caller until `paused_until`. `callers` holds, for each
    job asking lately, its weight, its recent use and until when it was held back:
    {"job:12": {"weight": 2, "usage": 1234.5, "seen": t, "held": t}}."""

    endpoint = models.CharField(max_length=500, help_text="OPENAI_BASE_URL without credentials or query")
    model = models.CharField(max_length=200)
    requests_at = models.FloatField(default=0)
    tokens_at = models.FloatField(default=0)
    paused_until = models.FloatField(default=0)
    pause_seconds = models.FloatField(default=0, help_text="The last pause a 429 without Retry-After made")
    usage_at = models.FloatField(default=0, help_text="When the callers' usage was last decayed")
    callers = models.JSONField(default=dict)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "model"], name="llm_budget_endpoint_model"),
        ]

    def __str__(self) -> str:
        return f"{self.model} at {self.endpoint}"


class DataImport(models.Model):
    """A file of behaviours or profiles uploaded in the admin and imported on the cluster.

    The row is the truth: a task carries only its id. Progress is checkpointed in the transaction
    that writes each batch (the last line handled, the counts, the rejected rows), so a worker that
    dies loses nothing written and counts nothing twice: whoever takes the import over, once its
    lease has run out, reads past the lines already handled and goes on from there.
    """

    class Kind(models.TextChoices):
        BEHAVIORS = "behaviors", gettext_lazy("behaviors")
        PROFILES = "profiles", gettext_lazy("profiles")

    class Status(StatusChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices, verbose_name=gettext_lazy("kind"))
    status = status_field(Status, Status.QUEUED)
    file_name = models.CharField(
        max_length=255,
        help_text=gettext_lazy("The name it was uploaded under"),
        verbose_name=gettext_lazy("file name"),
    )
    stored_name = models.CharField(
        max_length=255,
        help_text=gettext_lazy("Its name in IMPORTS_DIR"),
        verbose_name=gettext_lazy("stored name"),
    )
    file_size = models.PositiveBigIntegerField(verbose_name=gettext_lazy("file size"))
    file_format = models.CharField(max_length=8, verbose_name=gettext_lazy("file format"))
    encoding = models.CharField(max_length=32, default="utf-8-sig", verbose_name=gettext_lazy("encoding"))
    timezone = models.CharField(max_length=64, verbose_name=gettext_lazy("timezone"))
    created_by = created_by_field()
    created_at = created_at_field()
    started_at = moment_field(gettext_lazy("started at"))
    finished_at = moment_field(gettext_lazy("finished at"))
    error = models.TextField(
        blank=True,
        help_text=gettext_lazy("Why the file as a whole could not be imported"),
        verbose_name=gettext_lazy("error"),
    )
    # The checkpoint, written with each batch.
    line = models.PositiveBigIntegerField(
        default=0, help_text=gettext_lazy("The last line handled"), verbose_name=gettext_lazy("line")
    )
    bytes_read = count_field(gettext_lazy("bytes read"))
    rows_read = count_field(gettext_lazy("rows read"))
    imported = count_field(gettext_lazy("imported"))
    updated = count_field(gettext_lazy("updated"))
    duplicates = count_field(gettext_lazy("duplicates"))
    rejected = count_field(gettext_lazy("rejected"))
    errors = models.JSONField(
        default=list,
        blank=True,
        help_text=gettext_lazy("[line, reason] of the first rejected rows"),
        verbose_name=gettext_lazy("errors"),
    )
    # The claim: one worker at a time, on a lease (database clock) renewed at each checkpoint.
    claim_token = models.UUIDField(null=True, blank=True, verbose_name=gettext_lazy("claim token"))
    lease_expires_at = moment_field(gettext_lazy("lease expires at"))
    takeovers = models.PositiveSmallIntegerField(
        default=0,
        help_text=gettext_lazy("How often a worker died or stalled holding it and another took over"),
        verbose_name=gettext_lazy("takeovers"),
    )
    rung_at = moment_field(gettext_lazy("rung at"))

    class Meta:
        verbose_name = gettext_lazy("data import")
        verbose_name_plural = gettext_lazy("data imports")
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "completed", "failed"]),
                name="dataimport_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["behaviors", "profiles"]), name="dataimport_kind_valid"
            ),
        ]
        indexes = [
            # Healing: the imports not yet finished.
            models.Index(
                fields=["status"], condition=Q(status__in=["queued", "running"]), name="dataimport_active"
            ),
        ]

    def __str__(self) -> str:
        return f"Import {self.pk} of {self.kind} ({self.status})"

    @property
    def percent(self) -> float:
        if self.status == self.Status.COMPLETED:
            return 100.0
        return round(100 * min(self.bytes_read / self.file_size, 1.0), 1) if self.file_size else 0.0
