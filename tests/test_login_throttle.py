"""Admin logins are throttled against password guessing (django-axes), per client address: behind
the proxies in TRUSTED_PROXIES the address they forward, never one a client writes itself."""

import ipaddress

import pytest
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db
BALANCER = {"REMOTE_ADDR": "10.0.0.5"}  # a load balancer in TRUSTED_PROXIES


def login(client, username: str, password: str, **headers):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password}, **headers)


def test_after_too_many_wrong_passwords_even_the_right_one_is_refused(client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    User.objects.create_superuser("boss", "boss@example.com", "right-password")
    User.objects.create_superuser("other", "other@example.com", "other-password")
    for _ in range(2):
        response = login(client, "boss", "guess")
        assert (
            response.status_code == 200 and "Please enter the correct username" in response.content.decode()
        )
    assert login(client, "boss", "guess").status_code == 429  # the third failure locks
    locked = login(client, "boss", "right-password")
    assert locked.status_code == 429
    assert "_auth_user_id" not in client.session
    assert "locked" in locked.content.decode().lower()
    # Another account is not locked out by someone guessing this one.
    assert login(client, "other", "other-password").status_code == 302


def test_a_successful_login_forgets_earlier_failures(client, settings):
    settings.AXES_FAILURE_LIMIT = 3
    User.objects.create_superuser("boss", "boss@example.com", "right-password")
    login(client, "boss", "guess")
    login(client, "boss", "guess")
    assert login(client, "boss", "right-password").status_code == 302
    client.logout()
    login(client, "boss", "guess")
    login(client, "boss", "guess")
    assert login(client, "boss", "right-password").status_code == 302


@pytest.fixture
def behind_a_balancer(settings):
    settings.AXES_FAILURE_LIMIT = 3
    settings.TRUSTED_PROXIES = [ipaddress.ip_network("10.0.0.0/24")]
    User.objects.create_superuser("admin", "admin@example.com", "right-password")


def test_behind_a_trusted_load_balancer_one_guesser_does_not_lock_out_everyone(client, behind_a_balancer):
    for _ in range(3):
        locked = login(client, "admin", "guess", HTTP_X_FORWARDED_FOR="198.51.100.7", **BALANCER)
    assert locked.status_code == 429
    assert (
        login(client, "admin", "right-password", HTTP_X_FORWARDED_FOR="198.51.100.7", **BALANCER).status_code
        == 429
    )
    # Another client behind the same balancer logs in.
    assert (
        login(client, "admin", "right-password", HTTP_X_FORWARDED_FOR="198.51.100.8", **BALANCER).status_code
        == 302
    )


def test_a_client_cannot_pick_its_address_with_a_header_of_its_own(client, behind_a_balancer):
    # Straight to the server, not through a trusted proxy: its header is ignored.
    for n in range(3):
        login(client, "admin", "guess", HTTP_X_FORWARDED_FOR=f"198.51.100.{n}", REMOTE_ADDR="203.0.113.9")
    fresh = {"HTTP_X_FORWARDED_FOR": "198.51.100.99", "REMOTE_ADDR": "203.0.113.9"}
    assert login(client, "admin", "right-password", **fresh).status_code == 429
    # Through the balancer, what the client wrote before the address the balancer saw is ignored too.
    for n in range(3):
        login(client, "admin", "guess", HTTP_X_FORWARDED_FOR=f"192.0.2.{n}, 198.51.100.7", **BALANCER)
    forged = {"HTTP_X_FORWARDED_FOR": "192.0.2.200, 198.51.100.7", **BALANCER}
    assert login(client, "admin", "right-password", **forged).status_code == 429


def test_the_client_is_found_past_a_chain_of_trusted_proxies():
    from django.test import RequestFactory, override_settings

    from eventproject.proxies import client_address

    chain = {"REMOTE_ADDR": "10.0.0.5", "HTTP_X_FORWARDED_FOR": "192.0.2.1, 198.51.100.7, 10.0.0.9"}
    with override_settings(TRUSTED_PROXIES=[ipaddress.ip_network("10.0.0.0/24")]):
        assert client_address(RequestFactory().get("/", **chain)) == "198.51.100.7"
        garbage = {**chain, "HTTP_X_FORWARDED_FOR": "nonsense, 10.0.0.9"}
        assert client_address(RequestFactory().get("/", **garbage)) == "10.0.0.9"
    assert client_address(RequestFactory().get("/", **chain)) == "10.0.0.5"  # no trusted proxies
