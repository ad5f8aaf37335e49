"""Leases kept alive by time, not by progress: work that may go a long while between its own
checkpoints (a drain's chunks, an import's file with one slow line) renews its lease from a thread
of its own, so a healthy worker is never taken for a dead one."""

import logging
import threading
from collections.abc import Callable

from django.db import connection

from .db import connection_reset
from .outages import is_outage

logger = logging.getLogger(__name__)

RETRY_SECONDS = 1.0  # after a failed renewal, the next try comes this soon (on a fresh connection)


class LeaseKeeper:
    """Calls `renew()` every `interval` seconds from a background thread, with its own database
    connection, while the `with` block runs. `renew()` returns False once the lease is lost
    (another worker took the work over): `lost` is set and renewing stops. A failed renewal is
    tried again RETRY_SECONDS later on a fresh connection (a dropped connection, a restarted
    server), so one error does not let the lease lapse; the lease runs out only if the database
    stays away for longer than the lease itself.
    """

    def __init__(self, name: str, renew: Callable[[], bool], interval: float):
        self.name, self.renew, self.interval = name, renew, interval
        self.lost = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> "LeaseKeeper":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.thread.join()

    def _run(self) -> None:
        wait = self.interval
        try:
            while not self.stopping.wait(wait):
                try:
                    if not self.renew():
                        self.lost.set()
                        return
                    wait = self.interval
                except Exception as exc:  # a keeper that died silently would let the lease lapse
                    if is_outage(exc):
                        logger.warning("%s could not renew its lease (%s); retrying", self.name, exc)
                    else:
                        logger.exception("%s could not renew its lease; retrying", self.name)
                    connection_reset()
                    wait = min(RETRY_SECONDS, self.interval)
        finally:
            connection.close()
