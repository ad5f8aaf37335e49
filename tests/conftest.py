import io
from pathlib import Path

import pytest
from django.core.management import call_command


@pytest.fixture
def write_file(tmp_path: Path):
    """Write text (or bytes, as given) to a file under tmp_path and return its path."""

    def write(name: str, content: str | bytes, *, encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode(encoding))
        return path

    return write


@pytest.fixture
def run():
    """Run a management command; returns (stdout, stderr)."""

    def run_command(*args: str, **options) -> tuple[str, str]:
        out, err = io.StringIO(), io.StringIO()
        call_command(*args, stdout=out, stderr=err, **options)
        return out.getvalue(), err.getvalue()

    return run_command
