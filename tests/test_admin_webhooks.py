"""Webhook endpoints and deliveries in the admin: only integrators (and superusers) configure them,
the signing secret is shown once on the page that made it, attempts are listed, and deliveries can
be sent again."""

import re
import time

import pytest
from standardwebhooks import Webhook

from jobs.services import job_start
from jobs.worker.drain import job_drain
from webhooks.delivery import delivery_attempt
from webhooks.models import Delivery, Endpoint
from webhooks.signing import signed_headers

pytestmark = pytest.mark.django_db

SECRET = re.compile(r"whsec_[A-Za-z0-9+/=]+")


def add_endpoint(client, url: str, **fields):
    return client.post(
        "/admin/webhooks/endpoint/add/",
        {"name": "reports", "url": url, "events": ["job.completed", "job.failed"], "active": "on", **fields},
    )


def test_an_integrator_adds_an_endpoint_and_sees_its_secret_this_once(client, personas, receiver):
    client.force_login(personas["integrator"])
    page = add_endpoint(client, receiver.url)
    assert page.status_code == 200 and "no-store" in page["Cache-Control"]
    (secret,) = SECRET.findall(page.content.decode())
    endpoint = Endpoint.objects.get()
    assert (endpoint.name, endpoint.events, endpoint.created_by) == (
        "reports",
        ["job.completed", "job.failed"],
        personas["integrator"],
    )
    # What the clusters sign with is that secret: the reference library verifies it.
    headers = signed_headers(endpoint.secret_salt, "msg_1", int(time.time()), b"{}")
    assert Webhook(secret).verify(b"{}", headers) == {}
    change = client.get(f"/admin/webhooks/endpoint/{endpoint.id}/change/").content.decode()
    assert not SECRET.search(change) and "webhook-renew-secret" in change
    assert not SECRET.search(client.get("/admin/webhooks/endpoint/").content.decode())


def test_renewing_the_secret_shows_a_new_one_and_the_old_one_stops_verifying(client, personas, receiver):
    client.force_login(personas["integrator"])
    (old,) = SECRET.findall(add_endpoint(client, receiver.url).content.decode())
    endpoint = Endpoint.objects.get()
    assert client.get(f"/admin/webhooks/endpoint/{endpoint.id}/renew-secret/").status_code == 405
    (new,) = SECRET.findall(
        client.post(f"/admin/webhooks/endpoint/{endpoint.id}/renew-secret/").content.decode()
    )
    endpoint.refresh_from_db()
    headers = signed_headers(endpoint.secret_salt, "msg_1", int(time.time()), b"{}")
    assert new != old and Webhook(new).verify(b"{}", headers) == {}
    with pytest.raises(Exception, match="signature"):
        Webhook(old).verify(b"{}", headers)


def test_a_receiver_at_a_private_address_or_with_credentials_is_refused_on_the_form(
    client, personas, settings
):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
    client.force_login(personas["admin"])
    for url, message in [
        ("http://10.0.0.5/hook", "10.0.0.5 is a private address"),
        ("https://u:p@hooks.example/", "No user name or password"),
    ]:
        page = add_endpoint(client, url).content.decode()
        assert message in page, url
    page = add_endpoint(client, "https://hooks.example/", events=[]).content.decode()
    assert "This field is required." in page
    assert not Endpoint.objects.exists()


def test_only_integrators_and_superusers_see_endpoints_and_deliveries(client, personas):
    for persona in ("operator", "viewer", "analyst"):
        client.force_login(personas[persona])
        assert client.get("/admin/webhooks/endpoint/").status_code == 403, persona
        assert client.get("/admin/webhooks/delivery/").status_code == 403, persona
        assert client.get("/admin/webhooks/endpoint/add/").status_code == 403, persona
    for persona in ("integrator", "admin"):
        client.force_login(personas[persona])
        assert client.get("/admin/webhooks/endpoint/").status_code == 200, persona


def test_a_deliverys_page_lists_its_attempts_and_it_can_be_sent_again(
    client, personas, receiver, endpoint, make_users
):
    endpoint("job.completed")
    job = job_start(user_ids=make_users(1), enqueue=False)
    job_drain(job.id)
    delivery = Delivery.objects.get()
    receiver.behaviour.status, receiver.behaviour.body = 500, b"database on fire"
    delivery_attempt(delivery.id)
    client.force_login(personas["integrator"])
    listing = client.get("/admin/webhooks/delivery/").content.decode()
    assert "job.completed" in listing and delivery.event.message_id in listing
    page = client.get(f"/admin/webhooks/delivery/{delivery.id}/change/").content.decode()
    for text in ("the receiver answered HTTP 500", "database on fire", f"&quot;id&quot;: {job.id}"):
        assert text in page, text
    Delivery.objects.filter(id=delivery.id).update(status="failed")
    response = client.post(
        "/admin/webhooks/delivery/",
        {"action": "redeliver_selected", "_selected_action": [delivery.id]},
        follow=True,
    )
    assert f"Delivery {delivery.id} will be sent again." in response.content.decode()
    delivery.refresh_from_db()
    assert delivery.status == "pending"


def test_the_webhook_screens_speak_chinese_to_a_chinese_browser(client, personas):
    client.force_login(personas["integrator"])
    zh = {"HTTP_ACCEPT_LANGUAGE": "zh-CN,zh;q=0.9"}
    page = client.get("/admin/webhooks/endpoint/add/", **zh).content.decode()
    for words in ("Webhook 端点", "任务完成（附计数）", "导入失败（附错误）"):
        assert words in page, words
    assert "Webhook 投递" in client.get("/admin/webhooks/delivery/", **zh).content.decode()
