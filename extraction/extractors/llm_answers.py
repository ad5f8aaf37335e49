"""The LLM's answers, untrusted: read (after <think> blocks, inside code fences, in time linear in
their size), then validated user by user, each user's events checked against the ruleset and its
own behaviours, with bounded labels and context. What one answer holds costs that call or that
user, never the others."""

import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson
from django.conf import settings

from ..llm_client import Completion
from ..llm_tokens import without_thinking
from ..models import Category
from .base import EventDraft
from .llm_packing import Part
from .rules import active_ruleset

logger = logging.getLogger(__name__)

UNUSABLE = "the model's answer was unusable"
FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class CallOutcome:
    """What came of one call: each part's events or why they were invalid, or why the whole call
    failed or was never made, and the tokens it cost."""

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


def call_read(parts: list[Part], completion: Completion, *, allow_new_types: bool) -> CallOutcome:
    """Parse a call's answer and validate each user's part of it."""
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
                allow_new_types=allow_new_types,
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
            given = item.get("label")
            limit = settings.EXTRACTION_LLM_LABEL_MAX_CHARS
            label = (isinstance(given, str) and clean_text(given, limit)) or event_type[:limit]
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
