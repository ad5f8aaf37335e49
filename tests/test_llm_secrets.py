"""Secrets never leave the server: credentials in OPENAI_BASE_URL, the API key and the provider's
response bodies (which echo them here, as careless providers do) reach no job or item error, no
API answer, no admin page, no command output and no log line. Errors say what happened."""

import base64
import logging
import socket

import pytest
from django.core.management import CommandError

from jobs.models import Job
from jobs.services import job_start
from jobs.worker.drain import job_drain
from tests.fake_openai import API_KEY

pytestmark = pytest.mark.django_db(transaction=True)
USER, PASSWORD, QUERY_KEY = "alice", "PSECRET-456", "QSECRET-123"


def with_credentials(base_url: str, *, userinfo: bool = False, query: bool = False) -> str:
    scheme, rest = base_url.split("://")
    url = f"{scheme}://{USER}:{PASSWORD}@{rest}" if userinfo else base_url
    return f"{url}?api-key={QUERY_KEY}" if query else url


SECRETS = [
    PASSWORD,
    QUERY_KEY,
    f"{USER}:",
    base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
    API_KEY,
    "Incorrect API key provided",  # the provider's own words
    "You sent me",
]


def assert_nothing_leaks(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, f"{secret!r} leaked into: {text[:300]!r}"


def everything_shown(job: Job, api, client, personas, caplog) -> list[str]:
    """Every place a job's outcome is shown: rows, API, admin pages, log lines."""
    job.refresh_from_db()
    client.force_login(personas["admin"])
    return [
        job.error,
        *job.items.values_list("error", flat=True),
        api("admin").get(f"/api/v1/jobs/{job.id}/").content.decode(),
        api("admin").get(f"/api/v1/jobs/{job.id}/items/").content.decode(),
        api("admin").get("/api/v1/events/extract/progress").content.decode(),
        client.get(f"/admin/jobs/job/{job.id}/change/").content.decode(),
        client.get(f"/admin/jobs/jobitem/?job={job.id}").content.decode(),
        client.get("/admin/extraction/extractionstate/").content.decode(),
        caplog.text,
    ]


@pytest.fixture
def quick(settings, make_users, caplog):
    settings.EXTRACTION_LLM_MAX_RETRIES = 1
    caplog.set_level(logging.DEBUG)
    make_users(2)


def one_user_job(llm_server, settings, answers: list[str]):
    """An LLM job over u001 alone, one attempt, drained here against the fake server (credentials in
    its URL's query) giving these answers."""
    settings.OPENAI_BASE_URL = with_credentials(llm_server.url, query=True)
    llm_server.script.extend(answers)
    job = job_start(user_ids=["u001"], extractor="llm", max_attempts=1, enqueue=False)
    job_drain(job.id)
    return job


def test_credentials_in_the_query_are_sent_but_never_shown(
    llm_server, settings, quick, api, client, personas, caplog
):
    job = one_user_job(llm_server, settings, ["500"] * 10)
    assert llm_server.requests[0]["query"] == {"api-key": QUERY_KEY}  # it is used
    assert list(job.items.values_list("error", flat=True)) == [
        "the LLM endpoint kept failing; gave up after 2 attempts (last: HTTP 500, a server error)"
    ]
    assert_nothing_leaks(*everything_shown(job, api, client, personas, caplog))


def test_a_reply_repeating_the_request_is_not_quoted(
    llm_server, settings, quick, api, client, personas, caplog
):
    job = one_user_job(llm_server, settings, ["echo"] * 3)
    (error,) = job.items.values_list("error", flat=True)
    assert error.startswith("the model's answer for this user was unusable: the reply")
    assert_nothing_leaks(*everything_shown(job, api, client, personas, caplog))


def test_a_rejected_login_in_the_url_fails_the_job_in_plain_words(
    llm_server, settings, quick, api, client, personas, caplog
):
    settings.OPENAI_BASE_URL = with_credentials(llm_server.url, userinfo=True, query=True)
    job = job_start(extractor="llm", enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    assert job.status == "failed"
    assert job.error == (
        "the LLM endpoint rejected the API key (HTTP 401); check OPENAI_API_KEY on the workers"
    )
    assert llm_server.requests[0]["authorization"].startswith("Basic ")  # the URL's login was used
    assert_nothing_leaks(*everything_shown(job, api, client, personas, caplog))


def test_an_unknown_model_names_the_endpoint_without_its_credentials(llm_server, settings, quick, run):
    settings.OPENAI_BASE_URL = with_credentials(llm_server.url, query=True)
    with pytest.raises(CommandError) as failed:
        run(
            "extract", "--users", "u001", "--extractor", "llm", "--options", '{"model": "gpt-nope"}', "--sync"
        )
    job = Job.objects.get()
    assert job.error == (
        f"the LLM endpoint at {llm_server.url} does not know model 'gpt-nope' (HTTP 404); "
        f"check EXTRACTION_LLM_MODEL or the job's model option"
    )
    assert_nothing_leaks(job.error, str(failed.value))


def test_an_unreachable_endpoint_is_named_without_its_credentials(llm_server, settings, quick, run, caplog):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.OPENAI_BASE_URL = with_credentials(f"http://127.0.0.1:{port}/v1", userinfo=True, query=True)
    out, err = run("extract", "--users", "u001", "--extractor", "llm", "--max-attempts", "1", "--sync")
    (error,) = Job.objects.get().items.values_list("error", flat=True)
    assert error == (
        "the LLM endpoint kept failing; gave up after "
        f"2 attempts (last: could not connect to http://127.0.0.1:{port}/v1)"
    )
    assert_nothing_leaks(error, out, err, caplog.text)


def test_a_refused_request_does_not_quote_the_provider(llm_server, settings, quick):
    job = one_user_job(llm_server, settings, ["400"] * 3)
    (error,) = job.items.values_list("error", flat=True)
    assert error == "the LLM endpoint refused the request (HTTP 400)"
