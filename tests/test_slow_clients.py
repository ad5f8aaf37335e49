"""Clients that send or read slowly, against the production web server (gunicorn with uvicorn
workers, as deploy/eventproject-web.service runs it): a body over UPLOAD_MAX_BYTES is refused
before it is read, and an export whose client stops reading holds no database connection nor
thread meanwhile, and is closed after WEB_SEND_TIMEOUT."""

import json
import select
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from django.db import connection
from rest_framework.authtoken.models import Token

from eventproject.api import BODY_THREADS
from extraction.extractors import EventDraft, UserInput, make_extractor
from extraction.models import UserProfile
from extraction.services import Outcome, extraction_results_save
from tests.cluster import test_database_url as database_url
from tests.cluster import wait_for
from tests.servers import session_cookie

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
LIMIT = 100_000  # the servers' UPLOAD_MAX_BYTES here
APPLICATION = "ep-slow-clients-test"  # the servers' database connections, in pg_stat_activity


class RawClient:
    """An HTTP/1.1 client on a plain socket, which sends and reads exactly when told."""

    def __init__(self, port: int, *, receive_buffer: int | None = None):
        self.socket = socket.socket()
        if receive_buffer:  # a small window: the server's sends block soon after the client stops reading
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.socket.connect(("127.0.0.1", port))
        self.received = b""

    def send(self, data: bytes) -> None:
        self.socket.sendall(data)

    def answered(self, timeout: float = 0) -> bool:
        """Whether the server has said something (or closed)."""
        return bool(select.select([self.socket], [], [], timeout)[0])

    def read_until_closed(self, timeout: float = 30) -> bytes:
        self.socket.settimeout(timeout)
        try:
            while chunk := self.socket.recv(65536):
                self.received += chunk
        except ConnectionResetError:
            pass  # closed with data of ours unread: what was received before stays
        return self.received

    def read_head(self) -> bytes:
        """The status line and headers (and whatever came with them)."""
        self.socket.settimeout(30)
        while b"\r\n\r\n" not in self.received:
            chunk = self.socket.recv(4096)
            assert chunk, f"closed before the headers: {self.received!r}"
            self.received += chunk
        return self.received.split(b"\r\n\r\n", 1)[0]

    def read_chunked_body(self, timeout: float = 60) -> bytes:
        """The rest of a chunked response (after read_head), until its last chunk, de-chunked."""
        self.socket.settimeout(timeout)
        while not self.received.endswith(b"\r\n0\r\n\r\n"):
            chunk = self.socket.recv(1 << 20)
            assert chunk, "closed before the last chunk"
            self.received += chunk
        rest, body = self.received.split(b"\r\n\r\n", 1)[1], []
        while True:
            size, rest = rest.split(b"\r\n", 1)
            if int(size, 16) == 0:
                return b"".join(body)
            body.append(rest[: int(size, 16)])
            rest = rest[int(size, 16) + 2 :]

    def close(self) -> None:
        self.socket.close()


def status_and_body(response: bytes) -> tuple[int, bytes]:
    head, _, body = response.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_a_body_declared_over_the_limit_is_refused_before_it_is_sent(web_server):
    server = web_server(UPLOAD_MAX_BYTES=str(LIMIT))
    client = RawClient(server.port)
    try:
        client.send(
            b"POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: 314572800\r\n\r\n" + b"[" * 16_384
        )  # 300 MiB announced, 16 KiB sent: the rest never comes
        assert client.answered(timeout=10), "no answer without the body: the server waits to read it all"
        status, body = status_and_body(client.read_until_closed())
    finally:
        client.close()
    assert status == 413
    assert json.loads(body) == {
        "detail": "The request is larger than 0.1 MB (UPLOAD_MAX_BYTES); nothing was read."
    }


def test_a_chunked_body_is_cut_off_with_413_once_past_the_limit(web_server):
    server = web_server(UPLOAD_MAX_BYTES=str(LIMIT))
    client = RawClient(server.port)
    sent = 0
    try:
        client.send(
            b"POST /api/v1/jobs/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        piece = b" " * 8192
        while not client.answered(timeout=0.02):  # slowly, looking for an answer between pieces
            assert sent < 50 * LIMIT, f"sent {sent:,} bytes without an answer: the body is read whole"
            client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            sent += len(piece)
        status, body = status_and_body(client.read_until_closed())
    finally:
        client.close()
    assert status == 413 and b"UPLOAD_MAX_BYTES" in body
    assert LIMIT < sent < 4 * LIMIT  # answered soon after the limit was passed


def test_an_admin_upload_declared_over_the_limit_gets_its_form_back_with_the_message(web_server, personas):
    server = web_server(UPLOAD_MAX_BYTES=str(LIMIT))
    client = RawClient(server.port)
    try:
        client.send(
            b"POST /admin/jobs/job/add/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Cookie: " + session_cookie(personas["admin"]).encode() + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=x\r\nContent-Length: 314572800\r\n\r\n--x\r\n"
        )
        assert client.answered(timeout=10)
        response = client.read_until_closed()
    finally:
        client.close()
    assert status_and_body(response)[0] == 302
    assert b"\r\nlocation: /admin/jobs/job/add/\r\n" in response.lower()


@pytest.fixture
def big_export(personas):
    """About 12 MB of events as JSON Lines (more than the socket buffers between a server and a
    client hold), and a token that may export them."""
    drafts = [
        EventDraft("browse_model", "engagement", "浏览车型", T0, T0, [1], {"model": "P7", "note": "x" * 400})
    ] * 100
    users = [UserInput(f"s{i:04d}", {}, 1, []) for i in range(200)]
    UserProfile.objects.bulk_create([UserProfile(user_id=user.user_id) for user in users])
    extraction_results_save(
        outcomes=[Outcome(user.user_id, user, drafts) for user in users], extractor=make_extractor("rules")
    )
    return Token.objects.create(user=personas["reader"]).key


T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)


def stalled_export(server, token: str) -> RawClient:
    """An export whose client reads its headers, then nothing more."""
    client = RawClient(server.port, receive_buffer=4096)
    client.send(
        b"GET /api/v1/events/export.jsonl HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Authorization: Token " + token.encode() + b"\r\n\r\n"
    )
    assert b" 200 " in client.read_head()
    return client


def server_connections() -> int:
    """Database connections the web server holds now (PostgreSQL; by their application name)."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [APPLICATION])
        return cursor.fetchone()[0]


def threads_of(server) -> int:
    """Threads of the server's one worker process."""
    (worker,) = [
        int(pid)
        for pid in (Path("/proc") / str(server.process.pid) / "task" / str(server.process.pid) / "children")
        .read_text()
        .split()
    ]
    return len(list((Path("/proc") / str(worker) / "task").iterdir()))


def test_stalled_exports_hold_no_database_connection_nor_thread(web_server, big_export):
    postgresql = connection.vendor == "postgresql"
    url = database_url() + (f"?application_name={APPLICATION}" if postgresql else "")
    server = web_server(WEB_CONCURRENCY="1", DATABASE_URL=url)
    status, _, body = server.get("/api/v1/events/export.jsonl", {"Authorization": f"Token {big_export}"})
    assert status == 200 and body.count(b"\n") == 20_000 and len(body) > 10_000_000
    threads_before = threads_of(server)

    clients = [stalled_export(server, big_export) for _ in range(6)]
    try:
        seen_connections, seen_threads = [], []
        deadline = time.monotonic() + 3  # six stalled exports, watched for three seconds
        while time.monotonic() < deadline:
            seen_threads.append(threads_of(server))
            if postgresql:
                seen_connections.append(server_connections())
            time.sleep(0.1)
        # Old design: a thread and a connection per stalled export (7 here), held for ever. Now
        # the process's synchronous thread and its BODY_THREADS, however many exports (and a
        # session a body thread just closed, which PostgreSQL may list a moment beside the next).
        assert max(seen_threads) <= threads_before + 1, (threads_before, seen_threads)
        assert max(seen_connections, default=0) <= 1 + BODY_THREADS._max_workers + 1, seen_connections
        if postgresql:  # once every export waits on its client: none but the synchronous thread's
            wait_for(lambda: server_connections() <= 1, timeout=30, what="the exports to stall")
        # A stalled export goes on where it was when its client reads again, and is whole.
        assert clients[0].read_chunked_body() == body
    finally:
        for client in clients:
            client.close()


def test_an_export_whose_client_reads_nothing_is_closed_after_the_send_timeout(web_server, big_export):
    server = web_server(WEB_CONCURRENCY="1", WEB_SEND_TIMEOUT="2")
    client = stalled_export(server, big_export)
    try:
        wait_for(
            lambda: "the client read nothing" in server.output(),
            timeout=30,
            what="the server to give up on the export",
        )
        received = client.read_until_closed()
    finally:
        client.close()
    assert not received.endswith(b"0\r\n\r\n")  # cut off: never a truncated export passed off as whole
    assert len(received) < 10_000_000
    assert "WEB_SEND_TIMEOUT" in server.output()
