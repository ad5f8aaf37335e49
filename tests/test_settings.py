import os
import subprocess
import sys

import pytest

PRODUCTION_KEY = "k3Jx9-qLw2ZpT7vN4bR8sY1cU6mE0aH5dF2gK9jL3nP7qS4tV8wX1zA6"
PRODUCTION = {"DEBUG": "0", "SECRET_KEY": PRODUCTION_KEY, "ALLOWED_HOSTS": "events.example.com"}
BEHIND_NGINX = {"HTTPS": "on", "TRUSTED_PROXIES": "127.0.0.1"}


def deploy_check(**env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "HTTPS")}
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )


def test_behind_tls_the_deploy_check_finds_nothing():
    result = deploy_check(**PRODUCTION, **BEHIND_NGINX)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "System check identified no issues (0 silenced)."
    assert result.stderr == ""


def test_without_https_the_deploy_check_names_what_tls_would_fix():
    result = deploy_check(**PRODUCTION)
    assert result.returncode != 0
    for check in ("security.W004", "security.W008", "security.W012", "security.W016"):
        assert check in result.stderr


def settings_error(**env):
    """Import the settings in a fresh interpreter with this environment; return stderr."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-c", "import eventproject.settings"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    return result.returncode, result.stderr


def test_it_starts_with_development_defaults_in_debug():
    assert settings_error(DEBUG="1") == (0, "")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"DEBUG": "0"}, "SECRET_KEY must be set when DEBUG is off"),
        ({"DEBUG": "maybe"}, "DEBUG must be a boolean"),
        ({"DEBUG": "1", "JOBS_CHUNK_SIZE": "ten"}, "JOBS_CHUNK_SIZE must be an integer, got 'ten'"),
        ({"DEBUG": "1", "JOBS_CHUNK_SIZE": "0"}, "JOBS_CHUNK_SIZE must be at least 1"),
        ({"DEBUG": "1", "DATABASE_URL": "mysql://x@y/z"}, "DATABASE_URL must point to PostgreSQL or SQLite"),
        ({"DEBUG": "1", "TIME_ZONE": "Nowhere/City"}, "TIME_ZONE 'Nowhere/City' is not a known time zone"),
        ({"DEBUG": "1", "EXTRACTION_RULES_FILE": "/no/such.json"}, "is not a file"),
        ({"DEBUG": "1", "EXTRACTION_EXTRA_EXTRACTORS": "broken"}, "must look like name=module.Class"),
        ({"DEBUG": "1", "Q_TIMEOUT": "100", "Q_RETRY": "90"}, "Q_RETRY must be larger than Q_TIMEOUT"),
        ({"DEBUG": "1", "Q_POLL_SECONDS": "0"}, "Q_POLL_SECONDS must be at least 0.01"),
        # After one 5xx a call waited for ever: until its chunk's deadline, the job going nowhere.
        ({"DEBUG": "1", "EXTRACTION_LLM_BACKOFF_SECONDS": "inf"}, "must be a finite number, got 'inf'"),
        ({"DEBUG": "1", "EXTRACTION_LLM_BACKOFF_SECONDS": "1e9"}, "must be at most 60.0, got 1000000000.0"),
        ({"DEBUG": "1", "JOBS_HEAL_SECONDS": "nan"}, "JOBS_HEAL_SECONDS must be a finite number, got 'nan'"),
        (
            {"DEBUG": "1", "METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"},
            "METRICS_ALLOWED_NETWORKS entries must be addresses or networks like 10.0.0.0/8, got 'intranet'",
        ),
        ({"DEBUG": "0", "SECRET_KEY": "short"}, "SECRET_KEY must be at least 50 random characters"),
        ({"DEBUG": "0", "SECRET_KEY": PRODUCTION_KEY}, "ALLOWED_HOSTS must name the site's host names"),
        ({"DEBUG": "1", "HTTPS": "sometimes"}, "HTTPS must be a boolean"),
        ({"DEBUG": "1", "HTTPS": "on"}, "HTTPS=on needs TRUSTED_PROXIES: the proxy that terminates TLS"),
        ({"DEBUG": "1", "API_READ_RATE": "fast"}, "API_READ_RATE must look like 60/minute"),
        ({"DEBUG": "1", "IMPORT_MAX_LINE_CHARS": "10"}, "IMPORT_MAX_LINE_CHARS must be at least 1024"),
        ({"DEBUG": "1", "IMPORT_LATEST_YEAR": "99999"}, "IMPORT_LATEST_YEAR must be at most 9000"),
        ({"DEBUG": "1", "API_STREAMS_PER_USER": "0"}, "API_STREAMS_PER_USER must be at least 1"),
        (
            {"DEBUG": "1", "EXTRACTION_LLM_RESPONSE_FORMAT": "yaml"},
            "EXTRACTION_LLM_RESPONSE_FORMAT must be auto, json_schema, json_object or text, not 'yaml'",
        ),
        ({"DEBUG": "1", "WEBHOOKS_TIMEOUT_SECONDS": "600"}, "WEBHOOKS_TIMEOUT_SECONDS must be at most 120"),
        (
            {"DEBUG": "1", "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES": "maybe"},
            "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES must be a",
        ),
        (
            {
                "DEBUG": "1",
                "WEBHOOKS_RETRY_BACKOFF_SECONDS": "60",
                "WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS": "10",
            },
            "WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS must be at least 60",
        ),
    ],
)
def test_it_refuses_bad_configuration_by_name(env, message):
    code, stderr = settings_error(**env)
    assert code != 0
    assert "ImproperlyConfigured" in stderr and message in stderr


@pytest.mark.parametrize("command", [["check"], ["qcluster"], ["migrate", "--check"]])
def test_a_command_refuses_a_bad_setting_in_one_line_naming_it(command):
    """The example environment file's SECRET_KEY placeholder used to end every command in a
    fifty-line traceback, the message on its last line."""
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "manage.py", *command],
        env={**clean, "DEBUG": "0", "SECRET_KEY": "change-me-to-a-long-random-string"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("ImproperlyConfigured: SECRET_KEY must be at least 50 random characters")
    assert result.stderr.count("\n") == 1


def test_manage_py_takes_the_settings_module_given_on_its_command_line(tmp_path):
    (tmp_path / "other_settings.py").write_text("from eventproject.settings import *  # noqa\nMARK = 7\n")
    show = "from django.conf import settings; print(settings.SETTINGS_MODULE, settings.MARK)"
    result = subprocess.run(
        [
            sys.executable,
            "manage.py",
            "shell",
            "--pythonpath",
            str(tmp_path),
            "--settings",
            "other_settings",
            "-c",
            show,
        ],
        env={**os.environ, "DEBUG": "1"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "other_settings 7"


def test_fallback_keys_come_from_the_environment_and_the_log_level_in_any_case():
    probe = "from django.conf import settings; print(settings.SECRET_KEY_FALLBACKS)"
    result = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {probe}"],
        env={
            **os.environ,
            "DEBUG": "1",
            "SECRET_KEY_FALLBACKS": "old-key-one  old-key-two",
            "LOG_LEVEL": "debug",
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['old-key-one', 'old-key-two']"


def test_error_reports_hide_a_password_in_any_url_a_setting_holds(settings):
    from eventproject.middleware import SecretsHiddenReporterFilter

    url = "redis://:s3cretpw@redis.example.com:6379/0"
    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": url}}
    settings.Q_CLUSTER = {"name": "x", "redis": url, "workers": 2}
    shown = SecretsHiddenReporterFilter().get_safe_settings()
    assert "s3cretpw" not in repr(shown)
    assert shown["Q_CLUSTER"]["workers"] == 2  # the rest stays readable


@pytest.mark.parametrize(("value", "poll"), [(None, "0.1"), ("0.3", "0.3")])
def test_the_orm_broker_looks_for_tasks_every_q_poll_seconds(value, poll):
    """A rung job waits for the broker's next look: at 0.5 s (the setting before) it was an eighth
    of a 100,000-item no-op job's run (tests/bench/engine.py prints its start)."""
    clean = {k: v for k, v in os.environ.items() if k not in ("Q_POLL_SECONDS", "REDIS_URL")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import django; django.setup(); from django_q.conf import Conf; print(Conf.POLL)",
        ],
        env={**clean, "DEBUG": "1", **({"Q_POLL_SECONDS": value} if value else {})},
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == poll


def test_a_bad_openai_base_url_is_refused_without_echoing_its_credentials():
    code, stderr = settings_error(DEBUG="1", OPENAI_BASE_URL="ftp://bob:SECRET-PW@llm.example/v1")
    assert code != 0 and "OPENAI_BASE_URL must be an http(s) URL" in stderr
    assert "SECRET-PW" not in stderr


BEHIND_TLS_PROBE = """
import django
django.setup()
from django.test import Client
client = Client(HTTP_HOST="events.example.com")
plain = client.get("/admin/login/")
print(plain.status_code, plain["Location"])
secure = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
print(secure.status_code, secure.get("Strict-Transport-Security"), secure.cookies["csrftoken"]["secure"])
"""


@pytest.mark.parametrize(
    ("hsts", "sent"),
    [
        ({}, "max-age=31536000; includeSubDomains; preload"),
        ({"HSTS_SECONDS": "600", "HSTS_PRELOAD": "off"}, "max-age=600; includeSubDomains"),
        ({"HSTS_SECONDS": "0"}, "None"),  # off: a load balancer in front sends its own, say
    ],
)
def test_behind_tls_it_redirects_to_https_and_sends_hsts_and_secure_cookies(static_root, hsts, sent):
    clean = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "SECRET_KEY", "DATABASE_URL", "HTTPS")}
    result = subprocess.run(
        [sys.executable, "-c", BEHIND_TLS_PROBE],
        env={
            **clean,
            **PRODUCTION,
            **BEHIND_NGINX,  # the test client's 127.0.0.1 is the proxy saying https
            "STATIC_ROOT": str(static_root),  # the admin's pages name their collected files
            "DJANGO_SETTINGS_MODULE": "eventproject.settings",
            **hsts,
        },
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["301 https://events.example.com/admin/login/", f"200 {sent} True"]
