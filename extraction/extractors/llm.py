"""The LLM extractor: users' behaviours go to an OpenAI-compatible chat model, events come back.

A chunk of users is cut into parts (a user, or a segment of a user too large for one call),
packed into calls under a token budget, and sent with at most `max_concurrency` calls in
flight. Each reply is validated user by user: a valid user is kept, an invalid one is asked
again; a call that fails as a whole is split in halves and retried, so one bad user cannot sink
the others. Start and end times come from the referenced behaviours, never from the model.
"""

import heapq
import itertools
import json
import logging
import math
import re
import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache
from pathlib import Path
from string import Template
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..llm_client import (
    Completion,
    LLMCallError,
    LLMClient,
    LLMConfigError,
    LLMStopped,
    endpoint,
    estimate_tokens,
    without_thinking,
)
from ..llm_endpoints import AUTO, RESPONSE_FORMATS, endpoint_state, reasoning_share
from ..models import Category
from .base import Control, EventDraft, ExtractionError, Extractor, ExtractorFatalError, UserInput, UserResult
from .rules import active_ruleset

logger = logging.getLogger(__name__)

DEFAULT_PROMPT_FILE = Path(__file__).with_name("llm_prompt.txt")
USERS_MARKER = "USERS (JSON; behaviours are [id, time, action, item, app, media, place, duration_seconds]):"
# Expected answer size per behaviour, to keep a call's reply under max_completion_tokens.
COMPLETION_TOKENS_PER_BEHAVIOR = 15
PART_TRIES = 3  # how often one user (or segment) is asked before it fails for this attempt
MODEL_NAME_MAX_LENGTH = 200  # recorded in each event's extractor version ("1+" and the name)
UNUSABLE = "the model's answer was unusable"
FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)
# The event's context in a strict JSON schema (which admits no free-form object): the details the
# prompt asks for, each null when it does not apply (nulls are dropped, as from any answer).
CONTEXT_KEYS = {
    "model": "string",
    "keyword": "string",
    "place": "string",
    "app": "string",
    "count": "integer",
}


@cache
def prompt_template() -> Template:
    path = settings.EXTRACTION_LLM_PROMPT_FILE or DEFAULT_PROMPT_FILE
    return Template(Path(path).read_text(encoding="utf-8"))


def system_prompt() -> str:
    types = "\n".join(f"- {t.name} ({t.label}, {t.category})" for t in active_ruleset().event_types.values())
    return prompt_template().safe_substitute(event_types=types)


@dataclass(eq=False)
class Part:
    """One user's behaviours (or a segment of them) sent in one call."""

    user: UserInput
    segment: int
    behaviors: Sequence
    block: dict
    tokens: int
    tries: int = 0

    @property
    def expected_completion(self) -> int:
        return COMPLETION_TOKENS_PER_BEHAVIOR * len(self.behaviors)


class Slots:
    """At most `size` calls out at once in one worker, shared by its lanes. A freed slot goes to
    the oldest chunk's next call: that chunk finishes early and its lane loads the next one while
    the other lane's calls keep every slot busy. (Shared fairly, the lanes finished their chunks
    together and left all slots idle while both loaded.)"""

    def __init__(self, size: int):
        self.free = size
        self.changed = threading.Condition()
        self.waiting: list[tuple[int, int]] = []  # a heap of (chunk rank, ticket)
        self.tickets = itertools.count()
        self.ranks = itertools.count()

    def for_chunk(self) -> "ChunkSlot":
        return ChunkSlot(self, next(self.ranks))

    def acquire(self, rank: int) -> None:
        with self.changed:
            entry = (rank, next(self.tickets))
            heapq.heappush(self.waiting, entry)
            self.changed.wait_for(lambda: self.free and self.waiting[0] == entry)
            heapq.heappop(self.waiting)
            self.free -= 1
            self.changed.notify_all()  # the next in line may take another free slot

    def release(self) -> None:
        with self.changed:
            self.free += 1
            self.changed.notify_all()


@dataclass
class ChunkSlot:
    """A slot for one chunk's calls, held while a request is out (reusable: one per retry)."""

    slots: Slots
    rank: int

    def __enter__(self) -> None:
        self.slots.acquire(self.rank)

    def __exit__(self, *exc) -> None:
        self.slots.release()


@dataclass
class CallOutcome:
    parts: list[Part]
    events: dict[int, list[EventDraft]] = field(default_factory=dict)  # by id(part)
    invalid: dict[int, str] = field(default_factory=dict)
    failure: str = ""  # the whole call failed
    failure_kind: str = UNUSABLE  # what sort of failure (fail-fast counts these, not the messages)
    stopped: str = ""  # the call was not made: why
    extra: list[str] = field(default_factory=list)  # users answered without being asked
    completion: Completion | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0  # of the completion tokens


class LLMExtractor(Extractor):
    name = "llm"
    version = "1"
    default_chunk_size = 200  # enough calls per chunk to keep every slot of concurrency busy
    lanes = 2  # two chunks at once: one's calls fill the slots while the other is loaded or committed
    options_spec = {
        "model": (str, ""),
        "temperature": (float, 0.0),
        "max_concurrency": (int, 8),
        "token_budget": (int, 12_000),
        "max_completion_tokens": (int, 8_000),
        "timeout": (float, 120.0),
        "max_total_tokens": (int, 0),
        # Event types the ruleset does not name are refused unless the job allows them.
        "allow_new_event_types": (bool, False),
        # How answers are asked for; empty: EXTRACTION_LLM_RESPONSE_FORMAT (the job keeps it).
        "response_format": (str, ""),
    }
    option_choices = {"response_format": ("", AUTO, *RESPONSE_FORMATS)}

    option_help = {
        "model": gettext_lazy("The model's name at the endpoint; empty: EXTRACTION_LLM_MODEL."),
        "temperature": gettext_lazy("0 answers the same way each time; up to 2."),
        "max_concurrency": gettext_lazy("Calls in flight at once per worker."),
        "token_budget": gettext_lazy("Prompt tokens per call, at most."),
        "max_completion_tokens": gettext_lazy("Tokens an answer may take, at most."),
        "timeout": gettext_lazy("Seconds a call may take."),
        "max_total_tokens": gettext_lazy("The job fails when it has spent this many tokens (0: no cap)."),
        "allow_new_event_types": gettext_lazy("Keep event types the ruleset does not name."),
        "response_format": gettext_lazy(
            "auto: the answer's JSON schema where the endpoint takes one, else JSON mode, else plain "
            "text (learned); or one of them. Empty: EXTRACTION_LLM_RESPONSE_FORMAT."
        ),
    }
    option_limits = {
        "max_concurrency": (1, 64),
        "token_budget": (1_000, 1_000_000),
        "max_completion_tokens": (100, 200_000),
        "timeout": (1, 3_600),
        "max_total_tokens": (0, 10**12),
        "temperature": (0, 2),
    }

    @classmethod
    def clean_options(cls, options):
        cleaned = super().clean_options(options)
        # The job keeps the model and the response format it used.
        cleaned["model"] = cleaned["model"] or settings.EXTRACTION_LLM_MODEL
        cleaned["response_format"] = cleaned["response_format"] or settings.EXTRACTION_LLM_RESPONSE_FORMAT
        errors = {}
        if len(cleaned["model"]) > MODEL_NAME_MAX_LENGTH:
            errors["options.model"] = _("must be at most %(limit)s characters") % {
                "limit": MODEL_NAME_MAX_LENGTH
            }
        room = settings.JOBS_CHUNK_SECONDS_AT_LEAST
        if cleaned["timeout"] > room:
            # A request is cut at its chunk's deadline: one that may need longer would never finish.
            errors["options.timeout"] = _(
                "a call may take up to %(timeout)s s, but a chunk is sure of only %(room)s s before the "
                "task timeout (Q_TIMEOUT %(q_timeout)s s − a drain's %(budget)s s budget − %(reserve)s s "
                "kept to commit); use a timeout of at most %(room)s s, or raise Q_TIMEOUT"
            ) % {
                "timeout": f"{cleaned['timeout']:g}",
                "room": room,
                "q_timeout": settings.Q_TIMEOUT,
                "budget": settings.JOBS_DRAIN_BUDGET_SECONDS,
                "reserve": settings.JOBS_COMMIT_RESERVE_SECONDS,
            }
        if errors:
            raise ValidationError(errors)
        return cleaned

    def __init__(self, options=None):
        super().__init__(options)
        self.slots = Slots(self.options["max_concurrency"])
        self.version = f"1+{self.options['model']}"
        self.system = system_prompt()
        self.system_tokens = estimate_tokens(self.system) + estimate_tokens(USERS_MARKER) + 50

    # Packing ---------------------------------------------------------------------------------------
    def parts_of(self, user: UserInput) -> list[Part]:
        """The user as one part, or in segments when it does not fit one call."""
        profile = "; ".join(
            f"{k}={v}" for k, v in sorted(user.attributes.items()) if v not in (None, "", [])
        )[:500]
        rows = [
            [
                b.id,
                b.occurred_at.strftime("%Y-%m-%d %H:%M:%S"),
                b.action,
                b.item,
                b.app,
                b.media,
                b.place,
                b.duration_seconds,
            ]
            for b in user.behaviors
        ]
        room = self.options["token_budget"] - self.system_tokens
        completion_room = self.options["max_completion_tokens"]
        base = estimate_tokens(
            json.dumps({user.user_id: {"profile": profile, "behaviors": []}}, ensure_ascii=False)
        )
        parts, start, tokens = [], 0, base
        for index, row in enumerate(rows):
            row_tokens = estimate_tokens(json.dumps(row, ensure_ascii=False)) + 1
            if index > start and (
                tokens + row_tokens > room
                or (index - start + 1) * COMPLETION_TOKENS_PER_BEHAVIOR > completion_room
            ):
                parts.append(self._part(user, len(parts), start, index, profile, rows, tokens))
                start, tokens = index, base
            tokens += row_tokens
        parts.append(self._part(user, len(parts), start, len(rows), profile, rows, tokens))
        return parts

    @staticmethod
    def _part(user, segment, start, end, profile, rows, tokens) -> Part:
        block = {"profile": profile, "behaviors": rows[start:end]}
        return Part(user, segment, user.behaviors[start:end], block, tokens)

    def pack(self, parts: list[Part]) -> list[list[Part]]:
        """First-fit decreasing under both budgets (prompt and expected reply); a call never holds
        two segments of one user."""
        room = self.options["token_budget"] - self.system_tokens
        completion_room = self.options["max_completion_tokens"]
        calls: list[list[Part]] = []
        loads: list[list[int]] = []
        for part in sorted(parts, key=lambda p: p.tokens, reverse=True):
            for call, load in zip(calls, loads, strict=True):
                if (
                    load[0] + part.tokens <= room
                    and load[1] + part.expected_completion <= completion_room
                    and all(other.user is not part.user for other in call)
                ):
                    call.append(part)
                    load[0] += part.tokens
                    load[1] += part.expected_completion
                    break
            else:
                calls.append([part])
                loads.append([part.tokens, part.expected_completion])
        return calls

    def estimate(self, users: Sequence[UserInput]) -> dict[str, int]:
        """Calls and tokens; the reasoning tokens (a part of the completion tokens) in the share this
        endpoint and model have reasoned so far."""
        parts = [part for user in users if user.behaviors for part in self.parts_of(user)]
        calls = self.pack(parts)
        answers = sum(part.expected_completion for part in parts)
        reasoning = round(answers * reasoning_share(endpoint().shown, self.options["model"])) if parts else 0
        return {
            "calls": len(calls),
            "prompt_tokens": sum(part.tokens for part in parts) + len(calls) * self.system_tokens,
            "completion_tokens": answers + reasoning,
            "reasoning_tokens": reasoning,
        }

    @classmethod
    def service(cls, options) -> dict[str, Any]:
        """The endpoint and model, the format answers are asked in and what was adapted to them."""
        model = options.get("model") or settings.EXTRACTION_LLM_MODEL
        response_format = options.get("response_format") or settings.EXTRACTION_LLM_RESPONSE_FORMAT
        return endpoint_state(endpoint().shown, model, response_format)

    # Extraction ------------------------------------------------------------------------------------
    def extract(self, users: Sequence[UserInput], control: Control | None = None) -> dict[str, UserResult]:
        control = control or Control()
        slot = self.slots.for_chunk()
        results: dict[str, UserResult] = {user.user_id: [] for user in users if not user.behaviors}
        parts = [part for user in users if user.behaviors for part in self.parts_of(user)]
        done: dict[int, list[EventDraft] | ExtractionError] = {}
        client = (
            LLMClient(
                model=self.options["model"],
                temperature=self.options["temperature"],
                timeout=self.options["timeout"],
                max_completion_tokens=self.options["max_completion_tokens"],
                response_format=self.options["response_format"],
            )
            if parts
            else None
        )
        # Every call is queued at once; each waits in its thread for a slot of this worker's
        # max_concurrency (shared with its other lanes, oldest chunk first), so a freed slot is taken at once.
        threads = 2 * self.options["max_concurrency"]
        with ThreadPoolExecutor(threads, thread_name_prefix="llm") as pool:
            pending: set = set()

            def start(call: list[Part]) -> None:
                """Answer from the cache here, or send from a pool thread."""
                messages, schema = self._messages(call), self._schema(call)
                if hit := client.cached(messages, schema):
                    finish(self._read(call, hit))
                else:
                    pending.add(pool.submit(self._call, client, call, messages, schema, control, slot))

            def finish(outcome: CallOutcome) -> None:
                self._charge(outcome, control)
                if outcome.completion and not outcome.invalid and not outcome.extra:
                    client.remember(outcome.completion)  # (an answer from the cache is not stored again)
                for again in self._settle(outcome, done):
                    start(again)

            try:
                for call in self.pack(parts):
                    start(call)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        finish(future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            finally:
                if client:
                    client.flush()
                # A thread may have opened a database connection (the provider's budget, the job's status).
                barrier = threading.Barrier(threads)
                for _ in range(threads):
                    pool.submit(_close_connection, barrier)
        for user in users:
            if user.user_id in results:
                continue
            outcomes = [done.get(id(part)) for part in parts if part.user is user]
            errors = [o for o in outcomes if isinstance(o, ExtractionError) or o is None]
            if errors:
                results[user.user_id] = errors[0] or ExtractionError("not processed")
            else:
                results[user.user_id] = sorted(
                    (e for events in outcomes for e in events), key=lambda e: (e.starts_at, e.behavior_ids[0])
                )
        return results

    def _must_stop(self, control: Control) -> str:
        """Why no more calls may be made for this job, if there is a reason (checked before each call)."""
        if control.stopped():
            return "the chunk stopped (job stopped, lease lost or deadline reached) before this user was sent"
        limit = self.options["max_total_tokens"]
        if limit and (used := control.tokens_used() + control.spent()) >= limit:
            control.fail_job(
                f"token limit reached: {used:,} of {limit:,} tokens spent (options.max_total_tokens); "
                f"resume the job with a higher max_total_tokens to go on"
            )
            return "the job's token limit was reached before this user was sent"
        return ""

    def _settle(self, outcome: CallOutcome, done: dict) -> list[list[Part]]:
        """Record what the call settled; return the calls to make again."""
        if outcome.stopped:
            for part in outcome.parts:
                done[id(part)] = ExtractionError(outcome.stopped, stopped=True)
            return []
        if outcome.failure:
            if len(outcome.parts) > 1:
                half = len(outcome.parts) // 2
                return [outcome.parts[:half], outcome.parts[half:]]
            retry = self._tried(outcome.parts, outcome.failure, done, kind=outcome.failure_kind)
            return [retry] if retry else []
        again = []
        for part in outcome.parts:
            if id(part) in outcome.events:
                done[id(part)] = outcome.events[id(part)]
            else:
                again.append(part)
        # Each invalid user is asked again on its own, so it cannot spoil another answer.
        return [[part] for part in self._tried(again, None, done, reasons=outcome.invalid)]

    @staticmethod
    def _tried(
        parts: list[Part], reason: str | None, done: dict, reasons: dict | None = None, kind: str = UNUSABLE
    ) -> list[Part]:
        """Count a try for each part; those with tries left come back, the others fail."""
        retry = []
        for part in parts:
            part.tries += 1
            if part.tries >= PART_TRIES:
                message = reason or (reasons or {}).get(id(part), "invalid answer")
                done[id(part)] = ExtractionError(
                    f"the model's answer for this user was unusable: {message}"
                    if kind == UNUSABLE
                    else message,
                    kind=kind,
                )
            else:
                retry.append(part)
        return retry

    def _charge(self, outcome: CallOutcome, control: Control) -> None:
        """Share the call's tokens among its users in proportion to their part of the prompt."""
        if not (outcome.prompt_tokens or outcome.completion_tokens):
            return  # answered from the cache, or never answered
        total = sum(part.tokens for part in outcome.parts) or 1
        for part in outcome.parts:
            share = part.tokens / total
            control.charge(
                part.user.user_id,
                round(outcome.prompt_tokens * share),
                round(outcome.completion_tokens * share),
                round(outcome.reasoning_tokens * share),
            )

    def _messages(self, parts: list[Part]) -> list[dict]:
        users = {part.user.user_id: part.block for part in parts}
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": f"{USERS_MARKER}\n{orjson.dumps(users).decode()}"},
        ]

    def _schema(self, parts: list[Part]) -> dict:
        """The answer's JSON schema for this call, for endpoints that take one: strict (every
        object closed, every property required, what does not apply null), naming exactly the
        call's users. Answers are validated the same way whatever the endpoint was asked."""
        types = list(active_ruleset().event_types)
        event_type = (
            {"type": "string"} if self.options["allow_new_event_types"] else {"type": "string", "enum": types}
        )
        nullable = {name: {"type": [kind, "null"]} for name, kind in CONTEXT_KEYS.items()}
        event = {
            "type": "object",
            "properties": {
                "event_type": event_type,
                "label": {"type": ["string", "null"]},
                "category": {"type": "string", "enum": list(Category.values)},
                "behavior_ids": {"type": "array", "items": {"type": "integer"}},
                "context": _closed(nullable),
            },
            "required": ["event_type", "label", "category", "behavior_ids", "context"],
            "additionalProperties": False,
        }
        users = {part.user.user_id: {"type": "array", "items": {"$ref": "#/$defs/event"}} for part in parts}
        schema = _closed({"users": _closed(users)})
        return {"name": "user_events", "strict": True, "schema": {**schema, "$defs": {"event": event}}}

    def _call(
        self,
        client: LLMClient,
        parts: list[Part],
        messages: list[dict],
        schema: dict,
        control: Control,
        slot: ChunkSlot,
    ) -> CallOutcome:
        """One request, in a pool thread: not sent at all once the job stopped (checked right before
        it goes out); holds a slot of this worker's max_concurrency only while it is out."""
        try:
            completion = client.complete(
                messages,
                schema=schema,
                should_stop=lambda: self._must_stop(control),
                seconds_left=control.seconds_left,
                slot=slot,
                share=control.budget_share,
            )
        except LLMStopped as exc:
            return CallOutcome(parts, stopped=str(exc))
        except LLMConfigError as exc:
            raise ExtractorFatalError(str(exc)) from exc
        except LLMCallError as exc:
            return CallOutcome(parts, failure=str(exc), failure_kind=exc.kind)
        return self._read(parts, completion)

    def _read(self, parts: list[Part], completion: Completion) -> CallOutcome:
        """Parse an answer and validate each user's part of it."""
        outcome = CallOutcome(parts, completion=completion)
        if not completion.cached:
            outcome.prompt_tokens = completion.prompt_tokens
            outcome.completion_tokens = completion.completion_tokens
            outcome.reasoning_tokens = completion.reasoning_tokens
        try:
            answer = parse_answer(completion.content)
        except ValueError as exc:
            outcome.failure = str(exc)
            return outcome
        except Exception as exc:  # a hostile answer fails this call only: its users are asked again
            logger.warning("an answer could not be parsed", exc_info=True)
            outcome.failure = f"the reply could not be read ({type(exc).__name__})"
            return outcome
        for part in parts:
            try:
                outcome.events[id(part)] = events_from(
                    answer.get(part.user.user_id),
                    part,
                    allow_new_types=self.options["allow_new_event_types"],
                )
            except ValueError as exc:
                outcome.invalid[id(part)] = str(exc)
            except Exception as exc:  # whatever a hostile answer does, it stays with this user
                logger.warning("the answer for one user could not be validated", exc_info=True)
                outcome.invalid[id(part)] = f"the user's events could not be read ({type(exc).__name__})"
        outcome.extra = sorted(set(answer) - {part.user.user_id for part in parts})
        if outcome.extra:
            logger.warning("the model answered for %d users it was not given", len(outcome.extra))
        return outcome


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema object with exactly these properties, all required."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }


def _close_connection(barrier: threading.Barrier) -> None:
    """Run once in every thread of the pool (the barrier keeps a thread from taking two)."""
    try:
        barrier.wait(timeout=60)
    finally:
        connection.close()


def parse_answer(content: str) -> dict[str, Any]:
    """The {"users": {...}} object of a reply, after <think> blocks and inside code fences; in time
    linear in the reply's size, whatever it holds. ValueError says what is wrong with it.

    Errors never quote the reply: it is the provider's text, and may carry the prompt's data.
    """
    text = without_thinking(content).strip()
    if fenced := FENCE.search(text):
        text = fenced.group(1).strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end < start:
        raise ValueError(f"the reply holds no JSON object ({len(content)} characters of text)")
    try:
        data = json.loads(text[start : end + 1])
    except json.JSONDecodeError as exc:
        raise ValueError(f"the reply's JSON is malformed ({exc.msg} at character {exc.pos})") from None
    except RecursionError:
        raise ValueError("the reply's JSON is nested too deeply") from None
    except ValueError:  # e.g. an integer of more digits than Python converts (4,300)
        raise ValueError("the reply's JSON holds a number too long to read") from None
    users = data.get("users") if isinstance(data, dict) else None
    if not isinstance(users, dict):
        raise ValueError('the reply has no "users" object')
    return users


# Control and format characters (bidi overrides, zero-width joiners…) have no place in a label or
# a context value a person reads; runs of whitespace become one space.
INVISIBLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2060-\u206f\ufeff]+")
SPACES = re.compile(r"\s+")
CONTEXT_LIST_ITEMS = 20
CONTEXT_KEY_CHARS = 64


def clean_text(text: str, limit: int) -> str:
    """Visible text only, whitespace collapsed, at most `limit` characters."""
    return SPACES.sub(" ", INVISIBLE.sub(" ", text)).strip()[:limit]


def clean_context(context: Any) -> dict[str, Any]:
    """The model's context, bounded: at most EXTRACTION_LLM_CONTEXT_MAX_KEYS keys of scalars (or
    short lists of them), strings cleaned and capped, nothing nested, and at most
    EXTRACTION_LLM_CONTEXT_MAX_BYTES as JSON (keys past that are dropped)."""
    if not isinstance(context, dict):
        return {}
    value_chars = settings.EXTRACTION_LLM_CONTEXT_VALUE_MAX_CHARS

    def scalar(value: Any) -> Any:
        if isinstance(value, str):
            return clean_text(value, value_chars)
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            return value if -(2**63) <= value < 2**63 else None
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        return None  # objects: nothing nested is kept

    cleaned: dict[str, Any] = {}
    size = 2  # {}
    for key, value in context.items():
        if len(cleaned) >= settings.EXTRACTION_LLM_CONTEXT_MAX_KEYS:
            break
        name = clean_text(str(key), CONTEXT_KEY_CHARS)
        if not name or name in cleaned:
            continue
        if isinstance(value, list):
            value = [item for item in map(scalar, value[:CONTEXT_LIST_ITEMS]) if item is not None]
        else:
            value = scalar(value)
        if value is None:
            continue
        entry = len(orjson.dumps({name: value})) - 1  # "key":value,
        if size + entry > settings.EXTRACTION_LLM_CONTEXT_MAX_BYTES:
            continue
        cleaned[name] = value
        size += entry
    return cleaned


def events_from(answer: Any, part: Part, *, allow_new_types: bool = False) -> list[EventDraft]:
    """Validated events of one user's part; ValueError says what is wrong with it.

    The answer is untrusted: several users share a prompt, so one user's behaviour text can steer
    what the model says about another. An event's type must be in the ruleset (unless the job
    allows new ones), a known type keeps its ruleset category and label, a conversion must cite a
    behaviour whose action supports it, and every behaviour must be this user's. Messages never
    quote the model.
    """
    if answer is None:
        raise ValueError("the user is missing from the reply")
    if not isinstance(answer, list) or not answer:
        raise ValueError("the user's events are not a non-empty list")
    behaviors = {b.id: b for b in part.behaviors}
    ruleset = active_ruleset()
    events = []
    for position, item in enumerate(answer):
        where = f"event {position}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} is not an object")
        event_type = item.get("event_type")
        if not isinstance(event_type, str) or not re.fullmatch(r"[a-z][a-z0-9_]{0,63}", event_type):
            raise ValueError(f"{where}: the event type is not a snake_case name")
        known = ruleset.event_types.get(event_type)
        if known is None and not allow_new_types:
            raise ValueError(
                f"{where}: event type {event_type!r} is not in the ruleset (options.allow_new_event_types)"
            )
        category = item.get("category")
        if category not in Category.values:
            raise ValueError(f"{where}: the category is neither conversion nor engagement")
        if known and category != known.category:
            raise ValueError(f"{where}: {event_type} is {known.category} in the ruleset, not {category}")
        ids = item.get("behavior_ids")
        if (
            not isinstance(ids, list)
            or not ids
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids)
        ):
            raise ValueError(f"{where}: behavior_ids must be a non-empty list of ids")
        foreign = [i for i in ids if i not in behaviors]
        if foreign:
            raise ValueError(f"{where}: behaviour ids {foreign[:5]} are not this user's")  # integers only
        sources = [behaviors[i] for i in sorted(set(ids))]
        if category == Category.CONVERSION and not any(
            ruleset.action_supports(b.action, event_type) for b in sources
        ):
            raise ValueError(f"{where}: a {event_type} conversion cites no behaviour whose action fits it")
        if known:
            label = known.label
        else:
            label = item.get("label")
            limit = settings.EXTRACTION_LLM_LABEL_MAX_CHARS
            label = (isinstance(label, str) and clean_text(label, limit)) or event_type[:limit]
        events.append(
            EventDraft(
                event_type=event_type,
                category=category,
                label=label,
                starts_at=min(b.occurred_at for b in sources),
                ends_at=max(b.occurred_at + timedelta(seconds=b.duration_seconds or 0) for b in sources),
                behavior_ids=[b.id for b in sources],
                context=clean_context(item.get("context")),
            )
        )
    return events


def calls_lower_bound(extractor: LLMExtractor, users: Sequence[UserInput]) -> int:
    """The fewest calls the budgets allow for these users (for the benchmark)."""
    parts = [part for user in users if user.behaviors for part in extractor.parts_of(user)]
    room = extractor.options["token_budget"] - extractor.system_tokens
    return max(
        math.ceil(sum(p.tokens for p in parts) / room),
        math.ceil(sum(p.expected_completion for p in parts) / extractor.options["max_completion_tokens"]),
    )
