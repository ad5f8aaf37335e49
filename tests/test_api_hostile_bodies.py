"""Hostile JSON bodies on the API's writes: numbers beyond any float or 64 bits, NUL and unpaired
surrogates (PostgreSQL stores neither), nesting a hundred thousand levels deep. Each is a 400
naming the field, whichever endpoint reads it, never a 500 from deep inside a write."""

import json

import pytest
from django.core.exceptions import ValidationError

from extraction.extractors import make_extractor
from jobs.models import Job
from jobs.services import job_cancel, job_start

pytestmark = pytest.mark.django_db

HUGE = "1" + "0" * 400  # a 400-digit integer, as JSON text
DEEP = "[" * 100_000 + "]" * 100_000


def post(client, url: str, body: str):
    return client.post(url, data=body, content_type="application/json")


@pytest.fixture
def cancelled_job(make_users):
    make_users(1)
    job = job_start(user_ids=["u001"], enqueue=False)
    job_cancel(job)
    return job


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ('{"extractor": "llm", "options": {"temperature": ' + HUGE + "}}", "options.temperature", "64 bits"),
        ('{"extractor": "llm", "options": {"temperature": 1e400}}', "options.temperature", "finite"),
        (
            '{"extractor": "llm", "options": {"max_total_tokens": ' + HUGE + "}}",
            "options.max_total_tokens",
            "64",
        ),
        ('{"extractor": "llm", "options": {"model": "gpt\\u0000"}}', "options.model", "NUL"),
        ('{"extractor": "llm", "options": {"model": "gpt\\ud800"}}', "options.model", "surrogate"),
        ('{"extractor": "llm", "options": {"model": "\\udfff-4o"}}', "options.model", "surrogate"),
        ('{"user_ids": ["u001", "u\\u0000"]}', "user_ids[1]", "NUL"),
        ('{"extractor": "rules\\ud83d"}', "extractor", "surrogate"),
        ('{"extractor": "test", "options": {"calls_file\\u0000": ""}}', "options", "NUL"),
        ('{"user_ids": ' + DEEP + "}", "user_ids", "nested deeper than 32 levels"),
        ('{"options": {"a": ' + ("[" * 40 + "]" * 40) + "}}", "options", "nested deeper than 32 levels"),
    ],
)
def test_a_start_with_what_cannot_be_stored_is_a_400_naming_the_field(api, make_users, body, field, reason):
    make_users(1)
    response = post(api("operator"), "/api/v1/jobs/", body)
    assert response.status_code == 400, response.content[:300]
    errors = response.json()
    assert list(errors) == [field], errors
    assert reason in errors[field][0]
    assert not Job.objects.exists()


def test_a_body_that_is_itself_too_deep_is_a_400_saying_so(api):
    response = post(api("operator"), "/api/v1/jobs/", DEEP)
    assert response.status_code == 400
    assert response.json() == {"detail": "nested deeper than 32 levels (API_MAX_JSON_DEPTH)"}


@pytest.mark.parametrize("charset", ["rot13", "base64"])  # codecs Python knows, not of text
def test_a_body_in_a_charset_that_is_not_text_is_a_400(api, charset):
    response = api("operator").post(
        "/api/v1/jobs/", data="{}", content_type=f"application/json; charset={charset}"
    )
    assert response.status_code == 400
    assert response.json() == {"detail": f"JSON parse error - unknown charset {charset!r}"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"max_total_tokens": ' + HUGE + "}", "max_total_tokens"),
        ('{"max_total_tokens": ' + DEEP + "}", "max_total_tokens"),
        (DEEP, None),
    ],
)
def test_a_resume_with_a_hostile_body_is_a_400(api, cancelled_job, body, field):
    response = post(api("operator"), f"/api/v1/jobs/{cancelled_job.id}/resume/", body)
    assert response.status_code == 400, response.content[:300]
    assert list(response.json()) == [field or "detail"]
    cancelled_job.refresh_from_db()
    assert cancelled_job.status == "cancelled"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ('{"user_ids": ' + DEEP + "}", "user_ids: nested deeper than 32 levels"),
        ('{"user_ids": ["u\\u0000"]}', "user_ids[0]: NUL characters are not allowed"),
    ],
)
def test_the_predecessors_start_answers_a_hostile_body_in_its_envelope(api, make_users, body, message):
    make_users(1)
    response = post(api("operator"), "/api/v1/events/extract/start", body)
    assert response.status_code == 400
    assert response.json()["code"] == 400 and response.json()["message"].startswith(message)
    assert not Job.objects.exists()


def test_well_formed_bodies_still_start_jobs(api, make_users):
    make_users(2)
    body = json.dumps({"user_ids": ["u001", "u002"], "extractor": "test", "options": {"error": "上海 ✓"}})
    assert post(api("operator"), "/api/v1/jobs/", body).status_code == 201


@pytest.mark.parametrize(
    ("options", "field", "reason"),
    [
        ({"temperature": 10**400}, "options.temperature", "from 0 to 2"),
        ({"model": "gpt\x00"}, "options.model", "NUL"),
        ({"model": "gpt\ud800"}, "options.model", "surrogate"),
        ({"timeout": float("nan")}, "options.timeout", "from 1 to 3600"),
    ],
)
def test_options_from_the_admin_or_a_command_are_cleaned_the_same_way(options, field, reason):
    with pytest.raises(ValidationError) as refused:
        make_extractor("llm", options)
    assert list(refused.value.message_dict) == [field]
    assert reason in refused.value.message_dict[field][0]


def test_an_option_without_limits_is_still_a_storable_number():
    with pytest.raises(ValidationError) as refused:
        make_extractor("test", {"seconds_per_user": float("inf")})
    assert refused.value.message_dict == {"options.seconds_per_user": ["must be a finite number"]}


def test_a_start_of_the_most_ids_a_job_takes_is_read_whatever_its_size(api, make_users, settings):
    """100,000 ids of 40 characters are a 4.3 MB body, within UPLOAD_MAX_BYTES: read and answered
    by the API like any other (here naming the unknown users), not refused as an HTML 400 by
    Django's own 2.5 MB limit on bodies."""
    ids = [f"{n:040d}" for n in range(settings.JOBS_MAX_USER_IDS)]
    body = json.dumps({"user_ids": ids})
    assert 2_621_440 < len(body) < settings.UPLOAD_MAX_BYTES
    response = post(api("operator"), "/api/v1/jobs/", body)
    assert (response.status_code, response["Content-Type"]) == (400, "application/json")
    assert "unknown users" in response.json()["user_ids"][0]


def test_the_admins_start_form_takes_the_most_ids_a_job_takes(client, personas, settings):
    client.force_login(personas["operator"])
    pasted = "\n".join(f"{n:040d}" for n in range(settings.JOBS_MAX_USER_IDS))
    response = client.post("/admin/jobs/job/add/", {"extractor": "rules", "who": "list", "user_ids": pasted})
    assert response.status_code == 200  # the form again, saying why
    assert "unknown users" in response.content.decode()
