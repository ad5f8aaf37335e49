"""The progress endpoint's 304: answered from one small query, and never once something it shows
has changed (a claim moves no counter of the job, yet changes `running` and the users shown)."""

import pytest
from django.db.models import F

from extraction.extractors import make_extractor
from jobs.models import Job, JobItem
from jobs.progress import job_progress, job_progress_state
from jobs.services import job_cancel, job_start
from jobs.transitions import job_mark_running
from jobs.worker.chunk import process_one_chunk
from jobs.worker.claims import chunk_claim

pytestmark = pytest.mark.django_db


@pytest.fixture
def job(make_users):
    make_users(6)
    job = job_start(
        user_ids=[f"u00{i}" for i in range(1, 7)],
        extractor="test",
        chunk_size=2,
        enqueue=False,
        options={"error": "bad", "permanent": True, "fail_users": ["u003"]},
    )
    job_mark_running(job.id)
    job.refresh_from_db()
    return job


def _commit_one_chunk(job):
    process_one_chunk(job, make_extractor("test", job.options))


def _claim(job):
    chunk_claim(job)


def _retryable_failure(job):
    """The running chunk back to pending, as a retryable error does: no counter of the job moves."""
    JobItem.objects.filter(job=job, status="running").update(status="pending", claim_token=None)


def _cancel(job):
    job_cancel(job)


def _tokens(job):
    Job.objects.filter(id=job.id).update(prompt_tokens=F("prompt_tokens") + 7)


def _error(job):
    Job.objects.filter(id=job.id).update(error="the LLM endpoint rejected the API key")


CHANGES = [_commit_one_chunk, _claim, _retryable_failure, _cancel, _tokens, _error]


def _progress(client, job, etag=None):
    headers = {"HTTP_IF_NONE_MATCH": etag} if etag else {}
    return client.get(f"/api/v1/jobs/{job.id}/progress/", **headers)


@pytest.mark.parametrize("change", CHANGES, ids=lambda change: change.__name__.strip("_"))
def test_it_answers_200_with_a_new_etag_after_any_change_it_shows(api, job, change):
    client = api("reader")
    _commit_one_chunk(job)  # some succeeded and failed users, so top errors show
    _claim(job)  # and some running ones
    first = _progress(client, job)
    assert _progress(client, job, first["ETag"]).status_code == 304
    change(job)
    changed = _progress(client, job, first["ETag"])
    assert changed.status_code == 200
    assert changed["ETag"] != first["ETag"]
    assert changed.json() != first.json()
    assert _progress(client, job, changed["ETag"]).status_code == 304


def test_the_cheap_state_and_the_full_progress_have_one_tag_in_every_state(job):
    def same_tag():
        job.refresh_from_db()
        _, state = job_progress_state(job.id)
        return state.tag() == job_progress(job).tag()

    assert same_tag()
    _claim(job)
    assert same_tag()
    _commit_one_chunk(job)
    assert same_tag()
    job_cancel(job)  # cancelling, a chunk still running
    assert same_tag()


def test_a_304_costs_one_query_and_a_change_two(api, job, django_assert_num_queries):
    client = api("reader")
    _commit_one_chunk(job)
    _claim(job)
    etag = _progress(client, job)["ETag"]
    # The job with its running items: the token's user and permissions are remembered
    # (API_AUTH_CACHE_SECONDS; tests/test_api_auth_cache.py).
    with django_assert_num_queries(1):
        assert _progress(client, job, etag).status_code == 304
    _commit_one_chunk(job)
    # … then throughput (and top errors once a user failed): the running items came with the job
    with django_assert_num_queries(2):
        assert _progress(client, job, etag).status_code == 200


def test_if_none_match_is_compared_weakly_and_in_lists(api, job):
    client = api("reader")
    etag = _progress(client, job)["ETag"]
    assert etag.startswith('W/"')
    assert _progress(client, job, etag.removeprefix("W/")).status_code == 304
    assert _progress(client, job, f'"other", {etag}').status_code == 304
    assert _progress(client, job, '"other"').status_code == 200
    assert api("reader").get("/api/v1/jobs/999/progress/", HTTP_IF_NONE_MATCH=etag).status_code == 404
