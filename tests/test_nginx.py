"""deploy/nginx.conf, run by the real nginx (Debian's nginx-light) in front of the production web
server with HTTPS=on and a certificate made by the test: the admin over HTTPS (a login, its CSS),
plain HTTP sent to HTTPS, a progress stream's events passed on at once while a job runs on a real
cluster, a body over UPLOAD_MAX_BYTES refused by nginx itself, /metrics and /status not forwarded.

Without nginx these tests are skipped, saying how to install it; in CI (REQUIRE_NGINX=1) its absence
fails the run instead."""

import http.client
import json
import re
import time
from datetime import UTC, datetime
from http.cookies import SimpleCookie

import pytest
from django.conf import settings
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from jobs.models import Job
from jobs.services import job_start
from tests.servers import DEPLOY, Nginx
from tests.tools import executable, unavailable

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]
if not executable(Nginx.BINARY):
    pytestmark.append(
        unavailable(
            f"the proxy tests need nginx at {Nginx.BINARY}: install it with "
            "`sudo apt-get install nginx-light` (Debian/Ubuntu), or point NGINX at an nginx binary",
            required_by="REQUIRE_NGINX",
        )
    )


@pytest.fixture
def proxied(web_server, nginx):
    """The web server as the README deploys it behind nginx, and the nginx in front of it."""
    server = web_server(HTTPS="on", TRUSTED_PROXIES="127.0.0.1", ALLOWED_HOSTS="localhost,127.0.0.1")
    return server, nginx(server)


def test_the_body_cap_is_upload_max_bytes():
    (cap,) = re.findall(r"client_max_body_size (\d+);", (DEPLOY / "nginx.conf").read_text())
    assert int(cap) == settings.UPLOAD_MAX_BYTES == 16_000_000


def test_an_operator_logs_in_to_the_admin_over_https_and_gets_its_css(proxied):
    _, proxy = proxied
    User.objects.create_superuser("boss", "boss@example.com", "right-password")
    origin = f"https://localhost:{proxy.https_port}"
    status, headers, body = proxy.request("GET", "/admin/login/")
    assert status == 200 and headers["strict-transport-security"].startswith("max-age=31536000")
    cookies = SimpleCookie(headers["set-cookie"])
    assert cookies["csrftoken"]["secure"]  # cookies travel over HTTPS only
    (stylesheet,) = [
        url for url in re.findall(r'href="(/static/[^"]+\.css)"', body.decode()) if "base" in url
    ]
    status, headers, css = proxy.request("GET", stylesheet)
    assert status == 200 and headers["content-type"].startswith("text/css") and b"body" in css

    token = re.search(rb'name="csrfmiddlewaretoken" value="([^"]+)"', body).group(1).decode()
    form = f"username=boss&password=right-password&csrfmiddlewaretoken={token}&next=/admin/"
    status, headers, _ = proxy.request(
        "POST",
        "/admin/login/",
        form.encode(),
        {
            "Content-Type": "application/x-www-form-urlencoded",
            "Cookie": f"csrftoken={cookies['csrftoken'].value}",
            "Origin": origin,
            "Referer": f"{origin}/admin/login/",
        },
    )
    assert status == 302 and headers["location"] == "/admin/", headers
    session = SimpleCookie(headers["set-cookie"])["sessionid"]
    assert session["secure"] and session["httponly"]
    status, _, body = proxy.request("GET", "/admin/", headers={"Cookie": f"sessionid={session.value}"})
    assert status == 200 and b"Site administration" in body


def test_plain_http_is_sent_to_https(proxied):
    _, proxy = proxied
    connection = http.client.HTTPConnection("127.0.0.1", proxy.http_port, timeout=10)
    connection.request("GET", "/admin/?x=1", headers={"Host": "localhost"})
    response = connection.getresponse()
    assert response.status == 301 and response.getheader("Location") == "https://localhost/admin/?x=1"
    connection.close()


def test_a_body_over_the_limit_is_refused_by_nginx_before_the_web_server_sees_it(proxied):
    server, proxy = proxied
    connection = proxy.https()
    connection.putrequest("POST", "/api/v1/jobs/")
    connection.putheader("Content-Type", "application/json")
    connection.putheader("Content-Length", str(settings.UPLOAD_MAX_BYTES + 1))
    connection.endheaders(b"{")  # nothing more is sent: nginx answers from the header
    response = connection.getresponse()
    assert response.status == 413 and b"nginx" in response.read()
    connection.close()
    assert "POST /api/v1/jobs/" not in server.output()


@pytest.mark.parametrize(("path", "direct"), [("/metrics", 200), ("/status", 503)])
def test_monitoring_urls_are_not_forwarded(proxied, path, direct):
    server, proxy = proxied
    status, _, _ = proxy.request("GET", path)
    assert status == 403
    assert f"GET {path}" not in server.output()
    # Asked directly, over plain HTTP, they answer (/status: 503, as no cluster runs here).
    assert server.get(path)[0] == direct


def test_healthz_answers_through_nginx_too(proxied):
    _, proxy = proxied
    status, _, body = proxy.request("GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"


class SSE:
    """One progress stream read through nginx, each event with the time it arrived."""

    def __init__(self, proxy, path: str, token: str):
        self.connection = proxy.https(timeout=30)
        self.connection.request("GET", path, headers={"Authorization": f"Token {token}"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.read()

    def events(self):
        fields: dict[str, str] = {}
        while line := self.response.readline().decode():
            if line == "\n" and "event" in fields:
                yield fields["event"], json.loads(fields["data"]), time.time()
                fields = {}
            elif ": " in line and not line.startswith(":"):
                key, value = line.rstrip("\n").split(": ", 1)
                fields[key] = value


def test_a_progress_stream_through_nginx_gets_each_event_at_once_while_a_cluster_works(
    proxied, clusters, make_users, personas
):
    _, proxy = proxied
    users = make_users(40)
    clusters()
    token = Token.objects.create(user=personas["reader"]).key
    job = job_start(user_ids=users, extractor="test", chunk_size=2, options={"seconds_per_user": 0.1})
    stream = SSE(proxy, f"/api/v1/jobs/{job.id}/stream/", token)
    seen = []
    for name, data, arrived in stream.events():
        seen.append((name, data, arrived))
        if name == "end":
            break
    stream.connection.close()
    job.refresh_from_db()
    assert job.status == "completed"
    finished = job.finished_at.timestamp()
    under_way = [
        data["processed"] for name, data, arrived in seen if name == "progress" and arrived < finished
    ]
    # Passed on as they came: many states seen while the job ran (a buffering proxy would hold them
    # until the stream ends), and the end soon after it.
    assert len([n for n in under_way if 0 < n < 40]) >= 3, [data.get("processed") for _, data, _ in seen]
    assert under_way == sorted(under_way)
    assert seen[-1][0] == "end" and seen[-1][2] - finished < 3
    assert datetime.fromtimestamp(finished, UTC) == job.finished_at
    assert Job.objects.get(id=job.id).succeeded_items == 40
