"""CSV export: a cell a spreadsheet would run as a formula is neutralised (OWASP CSV injection)."""

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from extraction.extractors import BehaviorRecord, EventDraft, make_extractor
from extraction.selectors import user_inputs_load
from extraction.services import Outcome, behaviors_insert, extraction_results_save

pytestmark = pytest.mark.django_db
PAYLOADS = json.loads((Path(__file__).parent / "fixtures/hostile/csv_injection.json").read_text())
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "＝", "＋", "－", "＠")
T0 = datetime(2024, 6, 1, 10, tzinfo=UTC)


@pytest.fixture
def hostile_events():
    """One user per payload, whose id, event type, label and context (item) all carry it."""
    users = []
    for n, payload in enumerate(PAYLOADS):
        user_id = f"{payload[:100]}#{n}"
        behaviors_insert([BehaviorRecord(user_id, "search", T0, item=payload)])
        users.append(user_id)
    inputs = {user.user_id: user for user in user_inputs_load(users)}
    outcomes = [
        Outcome(
            user_id,
            inputs[user_id],
            [
                EventDraft(
                    event_type=payload[:64],
                    category="engagement",
                    label=payload[:64],
                    starts_at=T0,
                    ends_at=T0,
                    behavior_ids=[inputs[user_id].behaviors[0].id],
                    context={"keyword": payload},
                )
            ],
        )
        for user_id, payload in zip(users, PAYLOADS, strict=True)
    ]
    extraction_results_save(outcomes=outcomes, extractor=make_extractor("rules"))
    return users


def test_no_exported_cell_starts_like_a_formula(api, hostile_events):
    response = api("analyst").get("/api/v1/events/export.csv")
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode().lstrip("\ufeff")
    rows = list(csv.DictReader(io.StringIO(text, newline="")))
    assert len(rows) == len(PAYLOADS)
    for row in rows:
        for column, cell in row.items():
            assert not cell.startswith(FORMULA_STARTS), (column, cell)
    by_user = {row["user_id"]: row for row in rows}
    for n, user_id in enumerate(hostile_events):
        row = by_user["'" + user_id]  # the value is kept, behind a quote that makes it text
        assert row["label"] == "'" + PAYLOADS[n][:64]
        assert row["event_type"] == "'" + PAYLOADS[n][:64]
        assert row["context"].startswith("{") and json.loads(row["context"]) == {"keyword": PAYLOADS[n]}


def test_ordinary_cells_are_left_as_they_are(api, make_users):
    from jobs.services import job_start
    from jobs.worker.drain import job_drain

    make_users(1)
    job_drain(job_start(enqueue=False).id)
    text = b"".join(api("analyst").get("/api/v1/events/export.csv").streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"), newline="")))
    assert [(r["user_id"], r["event_type"], r["label"]) for r in rows] == [
        ("u001", "purchase", "购买"),
        ("u001", "browse_model", "浏览车型"),
    ]


def test_the_jsonl_export_keeps_values_exactly(api, hostile_events):
    lines = b"".join(api("analyst").get("/api/v1/events/export.jsonl").streaming_content).splitlines()
    assert sorted(json.loads(line)["user_id"] for line in lines) == sorted(hostile_events)
