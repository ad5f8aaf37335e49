"""Use cases of webhooks: record an event (called by the other apps, in their transactions), make
an endpoint and renew its secret (the admin), redeliver (the admin). The clusters' side, sending
and healing, is in webhooks.delivery."""

import logging
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q

from eventproject.db import DatabaseNow, database_now
from eventproject.work import ring

from .event_types import event_type_known
from .models import Delivery, Endpoint, Event
from .signing import endpoint_secret, new_salt

logger = logging.getLogger(__name__)
TASK = "webhooks.tasks.deliver"


def event_record(*, type: str, data: dict[str, Any]) -> Event | None:
    """Announce that something happened: one delivery row per active endpoint that wants `type`,
    written in the caller's transaction (the event exists exactly when the change it announces
    committed) and rung once that commits. None when no endpoint wants it.

    Call it inside the transaction that makes the change, after the change.
    """
    if not event_type_known(type):
        raise ValueError(f"unknown webhook event type {type!r}: register it first")
    endpoints = [endpoint for endpoint in Endpoint.objects.filter(active=True) if endpoint.wants(type)]
    if not endpoints:
        return None
    now = database_now()  # the clock every delivery's times are compared with
    event = Event.objects.create(message_id=f"msg_{uuid.uuid4().hex}", type=type, data=data, created_at=now)
    deliveries = Delivery.objects.bulk_create(
        Delivery(
            event=event,
            endpoint=endpoint,
            next_attempt_at=now,
            give_up_at=now + timedelta(seconds=settings.WEBHOOKS_RETRY_SECONDS),
            created_at=now,
            rung_at=now,
        )
        for endpoint in endpoints
    )
    for delivery in deliveries:
        delivery_ring(delivery.id)
    return event


def delivery_ring(delivery_id: int) -> None:
    """Ring the delivery's task once the current transaction commits (eventproject.work)."""
    ring(TASK, delivery_id, group="webhooks", name=f"webhook delivery {delivery_id}")


def endpoint_create(*, name: str, url: str, events: list[str], active: bool = True, created_by=None):
    """Make an endpoint; returns it with its signing secret, which is shown to the person this once
    and never stored (ValidationError, by field, for a bad URL or event list)."""
    endpoint = Endpoint(
        name=name, url=url, events=list(events), active=active, created_by=created_by, secret_salt=new_salt()
    )
    endpoint.full_clean()
    endpoint.save()
    return endpoint, endpoint_secret(endpoint.secret_salt)


def endpoint_secret_renew(endpoint: Endpoint) -> str:
    """Give the endpoint a new signing secret, returned to be shown this once; the old one stops
    verifying at once."""
    salt = new_salt()
    Endpoint.objects.filter(id=endpoint.id).update(secret_salt=salt, secret_renewed_at=DatabaseNow())
    endpoint.refresh_from_db()
    return endpoint_secret(salt)


def delivery_redeliver(delivery: Delivery) -> bool:
    """Send a finished delivery again (same event, same `webhook-id`), with a fresh retry period.
    Returns whether it applied (a delivery still pending or sending is left as it is)."""
    with transaction.atomic():
        applied = Delivery.objects.filter(Q(id=delivery.id) & Q(status__in=Delivery.FINISHED)).update(
            status=Delivery.Status.PENDING,
            next_attempt_at=DatabaseNow(),
            give_up_at=DatabaseNow(settings.WEBHOOKS_RETRY_SECONDS),
            attempts_before_redelivery=F("attempt_count"),  # the backoff starts again from its first step
            finished_at=None,
            rung_at=DatabaseNow(),
        )
        if applied:
            delivery_ring(delivery.id)
    return bool(applied)
