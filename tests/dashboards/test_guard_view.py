"""The Guard section of the incident view: the guard's verdicts for an incident's addresses (in
its window and in all), the newest refused and reviewed requests, the orders in force, and a
triager's order given from the incident — on real databases (SQLite, PostgreSQL) and in a real
headless Chromium."""

import os
import shutil
import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from dashboards import guard_queries
from monitor.alerts.lifecycle import apply_findings
from monitor.alerts.queries import get_alert
from monitor.alerts.rules import Finding
from monitor.alerts.settings import AlertSettings
from monitor.db.models import Alert, GuardOverride
from monitor.db.session import open_database
from monitor.errors import RobmonError
from monitor.guard.sources import set_override
from monitor.ingest import rollups
from monitor.ingest.store import commit_batch
from tests.dashboards.test_queries import scores

T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)  # the incidents' window: T0 to T0 + 10 minutes
END = T0 + timedelta(minutes=10)
SOURCE, MEMBER, LEADER = "10.66.0.2", "10.66.0.3", "10.66.0.9"
CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard-guard"
PASSWORD = "triager-secret"

# (source, minutes after T0, verdict, reason): SOURCE has 9 guarded requests in the window and
# 6 before it, and 2 that no guard saw; MEMBER 4 in the window; LEADER none at all.
TRAFFIC = (
    [(SOURCE, m, "allow", None) for m in (1, 2, 3)]
    + [(SOURCE, m, "review", "squeeze divergence over the threshold") for m in (4, 5)]
    + [(SOURCE, m, "refuse", "open incident (high)") for m in (6, 7, 8, 9)]
    + [(SOURCE, -120 + m, "allow", None) for m in range(5)]
    + [(SOURCE, -120, "refuse", "source on refuse")]
    + [(SOURCE, m, None, None) for m in (2, 3)]
    + [(MEMBER, 5, "review", "low confidence"), (MEMBER, 6, "refuse", "open incident (critical)")]
    + [(MEMBER, m, "refuse", "open incident (critical)") for m in (3, 7)]
)


def seed(db) -> tuple[int, int]:
    """The traffic above as the ingester stores it, an incident of SOURCE and a group incident
    (LEADER, SOURCE, MEMBER): their ids."""
    rows = [(s, T0 + timedelta(minutes=m), v == "refuse", 0.6) for s, m, v, _ in TRAFFIC]
    table = scores(rows)
    table.columns["guard_verdict"] = [v for _, _, v, _ in TRAFFIC]
    table.columns["guard_reason"] = [r for _, _, _, r in TRAFFIC]
    commit_batch(db, table, [], None, lambda s, ids: rollups.record(s, table, ids))
    group = {"sources": [LEADER, SOURCE, MEMBER]}
    findings = [
        Finding("flagged-rate", SOURCE, "m", "1", "high", f"{SOURCE} is odd", T0, END, {}),
        Finding("probing-distributed", LEADER, "m", "1", "critical", "group", T0, END, group),
    ]
    with db.session() as s:
        apply_findings(s, findings, AlertSettings())
        ids = dict(s.execute(select(Alert.source, Alert.id)).all())
    return ids[SOURCE], ids[LEADER]


@pytest.fixture
def db(db_url, settings):
    database = open_database(replace(settings, db_url=db_url, embedded_db=True))
    yield database
    database.dispose()


def counts(view, source: str) -> tuple[dict[str, int], dict[str, int]]:
    [row] = [a for a in view.addresses if a.source == source]
    return row.window, row.total


def test_counts_by_verdict_in_the_window_and_in_all(db) -> None:
    single, group = seed(db)
    view = guard_queries.incident_guard(db, single)
    assert [a.source for a in view.addresses] == [SOURCE] and view.source == SOURCE
    window, total = counts(view, SOURCE)
    assert window == {"allow": 3, "review": 2, "refuse": 4}  # unguarded requests not counted
    assert total == {"allow": 8, "review": 2, "refuse": 5}

    view = guard_queries.incident_guard(db, group)
    assert [a.source for a in view.addresses] == [LEADER, SOURCE, MEMBER]  # its source first
    assert counts(view, LEADER) == ({"allow": 0, "review": 0, "refuse": 0},) * 2
    assert counts(view, MEMBER)[0] == {"allow": 0, "review": 1, "refuse": 3}
    assert counts(view, SOURCE)[1] == total


def test_newest_refused_and_reviewed_requests_across_the_addresses(db) -> None:
    single, group = seed(db)
    latest = guard_queries.incident_guard(db, single).latest
    newest = [(9, "refuse"), (8, "refuse"), (7, "refuse"), (6, "refuse"), (5, "review")]
    newest += [(4, "review"), (-120, "refuse")]
    assert [(r.ts, r.verdict) for r in latest] == [
        (T0 + timedelta(minutes=m), v) for m, v in newest
    ]
    assert latest[0].model == "m/1" and latest[0].reason == "open incident (high)"
    latest = guard_queries.incident_guard(db, group).latest
    assert len(latest) == guard_queries.LATEST  # the newest 10 of 11
    assert [r.ts for r in latest] == sorted((r.ts for r in latest), reverse=True)
    newest = [(r.source, r.ts.minute) for r in latest[:4]]
    assert newest == [(SOURCE, 9), (SOURCE, 8), (SOURCE, 7), (MEMBER, 7)]  # ties: address order
    assert latest[-1] == guard_queries.GuardedRequest(
        T0 + timedelta(minutes=3), MEMBER, "m/1", "refuse", "open incident (critical)", "r19"
    )  # SOURCE's refusal two hours before is the 11th


def test_an_order_from_the_incident_is_in_force_and_on_its_trail(db) -> None:
    single, group = seed(db)
    order = guard_queries.order_from_incident(db, single, SOURCE, "refuse", "ana", "botnet")
    with db.session() as s:
        [row] = s.scalars(select(GuardOverride)).all()
        assert (row.source, row.action, row.actor, row.note, row.alert_id) == (
            SOURCE,
            "refuse",
            "ana",
            "botnet",
            single,
        )
    [address] = guard_queries.incident_guard(db, single).addresses
    assert address.order == order
    assert guard_queries.recorded_order(db, single, order.id) == order
    assert guard_queries.recorded_order(db, group, order.id) is None  # not given from there
    # the group incident sees the same order on that address: orders are per source
    view = guard_queries.incident_guard(db, group)
    assert {a.source: a.order for a in view.addresses}[SOURCE] == order
    opened, event = get_alert(db, single).events  # the evaluator's, then ana's
    assert opened.action == "opened"
    assert (event.actor, event.action, event.from_status, event.to_status) == (
        "ana",
        "guard-refuse",
        "open",
        "open",
    )
    assert event.note == f"source {SOURCE} on refuse at the guard: botnet"

    guard_queries.order_from_incident(db, single, SOURCE, "clear", "ana", None)
    assert guard_queries.incident_guard(db, single).addresses[0].order is None
    with pytest.raises(RobmonError, match="no order in force"):
        guard_queries.order_from_incident(db, single, SOURCE, "clear", "ana", None)
    trail = [e.action for e in get_alert(db, single).events]
    assert trail == ["opened", "guard-refuse", "guard-clear"]


def test_an_order_names_one_of_the_incidents_addresses(db) -> None:
    single, group = seed(db)
    with pytest.raises(RobmonError, match="not an address of incident"):
        guard_queries.order_from_incident(db, single, MEMBER, "refuse", "ana", None)
    guard_queries.order_from_incident(db, group, MEMBER, "allow", "ana", "our own scanner")
    with db.session() as s:
        rows = s.execute(select(GuardOverride.source, GuardOverride.action)).all()
    assert rows == [(MEMBER, "allow")]
    view = guard_queries.incident_guard(db, group)
    assert [a.source for a in view.addresses if a.order] == [MEMBER]
    set_override(db, MEMBER, "refuse", "cli-user")  # a newer order elsewhere replaces it
    view = guard_queries.incident_guard(db, group)
    assert {a.source: a.order for a in view.addresses}[MEMBER].actor == "cli-user"


# -- the section as the page renders it ----------------------------------------------------------


def test_the_section_says_when_no_request_passed_through_a_guard(settings) -> None:
    from dashboards import guard_panel
    from dashboards.app import create_app
    from tests.dashboards.test_pages import _find

    db = open_database(settings)
    single, group = seed(db)
    create_app(settings, db)  # installs the context the section reads
    with db.session() as s:
        s.get(Alert, group).sources = "10.99.0.1,10.99.0.2"  # addresses no guard has seen
    section = guard_panel.section(group, None)
    assert [a.source for a in guard_queries.incident_guard(db, group).addresses] == [
        LEADER,
        "10.99.0.1",
        "10.99.0.2",
    ]
    latest = _find(section, guard_panel.LATEST)
    assert latest.children == "No request from these addresses has passed through an inline guard."
    assert _find(section, "alerts-guard-done") is None
    order = guard_queries.order_from_incident(db, single, SOURCE, "refuse", "ana", None)
    assert _find(guard_panel.section(group, str(order.id)), "alerts-guard-done") is None
    done = _find(guard_panel.section(single, str(order.id)), "alerts-guard-done")
    assert done.children == f"{SOURCE} is now refused at the guard."
    assert _find(guard_panel.section(single, "1 OR 1=1"), "alerts-guard-done") is None
    db.dispose()


def test_an_order_outside_a_triagers_session_is_refused(settings) -> None:
    from dashboards import guard_panel
    from dashboards.app import create_app

    db = open_database(settings)
    single, _ = seed(db)
    create_app(settings, db)
    refusal, order_id = guard_panel.give_order("alerts-guard-refuse", SOURCE, "x", single)
    assert order_id is None and refusal.children.startswith("Refused: sign in as a triager")
    assert orders(db) == []
    db.dispose()


# -- in a real browser ----------------------------------------------------------------------------


@pytest.fixture
def site(settings):
    """The traffic and incidents above behind the dashboard, with a triager (ana), on a free
    port."""
    from werkzeug.serving import make_server

    from dashboards.app import create_app
    from dashboards.auth import save_user

    database = open_database(settings)
    single, group = seed(database)
    save_user(settings, "ana", PASSWORD, "triager")
    server = make_server("127.0.0.1", 0, create_app(settings, database).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", database, single, group
    server.shutdown()
    database.dispose()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists() and not os.environ.get("ROBMON_REQUIRE_BROWSER"):
        pytest.skip(f"{CHROMIUM} is not installed")
    from playwright.sync_api import sync_playwright

    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-quic",
                "--no-first-run",
                "--disable-component-update",
                "--disable-sync",
            ],
        )
        yield chromium
        chromium.close()


def orders(db) -> list[tuple[str, str, str, str | None, int | None]]:
    with db.session() as s:
        query = select(
            GuardOverride.source,
            GuardOverride.action,
            GuardOverride.actor,
            GuardOverride.note,
            GuardOverride.alert_id,
        ).order_by(GuardOverride.id)
        return [tuple(r) for r in s.execute(query).all()]


def shot(page, name: str) -> None:
    """A full-page screenshot in test-artifacts/dashboard-guard/ to look at."""
    page.tab.wait_for_timeout(300)
    page.tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


@pytest.mark.browser
def test_a_triager_refuses_and_clears_a_source_from_the_incident(site, browser) -> None:
    from playwright.sync_api import expect

    from tests.dashboards.test_browser import Page, sign_in

    base, db, single, _ = site
    page = Page(browser, base)
    page.open(f"/alerts?id={single}", "#alerts-guard-counts")
    [row] = page.rows("alerts-guard-counts")
    assert row.split("\t") == [SOURCE, "3", "2", "4", "8", "2", "5"]
    assert len(page.rows("alerts-guard-latest")) == 7
    assert "No order in force" in page.tab.inner_text("#alerts-guard-orders")
    page.tab.click("#alerts-guard-refuse")  # not signed in: refused, nothing recorded
    expect(page.tab.locator("#alerts-guard-refused")).to_contain_text("sign in as a triager")
    assert orders(db) == []

    sign_in(page, "ana", f"/alerts?id={single}")
    page.tab.wait_for_selector("#alerts-guard-refuse")
    page.tab.fill("#alerts-guard-note", "the same digits, pixel by pixel")
    page.tab.click("#alerts-guard-refuse")
    page.tab.wait_for_url("**guarded=**")
    expect(page.tab.locator("#alerts-guard-done")).to_have_text(
        f"{SOURCE} is now refused at the guard."
    )
    assert orders(db) == [(SOURCE, "refuse", "ana", "the same digits, pixel by pixel", single)]
    assert "set by ana" in page.tab.inner_text("#alerts-guard-orders")
    _, event = page.rows("alerts-trail")
    assert event.split("\t")[1:3] == ["ana", "guard-refuse"]
    assert "the same digits, pixel by pixel" in event
    shot(page, "guard-view")

    page.tab.click("#alerts-guard-clear")
    expect(page.tab.locator("#alerts-guard-done")).to_have_text(
        f"{SOURCE} has no order any more at the guard."
    )
    assert [o[:3] for o in orders(db)] == [(SOURCE, "refuse", "ana"), (SOURCE, "clear", "ana")]
    assert "No order in force" in page.tab.inner_text("#alerts-guard-orders")
    trail = [r.split("\t")[2] for r in page.rows("alerts-trail")]
    assert trail == ["opened", "guard-refuse", "guard-clear"]
    page.clean()


@pytest.mark.browser
def test_a_group_incident_counts_every_address_and_orders_the_one_picked(site, browser) -> None:
    from playwright.sync_api import expect

    from tests.dashboards.test_browser import Page, sign_in

    base, db, _, group = site
    page = Page(browser, base)
    sign_in(page, "ana", f"/alerts?id={group}")
    page.tab.wait_for_selector("#alerts-guard-counts")
    rows = [r.split("\t") for r in page.rows("alerts-guard-counts")]
    assert rows == [
        [LEADER, "0", "0", "0", "0", "0", "0"],
        [SOURCE, "3", "2", "4", "8", "2", "5"],
        [MEMBER, "0", "1", "3", "0", "1", "3"],
    ]
    page.tab.click("#alerts-guard-source")
    page.tab.get_by_role("option", name=MEMBER).click()
    expect(page.tab.get_by_role("option")).to_have_count(0)  # the menu closed: the pick is set
    page.tab.click("#alerts-guard-allow")
    expect(page.tab.locator("#alerts-guard-done")).to_have_text(
        f"{MEMBER} is now allowed at the guard."
    )
    assert orders(db) == [(MEMBER, "allow", "ana", None, group)]
    expect(page.tab.locator("#alerts-guard-source")).to_contain_text(MEMBER)  # still picked
    assert page.rows("alerts-trail")[-1].split("\t")[1:3] == ["ana", "guard-allow"]
    shot(page, "guard-view-group")
    page.clean()
