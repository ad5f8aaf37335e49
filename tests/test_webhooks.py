"""Webhooks, attempt by attempt, against a real HTTP receiver on loopback: events recorded with the
change they announce, signed so the reference `standardwebhooks` library verifies them, retried
with a capped backoff, given up, redelivered; receivers that hang, drip, redirect or talk too much;
addresses refused by default (SSRF); secrets in no row and no log line."""

import itertools
import logging
import socket
import time
import uuid
from datetime import timedelta

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from django_q.models import OrmQ
from standardwebhooks import Webhook

from extraction.imports import import_create, import_run
from jobs.models import Job
from jobs.services import job_cancel, job_start
from jobs.transitions import job_fail
from jobs.worker.drain import job_drain
from tests.cluster import wait_for
from tests.threads import at_once
from webhooks.delivery import deliveries_heal, delivery_attempt, retry_backoff_seconds
from webhooks.models import Attempt, Delivery, Endpoint, Event
from webhooks.outbound import post, url_problem
from webhooks.services import delivery_redeliver, endpoint_create, endpoint_secret_renew

pytestmark = pytest.mark.django_db


def finished_job(users: list[str]) -> Job:
    job = job_start(user_ids=users, enqueue=False)
    job_drain(job.id)
    job.refresh_from_db()
    return job


def only_delivery() -> Delivery:
    (delivery,) = Delivery.objects.all()
    return delivery


def verified(secret: str, request) -> dict:
    """The body of a received request, once the reference library has verified its signature."""
    return Webhook(secret).verify(request.body, request.headers)


def test_a_completed_job_is_announced_signed_as_the_reference_library_verifies(
    make_users, receiver, endpoint
):
    _, secret = endpoint("job.completed")
    job = finished_job(make_users(3))
    delivery = only_delivery()
    assert (delivery.event.type, delivery.status) == ("job.completed", "pending")

    attempt = delivery_attempt(delivery.id)

    (request,) = receiver.received
    body = verified(secret, request)
    assert body["type"] == "job.completed" and body["timestamp"].endswith("Z")
    assert (
        body["data"]["job"] | {"id": job.id, "status": "completed", "succeeded_items": 3}
        == body["data"]["job"]
    )
    assert request.headers["webhook-id"] == delivery.event.message_id
    assert request.headers["content-type"] == "application/json"
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count, delivery.last_status_code) == ("succeeded", 1, 200)
    assert (attempt.status_code, attempt.error, attempt.response_excerpt) == (200, "", "ok")
    assert delivery_attempt(delivery.id) is None  # done: nothing to claim


def test_a_tampered_body_or_another_secret_does_not_verify(make_users, receiver, endpoint):
    _, secret = endpoint("job.completed")
    finished_job(make_users(1))
    delivery_attempt(only_delivery().id)
    (request,) = receiver.received
    with pytest.raises(Exception, match="signature"):
        Webhook(secret).verify(request.body.replace(b"completed", b"failed"), request.headers)
    other = endpoint_create(name="other", url=receiver.url, events=["job.completed"])[1]
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(request.body, request.headers)


def test_each_end_of_a_job_or_an_import_goes_to_the_endpoints_that_want_it(
    make_users, receiver, endpoint, failing_job, imports_dir
):
    from django.core.files.uploadedfile import SimpleUploadedFile

    wants_failures = endpoint("job.failed", "import.failed", name="failures")[0]
    wants_all = endpoint(name="all")[0]
    endpoint(name="paused", active=False)
    users = make_users(4)
    completed = finished_job(users[:1])
    failed = job_start(user_ids=users[1:2], enqueue=False)
    job_fail(failed.id, "the extractor cannot start")
    cancelled = job_start(user_ids=users[2:3], enqueue=False)
    job_cancel(cancelled)
    good = import_create(kind="profiles", upload=SimpleUploadedFile("p.csv", b"user_id,city\nu9,x\n"))
    import_run(good.id)
    bad = import_create(kind="profiles", upload=SimpleUploadedFile("p.csv", b"user_id\n"))
    (imports_dir / bad.stored_name).unlink()  # a worker that cannot find the file fails the import
    import_run(bad.id)

    sent = {
        (delivery.endpoint.name, delivery.event.type, delivery.event.data.get("job", {}).get("id"))
        for delivery in Delivery.objects.select_related("event", "endpoint")
    }
    assert sent == {
        ("failures", "job.failed", failed.id),
        ("failures", "import.failed", None),
        ("all", "job.completed", completed.id),
        ("all", "job.failed", failed.id),
        ("all", "job.cancelled", cancelled.id),
        ("all", "import.completed", None),
        ("all", "import.failed", None),
    }
    assert wants_failures.deliveries.count() == 2 and wants_all.deliveries.count() == 5
    failure = Event.objects.get(type="job.failed").data["job"]
    assert (failure["status"], failure["error"]) == ("failed", "the extractor cannot start")
    imported = Event.objects.get(type="import.completed").data["import"]
    assert (imported["id"], imported["status"], imported["imported"]) == (good.id, "completed", 1)
    assert Event.objects.get(type="import.failed").data["import"]["error"].startswith("the uploaded file")
    # One event (one webhook-id) per change, whatever the number of endpoints.
    assert Event.objects.filter(type="job.failed").count() == 1


def test_an_event_exists_only_if_the_change_it_announces_committed(make_users, endpoint):
    endpoint("job.failed")
    job = job_start(user_ids=make_users(1), enqueue=False)
    with pytest.raises(RuntimeError), transaction.atomic():
        job_fail(job.id, "boom")
        assert Delivery.objects.count() == 1
        raise RuntimeError("the surrounding transaction rolls back")
    job.refresh_from_db()
    assert job.status == "queued" and not Event.objects.exists() and not Delivery.objects.exists()


def test_a_new_delivery_rings_a_task_and_healing_rings_a_due_one_only_once(
    make_users, endpoint, django_capture_on_commit_callbacks
):
    endpoint("job.completed")
    with django_capture_on_commit_callbacks(execute=True):
        finished_job(make_users(1))
    delivery = only_delivery()
    assert OrmQ.objects.count() == 1  # rung when the event committed
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_heal() == []  # rung a moment ago: its task may be waiting in the queue
        Delivery.objects.filter(id=delivery.id).update(rung_at=None)  # as if the broker lost it
        OrmQ.objects.all().delete()
        assert deliveries_heal() == [f"webhook delivery {delivery.id}: rang it again"]
        assert deliveries_heal() == []
    assert OrmQ.objects.count() == 1


def test_healing_adds_no_copies_while_tasks_wait_in_the_queue(
    make_users, endpoint, django_capture_on_commit_callbacks
):
    """Every worker busy with long drains: the deliveries' tasks wait in the queue for minutes,
    far longer than the quiet time after which healing rings an unanswered delivery again."""
    endpoint("job.completed")
    with django_capture_on_commit_callbacks(execute=True):
        for user in make_users(3):
            finished_job([user])
    assert OrmQ.objects.count() == 3
    for _ in range(4):  # heals, each a quiet time after the last ring
        Delivery.objects.update(rung_at=timezone.now() - timedelta(hours=1))
        with django_capture_on_commit_callbacks(execute=True):
            assert deliveries_heal() == []
    assert OrmQ.objects.count() == 3
    # One whose bell was answered (claimed, failed, backed off) has no task: its retry is rung.
    retry = Delivery.objects.first()
    Delivery.objects.filter(id=retry.id).update(rung_at=None)
    with django_capture_on_commit_callbacks(execute=True):
        assert deliveries_heal() == [f"webhook delivery {retry.id}: rang it again"]
    assert OrmQ.objects.count() == 4
    OrmQ.objects.all().delete()  # the broker lost them: rung again once the queue is empty
    with django_capture_on_commit_callbacks(execute=True):
        assert len(deliveries_heal()) == 2  # (the retry was rung a moment ago)
    assert OrmQ.objects.count() == 2


def test_an_endpoint_gets_one_attempt_at_a_time_and_its_end_rings_the_next(
    make_users, receiver, endpoint, django_capture_on_commit_callbacks
):
    """A receiver that hangs holds one worker, not one per delivery of its backlog: while an attempt
    to an endpoint is in flight its other deliveries wait (their tasks end at once, sending
    nothing) and healing leaves them be; the attempt's end rings the next. Other endpoints go on."""
    busy, _ = endpoint("job.completed", name="busy")
    idle, _ = endpoint("job.completed", name="idle")
    for user in make_users(2):
        finished_job([user])
    first, second = Delivery.objects.filter(endpoint=busy).order_by("id")
    elsewhere = list(Delivery.objects.filter(endpoint=idle).order_by("id").values_list("id", flat=True))
    # As another worker's claim leaves it: being sent, its lease running.
    in_flight = {"status": "sending", "claim_token": uuid.uuid4()}
    lease = timezone.now() + timedelta(minutes=1)
    Delivery.objects.filter(id=first.id).update(**in_flight, lease_expires_at=lease)
    assert delivery_attempt(second.id) is None
    assert receiver.received == []
    Delivery.objects.update(rung_at=timezone.now() - timedelta(hours=1))  # all unanswered for long
    assert deliveries_heal() == [f"webhook delivery {pk}: rang it again" for pk in elsewhere]
    assert delivery_attempt(elsewhere[0]).status_code == 200  # another endpoint goes on
    # The attempt in flight ends: here its sender died, and it is taken again once its lease ran out.
    Delivery.objects.filter(id=first.id).update(lease_expires_at=timezone.now() - timedelta(seconds=1))
    with django_capture_on_commit_callbacks(execute=True):
        assert delivery_attempt(first.id).status_code == 200
    assert [task.args() for task in OrmQ.objects.all()] == [(second.id,)]
    assert delivery_attempt(second.id).status_code == 200
    assert len(receiver.received) == 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="SQLite runs one writer at a time: no race")
@pytest.mark.django_db(transaction=True)
def test_two_workers_at_once_send_one_attempt_to_an_endpoint(make_users, receiver, endpoint):
    """Both find the endpoint idle before either has claimed: the claim locks the endpoint's row."""
    endpoint("job.completed")
    for user in make_users(2):
        finished_job([user])
    receiver.behaviour.delay = 1.0
    ids = iter(Delivery.objects.order_by("id").values_list("id", flat=True))
    outcomes = at_once(lambda: delivery_attempt(next(ids)))
    assert sorted(outcome is None for outcome in outcomes) == [False, True]
    assert (len(receiver.received), receiver.most_open) == (1, 1)


def test_a_failing_receiver_is_retried_with_a_doubling_capped_backoff_then_given_up(
    make_users, receiver, endpoint, settings
):
    settings.WEBHOOKS_RETRY_BACKOFF_SECONDS, settings.WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS = 0.2, 0.4
    settings.WEBHOOKS_RETRY_SECONDS = 2
    receiver.behaviour.status, receiver.behaviour.body = 503, b"try later"
    endpoint("job.completed")
    finished_job(make_users(1))
    delivery = only_delivery()
    assert [retry_backoff_seconds(n) for n in (1, 2, 3, 50)] == [0.2, 0.4, 0.4, 0.4]

    def attempt_when_due():
        delivery_attempt(delivery.id)
        delivery.refresh_from_db()
        return delivery.status == "failed"

    wait_for(attempt_when_due, timeout=10, what="the delivery to be given up")
    attempts = list(Attempt.objects.filter(delivery=delivery))
    assert 3 <= len(attempts) == delivery.attempt_count <= 12  # two seconds of 0.2, 0.4, 0.4… s
    assert {(a.status_code, a.error, a.response_excerpt) for a in attempts} == {
        (503, "the receiver answered HTTP 503", "try later")
    }
    gaps = [(b.started_at - a.started_at).total_seconds() for a, b in itertools.pairwise(attempts)]
    assert gaps[0] >= 0.2 and all(gap >= 0.4 for gap in gaps[1:])
    assert len(receiver.received) == len(attempts)
    assert len(set(receiver.ids())) == 1  # the same webhook-id every time
    assert delivery.finished_at and delivery.next_attempt_at is None


def test_a_redelivery_sends_the_same_event_again_with_a_fresh_retry_period(make_users, receiver, endpoint):
    _, secret = endpoint("job.completed")
    finished_job(make_users(1))
    delivery = only_delivery()
    delivery_attempt(delivery.id)
    assert delivery_redeliver(delivery) is True
    assert delivery_redeliver(delivery) is False  # pending already
    delivery_attempt(delivery.id)
    first, second = receiver.received
    assert first.headers["webhook-id"] == second.headers["webhook-id"]
    assert verified(secret, second) == verified(secret, first)
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count) == ("succeeded", 2)


def test_after_a_redelivery_the_backoff_starts_again_from_its_first_step(
    make_users, receiver, endpoint, settings
):
    settings.WEBHOOKS_RETRY_BACKOFF_SECONDS, settings.WEBHOOKS_RETRY_BACKOFF_MAX_SECONDS = 10, 3600
    receiver.behaviour.status = 503
    endpoint("job.completed")
    finished_job(make_users(1))
    delivery = only_delivery()

    def next_wait() -> float:
        Delivery.objects.filter(id=delivery.id).update(next_attempt_at=timezone.now())
        delivery_attempt(delivery.id)
        delivery.refresh_from_db()
        return (delivery.next_attempt_at - delivery.attempts.last().started_at).total_seconds()

    assert [round(next_wait()) for _ in range(10)][-3:] == [1280, 2560, 3600]  # doubling, capped
    Delivery.objects.filter(id=delivery.id).update(status="failed", next_attempt_at=None)
    assert delivery_redeliver(delivery)
    assert [round(next_wait()) for _ in range(3)] == [10, 20, 40]
    assert delivery.attempt_count == 13  # every attempt still counted and numbered


def test_a_pending_delivery_to_an_endpoint_made_inactive_fails_without_being_sent(
    make_users, receiver, endpoint
):
    made = endpoint("job.completed")[0]
    finished_job(make_users(1))
    Endpoint.objects.filter(id=made.id).update(active=False)
    assert delivery_attempt(only_delivery().id) is None
    delivery = only_delivery()
    assert (delivery.status, delivery.attempt_count, delivery.last_error) == (
        "failed",
        0,
        "the endpoint is not active",
    )
    assert receiver.received == []


def test_a_redirect_is_not_followed(receiver):
    receiver.behaviour.status, receiver.behaviour.headers = 302, {"Location": "http://127.0.0.1:9/elsewhere"}
    answer = post(receiver.url, b"{}", {}, timeout=5)
    assert (answer.status_code, answer.error) == (
        302,
        "the receiver answered HTTP 302: redirects are not followed",
    )
    assert len(receiver.received) == 1


@pytest.mark.parametrize("interim", [(103,), (100, 103, 103)])
def test_informational_answers_before_the_real_one_are_skipped(receiver, interim):
    """RFC 9110 15.2: a client reads any 1xx before the final answer. 103 Early Hints was taken as the
    answer, a failed attempt however the receiver then answered."""
    receiver.behaviour.status, receiver.behaviour.interim, receiver.behaviour.body = 204, interim, b""
    answer = post(receiver.url, b"{}", {}, timeout=5)
    assert (answer.status_code, answer.error, answer.succeeded) == (204, "", True)


def test_a_switch_of_protocols_is_not_an_answer(receiver):
    receiver.behaviour.status, receiver.behaviour.body = 101, b""
    answer = post(receiver.url, b"{}", {}, timeout=5)
    assert (answer.status_code, answer.succeeded) == (101, False)


def test_a_huge_answer_is_not_read_and_only_its_start_is_kept(make_users, receiver, endpoint):
    receiver.behaviour.body = b"\x00<html>" + "页".encode() * 3_000_000  # 9 MB
    endpoint("job.completed")
    finished_job(make_users(1))
    attempt = delivery_attempt(only_delivery().id)
    assert attempt.status_code == 200 and attempt.duration_ms < 2000
    assert attempt.response_excerpt.startswith("\ufffd<html>页页") and len(attempt.response_excerpt) <= 256


@pytest.mark.parametrize("how", ["hangs", "drips its answer a byte at a time"])
def test_a_receiver_that_never_finishes_answering_is_cut_at_the_timeout(receiver, settings, how):
    if how == "hangs":
        receiver.behaviour.hang = True
    else:
        receiver.behaviour.drip = 0.1  # each byte well within any socket timeout
    started = time.monotonic()
    answer = post(receiver.url, b"{}", {}, timeout=1)
    assert 0.9 < time.monotonic() - started < 2.0
    assert (answer.status_code, answer.error) == (None, "no answer within 1 s (WEBHOOKS_TIMEOUT_SECONDS)")


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "10.1.2.3",
        "192.168.0.10",
        "169.254.169.254",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "0.0.0.0",
    ],
)
def test_private_loopback_and_link_local_receivers_are_refused_by_default(receiver, settings, host):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
    answer = post(f"http://{host}:{receiver.port}/hook", b"{}", {}, timeout=2)
    assert answer.status_code is None and answer.error.startswith("refused: ")
    assert "WEBHOOKS_ALLOW_PRIVATE_ADDRESSES" in answer.error
    assert receiver.received == []
    if host != "localhost":  # an address typed in the URL is refused when the endpoint is saved
        assert url_problem(f"http://{host}/hook").startswith("Refused: ")
        with pytest.raises(ValidationError) as refused:
            endpoint_create(name="x", url=f"http://{host}/hook", events=["job.completed"])
        assert list(refused.value.message_dict) == ["url"]


def test_a_name_resolving_to_any_private_address_is_refused(receiver, settings, monkeypatch):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = False
    monkeypatch.setattr(
        socket,
        "getaddrinfo",
        lambda *args, **kwargs: [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", receiver.port)),
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", receiver.port)),
        ],
    )
    answer = post(f"http://hooks.example:{receiver.port}/hook", b"{}", {}, timeout=2)
    assert answer.error.startswith("refused: 127.0.0.1 is a loopback address")


def loopback_dns(monkeypatch, name: str) -> list[str]:
    """`name` resolves to 127.0.0.1 from now on; the list of every host name asked, in order."""
    resolved = []
    real = socket.getaddrinfo

    def resolve(host, *args, **kwargs):
        resolved.append(host)
        return real("127.0.0.1" if host == name else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", resolve)
    return resolved


def test_a_host_name_is_resolved_once_and_the_request_goes_to_the_address_checked(receiver, monkeypatch):
    resolved = loopback_dns(monkeypatch, "hooks.example")
    answer = post(f"http://hooks.example:{receiver.port}/hook?key=1", b"{}", {"X-Test": "1"}, timeout=2)
    assert (answer.status_code, answer.error) == (200, "")
    # The name once; then only the address that was checked (numeric: no DNS answer to change).
    assert resolved == ["hooks.example", "127.0.0.1"]
    (request,) = receiver.received
    assert request.headers["host"] == f"hooks.example:{receiver.port}" and request.path == "/hook?key=1"


def test_urls_with_credentials_other_schemes_control_characters_or_bad_host_names_are_refused(db):
    for url, problem in [
        ("https://user:pw@hooks.example/x", "No user name or password"),
        ("ftp://hooks.example/x", "Give an http:// or https:// URL"),
        ("http://hooks.example:99999/x", "Not a valid URL"),
        ("https://hooks.example/a\x01b?token=1", "No spaces or control characters"),
        ("https://hooks.example/a b", "No spaces or control characters"),
        ("https://hooks.example/a\nb", "No spaces or control characters"),
        ("https://" + "ü" * 60 + ".example/x", "The host name is not a valid domain name"),
        ("https://hooks..example/x", "The host name is not a valid domain name"),
    ]:
        assert url_problem(url).startswith(problem), url
    assert url_problem("https://hooks.example/x?token=1") is None
    assert url_problem("https://bücher.example/café?q=北京") is None  # sent encoded


def test_a_non_ascii_host_is_sent_in_its_idna_2008_form_as_browsers_send_it(receiver, monkeypatch):
    """Python's own codec (IDNA 2003) maps ß to ss: faß.de would go to fass.de, another domain."""
    resolved = loopback_dns(monkeypatch, "xn--fa-hia.de")
    answer = post(f"http://faß.de:{receiver.port}/hook", b"{}", {}, timeout=2)
    assert (answer.status_code, answer.error, resolved[0]) == (200, "", "xn--fa-hia.de")
    assert receiver.received[0].headers["host"] == f"xn--fa-hia.de:{receiver.port}"
    assert (
        post("http://[::1/hook", b"{}", {}, timeout=2).error == "the URL is not valid (its port or address)"
    )


def test_a_url_with_non_ascii_host_path_or_query_is_sent_encoded(receiver, monkeypatch):
    resolved = loopback_dns(monkeypatch, "xn--bcher-kva.example")
    url = f"http://bücher.example:{receiver.port}/café?city=北京&note=a%20b"
    answer = post(url, b"{}", {}, timeout=2)
    assert (answer.status_code, answer.error) == (200, "")
    assert resolved[0] == "xn--bcher-kva.example"
    (request,) = receiver.received
    assert request.headers["host"] == f"xn--bcher-kva.example:{receiver.port}"
    assert request.path == "/caf%C3%A9?city=%E5%8C%97%E4%BA%AC&note=a%20b"  # escapes already there kept


def test_a_url_saved_before_it_was_refused_fails_its_attempt_without_the_url(receiver):
    for url in (f"{receiver.url}/a\x01b?token=s3cret", "https://" + "ü" * 60 + ".example/?token=s3cret"):
        answer = post(url, b"{}", {}, timeout=2)
        assert "s3cret" not in answer.error and "s3cret" not in answer.excerpt
    assert answer.error == "the receiver's host name is not a valid domain name (IDNA)"
    (request,) = receiver.received  # the control character went percent-encoded
    assert request.path.endswith("/a%01b?token=s3cret")


def test_an_attempt_that_fails_unexpectedly_is_logged_and_retried_not_claimed_forever(
    make_users, receiver, endpoint, monkeypatch, caplog
):
    endpoint("job.completed")
    finished_job(make_users(1))
    delivery = only_delivery()

    def broken(sock, target, *args):
        raise RuntimeError(f"a bug that quotes {target.path}")  # the stack's source lines name no URL

    Endpoint.objects.update(url=f"{receiver.url}?token=s3cret")

    monkeypatch.setattr("webhooks.outbound._exchange", broken)
    with caplog.at_level(logging.ERROR, logger="webhooks.outbound"):
        attempt = delivery_attempt(delivery.id)
    assert attempt.error == "unexpected RuntimeError (the log says where)"
    assert "in broken" in caplog.text and "s3cret" not in caplog.text
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count, delivery.claim_token) == ("pending", 1, None)
    assert delivery.last_error == attempt.error and delivery.next_attempt_at > delivery.created_at


def test_a_delivery_whose_sender_keeps_dying_is_failed_once_its_retry_period_is_over(
    make_users, receiver, endpoint
):
    """A sender killed mid-attempt leaves `sending` and a lease: the delivery is claimed again
    when the lease runs out, but not past `give_up_at`."""
    endpoint("job.completed")
    finished_job(make_users(1))
    delivery = only_delivery()
    abandoned = {
        "status": "sending",
        "attempt_count": 7,
        "lease_expires_at": timezone.now() - timedelta(seconds=1),
    }
    Delivery.objects.filter(id=delivery.id).update(
        **abandoned, give_up_at=timezone.now() + timedelta(hours=1)
    )
    assert delivery_attempt(delivery.id) is not None  # within its retry period: sent again
    assert len(receiver.received) == 1
    Delivery.objects.filter(id=delivery.id).update(
        **abandoned, give_up_at=timezone.now() - timedelta(seconds=1)
    )
    assert delivery_attempt(delivery.id) is None
    assert len(receiver.received) == 1
    delivery.refresh_from_db()
    assert (delivery.status, delivery.attempt_count, delivery.claim_token) == ("failed", 7, None)
    assert delivery.finished_at and delivery.last_error.startswith("its last attempt never finished")


def test_a_refused_connection_and_an_unknown_host_are_errors_without_the_url(settings):
    settings.WEBHOOKS_ALLOW_PRIVATE_ADDRESSES = True
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nobody listens there once closed
    answer = post(f"http://127.0.0.1:{port}/x?token=s3cret", b"{}", {}, timeout=2)
    assert answer.error == "connection refused"
    answer = post("http://no-such-host.invalid/x?token=s3cret", b"{}", {}, timeout=5)
    assert answer.error.startswith("cannot resolve the receiver's host name") and "s3cret" not in answer.error


def test_the_signing_secret_is_shown_once_and_reaches_no_row_and_no_log(
    make_users, receiver, caplog, django_db_blocker
):
    caplog.set_level(logging.DEBUG)
    made, secret = endpoint_create(name="r", url=receiver.url, events=["job.completed"])
    assert secret.startswith("whsec_") and len(secret) == 6 + 44
    finished_job(make_users(1))
    with CaptureQueriesContext(transaction.get_connection()) as queries:
        delivery_attempt(only_delivery().id)
    renewed = endpoint_secret_renew(made)
    assert renewed != secret
    rows = [str(list(model.objects.values_list())) for model in (Endpoint, Event, Delivery, Attempt)]
    for text in [*rows, caplog.text, str(queries.captured_queries)]:
        assert secret not in text and renewed not in text
        assert secret.removeprefix("whsec_") not in text


def test_an_endpoint_deleted_while_its_delivery_is_sent_takes_the_delivery_with_it(
    make_users, receiver, endpoint, monkeypatch
):
    made = endpoint("job.completed")[0]
    finished_job(make_users(1))
    delivery = only_delivery()
    from webhooks import delivery as sender

    real_post = sender.post

    def post_then_delete(*args, **kwargs):
        answer = real_post(*args, **kwargs)
        Endpoint.objects.filter(id=made.id).delete()  # someone deletes it in the admin meanwhile
        return answer

    monkeypatch.setattr(sender, "post", post_then_delete)
    assert delivery_attempt(delivery.id) is None
    assert not Delivery.objects.exists() and not Attempt.objects.exists() and len(receiver.received) == 1
