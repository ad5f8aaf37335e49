"""The service's own settings: extractors and the LLM, input limits, imports, jobs and the task
cluster, webhooks."""

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy

from eventproject.env import env_bool, env_file, env_float, env_int, env_list
from eventproject.settings.web import BASE_DIR, DEAD_PEER_SECONDS

# Extraction
# A JSON ruleset replacing the shipped one (extraction/extractors/rules_default.json).
EXTRACTION_RULES_FILE = env_file("EXTRACTION_RULES_FILE")

# Extractor name -> class path. EXTRACTION_EXTRA_EXTRACTORS adds more as
# "name=package.module.Class,name2=...".
EXTRACTION_EXTRACTORS = {
    "rules": "extraction.extractors.rules.RulesExtractor",
    "llm": "extraction.extractors.llm.LLMExtractor",
}
for entry in env_list("EXTRACTION_EXTRA_EXTRACTORS"):
    name, sep, path = entry.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ImproperlyConfigured(
            f"EXTRACTION_EXTRA_EXTRACTORS entries must look like name=module.Class, got {entry!r}"
        )
    EXTRACTION_EXTRACTORS[name.strip()] = path.strip()


# The LLM extractor: any OpenAI-compatible chat-completions endpoint. OPENAI_API_KEY is read
# from the environment by the client itself and never stored.
OPENAI_BASE_URL = os.environ.get("OPENAI_BASE_URL") or None
if OPENAI_BASE_URL:
    from urllib.parse import SplitResult, urlsplit

    _parts: SplitResult | None
    try:
        _parts = urlsplit(OPENAI_BASE_URL)
        _parts.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        _parts = None
    if _parts is None or _parts.scheme not in ("http", "https") or not _parts.hostname:
        # Not echoed: it may carry credentials.
        raise ImproperlyConfigured("OPENAI_BASE_URL must be an http(s) URL such as http://127.0.0.1:8001/v1")
EXTRACTION_LLM_MODEL = os.environ.get("EXTRACTION_LLM_MODEL", "gpt-4o-mini")
EXTRACTION_LLM_PROMPT_FILE = env_file("EXTRACTION_LLM_PROMPT_FILE")
# The provider's budget per endpoint and model, shared by all workers on all machines (kept in the
# database) and divided among the running jobs by priority; 0: no limit. Set them a little below
# the provider's own limits (a 429 pauses every worker).
EXTRACTION_LLM_REQUESTS_PER_MINUTE = env_int("EXTRACTION_LLM_REQUESTS_PER_MINUTE", 0, maximum=10_000_000)
EXTRACTION_LLM_TOKENS_PER_MINUTE = env_int("EXTRACTION_LLM_TOKENS_PER_MINUTE", 0, maximum=10**12)
if 0 < EXTRACTION_LLM_TOKENS_PER_MINUTE < 1_000:
    # A call asks room for its answer (max_completion_tokens, 100 at least) on top of its prompt.
    raise ImproperlyConfigured(
        "EXTRACTION_LLM_TOKENS_PER_MINUTE must be 0 (no limit) or at least 1000, "
        f"got {EXTRACTION_LLM_TOKENS_PER_MINUTE}"
    )
EXTRACTION_LLM_MAX_RETRIES = env_int("EXTRACTION_LLM_MAX_RETRIES", 4)
# The first retry's wait, doubling after it: at most a minute, or a call would outwait its chunk.
EXTRACTION_LLM_BACKOFF_SECONDS = env_float("EXTRACTION_LLM_BACKOFF_SECONDS", 1.0, maximum=60.0)
# How answers are asked for when a job does not say: "auto" (the answer's JSON schema where the
# endpoint takes one, else JSON mode, else plain text: learned from its refusals), or one of them.
EXTRACTION_LLM_RESPONSE_FORMAT = os.environ.get("EXTRACTION_LLM_RESPONSE_FORMAT", "auto")
if EXTRACTION_LLM_RESPONSE_FORMAT not in ("auto", "json_schema", "json_object", "text"):
    raise ImproperlyConfigured(
        "EXTRACTION_LLM_RESPONSE_FORMAT must be auto, json_schema, json_object or text, "
        f"not {EXTRACTION_LLM_RESPONSE_FORMAT!r}"
    )


# Input limits, all in one place. Whatever arrives from outside (a request, an imported file, an
# LLM's answer) is measured against these before it is kept; what is over is refused by name.
# Request bodies (the admin's file of user ids, API posts): refused before they are read.
UPLOAD_MAX_BYTES = env_int("UPLOAD_MAX_BYTES", 16_000_000, minimum=10_000)
# Django's own limit on a body it reads (2.5 MB by default) refused with a bare HTML 400 the start of
# the most user ids a job takes: bodies have one limit, this one.
DATA_UPLOAD_MAX_MEMORY_SIZE = UPLOAD_MAX_BYTES
# Nesting of an API request's JSON body (the API's own bodies are two or three levels deep).
API_MAX_JSON_DEPTH = env_int("API_MAX_JSON_DEPTH", 32, minimum=4, maximum=200)
# User ids one start may name, counted the same way in the API, the admin and the commands.
JOBS_MAX_USER_IDS = env_int("JOBS_MAX_USER_IDS", 100_000, minimum=1)
# The predecessor's synchronous POST /api/v1/events/extract runs in the request: a few users only.
LEGACY_SYNC_MAX_USERS = env_int("LEGACY_SYNC_MAX_USERS", 100, minimum=1, maximum=10_000)
# …and the events it answers: past them they are saved, not answered (a 1,000,000-event answer took
# 3.9 GB of the web process; 10,000 take a few MB).
LEGACY_SYNC_MAX_EVENTS = env_int("LEGACY_SYNC_MAX_EVENTS", 10_000, minimum=1, maximum=1_000_000)
# Imports: one line (a CSV record, a JSON Lines object), decompressed; what a row may store.
IMPORT_MAX_LINE_CHARS = env_int("IMPORT_MAX_LINE_CHARS", 65_536, minimum=1_024, maximum=100_000_000)
IMPORT_MAX_JSON_DEPTH = env_int("IMPORT_MAX_JSON_DEPTH", 10, minimum=1, maximum=100)
IMPORT_MAX_EXTRA_BYTES = env_int("IMPORT_MAX_EXTRA_BYTES", 8_192, minimum=256)
IMPORT_MAX_ATTRIBUTES_BYTES = env_int("IMPORT_MAX_ATTRIBUTES_BYTES", 16_384, minimum=256)
IMPORT_MAX_DURATION_SECONDS = env_int("IMPORT_MAX_DURATION_SECONDS", 7 * 86_400, minimum=1)
IMPORT_EARLIEST_YEAR = env_int("IMPORT_EARLIEST_YEAR", 1970, minimum=1900)
IMPORT_LATEST_YEAR = env_int("IMPORT_LATEST_YEAR", 2100, minimum=IMPORT_EARLIEST_YEAR, maximum=9000)
# What an LLM's answer may store per event (its labels come from the ruleset for known types).
EXTRACTION_LLM_LABEL_MAX_CHARS = env_int("EXTRACTION_LLM_LABEL_MAX_CHARS", 32, minimum=1, maximum=64)
EXTRACTION_LLM_CONTEXT_MAX_BYTES = env_int("EXTRACTION_LLM_CONTEXT_MAX_BYTES", 2_048, minimum=64)
EXTRACTION_LLM_CONTEXT_MAX_KEYS = env_int("EXTRACTION_LLM_CONTEXT_MAX_KEYS", 16, minimum=1)
EXTRACTION_LLM_CONTEXT_VALUE_MAX_CHARS = env_int("EXTRACTION_LLM_CONTEXT_VALUE_MAX_CHARS", 200, minimum=8)
# Behaviours one user may have for an extraction: a worker holds a user's whole log at once, so a
# user above this fails (for good, saying so) instead of growing the worker without bound.
EXTRACTION_MAX_BEHAVIORS_PER_USER = env_int("EXTRACTION_MAX_BEHAVIORS_PER_USER", 10_000, minimum=1)


# Imports started in the admin: the uploaded file is kept in IMPORTS_DIR until its import ends,
# and read there by whichever cluster worker runs it, so with clusters on several machines the
# folder must be shared storage (NFS, a mounted volume) that the web server writes and every
# cluster reads. An import checkpoints every IMPORTS_BATCH_ROWS rows (and every second) and holds
# a lease of IMPORTS_LEASE_SECONDS, renewed at each checkpoint: a dead worker's import is taken
# over when it runs out. A task imports for at most IMPORTS_BUDGET_SECONDS, then queues its own
# continuation (below Q_TIMEOUT, which would kill it); after IMPORTS_MAX_TAKEOVERS deaths in a
# row the import fails (a file that kills its worker must not kill them all in turn).
IMPORTS_DIR = Path(os.environ.get("IMPORTS_DIR") or BASE_DIR / "var" / "imports")
IMPORTS_BATCH_ROWS = env_int("IMPORTS_BATCH_ROWS", 5000, minimum=1)
IMPORTS_LEASE_SECONDS = env_int("IMPORTS_LEASE_SECONDS", 30, minimum=1)
IMPORTS_MAX_TAKEOVERS = env_int("IMPORTS_MAX_TAKEOVERS", 3, minimum=1)
IMPORTS_MAX_ERRORS_KEPT = 1000  # rejected rows listed in the report (all are counted)

# Jobs and the django-q2 cluster.
# A drain task claims chunks for at most JOBS_DRAIN_BUDGET_SECONDS, then re-enqueues itself; each
# chunk stops extracting JOBS_COMMIT_RESERVE_SECONDS before Q_TIMEOUT and commits what it did, so a
# task always ends inside Q_TIMEOUT. Q_RETRY (re-delivery of an unacknowledged task) stays above
# Q_TIMEOUT so a live task is never doubled.
JOBS_CHUNK_SIZE_LIMIT = 10_000
JOBS_MAX_ATTEMPTS_LIMIT = 20
JOBS_MAX_WORKERS_LIMIT = 1_000  # a job's max_workers
JOBS_CHUNK_SIZE = env_int("JOBS_CHUNK_SIZE", 100, minimum=1)
JOBS_MAX_ATTEMPTS = env_int("JOBS_MAX_ATTEMPTS", 3, minimum=1)
if JOBS_CHUNK_SIZE > JOBS_CHUNK_SIZE_LIMIT or JOBS_MAX_ATTEMPTS > JOBS_MAX_ATTEMPTS_LIMIT:
    raise ImproperlyConfigured(
        f"JOBS_CHUNK_SIZE must be at most {JOBS_CHUNK_SIZE_LIMIT} and JOBS_MAX_ATTEMPTS at most "
        f"{JOBS_MAX_ATTEMPTS_LIMIT}"
    )
# A claim's lease, extended several times within it while the chunk runs: a dead or frozen
# worker's chunk is claimed again this long after its last beat.
JOBS_LEASE_SECONDS = env_int("JOBS_LEASE_SECONDS", 15, minimum=1)
JOBS_DRAIN_TASKS = env_int("JOBS_DRAIN_TASKS", 4, minimum=1)
# A drain (a task at work on a job) that has not beaten for this long is dead: its place is taken.
JOBS_DRAIN_STALE_SECONDS = env_int("JOBS_DRAIN_STALE_SECONDS", 10, minimum=1)
JOBS_DRAIN_BUDGET_SECONDS = env_int("JOBS_DRAIN_BUDGET_SECONDS", 240, minimum=1)
JOBS_COMMIT_RESERVE_SECONDS = env_int("JOBS_COMMIT_RESERVE_SECONDS", 30, minimum=1)
JOBS_FAIL_FAST_AFTER = env_int("JOBS_FAIL_FAST_AFTER", 50, minimum=1)
JOBS_RETRY_BACKOFF_SECONDS = env_int("JOBS_RETRY_BACKOFF_SECONDS", 5, minimum=0)
JOBS_RETRY_BACKOFF_MAX_SECONDS = env_int("JOBS_RETRY_BACKOFF_MAX_SECONDS", 300, minimum=0)
# Every cluster heals jobs (rings missing drains, sweeps stopped jobs) when it starts and this often.
JOBS_HEAL_SECONDS = env_float("JOBS_HEAL_SECONDS", 5.0, minimum=0.1)
# Every cluster deletes the items of jobs finished more than this many days ago (0: never; see
# prune_jobs), a second at a time between heals; the jobs and their counts stay.
JOBS_PRUNE_DAYS_LIMIT = 36_500  # a century: more would put the cutoff before the calendar's start
JOBS_PRUNE_DAYS = env_int("JOBS_PRUNE_DAYS", 0, minimum=0, maximum=JOBS_PRUNE_DAYS_LIMIT)

Q_TIMEOUT = env_int("Q_TIMEOUT", 600, minimum=10)
Q_RETRY = env_int("Q_RETRY", Q_TIMEOUT + 120, minimum=11)
if Q_RETRY <= Q_TIMEOUT:
    raise ImproperlyConfigured("Q_RETRY must be larger than Q_TIMEOUT")
# The least time a chunk has to extract: one claimed at the very end of a drain's budget.
JOBS_CHUNK_SECONDS_AT_LEAST = Q_TIMEOUT - JOBS_DRAIN_BUDGET_SECONDS - JOBS_COMMIT_RESERVE_SECONDS
if JOBS_CHUNK_SECONDS_AT_LEAST < 2 * JOBS_LEASE_SECONDS:
    raise ImproperlyConfigured(
        "Q_TIMEOUT − JOBS_DRAIN_BUDGET_SECONDS − JOBS_COMMIT_RESERVE_SECONDS (the least time a chunk has) "
        f"must be at least 2 × JOBS_LEASE_SECONDS, got {JOBS_CHUNK_SECONDS_AT_LEAST} s"
    )

IMPORTS_BUDGET_SECONDS = env_int("IMPORTS_BUDGET_SECONDS", JOBS_DRAIN_BUDGET_SECONDS, minimum=1)
if IMPORTS_BUDGET_SECONDS > Q_TIMEOUT - JOBS_COMMIT_RESERVE_SECONDS:
    raise ImproperlyConfigured(
        f"IMPORTS_BUDGET_SECONDS must leave JOBS_COMMIT_RESERVE_SECONDS before Q_TIMEOUT: at most "
        f"{Q_TIMEOUT - JOBS_COMMIT_RESERVE_SECONDS}, got {IMPORTS_BUDGET_SECONDS}"
    )

# Webhooks: every attempt to deliver one has WEBHOOKS_TIMEOUT_SECONDS in all (name resolution,
# connecting, sending, the answer's head and a short excerpt of its body); a failed delivery is
# tried again after WEBHOOKS_RETRY_BACKOFF_SECONDS, doubling up to WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS,
# for WEBHOOKS_RETRY_SECONDS after the event, then marked failed (it can be redelivered from the
# admin). Receivers at private, loopback or link-local addresses are refused unless
# WEBHOOKS_ALLOW_PRIVATE_ADDRESSES is on (a receiver on the same network, the tests).
WEBHOOKS_TIMEOUT_SECONDS = env_float("WEBHOOKS_TIMEOUT_SECONDS", 10.0, minimum=0.5)
if WEBHOOKS_TIMEOUT_SECONDS > 120:
    raise ImproperlyConfigured(
        f"WEBHOOKS_TIMEOUT_SECONDS must be at most 120, got {WEBHOOKS_TIMEOUT_SECONDS}"
    )
WEBHOOKS_RETRY_SECONDS = env_int("WEBHOOKS_RETRY_SECONDS", 86_400, minimum=0)
WEBHOOKS_RETRY_BACKOFF_SECONDS = env_float("WEBHOOKS_RETRY_BACKOFF_SECONDS", 10.0, minimum=0.1)
WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS = env_float(
    "WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS", 3600.0, minimum=WEBHOOKS_RETRY_BACKOFF_SECONDS
)
WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = env_bool("WEBHOOKS_ALLOW_PRIVATE_ADDRESSES", False)

REDIS_URL = os.environ.get("REDIS_URL") or None


def redis_url_with_timeouts(url: str) -> str:
    """REDIS_URL for the task broker, with socket timeouts and keepalives (unless the URL sets its
    own): a worker blocked on a silent Redis gives up within DEAD_PEER_SECONDS. (The broker's
    blocking reads wait 1 s at a time, well below them.)"""
    from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    query = {
        "socket_timeout": str(DEAD_PEER_SECONDS),
        "socket_connect_timeout": str(DEAD_PEER_SECONDS),
        "socket_keepalive": "true",
        "health_check_interval": str(DEAD_PEER_SECONDS),
        **dict(parse_qsl(parts.query)),
    }
    return urlunsplit(parts._replace(query=urlencode(query)))


Q_WORKERS = env_int("Q_WORKERS", 2, minimum=1)
# The ORM broker's pusher looks for new tasks this often while its queue is empty: a rung job (and
# a drain's continuation) waits up to this long to start, and an idle cluster sends one small query
# an interval. (Measured on 2 cores: at 0.5 s a 100,000-item no-op job spent 0.5 of its 3.9 s waiting
# to start.) The Redis broker waits on its list instead: it takes a task at once either way.
Q_POLL_SECONDS = env_float("Q_POLL_SECONDS", 0.1, minimum=0.01)
Q_CLUSTER = {
    "name": os.environ.get("Q_CLUSTER_NAME", "eventproject"),
    "workers": Q_WORKERS,
    # Take only as many tasks as there are workers: a drain task can run for minutes, and
    # tasks prefetched by a busy cluster would wait while another machine's workers idle.
    "queue_limit": Q_WORKERS,
    "timeout": Q_TIMEOUT,
    "retry": Q_RETRY,
    "max_attempts": 0,  # drain tasks are idempotent: re-delivery is always safe
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    "poll": Q_POLL_SECONDS,
    "label": gettext_lazy("Task queue"),
    "cache": "cluster_stats",  # heartbeats, with the ORM broker (the Redis broker keeps them in Redis)
}
if REDIS_URL:
    Q_CLUSTER["redis"] = redis_url_with_timeouts(REDIS_URL)
else:
    Q_CLUSTER["orm"] = "default"
