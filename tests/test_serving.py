"""Production serving: gunicorn as deploy/eventproject-web.service starts it, DEBUG off, static files
from collectstatic through WhiteNoise; `gunicorn eventproject.wsgi` too; HTTPS=on with what a load
balancer and Prometheus ask over plain HTTP."""

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading

import pytest
from rest_framework.authtoken.models import Token

from tests.cluster import ROOT, process_tree, wait_for
from tests.servers import session_cookie

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


def test_with_https_on_healthz_status_and_metrics_answer_plain_http_and_the_rest_redirects(web_server):
    server = web_server(HTTPS="on", TRUSTED_PROXIES="127.0.0.1")
    for path, expected in [("/healthz", {200}), ("/status", {200, 503}), ("/metrics", {200})]:
        status, headers, _ = server.get(path)
        assert status in expected, (path, status, headers.get("location"))
    for path in ("/admin/login/", "/api/v1/jobs/", "/api/docs/"):
        status, headers, _ = server.get(path)
        assert status == 301 and headers["location"] == f"https://127.0.0.1:{server.port}{path}"
    # Through the proxy (it says https), the admin answers, with HSTS.
    status, headers, _ = server.get("/admin/login/", {"X-Forwarded-Proto": "https"})
    assert status == 200 and headers["strict-transport-security"].startswith("max-age=31536000")


def test_the_web_server_listens_on_every_address_web_bind_names(tmp_path):
    """Loopback for nginx, the machine's own address for a load balancer and Prometheus."""
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--print-config", "eventproject.asgi"],
        cwd=ROOT,
        env={
            **os.environ,
            "WEB_BIND": "127.0.0.1:8000, 10.0.5.10:8000",
            "PROMETHEUS_MULTIPROC_DIR": str(tmp_path),
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert re.search(r"^bind\s+= \['127.0.0.1:8000', '10.0.5.10:8000'\]$", result.stdout, re.M), result.stderr


def test_another_server_on_its_port_does_not_pass_for_a_started_gunicorn(tmp_path, monkeypatch):
    """The tests' own harness: a gunicorn that could not bind its port passed for started while
    another test's server answered there, and a test then asked that one (and got its 501)."""
    from tests import servers

    address = ("127.0.0.1", servers.free_port())
    other = http.server.ThreadingHTTPServer(address, http.server.BaseHTTPRequestHandler)  # 501 to all
    threading.Thread(target=other.serve_forever, daemon=True).start()
    monkeypatch.setattr(servers, "free_port", lambda: address[1])
    try:
        with pytest.raises(AssertionError, match="Connection in use"):
            servers.WebServer(tmp_path / "web.log").stop()  # stopped, should it ever pass
    finally:
        other.shutdown()
        other.server_close()


@pytest.mark.parametrize("application", ["eventproject.asgi", "eventproject.wsgi"])
def test_a_client_that_is_not_a_trusted_proxy_cannot_pass_for_https(web_server, application):
    """The web server's own address is reachable for a load balancer's health check: a client
    asking it directly with X-Forwarded-Proto: https is still on plain HTTP (gunicorn's and
    uvicorn's own belief in the header, from loopback by default, is off too)."""
    server = web_server(application, HTTPS="on", TRUSTED_PROXIES="10.0.5.1")  # loopback is not it
    status, headers, _ = server.get("/admin/login/", {"X-Forwarded-Proto": "https"})
    assert status == 301 and headers["location"].startswith("https://")


@pytest.mark.parametrize("application", ["eventproject.asgi", "eventproject.wsgi"])
def test_gunicorn_serves_either_application_with_a_worker_class_that_fits_it(
    web_server, personas, application
):
    server = web_server(application)
    assert (
        f"Using worker: {'eventproject.web_worker.Worker' if application.endswith('asgi') else 'gthread'}"
        in (server.output())
    )
    status, _, body = server.get("/admin/login/")
    assert status == 200 and b"csrfmiddlewaretoken" in body
    token = Token.objects.create(user=personas["operator"]).key
    status, headers, body = server.get("/api/v1/jobs/", {"Authorization": f"Token {token}"})
    assert status == 200 and headers["content-type"] == "application/json"
    assert json.loads(body)["count"] == 0
    status, _, body = server.request(
        "POST",
        "/api/v1/jobs/",
        b'{"user_ids": ["nobody"]}',
        {"Authorization": f"Token {token}", "Content-Type": "application/json"},
    )
    assert status == 400 and b"nobody" in body
    assert server.get("/healthz")[0] == 200


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["-k", "eventproject.web_worker.Worker", "eventproject.wsgi"],
            "eventproject.wsgi is a WSGI application",
        ),
        (["-k", "gthread", "eventproject.asgi"], "eventproject.asgi is an ASGI application"),
    ],
)
def test_a_worker_class_that_cannot_run_the_application_stops_gunicorn_saying_so(
    tmp_path, arguments, message
):
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--bind", "127.0.0.1:0", *arguments],
        cwd=ROOT,
        env={**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        _, stderr = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it serves instead: stop it and its workers
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise AssertionError("gunicorn started with a worker class that cannot run the application") from None
    assert process.returncode == 1
    assert message in stderr and "cannot run it" in stderr


def test_the_api_docs_and_their_swagger_ui_files_come_from_this_server(web_server, personas):
    server = web_server()
    status, headers, _ = server.get("/api/docs/")
    assert status == 302 and headers["location"] == "/admin/login/?next=/api/docs/"
    status, _, body = server.get("/api/docs/", {"Cookie": session_cookie(personas["viewer"])})
    assert status == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', body.decode())
    bundles = [source for source in sources if re.search(r"swagger-ui-bundle\.[0-9a-f]{12}\.js$", source)]
    assert bundles and all(source.startswith("/static/drf_spectacular_sidecar/") for source in sources), (
        sources
    )
    for source in sources:
        status, headers, content = server.get(source)
        assert status == 200 and content, source


def test_by_default_it_runs_one_worker_process_more_than_the_cores(web_server):
    server = web_server(WEB_CONCURRENCY=None)  # unset: the default
    workers = process_tree(server.process.pid) - {server.process.pid}
    assert len(workers) == os.cpu_count() + 1, server.output()[-2000:]


def test_a_reload_keeps_the_worker_class_that_fits_the_application(web_server):
    server = web_server(WEB_CONCURRENCY="1")
    before = process_tree(server.process.pid) - {server.process.pid}
    server.process.send_signal(signal.SIGHUP)  # systemctl reload: the configuration is read again
    wait_for(
        lambda: (
            (process_tree(server.process.pid) - {server.process.pid}).isdisjoint(before)
            and server.get("/healthz")[0] == 200
        ),
        timeout=60,
        what=f"new workers after the reload:\n{server.output()[-2000:]}",
    )
    assert server.output().count("Using worker: eventproject.web_worker.Worker") >= 1
    assert server.get("/admin/login/")[0] == 200


def test_gunicorn_makes_no_control_socket_in_its_users_home(web_server):
    """gunicorn 25+ made one at $HOME/.gunicorn/gunicorn.ctl: shared by every gunicorn of the
    account (each start took it from the previous one), an error at every start for a service user
    whose home it cannot write (here a folder nobody can make)."""
    server = web_server(HOME="/proc/eventproject-home", XDG_RUNTIME_DIR=None)
    assert server.get("/healthz")[0] == 200
    assert "Control server error" not in server.output()
    assert "Control socket" not in server.output()
