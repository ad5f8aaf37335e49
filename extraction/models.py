"""The extraction domain: users, their raw behaviours, and the events extracted from them."""

from django.conf import settings
from django.db import models
from django.db.models import Q


class UserProfile(models.Model):
    """The registry of users: one row per user id, with whatever columns the source had.

    `input_version` goes up whenever the user's behaviours or profile change, so
    "needs extraction" is a comparison with the version the last success saw.
    """

    user_id = models.CharField(max_length=128, primary_key=True)
    attributes = models.JSONField(default=dict, blank=True)
    input_version = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["user_id"]

    def __str__(self) -> str:
        return self.user_id


class Behavior(models.Model):
    """One raw behaviour from a user's log (browse, search, visit, purchase…)."""

    # No database-level foreign key: bulk imports write millions of rows and
    # create the profile rows themselves in the same transaction.
    user = models.ForeignKey(
        UserProfile,
        on_delete=models.CASCADE,
        related_name="behaviors",
        db_constraint=False,
        db_index=False,  # the natural-key index starts with user_id
    )
    action = models.CharField(max_length=64)
    occurred_at = models.DateTimeField()
    item = models.CharField(max_length=255, blank=True, default="")
    app = models.CharField(max_length=128, blank=True, default="")
    media = models.CharField(max_length=128, blank=True, default="")
    place = models.CharField(max_length=255, blank=True, default="")
    duration_seconds = models.FloatField(null=True, blank=True)
    extra = models.JSONField(default=dict, blank=True)

    class Meta:
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
    CONVERSION = "conversion"
    ENGAGEMENT = "engagement"


class ExtractedEvent(models.Model):
    """A higher-level event made from one or more behaviours of one user."""

    user = models.ForeignKey(UserProfile, on_delete=models.CASCADE, related_name="events", db_index=False)
    sequence = models.PositiveIntegerField(help_text="Position in the user's event sequence")
    event_type = models.CharField(max_length=64)
    label = models.CharField(max_length=64, blank=True)
    category = models.CharField(max_length=16, choices=Category.choices)
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    context = models.JSONField(default=dict, blank=True)
    behavior_ids = models.JSONField(default=list)
    extractor = models.CharField(max_length=32)
    extractor_version = models.CharField(max_length=255)  # "1+" and the model name
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["user_id", "sequence"]
        constraints = [
            # Also the index for "a user's events in order".
            models.UniqueConstraint(fields=["user", "sequence"], name="event_user_sequence"),
            models.CheckConstraint(condition=Q(category__in=Category.values), name="event_category_valid"),
            models.CheckConstraint(
                condition=Q(ends_at__gte=models.F("starts_at")), name="event_ends_after_start"
            ),
        ]
        indexes = [models.Index(fields=["event_type", "starts_at"], name="event_type_time")]

    def __str__(self) -> str:
        return f"{self.user_id} #{self.sequence} {self.event_type}"


class ExtractionState(models.Model):
    """Per user: how the last extraction went and which input the stored events came from."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    user = models.OneToOneField(
        UserProfile, on_delete=models.CASCADE, primary_key=True, related_name="extraction_state"
    )
    status = models.CharField(max_length=16, choices=Outcome.choices)
    attempted_at = models.DateTimeField()
    error = models.TextField(blank=True)
    # The fields below describe the stored events, i.e. the last success.
    extracted_at = models.DateTimeField(null=True, blank=True)
    event_count = models.PositiveIntegerField(default=0)
    extractor = models.CharField(max_length=32, blank=True)
    extractor_version = models.CharField(max_length=255, blank=True)
    input_version = models.PositiveIntegerField(default=0)
    input_fingerprint = models.CharField(max_length=64, blank=True)

    class Meta:
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


class RateLimit(models.Model):
    """A request-rate limit shared by every worker on every machine: each request reserves the
    next free slot, `interval` seconds after the previous one (virtual scheduling)."""

    name = models.CharField(max_length=64, primary_key=True)
    next_slot = models.FloatField(default=0, help_text="Unix time of the next free slot")

    def __str__(self) -> str:
        return self.name


class DataImport(models.Model):
    """A file of behaviours or profiles uploaded in the admin and imported on the cluster.

    The row is the truth: a task carries only its id. Progress is checkpointed in the transaction
    that writes each batch (the last line handled, the counts, the rejected rows), so a worker that
    dies loses nothing written and counts nothing twice: whoever takes the import over, once its
    lease has run out, reads past the lines already handled and goes on from there.
    """

    class Kind(models.TextChoices):
        BEHAVIORS = "behaviors"
        PROFILES = "profiles"

    class Status(models.TextChoices):
        QUEUED = "queued"
        RUNNING = "running"
        COMPLETED = "completed"
        FAILED = "failed"

    ACTIVE = (Status.QUEUED, Status.RUNNING)

    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    file_name = models.CharField(max_length=255, help_text="The name it was uploaded under")
    stored_name = models.CharField(max_length=255, help_text="Its name in IMPORTS_DIR")
    file_size = models.PositiveBigIntegerField()
    file_format = models.CharField(max_length=8)
    encoding = models.CharField(max_length=32, default="utf-8-sig")
    timezone = models.CharField(max_length=64)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True, help_text="Why the file as a whole could not be imported")
    # The checkpoint, written with each batch.
    line = models.PositiveBigIntegerField(default=0, help_text="The last line handled")
    bytes_read = models.PositiveBigIntegerField(default=0)
    rows_read = models.PositiveBigIntegerField(default=0)
    imported = models.PositiveBigIntegerField(default=0)
    updated = models.PositiveBigIntegerField(default=0)
    duplicates = models.PositiveBigIntegerField(default=0)
    rejected = models.PositiveBigIntegerField(default=0)
    errors = models.JSONField(default=list, blank=True, help_text="[line, reason] of the first rejected rows")
    # The claim: one worker at a time, on a lease (database clock) renewed at each checkpoint.
    claim_token = models.UUIDField(null=True, blank=True)
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    takeovers = models.PositiveSmallIntegerField(
        default=0, help_text="How often a worker died or stalled holding it and another took over"
    )
    rung_at = models.DateTimeField(null=True, blank=True)

    class Meta:
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
