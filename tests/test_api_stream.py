import json

import pytest

from jobs.services import job_start
from jobs.worker.drain import job_drain

pytestmark = pytest.mark.django_db


def parse(chunks):
    """Server-Sent Events from raw chunks: [(event, data)]."""
    events = []
    for block in "".join(c.decode() if isinstance(c, bytes) else c for c in chunks).split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if ": " in line and not line.startswith(":")
        )
        if "event" in fields:
            events.append((fields["event"], json.loads(fields["data"])))
    return events


def test_the_stream_pushes_progress_until_the_job_ends(api, make_users, settings):
    make_users(3)
    job = job_start(user_ids=["u001", "u002", "u003"], enqueue=False)
    response = api("reader").get(f"/api/v1/jobs/{job.id}/stream/", HTTP_ACCEPT="text/event-stream")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/event-stream"
    stream = iter(response.streaming_content)
    head = [next(stream), next(stream)]  # the retry hint, then the first progress
    job_drain(job.id)  # the job runs and ends while the client listens
    events = parse(head + list(stream))
    assert [name for name, _ in events] == ["progress", "progress", "end"]
    assert events[0][1]["status"] == "queued" and events[0][1]["pending"] == 3
    assert events[1][1]["status"] == "completed" and events[1][1]["succeeded"] == 3
    assert events[2][1] == {"id": job.id, "status": "completed"}


def test_the_stream_of_a_finished_job_ends_at_once(api, make_users):
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    job_drain(job.id)
    response = api("reader").get(f"/api/v1/jobs/{job.id}/stream/")
    assert [name for name, _ in parse(response.streaming_content)] == ["progress", "end"]


def test_the_stream_needs_a_login_and_a_job(api):
    assert api(None).get("/api/v1/jobs/1/stream/", HTTP_ACCEPT="text/event-stream").status_code == 401
    assert api("reader").get("/api/v1/jobs/999/stream/", HTTP_ACCEPT="text/event-stream").status_code == 404
