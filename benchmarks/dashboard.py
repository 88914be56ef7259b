"""Dashboard latency at volume: p50 and p95 of every page's callbacks.

    OMP_NUM_THREADS=1 python benchmarks/dashboard.py --postgres URL [--stored 1000000]

Fills a database with ``--stored`` input scores over a week from ``--sources`` sources (written
through the ingester's storage path, so rollups and activity are as in production), ``--alerts``
open alerts and a few audits, then times each page callback (the page render for a deep link,
which runs the page's queries and builds its figures, plus JSON serialization as Dash sends it)
over ``--repeats`` runs. Without --postgres it runs on SQLite.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks._fill import MODEL, VERSION, fill
from benchmarks._timing import table


def add_alerts_and_audits(db, count: int, sources: int, now: datetime) -> None:
    from monitor.alerts.lifecycle import apply_findings
    from monitor.alerts.rules import Finding
    from monitor.alerts.settings import AlertSettings
    from monitor.audit import store
    from monitor.audit.checks import Check
    from monitor.audit.measure import CellResult, Measurements, Probes

    severities = ("critical", "high", "medium")
    rules = ("flagged-rate", "low-confidence", "probing")
    findings = [
        Finding(
            rules[i % 3],
            f"10.0.{(i * 7 % sources) // 256}.{i * 7 % sources % 256}",
            MODEL,
            VERSION,
            severities[i % 3],
            f"synthetic alert {i}",
            now - timedelta(minutes=10),
            now,
            {"n": 60, "count": 30, "suspicious_score_ids": [1, 2, 3]},
        )
        for i in range(count)
    ]
    with db.session() as s:
        apply_findings(s, findings, AlertSettings(), now)
    for version in ("1", "2", "3"):
        audit_id = store.create(
            db,
            name=MODEL,
            version=version,
            dataset="digits",
            config={},
            config_hash="h",
            trigger="scheduler",
        )
        cells = [
            CellResult(
                a,
                "linf",
                e,
                "white-box",
                10,
                1,
                0.9 - e * 3,
                None,
                540,
                None,
                None,
                1.0,
                0,
                {c: (54, 0.9 - e * 3) for c in range(10)},
            )
            for a in ("fgsm", "pgd")
            for e in (0.05, 0.1, 0.2)
        ]
        m = Measurements(0.98, 540, 10, {c: (54, 0.98) for c in range(10)}, cells, Probes())
        store.save_success(db, audit_id, m, [Check("zero_gradients", "passed", "ok")], 40.0, {})


def measure(callbacks: dict, repeats: int, server) -> list[tuple]:
    import plotly

    rows = []
    for name, fn in callbacks.items():
        with server.test_request_context("/"):
            fn()  # warm-up: first-call imports and caches are not what a user waits for
        times = []
        for _ in range(repeats):
            with server.test_request_context("/"):
                started = time.perf_counter()
                result = fn()
                json.dumps(result, cls=plotly.utils.PlotlyJSONEncoder)
                times.append(time.perf_counter() - started)
        times.sort()
        p95 = times[min(len(times) - 1, round(0.95 * (len(times) - 1)))]
        rows.append(
            (
                name,
                f"{statistics.median(times) * 1000:.0f} ms",
                f"{p95 * 1000:.0f} ms",
                "ok" if p95 <= 0.3 else "OVER 300 ms",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", default=os.environ.get("ROBMON_TEST_POSTGRES_URL"))
    parser.add_argument("--stored", type=int, default=1_000_000)
    parser.add_argument("--sources", type=int, default=10_000)
    parser.add_argument("--alerts", type=int, default=1_000)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    from monitor.config import load_settings
    from monitor.db.session import open_database

    home = Path(tempfile.mkdtemp()) / ".robmon"
    drop = None
    if args.postgres:
        from benchmarks.ingest import postgres_database

        url, drop = postgres_database(args.postgres)
        label = "PostgreSQL"
    else:
        url, label = f"sqlite:///{home}/bench.db", "SQLite"
    settings = replace(
        load_settings({"ROBMON_HOME": str(home), "MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}),
        db_url=url,
        embedded_db=True,
    )
    db = open_database(settings)
    try:
        now = datetime.now(UTC)
        started = time.perf_counter()
        fill(db, args.stored, args.sources, now)
        add_alerts_and_audits(db, args.alerts, args.sources, now)
        print(
            f"filled {label} with {args.stored:,} scores, {args.sources:,} sources, "
            f"{args.alerts:,} alerts in {time.perf_counter() - started:.0f} s"
        )
        server = app_server(settings, db)  # the app first: it registers the pages
        rows = measure(callbacks(settings, db), args.repeats, server)
    finally:
        db.dispose()
        if drop:
            drop()
    print(f"\n{label}: page callbacks, {args.repeats} runs each (goal: p95 <= 300 ms)")
    print(table(rows, ("callback", "p50", "p95", "")))


def app_server(settings, db):
    from dashboards.app import create_app

    return create_app(settings, db).server


def callbacks(settings, db) -> dict:
    import dash

    from dashboards.context import current

    pages = {
        Path(p["module"].replace(".", "/")).name: sys.modules[p["module"]]
        for p in dash.page_registry.values()
    }
    alerts, audits, model, overview, sources = (
        pages[n] for n in ("alerts", "audits", "model", "overview", "sources")
    )

    current()._aliases[MODEL] = (time.monotonic() + 1e9, {"champion": VERSION})  # no MLflow
    alert_id = 500
    return {
        "overview": overview.overview_content,
        "model page": lambda: model.layout(name=MODEL),
        "model page, version 2": lambda: model.layout(name=MODEL, version="2"),
        "audits": lambda: audits.layout(),
        "audits, one audit": lambda: audits.layout(id="2"),
        "sources (most flagged)": lambda: sources.layout(),
        "sources, sorted by inputs, page 200": lambda: sources.layout(
            sort="inputs", order="asc", page="200"
        ),
        "sources, filtered": lambda: sources.layout(q="10.0.1", min_rate="0.05"),
        "sources, one source": lambda: sources.layout(source="10.0.3.7"),
        "alerts (active)": lambda: alerts.layout(),
        "alerts, filtered": lambda: alerts.layout(rule="probing", severity="high"),
        "alerts, one alert": lambda: alerts.layout(id=str(alert_id)),
    }


if __name__ == "__main__":
    main()
