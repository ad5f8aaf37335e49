"""Extractors for tests, registered as "test" through EXTRACTION_EXTRA_EXTRACTORS (see pyproject).

They run inside real qcluster processes too, so everything they do is driven by job options
and leaves traces in files, never in test-process memory.
"""

import gc
import os
import time

from extraction.extractors import EventDraft, ExtractionError, Extractor, ExtractorFatalError

IMPORTED_BY = os.getpid()  # the process that imported this module


class ScriptedExtractor(Extractor):
    """One `purchase`-like event per user; optionally slow (then it stops between users when its
    control says so), failing, fatally broken, or paying `tokens_per_user` prompt tokens (and half
    as many completion tokens) for each user first.

    calls_file: a "user_id pid" line for each user extracted, to count how often and where each
    user was extracted. imports_file: a "pid importer_pid" line for each chunk, where importer_pid
    is the process that imported this module. collector_file: a "pid threshold frozen" line for
    each chunk: the worker's garbage collector's first threshold and how many objects it has frozen.
    """

    name = "test"
    version = "1"
    options_spec = {
        "calls_file": (str, ""),
        "imports_file": (str, ""),
        "collector_file": (str, ""),
        "seconds_per_user": (float, 0.0),
        "error": (str, ""),
        "permanent": (bool, False),
        "fatal": (str, ""),
        "fail_users": (list, []),
        "tokens_per_user": (int, 0),
    }

    def extract(self, users, control=None):
        if self.options["imports_file"]:
            self._append(self.options["imports_file"], f"{os.getpid()} {IMPORTED_BY}")
        if self.options["collector_file"]:
            line = f"{os.getpid()} {gc.get_threshold()[0]} {gc.get_freeze_count()}"
            self._append(self.options["collector_file"], line)
        if control and (tokens := self.options["tokens_per_user"]):
            for user in users:
                control.charge(user.user_id, tokens, tokens // 2)
        if self.options["fatal"]:
            raise ExtractorFatalError(self.options["fatal"])
        results = {}
        for user in users:
            if self.options["seconds_per_user"]:
                if control and control.stopped():  # a cancel, a lost lease, the chunk's deadline
                    results[user.user_id] = ExtractionError("the chunk stopped", stopped=True)
                    continue
                time.sleep(self.options["seconds_per_user"])
            self._record(user.user_id)
            if self.options["error"] and (
                not self.options["fail_users"] or user.user_id in self.options["fail_users"]
            ):
                results[user.user_id] = ExtractionError(
                    self.options["error"], permanent=self.options["permanent"]
                )
            elif not user.behaviors:
                results[user.user_id] = []
            else:
                first = user.behaviors[0]
                results[user.user_id] = [
                    EventDraft(
                        event_type="seen",
                        category="engagement",
                        label="见过",
                        starts_at=first.occurred_at,
                        ends_at=first.occurred_at,
                        behavior_ids=[first.id],
                        context={"behaviors": len(user.behaviors)},
                    )
                ]
        return results

    def _record(self, user_id: str) -> None:
        if self.options["calls_file"]:
            self._append(self.options["calls_file"], f"{user_id} {os.getpid()}")

    @staticmethod
    def _append(path: str, line: str) -> None:
        """O_APPEND: several processes share the file."""
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{line}\n".encode())
        finally:
            os.close(fd)


class NoopExtractor(Extractor):
    """No events for anyone, from no data: measures the engine alone (tests/bench/engine.py)."""

    name = "noop"
    version = "1"
    reads_users = False

    def extract(self, users, control=None):
        return {user.user_id: [] for user in users}
