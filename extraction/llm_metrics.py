"""Each request to the LLM endpoint, counted for /metrics (ops.metrics keeps the counters): its
outcome, read from the openai client's exception, the tokens it reported and how long it took.

A worker's calls are gathered in memory and written together (llm_calls_write): at most once a
second by a call that ends, and when a chunk's calls are done. Written one by one, every call held
its slot for an extra statement, and a worker's threads queued on the same counter rows. A worker
killed before writing loses the counts of its last second of calls, never the calls themselves.
"""

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

import openai
from django.db import transaction

from ops import metrics

logger = logging.getLogger(__name__)

WRITE_EVERY_SECONDS = 1.0


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


class _Gathered:
    """This process's counts not yet written."""

    def __init__(self):
        self.lock = threading.Lock()
        self.amounts: Counter[tuple[str, str]] = Counter()
        self.written_at = -WRITE_EVERY_SECONDS

    def add(self, amounts: dict[tuple[str, str], int]) -> None:
        with self.lock:
            self.amounts.update(amounts)

    def take(self, every: float) -> dict[tuple[str, str], int]:
        """The counts to write now (none if the last write was less than `every` seconds ago)."""
        with self.lock:
            if not self.amounts or time.monotonic() - self.written_at < every:
                return {}
            taken, self.amounts = dict(self.amounts), Counter()
            self.written_at = time.monotonic()
            return taken


_gathered = _Gathered()


@contextmanager
def llm_call_timed() -> Iterator[LLMCall]:
    """Count one request to the LLM endpoint: its outcome (from the exception that left the block,
    if any), the tokens it reported, and how long it took (in memory: see llm_calls_write)."""
    call = LLMCall()
    started = time.monotonic()
    outcome = metrics.LLMCallOutcome.OK
    try:
        yield call
    except BaseException as exc:
        outcome = llm_outcome(exc)
        raise
    finally:
        seconds = time.monotonic() - started
        _gathered.add(metrics.llm_call_amounts(seconds, outcome, call.prompt_tokens, call.completion_tokens))


def llm_calls_write(*, every: float = 0.0) -> None:
    """Write the counts gathered in this process, unless they were written less than `every` seconds
    ago. Never fails a caller: counts that cannot be written (the database away) are kept for the
    next write."""
    amounts = _gathered.take(every)
    if not amounts:
        return
    try:
        with transaction.atomic():  # a savepoint inside a transaction: a failure stays here
            metrics.counters_add(amounts)
    except Exception:  # a paid answer matters more than its count
        logger.exception("could not count LLM calls; trying again with the next")
        _gathered.add(amounts)


def llm_outcome(exc: BaseException) -> metrics.LLMCallOutcome:
    """A few stable outcome names, for a label that stays small whatever the endpoint answers."""
    outcome = metrics.LLMCallOutcome
    if isinstance(exc, openai.APIStatusError):
        if exc.status_code == 429:
            return outcome.RATE_LIMITED
        return outcome.SERVER_ERROR if exc.status_code >= 500 else outcome.REFUSED
    if isinstance(exc, openai.APITimeoutError):  # before its base class, APIConnectionError
        return outcome.TIMEOUT
    if isinstance(exc, openai.APIConnectionError):
        return outcome.CONNECTION_ERROR
    return outcome.ERROR
