"""Progress streams (Server-Sent Events) and other long responses, under ASGI and WSGI alike.

Under ASGI (how the web server runs, see gunicorn.conf.py) a stream is a coroutine, not a thread:
each web process keeps one *feed* per watched job, a task that reads the job's progress (a read
starting every 0.8 API_STREAM_POLL_SECONDS) on one reader thread shared by every feed of the
process, and wakes every stream of that job when it changed. So 200 clients of one job cost one
small query a poll per process, not 200 threads and 200 database connections. The read is cheap
while nothing changed: job_progress_state() and its tag; the full job_progress() runs only on a
change (jobs.progress).

The same feeds answer polls of /progress/ (feed_fresh): a poll keeps its job's feed reading for
POLLED_FEED_SECONDS, and a client whose copy matches what the feed read at most
API_STREAM_POLL_SECONDS ago gets its 304 without a query (or the feed's body, when that was made
as recently: while a job runs, its progress changes at every commit). So 50 clients polling one job cost one
small query a poll interval per process too, and a change is answered 200 within that interval.

Under WSGI (`manage.py runserver`, the test client, `gunicorn eventproject.wsgi`) each stream
polls for itself and holds its thread, as streams always did there, and each poll reads the
database.
"""

import asyncio
import json
import logging
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from asgiref.sync import SyncToAsync, sync_to_async
from django.conf import settings
from django.db import close_old_connections, connection
from django.dispatch import receiver
from django.utils import translation

from eventproject.signals import web_process_stopping
from ops import metrics

from ..models import Job
from ..progress import Progress as ProgressValue
from ..progress import job_progress, job_progress_state
from .access import stream_slot_release, thread_streams
from .serializers import Progress

logger = logging.getLogger(__name__)

STREAM_KEEPALIVE_SECONDS = 15
STREAM_RETRY_MILLISECONDS = 2000  # how soon EventSource reconnects after a stream closed
STREAM_END_ID = "end"
TIME_UP = ": the stream's time is up; reconnect with Last-Event-ID\n\n"
SERVER_STOPPING = ": this server is stopping; reconnect with Last-Event-ID\n\n"
# A feed polls started (or kept) reads on this long after the last poll: enough for a client polling
# every few seconds, and a poll never costs more than about 6 reads of a job nobody polls again.
POLLED_FEED_SECONDS = 5
READ_EARLY = 0.8  # a feed's reads start every 0.8 API_STREAM_POLL_SECONDS


@dataclass(frozen=True)
class Snapshot:
    """A job's progress at one read: its tag (the event id), the progress, whether the job had
    finished, and when the read that made it began (time.monotonic(): the progress holds every
    change committed before, and its clock-derived figures are no older)."""

    tag: str
    value: ProgressValue
    finished: bool
    made_at: float = 0.0
    # Serialized once per language for every stream and poll of the job (its words, `activity`
    # say, are the client's: the feed reads on a thread of its own, where none is active).
    _rendered: dict[str, tuple[dict[str, Any], str]] = field(default_factory=dict, compare=False)

    def progress(self, language: str) -> dict[str, Any]:
        return self._render(language)[0]

    def progress_event(self, language: str) -> str:
        return self._render(language)[1]

    def _render(self, language: str) -> tuple[dict[str, Any], str]:
        if language not in self._rendered:  # racing threads make the same, harmlessly
            with translation.override(language):
                data = Progress(self.value).data
            self._rendered[language] = (
                data,
                f"id: {self.tag}\nevent: progress\ndata: {json.dumps(data)}\n\n",
            )
        return self._rendered[language]

    def end_event(self) -> str:
        end = json.dumps({"id": self.value.id, "status": self.value.status})
        return f"id: {STREAM_END_ID}\nevent: end\ndata: {end}\n\n"


def snapshot_read(job_id: int, previous: Snapshot | None) -> Snapshot | None:
    """The job's progress now: `previous` itself while its tag still holds (one small query), a new
    snapshot when something changed, None when the job is gone.

    The snapshot's tag is the full progress's own, so a tag never names an older body than its own.
    """
    began = time.monotonic()
    found = job_progress_state(job_id)
    if found is None:
        return None
    job, state = found
    if previous is not None and state.tag() == previous.tag:
        return previous
    progress = job_progress(job, state=state)
    return Snapshot(progress.tag(), progress, job.status in Job.FINISHED, began)


class ProgressStream:
    """The events of one stream: an async iterator under ASGI (fed by the job's feed), a
    generator polling by itself under WSGI. `close()` (called by the server when the response
    ends, even if it was never read) and the end of the iteration give the user's slot back (and,
    under WSGI, the thread the view took for it from access.thread_streams)."""

    def __init__(self, job_id: int, last_id: str, slot: str, *, asynchronous: bool, language: str = "en"):
        self.job_id, self.last_id, self.language = job_id, last_id, language
        # Given back once: at the end, at close(), or when collected (a response an error kept from
        # ever reaching the server is never closed, and a thread counted for good would be lost).
        self._give_back = weakref.finalize(self, _give_back, slot, not asynchronous)
        self.events = self._async_events() if asynchronous else self._events()

    def __iter__(self) -> Iterator[str]:
        if not isinstance(self.events, Iterator):  # StreamingHttpResponse then takes __aiter__
            raise TypeError("an asynchronous stream")
        return self.events

    def __aiter__(self) -> AsyncIterator[str]:
        if not isinstance(self.events, AsyncIterator):  # StreamingHttpResponse then takes __iter__
            raise TypeError("a synchronous stream")
        return self.events

    def close(self) -> None:
        if hasattr(self.events, "close"):
            self.events.close()
        self._give_back()

    def _events(self) -> Iterator[str]:
        yield f"retry: {STREAM_RETRY_MILLISECONDS}\n\n"
        last_tag, snapshot = self.last_id, None
        opened = last_sent = time.monotonic()
        while time.monotonic() - opened < settings.API_STREAM_MAX_SECONDS:
            snapshot = snapshot_read(self.job_id, snapshot)
            if snapshot is None:  # the job was deleted
                return
            if snapshot.tag != last_tag:
                yield snapshot.progress_event(self.language)
                last_tag, last_sent = snapshot.tag, time.monotonic()
            elif time.monotonic() - last_sent > STREAM_KEEPALIVE_SECONDS:
                yield ": keep-alive\n\n"
                last_sent = time.monotonic()
            if snapshot.finished:
                yield snapshot.end_event()
                return
            time.sleep(settings.API_STREAM_POLL_SECONDS)
        yield TIME_UP

    async def _async_events(self) -> AsyncIterator[str]:
        feed = feed_join(self.job_id)
        metrics.STREAMS_OPEN.inc()
        try:
            yield f"retry: {STREAM_RETRY_MILLISECONDS}\n\n"
            last_tag = self.last_id
            opened = last_sent = time.monotonic()
            while (left := settings.API_STREAM_MAX_SECONDS - (time.monotonic() - opened)) > 0:
                if _STOPPING.is_set():
                    yield SERVER_STOPPING
                    return
                changed, snapshot = feed.changed, feed.snapshot
                if feed.gone:
                    return
                if snapshot is not None:
                    if snapshot.tag != last_tag:
                        yield snapshot.progress_event(self.language)
                        last_tag, last_sent = snapshot.tag, time.monotonic()
                    if snapshot.finished:
                        yield snapshot.end_event()
                        return
                quiet = time.monotonic() - last_sent
                try:
                    # Not asyncio.wait_for: on Python 3.11 it drops a cancel (the client went away)
                    # that comes as the job changes, and the stream would outlive its client.
                    async with asyncio.timeout(min(left, STREAM_KEEPALIVE_SECONDS - quiet)):
                        await changed.wait()
                except TimeoutError:
                    if time.monotonic() - last_sent >= STREAM_KEEPALIVE_SECONDS:
                        yield ": keep-alive\n\n"
                        last_sent = time.monotonic()
            yield TIME_UP
        finally:  # also when the client went away (the server cancels the response)
            feed_leave(feed)
            metrics.STREAMS_OPEN.dec()
            if self._give_back.alive:
                await sync_to_async(self._give_back)()


def _give_back(slot: str, thread: bool) -> None:
    """What a stream holds: its user's slot and, under WSGI, its thread (access.thread_streams)."""
    stream_slot_release(slot)
    if thread:
        thread_streams.release()


class Feed:
    """One job's progress for every stream and poll of it in this process: the latest snapshot, and
    an event set (then replaced) each time a read found a change. Its task reads while streams
    listen or polls came within POLLED_FEED_SECONDS.

    `latest` is (when the last successful read began, on the monotonic clock; its snapshot), one
    value replaced whole, so a poll on another thread never pairs a snapshot with a newer time."""

    def __init__(self, job_id: int):
        self.job_id = job_id
        self.snapshot: Snapshot | None = None
        self.latest: tuple[float, Snapshot] | None = None
        self.gone = False  # the job was deleted
        self.changed = asyncio.Event()
        self.listeners = 0
        self.polled_until = 0.0
        self.task: asyncio.Task | None = None

    def publish(self, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            self.gone = True
        elif snapshot is self.snapshot:
            return
        self.snapshot = snapshot
        self.wake()

    def wake(self) -> None:
        """Every stream of the job looks again."""
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    def polled(self) -> bool:
        return time.monotonic() < self.polled_until

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        metrics.STREAM_FEEDS.inc()
        try:
            while self.listeners or self.polled():
                began = time.monotonic()  # before the query: a change committed by then is in it
                try:
                    snapshot = await loop.run_in_executor(_reader(), _read, self.job_id, self.snapshot)
                except Exception:  # the database is away: the streams wait, the next poll tries again
                    logger.exception("reading job %s's progress for its streams failed", self.job_id)
                else:
                    self.publish(snapshot)
                    if snapshot is None:
                        self.latest = None
                        return
                    self.latest = (began, snapshot)
                    if snapshot.finished and not self.polled():
                        return
                # The next read starts a little before the last one is a poll interval old, so polls
                # find a fresh one (feed_fresh_tag) instead of falling back on the database.
                next_read = began + settings.API_STREAM_POLL_SECONDS * READ_EARLY
                await asyncio.sleep(max(next_read - time.monotonic(), 0.0))
        finally:
            metrics.STREAM_FEEDS.dec()
            feeds = _feeds()
            if feeds.get(self.job_id) is self:
                del feeds[self.job_id]


# Feeds of this process, per event loop (one under a server; tests may run several in turn).
_FEEDS: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Feed]]" = weakref.WeakKeyDictionary()
_READER: ThreadPoolExecutor | None = None
_READER_LOCK = threading.Lock()


_STOPPING = threading.Event()  # this web process is stopping: its streams end (never cleared: it exits)


@receiver(web_process_stopping)
def streams_end(**kwargs: Any) -> None:
    """The process is stopping (a reload, say): every stream ends now, its client reconnecting to a
    process that goes on. Runs in a signal handler: it flags, and wakes the streams from their
    event loop."""
    _STOPPING.set()
    for loop in list(_FEEDS):
        if not loop.is_closed():
            loop.call_soon_threadsafe(_streams_wake)


def _streams_wake() -> None:
    for feed in list(_feeds().values()):
        feed.wake()


def _feeds() -> dict[int, Feed]:
    return _FEEDS.setdefault(asyncio.get_running_loop(), {})


def feed_join(job_id: int) -> Feed:
    """The job's feed in this process (started if none runs), with one more listener."""
    feed = _feed_running(job_id)
    feed.listeners += 1
    return feed


def _feed_running(job_id: int) -> Feed:
    feeds = _feeds()
    feed = feeds.get(job_id)
    if feed is None:
        feed = feeds[job_id] = Feed(job_id)
    if feed.task is None:
        feed.task = asyncio.get_running_loop().create_task(feed.run())
    return feed


def _feed_poll(job_id: int) -> None:
    """On the event loop: start the job's feed for polls, or keep it reading."""
    _feed_running(job_id).polled_until = time.monotonic() + POLLED_FEED_SECONDS


def feed_fresh(job_id: int, *, start: bool) -> Snapshot | None:
    """From a request's synchronous thread under ASGI: the job's progress as this process's feed
    last read it, if that read began at most API_STREAM_POLL_SECONDS ago, keeping the feed reading
    for POLLED_FEED_SECONDS more (`start`: it is started if none runs; a client that polls sends
    its ETag back, a one-off read starts nothing). None when there is no such read (no feed yet, a
    read failed or lags, the job is gone, or not under ASGI): the caller reads the database.

    The snapshot's tag is current as of that read: a change committed API_STREAM_POLL_SECONDS
    before the call is in it. Its body may be older (a snapshot lives while its tag holds): see
    Snapshot.made_at."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or loop.is_closed():
        return None
    feed = _FEEDS.get(loop, {}).get(job_id)
    if feed is not None and feed.polled():
        feed.polled_until = time.monotonic() + POLLED_FEED_SECONDS
    elif feed is not None or start:
        loop.call_soon_threadsafe(_feed_poll, job_id)
    latest = feed.latest if feed is not None else None
    if latest is None or time.monotonic() - latest[0] > settings.API_STREAM_POLL_SECONDS:
        return None
    return latest[1]


def feed_refresh(job_id: int, began: float, tag: str, snapshot: Snapshot | None = None) -> None:
    """From a poll that read the database itself (its feed had no fresh read): that read, begun at
    `began`, for the polls after it, as if the feed had made it. `snapshot`: the progress it read
    in full; else its tag alone, which renews the feed's last snapshot if that still carries it.
    Streams are not told (only the feed's own reads wake them)."""
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    feed = _FEEDS.get(loop, {}).get(job_id) if loop is not None else None
    if feed is None:
        return
    latest = feed.latest
    if latest is not None and latest[0] >= began:
        return
    if snapshot is None:
        if latest is None or latest[1].tag != tag:
            return
        snapshot = latest[1]
    if feed.latest is latest:  # unless the feed read meanwhile (a newer read is never replaced)
        feed.latest = (began, snapshot)


def feed_leave(feed: Feed) -> None:
    """One listener fewer; the feed's task stops at its next poll when none is left."""
    feed.listeners -= 1


def _reader() -> ThreadPoolExecutor:
    """The thread every feed of the process reads on: one database connection at most, whatever
    the number of streams and jobs."""
    global _READER
    with _READER_LOCK:
        if _READER is None:
            _READER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="progress-feeds")
        return _READER


def _read(job_id: int, previous: Snapshot | None) -> Snapshot | None:
    close_old_connections()  # as each request does: drop a connection that broke or aged
    try:
        return snapshot_read(job_id, previous)
    except Exception:
        connection.close()  # the next read starts on a fresh connection
        raise
