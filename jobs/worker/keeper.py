"""A drain's keeper: its heartbeat and its chunks' leases, renewed by time from a thread of its own."""

import logging
import threading
import uuid

from django.conf import settings

from eventproject.db import DatabaseNow
from eventproject.leases import LeaseKeeper

from ..models import Drain, JobItem
from .claims import Claim
from .control import JobControl

logger = logging.getLogger(__name__)


def drain_beat_seconds() -> float:
    """How often a drain beats and extends its leases: three times within a lease and within the
    time after which a silent drain counts as dead."""
    return min(settings.JOBS_LEASE_SECONDS, settings.JOBS_DRAIN_STALE_SECONDS) / 3


class DrainKeeper:
    """Keeps a drain alive from a background thread (a LeaseKeeper): every drain_beat_seconds() it
    beats the drain's row and extends the leases of the chunks it holds, on the database's clock.

    A chunk whose items no longer all carry its token has lost its lease: its control says stop, so
    no more is spent on work that will be thrown away. A drain whose row was removed (it was frozen
    past the stale time, and counted as dead) is `evicted` and takes no more chunks.
    """

    def __init__(self, drain_id: int | None):
        self.drain_id = drain_id
        self.held: dict[uuid.UUID, tuple[int, JobControl]] = {}
        self.lock = threading.Lock()
        self.evicted = False
        self.keeper = LeaseKeeper(f"drain {drain_id}", self._renew, drain_beat_seconds())

    def __enter__(self) -> "DrainKeeper":
        self.keeper.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.keeper.__exit__(*exc)

    def hold(self, claim: Claim, control: JobControl) -> None:
        with self.lock:
            self.held[claim.token] = (len(claim.items), control)

    def release(self, claim: Claim) -> None:
        with self.lock:
            self.held.pop(claim.token, None)

    def beat(self) -> None:
        if self.drain_id is not None and not Drain.objects.filter(id=self.drain_id).update(
            seen_at=DatabaseNow()
        ):
            self.evicted = True
        with self.lock:  # a chunk being committed holds its items' locks: renewing them would wait
            held = [(token, held) for token, held in self.held.items() if not held[1].finished]
        for token, (count, control) in held:
            renewed = JobItem.objects.filter(claim_token=token, status=JobItem.Status.RUNNING).update(
                lease_expires_at=DatabaseNow(settings.JOBS_LEASE_SECONDS)
            )
            if renewed < count:
                logger.warning(
                    "claim %s lost its lease: %d of its %d items were taken", token, count - renewed, count
                )
                control.lose_lease()

    def _renew(self) -> bool:
        self.beat()
        return True  # an evicted drain still renews the chunks it holds, until they are committed
