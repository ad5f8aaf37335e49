"""GET /metrics: who may read it, and figures that agree with the job tables and the LLM traffic.
tests/test_ops_live.py scrapes a real gunicorn while a real cluster works."""

import ipaddress
import math

import pytest
from prometheus_client.parser import text_string_to_metric_families

from extraction import llm_metrics
from extraction.extractors import make_extractor
from extraction.llm_metrics import llm_call_timed, llm_calls_write
from jobs.services import job_cancel, job_start
from jobs.transitions import job_mark_running
from jobs.worker.claims import chunk_claim
from jobs.worker.commit import chunk_commit
from jobs.worker.drain import job_drain
from ops import metrics
from tests.fake_openai import tokens_reported

pytestmark = pytest.mark.django_db


def parse(text: str) -> dict[tuple[str, tuple], float]:
    """{(sample name, sorted label pairs): value}"""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(client) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics")
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse(response.content.decode())


def value(samples, name: str, **labels) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def test_it_serves_the_prometheus_text_format_to_loopback(client):
    samples = scrape(client)
    assert value(samples, "eventproject_jobs", status="running") == 0
    assert value(samples, "eventproject_items_finished_total", outcome="succeeded") == 0
    assert value(samples, "eventproject_llm_call_duration_seconds_count") == 0
    for outcome in ("ok", "rate_limited", "server_error", "refused", "timeout", "connection_error", "error"):
        assert value(samples, "eventproject_llm_calls_total", outcome=outcome) == 0  # alerts see a series
    assert client.get("/metrics", REMOTE_ADDR="::1").status_code == 200


def test_it_refuses_other_addresses_unless_configured(client, settings):
    response = client.get("/metrics", REMOTE_ADDR="10.1.2.3")
    assert response.status_code == 403
    assert b"METRICS_ALLOWED_NETWORKS" in response.content
    settings.METRICS_ALLOWED_NETWORKS = [ipaddress.ip_network("10.1.0.0/16")]
    assert client.get("/metrics", REMOTE_ADDR="10.1.2.3").status_code == 200
    assert client.get("/metrics", REMOTE_ADDR="10.2.0.1").status_code == 403
    assert client.get("/metrics").status_code == 403  # loopback is no longer in the list


@pytest.mark.parametrize("header", ["HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED", "HTTP_X_REAL_IP"])
def test_a_request_through_a_proxy_on_this_machine_is_refused(client, header):
    response = client.get("/metrics", **{header: "203.0.113.9"})  # the proxy itself is on loopback
    assert response.status_code == 403
    assert b"proxy" in response.content


def test_writes_are_refused(client):
    assert client.post("/metrics").status_code == 405


def test_a_table_not_migrated_yet_is_not_the_database_down(client):
    """Before or during an upgrade's `migrate` the figures cannot be read, yet the database answers:
    it said database_up 0 (and broker_up 0), an alert sending the operator the wrong way."""
    from django.db import connection

    from jobs.models import JobItem

    with connection.cursor() as cursor:  # as if its migration were not applied (undone with the test)
        cursor.execute(f"ALTER TABLE {JobItem._meta.db_table} RENAME TO not_migrated_yet")
    figures = parse(client.get("/metrics").content.decode())
    assert figures[("eventproject_database_up", ())] == 1
    assert figures[("eventproject_broker_up", ())] == 1
    assert figures[("eventproject_figures_up", ())] == 0
    assert not [name for name, _ in figures if name.startswith("eventproject_job")]


def test_job_and_item_figures_agree_with_the_jobs(
    client, make_users, settings, django_capture_on_commit_callbacks
):
    settings.JOBS_RETRY_BACKOFF_SECONDS = 0
    ids = make_users(13)
    done = job_start(user_ids=ids[:6], extractor="test", options={"error": "nope", "fail_users": ["u002"]})
    job_drain(done.id)  # u002: two retries, then failed on its third attempt
    with django_capture_on_commit_callbacks(execute=True):  # its drain tasks go into the queue
        job_start(user_ids=ids[6:9], extractor="test", chunk_size=1)  # queued
    running = job_start(user_ids=ids[9:12], extractor="test", chunk_size=1, enqueue=False)
    job_mark_running(running.id)
    running.refresh_from_db()
    chunk_claim(running)  # one running item, two pending
    cancelled = job_start(user_ids=ids[12:], extractor="test", enqueue=False)
    job_cancel(cancelled)

    samples = scrape(client)
    assert {
        status: value(samples, "eventproject_jobs", status=status)
        for status in ("completed", "queued", "running", "cancelled", "failed")
    } == {
        "completed": 1,
        "queued": 1,
        "running": 1,
        "cancelled": 1,
        "failed": 0,
    }
    assert value(samples, "eventproject_items_finished_total", outcome="succeeded") == 5
    assert value(samples, "eventproject_items_finished_total", outcome="failed") == 1
    assert value(samples, "eventproject_job_items", status="pending") == 3 + 2
    assert value(samples, "eventproject_job_items", status="running") == 1
    assert value(samples, "eventproject_job_items", status="cancelled") == 1
    assert value(samples, "eventproject_item_retries_total") == 2
    assert value(samples, "eventproject_items_per_second") == 0  # nothing finished in the running job yet
    assert value(samples, "eventproject_queue_tasks") == 3  # a drain task per chunk of the queued job


def test_lease_losses_are_counted_when_they_expire_and_when_a_late_commit_is_refused(
    client, make_users, running_job, expire_leases, extract_claim
):
    job = running_job(make_users(3), start={"chunk_size": 6})  # reclaimed at half the chunk size: all 3
    extractor = make_extractor("test")
    stale = chunk_claim(job)
    expire_leases(job)
    fresh = chunk_claim(job)
    samples = scrape(client)
    assert value(samples, "eventproject_lease_losses_total", kind="expired") == 3
    assert value(samples, "eventproject_lease_losses_total", kind="at_commit") == 0

    assert chunk_commit(stale, job, extract_claim(stale, extractor), extractor).owned == 0
    assert chunk_commit(fresh, job, extract_claim(fresh, extractor), extractor).owned == 3
    samples = scrape(client)
    assert value(samples, "eventproject_lease_losses_total", kind="at_commit") == 3
    assert value(samples, "eventproject_lease_losses_total", kind="expired") == 3


@pytest.mark.django_db(transaction=True)  # the extractor's threads read the users on their own connections
def test_llm_calls_tokens_and_durations_match_what_the_endpoint_saw(client, llm_server, make_users):
    llm_server.latency = 0.3
    llm_server.script.extend(["429", "500"])  # two refusals, retried
    make_users(8, behaviors=4)
    job = job_start(extractor="llm", options={"max_concurrency": 1, "token_budget": 1200}, enqueue=False)
    job_drain(job.id, budget_seconds=60)
    job.refresh_from_db()
    assert job.status == "completed"
    answered = [request for request in llm_server.requests if request["status"] == 200]
    samples = scrape(client)
    assert value(samples, "eventproject_llm_calls_total", outcome="ok") == len(answered) >= 2
    assert value(samples, "eventproject_llm_calls_total", outcome="rate_limited") == 1
    assert value(samples, "eventproject_llm_calls_total", outcome="server_error") == 1
    # What the endpoint reported, exactly (the job's share per user is rounded).
    for kind in ("prompt", "completion"):
        reported = tokens_reported(llm_server, f"{kind}_tokens")
        assert value(samples, "eventproject_llm_tokens_total", kind=kind) == reported > 0
    calls = len(answered) + 2
    assert value(samples, "eventproject_llm_call_duration_seconds_count") == calls
    # Every answer, refusals included, took the server's 0.3 s.
    assert value(samples, "eventproject_llm_call_duration_seconds_bucket", le="0.25") == 0
    assert value(samples, "eventproject_llm_call_duration_seconds_bucket", le="2.5") == calls
    assert value(samples, "eventproject_llm_call_duration_seconds_bucket", le="+Inf") == calls
    assert 0.3 * calls < value(samples, "eventproject_llm_call_duration_seconds_sum") < 2.5 * calls


def test_a_failure_to_count_never_fails_the_llm_call_and_loses_no_count(monkeypatch, caplog):
    def broken(*args, **kwargs):
        raise RuntimeError("counter table gone")

    counters_add = metrics.counters_add
    monkeypatch.setattr(metrics, "counters_add", broken)
    with llm_call_timed() as call:
        call.prompt_tokens = 5
    llm_calls_write()
    assert "could not count LLM calls" in caplog.text
    monkeypatch.setattr(metrics, "counters_add", counters_add)  # the database is back
    llm_calls_write()
    assert metrics.counters_read()[metrics.LLM_TOKENS, "prompt"] == 5


def test_a_workers_calls_are_counted_together_at_most_once_a_second(monkeypatch):
    """Counted one by one, each call held its slot for an extra statement while a worker's threads
    queued on the same counter rows."""
    writes = []
    monkeypatch.setattr(metrics, "counters_add", writes.append)
    monkeypatch.setattr(llm_metrics._gathered, "written_at", -math.inf)  # nothing written for long
    for _ in range(5):
        with llm_call_timed():
            pass
        llm_calls_write(every=1.0)  # as each call ends
    llm_calls_write()  # as the chunk's calls are done
    assert [amounts[metrics.LLM_CALLS, "ok"] for amounts in writes] == [1, 4]


def test_counters_add_up_over_shards(monkeypatch):
    metrics.count(metrics.ITEM_RETRIES, 2)
    monkeypatch.setattr(metrics.os, "getpid", lambda: 12345)  # another process: another shard
    metrics.count(metrics.ITEM_RETRIES, 3)
    metrics.count(metrics.ITEM_RETRIES, 0)
    assert metrics.counters_read() == {(metrics.ITEM_RETRIES, ""): 5}


def test_request_latency_is_recorded_by_route_not_by_path(client, personas):
    client.force_login(personas["admin"])
    for job_id in (1, 2, 3):
        client.get(f"/api/v1/jobs/{job_id}/progress/")
    samples = scrape(client)
    labels = {"method": "GET", "route": "api/v1/jobs/<id:pk>/progress/", "status": "404"}
    assert value(samples, "eventproject_http_request_duration_seconds_count", **labels) >= 3
    assert not [key for key in samples if "/1/" in str(key)]
