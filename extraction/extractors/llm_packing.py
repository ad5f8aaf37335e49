"""The LLM extractor's packing: each user cut into parts (the whole user, or segments of one too
large for a call), and the parts packed into calls under two budgets, the prompt's tokens and the
reply's."""

from collections.abc import Sequence
from dataclasses import dataclass

import orjson

from ..llm_tokens import estimate_tokens
from .base import UserInput

# Expected answer size per behaviour, to keep a call's reply under max_completion_tokens.
COMPLETION_TOKENS_PER_BEHAVIOR = 15


@dataclass(frozen=True)
class Budget:
    """What one call may hold: `prompt` tokens of users (the token budget less the system prompt)
    and an expected reply of at most `completion` tokens."""

    prompt: int
    completion: int


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


def user_parts(user: UserInput, budget: Budget) -> list[Part]:
    """The user as one part, or in segments when it does not fit one call."""
    attributes = sorted(user.attributes.items())
    profile = "; ".join(f"{k}={v}" for k, v in attributes if v not in (None, "", []))[:500]
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
    # Estimated on the text the prompt holds (llm_prompt.messages: orjson, compact), each row with
    # its comma. (json.dumps here took 5 ms a user: a 200-user chunk's calls waited 0.9 s for it.)
    base = estimate_tokens(orjson.dumps({user.user_id: {"profile": profile, "behaviors": []}}))
    parts: list[Part] = []
    start, tokens = 0, base
    for index, row in enumerate(rows):
        row_tokens = estimate_tokens(orjson.dumps(row)) + 1
        if index > start and (
            tokens + row_tokens > budget.prompt
            or (index - start + 1) * COMPLETION_TOKENS_PER_BEHAVIOR > budget.completion
        ):
            parts.append(_part(user, len(parts), start, index, profile, rows, tokens))
            start, tokens = index, base
        tokens += row_tokens
    parts.append(_part(user, len(parts), start, len(rows), profile, rows, tokens))
    return parts


def users_parts(users: Sequence[UserInput], budget: Budget) -> list[Part]:
    """The parts of every user with behaviours (one without any needs no call)."""
    return [part for user in users if user.behaviors for part in user_parts(user, budget)]


def _part(user, segment, start, end, profile, rows, tokens) -> Part:
    block = {"profile": profile, "behaviors": rows[start:end]}
    return Part(user, segment, user.behaviors[start:end], block, tokens)


def calls_pack(parts: list[Part], budget: Budget) -> list[list[Part]]:
    """First-fit decreasing under both budgets (prompt and expected reply); a call never holds
    two segments of one user."""
    calls: list[list[Part]] = []
    loads: list[list[int]] = []
    for part in sorted(parts, key=lambda p: p.tokens, reverse=True):
        for call, load in zip(calls, loads, strict=True):
            if (
                load[0] + part.tokens <= budget.prompt
                and load[1] + part.expected_completion <= budget.completion
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
