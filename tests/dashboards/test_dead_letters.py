"""The dead-letters page's queries against real databases with known contents."""

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from dashboards import queries
from monitor.db.models import DeadLetter
from monitor.db.session import open_database

START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)  # fixed: nothing depends on today's date
REASONS = ["not valid JSON: unparseable.", "missing field(s): model.", "unknown model 'zz'."]


@pytest.fixture
def db(db_url, settings):
    database = open_database(replace(settings, db_url=db_url, embedded_db=True))
    with database.session() as s:
        for i in range(30):  # reasons 0, 1, 2 in turn except the newest five, all reason 0
            reason = REASONS[0] if i >= 25 else REASONS[i % 3]
            s.add(
                DeadLetter(
                    received_at=START + timedelta(minutes=i),
                    origin="/var/log/app.jsonl",
                    line_number=i + 1,
                    byte_offset=100 * i,
                    reason=reason,
                    excerpt=f'{{"source": "10.0.0.{i}", <b>line {i}</b>',
                    source=f"10.0.0.{i}",
                    model_name="digits-cnn" if i % 2 else None,
                )
            )
    yield database
    database.dispose()


def test_dead_letters_newest_first_in_pages(db) -> None:
    first, total = queries.dead_letter_page(db, page=0, size=25)
    assert total == 30 and len(first) == 25
    assert [r["line_number"] for r in first[:3]] == [30, 29, 28]
    assert first[0]["source"] == "10.0.0.29" and first[0]["reason"] == REASONS[0]
    assert first[0]["excerpt"] == '{"source": "10.0.0.29", <b>line 29</b>'
    assert first[0]["received_at"].replace(tzinfo=UTC) == START + timedelta(minutes=29)
    second, _ = queries.dead_letter_page(db, page=1, size=25)
    assert [r["line_number"] for r in second] == [5, 4, 3, 2, 1]


def test_dead_letters_of_one_reason(db) -> None:
    rows, total = queries.dead_letter_page(db, kind=REASONS[1], size=25)
    assert total == 8  # i = 1, 4, ..., 22
    assert {r["reason"] for r in rows} == {REASONS[1]}
    assert [r["line_number"] for r in rows[:2]] == [23, 20]


def test_counts_by_reason_over_the_newest(db) -> None:
    first = {"reason": REASONS[0], "count": 14, "example": REASONS[0]}  # i = 0, 3, …, 24, 25-29
    assert queries.dead_letter_reasons(db) == [
        first,
        {"reason": REASONS[1], "count": 8, "example": REASONS[1]},
        {"reason": "unknown model '…'.", "count": 8, "example": REASONS[2]},
    ]
    # only the newest 6: i = 24 (reason 0) and 25-29 (reason 0)
    assert queries.dead_letter_reasons(db, window=6) == [{**first, "count": 6}]
    assert queries.dead_letter_reasons(db, top=1) == [first]


def test_variations_of_one_reason_count_as_one_kind_and_filter_together(db) -> None:
    """An attacker varying a value (each ts out of range quotes its own) makes one kind, as
    robmon dead-letters list counts them, and the kind's link lists all of its rows."""
    with db.session() as s:
        for i in range(16):
            s.add(
                DeadLetter(
                    received_at=START + timedelta(hours=1, minutes=i),
                    origin="stdin",
                    reason=f"ts '{9990 + i % 4}-12-31T23:59:59-05:00' is out of range.",
                    excerpt="{}",
                )
            )
    kinds = queries.dead_letter_reasons(db)
    assert kinds[0] == {
        "reason": "ts '…' is out of range.",
        "count": 16,
        "example": "ts '9993-12-31T23:59:59-05:00' is out of range.",  # the newest
    }
    rows, total = queries.dead_letter_page(db, kind="ts '…' is out of range.", page=1, size=5)
    assert total == 16
    assert [r["received_at"].minute for r in rows] == [10, 9, 8, 7, 6]
    assert queries.dead_letter_page(db, kind="no such kind") == ([], 0)


def test_no_dead_letters(settings) -> None:
    database = open_database(settings)
    assert queries.dead_letter_page(database) == ([], 0)
    assert queries.dead_letter_reasons(database) == []
    database.dispose()
