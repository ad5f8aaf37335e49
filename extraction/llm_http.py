"""The wire to an OpenAI-compatible endpoint: its address taken apart (credentials and query kept
out of every message), one client per endpoint and key in a process whose timeout bounds a whole
answer, what a 200 answer holds as far as it can be read, and how long a 429 asks callers to wait.
"""

import functools
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import httpcore2  # noqa: F401 (the openai client's transport imports it at the first client: 0.08 s)
import httpx2
import openai
from django.conf import settings
from openai.types.chat import ChatCompletion

from .llm_errors import LLMCallError

DEFAULT_ENDPOINT = "https://api.openai.com/v1"


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

    def client(self, api_key: str) -> openai.OpenAI:
        """The openai client of this endpoint and key (one per process: see _client)."""
        return _client(self.base_url, tuple(self.query.items()), api_key)


@functools.lru_cache(maxsize=8)
def _client(base_url: str, query: tuple[tuple[str, str], ...], api_key: str) -> openai.OpenAI:
    """One client per endpoint and key in a process, shared by its chunks and threads (it is
    thread-safe): its connections stay open from chunk to chunk, and its TLS context is made once
    (made per chunk, it cost a worker 1.5 s of CPU in a 2,000-user benchmark run). Each request
    passes its own timeout, which bounds its whole answer (_AnswerWithin); retries are ours."""
    return openai.OpenAI(
        base_url=base_url,
        default_query=dict(query) or None,
        api_key=api_key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(transport=_AnswerWithin()),
    )


class _AnswerWithin(httpx2.BaseTransport):
    """httpx bounds each read by the request's timeout, not the answer: a server dripping its body
    (a gateway's keep-alive spaces, a byte at a time) kept a call going past options.timeout and
    the chunk's deadline, until the task's own timeout killed the worker with its paid calls not
    committed. Here the body must be in `timeout` seconds after the request went out; the status
    line and headers are still bounded read by read only."""

    def __init__(self) -> None:
        # openai's own client's limits (a custom transport brings its own pool)
        self.inner = httpx2.HTTPTransport(
            limits=httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
        )

    def handle_request(self, request: httpx2.Request) -> httpx2.Response:
        sent = time.monotonic()
        response = self.inner.handle_request(request)
        seconds = (request.extensions.get("timeout") or {}).get("read")
        if seconds is not None:
            response.stream = _BodyWithin(response.stream, sent + seconds, seconds)
        return response

    def close(self) -> None:
        self.inner.close()


class _BodyWithin(httpx2.SyncByteStream):
    def __init__(self, stream: Any, deadline: float, seconds: float) -> None:
        self.stream, self.deadline, self.seconds = stream, deadline, seconds

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.stream:
            if time.monotonic() > self.deadline:
                raise httpx2.ReadTimeout(f"the answer took longer than {self.seconds:g} s")
            yield chunk

    def close(self) -> None:
        self.stream.close()


def endpoint() -> Endpoint:
    return Endpoint.from_url(settings.OPENAI_BASE_URL)


def retry_after_seconds(response: Any) -> float:
    """How long a 429 response asks callers to wait, in seconds (0: it does not say):
    `retry-after-ms` (OpenAI, Azure), else `Retry-After` in seconds or as an HTTP date."""
    headers = response.headers if response is not None else {}
    if milliseconds := _positive(headers.get("retry-after-ms")):
        return milliseconds / 1000
    value = headers.get("retry-after") or ""
    if seconds := _positive(value):
        return seconds
    try:
        return max((parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds(), 0.0)
    except (TypeError, ValueError):  # neither a number nor a date
        return 0.0


def _positive(value: str | None) -> float:
    """A header's positive finite number, or 0."""
    try:
        number = float(value) if value else 0.0
    except ValueError:
        return 0.0
    return number if math.isfinite(number) and number > 0 else 0.0


@dataclass(frozen=True)
class Answer:
    """A 200 answer as far as it can be read: its text ("" when it has none: a content filter's
    null message) and its usage (None when the endpoint did not say, or said it in other than
    whole numbers). An answer that is no chat completion at all (a JSON list, plain text, the event
    stream of a server that only streams) fails its call, never its chunk."""

    response: ChatCompletion
    content: str
    usage: Any

    @classmethod
    def of(cls, response: Any) -> "Answer":
        if not isinstance(response, ChatCompletion):
            raise LLMCallError(
                f"the LLM endpoint's answer is not a chat completion (it sent {type(response).__name__})",
                kind="unreadable answer",
            )
        choices = response.choices if isinstance(response.choices, list) else []
        message = getattr(choices[0], "message", None) if choices else None
        content = getattr(message, "content", None)
        usage = response.usage
        counts = (getattr(usage, "prompt_tokens", None), getattr(usage, "completion_tokens", None))
        whole = all(isinstance(count, int) and not isinstance(count, bool) and count >= 0 for count in counts)
        return cls(response, content if isinstance(content, str) else "", usage if whole else None)
