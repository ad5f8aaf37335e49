"""Which errors count as the infrastructure going away (eventproject.outages), and what that costs
a process at its start."""

import os
import sqlite3
import subprocess
import sys

import psycopg
import redis
from django import db

from eventproject.outages import is_outage
from tests.cluster import ROOT


def raised_from(cause: BaseException) -> Exception:
    try:
        try:
            raise cause
        except BaseException as exc:
            raise RuntimeError("the chunk stopped") from exc
    except RuntimeError as outer:
        return outer


def test_lost_connections_of_every_client_are_outages_even_raised_from():
    for error in (
        db.OperationalError("server closed the connection unexpectedly"),
        sqlite3.OperationalError("database is locked"),
        psycopg.OperationalError("connection refused"),
        psycopg.InterfaceError("the connection is closed"),
        redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379"),
        redis.TimeoutError("Timeout reading from socket"),
        ConnectionResetError(),
    ):
        assert is_outage(error), error
        assert is_outage(raised_from(error)), error


def test_the_works_own_errors_are_not_outages_and_a_cycle_ends():
    assert not is_outage(None)
    assert not is_outage(ValueError("bad data"))
    assert not is_outage(db.IntegrityError("duplicate key"))
    assert not is_outage(redis.ResponseError("WRONGTYPE"))
    looped = ValueError("a")
    looped.__cause__ = ValueError("b")
    looped.__cause__.__cause__ = looped
    assert not is_outage(looped)


def test_on_sqlite_a_process_starts_without_loading_the_postgresql_and_redis_clients():
    """Every cluster, web worker and command sets Django up; the clients it does not use cost
    each of them 0.08 s of CPU at start."""
    environment = {**os.environ, "DJANGO_SETTINGS_MODULE": "eventproject.settings", "DEBUG": "1"}
    environment.pop("DATABASE_URL", None)
    environment.pop("REDIS_URL", None)
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, django; django.setup(); print(sorted({'psycopg', 'redis'} & set(sys.modules)))",
        ],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert loaded.strip() == "[]"
