"""All LLM traffic goes through here: the official `openai` client against any OpenAI-compatible
chat-completions endpoint (OpenAI, vLLM, Ollama, MiniMax…).

One request: `LLMClient.cached()` answers it when the same request was answered (and validated)
before; otherwise `complete()` waits for a slot of the global rate limit, calls, and retries
429 / 5xx / timeouts / connection errors with backoff and jitter, honouring Retry-After.
401 / 403 / 404 and an unknown model raise LLMConfigError: the job cannot work, stop it.

Secrets stay here. The API key comes from the environment only; credentials in OPENAI_BASE_URL
(user:password@, ?api-key=…) are used but never shown: messages name the endpoint without them.
Provider response bodies (which may echo a key, a prompt or another user's data) never go into a
message either; errors say what happened in our own words, with the HTTP status.
"""

import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import openai
from django.conf import settings
from django.db import IntegrityError, connection, transaction

from ops import metrics

from .models import LLMCacheEntry, RateLimit

logger = logging.getLogger(__name__)

RATE_LIMIT_NAME = "llm"
MAX_RETRY_AFTER_SECONDS = 120
MIN_REQUEST_SECONDS = 1.0  # a request with less time than this before the chunk's deadline is not sent
DEFAULT_ENDPOINT = "https://api.openai.com/v1"
# Error codes of OpenAI-compatible endpoints worth telling a person, in words (never their text).
KNOWN_CODES = {
    "context_length_exceeded": "the prompt is longer than the model's context; lower options.token_budget",
    "insufficient_quota": "the account's quota is used up",
    "rate_limit_exceeded": "the endpoint's rate limit was reached",
    "invalid_api_key": "the API key was rejected",
    "model_not_found": "no such model",
}


class LLMConfigError(Exception):
    """The endpoint refuses us for a reason retries cannot fix (key, permission, model, URL)."""


class LLMCallError(Exception):
    """This request failed (after retries where that made sense); another request may work.

    `kind` says what sort of failure it was ("HTTP 500", "timeout"…) without the details."""

    def __init__(self, message: str, *, kind: str):
        super().__init__(message)
        self.kind = f"the LLM call failed ({kind})"


class LLMStopped(Exception):
    """The request was not sent: the caller's should_stop gave this reason."""


@dataclass(frozen=True)
class Completion:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str


def request_key(model: str, temperature: float, messages: list[dict], json_mode: bool) -> str:
    payload = json.dumps([model, temperature, json_mode, messages], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def cache_prune(before: datetime, *, batch_size: int = 10_000) -> int:
    """Delete the cached answers made before `before`, in batches so that no long transaction holds
    the table (workers keep reading and adding); return how many went."""
    deleted = 0
    stale = LLMCacheEntry.objects.filter(created_at__lt=before)
    while ids := list(stale.values_list("id", flat=True)[:batch_size]):
        deleted += LLMCacheEntry.objects.filter(id__in=ids).delete()[0]
    return deleted


def rate_limit_wait(requests_per_minute: int, *, now: Callable[[], float] = time.time) -> float:
    """Reserve the next slot of the global limit; return how long to wait for it (seconds).

    One conditional UPDATE on a shared row, so workers on any number of machines space their
    requests 60/rpm seconds apart between them.
    """
    if requests_per_minute <= 0:
        return 0.0
    interval = 60.0 / requests_per_minute
    table = RateLimit._meta.db_table
    current = now()
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {table} SET next_slot = CASE WHEN next_slot > %s THEN next_slot ELSE %s END + %s "
            f"WHERE name = %s RETURNING next_slot",
            [current, current, interval, RATE_LIMIT_NAME],
        )
        row = cursor.fetchone()
        if row is None:
            try:
                with transaction.atomic():
                    RateLimit.objects.create(name=RATE_LIMIT_NAME, next_slot=current + interval)
                return 0.0
            except IntegrityError:  # another worker created it first
                return rate_limit_wait(requests_per_minute, now=now)
    return max(row[0] - interval - current, 0.0)


@dataclass(frozen=True)
class Endpoint:
    """OPENAI_BASE_URL taken apart: what the client calls, and what a person may be shown."""

    base_url: str  # with user:password@ if given (the HTTP client sends it as Basic auth)
    query: dict[str, str]  # ?api-key=… and the like, sent with every request
    shown: str  # scheme://host:port/path: no credentials, no query

    @classmethod
    def from_url(cls, url: str | None) -> "Endpoint":
        parts = urlsplit(url or DEFAULT_ENDPOINT)
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        if parts.port:
            host = f"{host}:{parts.port}"
        return cls(
            base_url=urlunsplit((parts.scheme, parts.netloc, parts.path, "", "")),
            query=query,
            shown=urlunsplit((parts.scheme, host, parts.path, "", "")),
        )


def endpoint() -> Endpoint:
    return Endpoint.from_url(settings.OPENAI_BASE_URL)


class LLMClient:
    def __init__(self, *, model: str, temperature: float, timeout: float, max_completion_tokens: int):
        api_key = os.environ.get("OPENAI_API_KEY", "")
        if not api_key:
            raise LLMConfigError("OPENAI_API_KEY is not set in the workers' environment")
        self.model, self.temperature, self.timeout = model, temperature, timeout
        self.max_completion_tokens = max_completion_tokens
        self.endpoint = endpoint()
        self.client = openai.OpenAI(
            base_url=self.endpoint.base_url,
            default_query=self.endpoint.query or None,
            api_key=api_key,
            timeout=timeout,
            max_retries=0,
        )

    def cached(self, messages: list[dict]) -> Completion | None:
        """The validated answer to exactly this request, if it was asked before."""
        key = request_key(self.model, self.temperature, messages, json_mode=True)
        hit = LLMCacheEntry.objects.filter(key=key).first()
        if hit:
            return Completion(hit.response, hit.prompt_tokens, hit.completion_tokens, cached=True, key=key)
        return None

    def complete(
        self,
        messages: list[dict],
        *,
        should_stop: Callable[[], str] = lambda: "",
        seconds_left: Callable[[], float | None] = lambda: None,
        slot: AbstractContextManager | None = None,
    ) -> Completion:
        """Ask the endpoint (no cache: see `cached`). `slot` is held only while a request is out;
        `should_stop` (a reason, or "") is asked right before each request goes out; no request
        outlasts `seconds_left()`, the time to the chunk's deadline (None: no deadline)."""
        key = request_key(self.model, self.temperature, messages, json_mode=True)
        attempt = 0
        while True:  # until an answer, or _backoff gives up by raising
            attempt += 1
            self._wait(rate_limit_wait(settings.EXTRACTION_LLM_REQUESTS_PER_MINUTE), should_stop)
            try:
                with slot or nullcontext():
                    if reason := should_stop():
                        raise LLMStopped(reason)
                    left = seconds_left()
                    if left is not None and left < MIN_REQUEST_SECONDS:
                        raise LLMStopped("the chunk's deadline is too near to send this user")
                    with metrics.llm_call_timed() as call:  # counted for /metrics, whatever the outcome
                        response = self.client.chat.completions.create(
                            model=self.model,
                            messages=messages,
                            temperature=self.temperature,
                            max_tokens=self.max_completion_tokens,
                            response_format={"type": "json_object"},
                            timeout=self.timeout if left is None else min(self.timeout, left),
                        )
                        call.usage(response.usage)
            except openai.APIStatusError as exc:
                delay = self._refusal(exc, attempt)
            except openai.APITimeoutError:
                delay = self._backoff(
                    attempt, f"no answer within {self.timeout:g} s (options.timeout)", "timeout"
                )
            except openai.APIConnectionError:
                delay = self._backoff(
                    attempt, f"could not connect to {self.endpoint.shown}", "connection error"
                )
            except openai.OpenAIError as exc:  # an answer the client could not read
                raise LLMCallError(
                    f"the LLM endpoint's answer could not be read ({type(exc).__name__})",
                    kind="unreadable answer",
                ) from None
            else:
                usage = response.usage
                content = (response.choices[0].message.content or "") if response.choices else ""
                return Completion(
                    content,
                    usage.prompt_tokens if usage else 0,
                    usage.completion_tokens if usage else 0,
                    cached=False,
                    key=key,
                )
            self._wait(delay, should_stop)

    def remember(self, completion: Completion) -> None:
        """Keep a validated answer for the next identical request."""
        if not completion.cached:
            entry = LLMCacheEntry(
                key=completion.key,
                model=self.model,
                response=completion.content,
                prompt_tokens=completion.prompt_tokens,
                completion_tokens=completion.completion_tokens,
            )
            LLMCacheEntry.objects.bulk_create([entry], ignore_conflicts=True)  # a twin may have won

    def _refusal(self, exc: openai.APIStatusError, attempt: int) -> float:
        """Why the endpoint said no, in our words: the body is read only to classify it."""
        status, code = exc.status_code, _error_code(exc)
        said = f"HTTP {status}" + (f": {KNOWN_CODES[code]}" if code in KNOWN_CODES else "")
        if status == 401:
            raise LLMConfigError(
                "the LLM endpoint rejected the API key (HTTP 401); check OPENAI_API_KEY on the workers"
            )
        if status == 403:
            raise LLMConfigError("the LLM endpoint refused access (HTTP 403); the key may not use this model")
        if status == 404 or code == "model_not_found" or (status == 400 and _mentions_unknown_model(exc)):
            raise LLMConfigError(
                f"the LLM endpoint at {self.endpoint.shown} does not know model {self.model!r} "
                f"(HTTP {status}); check EXTRACTION_LLM_MODEL or the job's model option"
            )
        if status == 429 or status >= 500:
            kind = "too many requests" if status == 429 else "a server error"
            reason = f"HTTP {status}, {kind}" if code not in KNOWN_CODES else said
            return self._backoff(attempt, reason, f"HTTP {status}", at_least=_retry_after(exc))
        raise LLMCallError(f"the LLM endpoint refused the request ({said})", kind=f"HTTP {status}")

    @staticmethod
    def _backoff(attempt: int, reason: str, kind: str, at_least: float = 0.0) -> float:
        if attempt > settings.EXTRACTION_LLM_MAX_RETRIES:
            raise LLMCallError(
                f"the LLM endpoint kept failing; gave up after {attempt} attempts (last: {reason})", kind=kind
            )
        base = settings.EXTRACTION_LLM_BACKOFF_SECONDS * 2 ** (attempt - 1)
        delay = max(at_least, base * random.uniform(0.5, 1.5))
        logger.info("LLM call attempt %d failed (%s); retrying in %.1f s", attempt, reason, delay)
        return delay

    @staticmethod
    def _wait(seconds: float, should_stop: Callable[[], str]) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if reason := should_stop():
                raise LLMStopped(reason)
            time.sleep(min(left, 0.5))


def _error_body(exc: openai.APIStatusError) -> dict:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return body["error"]
    return body if isinstance(body, dict) else {}


def _error_code(exc: openai.APIStatusError) -> str:
    code = _error_body(exc).get("code")
    return code if isinstance(code, str) else ""


def _mentions_unknown_model(exc: openai.APIStatusError) -> bool:
    message = str(_error_body(exc).get("message") or exc.message).lower()
    return "model" in message and "not" in message


def _retry_after(exc: openai.APIStatusError) -> float:
    value = exc.response.headers.get("retry-after") if exc.response is not None else None
    try:
        return min(float(value), MAX_RETRY_AFTER_SECONDS) if value else 0.0
    except ValueError:
        return 0.0
