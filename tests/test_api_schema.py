"""The OpenAPI schema describes every endpoint, and the API keeps to it under a property-based fuzz:
every endpoint (the predecessor's and the stream too), authenticated, one call at a time and in
sequences that follow the schema's links (a started job's id to its progress, cancel, retry…)."""

import json
import re

import pytest
import schemathesis
from django.core import signals
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from drf_spectacular.renderers import OpenApiJsonRenderer
from hypothesis import HealthCheck, settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from extraction.imports import import_create, import_run
from jobs.models import Job, Schedule
from jobs.schedules import schedule_create, schedules_run_due
from jobs.services import job_start

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_the_schema_is_valid_and_documents_every_endpoint(client, admin_token):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", "/dev/null")
    response = client.get(
        "/api/schema/",
        HTTP_ACCEPT="application/vnd.oai.openapi+json",
        HTTP_AUTHORIZATION=f"Token {admin_token}",
    )
    schema = json.loads(response.content)
    assert set(schema["paths"]) == {
        "/api/v1/jobs/",
        "/api/v1/jobs/{id}/",
        "/api/v1/jobs/{id}/progress/",
        "/api/v1/jobs/{id}/stream/",
        "/api/v1/jobs/{id}/items/",
        "/api/v1/jobs/{id}/cancel/",
        "/api/v1/jobs/{id}/resume/",
        "/api/v1/jobs/{id}/retry-failed/",
        "/api/v1/users/{user_id}/",
        "/api/v1/users/{user_id}/events/",
        "/api/v1/events/",
        "/api/v1/events/export.csv",
        "/api/v1/events/export.jsonl",
        "/api/v1/events/extract/start",
        "/api/v1/events/extract/progress",
        "/api/v1/events/extract",
        "/api/v1/imports/",
        "/api/v1/imports/{id}/",
        "/api/v1/schedules/",
        "/api/v1/schedules/{id}/",
        "/api/v1/schedules/{id}/runs/",
    }
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            assert operation.get("summary"), f"{method} {path} has no summary"
            assert {"401"} <= set(operation["responses"]), f"{method} {path} does not document 401"


def test_format_json_answers_the_schema_in_json(client, admin_token):
    auth = {"HTTP_AUTHORIZATION": f"Token {admin_token}"}
    response = client.get("/api/schema/?format=json", **auth)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    assert json.loads(response.content)["openapi"] == "3.1.0"
    assert client.get("/api/schema/?format=yaml", **auth).content.startswith(b"openapi: 3.1.0")
    assert client.get("/api/schema/", **auth).content.startswith(b"openapi: 3.1.0")  # YAML by default
    assert client.get("/api/schema/?format=xml", **auth).status_code == 404


def test_the_schema_and_the_docs_need_a_login(client, personas):
    assert client.get("/api/schema/").status_code == 401
    response = client.get("/api/docs/")
    assert response.status_code == 302 and response["Location"] == "/admin/login/?next=/api/docs/"
    client.force_login(personas["nobody"])  # any account: the API's permissions guard the data
    assert client.get("/api/schema/?format=json").status_code == 200
    assert client.get("/api/docs/").status_code == 200


def test_the_schema_counts_as_a_read(client, personas, settings):
    """Building it costs 50 to 200 ms of the server's time: it was the one read with no budget."""
    settings.API_READ_RATE = "2/minute"
    client.force_login(personas["nobody"])
    codes = [client.get("/api/schema/?format=json").status_code for _ in range(3)]
    assert codes == [200, 200, 429]


def test_the_docs_page_loads_swagger_ui_from_this_server_only(client, personas):
    client.force_login(personas["viewer"])
    html = client.get("/api/docs/").content.decode()
    sources = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert any(source.endswith("swagger-ui-bundle.js") for source in sources), html
    assert all(source.startswith("/static/") for source in sources), sources
    assert "cdn" not in html.lower() and "//unpkg" not in html and "https://" not in html


@pytest.fixture
def admin_token(db, personas):
    return Token.objects.create(user=personas["admin"]).key


@pytest.fixture
def data(db, make_users, failing_job, settings, tmp_path):
    """Something behind the endpoints: users, a finished job with a failure, a queued job, an import
    that rejected a row, a schedule that ran once."""
    settings.API_WRITE_RATE = settings.API_READ_RATE = settings.API_EXPORT_RATE = "100000/minute"
    settings.API_STREAM_MAX_SECONDS, settings.API_STREAM_POLL_SECONDS = 0.3, 0.05  # a stream ends soon
    make_users(5)
    failing_job(["u001", "u002"], ["u002"])
    job_start(user_ids=["u003"], enqueue=False)
    settings.IMPORTS_DIR = tmp_path / "imports"
    upload = SimpleUploadedFile("p.csv", "user_id,城市\nu009,上海\n,x\n".encode())
    import_run(import_create(kind="profiles", upload=upload).id)
    schedule = schedule_create(name="nightly", cron="0 3 * * *")
    Schedule.objects.filter(id=schedule.id).update(next_run_at=timezone.now())
    schedules_run_due()  # a run, with its job
    # Requests go through the WSGI app: keep it from closing the test's connection, as Django's
    # own test client does.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def served_schema() -> dict:
    """The schema /api/schema/ serves (which needs a login, and the database is not there yet at
    collection), generated and rendered the same way."""
    document = OpenApiJsonRenderer().render(SchemaGenerator().get_schema(request=None, public=True), None, {})
    return json.loads(document)


# Loaded at collection (settings are ready then; the schema needs no database).
schema = schemathesis.openapi.from_dict(served_schema())
schema.app, schema.location = get_wsgi_application(), "/api/schema/"
QUIET = [HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.filter_too_much]


def test_every_endpoint_is_fuzzed(db):
    fuzzed = {(op.ok().method.upper(), op.ok().path) for op in schema.get_all_operations()}
    assert len(fuzzed) == 26 and ("GET", "/api/v1/jobs/{id}/stream/") in fuzzed


@schema.parametrize()
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=QUIET)
def test_the_api_never_fails_nor_breaks_its_schema(case, data, admin_token):
    case.call_and_validate(headers={"Authorization": f"Token {admin_token}"}, checks=CHECKS)


class Workflow(schema.as_state_machine()):
    """Calls chained along the schema's links, as the admin's token."""

    token = ""

    def get_call_kwargs(self, case):
        return {"headers": {"Authorization": f"Token {self.token}"}}

    def validate_response(self, response, case, additional_checks=None, **kwargs):
        case.validate_response(response, checks=CHECKS)


def test_sequences_along_the_links_never_fail_nor_break_the_schema(data, admin_token):
    Workflow.token = admin_token
    Workflow.run(
        settings=settings(
            max_examples=20,
            stateful_step_count=6,
            deadline=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
    )


def test_the_predecessors_refusals_answer_200_as_the_schema_says(data, admin_token, monkeypatch):
    """Code 1002 (users busy: no data) and 1003 (the job ended otherwise: its id) answer 200 too,
    states the fuzz does not reach."""
    from jobs.api import legacy
    from jobs.services import job_cancel

    operation = schema["/api/v1/events/extract"]["POST"]
    headers = {"Authorization": f"Token {admin_token}"}
    busy = operation.Case(body={"user_ids": ["u003"]}, media_type="application/json")  # in a job
    assert busy.call_and_validate(headers=headers, checks=CHECKS).json()["code"] == 1002
    for job in Job.objects.filter(status__in=Job.ACTIVE):
        job_cancel(job)  # every user free again
    monkeypatch.setattr(legacy, "job_run_here", job_cancel)  # it ends cancelled
    ended = operation.Case(body={"user_ids": ["u004"]}, media_type="application/json")
    assert ended.call_and_validate(headers=headers, checks=CHECKS).json()["code"] == 1003
