"""The write side of /metrics: counters kept in the database, so that every worker process of every
cluster on every machine adds to the same figures, and a restart loses none of them.

Only what no table already records is counted here (the job tables give jobs, items and their
progress): lease losses and retries, called by the job engine inside its own transactions, so a
count and the rows it counts commit together; and each request to the LLM endpoint with its
outcome, tokens and duration (llm_call_amounts, gathered and written by extraction.llm_metrics).

    metrics.count("item_retries", 3)

This is the bottom layer: it imports no app. Apps add the figures their own tables hold to
/metrics with figures_register() (jobs: jobs and items by status, throughput).
"""

import logging
import os
from bisect import bisect_left
from collections.abc import Callable, Iterator
from enum import StrEnum

from django.db import connection
from prometheus_client import Gauge, Histogram

from .models import Counter

logger = logging.getLogger(__name__)

PREFIX = "eventproject"

# Figures of the web processes themselves, kept in memory (or in gunicorn's multiprocess folder) and
# added up by /metrics: request latency (ops.middleware) and progress streams (jobs/api/streams.py).
REQUEST_SECONDS = Histogram(
    f"{PREFIX}_http_request_duration_seconds",
    "Time from a request's arrival to its response (the first byte of a stream), by route",
    ["method", "route", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
    registry=None,  # in the registry /metrics builds, or in the multiprocess files
)

STREAMS_OPEN = Gauge(
    f"{PREFIX}_progress_streams", "Progress streams (SSE) open", registry=None, multiprocess_mode="livesum"
)
STREAM_FEEDS = Gauge(
    f"{PREFIX}_progress_feeds",
    "Jobs whose progress a web process reads for its streams (one reader each, however many streams)",
    registry=None,
    multiprocess_mode="livesum",
)

SHARDS = 16
# Counter names, with their label values.
LEASE_EXPIRED = "lease_expired"  # items whose lease ran out before their worker committed
LEASE_LOST = "lease_lost"  # items a worker finished after losing the lease: its work was thrown away
ITEM_RETRIES = "item_retries"  # items sent back to pending for another attempt after an error
LLM_CALLS = "llm_calls"  # label: outcome, an LLMCallOutcome


class LLMCallOutcome(StrEnum):
    """The outcomes an LLM call is counted under (extraction.llm_metrics.llm_outcome): each a series
    from the first scrape on (at 0), so that an alert on a rate of errors sees one."""

    OK = "ok"
    RATE_LIMITED = "rate_limited"
    SERVER_ERROR = "server_error"
    REFUSED = "refused"
    TIMEOUT = "timeout"
    CONNECTION_ERROR = "connection_error"
    ERROR = "error"


LLM_TOKENS = "llm_tokens"  # label: prompt | completion
LLM_SECONDS_BUCKET = "llm_seconds_bucket"  # label: the bucket's upper bound; counts are not cumulative
LLM_MICROSECONDS_SUM = "llm_microseconds_sum"  # summed whole, so the total never drifts
# Upper bounds (seconds) of the LLM call duration buckets; calls above the last go to +Inf.
LLM_SECONDS_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)


def count(name: str, amount: int = 1, *, label: str = "") -> None:
    """Add `amount` to a counter (nothing when it is 0). Inside a transaction it commits with it."""
    if amount:
        counters_add({(name, label): amount})


def counters_add(amounts: dict[tuple[str, str], int]) -> None:
    """Add to several counters in one statement. Rows go in sorted order, so two transactions
    adding to the same counters lock their rows in the same order and cannot deadlock."""
    rows = sorted((name, label, amount) for (name, label), amount in amounts.items() if amount)
    if not rows:
        return
    table = Counter._meta.db_table
    shard = os.getpid() % SHARDS
    values = ", ".join(["(%s, %s, %s, %s)"] * len(rows))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (name, label, shard, value) VALUES {values} "
            f"ON CONFLICT (name, label, shard) DO UPDATE SET value = {table}.value + excluded.value",
            [part for name, label, amount in rows for part in (name, label, shard, amount)],
        )


def counters_read() -> dict[tuple[str, str], int]:
    """Every counter, its shards summed: {(name, label): value}."""
    totals: dict[tuple[str, str], int] = {}
    for name, label, value in Counter.objects.values_list("name", "label", "value"):
        totals[name, label] = totals.get((name, label), 0) + value
    return totals


def llm_call_amounts(
    seconds: float, outcome: str, prompt_tokens: int = 0, completion_tokens: int = 0
) -> dict[tuple[str, str], int]:
    """What one request to the LLM endpoint adds to the counters (see counters_add): its outcome (a
    few stable names), tokens, duration."""
    index = bisect_left(LLM_SECONDS_BUCKETS, seconds)
    bucket = str(LLM_SECONDS_BUCKETS[index]) if index < len(LLM_SECONDS_BUCKETS) else "+Inf"
    return {
        (LLM_CALLS, outcome): 1,
        (LLM_TOKENS, "prompt"): prompt_tokens,
        (LLM_TOKENS, "completion"): completion_tokens,
        (LLM_SECONDS_BUCKET, bucket): 1,
        (LLM_MICROSECONDS_SUM, ""): round(seconds * 1_000_000),
    }


# Figures that apps read from their own tables at scrape time (see ops.exporter): functions yielding
# prometheus-client metric families, registered by each app when it is ready.
FIGURES: list[Callable[[], Iterator]] = []


def figures_register(figures: Callable[[], Iterator]) -> None:
    if figures not in FIGURES:
        FIGURES.append(figures)
