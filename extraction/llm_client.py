"""All LLM traffic goes through here: the official `openai` client against any OpenAI-compatible
chat-completions endpoint (OpenAI, DeepSeek, Qwen, vLLM, Ollama, MiniMax…).

One request: `LLMClient.cached()` answers it when the same request was answered (and validated)
before; otherwise `complete()` waits for its start in the provider's budget (`llm_budget`:
requests and tokens per minute per endpoint and model, shared by every worker and divided among
the jobs by weight), calls, settles the budget with the tokens used, and retries 5xx / timeouts /
connection errors with backoff and jitter; a 429 pauses every caller of the endpoint and model.
A request goes out in the shape its endpoint and model were found to accept (`llm_endpoints`):
a refusal of a parameter we send (`max_tokens`, `temperature`, `response_format`) is learned
once for every worker and the request sent again. The answer is asked for as the call's JSON
schema (strict), as a JSON object, or as plain text, whichever is best of what the endpoint
accepts (or what the job or the settings chose). The wire itself (the endpoint's address, the
client, reading a 200 answer) is `llm_http`; the errors are `llm_errors`.
401 / 403 / an unknown model / a wrong URL / an account out of credit raise LLMConfigError: the job
cannot work, stop it.

Secrets stay here. The API key comes from the environment only; credentials in OPENAI_BASE_URL
(user:password@, ?api-key=…) are used but never shown: messages name the endpoint without them.
Provider response bodies (which may echo a key, a prompt or another user's data) never go into a
message either; errors say what happened in our own words, with the HTTP status.
"""

import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import openai
from django.conf import settings
from django.db import DatabaseError, connection

from eventproject.db import connection_reset

from .llm_budget import Budget, Spending
from .llm_cache import request_key
from .llm_endpoints import AUTO, EndpointProfile, Refusal, Shape, adaptation_words, sent_parameters
from .llm_errors import LLMCallError, LLMConfigError, LLMStopped
from .llm_http import Answer, endpoint, retry_after_seconds
from .llm_metrics import WRITE_EVERY_SECONDS, llm_call_timed, llm_calls_write
from .llm_tokens import estimate_tokens, reasoning_tokens
from .models import LLMCacheEntry

logger = logging.getLogger(__name__)

MIN_REQUEST_SECONDS = 1.0  # a request with less time than this before the chunk's deadline is not sent
MAX_ADAPTATIONS = 4  # refusals one request adapts to: the token parameter, temperature, two formats
# How often a request waiting for another process's probe looks at its outcome (one of its own
# process wakes it at once).
PROBE_POLL_SECONDS = 0.25
PROBE_MARGIN_SECONDS = 30  # a probe's lease: the request's timeout and this, renewed at each try


def _connection_release() -> None:
    """Close this thread's database connection before a wait: a chunk's calls each wait in a thread
    of their own (2 × max_concurrency of them), and holding a connection through its wait for a
    slot and its request, each held one for the whole chunk: with max_concurrency 64, one chunk
    took more than PostgreSQL's default 100 connections. The next query opens one again."""
    if not connection.in_atomic_block:  # (a caller's transaction, in tests: it must go on)
        connection_reset()


@dataclass(frozen=True)
class Completion:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    key: str
    reasoning_tokens: int = 0  # of the completion tokens


class LLMClient:
    """Requests of one chunk to the configured endpoint, for one model and its options; safe to
    use from the chunk's threads at once. `response_format` is "auto" (the best the endpoint
    accepts, learned) or the one format to ask for; `flush()` when the chunk is done."""

    def __init__(
        self,
        *,
        model: str,
        temperature: float,
        timeout: float,
        max_completion_tokens: int,
        response_format: str = AUTO,
    ):
        api_key = os.environ.get("OPENAI_API_KEY", "")
        if not api_key:
            raise LLMConfigError("OPENAI_API_KEY is not set in the workers' environment")
        self.model, self.temperature, self.timeout = model, temperature, timeout
        self.max_completion_tokens = max_completion_tokens
        self.forced = "" if response_format == AUTO else response_format
        self.endpoint = endpoint()
        self.client = self.endpoint.client(api_key)
        self.profile = EndpointProfile(self.endpoint.shown, model)
        self.budget = Budget(self.endpoint.shown, model)

    def response_format(self, shape: Shape | None = None) -> str:
        """The format answers are asked in now: the job's choice, or the best the endpoint accepts."""
        return self.forced or (shape or self.profile.shape).response_format

    def key(self, messages: list[dict], schema: dict | None = None) -> str:
        """The cache key of this request as it would go out now."""
        shape = self.profile.shape
        temperature = self.temperature if shape.sends_temperature else None
        return request_key(self.model, temperature, messages, self._format(shape, schema), schema)

    def cached(self, messages: list[dict], schema: dict | None = None) -> Completion | None:
        """The validated answer to exactly this request, if it was asked before."""
        key = self.key(messages, schema)
        hit = LLMCacheEntry.objects.filter(key=key).first()
        if hit:
            return Completion(hit.response, hit.prompt_tokens, hit.completion_tokens, cached=True, key=key)
        return None

    def complete(
        self,
        messages: list[dict],
        *,
        schema: dict | None = None,
        should_stop: Callable[[], str] = lambda: "",
        seconds_left: Callable[[], float | None] = lambda: None,
        slot: AbstractContextManager | None = None,
        share: Callable[[], tuple[str, int]] = lambda: ("", 1),
    ) -> Completion:
        """Ask the endpoint (no cache: see `cached`); `schema` is the answer's JSON schema, sent
        where the endpoint takes one. `slot` is held only while a request is out; `should_stop`
        (a reason, or "") is asked right before each request goes out; no request outlasts
        `seconds_left()`, the time to the chunk's deadline (None: no deadline). `share()` names
        who spends the provider's budget and its weight there (the job, its priority)."""
        cost = sum(estimate_tokens(message["content"]) for message in messages) + self.max_completion_tokens
        attempt = adaptations = 0
        probing = False
        try:
            while True:  # until an answer, or _refusal / _backoff gives up by raising
                if probing:
                    self.profile.probe_renew(self.timeout + PROBE_MARGIN_SECONDS)
                else:
                    probing = self._probe_wait(should_stop)
                shape = self.profile.shape
                response_format = self._format(shape, schema)
                attempt += 1
                with self._reserved(cost, should_stop, share) as spending:
                    try:
                        _connection_release()  # while waiting for a slot
                        with slot or nullcontext():
                            if reason := should_stop():
                                raise LLMStopped(reason)
                            left = seconds_left()
                            if left is not None and left < MIN_REQUEST_SECONDS:
                                raise LLMStopped("the chunk's deadline is too near to send this user")
                            timeout = self.timeout if left is None else min(self.timeout, left)
                            spending.sent = True
                            _connection_release()  # while the request is out
                            with llm_call_timed() as call:  # counted for /metrics, whatever the outcome
                                response = self.client.chat.completions.create(
                                    **self._request(messages, shape, response_format, schema), timeout=timeout
                                )
                                answer = Answer.of(response)
                                call.usage(answer.usage)
                            spending.answered(answer.usage)
                    except openai.APIStatusError as exc:
                        spending.used = 0  # refused: the provider counts no tokens
                        refusal = Refusal.of(exc)
                        if adaptations < MAX_ADAPTATIONS and self._adapt(refusal, shape, response_format):
                            adaptations += 1
                            attempt -= 1  # a refused parameter is no failed attempt: it is sent otherwise
                            continue
                        delay = self._refusal(exc, refusal, attempt, sent_parameters(shape, response_format))
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
                        if probing:
                            self.profile.probe_end(answered=shape)
                            probing = False
                        return self._completion(answer, messages, shape, response_format, schema)
                self._wait(delay, should_stop)
        finally:
            if probing:  # it failed or stopped: another request may find out
                self.profile.probe_end(answered=None)
            llm_calls_write(every=WRITE_EVERY_SECONDS)  # (its slot is free again)

    @contextmanager
    def _reserved(
        self, cost: int, should_stop: Callable[[], str], share: Callable[[], tuple[str, int]]
    ) -> Iterator[Spending]:
        """Wait for a start in the provider's budget for one request of this estimated cost; when
        the block ends, settle the budget with what the request used."""
        while True:
            caller, weight = share()
            admitted, wait, asked_at = self.budget.ask(caller, weight, cost)
            if admitted:
                break
            self._wait(wait * random.uniform(1.0, 1.2), should_stop)  # (spread: not all at once)
        spending = Spending()
        try:
            self._wait(wait, should_stop)
            yield spending
        finally:
            used = spending.used if spending.used is not None else cost if spending.sent else 0
            try:
                self.budget.settle(
                    caller, cost, used, sent=spending.sent, answered=spending.ok, asked_at=asked_at
                )
            except DatabaseError as exc:  # the answer (paid for) counts more than the budget's books
                logger.warning("could not settle the provider's budget (%s); the reservation stands", exc)

    def remember(self, completion: Completion) -> None:
        """Keep a validated answer for the next identical request."""
        if completion.cached:
            return
        try:
            LLMCacheEntry.objects.bulk_create(
                [
                    LLMCacheEntry(
                        key=completion.key,
                        model=self.model,
                        response=completion.content,
                        prompt_tokens=completion.prompt_tokens,
                        completion_tokens=completion.completion_tokens,
                    )
                ],
                ignore_conflicts=True,  # a twin may have won
            )
        except DatabaseError as exc:  # the answer (paid for) counts more than the cache
            logger.warning("could not keep an answer in the cache (%s)", exc)

    def flush(self) -> None:
        """Record the completion and reasoning tokens answered (the cost estimate's reasoning share),
        and the calls' counts for /metrics."""
        self.profile.flush()
        llm_calls_write()

    # The request's shape ----------------------------------------------------------------------------
    def _format(self, shape: Shape, schema: dict | None) -> str:
        response_format = self.response_format(shape)
        if response_format == "json_schema" and schema is None:
            return "json_object"  # nothing to send as a schema
        return response_format

    def _request(self, messages: list[dict], shape: Shape, response_format: str, schema: dict | None) -> dict:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            shape.token_parameter: self.max_completion_tokens,
        }
        if shape.sends_temperature:
            request["temperature"] = self.temperature
        if response_format == "json_schema":
            request["response_format"] = {"type": "json_schema", "json_schema": schema}
        elif response_format == "json_object":
            request["response_format"] = {"type": "json_object"}
        return request

    def _probe_wait(self, should_stop: Callable[[], str]) -> bool:
        """Before a request: True when it is to be the probe of a shape not yet accepted; waits
        while another request (of any worker) is. A job asking for another format than the learned
        one does not probe."""

        def settled(shape: Shape) -> bool:
            return shape.accepted or bool(self.forced and self.forced != shape.response_format)

        shape = self.profile.shape
        while not settled(shape):
            ended = self.profile.probes_ended()
            if self.profile.probe_claim(self.timeout + PROBE_MARGIN_SECONDS):
                return True
            if reason := should_stop():
                raise LLMStopped(reason)
            shape = self.profile.reload()  # its probe may have ended before `ended` was counted
            if not settled(shape):
                self.profile.probe_wait(ended, PROBE_POLL_SECONDS)  # then claim again, and look
        return False

    def _adapt(self, refusal: Refusal, shape: Shape, response_format: str) -> bool:
        """Learn from a refusal of a parameter we can send otherwise or do without; True: send the
        request again (in the shape now learned)."""
        parameter = refusal.refused_parameter(sent_parameters(shape, response_format))
        if parameter is None:
            return False
        if self.profile.learn(shape, response_format, parameter):
            what, instead = adaptation_words(parameter, response_format)
            logger.warning(
                "the LLM endpoint %s refused %s for model %r (HTTP %d); %s from now on, for every worker",
                self.endpoint.shown,
                what,
                self.model,
                refusal.status,
                instead,
            )
        if parameter == "response_format" and self.forced:
            raise LLMConfigError(
                f"the LLM endpoint at {self.endpoint.shown} refused response_format {response_format} "
                f"for model {self.model!r} (HTTP {refusal.status}); set options.response_format to "
                f"auto, or to a format it accepts"
            )
        return True

    def _completion(
        self, answer: "Answer", messages: list[dict], shape: Shape, response_format: str, schema: dict | None
    ) -> Completion:
        content, usage = answer.content, answer.usage
        if usage is None:  # the endpoint did not say (some servers and proxies): as much as it surely was
            prompt_tokens = sum(estimate_tokens(message["content"]) for message in messages)
            completion_tokens = estimate_tokens(content)
        else:
            prompt_tokens, completion_tokens = usage.prompt_tokens, usage.completion_tokens
        reasoning = reasoning_tokens(answer.response, content, completion_tokens)
        self.profile.report(completion_tokens, reasoning)
        temperature = self.temperature if shape.sends_temperature else None
        return Completion(
            content,
            prompt_tokens,
            completion_tokens,
            cached=False,
            key=request_key(self.model, temperature, messages, response_format, schema),
            reasoning_tokens=reasoning,
        )

    # Failures ---------------------------------------------------------------------------------------
    def _refusal(
        self, exc: openai.APIStatusError, refusal: Refusal, attempt: int, sent: tuple[str, ...]
    ) -> float:
        """Why the endpoint said no, in our words: the body is read only to classify it."""
        status = refusal.status
        if status == 401:
            raise LLMConfigError(
                "the LLM endpoint rejected the API key (HTTP 401); check OPENAI_API_KEY on the workers"
            )
        if status == 403:
            raise LLMConfigError("the LLM endpoint refused access (HTTP 403); the key may not use this model")
        if refusal.names_unknown_model():
            raise LLMConfigError(
                f"the LLM endpoint at {self.endpoint.shown} does not know model {self.model!r} "
                f"(HTTP {status}); check EXTRACTION_LLM_MODEL or the job's model option"
            )
        if status == 404:
            raise LLMConfigError(
                f"the LLM endpoint at {self.endpoint.shown} has no chat completions (HTTP 404); check "
                f"OPENAI_BASE_URL (it usually ends in /v1)"
            )
        detail = refusal.detail(sent)
        if refusal.says_out_of_credit():  # retrying cannot help until someone pays
            raise LLMConfigError(
                f"the LLM endpoint at {self.endpoint.shown} says the account's quota or balance is used "
                f"up (HTTP {status}); add credit, then resume the job"
            )
        if status == 429 or status >= 500:
            kind = "too many requests" if status == 429 else "a server error"
            reason = f"HTTP {status}: {detail}" if detail else f"HTTP {status}, {kind}"
            if status == 429:  # every caller of the endpoint and model pauses; this one waits there
                self.budget.pause(retry_after_seconds(exc.response))
                return self._backoff(attempt, reason, "HTTP 429", wait=False)
            return self._backoff(attempt, reason, f"HTTP {status}")
        if refusal.overflows_context():
            raise LLMCallError(
                f"the LLM endpoint refused the request (HTTP {status}): the prompt and the room for the "
                f"answer exceed the model's context; lower options.token_budget or "
                f"options.max_completion_tokens",
                kind=f"HTTP {status}, context",
            )
        raise LLMCallError(
            f"the LLM endpoint refused the request (HTTP {status}" + (f": {detail})" if detail else ")"),
            kind=f"HTTP {status}",
        )

    @staticmethod
    def _backoff(attempt: int, reason: str, kind: str, *, wait: bool = True) -> float:
        """How long to wait before the next attempt (none when the budget's pause does the waiting)."""
        if attempt > settings.EXTRACTION_LLM_MAX_RETRIES:
            raise LLMCallError(
                f"the LLM endpoint kept failing; gave up after {attempt} attempts (last: {reason})", kind=kind
            )
        delay = settings.EXTRACTION_LLM_BACKOFF_SECONDS * 2 ** (attempt - 1) * random.uniform(0.5, 1.5)
        if not wait:
            logger.info("LLM call attempt %d failed (%s); retrying after the pause", attempt, reason)
            return 0.0
        logger.info("LLM call attempt %d failed (%s); retrying in %.1f s", attempt, reason, delay)
        return delay

    @staticmethod
    def _wait(seconds: float, should_stop: Callable[[], str]) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if reason := should_stop():
                raise LLMStopped(reason)
            time.sleep(min(left, 0.5))
