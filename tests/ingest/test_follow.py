"""--follow: appends, rotation (rename + new file) and truncation (copytruncate)."""

import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from monitor.db.models import InputScore
from tests.ingest.lines import record


def _scored(db) -> int:
    with db.session() as s:
        return s.scalar(select(func.count()).select_from(InputScore))


def _wait_for(db, expected: int, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _scored(db) >= expected:
            break
        time.sleep(0.05)
    time.sleep(0.3)  # nothing more should arrive
    return _scored(db)


def _append(path: Path, lines: list[str], partial: str = "") -> None:
    with path.open("a") as handle:
        handle.write("".join(line + "\n" for line in lines) + partial)
        handle.flush()


@pytest.mark.thread_waits
def test_follow_survives_rotation_and_truncation(demo_home, digits, tmp_path: Path) -> None:
    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.ingest.pipeline import Ingester
    from monitor.registry import Registry

    settings = load_settings()
    db = open_database(settings)
    ingester = Ingester(db, Registry(settings), settings, batch_size=8)
    log = tmp_path / "app.jsonl"
    log.write_text("")
    stop = threading.Event()
    worker = threading.Thread(target=ingester.follow_files, args=([str(log)], stop, 0.05))
    worker.start()
    try:

        def make(start, count):
            return [record(digits.x[i], rid=f"r{i}") for i in range(start, start + count)]

        half = make(0, 10)[-1]
        _append(log, make(0, 9), partial=half[:20])  # a line still being written
        assert _wait_for(db, 9) == 9
        _append(log, [], partial=half[20:] + "\n")
        assert _wait_for(db, 10) == 10

        _append(log, make(10, 5))  # written just before rotation ...
        log.rename(tmp_path / "app.jsonl.1")  # ... then logrotate moves the file away
        _append(tmp_path / "app.jsonl.1", make(15, 3))  # a late write to the old file
        log.write_text("")
        _append(log, make(18, 4))
        assert _wait_for(db, 22) == 22

        log.write_text("")  # copytruncate: same file, emptied
        _append(log, make(22, 6))
        assert _wait_for(db, 28) == 28
    finally:
        stop.set()
        worker.join(timeout=30)
    with db.session() as s:
        ids = s.scalars(select(InputScore.request_id)).all()
    assert sorted(ids, key=lambda r: int(r[1:])) == [f"r{i}" for i in range(28)]
    db.dispose()
