"""An import's rows parsed on a thread of their own, ahead of the batches it writes (ahead())."""

import queue
import threading
from collections.abc import Generator, Iterator

# Parsed lines are handed over AHEAD_CHUNK at a time, at most AHEAD_CHUNKS chunks waiting: a parsed
# row holds at most about 16 kB (IMPORT_MAX_ATTRIBUTES_BYTES; a behaviour's other columns 8 kB), so
# what waits stays within 16 MB whatever the file, beside the batch's BATCH_MAX_BYTES.
AHEAD_CHUNK = 250
AHEAD_CHUNKS = 4


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def ahead(items: Iterator) -> Generator:
    """The items of `items`, made on a thread of their own while the caller uses the ones before.

    Parsing a line is Python and holds the interpreter's lock; writing a batch is mostly waiting
    for the database, which releases it: so the next batch is parsed while the last one is
    written, and an import takes about the longer of the two instead of their sum. An exception
    on the thread is raised here, after the items made before it. When the caller stops early
    (an error, a pause), the thread stops at its next chunk."""
    handed: queue.Queue = queue.Queue(maxsize=AHEAD_CHUNKS)
    stop = threading.Event()
    done = object()

    def hand(chunk) -> bool:
        while not stop.is_set():
            try:
                handed.put(chunk, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def make() -> None:
        chunk: list = []
        try:
            for item in items:
                chunk.append(item)
                if len(chunk) >= AHEAD_CHUNK:
                    if not hand(chunk):
                        return
                    chunk = []
        except BaseException as exc:  # raised again in the caller's thread
            if hand(chunk):
                hand(_Failed(exc))
            return
        if hand(chunk):
            hand(done)

    thread = threading.Thread(target=make, name="import-parse", daemon=True)
    thread.start()
    try:
        while (chunk := handed.get()) is not done:
            if isinstance(chunk, _Failed):
                raise chunk.error
            yield from chunk
    finally:
        stop.set()
        thread.join()
