"""What every extractor receives and returns.

An extractor turns a chunk of users' inputs into, per user, a list of events or
an error. It never touches the database: loading and saving belong to the
callers, so the same extractor serves the job engine, the CLI and the tests.
"""

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import orjson
from django.core.exceptions import ValidationError


class BehaviorRecord(NamedTuple):
    """One behaviour as extractors see it (a tuple: millions are built per job)."""

    id: int
    action: str
    occurred_at: datetime
    item: str = ""
    app: str = ""
    media: str = ""
    place: str = ""
    duration_seconds: float | None = None
    extra: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class UserInput:
    """Everything an extractor may look at for one user, behaviours in time order."""

    user_id: str
    attributes: Mapping[str, Any]
    input_version: int
    behaviors: Sequence[BehaviorRecord]

    def fingerprint(self) -> str:
        """A hash of the input, stored with the events it produced."""
        payload = orjson.dumps(
            [
                self.attributes,
                [
                    [
                        b.id,
                        b.action,
                        b.occurred_at,
                        b.item,
                        b.app,
                        b.media,
                        b.place,
                        b.duration_seconds,
                        b.extra,
                    ]
                    for b in self.behaviors
                ],
            ],
            option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
            default=str,
        )
        return hashlib.sha256(payload).hexdigest()


@dataclass(slots=True)
class EventDraft:
    """An event before it is saved; times come from its source behaviours."""

    event_type: str
    category: str
    label: str
    starts_at: datetime
    ends_at: datetime
    behavior_ids: list[int]
    context: dict[str, Any] = field(default_factory=dict)


class ExtractionError(Exception):
    """One user's extraction failed. Transient errors are retried; permanent ones are not."""

    def __init__(self, message: str, *, permanent: bool = False):
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class ExtractorFatalError(Exception):
    """The whole extractor cannot work (bad configuration, rejected credentials): stop the job."""


UserResult = list[EventDraft] | ExtractionError


class Extractor:
    """Base class: subclasses set `name` and `version` and implement `extract`."""

    name: ClassVar[str]
    version: str  # recorded on every event; may depend on configuration (the ruleset)
    # Option name -> (type, default). Unknown or mistyped options are refused.
    options_spec: ClassVar[dict[str, tuple[type, Any]]] = {}

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = self.clean_options(options or {})

    @classmethod
    def clean_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(options, Mapping):
            raise ValidationError({"options": "must be an object"})
        errors = {}
        cleaned = {name: default for name, (_, default) in cls.options_spec.items()}
        for key, value in options.items():
            if key not in cls.options_spec:
                allowed = ", ".join(sorted(cls.options_spec)) or "none"
                errors[f"options.{key}"] = f"unknown option for extractor {cls.name!r} (allowed: {allowed})"
                continue
            kind = cls.options_spec[key][0]
            ok = isinstance(value, kind) and not (kind is not bool and isinstance(value, bool))
            if kind is float and isinstance(value, int) and not isinstance(value, bool):
                value, ok = float(value), True
            if not ok:
                errors[f"options.{key}"] = f"must be of type {kind.__name__}"
                continue
            cleaned[key] = value
        if errors:
            raise ValidationError(errors)
        return cleaned

    def extract(self, users: Sequence[UserInput]) -> dict[str, UserResult]:
        """Return, for every user id in `users`, its events in time order or an error."""
        raise NotImplementedError
