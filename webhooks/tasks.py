"""django-q2 entry points. A task carries only a delivery id: the row is the truth."""

from . import delivery


def deliver(delivery_id: int) -> None:
    delivery.delivery_attempt(delivery_id)
