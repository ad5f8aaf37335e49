"""Progress streams on the production server (gunicorn with uvicorn workers): coroutines fed by one
reader per job per process, which end with `end`, and give their slot back when a client leaves."""

import asyncio
import dataclasses
import http.client
import json
import signal
import time

import pytest
from rest_framework.authtoken.models import Token

from jobs.api.access import stream_slot_take
from jobs.api.streams import ProgressStream, _feeds
from jobs.services import job_cancel, job_start
from jobs.transitions import job_mark_running
from jobs.worker.drain import job_drain
from tests.cluster import process_tree, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class SSEClient:
    """One stream read line by line over its own connection."""

    def __init__(self, server, path: str, token: str, **headers: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        self.connection.request("GET", path, headers={"Authorization": f"Token {token}", **headers})
        self.response = self.connection.getresponse()
        self.status = self.response.status

    def next_event(self) -> tuple[str, dict]:
        """The next event's (name, data); comments and the retry hint are skipped."""
        fields: dict[str, str] = {}
        while True:
            line = self.response.readline().decode()
            if not line:
                raise EOFError("the stream closed")
            if line == "\n" and "event" in fields:
                return fields["event"], json.loads(fields["data"])
            if ": " in line and not line.startswith(":"):
                key, value = line.rstrip("\n").split(": ", 1)
                fields[key] = value

    def close(self) -> None:
        self.connection.close()


def gauge(server, name: str) -> float:
    _, _, body = server.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f"eventproject_{name} "):
            return float(line.split()[1])
    return 0.0


@pytest.fixture
def token(personas):
    return Token.objects.create(user=personas["reader"]).key


def test_two_streams_of_one_job_share_one_reader_and_both_end(web_server, token, make_users):
    make_users(4)
    job = job_start(user_ids=["u001", "u002", "u003", "u004"], extractor="test", chunk_size=2, enqueue=False)
    server = web_server(WEB_CONCURRENCY="1", API_STREAM_POLL_SECONDS="0.1")
    path = f"/api/v1/jobs/{job.id}/stream/"
    first, second = SSEClient(server, path, token), SSEClient(server, path, token)
    try:
        assert (first.status, second.status) == (200, 200)
        assert first.next_event()[1]["status"] == second.next_event()[1]["status"] == "queued"
        wait_for(
            lambda: (gauge(server, "progress_streams"), gauge(server, "progress_feeds")) == (2, 1),
            timeout=10,
            what="two streams on one feed",
        )
        job_mark_running(job.id)
        job_drain(job.id)  # the job runs and ends while both listen
        for client in (first, second):
            events = []
            while not events or events[-1][0] != "end":
                events.append(client.next_event())
            assert events[-2][1]["status"] == "completed" and events[-2][1]["succeeded"] == 4
            assert events[-1] == ("end", {"id": job.id, "status": "completed"})
            with pytest.raises(EOFError):
                client.next_event()
    finally:
        first.close()
        second.close()
    wait_for(
        lambda: (gauge(server, "progress_streams"), gauge(server, "progress_feeds")) == (0, 0),
        timeout=10,
        what="the streams and their feed to be gone",
    )


def test_a_client_that_goes_away_gives_its_stream_slot_back(web_server, token, make_users):
    make_users(2)
    job = job_start(user_ids=["u001", "u002"], extractor="test", enqueue=False)
    server = web_server(WEB_CONCURRENCY="1", API_STREAMS_PER_USER="1", API_STREAM_POLL_SECONDS="0.1")
    path = f"/api/v1/jobs/{job.id}/stream/"
    held = SSEClient(server, path, token)
    assert held.status == 200
    held.next_event()
    refused = SSEClient(server, path, token)
    assert refused.status == 429
    refused.close()
    held.close()  # without reading on: the server notices the disconnect

    def another_stream_opens():
        client = SSEClient(server, path, token)
        client.close()
        return client.status == 200

    wait_for(another_stream_opens, timeout=10, what="the slot to come back", interval=0.2)
    wait_for(lambda: gauge(server, "progress_streams") == 0, timeout=10, what="no stream open")


def test_each_stream_and_poll_speaks_its_clients_language_though_they_share_one_read(
    web_server, token, make_users
):
    """The job's feed reads on a thread of its own, where no language is active: its words were
    English for every client, Chinese ones too."""
    make_users(1)
    job = job_start(user_ids=["u001"], extractor="test", enqueue=False)  # no cluster: it waits
    server = web_server(WEB_CONCURRENCY="1", API_STREAM_POLL_SECONDS="0.1")
    path = f"/api/v1/jobs/{job.id}/stream/"
    chinese = SSEClient(server, path, token, **{"Accept-Language": "zh-CN,zh;q=0.9"})
    english = SSEClient(server, path, token, **{"Accept-Language": "en"})
    assert chinese.next_event()[1]["activity"] == "正在等待空闲的 worker"
    assert english.next_event()[1]["activity"] == "waiting for a worker"
    polled = {}
    for language in ("zh-CN", "en", "zh-CN"):  # polls served from the same feed
        status, _, body = server.get(
            f"/api/v1/jobs/{job.id}/progress/",
            {"Authorization": f"Token {token}", "Accept-Language": language, "If-None-Match": '"stale"'},
        )
        assert status == 200
        polled.setdefault(language, set()).add(json.loads(body)["activity"])
    assert polled == {"zh-CN": {"正在等待空闲的 worker"}, "en": {"waiting for a worker"}}
    chinese.close()
    english.close()


@pytest.mark.parametrize("application", ["eventproject.asgi", "eventproject.wsgi"])
def test_a_head_request_answers_at_once_and_holds_no_stream(web_server, token, make_users, application):
    """gunicorn's WSGI workers run a HEAD's body to its end and drop it: a stream made for a HEAD
    held its slot and its thread for API_STREAM_MAX_SECONDS."""
    make_users(1)
    job = job_start(user_ids=["u001"], extractor="test", enqueue=False)
    server = web_server(
        application, WEB_CONCURRENCY="1", API_STREAMS_PER_USER="1", API_STREAM_MAX_SECONDS="60"
    )
    path = f"/api/v1/jobs/{job.id}/stream/"
    status, headers, body = server.request("HEAD", path, headers={"Authorization": f"Token {token}"})
    assert (status, headers["content-type"], body) == (200, "text/event-stream", b"")
    stream = SSEClient(server, path, token)  # the user's one slot is free
    assert stream.status == 200
    stream.close()
    job_cancel(job)  # its stream ends: a WSGI thread learns of a closed client only when it writes


def test_streams_leave_a_wsgi_process_a_thread_for_every_other_request(web_server, personas, make_users):
    """Under WSGI a stream holds a thread: three accounts' streams took all three, and /healthz (the
    load balancer's check) waited for one to end, up to API_STREAM_MAX_SECONDS."""
    make_users(1)
    job = job_start(user_ids=["u001"], extractor="test", enqueue=False)
    server = web_server("eventproject.wsgi", WEB_CONCURRENCY="1", WEB_THREADS="3")
    path = f"/api/v1/jobs/{job.id}/stream/"
    tokens = [Token.objects.create(user=personas[name]).key for name in ("reader", "viewer", "admin")]
    streams = [SSEClient(server, path, tokens[0]), SSEClient(server, path, tokens[1])]
    assert [stream.status for stream in streams] == [200, 200]
    refused = SSEClient(server, path, tokens[2])
    assert (refused.status, refused.response.headers["Retry-After"]) == (503, "2")
    assert json.loads(refused.response.read())["detail"] == (
        "this server's threads for progress streams are all taken; poll "
        f"/api/v1/jobs/{job.id}/progress/ or try again shortly"
    )
    assert server.get("/healthz")[0] == 200
    streams[0].close()
    job_cancel(job)  # the streams end (a WSGI thread learns of a closed client only when it writes)
    assert streams[1].next_event()[0] in ("progress", "end")
    wait_for(
        lambda: SSEClient(server, path, tokens[2]).status == 200, timeout=10, what="a thread to come back"
    )
    streams[1].close()


def test_a_stream_cancelled_as_its_job_changes_ends_and_gives_its_slot_back(make_users, settings):
    """The server cancels a stream whose client went away. The cancel must win even when it comes in
    the same turn of the event loop as a change of the job: `asyncio.wait_for` (Python 3.11) then
    returned the change and dropped the cancel, and the stream lived on, unread, until its time was up."""
    settings.API_STREAMS_PER_USER = 1
    make_users(1)
    job = job_start(user_ids=["u001"], extractor="test", enqueue=False)
    slot = stream_slot_take(user_id=1)
    assert slot is not None

    async def cancel_as_the_job_changes() -> asyncio.Task:
        events = aiter(ProgressStream(job.id, "", slot, asynchronous=True))
        assert (await anext(events)).startswith("retry: ")
        assert (await anext(events)).startswith("id: ")
        waiting = asyncio.create_task(anext(events))
        await asyncio.sleep(0)  # one turn: the stream now waits for its job's next change
        feed = _feeds()[job.id]
        feed.publish(dataclasses.replace(feed.snapshot, tag="changed"))
        waiting.cancel()  # the client went away
        await asyncio.wait({waiting}, timeout=10)
        return waiting

    waiting = asyncio.run(cancel_as_the_job_changes())
    assert waiting.cancelled()
    assert stream_slot_take(user_id=1) == slot  # given back


def test_a_reconnecting_client_with_the_last_id_gets_nothing_twice(web_server, token, make_users):
    make_users(1)
    job = job_start(user_ids=["u001"], extractor="test", enqueue=False)
    server = web_server(WEB_CONCURRENCY="1", API_STREAM_MAX_SECONDS="1", API_STREAM_POLL_SECONDS="0.1")
    path = f"/api/v1/jobs/{job.id}/stream/"
    client = SSEClient(server, path, token)
    client.next_event()
    started = time.monotonic()
    lines = client.response.read().decode()  # the rest, until its lifetime is up
    assert time.monotonic() - started < 5
    assert lines.endswith(": the stream's time is up; reconnect with Last-Event-ID\n\n")
    client.close()
    status, _, body = server.get(path, {"Authorization": f"Token {token}", "Last-Event-ID": "x"})
    assert status == 200 and b"event: progress" in body
    first_id = next(line[4:] for line in body.decode().splitlines() if line.startswith("id: "))
    status, _, body = server.get(path, {"Authorization": f"Token {token}", "Last-Event-ID": first_id})
    assert status == 200 and b"event: progress" not in body


def test_an_export_is_streamed_whole_on_the_asgi_server(web_server, token, make_users):
    make_users(3)
    job = job_start(user_ids=["u001", "u002", "u003"], enqueue=False)
    job_mark_running(job.id)
    job_drain(job.id)
    server = web_server(WEB_CONCURRENCY="1")
    status, headers, body = server.get("/api/v1/events/export.jsonl", {"Authorization": f"Token {token}"})
    assert status == 200 and headers["content-type"] == "application/x-ndjson"
    rows = [json.loads(line) for line in body.decode().splitlines()]
    assert sorted({row["user_id"] for row in rows}) == ["u001", "u002", "u003"]


@pytest.mark.parametrize("how", ["reload", "stop"])
def test_a_reload_or_a_stop_ends_the_streams_at_once_and_the_old_process_exits(
    web_server, token, make_users, how
):
    """A stream lasts until its client leaves: a reload (SIGHUP) used to keep the old process
    streaming until gunicorn took it for hung and aborted it (about a minute, logged CRITICAL), a
    stop until gunicorn killed it at its graceful timeout (30 s)."""
    make_users(1)
    job = job_start(user_ids=["u001"], extractor="test", enqueue=False)  # stays queued: no cluster
    server = web_server(WEB_CONCURRENCY="1", API_STREAM_POLL_SECONDS="0.1")
    old = process_tree(server.process.pid) - {server.process.pid}
    client = SSEClient(server, f"/api/v1/jobs/{job.id}/stream/", token)
    try:
        assert client.next_event()[1]["status"] == "queued"
        asked = time.monotonic()
        server.process.send_signal(signal.SIGHUP if how == "reload" else signal.SIGTERM)
        rest = client.response.read()  # to the stream's end
        assert time.monotonic() - asked < 10
        assert rest.endswith(b": this server is stopping; reconnect with Last-Event-ID\n\n")
    finally:
        client.close()
    if how == "stop":
        assert server.process.wait(timeout=10) == 0
        return
    wait_for(
        lambda: process_tree(server.process.pid).isdisjoint(old), timeout=10, what="the old worker to exit"
    )
    again = SSEClient(server, f"/api/v1/jobs/{job.id}/stream/", token)  # the client reconnects
    try:
        assert again.next_event()[1]["status"] == "queued"
    finally:
        again.close()
    assert "WORKER TIMEOUT" not in server.output()
