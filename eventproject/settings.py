"""Settings for eventproject, read from the environment.

Every knob is an environment variable with a safe default; a bad value raises
ImproperlyConfigured at start-up instead of failing later in a worker.
"""

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from django.utils.translation import gettext_lazy

from eventproject.env import env_bool, env_file, env_float, env_int, env_list, env_networks, env_rate

BASE_DIR = Path(__file__).resolve().parent.parent


DEBUG = env_bool("DEBUG", False)

SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "development-only-insecure-key"
elif not DEBUG and (
    len(SECRET_KEY) < 50 or len(set(SECRET_KEY)) < 5 or SECRET_KEY.startswith("django-insecure")
):
    # The same bar as `check --deploy`: a guessable key signs forged sessions.
    raise ImproperlyConfigured(
        "SECRET_KEY must be at least 50 random characters when DEBUG is off "
        '(python -c "import secrets; print(secrets.token_urlsafe(50))")'
    )

ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]" if DEBUG else "")
if not DEBUG and not ALLOWED_HOSTS:
    raise ImproperlyConfigured("ALLOWED_HOSTS must name the site's host names when DEBUG is off")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

# Served behind TLS (HTTPS=on): the proxy in front terminates it and says so in X-Forwarded-Proto;
# everything else is redirected to https, cookies travel only over it, and browsers are told to
# use nothing else (HSTS) for HSTS_SECONDS. Except what asks the web server directly, over plain
# HTTP and never through the proxy: a load balancer's /healthz, the monitoring's /status and
# Prometheus's /metrics (ops.views).
HTTPS = env_bool("HTTPS", False)
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^status$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 31_536_000, minimum=1)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", True)
SECURE_REFERRER_POLICY = "same-origin"

# The proxies and load balancers in front (addresses or networks, comma-separated). Only a request
# arriving from one of them has its client address taken from X-Forwarded-For (walked from the
# right past every trusted proxy: eventproject.proxies); any other client's own header is ignored,
# so nobody can pose as another address to dodge or cause a login lock-out.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI's files, served by us (no CDN)
    "axes",
    "extraction",
    "jobs",  # before django_q: its `qcluster` command (which also heals jobs) replaces django-q2's
    "django_q",
    "ops",
    "webhooks",  # the bottom layer: jobs and extraction record their events through it
]

MIDDLEWARE = [
    "ops.middleware.request_latency",  # outermost: times everything, static files included
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    # The language from the browser's Accept-Language (English unless it asks for Chinese).
    "django.middleware.locale.LocaleMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # A view that meets an outage (the database away) answers 503 saying so, not 500.
    "eventproject.middleware.OutageAnswer",
    # Refuses a too large request body before anything reads it (the CSRF check would).
    "eventproject.middleware.request_body_limit",
    # Last, as django-axes asks: locks out logins after LOGIN_FAILURE_LIMIT failures.
    "axes.middleware.AxesMiddleware",
]
if not DEBUG:  # in debug mode the development servers serve static files from the apps' folders
    MIDDLEWARE.insert(
        MIDDLEWARE.index("django.middleware.security.SecurityMiddleware") + 1,
        "whitenoise.middleware.WhiteNoiseMiddleware",
    )

# Admin logins are throttled against password guessing (django-axes): after LOGIN_FAILURE_LIMIT
# failures for one user name from one address, that pair is refused (HTTP 429) for
# LOGIN_LOCKOUT_MINUTES, even with the right password. API tokens are not passwords: not counted.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = env_int("LOGIN_LOCKOUT_MINUTES", 15, minimum=1) / 60  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_CLIENT_IP_CALLABLE = "eventproject.proxies.client_address"  # behind TRUSTED_PROXIES only
AXES_VERBOSE = False

ROOT_URLCONF = "eventproject.urls"
WSGI_APPLICATION = "eventproject.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "eventproject" / "templates"],  # the admin pages' shared pieces
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


# A connection to the database or the broker notices a peer that went silent (a network partition
# drops packets without a reset; a machine froze) within about this many seconds, instead of the
# kernel's many minutes: a worker cut off mid-chunk then stops, and its lease is taken over. Also the
# longest a new connection waits for an answer.
DEAD_PEER_SECONDS = env_int("DEAD_PEER_SECONDS", 10, minimum=2, maximum=600)

# Database: DATABASE_URL, or an SQLite file in the project folder.
# SQLite is tuned for several processes (web, cluster workers) writing at once:
# WAL lets readers run beside a writer, IMMEDIATE transactions take the write
# lock up front so a writer waits (busy timeout) instead of failing half-way.
DATABASES = {
    "default": dj_database_url.parse(
        os.environ.get("DATABASE_URL") or f"sqlite:///{BASE_DIR / 'db.sqlite3'}",
        conn_max_age=env_int("CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": env_int("SQLITE_BUSY_TIMEOUT", 30, minimum=1),
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not memory, so that worker subprocesses in tests share it.
    DATABASES["default"]["TEST"] = {
        "NAME": os.environ.get("TEST_SQLITE_NAME") or str(BASE_DIR / "test_db.sqlite3")
    }
elif DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql":
    # A process frozen (SIGSTOP, a VM stall) inside a transaction would hold its row locks, the job's
    # among them, and stall every worker: the server ends such a session after this many seconds.
    idle_seconds = env_int("DATABASE_IDLE_TRANSACTION_SECONDS", 10, minimum=1)
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        options=f"-c idle_in_transaction_session_timeout={idle_seconds}s",
        # libpq's TCP settings: unacknowledged data (a query sent into a partition) gives up after
        # tcp_user_timeout; a connection waiting for an answer probes its peer once idle for a third
        # of DEAD_PEER_SECONDS and gives up after a few unanswered probes.
        connect_timeout=DEAD_PEER_SECONDS,
        keepalives=1,
        keepalives_idle=max(DEAD_PEER_SECONDS // 3, 1),
        keepalives_interval=max(DEAD_PEER_SECONDS // 6, 1),
        keepalives_count=3,
        tcp_user_timeout=DEAD_PEER_SECONDS * 1000,
    )
else:
    raise ImproperlyConfigured("DATABASE_URL must point to PostgreSQL or SQLite")

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

# The admin and the API's messages speak English (the default) or Simplified Chinese, as the
# browser asks; the project's own words are in locale/ (compiled .mo files are committed).
LANGUAGE_CODE = "en"
LANGUAGES = [("en", "English"), ("zh-hans", "简体中文")]
LOCALE_PATHS = [BASE_DIR / "locale"]
# Behaviour logs come from Chinese apps: naive timestamps in imported files are
# read in this zone unless the import names another.
TIME_ZONE = os.environ.get("TIME_ZONE", "Asia/Shanghai")
try:
    ZoneInfo(TIME_ZONE)
except (ZoneInfoNotFoundError, ValueError):
    raise ImproperlyConfigured(f"TIME_ZONE {TIME_ZONE!r} is not a known time zone") from None
USE_I18N = True
USE_TZ = True

# Static files: `manage.py collectstatic` gathers them into STATIC_ROOT, where WhiteNoise serves
# them (compressed, under names carrying their hash, cached for ever by browsers). In debug mode
# they come straight from the apps' folders, so development needs no collectstatic.
# (WhiteNoise's middleware is added in MIDDLEWARE when DEBUG is off.)
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "eventproject" / "static"]  # scripts the apps' pages share
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT") or BASE_DIR / "staticfiles")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# Caches: the API's write throttles count here, so with several web processes use Redis.
# "cluster_stats" holds django-q2's cluster heartbeats when the broker is the database, so that
# /healthz in the web server sees clusters running in other processes and on other machines
# (its table is created by the ops app's migration).
CACHES = {
    "default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": os.environ["REDIS_URL"]}
    if os.environ.get("REDIS_URL")
    else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
    "cluster_stats": {
        "BACKEND": "django.core.cache.backends.db.DatabaseCache",
        "LOCATION": "ops_cluster_stats",
    },
}

# Per user. Exports stream whole tables: their own, tighter rate.
API_WRITE_RATE = env_rate("API_WRITE_RATE", "60/minute")
API_READ_RATE = env_rate("API_READ_RATE", "600/minute")
API_EXPORT_RATE = env_rate("API_EXPORT_RATE", "30/hour")
# How long each web process remembers an API token's user and permissions: a revoked token or a
# removed permission keeps working that long at most (0: checked at every request).
API_AUTH_CACHE_SECONDS = env_float("API_AUTH_CACHE_SECONDS", 5.0)
# Server-Sent Events hold a worker while open: a few per user, each for a bounded time (the
# browser reconnects by itself, sending Last-Event-ID).
API_STREAMS_PER_USER = env_int("API_STREAMS_PER_USER", 3, minimum=1)
API_STREAM_MAX_SECONDS = env_int("API_STREAM_MAX_SECONDS", 300, minimum=1)
API_STREAM_POLL_SECONDS = env_float("API_STREAM_POLL_SECONDS", 0.5, minimum=0.05)
# Under ASGI, a client that takes no part of its response for this long (it stopped reading: a
# stalled export, a stream nobody reads) has its connection closed (eventproject/asgi.py).
WEB_SEND_TIMEOUT = env_float("WEB_SEND_TIMEOUT", 60.0, minimum=1.0)

# A user id's length: fixed by the table (UserProfile.user_id), checked the same wherever one
# arrives (API bodies and paths, the admin, files of ids, imports). Not a setting.
USER_ID_MAX_CHARS = 128

REST_FRAMEWORK = {
    # Token first: its WWW-Authenticate header makes anonymous requests 401, not 403.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Remembers a token's user and permissions for API_AUTH_CACHE_SECONDS (eventproject/api.py).
        "eventproject.api.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # JSON bodies are refused with a 400 naming the field when they nest deeper than
    # API_MAX_JSON_DEPTH or carry what the database cannot store (NUL, unpaired surrogates).
    "DEFAULT_PARSER_CLASSES": [
        "eventproject.api.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "URL_FORMAT_OVERRIDE": None,  # "format" is an ordinary query parameter here
}
SPECTACULAR_SETTINGS = {
    "TITLE": "eventproject API",
    "DESCRIPTION": (
        "Batch event extraction: start jobs over many users, follow their progress (polling with ETag, "
        "or Server-Sent Events), cancel, resume, retry, and read the extracted events. Authenticate with "
        "a session or with `Authorization: Token <key>`."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and its docs page need a login (a session or a token), like every API call.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAuthenticated"],
    # Swagger UI from our own static files (drf-spectacular-sidecar), not from a CDN: the docs
    # page runs in the admin's origin, beside its session.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "OAS_VERSION": "3.1.0",  # for JSON Schema 2020-12: the stream's events declare their JSON data
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "eventproject.schema.add_links",
    ],
    "COMPONENT_SPLIT_REQUEST": True,
    # The API's own path converters (eventproject/api.py), described as what they accept.
    "PATH_CONVERTER_OVERRIDES": {
        "id": {"type": "integer", "minimum": 0, "maximum": 2**63 - 1},
        "user_id": {"type": "string", "minLength": 1, "maxLength": USER_ID_MAX_CHARS},
    },
    "ENUM_NAME_OVERRIDES": {
        "JobStatusEnum": "jobs.models.Job.Status",
        "ItemStatusEnum": "jobs.models.JobItem.Status",
        "ExtractionOutcomeEnum": "extraction.models.ExtractionState.Outcome",
        "LegacyStatusEnum": ["idle", "running", "completed", "failed"],
        "PriorityEnum": ["low", "normal", "high", "urgent"],
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "WARNING"},
        # The HTTP client (httpx, or the httpx2 fork the openai client uses) logs each request's URL
        # at INFO, and OPENAI_BASE_URL may carry credentials: its loggers say warnings only.
        **{name: {"level": "WARNING"} for name in ("httpx", "httpx2", "httpcore", "httpcore2", "openai")},
    },
}
# Error reports (the debug page, mails to admins) hide settings whose names say they are secret;
# *_URL settings may carry credentials (OPENAI_BASE_URL, REDIS_URL), so they are hidden too.
DEFAULT_EXCEPTION_REPORTER_FILTER = "eventproject.middleware.SecretsHiddenReporterFilter"


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
EXTRACTION_LLM_BACKOFF_SECONDS = env_float("EXTRACTION_LLM_BACKOFF_SECONDS", 1.0)
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
# Nesting of an API request's JSON body (the API's own bodies are two or three levels deep).
API_MAX_JSON_DEPTH = env_int("API_MAX_JSON_DEPTH", 32, minimum=4, maximum=200)
# User ids one start may name, counted the same way in the API, the admin and the commands.
JOBS_MAX_USER_IDS = env_int("JOBS_MAX_USER_IDS", 100_000, minimum=1)
# The predecessor's synchronous POST /api/v1/events/extract runs in the request: a few users only.
LEGACY_SYNC_MAX_USERS = env_int("LEGACY_SYNC_MAX_USERS", 100, minimum=1, maximum=10_000)
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
JOBS_PRUNE_DAYS = env_int("JOBS_PRUNE_DAYS", 0, minimum=0)

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
    "poll": 0.5,
    "label": gettext_lazy("Task queue"),
    "cache": "cluster_stats",  # heartbeats, with the ORM broker (the Redis broker keeps them in Redis)
}
if REDIS_URL:
    Q_CLUSTER["redis"] = redis_url_with_timeouts(REDIS_URL)
else:
    Q_CLUSTER["orm"] = "default"


# Operations: /healthz and /metrics (the ops app).
# /metrics answers only clients in these networks (comma-separated addresses or CIDR ranges).
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1")
