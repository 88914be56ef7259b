"""Webhook notifications through an outbox.

A notification row is written in the same transaction as the alert change it announces, so a
crash or a receiver that is down loses nothing. Delivery claims due rows, POSTs the JSON payload
(signed with ``X-Robmon-Signature: sha256=HMAC(secret, body)`` when a secret is set; the row id
is sent as ``X-Robmon-Delivery`` so a receiver can drop repeats), marks the row delivered on a
2xx answer, and otherwise retries with exponential backoff up to ``max_attempts``. A delivered
row is never sent again.

Only http and https URLs are sent to (``[alerts.webhook] url`` is checked when the configuration
is read, and again here), and redirects are never followed: a 3xx answer is a failed delivery,
so a receiver cannot bounce the signed request to an internal address. Every failure (an answer
other than 2xx, a timeout, a refused connection, a broken answer, any exception) is counted in
the row's ``attempts`` and in ``robmon_webhook_failures_total``; the notifier itself never fails.

``timeout`` is a deadline for the whole delivery, not for each socket read: when it passes, the
connection is shut down, so a receiver trickling its answer a byte at a time cannot hold the
notifier (only a TLS handshake still in progress is bounded per read). The answer's body is
never read.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import http.client
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from monitor import metrics
from monitor.alerts.settings import AlertSettings
from monitor.db.models import Alert, NotificationOutbox
from monitor.db.session import Database
from monitor.db.types import utcnow

log = logging.getLogger(__name__)
CLAIM_SECONDS = 60
MAX_BACKOFF = timedelta(hours=1)


def payload(alert: Alert, event: str) -> dict[str, Any]:
    return {
        "event": event,
        "alert_id": alert.id,
        "incident_id": alert.id,
        "rule": alert.rule,
        "rules": (alert.rules or alert.rule).split(","),
        "source": alert.source,
        "sources": (alert.evidence or {}).get("sources", [alert.source]),
        "model": alert.model_name,
        "version": alert.model_version,
        "severity": alert.severity,
        "status": alert.status,
        "summary": alert.summary,
        "first_seen": alert.first_seen.isoformat(),
        "last_seen": alert.last_seen.isoformat(),
        "evidence": alert.evidence,
    }


def enqueue(session: Session, alert: Alert, event: str, settings: AlertSettings) -> None:
    """Queue a notification (only when a webhook is configured)."""
    if settings.webhook.url:
        session.add(
            NotificationOutbox(
                alert_id=alert.id,
                event=event,
                payload=payload(alert, event),
                created_at=utcnow(),
                next_attempt_at=utcnow(),
            )
        )


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


@dataclass
class Delivery:
    delivered: int = 0
    failed: int = 0
    given_up: int = 0


def deliver_due(db: Database, settings: AlertSettings) -> Delivery:
    """Send every due notification once; failures are rescheduled with backoff."""
    hook = settings.webhook
    result = Delivery()
    if not hook.url:
        return result
    while True:
        row = _claim(db, hook.max_attempts)
        if row is None:
            return result
        try:
            error = _send(hook.url, hook.secret, row, hook.timeout)
        except Exception as err:  # whatever goes wrong is a failed delivery, never a crash
            log.exception("webhook: notification %s failed", row["id"])
            error = f"{type(err).__name__}: {err}"
        now = utcnow()
        with db.session() as s:
            item = s.get_one(NotificationOutbox, row["id"])
            item.claimed_until = None
            if error is None:
                item.delivered_at, item.last_error = now, None
                result.delivered += 1
                continue
            item.attempts += 1
            item.last_error = error
            metrics.WEBHOOK_FAILURES.inc()
            item.next_attempt_at = now + min(hook.backoff * 2 ** (item.attempts - 1), MAX_BACKOFF)
            result.failed += 1
            if item.attempts >= hook.max_attempts:
                result.given_up += 1
                log.error(
                    "webhook: gave up on notification %s after %s attempts: %s",
                    item.id,
                    item.attempts,
                    error,
                )
        if result.failed:
            return result  # the receiver is failing: try the rest on the next run


def _claim(db: Database, max_attempts: int) -> dict[str, Any] | None:
    now = utcnow()
    with db.session() as s:
        candidates = s.scalars(
            select(NotificationOutbox.id)
            .where(
                NotificationOutbox.delivered_at.is_(None),
                NotificationOutbox.next_attempt_at <= now,
                NotificationOutbox.attempts < max_attempts,
                (NotificationOutbox.claimed_until.is_(None))
                | (NotificationOutbox.claimed_until < now),
            )
            .order_by(NotificationOutbox.id)
            .limit(5)
        ).all()
        for outbox_id in candidates:
            claimed = s.execute(
                update(NotificationOutbox)
                .where(
                    NotificationOutbox.id == outbox_id,
                    NotificationOutbox.delivered_at.is_(None),
                    (NotificationOutbox.claimed_until.is_(None))
                    | (NotificationOutbox.claimed_until < now),
                )
                .values(claimed_until=now + timedelta(seconds=CLAIM_SECONDS))
            ).rowcount
            if claimed:
                row = s.get_one(NotificationOutbox, outbox_id)
                return {"id": row.id, "event": row.event, "payload": row.payload}
    return None


def _send(url: str, secret: str | None, row: dict[str, Any], timeout: float) -> str | None:
    """POST one claimed notification; None when delivered, else why not."""
    body = json.dumps(row["payload"], sort_keys=True, default=str).encode()
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "robmon",
        "X-Robmon-Delivery": str(row["id"]),
        "X-Robmon-Event": row["event"],
    }
    if secret:
        headers["X-Robmon-Signature"] = signature(secret, body)
    return _post(url, body, headers, timeout)


def _opener(deadline: _Deadline) -> urllib.request.OpenerDirector:
    """http and https only, no redirect handler: a 3xx answer arrives as an HTTPError. Every
    connection is watched by ``deadline``."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        _WatchedHTTPHandler(deadline),
        _WatchedHTTPSHandler(deadline),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


class _Deadline:
    """One delivery's time limit: when it passes, its connections are shut down, so that a
    blocked read returns at once however slowly the receiver trickles its answer."""

    def __init__(self, seconds: float) -> None:
        self.expired = False
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._cut)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._timer.cancel()

    def watch(self, base: type[http.client.HTTPConnection]) -> Any:
        """A factory of ``base`` connections that this deadline can cut."""

        def connection(*args: Any, **kwargs: Any) -> http.client.HTTPConnection:
            conn = base(*args, **kwargs)
            connect = conn.connect

            def connect_watched() -> None:
                connect()
                with self._lock:
                    self._connections.append(conn)
                    if self.expired:  # connected after the deadline: cut at once
                        _shutdown(conn)

            conn.connect = connect_watched  # type: ignore[method-assign]
            return conn

        return connection

    def _cut(self) -> None:
        with self._lock:
            self.expired = True
            for conn in self._connections:
                _shutdown(conn)


def _shutdown(conn: http.client.HTTPConnection) -> None:
    with contextlib.suppress(OSError, AttributeError):
        conn.sock.shutdown(socket.SHUT_RDWR)


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(self.deadline.watch(http.client.HTTPConnection), req)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline) -> None:
        super().__init__()
        self.deadline = deadline

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        watched = self.deadline.watch(http.client.HTTPSConnection)
        return self.do_open(watched, req, context=self._context)


def _post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> str | None:
    """None on a 2xx answer, else why not (never raises). ``timeout`` bounds the whole delivery
    (connecting, sending, the answer's status and headers), not each read; the answer's body is
    never read (a receiver may send gigabytes)."""
    scheme = urlsplit(url).scheme.lower()
    if scheme not in ("http", "https"):
        return f"only http and https URLs are sent to, not {scheme}://"
    request = urllib.request.Request(url, data=body, headers=headers, method="POST")
    with _Deadline(timeout) as deadline:
        error = _answer(_opener(deadline), request, timeout)
    if deadline.expired:  # even an answer that looks whole: the cut may have ended its headers
        return f"timed out after {timeout:g} s (the whole delivery)"
    return error


def _answer(
    opener: urllib.request.OpenerDirector, request: urllib.request.Request, timeout: float
) -> str | None:
    """Send ``request``: None on a 2xx status, else why not; the body stays unread."""
    try:
        with opener.open(request, timeout=timeout) as response:
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as err:
        err.close()
        if 300 <= err.code < 400:
            return f"HTTP {err.code} (redirects are not followed)"
        return f"HTTP {err.code}"
    except urllib.error.URLError as err:
        return f"{type(err).__name__}: {err.reason}"
    except Exception as err:  # timeouts, resets, answers that are not HTTP (BadStatusLine)
        return f"{type(err).__name__}: {err}"
