"""What each LLM endpoint and model accept, learned from their refusals and kept in the database
(LLMEndpointProfile), so every worker on every machine knows it at once.

Endpoints differ: OpenAI's reasoning models refuse `max_tokens` (they want
`max_completion_tokens`) and any temperature but their default; DeepSeek's reasoner refuses JSON
schemas and JSON mode; vLLM and Ollama decode under a JSON schema. A request goes out in its
endpoint's current `Shape`. A refusal naming a parameter we send (`Refusal.refused_parameter`)
changes the shape once for everyone (`EndpointProfile.learn`), and the request goes again.

So that the first requests of a busy job do not all pay for the same refusal, a new endpoint and
model is probed: one request goes alone (`probe_claim`: a lease on the row, on the database's
clock), the others wait until its shape was accepted. After that, a refused parameter costs one
extra call per endpoint and model, not one per request.

A refusal is the provider's text: it is read here to classify it, never shown or logged.
"""

import re
import threading
from dataclasses import dataclass
from typing import Any

import openai
from django.db.models import F, Q

from eventproject.db import DatabaseNow

from .models import LLMEndpointProfile

Profile = LLMEndpointProfile
RESPONSE_FORMATS = tuple(Profile.ResponseFormat.values)  # best first
AUTO = "auto"
TOKEN_PARAMETERS = tuple(Profile.TokenParameter.values)

# What a refusal's text says when it turns a parameter down (OpenAI: "Unsupported parameter",
# "Unsupported value … Only the default (1) value is supported", "Invalid schema for
# response_format"; DeepSeek: "This response_format type is unavailable now", "deepseek-reasoner
# does not support Json Output."; vLLM: "The provided JSON schema contains features not supported
# by xgrammar."; proxies: "Unrecognized request argument", "Extra inputs are not permitted").
TURNED_DOWN = re.compile(
    r"unsupported|not supported|does not support|unavailable|not available|unrecognized|"
    r"unknown (?:parameter|field|argument)|not (?:allowed|permitted)|invalid (?:parameter|schema)|"
    r"only the default"
)
# The words naming each parameter we send, in a refusal's text.
MENTIONS = {
    "max_tokens": ("'max_tokens'", '"max_tokens"', "max_tokens "),
    "max_completion_tokens": ("max_completion_tokens",),
    "temperature": ("temperature",),
    "response_format": (
        "response_format",
        "json output",
        "json mode",
        "json_schema",
        "json schema",
        "json_object",
        "structured output",
    ),
}
CONTEXT_OVERFLOW = re.compile(
    r"maximum context length|context length|context window|context_length|prompt is too long|"
    r"reduce the length of the messages"
)
UNKNOWN_MODEL = re.compile(
    r"model\b.{0,200}?\b(?:does not exist|not exist|not found|is unknown)|"
    r"\b(?:unknown|no such|invalid) model\b|model not exist",
    re.DOTALL,
)
# Error codes worth naming (the provider's own, never its text).
SHOWN_CODES = {
    "insufficient_quota": "the account's quota is used up",
    "rate_limit_exceeded": "the endpoint's rate limit was reached",
    "invalid_api_key": "the API key was rejected",
    "unsupported_parameter": "a parameter it does not support",
    "unsupported_value": "a value it does not support",
    "invalid_value": "a value it finds invalid",
    "invalid_type": "a value of the wrong type",
    "invalid_json_schema": "the answer's JSON schema",
    "content_filter": "its content filter",
}


@dataclass(frozen=True)
class Refusal:
    """An error answer of the endpoint, read only to classify it."""

    status: int
    code: str  # the provider's error code, when it gives a string
    param: str  # the parameter it names, if any
    text: str  # its message in lower case: matched against, never shown

    @classmethod
    def of(cls, exc: openai.APIStatusError) -> "Refusal":
        body = exc.body if isinstance(exc.body, dict) else {}
        if isinstance(body.get("error"), dict):  # a body the client did not unwrap
            body = body["error"]
        code, param, message = body.get("code"), body.get("param"), body.get("message")
        return cls(
            status=exc.status_code,
            code=code.lower() if isinstance(code, str) else "",
            param=param.lower() if isinstance(param, str) else "",
            text=(message if isinstance(message, str) else str(exc.message or "")).lower(),
        )

    def names_unknown_model(self) -> bool:
        """The endpoint does not serve the model (OpenAI's 404 model_not_found, DeepSeek's 400
        "Model Not Exist", vLLM's and Ollama's 404s naming the model)."""
        if self.code == "model_not_found":
            return True
        if self.status == 404:
            return self.param == "model" or "model" in self.text
        return self.status == 400 and self.param in ("", "model") and bool(UNKNOWN_MODEL.search(self.text))

    def overflows_context(self) -> bool:
        return self.code == "context_length_exceeded" or bool(CONTEXT_OVERFLOW.search(self.text))

    def refused_parameter(self, sent: tuple[str, ...]) -> str | None:
        """Which of the parameters we `sent` the endpoint turns down, if it says so."""
        if self.status not in (400, 422) or self.overflows_context():
            return None
        # (Volcengine Ark says InvalidParameter, naming "response_format.type" for a schema.)
        said = self.code in ("unsupported_parameter", "unsupported_value", "invalidparameter")
        if not (said or TURNED_DOWN.search(self.text)):
            return None
        named = self.param.split(".")[0].split("[")[0]
        if named in sent:
            return named
        for parameter in sent:
            if any(words in self.text for words in MENTIONS.get(parameter, ())):
                return parameter
        return None

    def says_out_of_credit(self) -> bool:
        """The account cannot pay: OpenAI's 429 insufficient_quota, DeepSeek's and others' 402
        Insufficient Balance."""
        return self.status == 402 or self.code in ("insufficient_quota", "insufficient_balance")

    def detail(self, sent: tuple[str, ...]) -> str:
        """What it refused, in our words: a parameter we sent that it names, or its error code's
        meaning (never its text, nor a parameter we did not send: the body may carry anything)."""
        said = []
        named = self.param.split(".")[0].split("[")[0]
        if named in (*sent, "messages", "model"):
            said.append(f"parameter {named!r}")
        if self.code in SHOWN_CODES:
            said.append(SHOWN_CODES[self.code])
        return "; ".join(said)


@dataclass(frozen=True)
class Shape:
    """How requests to one endpoint and model are made, as far as it was found to accept them."""

    token_parameter: str = TOKEN_PARAMETERS[0]
    sends_temperature: bool = True
    response_format: str = RESPONSE_FORMATS[0]
    accepted: bool = False  # a request of this shape was answered

    @classmethod
    def of(cls, row: Profile) -> "Shape":
        return cls(
            row.token_parameter, row.sends_temperature, row.response_format, row.accepted_at is not None
        )

    def adapted(self) -> list[dict[str, str]]:
        """What differs from how a request is first made: {"refused": …, "instead": …} each
        ("instead" empty: nothing is sent in its place)."""
        notes = []
        if self.token_parameter != TOKEN_PARAMETERS[0]:
            notes.append({"refused": TOKEN_PARAMETERS[0], "instead": self.token_parameter})
        if not self.sends_temperature:
            notes.append({"refused": "temperature", "instead": ""})
        if self.response_format != RESPONSE_FORMATS[0]:
            refused = RESPONSE_FORMATS[: RESPONSE_FORMATS.index(self.response_format)]
            instead = "" if self.response_format == "text" else f"response_format {self.response_format}"
            notes.append({"refused": "response_format " + " and ".join(refused), "instead": instead})
        return notes


def sent_parameters(shape: Shape, response_format: str) -> tuple[str, ...]:
    """The parameters a request of this shape sends (beyond the model and the messages)."""
    sent = [shape.token_parameter]
    if shape.sends_temperature:
        sent.append("temperature")
    if response_format != "text":
        sent.append("response_format")
    return tuple(sent)


def adaptation_words(parameter: str, response_format: str) -> tuple[str, str]:
    """(what was refused, what is done instead), for the log."""
    if parameter in ("max_tokens", "max_completion_tokens"):
        other = "max_completion_tokens" if parameter == "max_tokens" else "max_tokens"
        return parameter, f"the answer's room is sent as {other}"
    if parameter == "temperature":
        return "temperature", "no temperature is sent (the model's default)"
    following = RESPONSE_FORMATS[RESPONSE_FORMATS.index(response_format) + 1]
    instead = (
        "answers are asked as plain text" if following == "text" else f"answers are asked as {following}"
    )
    return f"response_format {response_format}", instead


# How many probes this process has seen end: a request waiting for one here is woken by its end at
# once (those of other processes look again every llm_client.PROBE_POLL_SECONDS).
_probes_ended = 0
_probe_ended = threading.Condition()


class EndpointProfile:
    """One endpoint and model's row, as the threads of one client see it."""

    def __init__(self, endpoint: str, model: str):
        row, _ = Profile.objects.get_or_create(endpoint=endpoint[:500], model=model)
        self.id = row.id
        self.lock = threading.Lock()
        self._shape = Shape.of(row)
        self.reported = [0, 0]  # completion and reasoning tokens answered, not yet added to the row

    @property
    def shape(self) -> Shape:
        with self.lock:
            return self._shape

    def reload(self) -> Shape:
        row = Profile.objects.get(id=self.id)
        with self.lock:
            self._shape = Shape.of(row)
            return self._shape

    def probe_claim(self, seconds: float) -> bool:
        """Become the one request that finds out what a new shape is worth; False while another
        one (of any worker) does, or once the shape was accepted."""
        free = Q(probe_until__isnull=True) | Q(probe_until__lt=DatabaseNow())
        rows = Profile.objects.filter(free, id=self.id, accepted_at__isnull=True)
        return rows.update(probe_until=DatabaseNow(seconds)) == 1

    def probe_renew(self, seconds: float) -> None:
        Profile.objects.filter(id=self.id).update(probe_until=DatabaseNow(seconds))

    def probe_end(self, answered: Shape | None) -> None:
        """The probe is over: `answered` is the shape a request was answered in (None: it failed,
        another request may probe)."""
        rows = Profile.objects.filter(id=self.id)
        if answered is not None:
            rows.filter(
                token_parameter=answered.token_parameter,
                sends_temperature=answered.sends_temperature,
                response_format=answered.response_format,
            ).update(accepted_at=DatabaseNow(), probe_until=None)
        rows.update(probe_until=None)
        self.reload()
        global _probes_ended
        with _probe_ended:
            _probes_ended += 1
            _probe_ended.notify_all()

    @staticmethod
    def probes_ended() -> int:
        with _probe_ended:
            return _probes_ended

    @staticmethod
    def probe_wait(ended: int, seconds: float) -> None:
        """Wait at most `seconds` for a probe of this process to end, `ended` being probes_ended()
        when the caller last looked at the row."""
        with _probe_ended:
            _probe_ended.wait_for(lambda: _probes_ended != ended, seconds)

    def learn(self, sent: Shape, response_format: str, parameter: str) -> bool:
        """Change the shape after `parameter` (of a request of shape `sent`, asking for
        `response_format`) was refused, for every worker; True when this request taught it (False:
        another one did first). The new shape must be answered once before it counts as accepted."""
        rows = Profile.objects.filter(id=self.id)
        if parameter in TOKEN_PARAMETERS:
            other = next(p for p in TOKEN_PARAMETERS if p != sent.token_parameter)
            learned = rows.filter(token_parameter=sent.token_parameter).update(
                token_parameter=other, accepted_at=None
            )
        elif parameter == "temperature":
            learned = rows.filter(sends_temperature=True).update(sends_temperature=False, accepted_at=None)
        else:  # response_format: the next one down from the one refused, if that was the learned one
            following = RESPONSE_FORMATS[RESPONSE_FORMATS.index(response_format) + 1]
            learned = rows.filter(response_format=response_format).update(
                response_format=following, accepted_at=None
            )
        self.reload()
        return learned == 1

    def report(self, completion_tokens: int, reasoning_tokens: int) -> None:
        with self.lock:
            self.reported[0] += completion_tokens
            self.reported[1] += reasoning_tokens

    def flush(self) -> None:
        """Add the tokens answered since the last flush to the row (once per chunk, not per call)."""
        with self.lock:
            (completion, reasoning), self.reported = self.reported, [0, 0]
        if completion or reasoning:
            Profile.objects.filter(id=self.id).update(
                completion_tokens=F("completion_tokens") + completion,
                reasoning_tokens=F("reasoning_tokens") + reasoning,
            )


def endpoint_state(endpoint: str, model: str, response_format: str) -> dict[str, Any]:
    """What a job's progress says about its endpoint: which format answers are asked in and what
    was adapted to what the endpoint and model accept (nothing yet: not called so far)."""
    row = Profile.objects.filter(endpoint=endpoint[:500], model=model).first()
    shape = Shape.of(row) if row else Shape()
    return {
        "endpoint": endpoint,
        "model": model,
        "response_format": shape.response_format if response_format == AUTO else response_format,
        "adapted": shape.adapted(),
    }


def reasoning_share(endpoint: str, model: str) -> float:
    """Reasoning tokens per answer token this endpoint and model have reported so far (0: none or
    never called), for the cost estimate."""
    row = Profile.objects.filter(endpoint=endpoint[:500], model=model).values_list(
        "completion_tokens", "reasoning_tokens"
    )
    completion, reasoning = row.first() or (0, 0)
    return reasoning / (completion - reasoning) if completion > reasoning else 0.0
