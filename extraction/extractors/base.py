"""What every extractor receives and returns.

An extractor turns a chunk of users' inputs into, per user, a list of events or an error. It
neither loads users nor saves their events: extraction.services.chunk_extract loads them and the
engine's commit saves, so the same extractor serves the clusters, `extract --sync` and the tests.
(The LLM extractor does keep tables of its own, through extraction.llm_client and
extraction.llm_endpoints: the answer cache, the shared rate limit, and what each endpoint and model
accept.)
"""

import hashlib
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any, ClassVar, NamedTuple

import orjson
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _

from eventproject.storable import number_problem, text_problem


class BehaviorRecord(NamedTuple):
    """One behaviour as a tuple (millions are built per job): what an import writes (every field
    but the last, the columns it fills, in order) and what extractors read, with the `id` too."""

    user_id: str
    action: str
    occurred_at: datetime
    item: str = ""
    app: str = ""
    media: str = ""
    place: str = ""
    duration_seconds: float | None = None
    extra: Mapping[str, Any] = MappingProxyType({})
    id: int = 0  # 0 until the database stores it


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
            # each behaviour's id, then its fields but the user's: the hash stays what it always was
            [self.attributes, [[b.id, *b[1:-1]] for b in self.behaviors]],
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
    """One user's extraction failed. Transient errors are retried; permanent ones are not.

    `kind` names the sort of failure without the details that differ from user to user (ids,
    counts), so that a job fails fast on many errors of one kind in a row; it defaults to the message.
    `stopped`: the user was never tried because the chunk stopped (a cancel, the token cap, a lost
    lease, the chunk's deadline); it does not count as an attempt.
    `interrupted`: an outage (the database, the broker or the network away) cut the chunk short;
    not an attempt and not the user's error, but counted apart (see JobItem.interruptions).
    """

    def __init__(
        self,
        message: str,
        *,
        kind: str = "",
        permanent: bool = False,
        stopped: bool = False,
        interrupted: bool = False,
    ):
        super().__init__(message)
        self.message = message
        self.kind = kind or message
        self.permanent = permanent
        self.stopped = stopped
        self.interrupted = interrupted

    @property
    def counts(self) -> bool:
        """Whether this error is about the user: an attempt spent, a step of a fail-fast streak."""
        return not (self.stopped or self.interrupted)


class ExtractorFatalError(Exception):
    """The whole extractor cannot work (bad configuration, rejected credentials): stop the job."""


UserResult = list[EventDraft] | ExtractionError


class Control:
    """What an extraction tells and asks the job it works for; one per chunk.

    This base never stops (the CLI, tests). `usage` maps user ids to the [prompt, completion,
    reasoning] tokens paid for them (answers from a cache are free); reasoning tokens are a part
    of the completion tokens, as providers bill them.
    """

    def __init__(self) -> None:
        self.usage: dict[str, list[int]] = {}
        self.lock = threading.Lock()

    def charge(
        self, user_id: str, prompt_tokens: int, completion_tokens: int, reasoning_tokens: int = 0
    ) -> None:
        with self.lock:
            spent = self.usage.setdefault(user_id, [0, 0, 0])
            spent[0] += prompt_tokens
            spent[1] += completion_tokens
            spent[2] += reasoning_tokens

    def spent(self) -> int:
        """Tokens charged to this chunk so far (not yet committed to the job)."""
        with self.lock:
            return sum(prompt + completion for prompt, completion, _ in self.usage.values())

    def stopped(self) -> bool:
        """True once the chunk must stop (the job was cancelled or failed, the chunk lost its lease or
        reached its deadline): make no more calls."""
        return False

    def seconds_left(self) -> float | None:
        """Time left before the chunk's deadline (None: no deadline); no request may outlast it."""
        return None

    def tokens_used(self) -> int:
        """Tokens the job has spent so far, as committed by all its workers."""
        return 0

    def fail_job(self, message: str) -> None:
        """Stop the whole job with this message (e.g. its token limit was reached)."""
        raise ExtractorFatalError(message)

    def budget_share(self) -> tuple[str, int]:
        """Who spends a provider's budget (its job) and its weight among those sharing it."""
        return "", 1


def _option_value(value: Any, kind: type) -> tuple[Any, str]:
    """The value as an option of this type (a whole number is a float option's too), or why it
    cannot be one."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value), ""
        except OverflowError:  # hundreds of digits: beyond any float, and any limit
            return (math.inf if value > 0 else -math.inf), ""
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        return value, _("must be of type %(type)s") % {"type": kind.__name__}
    return value, ""


def _option_storable(value: Any) -> str:
    """Why a typed option's value cannot be kept in the job's row (NUL, surrogates, a number
    beyond 64 bits or not finite), or ""."""
    if isinstance(value, str):
        return text_problem(value)
    if isinstance(value, int | float):
        return number_problem(value)
    return ""


class Extractor:
    """Base class: subclasses set `name` and `version` and implement `extract`.

    One instance may serve several chunks at once (see `lanes`): keep per-chunk state in locals.
    """

    name: ClassVar[str]
    version: str  # recorded on every event; may depend on configuration (the ruleset)
    # Option name -> (type, default). Unknown or mistyped options are refused.
    options_spec: ClassVar[dict[str, tuple[type, Any]]] = {}
    # Option name -> (lowest, highest) allowed value, for numbers.
    option_limits: ClassVar[dict[str, tuple[float, float]]] = {}
    # Option name -> what it does, in a sentence (the admin's start form shows it under the field).
    option_help: ClassVar[dict[str, Any]] = {}
    # Option name -> the values it may take, for options that are one of a few words.
    option_choices: ClassVar[dict[str, tuple[str, ...]]] = {}

    # Users a job claims at a time when the job does not say (None: JOBS_CHUNK_SIZE).
    default_chunk_size: ClassVar[int | None] = None
    # Chunks a worker extracts at once: more than one for an extractor that waits on the network,
    # so its calls stay in flight while another chunk is loaded, packed or committed.
    lanes: ClassVar[int] = 1
    # Whether it reads users' data. One that does not (a measuring device, such as the engine
    # benchmark's no-op) gets each user's id alone: nothing is loaded for it, and nothing is saved
    # of what it returns (no events, no extraction state); its items still succeed or fail.
    reads_users: ClassVar[bool] = True

    def __init__(self, options: Mapping[str, Any] | None = None):
        self.options = self.clean_options(options or {})

    @classmethod
    def clean_options(cls, options: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(options, Mapping):
            raise ValidationError({"options": _("must be an object")})
        errors = {}
        cleaned = {name: default for name, (_, default) in cls.options_spec.items()}
        for key, value in options.items():
            if key not in cls.options_spec:
                allowed = ", ".join(sorted(cls.options_spec)) or _("none")
                errors[f"options.{key}"] = _(
                    "unknown option for extractor %(name)r (allowed: %(allowed)s)"
                ) % {
                    "name": cls.name,
                    "allowed": allowed,
                }
                continue
            kind = cls.options_spec[key][0]
            value, problem = _option_value(value, kind)
            choices = cls.option_choices.get(key)
            if not problem and choices and value not in choices:
                problem = _("must be one of: %(choices)s") % {
                    "choices": ", ".join(choice or '""' for choice in choices)
                }
            limits = cls.option_limits.get(key)
            if not problem and limits and not limits[0] <= value <= limits[1]:
                problem = _("must be from %(low)s to %(high)s") % {"low": limits[0], "high": limits[1]}
            if problem or (problem := _option_storable(value)):
                errors[f"options.{key}"] = problem
                continue
            cleaned[key] = value
        if errors:
            raise ValidationError(errors)
        return cleaned

    def extract(self, users: Sequence[UserInput], control: Control | None = None) -> dict[str, UserResult]:
        """Return, for every user id in `users`, its events in time order or an error."""
        raise NotImplementedError

    def estimate(self, users: Sequence[UserInput]) -> dict[str, int]:
        """What extracting these users would cost: calls and tokens (nothing for offline extractors);
        reasoning tokens are a part of the completion tokens."""
        return {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0}

    @classmethod
    def service(cls, options: Mapping[str, Any]) -> dict[str, Any] | None:
        """The remote service a job with these options calls, as its progress shows it (None: none)."""
        return None
