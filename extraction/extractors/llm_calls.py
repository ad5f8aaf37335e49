"""One chunk's calls to the model, for the LLM extractor: every call queued at once, each waiting
for a slot; each answer settled user by user; what failed asked again (a failed call in halves, an
invalid user on its own) until every part has its events or its error, each user charged its share
of the tokens."""

import threading
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING

from django.db import connection

from ..llm_client import Completion, LLMClient
from ..llm_errors import LLMCallError, LLMConfigError, LLMStopped
from .base import Control, EventDraft, ExtractionError, ExtractorFatalError, UserInput, UserResult
from .llm_answers import UNUSABLE, CallOutcome, call_read
from .llm_packing import Part, calls_pack, users_parts
from .llm_prompt import answer_schema, messages

if TYPE_CHECKING:
    from .llm import LLMExtractor

PART_TRIES = 3  # how often one user (or segment) is asked before it fails for this attempt


class ChunkCalls:
    """The calls of one chunk (one `extract`), under the extractor's options and slots."""

    def __init__(self, extractor: "LLMExtractor", control: Control):
        self.options = extractor.options
        self.system = extractor.system
        self.budget = extractor.budget
        self.slot = extractor.slots.for_chunk()
        self.control = control
        self.done: dict[int, list[EventDraft] | ExtractionError] = {}  # by id(part)

    def extract(self, users: Sequence[UserInput]) -> dict[str, UserResult]:
        results: dict[str, UserResult] = {user.user_id: [] for user in users if not user.behaviors}
        parts = users_parts(users, self.budget)
        self._send(parts)
        for user in users:
            if user.user_id not in results:
                results[user.user_id] = self._result(user, parts)
        return results

    def _send(self, parts: list[Part]) -> None:
        """Make the calls these parts need, and again what failed, until every part is settled."""
        client = (
            LLMClient(
                model=self.options["model"],
                temperature=self.options["temperature"],
                timeout=self.options["timeout"],
                max_completion_tokens=self.options["max_completion_tokens"],
                response_format=self.options["response_format"],
            )
            if parts
            else None
        )
        # Every call is queued at once; each waits in its thread for a slot of this worker's
        # max_concurrency (shared with its other lanes, oldest chunk first), so a freed slot is taken at once.
        threads = 2 * self.options["max_concurrency"]
        with ThreadPoolExecutor(threads, thread_name_prefix="llm") as pool:
            pending: set = set()

            def start(call: list[Part]) -> None:
                """Answer from the cache here, or send from a pool thread."""
                assert client is not None  # (there is a call only when there are parts)
                asked = messages(self.system, call)
                schema = answer_schema(call, allow_new_types=self.options["allow_new_event_types"])
                if hit := client.cached(asked, schema):
                    finish(self._read(call, hit))
                else:
                    pending.add(pool.submit(self._call, client, call, asked, schema))

            def finish(outcome: CallOutcome) -> None:
                self._charge(outcome)
                for again in self._settle(outcome):
                    start(again)

            try:
                for call in calls_pack(parts, self.budget):
                    start(call)
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                    for future in finished:
                        finish(future.result())
            except BaseException:
                for future in pending:
                    future.cancel()
                raise
            finally:
                if client:
                    client.flush()
                # A thread may have opened a database connection (the provider's budget, the job's status).
                barrier = threading.Barrier(threads)
                for _ in range(threads):
                    pool.submit(_close_connection, barrier)

    def _result(self, user: UserInput, parts: list[Part]) -> UserResult:
        """The user's events from all its parts, in time order; or the first error among them."""
        outcomes = [self.done.get(id(part)) for part in parts if part.user is user]
        errors = [o for o in outcomes if isinstance(o, ExtractionError) or o is None]
        if errors:
            return errors[0] or ExtractionError("not processed")
        return sorted(
            (e for events in outcomes if isinstance(events, list) for e in events),
            key=lambda e: (e.starts_at, e.behavior_ids[0]),
        )

    def _must_stop(self) -> str:
        """Why no more calls may be made for this job, if there is a reason (checked before each call)."""
        control = self.control
        if control.stopped():
            return "the chunk stopped (job stopped, lease lost or deadline reached) before this user was sent"
        limit = self.options["max_total_tokens"]
        if limit and (used := control.tokens_used() + control.spent()) >= limit:
            control.fail_job(
                f"token limit reached: {used:,} of {limit:,} tokens spent (options.max_total_tokens); "
                f"resume the job with a higher max_total_tokens to go on"
            )
            return "the job's token limit was reached before this user was sent"
        return ""

    def _settle(self, outcome: CallOutcome) -> list[list[Part]]:
        """Record what the call settled; return the calls to make again."""
        if outcome.stopped:
            for part in outcome.parts:
                self.done[id(part)] = ExtractionError(outcome.stopped, stopped=True)
            return []
        if outcome.failure:
            if len(outcome.parts) > 1:
                half = len(outcome.parts) // 2
                return [outcome.parts[:half], outcome.parts[half:]]
            retry = self._tried(outcome.parts, outcome.failure, kind=outcome.failure_kind)
            return [retry] if retry else []
        again = []
        for part in outcome.parts:
            if id(part) in outcome.events:
                self.done[id(part)] = outcome.events[id(part)]
            else:
                again.append(part)
        # Each invalid user is asked again on its own, so it cannot spoil another answer.
        return [[part] for part in self._tried(again, None, reasons=outcome.invalid)]

    def _tried(
        self, parts: list[Part], reason: str | None, reasons: dict | None = None, kind: str = UNUSABLE
    ) -> list[Part]:
        """Count a try for each part; those with tries left come back, the others fail."""
        retry = []
        for part in parts:
            part.tries += 1
            if part.tries >= PART_TRIES:
                message = reason or (reasons or {}).get(id(part), "invalid answer")
                self.done[id(part)] = ExtractionError(
                    f"the model's answer for this user was unusable: {message}"
                    if kind == UNUSABLE
                    else message,
                    kind=kind,
                )
            else:
                retry.append(part)
        return retry

    def _charge(self, outcome: CallOutcome) -> None:
        """Share the call's tokens among its users in proportion to their part of the prompt."""
        if not (outcome.prompt_tokens or outcome.completion_tokens):
            return  # answered from the cache, or never answered
        total = sum(part.tokens for part in outcome.parts) or 1
        for part in outcome.parts:
            share = part.tokens / total
            self.control.charge(
                part.user.user_id,
                round(outcome.prompt_tokens * share),
                round(outcome.completion_tokens * share),
                round(outcome.reasoning_tokens * share),
            )

    def _call(self, client: LLMClient, parts: list[Part], asked: list[dict], schema: dict) -> CallOutcome:
        """One request, in a pool thread: not sent at all once the job stopped (checked right before
        it goes out); holds a slot of this worker's max_concurrency only while it is out."""
        try:
            completion = client.complete(
                asked,
                schema=schema,
                should_stop=self._must_stop,
                seconds_left=self.control.seconds_left,
                slot=self.slot,
                share=self.control.budget_share,
            )
        except LLMStopped as exc:
            return CallOutcome(parts, stopped=str(exc))
        except LLMConfigError as exc:
            raise ExtractorFatalError(str(exc)) from exc
        except LLMCallError as exc:
            return CallOutcome(parts, failure=str(exc), failure_kind=exc.kind)
        outcome = self._read(parts, completion)
        # Kept here, in the call's thread, not by the lane that settles the outcomes. Only a reply
        # read and valid for every user: an unreadable one, cached, would answer every later try.
        if not (outcome.failure or outcome.invalid or outcome.extra):
            client.remember(completion)
        return outcome

    def _read(self, parts: list[Part], completion: Completion) -> CallOutcome:
        return call_read(parts, completion, allow_new_types=self.options["allow_new_event_types"])


def _close_connection(barrier: threading.Barrier) -> None:
    """Run once in every thread of the pool (the barrier keeps a thread from taking two)."""
    try:
        barrier.wait(timeout=60)
    finally:
        connection.close()
