"""What the LLM extractor asks: the system prompt (llm_prompt.txt, or EXTRACTION_LLM_PROMPT_FILE,
with the ruleset's event types filled in), the users' message, and the JSON schema the answer is
asked to follow where the endpoint takes one."""

from functools import cache
from pathlib import Path
from string import Template
from typing import Any

import orjson
from django.conf import settings

from ..models import Category
from .llm_packing import Part
from .rules import active_ruleset

DEFAULT_PROMPT_FILE = Path(__file__).with_name("llm_prompt.txt")
USERS_MARKER = "USERS (JSON; behaviours are [id, time, action, item, app, media, place, duration_seconds]):"
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


def messages(system: str, parts: list[Part]) -> list[dict]:
    users = {part.user.user_id: part.block for part in parts}
    return [
        {"role": "system", "content": system},
        {"role": "user", "content": f"{USERS_MARKER}\n{orjson.dumps(users).decode()}"},
    ]


def answer_schema(parts: list[Part], *, allow_new_types: bool) -> dict:
    """The answer's JSON schema for this call, for endpoints that take one: strict (every
    object closed, every property required, what does not apply null), naming exactly the
    call's users. Answers are validated the same way whatever the endpoint was asked."""
    types = list(active_ruleset().event_types)
    event_type = {"type": "string"} if allow_new_types else {"type": "string", "enum": types}
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


def _closed(properties: dict[str, Any]) -> dict[str, Any]:
    """A JSON schema object with exactly these properties, all required."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties),
        "additionalProperties": False,
    }
