import os
import subprocess
import sys

import pytest


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
        (
            {"DEBUG": "1", "METRICS_ALLOWED_NETWORKS": "10.0.0.0/8,intranet"},
            "METRICS_ALLOWED_NETWORKS entries must be addresses or networks like 10.0.0.0/8, got 'intranet'",
        ),
    ],
)
def test_it_refuses_bad_configuration_by_name(env, message):
    code, stderr = settings_error(**env)
    assert code != 0
    assert "ImproperlyConfigured" in stderr and message in stderr
