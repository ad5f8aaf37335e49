"""The LLM extractor: users' behaviours go to an OpenAI-compatible chat model, events come back.

A chunk of users is cut into parts (a user, or a segment of a user too large for one call),
packed into calls under a token budget (llm_packing), and sent with at most `max_concurrency`
calls in flight (llm_slots, llm_calls). Each reply is validated user by user (llm_answers): a
valid user is kept, an invalid one is asked again; a call that fails as a whole is split in halves
and retried, so one bad user cannot sink the others. Start and end times come from the referenced
behaviours, never from the model. This module holds the extractor's options and its estimate.
"""

from collections.abc import Sequence
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy

from ..llm_endpoints import AUTO, RESPONSE_FORMATS, endpoint_state, reasoning_share
from ..llm_http import endpoint
from ..llm_tokens import estimate_tokens
from .base import Control, Extractor, UserInput, UserResult
from .llm_calls import ChunkCalls
from .llm_packing import Budget, calls_pack, users_parts
from .llm_prompt import USERS_MARKER, system_prompt
from .llm_slots import Slots

MODEL_NAME_MAX_LENGTH = 200  # recorded in each event's extractor version ("1+" and the name)


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
        self.budget = Budget(
            prompt=self.options["token_budget"] - self.system_tokens,
            completion=self.options["max_completion_tokens"],
        )

    def estimate(self, users: Sequence[UserInput]) -> dict[str, int]:
        """Calls and tokens; the reasoning tokens (a part of the completion tokens) in the share this
        endpoint and model have reasoned so far."""
        parts = users_parts(users, self.budget)
        calls = calls_pack(parts, self.budget)
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

    def extract(self, users: Sequence[UserInput], control: Control | None = None) -> dict[str, UserResult]:
        return ChunkCalls(self, control or Control()).extract(users)
