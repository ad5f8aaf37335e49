"""Tests that need a program the machine may lack (Chromium, systemd-analyze)."""

import os

import pytest


def unavailable(reason: str, *, required_by: str) -> pytest.MarkDecorator:
    """A skip mark saying why and how to fix it, on a developer's machine. Where the environment
    variable `required_by` is 1 (.ci/run sets it) a missing program is a broken machine instead:
    collecting the tests fails, so a skip can never hide the feature they test."""
    if os.environ.get(required_by) == "1":
        pytest.fail(f"{reason} ({required_by}=1: these tests must run here)", pytrace=False)
    return pytest.mark.skip(reason=reason)


def executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)
