"""The clusters' side of webhooks: claim a due delivery with a lease, send it, record the attempt.

delivery_attempt()  one attempt at one delivery (what the task runs); None when it was not due
deliveries_heal()   every cluster's heal loop: rings due deliveries whose bell went unanswered

A claim is one conditional UPDATE (`pending` and due, or `sending` with its lease run out) that
stamps a fresh token and a lease on the database's clock, so two clusters never send the same
attempt at once, and a delivery whose cluster was killed mid-attempt is claimed again once the lease
(the attempt's deadline and a margin) has run out. The outcome is written only while the row still
carries the token; the attempt itself is always logged. A receiver may therefore see an event more
than once (at least once): it drops duplicates by `webhook-id`.

An endpoint gets one attempt at a time (the claim holds its row's lock): a receiver that hangs holds
one worker for WEBHOOKS_TIMEOUT_SECONDS, never every worker the backlog of its deliveries would
take, and jobs go on beside it. The endpoint's other due deliveries wait; each attempt's end rings
the next (healing rings them too).
"""

import json
import logging
import time
import uuid
from datetime import UTC

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, F, OuterRef, Q
from django.utils import timezone

from eventproject.db import DatabaseNow
from eventproject.work import bells_heal, claim, held, lease_expired

from .models import Attempt, Delivery, Endpoint, Event
from .outbound import post
from .services import delivery_ring
from .signing import signed_headers

logger = logging.getLogger(__name__)

LEASE_MARGIN_SECONDS = 5.0  # beyond the attempt's deadline: time to record what happened
HEAL_AT_MOST = 1000  # deliveries rung by one heal


def lease_seconds() -> float:
    return settings.WEBHOOKS_TIMEOUT_SECONDS + LEASE_MARGIN_SECONDS


def retry_backoff_seconds(attempts: int) -> float:
    """WEBHOOKS_RETRY_BACKOFF_SECONDS after the first attempt, doubling after each, never above
    WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS (and no overflow at any count)."""
    base, cap = settings.WEBHOOKS_RETRY_BACKOFF_SECONDS, settings.WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS
    return min(base * 2 ** min(max(attempts - 1, 0), 32), cap)


def _due() -> Q:
    """Pending deliveries whose next attempt is due, and sending ones whose lease ran out."""
    return Q(status=Delivery.Status.PENDING, next_attempt_at__lte=DatabaseNow()) | Q(
        lease_expired(), status=Delivery.Status.SENDING
    )


def _endpoint_idle() -> Q:
    """No attempt to the delivery's endpoint is in flight (sending, with a live lease)."""
    in_flight = Delivery.objects.filter(
        endpoint_id=OuterRef("endpoint_id"),
        status=Delivery.Status.SENDING,
        lease_expires_at__gte=DatabaseNow(),
    )
    return ~Q(Exists(in_flight))


def _claim(delivery_id: int, token: uuid.UUID) -> int | None:
    """The delivery's endpoint id if this claim took it: due, and its endpoint idle. The endpoint's
    row is locked meanwhile, so two workers never both find it idle."""
    with transaction.atomic():
        endpoint = Endpoint.objects.select_for_update(of=("self",)).filter(deliveries=delivery_id).order_by()
        endpoint_id = endpoint.values_list("id", flat=True).first()
        if endpoint_id is None:
            return None
        due = Delivery.objects.filter(Q(id=delivery_id) & _due() & _endpoint_idle())
        sending = {"status": Delivery.Status.SENDING, "attempt_count": F("attempt_count") + 1}
        taken = claim(due, token, lease_seconds(), **sending)
    return endpoint_id if taken else None


def _next_ring(endpoint_id: int) -> None:
    """Ring the endpoint's oldest due delivery: the one that waited for the attempt just ended."""
    due = Delivery.objects.filter(Q(endpoint_id=endpoint_id) & _due()).order_by("id")
    if next_id := due.values_list("id", flat=True).first():
        delivery_ring(next_id)


def event_body(event: Event) -> bytes:
    """The request body, the same bytes on every attempt: Standard Webhooks' envelope."""
    envelope = {
        "type": event.type,
        "timestamp": event.created_at.astimezone(UTC).isoformat().replace("+00:00", "Z"),
        "data": event.data,
    }
    return json.dumps(envelope, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode()


def delivery_attempt(delivery_id: int) -> Attempt | None:
    """Claim the delivery if it is due, send it once, and record the attempt and the outcome:
    succeeded (2xx), pending again after a backoff, or failed once the next try would fall after
    `give_up_at`. None when the delivery was not due (sent already, being sent, backing off) or its
    endpoint has another attempt in flight."""
    token = uuid.uuid4()
    _abandoned_fail(delivery_id)
    endpoint_id = _claim(delivery_id, token)
    if endpoint_id is None:
        return None
    try:
        return _send(delivery_id, token)
    finally:
        _next_ring(endpoint_id)


def _send(delivery_id: int, token: uuid.UUID) -> Attempt | None:
    """The claimed delivery's attempt: sent, logged, and its outcome written while still ours."""
    delivery = Delivery.objects.select_related("event", "endpoint").get(id=delivery_id)
    endpoint, event = delivery.endpoint, delivery.event
    mine = held(Delivery.objects.filter(id=delivery_id, status=Delivery.Status.SENDING), token)
    ended = {"claim_token": None, "lease_expires_at": None}
    if not endpoint.active:
        mine.update(
            **ended,
            status=Delivery.Status.FAILED,
            finished_at=DatabaseNow(),
            next_attempt_at=None,
            attempt_count=F("attempt_count") - 1,  # nothing was sent
            last_error="the endpoint is not active",
        )
        return None
    body = event_body(event)
    started = timezone.now()
    answer = post(
        endpoint.url,
        body,
        signed_headers(endpoint.secret_salt, event.message_id, int(time.time()), body),
        timeout=settings.WEBHOOKS_TIMEOUT_SECONDS,
    )
    result = {**ended, "last_status_code": answer.status_code, "last_error": answer.error[:1000]}
    with transaction.atomic():
        # Locked: an endpoint deleted meanwhile took its deliveries with it; nothing to record then.
        if not Delivery.objects.select_for_update().filter(id=delivery_id).exists():
            return None
        attempt = Attempt.objects.create(
            delivery_id=delivery_id,
            number=delivery.attempt_count,
            started_at=started,
            duration_ms=round(answer.seconds * 1000),
            status_code=answer.status_code,
            error=answer.error[:1000],
            response_excerpt=answer.excerpt,
        )
        if answer.succeeded:
            outcome = Delivery.Status.SUCCEEDED
            mine.update(**result, status=outcome, finished_at=DatabaseNow(), next_attempt_at=None)
        else:
            backoff = retry_backoff_seconds(delivery.attempt_count - delivery.attempts_before_redelivery)
            outcome = Delivery.Status.PENDING
            if not mine.filter(give_up_at__gte=DatabaseNow(backoff)).update(
                **result, status=outcome, next_attempt_at=DatabaseNow(backoff)
            ):
                outcome = Delivery.Status.FAILED
                mine.update(**result, status=outcome, finished_at=DatabaseNow(), next_attempt_at=None)
    logger.info(
        "webhook delivery %s (%s %s to endpoint %r), attempt %s: %s",
        delivery_id,
        event.type,
        event.message_id,
        endpoint.name,
        delivery.attempt_count,
        answer.error or f"HTTP {answer.status_code}",
    )
    return attempt


def _abandoned_fail(delivery_id: int) -> None:
    """A delivery whose sender stopped mid-attempt (its lease ran out) after its retry period is
    failed, not sent again: an attempt that kills its process every time ends like any other."""
    Delivery.objects.filter(
        lease_expired(), id=delivery_id, status=Delivery.Status.SENDING, give_up_at__lt=DatabaseNow()
    ).update(
        status=Delivery.Status.FAILED,
        claim_token=None,
        lease_expires_at=None,
        finished_at=DatabaseNow(),
        next_attempt_at=None,
        last_error="its last attempt never finished (the sender stopped) and its retry period is over",
    )


def deliveries_heal() -> list[str]:
    """Ring every due delivery nobody is sending: pending ones whose next attempt has come, and
    sending ones whose sender died (lease run out), unless rung within a lease's time (the task may
    be waiting in the queue) or their endpoint has an attempt in flight (its end rings the next).
    Run by every cluster with the jobs' healing; one cluster rings each."""
    return bells_heal(
        Delivery,
        _due() & _endpoint_idle(),
        quiet_seconds=lease_seconds(),
        ring_one=delivery_ring,
        label="webhook delivery",
        at_most=HEAL_AT_MOST,
    )
