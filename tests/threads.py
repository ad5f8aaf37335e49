"""Races on purpose: calls released together from threads, each on its own database connection."""

import threading
from collections.abc import Callable
from typing import Any

from django.db import connection


def at_once(call: Callable[[], Any], count: int = 2, *, caught: tuple[type[Exception], ...] = ()) -> list:
    """Run `call` in `count` threads released together; return what each returned, or raised of
    `caught` (any other exception leaves its thread's outcome out)."""
    barrier = threading.Barrier(count)
    outcomes = []

    def run() -> None:
        try:
            barrier.wait()
            outcomes.append(call())
        except caught as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
