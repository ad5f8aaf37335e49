"""Who may call what in the jobs API: its permissions, and the per-user progress stream slots.

The permission and throttle classes all the apps' endpoints share are in eventproject/api.py.
"""

import threading

from django.conf import settings
from django.core.cache import cache

VIEW_JOB = "jobs.view_job"
ADD_JOB = "jobs.add_job"
CHANGE_JOB = "jobs.change_job"


def stream_slot_take(user_id: int) -> str | None:
    """Take one of the user's API_STREAMS_PER_USER stream slots; None when all are taken.

    Slots live in the cache (Redis across web processes); each expires by itself shortly after a
    stream's longest life, so a crashed process cannot hold one forever.
    """
    ttl = settings.API_STREAM_MAX_SECONDS + 30
    for n in range(settings.API_STREAMS_PER_USER):
        key = f"stream-slot:{user_id}:{n}"
        if cache.add(key, 1, timeout=ttl):
            return key
    return None


def stream_slot_release(key: str) -> None:
    cache.delete(key)


class _ThreadStreams:
    """The threads of this WSGI process that streams hold: all but one (WEB_THREADS - 1)."""

    def __init__(self):
        self._lock, self._held = threading.Lock(), 0

    def take(self) -> bool:
        with self._lock:
            if self._held >= settings.WEB_THREADS - 1:
                return False
            self._held += 1
            return True

    def release(self) -> None:
        with self._lock:
            self._held -= 1

    def held(self) -> int:
        return self._held


thread_streams = _ThreadStreams()
