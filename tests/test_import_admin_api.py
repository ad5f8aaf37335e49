"""Imports from the screen and from the API: an operator uploads a file in the admin, the API and the
admin show its progress and report, to those allowed to see them."""

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from extraction.imports import import_create, import_run
from extraction.models import DataImport

pytestmark = pytest.mark.django_db

CSV = (
    b"user_id,action,timestamp,item_id,app_id,media_id,poi_id,duration\n"
    b"u1,browse,2024-06-01 10:00:00,P7,,,,5\n"
    b"u1,browse,yesterday,P7,,,,5\n"
    b"u2,purchase,2024-06-01 11:00:00,P7,,,,\n"
)


@pytest.fixture(autouse=True)
def imports_dir(settings, tmp_path):
    settings.IMPORTS_DIR = tmp_path / "imports"
    return settings.IMPORTS_DIR


def test_an_operator_uploads_a_file_and_it_is_queued_for_the_cluster(
    client, personas, django_capture_on_commit_callbacks
):
    client.force_login(personas["operator"])
    assert "Behaviours (a log" in client.get("/admin/extraction/dataimport/add/").content.decode()
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = client.post(
            "/admin/extraction/dataimport/add/",
            {
                "kind": "behaviors",
                "upload": SimpleUploadedFile("log.csv", CSV),
                "encoding": "utf-8-sig",
                "timezone": "Asia/Shanghai",
            },
        )
    data_import = DataImport.objects.get()
    assert response.status_code == 302
    assert response["Location"] == f"/admin/extraction/dataimport/{data_import.id}/change/"
    assert (
        data_import.kind,
        data_import.status,
        data_import.file_format,
        data_import.created_by.username,
    ) == ("behaviors", "queued", "csv", "operator")
    assert len(callbacks) == 1  # the task is enqueued once the row is committed
    page = client.get(response["Location"]).content.decode()
    assert 'id="import-progress"' in page and 'role="progressbar"' in page


@pytest.mark.parametrize(
    ("data", "field", "message"),
    [
        ({"upload": SimpleUploadedFile("log.txt", CSV)}, "file_format", "Cannot tell the format"),
        (
            {"upload": SimpleUploadedFile("log.csv", CSV), "timezone": "Mars/Olympus"},
            "timezone",
            "Unknown time zone",
        ),
        ({}, "upload", "This field is required."),
    ],
)
def test_a_bad_upload_is_refused_on_its_field(client, personas, data, field, message):
    client.force_login(personas["operator"])
    response = client.post(
        "/admin/extraction/dataimport/add/",
        {"kind": "behaviors", "encoding": "utf-8-sig", "timezone": "UTC", **data},
    )
    assert response.status_code == 200
    assert any(message in error for error in response.context["form"].errors[field])
    assert not DataImport.objects.exists()


def test_a_file_over_the_upload_limit_is_refused_before_it_is_read(client, personas, settings):
    settings.UPLOAD_MAX_BYTES = 10_000
    client.force_login(personas["operator"])
    response = client.post(
        "/admin/extraction/dataimport/add/",
        {"kind": "behaviors", "upload": SimpleUploadedFile("log.csv", CSV * 400), "timezone": "UTC"},
    )
    assert response.status_code == 302 and response["Location"] == "/admin/extraction/dataimport/add/"
    assert not DataImport.objects.exists()


@pytest.mark.parametrize("persona", ["viewer", "analyst", "nobody"])
def test_only_those_allowed_may_upload_or_see_imports_in_the_admin(client, personas, persona):
    client.force_login(personas[persona])
    assert client.get("/admin/extraction/dataimport/add/").status_code == 403
    assert client.get("/admin/extraction/dataimport/").status_code == 403


def test_the_api_shows_an_imports_progress_and_report(api):
    data_import = import_create(kind="behaviors", upload=SimpleUploadedFile("log.csv", CSV))
    queued = api("operator").get(f"/api/v1/imports/{data_import.id}/").json()
    assert (queued["status"], queued["percent"], queued["report"]) == ("queued", 0.0, [])
    import_run(data_import.id)
    body = api("operator").get(f"/api/v1/imports/{data_import.id}/").json()
    assert body["status"] == "completed" and body["percent"] == 100.0
    assert body["summary"] == "behaviors: read 3, imported 2, updated 0, duplicates 0, rejected 1"
    assert body["report"] == ["log.csv:3: unparseable timestamp 'yesterday'"]
    assert body["errors"] == [{"line": 3, "reason": "unparseable timestamp 'yesterday'"}]
    listing = api("operator").get("/api/v1/imports/").json()
    assert [row["id"] for row in listing["results"]] == [data_import.id]


@pytest.mark.parametrize(
    ("persona", "status"), [(None, 401), ("nobody", 403), ("viewer", 403), ("analyst", 403)]
)
def test_the_import_endpoints_need_the_permission_to_view_imports(api, persona, status):
    data_import = import_create(kind="behaviors", upload=SimpleUploadedFile("log.csv", CSV))
    assert api(persona).get(f"/api/v1/imports/{data_import.id}/").status_code == status
    assert api(persona).get("/api/v1/imports/").status_code == status


def test_an_unknown_import_is_404(api):
    assert api("operator").get("/api/v1/imports/999/").status_code == 404
    assert api("operator").get("/api/v1/imports/99999999999999999999/").status_code == 404
