"""Admin logins are throttled against password guessing (django-axes)."""

import pytest
from django.contrib.auth.models import User

pytestmark = pytest.mark.django_db


def login(client, username: str, password: str):
    return client.post("/admin/login/?next=/admin/", {"username": username, "password": password})


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
