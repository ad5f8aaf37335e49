"""The ASGI handler called in this process, without a server: how often a request crosses to the
synchronous thread (each crossing costs about 0.1 ms of CPU, a tenth of a poll's), and that every
request's signals still fire once, a streaming response's close only after its last part."""

import asyncio
import json

import pytest
from asgiref.sync import SyncToAsync, sync_to_async
from django.core import signals
from django.db import connections

from eventproject.asgi import application
from jobs.services import job_start
from jobs.transitions import job_mark_running
from jobs.worker.drain import job_drain
from tests.test_api_stream_asgi import token  # noqa: F401 (a fixture)

pytestmark = pytest.mark.django_db(transaction=True)  # the synchronous thread has its own connection


async def call(
    path: str,
    headers: dict[str, str],
    sent: list,
    client: asyncio.Queue | None = None,
    *,
    breaks: bool = False,
):
    """GET `path` through the application, its messages appended to `sent`. The client's messages
    come from `client`, after the request's: put {"type": "http.disconnect"} there to leave.
    `breaks`: the connection fails (OSError) at the first part of the body. Returns the status and
    the whole body."""
    client = client or asyncio.Queue()
    client.put_nowait({"type": "http.request", "body": b"", "more_body": False})  # first

    async def send(message):
        if breaks and message["type"] == "http.response.body":
            raise OSError("the connection broke")
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"127.0.0.1"), *((k.lower().encode(), v.encode()) for k, v in headers.items())],
        "server": ("127.0.0.1", 8000),
        "client": ("127.0.0.1", 50000),
    }
    await application(scope, client.get, send)
    return sent[0]["status"], b"".join(message.get("body", b"") for message in sent[1:])


@pytest.fixture
def sent() -> list:
    """The ASGI messages the application sent, in order."""
    return []


@pytest.fixture
def crossings(monkeypatch) -> list:
    """Each call of the synchronous thread from the event loop, by the function called."""
    called: list = []
    original = SyncToAsync.__call__

    async def counted(self, *args, **kwargs):
        called.append(getattr(self.func, "__name__", repr(self.func)))
        return await original(self, *args, **kwargs)

    monkeypatch.setattr(SyncToAsync, "__call__", counted)
    return called


@pytest.fixture
def fired(sent):
    """The request signals received, in order, each with how many messages had been sent by then."""
    seen: list[tuple[str, int]] = []

    def started(**kwargs):
        seen.append(("started", len(sent)))

    def finished(**kwargs):
        seen.append(("finished", len(sent)))

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield seen
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)
    asyncio.run(sync_to_async(connections.close_all, thread_sensitive=True)())


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Token {key}"}


def test_an_ordinary_response_crosses_to_the_synchronous_thread_once(token, sent, crossings, fired):  # noqa: F811
    status, body = asyncio.run(call("/api/v1/jobs/", auth(token), sent))
    assert status == 200 and json.loads(body)["results"] == []
    assert crossings == ["respond"]
    assert fired == [("started", 0), ("finished", 0)]  # closed before sending: its content was whole


def test_a_streaming_response_is_closed_after_its_last_part(token, make_users, sent, crossings, fired):  # noqa: F811
    make_users(3)
    job = job_start(user_ids=["u001", "u002", "u003"], enqueue=False)
    job_mark_running(job.id)
    job_drain(job.id)
    status, body = asyncio.run(call("/api/v1/events/export.jsonl", auth(token), sent))
    assert status == 200
    users = {json.loads(line)["user_id"] for line in body.decode().splitlines()}
    assert sorted(users) == ["u001", "u002", "u003"]
    assert sent[-1] == {"type": "http.response.body"}  # the end of the body
    assert fired == [("started", 0), ("finished", len(sent))]
    assert crossings[0] == "respond" and crossings[-1] == "close"


def test_a_stream_whose_sending_fails_is_closed_all_the_same(token, make_users, sent, crossings, fired):  # noqa: F811
    job = job_start(user_ids=make_users(2), extractor="test", enqueue=False)
    path = f"/api/v1/jobs/{job.id}/stream/"
    with pytest.raises(OSError, match="the connection broke"):
        asyncio.run(call(path, auth(token), sent, breaks=True))
    assert sent[0]["status"] == 200 and len(sent) == 1
    assert crossings[-1] == "close"
    assert fired == [("started", 0), ("finished", 1)]


def test_a_stream_ends_when_its_client_disconnects(token, make_users, sent, crossings, fired):  # noqa: F811
    job = job_start(user_ids=make_users(2), extractor="test", enqueue=False)

    async def watch_then_leave():
        client: asyncio.Queue = asyncio.Queue()
        watching = asyncio.create_task(call(f"/api/v1/jobs/{job.id}/stream/", auth(token), sent, client))
        async with asyncio.timeout(20):
            while not any(b"event: progress" in message.get("body", b"") for message in sent):
                await asyncio.sleep(0.01)
        client.put_nowait({"type": "http.disconnect"})
        async with asyncio.timeout(10):  # the job is still queued: only the disconnect ends the stream
            return await watching

    status, _ = asyncio.run(watch_then_leave())
    assert status == 200
    assert crossings[0] == "respond" and crossings[-1] == "close"
    assert [name for name, _ in fired] == ["started", "finished"]
