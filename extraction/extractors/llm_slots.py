"""The LLM extractor's slots: at most `max_concurrency` calls out at once in one worker, shared by
its lanes, the oldest chunk's calls first."""

import heapq
import itertools
import threading
from dataclasses import dataclass


class Slots:
    """At most `size` calls out at once in one worker, shared by its lanes. A freed slot goes to
    the oldest chunk's next call: that chunk finishes early and its lane loads the next one while
    the other lane's calls keep every slot busy. (Shared fairly, the lanes finished their chunks
    together and left all slots idle while both loaded.)"""

    def __init__(self, size: int):
        self.free = size
        self.changed = threading.Condition()
        self.waiting: list[tuple[int, int]] = []  # a heap of (chunk rank, ticket)
        self.tickets = itertools.count()
        self.ranks = itertools.count()

    def for_chunk(self) -> "ChunkSlot":
        return ChunkSlot(self, next(self.ranks))

    def acquire(self, rank: int) -> None:
        with self.changed:
            entry = (rank, next(self.tickets))
            heapq.heappush(self.waiting, entry)
            self.changed.wait_for(lambda: self.free and self.waiting[0] == entry)
            heapq.heappop(self.waiting)
            self.free -= 1
            self.changed.notify_all()  # the next in line may take another free slot

    def release(self) -> None:
        with self.changed:
            self.free += 1
            self.changed.notify_all()


@dataclass
class ChunkSlot:
    """A slot for one chunk's calls, held while a request is out (reusable: one per retry)."""

    slots: Slots
    rank: int

    def __enter__(self) -> None:
        self.slots.acquire(self.rank)

    def __exit__(self, *exc) -> None:
        self.slots.release()
