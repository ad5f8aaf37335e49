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

    from extraction.extractors import BehaviorRecord
    from extraction.services import behaviors_insert

    def make(count: int, *, behaviors: int = 2, prefix: str = "u") -> list[str]:
        ids = [f"{prefix}{i:03d}" for i in range(1, count + 1)]
        start = datetime(2024, 6, 1, tzinfo=UTC)
        behaviors_insert(
            [
                BehaviorRecord(
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
    """Throttle counts and stream slots live in the cache, API tokens' users in the process: each
    test starts with none."""
    from django.core.cache import cache

    from eventproject.api import auth_cache_clear

    cache.clear()
    auth_cache_clear()


@pytest.fixture(autouse=True)
def _no_llm_counts_from_earlier_tests(monkeypatch):
    """LLM calls are counted in memory and written at most once a second or when a chunk ends
    (extraction.llm_metrics): counts that a test calling the client directly left unwritten would
    otherwise land in a later test's database."""
    from extraction import llm_metrics

    monkeypatch.setattr(llm_metrics, "_gathered", llm_metrics._Gathered())


@pytest.fixture
def clusters(tmp_path):
    """clusters(**env) starts a real `manage.py qcluster` on the test database (its log in tmp_path;
    `namespace=ns`: inside that network namespace); every cluster started is stopped at the end, as
    a process manager stops one, but killed after 3 s rather than 30: its tasks stop at their next
    checkpoint, and one that does not (a chunk of slow test users) has nothing more to teach."""
    import contextlib

    import redis

    from tests.cluster import Cluster, stop_all

    started, queues = [], set()

    def start(*, namespace=None, **env: str):
        cluster = Cluster(tmp_path / f"cluster-{len(started)}.log", namespace=namespace, **env)
        started.append(cluster)
        if env.get("REDIS_URL") and env.get("Q_CLUSTER_NAME"):
            queues.add((env["REDIS_URL"], env["Q_CLUSTER_NAME"]))
        return cluster

    yield start
    stop_all(started, timeout=3)
    for url, name in queues:  # a stopped cluster's continuations, left in a Redis the test may not own
        with (
            contextlib.suppress(redis.RedisError),
            redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5) as client,
        ):
            if keys := list(client.scan_iter(f"django_q:{name}:*")):
                client.delete(*keys)


@pytest.fixture
def imports_dir(settings, tmp_path):
    """IMPORTS_DIR in tmp_path, where uploaded files are kept for the cluster."""
    settings.IMPORTS_DIR = tmp_path / "imports"
    return settings.IMPORTS_DIR


@pytest.fixture
def extract_claim():
    """extract_claim(claim, extractor) -> the claim's outcomes, as a worker would get them."""
    from extraction.services import chunk_extract

    def extract(claim, extractor):
        return chunk_extract(user_ids=claim.user_ids, extractor=extractor)

    return extract


def started_job(users: list[str], options: dict, **arguments):
    """A job of the test extractor (or arguments' extractor) over these users; nothing enqueued."""
    from jobs.services import job_start

    arguments.setdefault("extractor", "test")
    return job_start(user_ids=users, options=options, enqueue=False, **arguments)


def moved_job(step, users: list[str], options: dict, **arguments):
    """started_job, then moved on by `step(job_id)` in this process, and read back."""
    job = started_job(users, options, **arguments)
    step(job.id)
    job.refresh_from_db()
    return job


@pytest.fixture
def running_job():
    """running_job(user_ids, **options) -> a running job of the test extractor (chunks of 2, nothing
    enqueued: the test drives the engine itself). `job_start` arguments go in `start`."""
    from jobs.transitions import job_mark_running

    def start(users, *, start: dict | None = None, **options):
        return moved_job(job_mark_running, users, options, **{"chunk_size": 2, **(start or {})})

    return start


@pytest.fixture
def failing_job():
    """failing_job(users, failed, *, error="bad") -> a finished job of the test extractor over
    `users` in which the `failed` ones failed for good with `error` (drained in this process)."""
    from jobs.worker.drain import job_drain

    def finish(users: list[str], failed: list[str], *, error: str = "bad"):
        return moved_job(job_drain, users, {"error": error, "permanent": True, "fail_users": failed})

    return finish


@pytest.fixture
def expire_leases():
    """expire_leases(job): the job's running items' leases ran out a second ago (database clock)."""
    from eventproject.db import DatabaseNow
    from jobs.models import JobItem

    def expire(job) -> int:
        return JobItem.objects.filter(job_id=job.id, status="running").update(
            lease_expires_at=DatabaseNow(-1)
        )

    return expire


@pytest.fixture
def personas(db):
    """Accounts in the groups the migrations create (all staff, so they may use the admin):
    nobody (no group), viewer, analyst, operator, reader (analyst + viewer: reads everything,
    writes nothing), integrator (webhooks), and admin (a superuser)."""
    from importlib import import_module

    from django.contrib.auth.models import Group, Permission, User

    # The groups the migrations made; a transactional test's flush removes them, so make them again.
    grants: dict[str, list[str]] = {}
    for module in ("jobs.migrations.0006_import_permissions", "jobs.migrations.0014_schedule_permissions"):
        for name, perms in import_module(module).GRANTS.items():
            grants.setdefault(name, []).extend(perms)
    made_groups = {
        **import_module("jobs.migrations.0005_groups").GROUPS,
        **import_module("webhooks.migrations.0002_integrators").GROUPS,
    }
    for name, perms in made_groups.items():
        group, created = Group.objects.get_or_create(name=name)
        if created:
            group.permissions.set(
                Permission.objects.get(content_type__app_label=app, codename=codename)
                for app, codename in (perm.split(".") for perm in [*perms, *grants.get(name, [])])
            )
    groups = {
        "nobody": [],
        "viewer": ["viewers"],
        "analyst": ["analysts"],
        "operator": ["operators"],
        "reader": ["analysts", "viewers"],
        "integrator": ["integrators"],
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


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix) -> None:
    """No limit on how long this process's connection idles in a transaction: it holds each test's
    open for the whole test (pytest-django's wrapper), CPU-heavy steps included, which a busy machine
    stretches past the production limit (DATABASE_IDLE_TRANSACTION_SECONDS). The clusters and servers
    the tests start keep that limit."""
    import re

    from django.conf import settings

    options = settings.DATABASES["default"].get("OPTIONS", {})
    if "options" in options:
        unlimited = "idle_in_transaction_session_timeout=0"
        options["options"] = re.sub(r"idle_in_transaction_session_timeout=\S+", unlimited, options["options"])


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


@pytest.fixture(scope="session")
def static_root(tmp_path_factory, worker_id):
    """Static files collected as in production (DEBUG off: compressed, with hashed names), once a
    run: under pytest-xdist, the first worker to need them collects them into the run's folder
    while the others wait on a lock."""
    import fcntl
    import os
    import subprocess
    import sys

    from tests.servers import ROOT

    run_folder = tmp_path_factory.getbasetemp()
    if worker_id != "master":
        run_folder = run_folder.parent  # the workers' folders are in the run's
    root, done = run_folder / "static", run_folder / "static.done"
    with (run_folder / "static.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            subprocess.run(
                [sys.executable, "manage.py", "collectstatic", "--noinput", "-v", "0"],
                cwd=ROOT,
                env={**os.environ, "DEBUG": "0", "ALLOWED_HOSTS": "localhost", "STATIC_ROOT": str(root)},
                check=True,
            )
            done.touch()
    return root


@pytest.fixture
def web_server(transactional_db, tmp_path, static_root):
    """web_server(application="eventproject.asgi", **env) starts gunicorn as the deploy unit does
    (serving that application), DEBUG off, on the test database, with one worker process unless
    WEB_CONCURRENCY says more; every server started is stopped at the end."""
    from tests.servers import WebServer

    started = []

    def start(application: str = "eventproject.asgi", **env: str | None) -> WebServer:
        server = WebServer(
            tmp_path / f"web-{len(started)}.log",
            application=application,
            **{"STATIC_ROOT": str(static_root), **env},
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(autouse=True)
def _streams_in_this_process_unbounded(settings):
    """The test client never closes a stream it leaves unread, as a server does: each would keep a
    thread of access.thread_streams here. Servers the tests start keep their own WEB_THREADS."""
    settings.WEB_THREADS = 10_000


@pytest.fixture(autouse=True)
def _default_language_after_each_test():
    """A request that asked for Chinese leaves its language active in this thread (LocaleMiddleware
    never switches back): the next test starts in the default language again."""
    yield
    from django.utils import translation

    translation.deactivate()


def _beside(tmp_path, kind):
    """start(server) runs a `kind` (tests/servers.py) for that web server in a folder of its own;
    every one started is stopped at the end."""
    started = []

    def start(server):
        folder = tmp_path / f"{kind.__name__.lower()}-{len(started)}"
        folder.mkdir()
        started.append(kind(folder, server.port))
        return started[-1]

    yield start
    for each in started:
        each.stop()


@pytest.fixture
def nginx(tmp_path):
    """nginx(server) runs deploy/nginx.conf in front of that web server (tests/servers.py: Nginx)."""
    from tests.servers import Nginx

    yield from _beside(tmp_path, Nginx)


@pytest.fixture
def prometheus(tmp_path):
    """prometheus(server) runs a Prometheus scraping that web server every second (tests/servers.py:
    Prometheus)."""
    from tests.servers import Prometheus

    yield from _beside(tmp_path, Prometheus)


def _namespaces_of(request) -> list:
    """The test's network namespace, if it uses one: its servers must be reachable from it."""
    return (
        [request.getfixturevalue("network_namespace")] if "network_namespace" in request.fixturenames else []
    )


@pytest.fixture
def postgres_server(request):
    """A PostgreSQL server of this test's own (tests/own_servers.py: its own folder and port, fsync
    off), which the test may stop, restart or cut off; removed at the end. Reachable from the
    test's `network_namespace` if it has one."""
    from tests.own_servers import PostgresServer

    with PostgresServer(reachable_from=_namespaces_of(request)) as server:
        yield server


@pytest.fixture
def postgres_database(postgres_server, transactional_db):
    """The test's database on `postgres_server`, migrated, whatever the suite runs on: Django's
    connection and the clusters the test starts (`clusters`) use it, so the test may restart or
    stop the server under a job. Yields the server."""
    from tests.own_servers import django_database

    with django_database(postgres_server.create_database("eventproject")):
        yield postgres_server


@pytest.fixture
def redis_server(request):
    """A Redis server of this test's own on a free port (nothing saved: a restart loses every key),
    reachable from the test's `network_namespace` if it has one."""
    from tests.own_servers import RedisServer

    with RedisServer(reachable_from=_namespaces_of(request)) as server:
        yield server


@pytest.fixture
def network_namespace():
    """A network namespace joined to this machine via a router (tests/partition.py): a cluster in
    it with `clusters(namespace=ns)` (or any program: `ns.command(argv)`), `ns.cut()` drops every
    packet both ways silently, `ns.heal()`. The test's `postgres_server` / `postgres_database` and
    `redis_server` listen where it reaches them; an HTTP server of the test (the fake LLM's
    `httpd`) with `ns.listen_also(httpd)`. Needs root and iproute2; skipped without them, unless
    REQUIRE_NETNS=1 (CI), which fails instead."""
    from tests.partition import NetworkNamespace, namespaces_available
    from tests.tools import unavailable

    if why := namespaces_available():
        unavailable(why, required_by="REQUIRE_NETNS")  # fails the test where they are required
        pytest.skip(why)
    with NetworkNamespace() as ns:
        yield ns


@pytest.fixture
def receiver(settings):
    """A real webhook receiver on loopback (tests/receiver.py), with loopback receivers allowed;
    stopped at the end."""
    from tests.receiver import Receiver

    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = True
    running = Receiver()
    yield running
    running.stop()


@pytest.fixture
def endpoint(receiver):
    """endpoint(*events, **fields) -> (Endpoint, its secret), pointing at the receiver, wanting
    these event types (default: every one registered)."""
    from webhooks.event_types import event_types
    from webhooks.services import endpoint_create

    def make(*events: str, **fields):
        fields.setdefault("name", f"receiver {len(fields)}-{'-'.join(events) or 'all'}")
        fields.setdefault("url", receiver.url)
        return endpoint_create(events=list(events) or [kind.name for kind in event_types()], **fields)

    return make
