"""Every dashboard page in a real headless Chromium (Debian's, driven by Playwright): it renders
without console errors or requests leaving the machine, its main interaction works, and a
screenshot is saved in test-artifacts/ to look at."""

import os
import shutil
import threading
from pathlib import Path
from urllib.parse import urlparse

import pytest
from sqlalchemy import select

from monitor.alerts.queries import rule_in
from monitor.db.models import Alert, AlertEvent

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
PASSWORD = "triager-secret"

if not Path(CHROMIUM).exists():
    if os.environ.get("ROBMON_REQUIRE_BROWSER"):
        raise RuntimeError(f"{CHROMIUM} is missing (apt-get install chromium)")
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def site(module_home, tmp_path_factory):
    """The demo store with audits (one failed; v1 under two configurations), a simulated
    production log with attackers, alerts, a triager and a viewer; the dashboard served on a
    free port."""
    from werkzeug.serving import make_server

    from dashboards.app import create_app
    from dashboards.auth import save_user
    from monitor.alerts.evaluate import Evaluator
    from monitor.alerts.settings import AlertSettings
    from monitor.audit.config import AuditConfig
    from monitor.audit.runner import AuditRequest, run_audit
    from monitor.datasets import load_dataset
    from monitor.errors import AuditError
    from monitor.ingest.pipeline import Ingester
    from monitor.simulate import simulate
    from tests.stores import context_for

    settings, db, registry = context_for(module_home)
    for version in ("1", "2"):
        config = AuditConfig("digits", eps=(0.1, 0.2), limit=100)
        run_audit(db, registry, AuditRequest(f"models:/digits-cnn/{version}", config))
    with pytest.raises(AuditError):  # a failed audit, for the status filter
        run_audit(db, registry, AuditRequest("digits-cnn", AuditConfig("digits28", limit=10)))
    second = AuditConfig("digits", attacks=("pgd",), eps=(0.05, 0.3), steps=5, limit=100)
    run_audit(db, registry, AuditRequest("models:/digits-cnn/1", second))  # v1's newest
    target = registry.load(registry.resolve("models:/digits-cnn/1")).module
    surrogate = registry.load(registry.resolve("models:/digits-cnn/2")).module
    log = tmp_path_factory.mktemp("log") / "production.jsonl"
    traffic = simulate(load_dataset("digits", "all"), target, surrogate)
    log.write_text("".join(line + "\n" for line in traffic.lines()))
    Ingester(db, registry, settings, keep_flagged=module_home / "kept").ingest_files([str(log)])
    Evaluator(db, AlertSettings.from_settings(settings), "test").evaluate()
    save_user(settings, "ana", PASSWORD, "triager")
    save_user(settings, "vic", PASSWORD, "viewer")
    server = make_server("127.0.0.1", 0, create_app(settings, db).server, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", db
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
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


class Page:
    """A browser tab that records console errors and blocks (and records) off-machine
    requests."""

    def __init__(self, browser, base: str) -> None:
        self.base, self.errors, self.external = base, [], []
        self.tab = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.tab.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.route("**/*", self._route)

    def _route(self, route) -> None:
        if urlparse(route.request.url).hostname not in ("127.0.0.1", "localhost"):
            self.external.append(route.request.url)
            route.abort()
        else:
            route.continue_()

    def open(self, path: str, ready: str) -> None:
        self.tab.goto(self.base + path)
        self.tab.wait_for_selector(ready)
        self.tab.wait_for_load_state("networkidle")

    def rows(self, table: str) -> list[str]:
        return self.tab.locator(f"#{table} tbody tr:has(td)").all_inner_texts()

    def shot(self, name: str) -> None:
        self.tab.wait_for_timeout(300)
        self.tab.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def clean(self) -> None:
        assert self.errors == [], self.errors
        assert self.external == [], self.external
        self.tab.close()


def sign_in(page: Page, user: str, then: str) -> None:
    page.tab.goto(f"{page.base}/login?next={then}")
    page.tab.fill("#user", user)
    page.tab.fill("#password", PASSWORD)
    page.tab.click("#sign-in")


def test_overview(site, browser) -> None:
    page = Page(browser, site[0])
    page.open("/", "#overview-table")
    rows = page.rows("overview-table")
    assert any(r.startswith("digits-cnn") and "critical" in r for r in rows), rows
    page.shot("overview")
    page.clean()


def test_model_page_version_switch_keeps_the_url(site, browser) -> None:
    page = Page(browser, site[0])
    page.open("/models/digits-cnn", "#model-curves .main-svg")
    assert page.tab.locator("#model-gallery").count() == 1
    assert "zero_gradients" in page.tab.inner_text("#model-checks")
    page.tab.click("#model-version")
    page.tab.get_by_role("option", name="v2").click()
    page.tab.wait_for_url("**/models/digits-cnn?version=2**")
    page.tab.wait_for_selector("#model-checks")
    page.shot("model")
    page.clean()


def test_model_page_lists_configurations_and_switching_changes_the_numbers(site, browser) -> None:
    from playwright.sync_api import expect

    from monitor.audit.store import get_audit
    from monitor.db.models import Audit

    base, db = site
    with db.session() as s:
        older, newer = s.execute(
            select(Audit.id, Audit.config_hash)
            .where(Audit.model_name == "digits-cnn", Audit.model_version == "1")
            .where(Audit.status == "succeeded")
            .order_by(Audit.id)
        ).all()

    def shown(audit_id: int) -> list[str]:
        results = sorted(get_audit(db, audit_id).results, key=lambda r: (r.eps, r.attack))
        return [
            f"{r.attack.upper()}\tL∞\t{r.eps:g}\t{r.threat}\t{r.robust_accuracy:.3f}"
            for r in results
        ]

    page = Page(browser, base)
    page.open("/models/digits-cnn", "#model-results tbody tr:has(td)")
    assert page.rows("model-results") == shown(newer.id)  # the newest audit first
    assert [r.split("\t")[2] for r in page.rows("model-results")] == ["0.05", "0.3"]
    page.shot("model-newest-configuration")
    page.tab.click("#model-config")
    options = page.tab.get_by_role("option").all_inner_texts()
    assert len(options) == 2, options
    assert options[0].startswith("PGD · L∞ 0.05, 0.3 · 5 steps · 100 images · digits ·")
    assert options[1].startswith(
        "quick: FGSM, PGD · L∞ 0.1, 0.2 · 10 steps · 100 images · digits ·"
    )
    page.tab.get_by_role("option").nth(1).click()
    page.tab.wait_for_url(f"**config={older.config_hash}**")
    expect(page.tab.locator("#model-results tbody tr:has(td)")).to_have_count(4)
    assert page.rows("model-results") == shown(older.id)
    assert f"audit {older.id} ·" in page.tab.inner_text("#model-audit")
    page.shot("model-configurations")
    page.clean()


def test_audits_filter_narrows_the_table(site, browser) -> None:
    from playwright.sync_api import expect  # no eval in the page: the CSP forbids it

    page = Page(browser, site[0])
    page.open("/audits", "#audits-table")
    assert len(page.rows("audits-table")) == 4
    page.tab.click("#audits-status")
    page.tab.get_by_role("option", name="failed").click()
    page.tab.wait_for_url("**status=failed**")
    expect(page.tab.locator("#audits-table tbody tr:has(td)")).to_have_count(1)
    page.tab.locator("#audits-table tbody tr:has(td) td").first.click()
    page.tab.wait_for_selector("#audits-detail-body")
    assert "takes inputs shaped 1×8×8" in page.tab.inner_text("#audits-detail-body")
    page.open("/audits?model=digits-cnn&status=succeeded&id=2", "#audits-detail-body")
    assert len(page.rows("audits-table")) == 3
    assert "digits-cnn v2" in page.tab.inner_text("#audits-detail-body")
    ran = page.tab.inner_text("#audits-run")  # how the audit ran: contract, eps grid, batch
    assert "Input: [0, 1], N×C×H×W, 1×8×8" in ran and "Batch size: " in ran
    page.shot("audits")
    page.clean()


def test_sources_search_and_a_sources_activity(site, browser) -> None:
    from playwright.sync_api import expect  # no eval in the page: the CSP forbids it

    page = Page(browser, site[0])
    page.open("/sources", "#sources-table")
    assert len(page.rows("sources-table")) == 25  # the first page of many
    page.tab.fill("#sources-search", "10.66.")
    page.tab.press("#sources-search", "Enter")
    page.tab.wait_for_url("**q=10.66.**")
    expect(page.tab.locator("#sources-table tbody tr:has(td)")).to_have_count(5)
    assert all(r.startswith("10.66.") for r in page.rows("sources-table"))
    page.tab.locator("#sources-table tbody tr:has(td)").first.locator("td").first.click()
    page.tab.wait_for_selector("#sources-histograms .main-svg")
    assert "source=10.66." in page.tab.url
    page.shot("sources")
    page.clean()


def test_alert_triage_needs_a_triager_and_lands_in_the_trail(site, browser) -> None:
    base, db = site
    with db.session() as s:
        alert_id = s.scalar(
            select(Alert.id).where(rule_in("flagged-rate"), Alert.source == "10.66.0.2")
        )
    page = Page(browser, base)
    page.open(f"/alerts?id={alert_id}", "#alerts-ack")
    assert "10.66.0.2" in page.tab.inner_text("#alerts-summary")
    assert page.tab.locator("#alerts-thumbnails img").count() > 0  # kept flagged inputs
    page.tab.click("#alerts-ack")
    page.tab.wait_for_selector("#alerts-refused")  # no sign-in: refused
    with db.session() as s:
        assert s.get(Alert, alert_id).status == "open"

    sign_in(page, "vic", f"/alerts?id={alert_id}")  # a viewer is refused too
    page.tab.wait_for_selector("#alerts-ack")
    page.tab.click("#alerts-ack")
    assert "only triagers" in page.tab.inner_text("#alerts-refused")

    sign_in(page, "ana", f"/alerts?id={alert_id}")
    page.tab.wait_for_selector("#alerts-ack")
    page.tab.fill("#alerts-note", "blocked at the gateway")
    page.tab.click("#alerts-ack")
    page.tab.wait_for_selector("#alerts-done")
    trail = page.tab.inner_text("#alerts-trail")
    assert "ana" in trail and "acknowledge" in trail and "blocked at the gateway" in trail
    with db.session() as s:
        assert s.get(Alert, alert_id).status == "acknowledged"
        [event] = s.scalars(
            select(AlertEvent).where(AlertEvent.alert_id == alert_id, AlertEvent.actor == "ana")
        ).all()
        assert event.note == "blocked at the gateway"
    page.shot("alert-triaged")
    page.open("/alerts?rule=probing-distributed", "#alerts-table")
    assert len(page.rows("alerts-table")) == 1
    page.shot("alerts")
    page.clean()


def test_a_signed_in_callback_without_the_csrf_header_is_refused(site) -> None:
    import requests

    base, _ = site
    session = requests.Session()
    form = session.get(f"{base}/login")
    token = session.cookies.get("_csrf_token")
    assert form.status_code == 200 and token
    signed = session.post(
        f"{base}/login", data={"user": "ana", "password": PASSWORD, "csrf": token, "next": "/"}
    )
    assert signed.status_code == 200
    payload = {
        "output": "alerts-message.children",
        "outputs": {"id": "alerts-message", "property": "children"},
        "inputs": [],
        "changedPropIds": [],
        "state": [],
    }
    forged = session.post(f"{base}/_dash-update-component", json=payload)
    assert forged.status_code == 403
    bad_login = requests.post(f"{base}/login", data={"user": "ana", "password": PASSWORD})
    assert bad_login.status_code == 403  # the sign-in form needs its token too


EVIL = '<a href="https://evil.example/">click me</a><b>BOLD</b>'
BAD_LINES = [
    "this is not json <script>alert(1)</script>",
    '{"ts": "2026-11-24T19:00:00Z", "source": "10.9.9.9", "model": "digits-cnn"}',
    '{"ts": "2026-11-24T19:00:00Z", "source": "<img src=x onerror=alert(1)>", '
    '"model": "digits-cnn", "input": {"array": [[7.5, 0.1], [0.2, 0.3]]}}',
    '{"ts": "2026-11-24T19:00:00Z", "source": "<img src=x onerror=alert(2)>", '
    '"model": "no-such-model", "input": {"array": [[0.5, 0.1], [0.2, 0.3]]}}',
    "this is not json either",
]


@pytest.fixture(scope="module")
def hostile(site, module_home, tmp_path_factory):
    """Records from a source named with HTML, and bad lines (dead letters, one carrying a
    script), ingested into the site's store at the time of its newest record."""
    from sqlalchemy import func

    from monitor.datasets import load_dataset
    from monitor.db.models import DeadLetter, InputScore
    from monitor.ingest.pipeline import Ingester
    from tests.ingest.lines import record
    from tests.stores import context_for

    settings, db, registry = context_for(module_home)
    with db.session() as s:
        newest = s.scalar(select(func.max(InputScore.ts)))
    ts = newest.strftime("%Y-%m-%dT%H:%M:%SZ")
    digits = load_dataset("digits", "test")
    lines = [record(digits.x[i], source=EVIL, rid=f"evil-{i}", ts=ts) for i in range(12)]
    log = tmp_path_factory.mktemp("hostile") / "hostile.jsonl"
    log.write_text("".join(line + "\n" for line in [*lines, *BAD_LINES]))
    Ingester(db, registry, settings).ingest_files([str(log)])
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == len(BAD_LINES)
    db.dispose()
    return site


def test_html_in_a_source_name_is_text_in_the_charts(hostile, browser) -> None:
    from urllib.parse import quote

    from playwright.sync_api import expect

    page = Page(browser, hostile[0])
    page.open(f"/sources?source={quote(EVIL)}", "#sources-histograms .main-svg")
    page.tab.wait_for_selector("#sources-timeline .main-svg")
    assert page.tab.locator("#sources-timeline a, #sources-histograms a").count() == 0
    assert page.tab.locator('[href*="evil.example"]').count() == 0
    titles = page.tab.locator("#sources-timeline .gtitle, #sources-histograms .gtitle")
    assert titles.all_text_contents() == [
        f"{EVIL}: inputs per minute",
        f"Newest 12 of {EVIL}'s inputs",
    ]
    page.shot("sources-html-name")
    page.tab.fill("#sources-search", "evil.example")
    page.tab.press("#sources-search", "Enter")
    expect(page.tab.locator("#sources-table tbody tr:has(td)")).to_have_count(1)
    assert page.rows("sources-table")[0].startswith(EVIL)  # the table shows it as text too
    page.clean()


def test_dead_letters_page_shows_bad_input_as_text(hostile, browser) -> None:
    from playwright.sync_api import expect

    page = Page(browser, hostile[0])
    page.open("/dead-letters", "#dead-letters-table")
    rows = page.rows("dead-letters-table")
    assert len(rows) == len(BAD_LINES)
    received = [r.split("\t")[0] for r in rows]
    assert received == sorted(received, reverse=True)  # newest first
    assert sum("this is not json either" in r for r in rows) == 1
    assert sum("this is not json <script>alert(1)</script>" in r for r in rows) == 1
    assert any("<img src=x onerror=alert(1)>" in r and "[0, 1]" in r for r in rows), rows
    unknown = next(r for r in rows if "no-such-model" in r)
    assert unknown.startswith(unknown.split("\t")[0] + "\t<img src=x onerror=alert(2)>\t")
    for tag in ("script", "img"):
        assert page.tab.locator(f"#dead-letters-table {tag}").count() == 0
    reasons = page.rows("dead-letters-reasons")
    assert len(reasons) == 4 and reasons[0].startswith("2\tnot valid JSON"), reasons
    page.shot("dead-letters")
    page.tab.locator("#dead-letters-reasons a").first.click()
    page.tab.wait_for_url("**reason=not+valid+JSON**")
    expect(page.tab.locator("#dead-letters-table tbody tr:has(td)")).to_have_count(2)
    assert all("not valid JSON" in r for r in page.rows("dead-letters-table"))
    page.clean()


@pytest.mark.parametrize(
    ("path", "ready"),
    [
        ("/sources?page=" + "9" * 40, "#sources-table"),
        ("/sources?page=-3&min_rate=nan&sort=x", "#sources-table"),
        ("/alerts?page=" + "9" * 40 + "&id=1%20OR%201%3D1", "#alerts-table"),
        ("/audits?page=abc&id=" + "9" * 40, "#audits-table"),
        ("/dead-letters?page=" + "9" * 5000, "#dead-letters-table"),
        ("/sources?sort=inputs&sort=x&page=1&page=2&q=10.&q=y&source=a&source=b", "#sources-table"),
        ("/alerts?done=resolved&done=x&id=1&id=2&status=a&status=b", "#alerts-table"),
        ("/models/digits-cnn?version=9" + "9" * 40 + "&config=%3Cb%3Ex&config=y", "#model-results"),
    ],
)
def test_hostile_query_parameters_give_pages(site, browser, path, ready) -> None:
    page = Page(browser, site[0])
    page.open(path, ready)
    page.clean()  # no console error: no callback answered 500


def test_triage_of_an_id_that_is_not_an_id_is_refused_in_one_line(site, browser) -> None:
    base, db = site
    with db.session() as s:
        alert_id = s.scalar(select(Alert.id).where(Alert.status == "open").order_by(Alert.id))
    page = Page(browser, base)
    sign_in(page, "ana", f"/alerts?id={alert_id}")
    page.tab.wait_for_selector("#alerts-ack")
    page.tab.evaluate("window.dash_clientside.set_props('alerts-selected', {data: '1 OR 1=1'})")
    page.tab.click("#alerts-ack")
    page.tab.wait_for_selector("#alerts-message .alert")
    assert page.tab.inner_text("#alerts-message") == "Refused: '1 OR 1=1' is not an alert id."
    with db.session() as s:
        assert s.get(Alert, alert_id).status == "open"
    page.clean()
