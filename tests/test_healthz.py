"""GET /healthz, what a load balancer reads (can this web process serve?), and GET /status, what a
monitor alerts on (that, and the broker and the clusters). Heartbeats are written here the way
django-q2's clusters write them; tests/test_ops_live.py has the real clusters and servers."""

import uuid

import pytest
import redis
from django.core.cache import caches
from django.db.migrations.recorder import MigrationRecorder
from django_q.brokers import get_broker
from django_q.conf import Conf
from django_q.signing import SignedPackage
from django_q.status import Stat, Status

from ops import health

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_earlier_heartbeats():
    """No heartbeat left by a cluster of an earlier test (the cache table is not flushed), and a
    Redis client made with this test's REDIS_URL."""
    caches["cluster_stats"].clear()
    health._redis.cache_clear()
    yield
    health._redis.cache_clear()


@pytest.fixture
def heartbeat():
    """heartbeat(status) saves a cluster's heartbeat through django-q2's broker, as its guard does."""

    def beat(status=Conf.IDLE, *, broker=None) -> str:
        stat = Status(pid=1234, cluster_id=uuid.uuid4())
        stat.status = status
        (broker or get_broker()).set_stat(Stat.get_key(stat.cluster_id), SignedPackage.dumps(stat, True), 3)
        return Stat.get_key(stat.cluster_id)

    return beat


def test_healthz_answers_200_with_the_database_migrated_and_no_cluster_alive(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["errors"] == []
    assert set(body["checks"]) == {"database", "migrations", "static_files"}  # no cluster, no broker
    assert response["Cache-Control"].startswith("max-age=0")


def test_status_answers_200_when_the_database_is_migrated_and_a_cluster_is_alive(client, heartbeat):
    heartbeat()
    response = client.get("/status")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["errors"] == []
    assert body["checks"]["cluster"] == {"ok": True, "alive": 1}
    assert body["checks"]["database"]["ok"] and body["checks"]["migrations"]["ok"]
    assert response["Cache-Control"].startswith("max-age=0")


def test_status_answers_503_when_no_cluster_was_seen(client):
    response = client.get("/status")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "failing"
    assert body["errors"] == [
        "cluster: no task cluster named 'eventproject' has been seen alive in the last 3 s "
        "(start one: manage.py qcluster)"
    ]


@pytest.mark.parametrize("status", [Conf.STOPPING, Conf.STOPPED])
def test_a_cluster_that_is_stopping_does_not_count(client, heartbeat, status):
    heartbeat(status)
    assert client.get("/status").status_code == 503


def test_several_clusters_are_counted(client, heartbeat):
    heartbeat(Conf.WORKING)
    heartbeat(Conf.STARTING)
    heartbeat(Conf.STOPPED)
    assert client.get("/status").json()["checks"]["cluster"]["alive"] == 2


def test_a_heartbeat_signed_with_another_secret_key_is_ignored(client, heartbeat, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(Conf, "SECRET_KEY", "another deployment's key")
        heartbeat()
    assert client.get("/status").status_code == 503


def test_status_is_for_the_monitoring_networks_only_and_never_through_a_proxy(client, heartbeat):
    heartbeat()
    refused = client.get("/status", REMOTE_ADDR="10.1.2.3")
    assert refused.status_code == 403 and b"METRICS_ALLOWED_NETWORKS" in refused.content
    proxied = client.get("/status", HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert proxied.status_code == 403 and b"proxy" in proxied.content
    assert client.get("/healthz", REMOTE_ADDR="10.1.2.3").status_code == 200  # a load balancer's check


@pytest.mark.parametrize("url", ["/healthz", "/status"])
def test_it_names_unapplied_migrations(client, heartbeat, url):
    heartbeat()
    MigrationRecorder.Migration.objects.filter(app="ops", name="0002_cluster_stats_cache").delete()
    response = client.get(url)
    assert response.status_code == 503
    assert response.json()["errors"] == [
        "migrations: not applied (run manage.py migrate): ops.0002_cluster_stats_cache"
    ]


@pytest.mark.parametrize(("url", "queries"), [("/healthz", 2), ("/status", 4)])
def test_it_costs_a_few_small_queries(client, heartbeat, django_assert_max_num_queries, url, queries):
    heartbeat()
    client.get(url)  # the migrations on disk are read once per process
    with django_assert_max_num_queries(queries):
        assert client.get(url).status_code == 200


def test_with_redis_configured_it_reads_heartbeats_from_redis(client, heartbeat, settings):
    settings.REDIS_URL = "redis://127.0.0.1:6379/0"
    from django_q.brokers.redis_broker import Redis as RedisBroker

    key = heartbeat(broker=RedisBroker())
    try:
        body = client.get("/status").json()
        assert body["checks"]["broker"] == {"ok": True}
        assert body["checks"]["cluster"]["ok"]
    finally:
        redis.Redis.from_url(settings.REDIS_URL).delete(key)


def test_with_redis_unreachable_it_says_so_without_showing_its_password(client, heartbeat, settings):
    heartbeat()  # in the database: not where clusters on a Redis broker write
    settings.REDIS_URL = "redis://:s3cret-pw@127.0.0.1:1/0"
    response = client.get("/status")
    assert response.status_code == 503
    errors = response.json()["errors"]
    assert [error.split(":")[0] for error in errors] == ["broker", "cluster"]
    assert errors[0].startswith("broker: cannot reach Redis: ")
    assert b"s3cret" not in response.content
    assert client.get("/healthz").status_code == 200  # the web server itself can serve


def test_a_password_in_an_error_message_is_masked():
    error = Exception('connection to "postgres://app:hunter2@db:5432/x" failed\nDETAIL: more')
    assert health._safe(error) == 'connection to "postgres://app:***@db:5432/x" failed'
