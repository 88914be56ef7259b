"""The pages as the app renders them, on a real SQLite database: query parameters from the URL
(huge, negative, not numbers) give pages, never errors; user-controlled text placed in figures
is escaped so that plotly shows it literally instead of rendering its HTML."""

from datetime import UTC, datetime, timedelta

import pytest

from dashboards.components import plot_text
from monitor.db.session import open_database
from monitor.ingest import rollups
from monitor.ingest.store import commit_batch
from tests.dashboards.test_queries import COLOUR, _audit, scores

EVIL = '<a href="https://evil.example/">click me</a><b>BOLD</b>'
# fixed record times: nothing here depends on the date
T0 = datetime(2026, 2, 1, 9, 0, tzinfo=UTC)
HOSTILE_NUMBERS = ["9" * 30, "9" * 5000, "-7", "abc", "1e9", " 3 ", "nan", "inf", "0x10", ""]


@pytest.fixture
def app_db(settings):
    """The dashboard app over a database with 30 sources (one named with HTML), an alert and
    two audits of a model whose second version is named with HTML."""
    from dashboards.app import create_app
    from monitor.alerts.lifecycle import apply_findings
    from monitor.alerts.rules import Finding
    from monitor.alerts.settings import AlertSettings

    db = open_database(settings)
    rows = [(EVIL, T0 + timedelta(minutes=i % 3), i < 4, 0.6) for i in range(8)]
    rows += [(f"10.0.0.{i}", T0, False, 0.99) for i in range(29)]
    table = scores(rows)
    commit_batch(db, table, [], None, lambda s, ids: rollups.record(s, table, ids))
    with db.session() as s:
        finding = Finding(
            "flagged-rate", EVIL, "m", "1", "high", "odd", T0, T0 + timedelta(minutes=3), {}
        )
        apply_findings(s, [finding], AlertSettings())
    _audit(db, "1", {0.1: 0.5, 0.2: 0.1})
    _audit(db, EVIL, {0.1: 0.6, 0.2: 0.2})
    create_app(settings, db)  # registers the pages and installs the context they read
    yield db
    db.dispose()


def _find(component, component_id: str):
    """The component with this id in a layout tree (None when absent)."""
    if getattr(component, "id", None) == component_id:
        return component
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list | tuple) else [children]:
        if child is not None and not isinstance(child, str | int | float):
            found = _find(child, component_id)
            if found is not None:
                return found
    return None


def _strings(value) -> list[str]:
    """Every string in a figure's JSON (titles, names, labels, hover text, annotations)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for v in value.values() for s in _strings(v)]
    if isinstance(value, list | tuple):
        return [s for v in value for s in _strings(v)]
    return []


def _assert_no_markup(figure) -> None:
    texts = _strings(figure.to_plotly_json())
    assert not [t for t in texts if "<a" in t or "<b>" in t or ("href=" in t and "&#34;" not in t)]


def test_plot_text_escapes_what_plotly_would_render() -> None:
    assert plot_text(EVIL) == (
        "&lt;a href=&#34;https://evil.example/&#34;&gt;click me&lt;/a&gt;&lt;b&gt;BOLD&lt;/b&gt;"
    )
    assert plot_text("it's 5 & 6") == "it&#39;s 5 &amp; 6"
    assert plot_text(3) == "3"


def test_a_source_named_with_html_is_text_in_its_charts(app_db) -> None:
    from dashboards.pages import sources

    detail = sources._detail(EVIL, None)
    timeline = _find(detail, "sources-timeline").figure
    assert timeline.layout.title.text == plot_text(f"{EVIL}: inputs per minute")
    histograms = _find(detail, "sources-histograms").figure
    assert histograms.layout.title.text == plot_text(f"Newest 8 of {EVIL}'s inputs")
    for figure in (timeline, histograms):
        _assert_no_markup(figure)


def test_a_version_named_with_html_is_text_in_the_model_charts(app_db) -> None:
    from dashboards import queries
    from dashboards.pages import model

    curves = queries.newest_audits(app_db, "m")
    figure = model.curves_figure(curves)
    names = {trace.name for trace in figure.data}
    assert plot_text(f"v{EVIL} white-box") in names
    _assert_no_markup(figure)
    _assert_no_markup(model.class_figure(curves[-1].audit_id))


def test_model_page_shows_the_chosen_configuration_of_a_version(app_db) -> None:
    """Newest audit first; the URL's configuration picks another; an unknown one falls back."""
    from dashboards.pages import model

    _audit(app_db, "1", {2 / 255: 0.8, 8 / 255: 0.4}, "h2", COLOUR)
    newest = model.layout(name="m", version="1")
    options = _find(newest, model.CONFIG).options
    assert [o["value"] for o in options] == ["h2", "h1"]
    assert options[0]["label"].startswith("PGD · L∞ 2/255, 8/255 · 20 steps · all images")
    assert _find(newest, model.CONFIG).value == "h2"
    shown = [(r["eps"], r["robust acc"]) for r in _find(newest, model.RESULTS).data]
    assert shown == [("2/255", "0.800"), ("8/255", "0.400")]
    older = model.layout(name="m", version="1", config="h1")
    assert _find(older, model.CONFIG).value == "h1"
    shown = [(r["eps"], r["robust acc"]) for r in _find(older, model.RESULTS).data]
    assert shown == [("0.1", "0.500"), ("0.2", "0.100")]
    curves = _find(older, "model-curves").figure  # both versions have h1
    assert {trace.name for trace in curves.data} == {
        "v1 white-box",
        plot_text(f"v{EVIL} white-box"),
    }
    assert {t.name for t in _find(newest, "model-curves").figure.data} == {"v1 white-box"}
    unknown = model.layout(name="m", version="1", config="<b>nope</b>")
    assert _find(unknown, model.CONFIG).value == "h2"
    assert model.choose("2", "h1") == "?version=2&config=h1"


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_sources_page_numbers_from_the_url_never_fail(app_db, value) -> None:
    from dashboards.pages import sources

    page = sources.layout(page=value, min_rate=value)
    table = _find(page, sources.TABLE)
    assert table.page_count == 2  # 30 sources, 25 a page
    # past the end (3, 10**29): the last page; not a whole number (over 4300 digits): the first
    expected = 1 if value in ("9" * 30, " 3 ") else 0
    assert table.page_current == expected
    assert len(table.data) == (5 if expected == 1 else 25)


def test_sources_min_rate_outside_zero_to_one_is_no_filter(app_db) -> None:
    from dashboards.pages import sources

    assert len(_find(sources.layout(min_rate="0.4"), sources.TABLE).data) == 1  # the HTML one
    for value in ("-1", "2", "nan", "inf", "1e999"):
        assert len(_find(sources.layout(min_rate=value), sources.TABLE).data) == 25


@pytest.mark.parametrize("value", HOSTILE_NUMBERS)
def test_alerts_and_audits_pages_take_any_page_and_id(app_db, value) -> None:
    from dashboards.pages import alerts, audits

    for module, kind in ((alerts, "alert"), (audits, "audit")):
        page = module.layout(page=value, id=value or None)
        assert _find(page, module.TABLE).page_current == 0
        detail = _find(page, f"{kind}s-detail")
        if value.strip() == "3" or not value:
            continue  # a valid id (no such row), or none asked for
        assert detail.children.children == f"{value[:40]!r} is not an {kind} id."


def test_repeated_parameters_count_once(app_db) -> None:
    """Dash passes a list for a parameter given twice (?page=1&page=0): the first counts."""
    from dashboards.pages import alerts, audits, dead_letters, model, sources

    table = _find(
        sources.layout(page=["1", "0"], sort=["inputs", "x"], q=["10.", "y"], source=["a", "b"]),
        sources.TABLE,
    )
    assert table.page_current == 1 and table.sort_by[0]["column_id"] == "inputs"
    page = alerts.layout(page=["0", "1"], id=["77", "1"], done=["resolved", "x"], status=["a"])
    assert _find(page, "alerts-detail").children.children == "There is no alert 77."
    assert _find(audits.layout(id=["x", "1"]), "audits-detail").children.children == (
        "'x' is not an audit id."
    )
    table = _find(dead_letters.layout(page=["3", "1"], reason=["r"]), dead_letters.TABLE)
    assert table.page_current == 0 and table.data == []
    assert _find(model.layout(name="m", version=["1", "2"]), "model-curves") is not None


def test_an_id_that_does_not_exist_says_so(app_db) -> None:
    from dashboards.pages import alerts, audits

    assert _find(alerts.layout(id="77"), "alerts-detail").children.children == (
        "There is no alert 77."
    )
    assert _find(audits.layout(id="77"), "audits-detail").children.children == (
        "There is no audit 77."
    )


def test_clicked_rows_are_checked(app_db) -> None:
    from dashboards.components import clicked_id

    data = [{"id": 4}, {"id": "5"}, {"id": "1 OR 1=1"}]
    assert clicked_id({"row": 0}, data) == 4
    assert clicked_id({"row": 1}, data) == 5
    assert clicked_id({"row": 2}, data) is None
    assert clicked_id({"row": 99}, data) is None
    assert clicked_id({"row": "x"}, data) is None
    assert clicked_id({}, data) is None
    assert clicked_id(None, data) is None


def test_dead_letter_reasons_quoting_a_password_are_masked_and_unlinked(app_db) -> None:
    from dashboards.pages import dead_letters
    from monitor.db.models import DeadLetter

    leaky = "model 'x' is not registered in MLflow (https://bot:hunter2@mlflow.example.com)."
    plain = "not valid JSON: unparseable."
    with app_db.session() as s:
        for i, reason in enumerate([leaky, plain]):
            s.add(
                DeadLetter(
                    received_at=T0 + timedelta(minutes=i),
                    origin="stdin",
                    reason=reason,
                    excerpt="{}",
                )
            )
    page = dead_letters.layout()
    rows = _find(page, dead_letters.TABLE).data
    assert [r["reason"] for r in rows] == [
        plain,
        "model 'x' is not registered in MLflow (https://bot:***@mlflow.example.com).",
    ]
    cells = [
        row.children[1].children for row in _find(page, "dead-letters-reasons").children[1].children
    ]
    assert cells[0] == "model '…' is not registered in MLflow (https://bot:***@mlflow.example.com)."
    assert cells[1].href == "/dead-letters?reason=not+valid+JSON%3A+unparseable."
    assert "hunter2" not in str(page)
