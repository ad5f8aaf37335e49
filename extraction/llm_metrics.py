"""Each request to the LLM endpoint, counted for /metrics (ops.metrics keeps the counters): its
outcome, read from the openai client's exception, the tokens it reported and how long it took."""

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

import openai

from ops import metrics

logger = logging.getLogger(__name__)


class LLMCall:
    """What one request to the LLM endpoint reports; see llm_call_timed."""

    def __init__(self):
        self.prompt_tokens = 0
        self.completion_tokens = 0

    def usage(self, usage) -> None:
        """The response's `usage` (may be None: some servers do not say)."""
        if usage is not None:
            self.prompt_tokens = usage.prompt_tokens or 0
            self.completion_tokens = usage.completion_tokens or 0


@contextmanager
def llm_call_timed() -> Iterator[LLMCall]:
    """Count one request to the LLM endpoint: its outcome (from the exception that left the block,
    if any), the tokens it reported, and how long it took. Never fails the call itself."""
    call = LLMCall()
    started = time.monotonic()
    outcome = "ok"
    try:
        yield call
    except BaseException as exc:
        outcome = llm_outcome(exc)
        raise
    finally:
        try:
            metrics.llm_call_record(
                time.monotonic() - started, outcome, call.prompt_tokens, call.completion_tokens
            )
        except Exception:  # a paid answer matters more than its count
            logger.exception("could not count an LLM call")


def llm_outcome(exc: BaseException) -> str:
    """A few stable outcome names, for a label that stays small whatever the endpoint answers."""
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return "rate_limited"
        return "server_error" if exc.status_code >= 500 else "refused"
    if isinstance(exc, openai.APITimeoutError):  # before its base class, APIConnectionError
        return "timeout"
    if isinstance(exc, openai.APIConnectionError):
        return "connection_error"
    return "error"
