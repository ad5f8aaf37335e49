"""Which errors mean that the infrastructure went away (the database, the broker, the network),
as opposed to an error about the work itself.

An outage is nobody's fault: work it interrupts is put back without using an attempt, counts
toward no fail-fast streak, and waits for the infrastructure to return. Everything else (a bug, a
constraint violated, bad data, an extractor's error) is the work's own error and counts.
"""

import socket
import sqlite3

import psycopg
import redis
from django import db

OUTAGES: tuple[type[BaseException], ...] = (
    # A lost or refused connection, a restarted server, "database is locked", an idle session
    # ended by the server, a deadlock: each passes if tried again later.
    db.OperationalError,
    db.InterfaceError,
    # Raised past Django's wrappers (a COPY, a raw psycopg or sqlite3 call).
    psycopg.OperationalError,
    psycopg.InterfaceError,
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
    redis.ConnectionError,
    redis.TimeoutError,
    # The network itself: resets, refusals, timeouts, names that do not resolve for now.
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)


def is_outage(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from (`raise … from`), is an outage."""
    for _ in range(20):  # a chain is short; a cycle must not hang a worker
        if exc is None:
            return False
        if isinstance(exc, OUTAGES):
            return True
        exc = exc.__cause__
    return False
