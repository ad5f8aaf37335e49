"""What /healthz and /status check. Each check returns a dict with "ok" and, when not ok, "error"
saying what is wrong in words an operator can act on.

Two questions, two audiences:

- /healthz, for a load balancer: can *this web process* serve requests (the database reachable,
  every migration applied, static files collected when DEBUG is off)? Nothing about clusters or the
  broker: a cluster outage must not take the web server out of service, since the admin and the
  API are how operators see what is wrong.
- /status, for monitoring and alerts: the same, plus the broker (Redis, when it is one) and the task
  clusters' heartbeats.

Each costs a handful of small queries (and a Redis round trip or two): fine to ask every second.
"""

import re
from functools import cache
from typing import Any, cast

import redis
from django.conf import settings
from django.contrib.staticfiles.storage import staticfiles_storage
from django.core.cache import caches
from django.db import DatabaseError, connection
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django_q.conf import Conf
from django_q.signing import BadSignature, SignedPackage
from django_q.status import Stat

# A cluster rewrites its heartbeat every half second and keeps it for 3 s (django-q2's guard loop).
ALIVE_STATUSES = {str(Conf.STARTING), str(Conf.WORKING), str(Conf.IDLE)}
REDIS_TIMEOUT_SECONDS = 1.0


UNCHECKED = {"ok": False, "error": "not checked: the database is unreachable"}


def health_report() -> dict[str, Any]:
    """/healthz: whether this web process can serve.
    {"status": "ok" | "failing", "errors": [...], "checks": {name: {"ok": ..., ...}}}
    Anyone may ask it: what the database driver said (its host, port, user) stays out."""
    return _report(_serving_checks(), details=False)


def status_report() -> dict[str, Any]:
    """/status: what /healthz checks, plus the broker and the clusters (same shape)."""
    checks = _serving_checks()
    if settings.REDIS_URL:
        checks["broker"] = broker_check()
    checks["cluster"] = cluster_check() if checks["database"]["ok"] or settings.REDIS_URL else UNCHECKED
    return _report(checks)


def _serving_checks() -> dict[str, dict[str, Any]]:
    checks = {"database": database_check()}
    checks["migrations"] = migrations_check() if checks["database"]["ok"] else UNCHECKED
    if not settings.DEBUG:
        checks["static_files"] = static_files_check()
    return checks


def _report(checks: dict[str, dict[str, Any]], *, details: bool = True) -> dict[str, Any]:
    """The report; `details`: with what the driver said about a failure (/status, which only the
    monitoring may ask), else without it."""
    if not details:
        checks = {name: {k: v for k, v in check.items() if k != "detail"} for name, check in checks.items()}
    errors = [
        f"{name}: {check['error']}" + (f": {check['detail']}" if "detail" in check else "")
        for name, check in checks.items()
        if not check["ok"]
    ]
    return {"status": "failing" if errors else "ok", "errors": errors, "checks": checks}


def database_check() -> dict[str, Any]:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except DatabaseError as exc:
        return {"ok": False, "error": "cannot reach the database", "detail": _safe(exc)}
    return {"ok": True, "vendor": connection.vendor}


@cache
def migrations_on_disk() -> frozenset[tuple[str, str]]:
    """The latest migration of every app, as this code ships them (read once per process: the code
    cannot change under a running process)."""
    return frozenset(MigrationLoader(None, ignore_no_migrations=True).graph.leaf_nodes())


def migrations_check() -> dict[str, Any]:
    try:
        applied = set(MigrationRecorder.Migration.objects.values_list("app", "name"))
    except DatabaseError as exc:
        return {"ok": False, "error": "cannot read the applied migrations", "detail": _safe(exc)}
    missing = sorted(f"{app}.{name}" for app, name in migrations_on_disk() - applied)
    if missing:
        return {"ok": False, "error": f"not applied (run manage.py migrate): {', '.join(missing)}"}
    return {"ok": True}


def static_files_check() -> dict[str, Any]:
    """With DEBUG off, pages name static files by the manifest collectstatic writes; without it
    every admin page fails."""
    if getattr(staticfiles_storage, "hashed_files", True):
        return {"ok": True}
    return {
        "ok": False,
        "error": f"no static files manifest in {settings.STATIC_ROOT}: run manage.py collectstatic "
        "and restart the web server",
    }


def broker_check() -> dict[str, Any]:
    try:
        _redis().ping()
    except redis.RedisError as exc:
        return {"ok": False, "error": f"cannot reach Redis: {_safe(exc)}"}
    return {"ok": True}


def cluster_check() -> dict[str, Any]:
    try:
        stats = cluster_stats()
    except (DatabaseError, redis.RedisError) as exc:
        return {"ok": False, "error": f"cannot read the clusters' heartbeats: {_safe(exc)}"}
    alive = [stat for stat in stats if str(stat.status) in ALIVE_STATUSES]
    if not alive:
        return {
            "ok": False,
            "alive": 0,
            "error": f"no task cluster named {Conf.PREFIX!r} has been seen alive in the last 3 s "
            "(start one: manage.py qcluster)",
        }
    return {"ok": True, "alive": len(alive)}


def cluster_stats() -> list[Stat]:
    """The live heartbeats of every cluster, read without writing anything: from Redis when it is
    the broker, else from the database cache that django-q2 writes them to (settings.Q_CLUSTER)."""
    if settings.REDIS_URL:
        client = _redis()
        keys = list(client.scan_iter(match=f"{Conf.Q_STAT}:*", count=1000))
        packs = client.mget(keys) if keys else []
    else:
        stats_cache = caches[Conf.CACHE]
        keys = stats_cache.get(Conf.Q_STAT) or []
        packs = list(stats_cache.get_many(keys).values())
    stats = []
    for pack in packs:
        if pack:
            try:
                stats.append(SignedPackage.loads(pack))
            except BadSignature:  # another SECRET_KEY: not one of ours
                continue
    return stats


@cache
def _redis() -> redis.Redis:
    """One client per process, with short timeouts: a hung Redis must not hang the health check."""
    return redis.Redis.from_url(
        cast(str, settings.REDIS_URL),  # called only when REDIS_URL is set
        socket_timeout=REDIS_TIMEOUT_SECONDS,
        socket_connect_timeout=REDIS_TIMEOUT_SECONDS,
    )


def _safe(exc: Exception) -> str:
    """The error's first line, with any password in a URL masked: health answers are public."""
    text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"(\w+://[^:/@\s]*:)[^@\s]*@", r"\1***@", text)[:300]
