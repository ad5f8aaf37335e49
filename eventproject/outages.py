"""Which errors mean that the infrastructure went away (the database, the broker, the network),
as opposed to an error about the work itself.

An outage is nobody's fault: work it interrupts is put back without using an attempt, counts
toward no fail-fast streak, and waits for the infrastructure to return. Everything else (a bug, a
constraint violated, bad data, an extractor's error) is the work's own error and counts.
"""

import socket
import sqlite3
import sys

from django import db

OUTAGES: tuple[type[BaseException], ...] = (
    # A lost or refused connection, a restarted server, "database is locked", an idle session
    # ended by the server, a deadlock: each passes if tried again later.
    db.OperationalError,
    db.InterfaceError,
    # Raised past Django's wrappers (a raw sqlite3 call; psycopg's and Redis's: CLIENT_OUTAGES).
    sqlite3.OperationalError,
    sqlite3.InterfaceError,
    # The network itself: resets, refusals, timeouts, names that do not resolve for now.
    ConnectionError,
    TimeoutError,
    socket.gaierror,
)
# The same from client libraries, raised past Django's wrappers (a COPY, the Redis broker). Each
# counts once something has imported its library, as none of its errors exists before. Importing
# them here cost every process on SQLite and the ORM broker 0.08 s of CPU at start, for nothing.
CLIENT_OUTAGES = {
    "psycopg": ("OperationalError", "InterfaceError"),
    "redis": ("ConnectionError", "TimeoutError"),
}


def is_outage(exc: BaseException | None) -> bool:
    """Whether `exc`, or an error it was raised from (`raise … from`), is an outage."""
    outages = OUTAGES + tuple(
        getattr(library, name)
        for module, names in CLIENT_OUTAGES.items()
        if (library := sys.modules.get(module)) is not None
        for name in names
    )
    for _ in range(20):  # a chain is short; a cycle must not hang a worker
        if exc is None:
            return False
        if isinstance(exc, outages):
            return True
        exc = exc.__cause__
    return False
