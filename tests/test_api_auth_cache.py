"""Each web process remembers an API token's user and permissions for API_AUTH_CACHE_SECONDS, so a
poll costs no query for who is asking: a revoked token, a deactivated account or a removed
permission stops working within that delay, not at once (the README says so)."""

import pytest
from django.contrib.auth.models import Group
from rest_framework.authtoken.models import Token

pytestmark = pytest.mark.django_db

JOBS = "/api/v1/jobs/"


@pytest.fixture
def clock(monkeypatch, settings):
    """The auth cache's clock, moved by hand; entries live 5 s."""
    settings.API_AUTH_CACHE_SECONDS = 5
    now = [1000.0]
    monkeypatch.setattr("eventproject.api.clock", lambda: now[0])

    def advance(seconds: float) -> None:
        now[0] += seconds

    return advance


def test_a_deleted_token_stops_working_within_the_delay(api, clock):
    client = api("viewer")
    assert client.get(JOBS).status_code == 200
    Token.objects.all().delete()
    clock(4.9)
    assert client.get(JOBS).status_code == 200  # remembered: the documented delay
    clock(0.2)
    assert client.get(JOBS).status_code == 401


def test_a_removed_permission_stops_working_within_the_delay(api, personas, clock):
    client = api("viewer")
    assert client.get(JOBS).status_code == 200
    personas["viewer"].groups.remove(Group.objects.get(name="viewers"))
    clock(4.9)
    assert client.get(JOBS).status_code == 200
    clock(0.2)
    assert client.get(JOBS).status_code == 403


def test_a_deactivated_account_stops_working_within_the_delay(api, personas, clock):
    client = api("viewer")
    assert client.get(JOBS).status_code == 200
    personas["viewer"].is_active = False
    personas["viewer"].save(update_fields=["is_active"])
    clock(5.1)
    assert client.get(JOBS).status_code == 401


def test_with_no_delay_a_revocation_holds_at_the_next_request(api, personas, settings):
    settings.API_AUTH_CACHE_SECONDS = 0
    client = api("viewer")
    assert client.get(JOBS).status_code == 200
    personas["viewer"].groups.clear()
    assert client.get(JOBS).status_code == 403
    Token.objects.all().delete()
    assert client.get(JOBS).status_code == 401


def test_an_unknown_token_is_never_remembered(api, personas, clock):
    client = api(None)
    client.credentials(HTTP_AUTHORIZATION="Token " + "0" * 40)
    assert client.get(JOBS).status_code == 401
    Token.objects.create(user=personas["viewer"], key="0" * 40)
    assert client.get(JOBS).status_code == 200


def test_a_remembered_token_costs_no_query_for_its_user_or_permissions(api, clock, django_assert_num_queries):
    client = api("viewer")
    client.get("/api/v1/schedules/")
    with django_assert_num_queries(0):  # a request reading nothing
        assert client.get("/api/v1/jobs/999/cancel/").status_code == 405
