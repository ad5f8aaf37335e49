import io
from pathlib import Path

import pytest
from django.core.management import call_command


@pytest.fixture
def write_file(tmp_path: Path):
    """Write text (or bytes, as given) to a file under tmp_path and return its path."""

    def write(name: str, content: str | bytes, *, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
        return path

    return write


@pytest.fixture
def run():
    """Run a management command; returns (stdout, stderr)."""

    def run_command(*args: str, **options) -> tuple[str, str]:
        out, err = io.StringIO(), io.StringIO()
        call_command(*args, stdout=out, stderr=err, **options)
        return out.getvalue(), err.getvalue()

    return run_command


@pytest.fixture
def make_users():
    """Create users u001… with `behaviors` purchases each (one DB round trip per call)."""
    from datetime import UTC, datetime, timedelta

    from extraction.services import BehaviorRow, behaviors_insert

    def make(count: int, *, behaviors: int = 2, prefix: str = "u") -> list[str]:
        ids = [f"{prefix}{i:03d}" for i in range(1, count + 1)]
        start = datetime(2024, 6, 1, tzinfo=UTC)
        behaviors_insert(
            [
                BehaviorRow(
                    user_id, "purchase" if n == 0 else "browse", start + timedelta(minutes=n), item="P7"
                )
                for user_id in ids
                for n in range(behaviors)
            ]
        )
        return ids

    return make


@pytest.fixture(autouse=True)
def _fresh_cache():
    """Throttle counts and stream slots live in the cache: each test starts with none."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture
def personas(db):
    """Accounts in the groups the migration creates (all staff, so they may use the admin):
    nobody (no group), viewer, analyst, operator, reader (analyst + viewer: reads everything,
    writes nothing), and admin (a superuser)."""
    from django.contrib.auth.models import Group, User

    groups = {
        "nobody": [],
        "viewer": ["viewers"],
        "analyst": ["analysts"],
        "operator": ["operators"],
        "reader": ["analysts", "viewers"],
    }
    made = {}
    for name, group_names in groups.items():
        made[name] = User.objects.create_user(name, is_staff=True)  # no password: hashing is slow
        made[name].groups.set(Group.objects.filter(name__in=group_names))
    made["admin"] = User.objects.create_superuser("admin", "admin@example.com")
    return made


@pytest.fixture
def api(personas):
    """api(persona) -> an APIClient authenticated with that persona's token (None: anonymous)."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def client(persona: str | None = "operator") -> APIClient:
        api_client = APIClient()
        if persona:
            token, _ = Token.objects.get_or_create(user=personas[persona])
            api_client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return api_client

    return client


@pytest.fixture(scope="session", autouse=True)
def _stray_connections_closed(django_db_setup, django_db_blocker):
    """Before the test database is dropped, end connections left open by the live server's request
    threads (it lives for the whole session): PostgreSQL refuses to drop a database in use."""
    yield
    from django.db import connection

    if connection.vendor == "postgresql":
        with django_db_blocker.unblock(), connection.cursor() as cursor:
            cursor.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )


@pytest.fixture
def llm_server(settings, monkeypatch):
    """The fake OpenAI-compatible server, with the settings and key that point workers at it."""
    from tests.fake_openai import API_KEY, MODEL, FakeOpenAIServer

    with FakeOpenAIServer() as running:
        settings.OPENAI_BASE_URL = running.base_url
        settings.EXTRACTION_LLM_MODEL = MODEL
        settings.EXTRACTION_LLM_BACKOFF_SECONDS = 0.05
        monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
        running.fake.url = running.base_url
        yield running.fake
