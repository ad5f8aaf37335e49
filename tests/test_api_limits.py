"""Per-user throttles on reads and (separately, tighter) exports; progress streams: a few per user,
a bounded life, reconnection with Last-Event-ID."""

import time

import pytest
from django.core import signals
from django.db import close_old_connections

from jobs.services import job_start
from jobs.worker.drain import job_drain
from tests.test_api_stream import parse

pytestmark = pytest.mark.django_db


def test_reads_are_throttled_per_user(api, make_users, settings):
    settings.API_READ_RATE = "3/minute"
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    client = api("reader")
    assert [client.get(f"/api/v1/jobs/{job.id}/").status_code for _ in range(4)] == [200, 200, 200, 429]
    throttled = client.get("/api/v1/events/")
    assert throttled.status_code == 429 and "throttled" in throttled.json()["detail"]
    assert int(throttled["Retry-After"]) > 0
    assert api("admin").get(f"/api/v1/jobs/{job.id}/").status_code == 200  # another user's budget


def test_exports_have_their_own_tighter_budget(api, make_users, settings):
    settings.API_EXPORT_RATE = "2/hour"
    make_users(1)
    client = api("reader")
    codes = [client.get(f"/api/v1/events/export.{kind}").status_code for kind in ("csv", "jsonl", "csv")]
    assert codes == [200, 200, 429]
    assert client.get("/api/v1/events/").status_code == 200  # reads are counted apart


def closed(response) -> None:
    """Close a response as the WSGI server does, keeping the test's database connection open."""
    signals.request_finished.disconnect(close_old_connections)
    try:
        response.close()
    finally:
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def streams(settings):
    settings.API_STREAMS_PER_USER = 2
    settings.API_STREAM_POLL_SECONDS = 0.05
    return settings


def test_a_user_may_hold_only_a_few_streams_at_once(api, make_users, streams):
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    client, url = api("reader"), f"/api/v1/jobs/{job.id}/stream/"
    first, second = client.get(url), client.get(url)
    assert (first.status_code, second.status_code) == (200, 200)
    refused = client.get(url)
    assert refused.status_code == 429
    assert "at most 2 progress streams may be open per user" in refused.json()["detail"]
    assert api("admin").get(url).status_code == 200  # the limit is per user
    closed(first)  # the server closes a response when the client goes: the slot comes back
    assert client.get(url).status_code == 200


def test_a_stream_ends_by_itself_after_its_lifetime(api, make_users, streams):
    streams.API_STREAM_MAX_SECONDS = 1
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)  # queued: never finishes here
    started = time.monotonic()
    response = api("reader").get(f"/api/v1/jobs/{job.id}/stream/")
    body = b"".join(response.streaming_content).decode()
    assert time.monotonic() - started < 10
    assert [name for name, _ in parse([body])] == ["progress"]
    assert body.startswith("retry: 2000\n\n")
    assert body.endswith(": the stream's time is up; reconnect with Last-Event-ID\n\n")


def test_a_reconnecting_client_gets_only_what_it_has_not_seen(api, make_users, streams):
    streams.API_STREAM_MAX_SECONDS = 1
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    client, url = api("reader"), f"/api/v1/jobs/{job.id}/stream/"
    body = b"".join(client.get(url).streaming_content).decode()
    last_id = next(line[4:] for line in body.splitlines() if line.startswith("id: "))
    again = b"".join(client.get(url, HTTP_LAST_EVENT_ID=last_id).streaming_content).decode()
    assert parse([again]) == []  # nothing changed since: nothing sent again
    job_drain(job.id)
    ended = b"".join(client.get(url, HTTP_LAST_EVENT_ID=last_id).streaming_content).decode()
    assert [name for name, _ in parse([ended])] == ["progress", "end"]
    assert "id: end\n" in ended
    # Having seen the end, a client (EventSource) reconnecting is told there is no more: 204.
    assert client.get(url, HTTP_LAST_EVENT_ID="end").status_code == 204


def test_a_wsgi_stream_never_closed_gives_its_thread_back_once_collected(api, make_users, settings):
    """A stream response that never reached the server (an error after the view) was never closed:
    its thread stayed counted, and once WEB_THREADS - 1 had leaked the process refused every stream."""
    import gc

    from jobs.api.access import thread_streams

    gc.collect()  # streams earlier tests left unread and unclosed
    held = thread_streams.held()
    settings.WEB_THREADS = held + 2  # room for one stream
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    client, url = api("reader"), f"/api/v1/jobs/{job.id}/stream/"
    assert client.get(url).status_code == 200  # dropped unread and unclosed
    gc.collect()
    assert thread_streams.held() == held
    kept = client.get(url)
    assert kept.status_code == 200 and client.get(url).status_code == 503
    closed(kept)
    assert thread_streams.held() == held
