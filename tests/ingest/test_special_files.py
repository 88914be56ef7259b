"""Special files (issue 17, item 8): a FIFO where a log file should be never blocks ingestion;
only regular files are read, and a refused file is a dead letter with its reason."""

import os
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from monitor.db.models import DeadLetter, InputScore
from tests.ingest.lines import record, write_lines
from tests.stores import context_for

pytestmark = pytest.mark.timeout(240, method="thread")


def _recent() -> str:
    return (datetime.now(UTC) - timedelta(minutes=5)).isoformat()


def _wait(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


def test_a_fifo_named_on_the_command_line_is_refused_at_once(home, robmon, tmp_path) -> None:
    fifo = tmp_path / "requests.jsonl"
    os.mkfifo(fifo)
    started = time.perf_counter()
    result = robmon("ingest", str(fifo))
    assert result.code == 1
    assert result.stderr.strip() == (
        f"error: {fifo} is a FIFO, not a regular file: only regular files are read."
    )
    assert time.perf_counter() - started < 30


@pytest.mark.thread_waits
def test_a_log_replaced_by_a_fifo_is_dead_lettered_and_following_goes_on(
    demo_home, digits, tmp_path: Path
) -> None:
    """The followed path is renamed away and a FIFO takes its place (nobody writes to it): the
    tailer refuses it with a dead letter instead of blocking in open(), and reads the regular
    file that replaces the FIFO later."""
    from monitor.ingest.pipeline import Ingester

    settings, db, registry = context_for(demo_home)
    ingester = Ingester(db, registry, settings, batch_size=8)
    log = write_lines(
        tmp_path / "app.jsonl", [record(digits.x[i], rid=f"r{i}", ts=_recent()) for i in range(3)]
    )
    stop = threading.Event()
    worker = threading.Thread(target=ingester.follow_files, args=([str(log)], stop, 0.05))
    worker.start()

    def scored() -> list[str]:
        with db.session() as s:
            return sorted(s.scalars(select(InputScore.request_id)))

    def dead() -> list[tuple[str, int | None, str]]:
        with db.session() as s:
            return [(d.origin, d.line_number, d.reason) for d in s.scalars(select(DeadLetter))]

    try:
        assert _wait(lambda: len(scored()) == 3)
        log.rename(tmp_path / "app.jsonl.1")
        os.mkfifo(tmp_path / "fifo")
        (tmp_path / "fifo").rename(log)
        assert _wait(lambda: len(dead()) == 1), "the FIFO was not refused"
        time.sleep(0.5)  # polled again meanwhile: refused once, not once per poll
        (tmp_path / "app.jsonl.2").write_text(record(digits.x[7], rid="r7", ts=_recent()) + "\n")
        (tmp_path / "app.jsonl.2").rename(log)
        assert _wait(lambda: "r7" in scored()), "the regular file after the FIFO was not read"
    finally:
        stop.set()
        worker.join(timeout=30)
        if worker.is_alive():  # blocked in open(): a writer releases it
            os.close(os.open(log, os.O_WRONLY | os.O_NONBLOCK))
            worker.join(timeout=30)
    assert not worker.is_alive()
    assert scored() == ["r0", "r1", "r2", "r7"]
    assert dead() == [
        (str(log), None, f"{log} is a FIFO, not a regular file: only regular files are read.")
    ]
    assert ingester.summary.dead_letters == 1
    db.dispose()
