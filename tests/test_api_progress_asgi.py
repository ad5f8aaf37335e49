"""Conditional polls of /progress/ on the production server (uvicorn workers) are answered from the
process's feed of the job, the one its streams read: a 304 costs no query, and a change is answered
200 with the new body by every poll that starts a poll interval after it committed."""

import http.client
import json
import time

import pytest
from rest_framework.authtoken.models import Token

from extraction.extractors import make_extractor
from jobs.services import job_start
from jobs.transitions import job_mark_running
from jobs.worker.chunk import process_one_chunk
from tests.cluster import wait_for
from tests.test_api_stream_asgi import gauge

pytestmark = pytest.mark.django_db(transaction=True)

POLL_SECONDS = 0.3


class Poller:
    """Polls one job's progress on one keep-alive connection."""

    def __init__(self, server, job_id: int, token: str):
        self.connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=20)
        self.path, self.token = f"/api/v1/jobs/{job_id}/progress/", token

    def get(self, etag: str = "") -> tuple[int, str, dict | None]:
        headers = {"Authorization": f"Token {self.token}", **({"If-None-Match": etag} if etag else {})}
        self.connection.request("GET", self.path, headers=headers)
        response = self.connection.getresponse()
        body = response.read()
        return response.status, response.getheader("ETag"), json.loads(body) if body else None


def test_polls_are_answered_from_the_feed_and_a_change_within_a_poll_interval(
    web_server, personas, make_users
):
    make_users(4)
    job = job_start(user_ids=["u001", "u002", "u003", "u004"], extractor="test", chunk_size=2, enqueue=False)
    job_mark_running(job.id)
    job.refresh_from_db()
    server = web_server(WEB_CONCURRENCY="1", API_STREAM_POLL_SECONDS=str(POLL_SECONDS))
    poller = Poller(server, job.id, Token.objects.create(user=personas["reader"]).key)
    status, etag, first = poller.get()
    assert status == 200 and first["processed"] == 0
    # Polls start a feed of the job in the web process (no stream is open) and get 304 from it.
    wait_for(
        lambda: poller.get(etag)[0] == 304 and gauge(server, "progress_feeds") == 1,
        timeout=10,
        what="a feed serving the polls",
    )

    process_one_chunk(job, make_extractor("test", job.options))  # two users done, committed
    committed = time.monotonic()
    changed = False
    while True:
        started = time.monotonic()
        status, new_etag, body = poller.get(etag)
        if started - committed >= POLL_SECONDS:
            break
        assert status in (200, 304)
        assert not (changed and status == 304), "a 304 for the old copy after a 200 for the new one"
        changed = changed or status == 200
    assert status == 200, "a poll a poll interval after the change still answered 304"
    assert body["processed"] == 2 and new_etag != etag
    assert poller.get(new_etag)[0] == 304
