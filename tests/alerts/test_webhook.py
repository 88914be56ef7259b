"""Webhook URLs: http/https only (checked when the configuration is read), redirects never
followed, every failure counted (in the outbox row and the metric) without the notifier
crashing, and tokens in the URL masked by `robmon config`. Real receivers on loopback."""

import contextlib
import socket
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from monitor.errors import ConfigError

# fixed record times: nothing here depends on the date (CI runs tests/alerts a year ahead)
WINDOW = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


class Internal(BaseHTTPRequestHandler):
    """An internal admin endpoint a redirect points at: it must never be reached."""

    received: ClassVar[list] = []

    def do_GET(self) -> None:
        Internal.received.append(("GET", self.path, dict(self.headers)))
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"admin")

    def do_POST(self) -> None:
        Internal.received.append(("POST", self.path, dict(self.headers)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


class Redirecting(BaseHTTPRequestHandler):
    """A receiver answering every POST with 302 to the internal endpoint."""

    target = ""
    received: ClassVar[list] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        Redirecting.received.append(self.path)
        self.send_response(302)
        self.send_header("Location", Redirecting.target)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _serve(handler) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def receivers():
    Internal.received, Redirecting.received = [], []
    internal, redirecting = _serve(Internal), _serve(Redirecting)
    Redirecting.target = f"http://127.0.0.1:{internal.server_address[1]}/internal-admin"
    yield redirecting.server_address[1], internal.server_address[1]
    for server in (internal, redirecting):
        server.shutdown()
        server.server_close()


def _outbox_with_one_notification(url: str):
    """The settings of ``url`` (written to robmon.toml) and a database holding one incident
    with its notification queued."""
    from monitor.alerts.notify import enqueue
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings
    from monitor.db.models import Alert
    from monitor.db.session import open_database

    Path("robmon.toml").write_text(
        f'[alerts.webhook]\nurl = "{url}"\nsecret = "s3cret"\nbackoff = "0s"\n'
    )
    settings = load_settings()
    alert_settings = AlertSettings.from_settings(settings)
    db = open_database(settings)
    with db.session() as s:
        alert = Alert(
            rule="flagged-rate",
            rules="flagged-rate",
            source="10.6.6.6",
            model_name="digits-cnn",
            model_version="1",
            severity="high",
            summary="source 10.6.6.6: 30 of 40 inputs flagged",
            evidence={"sources": ["10.6.6.6"]},
            window_start=WINDOW,
            window_end=WINDOW + timedelta(minutes=10),
        )
        s.add(alert)
        s.flush()
        enqueue(s, alert, "new", alert_settings)
    return db, alert_settings


def _outbox(db) -> list:
    from sqlalchemy import select

    from monitor.db.models import NotificationOutbox

    with db.session() as s:
        return [
            (r.attempts, r.delivered_at, r.last_error, r.claimed_until)
            for r in s.scalars(select(NotificationOutbox))
        ]


def _failures() -> float:
    from monitor.metrics import REGISTRY

    return REGISTRY.get_sample_value("robmon_webhook_failures_total") or 0.0


def test_a_redirect_is_a_failed_delivery_and_is_never_followed(home, receivers) -> None:
    from monitor.alerts.notify import deliver_due

    redirecting, _internal = receivers
    db, settings = _outbox_with_one_notification(f"http://127.0.0.1:{redirecting}/hook")
    before = _failures()
    result = deliver_due(db, settings)
    assert Redirecting.received == ["/hook"]  # the receiver was asked once ...
    assert Internal.received == []  # ... and its redirect led nowhere
    assert (result.delivered, result.failed) == (0, 1)
    [(attempts, delivered_at, error, claimed_until)] = _outbox(db)
    assert attempts == 1 and delivered_at is None and claimed_until is None
    assert error == "HTTP 302 (redirects are not followed)"
    assert _failures() == before + 1
    # retried like any failure: the next run asks the receiver again, still in vain
    assert deliver_due(db, settings).failed == 1
    assert len(Redirecting.received) == 2 and Internal.received == []
    assert _outbox(db)[0][0] == 2 and _failures() == before + 2


def test_a_receiver_answering_garbage_is_a_counted_failure(home, raw_receiver) -> None:
    from monitor.alerts.notify import deliver_due

    garbage_port = raw_receiver(lambda conn, _: conn.sendall(b"\x00\x01 this is not HTTP\r\n\r\n"))
    db, settings = _outbox_with_one_notification(f"http://127.0.0.1:{garbage_port}/hook")
    before = _failures()
    result = deliver_due(db, settings)  # http.client's BadStatusLine: not an OSError
    assert (result.delivered, result.failed) == (0, 1)
    [(attempts, delivered_at, error, claimed_until)] = _outbox(db)
    assert attempts == 1 and delivered_at is None and claimed_until is None
    assert error.startswith("BadStatusLine")
    assert _failures() == before + 1


def test_a_file_url_that_bypassed_the_configuration_is_refused_at_send_time(home) -> None:
    """Settings built in code skip the configuration's check: the sender refuses too."""
    from monitor.alerts.notify import deliver_due

    db, settings = _outbox_with_one_notification("http://127.0.0.1:9/hook")
    object.__setattr__(settings.webhook, "url", "file:///etc/passwd")
    before = _failures()
    result = deliver_due(db, settings)
    assert (result.delivered, result.failed) == (0, 1)
    [(attempts, delivered_at, error, _)] = _outbox(db)
    assert attempts == 1 and delivered_at is None
    assert error == "only http and https URLs are sent to, not file://"
    assert _failures() == before + 1


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/hook",
        "gopher://127.0.0.1:6379/_INFO",
        "hooks.example.com/robmon",
        "https:///no-host",
    ],
)
def test_only_http_and_https_webhooks_are_accepted_at_config_load(home, robmon, url) -> None:
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings

    Path("robmon.toml").write_text(f'[alerts.webhook]\nurl = "{url}"\n')
    with pytest.raises(ConfigError, match=r"alerts\.webhook\.url must be an http:// or https://"):
        AlertSettings.from_settings(load_settings())
    for command in (("config",), ("alerts", "evaluate")):
        result = robmon(*command)
        assert result.code == 1
        [line] = result.stderr.strip().splitlines()  # one sentence, no traceback
        assert line.startswith("error: robmon.toml: alerts.webhook.url must be an http://")


def test_config_masks_tokens_in_the_webhook_url(home, robmon) -> None:
    Path("robmon.toml").write_text(
        "[alerts.webhook]\n"
        'url = "https://bot:pa55@hooks.slack.com/services/T000/B000/XXXX?token=abc&channel=sec"\n'
        'secret = "s3cret"\n'
    )
    shown = robmon("config", "--json")
    assert shown.code == 0, shown.stderr
    webhook = shown.json()["tables"]["alerts"]["webhook"]
    assert webhook == {
        "url": "https://bot:***@hooks.slack.com/services/***?token=***&channel=***",
        "secret": "***",
    }
    table = robmon("config")
    assert "https://bot:***@hooks.slack.com/services/***?token=***&channel=***" in table.stdout
    for secret in ("T000", "B000", "XXXX", "abc", "pa55", "s3cret"):
        assert secret not in shown.stdout + table.stdout


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("https://hooks.example.com/robmon", "https://hooks.example.com/robmon"),
        ("https://hooks.example.com/", "https://hooks.example.com/"),
        ("http://127.0.0.1:8080/a/b?x=1", "http://127.0.0.1:8080/a/***?x=***"),
        ("https://h.example/?token=t0k&t0k3n", "https://h.example/?token=***&***"),
        ("https://tok3n@h.example/hook#frag", "https://***@h.example/hook#***"),
        ("http://h/a;tok=secret", "http://h/a;tok=***"),
        ("http://h/a;s3cret/b", "http://h/a;***/***"),
        ("http://127.0.0.1:99999/x", "***"),
        ("redis://:pw@redis:6379/0/robmon-records", "redis://***@redis:6379/0/***"),
        ("sqlite:////srv/robmon/robmon.db", "sqlite:////srv/robmon/robmon.db"),
    ],
)
def test_mask_url(url: str, masked: str) -> None:
    from monitor.config import mask_url

    assert mask_url(url) == masked


def _raw_receiver(answer) -> tuple[int, threading.Event, socket.socket]:
    """A loopback TCP server handing each connection, its request read, to ``answer``."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                request = b""
                while b"\r\n\r\n" not in request:
                    request += conn.recv(65536)
                with contextlib.suppress(OSError):  # the sender cut the connection
                    answer(conn, stop)

    threading.Thread(target=serve, daemon=True).start()
    return listener.getsockname()[1], stop, listener


@pytest.fixture
def raw_receiver():
    started = []

    def start(answer) -> int:
        port, stop, listener = _raw_receiver(answer)
        started.append((stop, listener))
        return port

    yield start
    for stop, listener in started:
        stop.set()
        listener.close()


def _with_timeout(seconds: int) -> None:
    text = Path("robmon.toml").read_text()
    Path("robmon.toml").write_text(text + f"timeout = {seconds}\n")


@pytest.mark.thread_waits  # the deadline is a threading.Timer
def test_the_timeout_bounds_the_whole_delivery_of_a_trickling_receiver(home, raw_receiver):
    """A receiver sending its headers a byte every 0.4 s never trips a per-read timeout of 1 s;
    the delivery still fails after about 1 s in all, counted like any failure."""
    import time

    from monitor.alerts.notify import deliver_due
    from monitor.alerts.settings import AlertSettings
    from monitor.config import load_settings

    def trickle(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\n")
        for _ in range(40):  # 16 s at most, so that a sender without a deadline ends too
            if stop.wait(0.4):
                return
            conn.sendall(b"X")

    port = raw_receiver(trickle)
    db, _ = _outbox_with_one_notification(f"http://127.0.0.1:{port}/hook")
    _with_timeout(1)
    settings = AlertSettings.from_settings(load_settings())
    before = _failures()
    started = time.monotonic()
    result = deliver_due(db, settings)
    elapsed = time.monotonic() - started
    assert elapsed < 2.0, f"the delivery took {elapsed:.1f} s with timeout = 1"
    assert (result.delivered, result.failed) == (0, 1)
    [(attempts, delivered_at, error, _)] = _outbox(db)
    assert attempts == 1 and delivered_at is None
    assert error == "timed out after 1 s (the whole delivery)"
    assert _failures() == before + 1


def test_a_huge_answer_body_is_never_read(home, raw_receiver):
    """200 with a 50 MB body: delivered at once, without reading (or holding) the body."""
    import time

    from monitor.alerts.notify import deliver_due

    size, sent = 50 * 2**20, []

    def huge(conn: socket.socket, stop: threading.Event) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
        chunk, total = b"x" * 65536, 0
        try:
            while total < size and not stop.is_set():
                conn.sendall(chunk)
                total += len(chunk)
        finally:
            sent.append(total)

    port = raw_receiver(huge)
    db, settings = _outbox_with_one_notification(f"http://127.0.0.1:{port}/hook")
    started = time.monotonic()
    result = deliver_due(db, settings)
    assert (result.delivered, result.failed) == (1, 0)
    assert time.monotonic() - started < 5
    [(attempts, delivered_at, error, _)] = _outbox(db)
    assert attempts == 0 and delivered_at is not None and error is None
    for _ in range(50):  # the receiver notices the closed connection
        if sent:
            break
        time.sleep(0.1)
    assert sent and sent[0] < size // 2


@pytest.mark.parametrize("url", ["http://127.0.0.1:99999/x", "http://127.0.0.1:0/x"])
def test_a_webhook_url_with_an_invalid_port_is_refused_at_config_load(home, robmon, url) -> None:
    Path("robmon.toml").write_text(f'[alerts.webhook]\nurl = "{url}"\n')
    result = robmon("config")
    assert result.code == 1
    assert result.stderr.strip() == (
        "error: robmon.toml: alerts.webhook.url has an invalid port (use a number from 1 to 65535)."
    )


@pytest.mark.timeout(120, method="thread")
@pytest.mark.parametrize(
    "command",
    [("scheduler", "--once"), ("scheduler",), ("serve", "--no-dashboard", "--no-ingest")],
)
def test_services_refuse_a_bad_webhook_before_running_any_job(home, robmon, command) -> None:
    """Pentest 17, F2: the scheduler ran three jobs (and took the lease) before the webhook's
    check failed, with a traceback per job; now it stops first, in one sentence."""
    from sqlalchemy import func, select

    from monitor.config import load_settings
    from monitor.db.models import JobRun, Lease
    from monitor.db.session import open_database

    Path("robmon.toml").write_text('[alerts.webhook]\nurl = "file:///etc/passwd"\n')
    result = robmon(*command)
    assert result.code == 1
    assert result.stdout == ""
    assert result.stderr.strip() == (
        "error: robmon.toml: alerts.webhook.url must be an http:// or https:// URL with a host "
        "(it has file://)."
    )
    db = open_database(load_settings())
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(JobRun)) == 0
        assert s.scalar(select(func.count()).select_from(Lease)) == 0
    db.dispose()


@pytest.mark.parametrize("url", [" http://127.0.0.1:9/x", "http://127.0.0.1:9/x\t", "http://h/a b"])
def test_a_webhook_url_with_whitespace_is_refused_everywhere(home, robmon, url) -> None:
    Path("robmon.toml").write_text(f'[alerts.webhook]\nurl = "{url}"\n')
    for command in (("config",), ("scheduler", "--once")):
        result = robmon(*command)
        assert result.code == 1
        assert result.stderr.strip() == (
            "error: robmon.toml: alerts.webhook.url must not contain spaces or control characters."
        )
