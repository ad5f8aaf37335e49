"""Production serving: gunicorn as deploy/eventproject-web.service starts it, DEBUG off, static files
from collectstatic through WhiteNoise."""

import os
import re
import subprocess
import sys

import pytest

from tests.cluster import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]


def asset_urls(html: str, suffix: str) -> list[str]:
    return re.findall(rf'(?:href|src)="(/static/[^"]+\.{suffix})"', html)


def test_gunicorn_with_debug_off_serves_the_admin_with_its_css_and_javascript(web_server):
    server = web_server()
    status, _, body = server.get("/admin/login/")
    assert status == 200
    html = body.decode()
    stylesheets, scripts = asset_urls(html, "css"), asset_urls(html, "js")
    assert any(re.fullmatch(r"/static/admin/css/base\.[0-9a-f]{12}\.css", url) for url in stylesheets), html
    assert scripts, html
    for url in stylesheets + scripts:
        status, headers, content = server.get(url, {"Accept-Encoding": "gzip"})
        assert status == 200, url
        assert headers["content-type"].startswith("text/css" if url.endswith(".css") else "text/javascript")
        assert headers.get("content-encoding") == "gzip", url  # compressed by collectstatic
        assert "immutable" in headers["cache-control"]  # a hashed name never changes its content
        assert content
    status, headers, css = server.get(stylesheets[0])
    assert status == 200 and b"body" in css  # the plain file too, for clients without gzip


def test_debug_off_means_no_debug_pages(web_server):
    server = web_server()
    status, _, body = server.get("/no-such-page/")
    assert status == 404
    assert b"URLconf" not in body and b"Traceback" not in body


def test_without_collectstatic_healthz_says_what_to_run(web_server, tmp_path):
    server = web_server(STATIC_ROOT=str(tmp_path / "never-collected"))
    status, _, body = server.get("/healthz")
    assert status == 503
    assert b"run manage.py collectstatic" in body


def test_a_bad_server_setting_stops_gunicorn_with_a_message_naming_it(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--check-config", "eventproject.asgi"],
        cwd=ROOT,
        env={**os.environ, "WEB_TIMEOUT": "many", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "WEB_TIMEOUT must be a positive integer, got 'many'" in result.stderr
