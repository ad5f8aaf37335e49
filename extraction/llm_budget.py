"""The provider's budget: requests and tokens per minute for one LLM endpoint and model, kept in the
database (LLMBudget) so that every worker on every machine spends from the same one, and divided
among the jobs using it by their weights.

A request first asks (`Budget.ask`) with its estimated cost (the prompt's estimate and the room
for the answer, as providers count a request before it runs); after the call it settles
(`Budget.settle`) with the tokens the answer reported, so what was estimated but not used goes
back (from a caller's recent use, what is left of it after decaying since the ask). Each bucket
is kept by virtual scheduling: `tokens_at` is the time up to which the tokens' rate is spent; a
request may start once that is at most BURST_SECONDS ahead of it, and moves it on by cost / rate.
Asking is one transaction on the budget's row (SELECT … FOR UPDATE, then an
UPDATE), on the database's clock.

Division: each job using the budget lately is a caller with its weight (its priority) and its
recent use (tokens, decaying over USAGE_SECONDS). While the budget is contended (a request would
have to wait), a caller ahead of the least served caller asking now (use divided by weight, as
the workers' fair share counts virtual time) is not given a start: it asks
again a little later, while the callers behind take the starts. So each gets the budget in
proportion to its weight, and none starves: the least served caller is never held back for
fairness, and a caller held back sees the others catch up. A caller that joins starts level with
the least served (no credit for the time it did not ask), as jobs join the workers' fair share.
When the budget is not contended, anyone goes: a share nobody claims is not wasted.

A 429 from the provider pauses every caller of the endpoint and model (`Budget.pause`): until its
Retry-After, or, without one, for a pause that doubles from EXTRACTION_LLM_BACKOFF_SECONDS while
the 429s go on. While a caller waits, it is marked held (`callers[…]["held"]`), which progress
shows as waiting for the provider's limit (`budget_holds`).
"""

import math
from dataclasses import dataclass, field, fields

from django.conf import settings
from django.db import connection, transaction
from django.db.models.expressions import RawSQL

from eventproject.db import is_postgresql

from .models import LLMBudget

BURST_SECONDS = 1.0  # how far ahead of its rate a bucket lets requests start (providers check short windows)
HORIZON_SECONDS = 2.0  # a start is reserved at most this far ahead; a caller further back asks again later
ACTIVE_SECONDS = 60.0  # a caller not heard of for longer is forgotten (its calls may take this long)
ASKING_SECONDS = 2.0  # a caller that asked within this competes for starts now
USAGE_SECONDS = 20.0  # a caller's recent use decays with this time constant
POLL_SECONDS = 0.25  # the least a caller held back waits before it asks again
MAX_PAUSE_SECONDS = 120.0  # the longest pause a 429 makes (its Retry-After is capped there too)
HELD_SHOWN_SECONDS = 1.0  # progress keeps saying "held back" this long after a wait ended (no flicker)


def clock_sql() -> str:
    """The database's clock in Unix seconds (a float), so that every machine measures the same time."""
    if is_postgresql():
        return "EXTRACT(EPOCH FROM CLOCK_TIMESTAMP())::float8"
    return "((JULIANDAY('now') - 2440587.5) * 86400.0)"


@dataclass(frozen=True)
class Limits:
    """Requests and tokens per minute; 0: no limit."""

    requests_per_minute: int = 0
    tokens_per_minute: int = 0

    @classmethod
    def configured(cls) -> "Limits":
        return cls(settings.EXTRACTION_LLM_REQUESTS_PER_MINUTE, settings.EXTRACTION_LLM_TOKENS_PER_MINUTE)

    @property
    def unlimited(self) -> bool:
        return not (self.requests_per_minute or self.tokens_per_minute)


@dataclass
class BudgetState:
    """A budget row's state, and the rules that change it (no database: `Budget` reads and writes
    it). Times are the database's clock in Unix seconds."""

    requests_at: float = 0.0
    tokens_at: float = 0.0
    paused_until: float = 0.0
    pause_seconds: float = 0.0
    usage_at: float = 0.0
    callers: dict[str, dict[str, float]] = field(default_factory=dict)

    def ask(self, caller: str, weight: int, cost: int, now: float, limits: Limits) -> tuple[bool, float]:
        """(True, seconds to wait before sending): a start was reserved; (False, seconds): none
        was, ask again after that long."""
        me = self._enter(caller, weight, now)
        if self.paused_until > now:
            return self._hold(me, now, self.paused_until - now)
        start = now
        if limits.requests_per_minute:
            start = max(start, self.requests_at - BURST_SECONDS)
        if limits.tokens_per_minute:
            start = max(start, self.tokens_at - BURST_SECONDS)
        wait = start - now
        if wait > HORIZON_SECONDS:
            return self._hold(me, now, wait - HORIZON_SECONDS)
        if wait > 0 and self.ahead(caller, now):
            return self._hold(me, now, max(wait, POLL_SECONDS))
        if limits.requests_per_minute:
            self.requests_at = max(self.requests_at, start) + 60.0 / limits.requests_per_minute
        if limits.tokens_per_minute:
            self.tokens_at = max(self.tokens_at, start) + cost * 60.0 / limits.tokens_per_minute
        me["usage"] += cost
        if wait > 0:
            me["held"] = max(me["held"], start)
        return True, wait

    def settle(
        self,
        caller: str,
        reserved: int,
        used: int,
        *,
        sent: bool,
        answered: bool,
        now: float,
        limits: Limits,
        asked_at: float | None = None,
    ) -> None:
        """Give back what a reservation did not use (all of it, and its request, if it was not sent).
        `asked_at`: when the reservation was made (the database's clock, as `Budget.ask` tells)."""
        if limits.requests_per_minute and not sent:
            self.requests_at -= 60.0 / limits.requests_per_minute
        if limits.tokens_per_minute:
            self.tokens_at += (used - reserved) * 60.0 / limits.tokens_per_minute
        if me := self.callers.get(caller):
            # The reservation joined the caller's use when it was made, and has decayed with it
            # since (use is kept as of usage_at): what goes back is what is left of it, no more.
            unused = float(reserved - used)
            if asked_at is not None and self.usage_at > asked_at:
                unused *= math.exp(-(self.usage_at - asked_at) / USAGE_SECONDS)
            me["usage"] = max(me["usage"] - unused, 0.0)
            me["seen"] = max(me["seen"], now)
        if answered and now >= self.paused_until:
            self.pause_seconds = 0.0

    def pause(self, retry_after: float, now: float) -> None:
        """Stop every caller after a 429: for its Retry-After, else for a pause that doubles while
        the 429s go on (a 429 to a request sent before the pause began makes it no longer)."""
        if retry_after > 0:
            seconds = min(retry_after, MAX_PAUSE_SECONDS)
        elif self.paused_until > now:
            return
        else:
            first = settings.EXTRACTION_LLM_BACKOFF_SECONDS
            seconds = self.pause_seconds = min(max(2 * self.pause_seconds, first), MAX_PAUSE_SECONDS)
        self.paused_until = max(self.paused_until, now + seconds)

    def ahead(self, caller: str, now: float) -> bool:
        """Whether the caller is ahead of the least served caller asking now (use per weight)."""
        me = self.callers[caller]
        return me["usage"] / me["weight"] > self._least(now)

    def _least(self, now: float) -> float:
        """The least use per weight among the callers asking now, or held and due to ask again (a
        caller told to wait longer than ASKING_SECONDS still wants its share); 0 when none is."""
        asking = [
            c["usage"] / c["weight"]
            for c in self.callers.values()
            if max(c["asked"], c["held"]) >= now - ASKING_SECONDS
        ]
        return min(asking, default=0.0)

    def _enter(self, caller: str, weight: int, now: float) -> dict[str, float]:
        """The caller's entry, the usage of all decayed to now and the callers gone quiet forgotten;
        a new caller starts level with the least served caller asking now."""
        if now > self.usage_at:
            decay = math.exp(-(now - self.usage_at) / USAGE_SECONDS)
            for other in self.callers.values():
                other["usage"] *= decay
            self.usage_at = now
        self.callers = {
            key: other
            for key, other in self.callers.items()
            if max(other["seen"], other["held"]) >= now - ACTIVE_SECONDS
        }
        me = self.callers.get(caller)
        weight = max(weight, 1)
        if me is None:
            me = self.callers[caller] = {"usage": self._least(now) * weight, "held": 0.0}
        me["weight"] = weight
        me["seen"] = me["asked"] = now
        return me

    @staticmethod
    def _hold(me: dict[str, float], now: float, wait: float) -> tuple[bool, float]:
        wait = max(wait, 0.05)  # (no busy asking)
        me["held"] = max(me["held"], now + wait)
        return False, wait


STATE_FIELDS = [item.name for item in fields(BudgetState)]


class Budget:
    """One endpoint and model's budget, as a client spends it; safe to share between threads (each
    uses its own connection)."""

    def __init__(self, endpoint: str, model: str, limits: Limits | None = None):
        self.endpoint, self.model = endpoint[:500], model[:200]  # (the columns' lengths)
        self.limits = limits or Limits.configured()
        self.paused = False  # (unlimited) this client saw a pause: its next answer ends the doubling
        LLMBudget.objects.bulk_create(
            [LLMBudget(endpoint=self.endpoint, model=self.model)], ignore_conflicts=True
        )

    def ask(self, caller: str, weight: int, cost: int) -> tuple[bool, float, float]:
        """See BudgetState.ask; and the database's clock when it was asked, which settle takes back.
        Without limits, only a pause is looked for (one read)."""
        if self.limits.unlimited:
            left, pause_seconds = self._pause()
            self.paused = self.paused or pause_seconds > 0
            if left <= 0:
                return True, 0.0, 0.0  # (no use is counted: nothing to give back)
        return self._change(lambda state, now: (*state.ask(caller, weight, cost, now, self.limits), now))

    def settle(
        self, caller: str, reserved: int, used: int, *, sent: bool, answered: bool, asked_at: float
    ) -> None:
        if self.limits.unlimited:
            if answered and self.paused:  # the pause doubles no more
                self._rows().filter(pause_seconds__gt=0).update(pause_seconds=0)
                self.paused = False
            return
        self._change(
            lambda state, now: state.settle(
                caller,
                reserved,
                used,
                sent=sent,
                answered=answered,
                now=now,
                limits=self.limits,
                asked_at=asked_at,
            )
        )

    def pause(self, retry_after: float) -> None:
        self._change(lambda state, now: state.pause(retry_after, now))

    def _rows(self):
        return LLMBudget.objects.filter(endpoint=self.endpoint, model=self.model)

    def _pause(self) -> tuple[float, float]:
        """(seconds left of the pause, the pause's length), in one read."""
        rows = self._rows().annotate(left=RawSQL(f"paused_until - {clock_sql()}", ()))
        return next(iter(rows.values_list("left", "pause_seconds")), (0.0, 0.0))

    def _change(self, change):
        """Apply `change(state, now)` to the row, locked, and return what it returns."""
        with transaction.atomic():
            row = self._rows().select_for_update().first()
            if row is None:  # deleted meanwhile (a test's flush): start afresh
                LLMBudget.objects.bulk_create(
                    [LLMBudget(endpoint=self.endpoint, model=self.model)], ignore_conflicts=True
                )
                row = self._rows().select_for_update().get()
            with connection.cursor() as cursor:  # read after the lock was granted
                cursor.execute(f"SELECT {clock_sql()}")
                (now,) = cursor.fetchone()
            state = BudgetState(**{name: getattr(row, name) for name in STATE_FIELDS})
            outcome = change(state, now)
            for name in STATE_FIELDS:
                setattr(row, name, getattr(state, name))
            row.save(update_fields=STATE_FIELDS)
        return outcome


def budget_holds(caller: str) -> bool:
    """Whether the caller (a job) is waiting for the provider's budget of some endpoint and model
    now (or was, a moment ago)."""
    rows = LLMBudget.objects.annotate(clock=RawSQL(clock_sql(), ())).values_list("callers", "clock")
    return any(callers.get(caller, {}).get("held", 0) > clock - HELD_SHOWN_SECONDS for callers, clock in rows)


@dataclass
class Spending:
    """What one request did with its reservation: sent or not, the tokens it used (None: unknown,
    count the estimate), answered."""

    sent: bool = False
    used: int | None = None
    ok: bool = False

    def answered(self, usage) -> None:
        self.ok = True
        if usage is not None:
            self.used = (usage.prompt_tokens or 0) + (usage.completion_tokens or 0)
