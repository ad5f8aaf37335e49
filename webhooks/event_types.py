"""The kinds of event a webhook can announce.

This app knows nothing of jobs or imports: the apps that have something to announce register
their event types when they are ready (`AppConfig.ready`), and record events through
`webhooks.services.event_record`. An endpoint subscribes to some of these names.
"""

from dataclasses import dataclass

from django.utils.functional import Promise


@dataclass(frozen=True)
class EventType:
    name: str  # as receivers see it in the body's "type", e.g. "job.completed"
    label: str | Promise  # what the admin shows beside it


_REGISTERED: dict[str, EventType] = {}


def event_type_register(name: str, label: str | Promise) -> None:
    _REGISTERED[name] = EventType(name, label)


def event_types() -> list[EventType]:
    return sorted(_REGISTERED.values(), key=lambda kind: kind.name)


def event_type_known(name: str) -> bool:
    return name in _REGISTERED
