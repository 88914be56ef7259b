"""Prometheus metrics of the long-running services (one registry per process).

Counters and histograms are updated where the work happens (ingester, audit worker, webhook
delivery); open alerts are read from the database at scrape time, so every process reports
the same truth. Names follow Prometheus conventions (``_total``, ``_seconds``).
"""

from __future__ import annotations

import logging
from collections import Counter as Tally
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from monitor.ingest.convert_rules import conversion_kinds

log = logging.getLogger(__name__)

REGISTRY = CollectorRegistry(auto_describe=True)

RECORDS_SCORED = Counter(
    "robmon_records_scored_total",
    "Production records scored and committed.",
    ["model"],
    registry=REGISTRY,
)
RECORDS_DEAD = Counter(
    "robmon_records_dead_lettered_total",
    "Production records stored as dead letters (bad input).",
    registry=REGISTRY,
)
RECORDS_FLAGGED = Counter(
    "robmon_records_flagged_total",
    "Scored records flagged as suspicious.",
    ["model"],
    registry=REGISTRY,
)
RECORDS_UNCALIBRATED = Counter(
    "robmon_records_uncalibrated_total",
    "Records scored without flags because their model version had no detector calibration yet.",
    ["model"],
    registry=REGISTRY,
)
INGEST_CONVERSIONS = Counter(
    "robmon_ingest_conversions_total",
    "Conversions of scored inputs to their model's input (a conversion rule of robmon.toml or "
    "the tag robustness.convert), by kind: resize or colour.",
    ["model", "kind"],
    registry=REGISTRY,
)
INGEST_LAG = Gauge(
    "robmon_ingest_lag_seconds",
    "Age of the oldest record in the last committed batch when it was committed "
    "(stream entry time for Redis Streams, record time otherwise).",
    registry=REGISTRY,
)
STREAM_BACKLOG = Gauge(
    "robmon_stream_backlog_entries",
    "Entries of the stream not yet delivered to the consumer group plus those pending "
    "acknowledgement.",
    ["stream", "group"],
    registry=REGISTRY,
)
AUDIT_SECONDS = Histogram(
    "robmon_audit_duration_seconds",
    "Wall time of audits run by this process, by outcome.",
    ["outcome"],
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200),
    registry=REGISTRY,
)
WEBHOOK_FAILURES = Counter(
    "robmon_webhook_failures_total",
    "Webhook deliveries that failed: an answer other than 2xx (redirects are not followed), a "
    "timeout, a connection error or any other exception (they are retried with backoff).",
    registry=REGISTRY,
)


def count_committed(scores: Any, dead: int) -> None:
    """Count one committed batch of the ingester: ``scores`` (a ``ScoreTable``: its model,
    flag, calibration and conversion columns) and ``dead`` dead letters."""
    models = scores.column("model_name")
    for (model, flagged, calibration), n in Tally(
        zip(models, scores.column("flagged"), scores.column("calibration_id"), strict=True)
    ).items():
        RECORDS_SCORED.labels(model).inc(n)
        if flagged:
            RECORDS_FLAGGED.labels(model).inc(n)
        if calibration is None:
            RECORDS_UNCALIBRATED.labels(model).inc(n)
    texts = scores.column("conversion") or [None] * len(models)
    conversions = Tally(
        (model, kind)
        for model, text in zip(models, texts, strict=True)
        if text
        for kind in conversion_kinds(text)
    )
    for (model, kind), n in conversions.items():
        INGEST_CONVERSIONS.labels(model, kind).inc(n)
    RECORDS_DEAD.inc(dead)


class OpenAlerts(Collector):
    """``robmon_open_alerts{severity}`` counted in the database when Prometheus scrapes."""

    def __init__(self, db) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from sqlalchemy import func, select

        from monitor.db.models import Alert

        family = GaugeMetricFamily(
            "robmon_open_alerts", "Alerts not yet resolved, by severity.", labels=["severity"]
        )
        try:
            with self.db.session() as s:
                rows = s.execute(
                    select(Alert.severity, func.count())
                    .where(Alert.closed_at.is_(None))
                    .group_by(Alert.severity)
                ).all()
        except Exception as err:  # a scrape must not fail because the database is down
            log.warning("open alerts not counted: %s", err)
            return
        for severity, count in rows:
            family.add_metric([severity], count)
        yield family


_open_alerts: OpenAlerts | None = None


def watch_open_alerts(db) -> None:
    """Report open alerts from ``db`` (registered once per process)."""
    global _open_alerts
    if _open_alerts is None:
        _open_alerts = OpenAlerts(db)
        REGISTRY.register(_open_alerts)
