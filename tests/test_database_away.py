"""While the database is away, the web server says so: a 503 with Retry-After naming the outage,
never a 500 (nothing was lost; the client may try again), and /healthz tells the load balancer."""

import json

import pytest

pytestmark = pytest.mark.integration

NOBODY_LISTENS = "postgres://postgres@127.0.0.1:9/eventproject"  # the discard port: refused at once


def test_requests_meeting_a_database_that_is_away_are_answered_503_saying_so(web_server):
    server = web_server(DATABASE_URL=NOBODY_LISTENS)
    status, headers, body = server.get("/api/v1/jobs/1/progress/", {"Authorization": "Token abc"})
    assert (status, headers["retry-after"]) == (503, "5")
    assert json.loads(body) == {
        "detail": "The database cannot be reached right now; nothing was lost. Try again in a moment."
    }
    status, _, body = server.get("/healthz")
    assert status == 503
    assert json.loads(body)["checks"]["database"]["ok"] is False
