"""Django's and the web server's settings: security, apps, the database, caches, the API,
languages, static files, logging, operations."""

import os
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from eventproject.env import env_bool, env_float, env_int, env_list, env_networks, env_rate

BASE_DIR = Path(__file__).resolve().parents[2]


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
# Keys being rotated out, space-separated: what they signed (sessions, password resets) stays
# valid, and webhook requests carry a signature under each too, until receivers have the new one.
SECRET_KEY_FALLBACKS = os.environ.get("SECRET_KEY_FALLBACKS", "").split()

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
    SECURE_HSTS_SECONDS = env_int("HSTS_SECONDS", 31_536_000)  # 0: none (a load balancer sends its own)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("HSTS_PRELOAD", True)
SECURE_REFERRER_POLICY = "same-origin"

# The proxies and load balancers in front (addresses or networks, comma-separated). Only a request
# arriving from one of them has its client address taken from X-Forwarded-For (walked from the
# right past every trusted proxy: eventproject.proxies); any other client's own header is ignored,
# so nobody can pose as another address to dodge or cause a login lock-out.
TRUSTED_PROXIES = env_networks("TRUSTED_PROXIES")
if HTTPS and not TRUSTED_PROXIES:
    raise ImproperlyConfigured(
        "HTTPS=on needs TRUSTED_PROXIES: the proxy that terminates TLS (127.0.0.1 for nginx on this "
        "machine) is the only one believed when it says a request came over HTTPS"
    )

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
    # X-Forwarded-Proto believed from TRUSTED_PROXIES only (SecurityMiddleware reads it next).
    "eventproject.proxies.forwarded_proto_from_proxies_only",
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
# Served as WSGI (gunicorn's gthread workers, WEB_THREADS threads a process, read by gunicorn.conf.py
# too), a stream holds a thread while open: streams may hold all but one, which stays for every other
# request (/healthz, the load balancer's check). Under ASGI a stream is a coroutine: no such limit.
WEB_THREADS = env_int("WEB_THREADS", 4, minimum=1)
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
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO").upper()},
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

# Operations: /healthz and /metrics (the ops app).
# /metrics answers only clients in these networks (comma-separated addresses or CIDR ranges).
METRICS_ALLOWED_NETWORKS = env_networks("METRICS_ALLOWED_NETWORKS", "127.0.0.0/8,::1")
