"""Webhooks: endpoints people configure, events the other apps record, and a delivery row for each
(event, endpoint) pair that the clusters send, retry and log attempt by attempt.

Delivery is a row, not a hope: an event's deliveries are written in the same transaction as the
change they announce, so a change that committed is announced (at least once), and one that rolled
back never is. Every delivery's status change is one conditional UPDATE naming its source states.
"""

from django.core.exceptions import ValidationError
from django.db import models
from django.db.models import Q
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy

from eventproject.fields import (
    choices_constraint,
    count_field,
    created_at_field,
    created_by_field,
    moment_field,
    status_field,
)
from eventproject.statuses import StatusChoices

from .event_types import event_type_known
from .outbound import EXCERPT_CHARS, url_problem


class Endpoint(models.Model):
    """A receiver of webhooks: a URL, the event types it wants, and a signing secret.

    The secret is never stored: it is derived from SECRET_KEY and this endpoint's random salt
    (webhooks.signing), shown once when the endpoint is made or its secret is renewed.
    """

    name = models.CharField(max_length=100, unique=True, verbose_name=gettext_lazy("name"))
    url = models.URLField(
        max_length=1000,
        help_text=gettext_lazy("http(s) URL that receives a POST per event; no user name or password in it"),
        verbose_name=gettext_lazy("URL"),
    )
    events = models.JSONField(
        default=list,
        help_text=gettext_lazy("The event types it receives"),
        verbose_name=gettext_lazy("events"),
    )
    active = models.BooleanField(
        default=True,
        help_text=gettext_lazy("Inactive endpoints get no new events; their pending deliveries fail"),
        verbose_name=gettext_lazy("active"),
    )
    secret_salt = models.CharField(max_length=64, editable=False, verbose_name=gettext_lazy("secret salt"))
    created_by = created_by_field()
    created_at = created_at_field()
    secret_renewed_at = moment_field(gettext_lazy("secret renewed at"))

    class Meta:
        verbose_name = gettext_lazy("webhook endpoint")
        verbose_name_plural = gettext_lazy("webhook endpoints")
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        errors: dict[str, str | Promise] = {}
        if self.url and (problem := url_problem(self.url)):
            errors["url"] = problem
        if not isinstance(self.events, list) or not self.events:
            errors["events"] = gettext_lazy("Choose at least one event type.")
        elif unknown := [name for name in self.events if not event_type_known(name)]:
            errors["events"] = gettext_lazy("Unknown event types: %(names)s") % {"names": ", ".join(unknown)}
        if errors:
            raise ValidationError(errors)

    def wants(self, event_type: str) -> bool:
        return self.active and event_type in self.events


class Event(models.Model):
    """Something that happened, as receivers see it: its `message_id` is the `webhook-id` header,
    the same for every endpoint and every attempt, so receivers can drop duplicates."""

    message_id = models.CharField(max_length=40, unique=True, verbose_name=gettext_lazy("message id"))
    type = models.CharField(max_length=64, verbose_name=gettext_lazy("type"))
    data = models.JSONField(verbose_name=gettext_lazy("data"))
    created_at = models.DateTimeField(verbose_name=gettext_lazy("created at"))

    class Meta:
        verbose_name = gettext_lazy("webhook event")
        verbose_name_plural = gettext_lazy("webhook events")

    def __str__(self) -> str:
        return f"{self.type} {self.message_id}"


class DeliveryStatus(StatusChoices):
    PENDING = "pending"
    SENDING = "sending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class Delivery(models.Model):
    """One event for one endpoint: `pending → sending → succeeded`, or back to `pending` after a
    failed attempt (until `give_up_at`, then `failed`); `sending` whose lease ran out (its cluster
    died) is claimed again; `succeeded | failed → pending` when someone redelivers it."""

    Status = DeliveryStatus
    FINISHED = (Status.SUCCEEDED, Status.FAILED)

    event = models.ForeignKey(
        Event, on_delete=models.CASCADE, related_name="deliveries", verbose_name=gettext_lazy("event")
    )
    endpoint = models.ForeignKey(
        Endpoint, on_delete=models.CASCADE, related_name="deliveries", verbose_name=gettext_lazy("endpoint")
    )
    status = status_field(DeliveryStatus, DeliveryStatus.PENDING)
    attempt_count = count_field(gettext_lazy("attempts"), big=False)
    # The attempts made before its latest redelivery: the backoff counts from there, afresh. A
    # database default too: code of the release before, running during an upgrade, leaves it out.
    attempts_before_redelivery = models.PositiveIntegerField(
        default=0, db_default=0, verbose_name=gettext_lazy("attempts before its redelivery")
    )
    next_attempt_at = moment_field(gettext_lazy("next attempt at"))
    give_up_at = models.DateTimeField(
        help_text=gettext_lazy("No attempt is started after this time"),
        verbose_name=gettext_lazy("give up at"),
    )
    claim_token = models.UUIDField(null=True, blank=True, verbose_name=gettext_lazy("claim token"))
    lease_expires_at = moment_field(gettext_lazy("lease expires at"))
    # When a task was last asked to send it (database clock): healing rings again only when nobody
    # answered for a lease's time.
    rung_at = moment_field(gettext_lazy("rung at"))
    created_at = models.DateTimeField(verbose_name=gettext_lazy("created at"))
    finished_at = moment_field(gettext_lazy("finished at"))
    last_status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, verbose_name=gettext_lazy("last status code")
    )
    last_error = models.TextField(blank=True, verbose_name=gettext_lazy("last error"))

    class Meta:
        verbose_name = gettext_lazy("webhook delivery")
        verbose_name_plural = gettext_lazy("webhook deliveries")
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="delivery_one_per_event_endpoint"),
            choices_constraint("status", DeliveryStatus, "delivery_status_valid"),
        ]
        indexes = [
            # Healing and the claim: pending deliveries whose next attempt is due.
            models.Index(fields=["next_attempt_at"], condition=Q(status="pending"), name="delivery_pending"),
            # Healing and the claim: deliveries whose sender's lease ran out.
            models.Index(fields=["lease_expires_at"], condition=Q(status="sending"), name="delivery_sending"),
        ]

    def __str__(self) -> str:
        return f"{self.event.type} to {self.endpoint} ({self.status})"


class Attempt(models.Model):
    """One try at sending a delivery: what came back (a status code, or an error), how long it took,
    and at most the first EXCERPT_CHARS (256) characters of the answer's body."""

    delivery = models.ForeignKey(
        Delivery, on_delete=models.CASCADE, related_name="attempts", verbose_name=gettext_lazy("delivery")
    )
    number = models.PositiveIntegerField(verbose_name=gettext_lazy("number"))
    started_at = models.DateTimeField(verbose_name=gettext_lazy("started at"))
    duration_ms = models.PositiveIntegerField(verbose_name=gettext_lazy("duration (ms)"))
    status_code = models.PositiveSmallIntegerField(
        null=True, blank=True, verbose_name=gettext_lazy("status code")
    )
    error = models.TextField(blank=True, verbose_name=gettext_lazy("error"))
    response_excerpt = models.CharField(
        max_length=EXCERPT_CHARS, blank=True, verbose_name=gettext_lazy("response excerpt")
    )

    class Meta:
        verbose_name = gettext_lazy("delivery attempt")
        verbose_name_plural = gettext_lazy("delivery attempts")
        ordering = ["id"]

    def __str__(self) -> str:
        return f"attempt {self.number} of delivery {self.delivery_id}"

    @property
    def succeeded(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300
