"""What /metrics reports, in the Prometheus text format through prometheus-client.

Two sources, each right for what it measures:

- Engine and LLM figures come from the database at scrape time (the apps' tables, through the
  figures they register with ops.metrics, and its own counters), so they are the same whichever
  web process is scraped and they add up the work of every cluster on every machine. Several web
  servers report the same values: aggregate them with max(), not sum().
- Request latency is measured in the web process. Under gunicorn, whose workers are separate
  processes, prometheus-client's multiprocess mode adds them up: gunicorn.conf.py points
  PROMETHEUS_MULTIPROC_DIR at a fresh folder before any worker starts. Writing a database row per
  request instead would cost every request a write.
"""

import os
from collections.abc import Iterator
from functools import cache

import redis
from django.conf import settings
from django.db import DatabaseError, transaction
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

from eventproject.work import broker

from . import metrics
from .health import ALIVE_STATUSES, broker_check, cluster_stats, database_check
from .metrics import PREFIX, REQUEST_SECONDS, STREAM_FEEDS, STREAMS_OPEN


@cache
def registry() -> CollectorRegistry:
    """The registry /metrics renders: the database figures and the request latency of every
    worker process of this web server (one process without gunicorn's multiprocess folder)."""
    built = CollectorRegistry()
    built.register(DatabaseCollector())
    if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
        MultiProcessCollector(built)
    else:
        for metric in (REQUEST_SECONDS, STREAMS_OPEN, STREAM_FEEDS):
            built.register(metric)
    return built


class DatabaseCollector:
    """Figures read from the database on each scrape: about ten small queries. While the database
    is unreachable only what says so is reported (`database_up` 0, the broker and, on Redis, the
    clusters): the scrape itself still succeeds, so an alert can name the database. A database that
    answers but lacks a table (migrations not applied yet) is up: only `figures_up` says 0."""

    def collect(self) -> Iterator:
        database_up, figures, figures_read = database_check()["ok"], [], False
        if database_up:
            try:
                with transaction.atomic():  # a failure leaves the connection fit to check again
                    figures, figures_read = list(self._database_figures()), True
            except DatabaseError:  # gone since the check, or a table not migrated yet (an upgrade)
                database_up = database_check()["ok"]
        yield GaugeMetricFamily(
            f"{PREFIX}_database_up",
            "1 when this web server can reach the database, else 0",
            value=database_up,
        )
        yield GaugeMetricFamily(
            f"{PREFIX}_figures_up",
            "1 when the figures were read from the database, else 0 (it is away, or not migrated)",
            value=figures_read,
        )
        broker_up = broker_check()["ok"] if settings.REDIS_URL else database_up
        yield GaugeMetricFamily(
            f"{PREFIX}_broker_up",
            "1 when the task broker answers (Redis, or the database with the ORM broker), else 0",
            value=broker_up,
        )
        yield from figures
        if broker_up:
            try:
                queued = broker().queue_size()
                alive = sum(str(stat.status) in ALIVE_STATUSES for stat in cluster_stats())
            except (DatabaseError, redis.RedisError):
                return  # gone since the check: no figure rather than a wrong one
            yield GaugeMetricFamily(
                f"{PREFIX}_queue_tasks",
                "Tasks waiting in django-q2's broker queue (the doorbells; the work is the pending items)",
                value=queued,
            )
            yield GaugeMetricFamily(
                f"{PREFIX}_clusters_alive", "Task clusters whose heartbeat is fresh", value=alive
            )

    def _database_figures(self) -> Iterator:
        for figures in metrics.FIGURES:  # what the apps' own tables hold (jobs.metrics)
            yield from figures()
        counters = metrics.counters_read()
        lease = CounterMetricFamily(
            f"{PREFIX}_lease_losses",
            "Items whose lease was lost: expired (the worker died or stalled; claimed again or failed) "
            "or at commit (the worker finished too late; its work was thrown away)",
            labels=["kind"],
        )
        lease.add_metric(["expired"], counters.get((metrics.LEASE_EXPIRED, ""), 0))
        lease.add_metric(["at_commit"], counters.get((metrics.LEASE_LOST, ""), 0))
        yield lease
        yield CounterMetricFamily(
            f"{PREFIX}_item_retries",
            "Items sent back for another attempt after a retryable error",
            value=counters.get((metrics.ITEM_RETRIES, ""), 0),
        )
        yield from self._llm(counters)

    def _llm(self, counters: dict[tuple[str, str], int]) -> Iterator:
        calls = CounterMetricFamily(
            f"{PREFIX}_llm_calls",
            "Requests sent to the LLM endpoint (each retry is one), by outcome",
            labels=["outcome"],
        )
        tokens = CounterMetricFamily(
            f"{PREFIX}_llm_tokens", "Tokens the LLM endpoint reported, paid for", labels=["kind"]
        )
        tokens.add_metric(["prompt"], counters.get((metrics.LLM_TOKENS, "prompt"), 0))
        tokens.add_metric(["completion"], counters.get((metrics.LLM_TOKENS, "completion"), 0))
        seen = {label for name, label in counters if name == metrics.LLM_CALLS}
        for outcome in sorted(seen | set(metrics.LLMCallOutcome)):
            calls.add_metric([outcome], counters.get((metrics.LLM_CALLS, outcome), 0))
        yield calls
        yield tokens
        cumulative, buckets = 0, []
        for bound in [*map(str, metrics.LLM_SECONDS_BUCKETS), "+Inf"]:
            cumulative += counters.get((metrics.LLM_SECONDS_BUCKET, bound), 0)
            buckets.append((bound, cumulative))
        yield HistogramMetricFamily(
            f"{PREFIX}_llm_call_duration_seconds",
            "Time each request to the LLM endpoint took, answered or not",
            buckets=buckets,
            sum_value=counters.get((metrics.LLM_MICROSECONDS_SUM, ""), 0) / 1_000_000,
        )
