"""The admin's file of user ids: capped before it is read, counted the way the API counts."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from jobs.models import Job

pytestmark = pytest.mark.django_db


def start_with_file(client, content: bytes):
    upload = SimpleUploadedFile("ids.txt", content)
    return client.post("/admin/jobs/job/add/", {"extractor": "rules", "who": "file", "users_file": upload})


def file_errors(response) -> list[str]:
    return response.context["form"].errors.get("users_file", [])


def test_a_body_over_the_cap_is_refused_before_anything_reads_it(client, personas, settings):
    settings.UPLOAD_MAX_BYTES = 10_000
    client.force_login(personas["operator"])
    # It claims 10 GB but holds 5 bytes: reading it at all would fail the test client's payload.
    response = client.generic(
        "POST",
        "/admin/jobs/job/add/",
        b"12345",
        content_type="multipart/form-data; boundary=x",
        CONTENT_LENGTH="10000000000",
    )
    assert response.status_code == 302 and response["Location"] == "/admin/jobs/job/add/"
    page = client.get(response["Location"]).content.decode()
    assert "The request is larger than 0.01 MB (UPLOAD_MAX_BYTES); nothing was read." in page
    assert not Job.objects.exists()


def test_the_api_refuses_an_oversized_body_with_413(api, settings):
    settings.UPLOAD_MAX_BYTES = 10_000
    response = api().post("/api/v1/jobs/", {"user_ids": ["u" * 100] * 200}, format="json")
    assert response.status_code == 413
    assert "UPLOAD_MAX_BYTES" in response.json()["detail"]


def test_the_admin_and_the_api_count_ids_alike(client, api, personas, make_users, settings):
    settings.JOBS_MAX_USER_IDS = 3
    make_users(3)
    four = ["u001", "u001", "u002", "u003"]  # a duplicate counts, as in the API
    refused = api().post("/api/v1/jobs/", {"user_ids": four}, format="json")
    assert refused.status_code == 400
    assert refused.json() == {
        "user_ids": ["4 user ids; at most 3 per job (JOBS_MAX_USER_IDS). Split the list."]
    }
    client.force_login(personas["operator"])
    response = start_with_file(client, ("user_id\n" + "\n".join(four) + "\n").encode())
    assert any("More than 3 user ids (4 so far)" in error for error in file_errors(response))
    pasted = client.post(
        "/admin/jobs/job/add/", {"extractor": "rules", "who": "list", "user_ids": " ".join(four)}
    )
    assert any("More than 3 user ids" in error for error in pasted.context["form"].errors["user_ids"])
    assert not Job.objects.exists()
    # Three ids (with a duplicate) pass both ways.
    assert api().post("/api/v1/jobs/", {"user_ids": four[:3]}, format="json").status_code == 201
    Job.objects.all().update(status="completed")
    from jobs.models import JobItem

    JobItem.objects.all().update(status="succeeded")
    assert start_with_file(client, "\n".join(four[:3]).encode()).status_code == 302


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"u001\n" + b"x" * 129 + b"\n", "Line 2: a user id longer than 128 characters."),
        (b"u001\nu\xff\xfe02\n", "Line 2 is not UTF-8 text."),
        (b"# nothing\n\n", "The file holds no user ids."),
    ],
)
def test_a_bad_file_is_refused_naming_the_line(client, personas, make_users, content, message):
    make_users(1)
    client.force_login(personas["operator"])
    assert message in file_errors(start_with_file(client, content))
    assert not Job.objects.exists()
