"""kill -9 mid-file, restart: every line ends up scored or dead-lettered exactly once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import func, select

from monitor.db.models import DeadLetter, IngestOffset, InputScore
from tests.ingest.lines import record, write_lines


def _counts(db) -> tuple[int, int, int]:
    with db.session() as s:
        scores = s.scalar(select(func.count()).select_from(InputScore))
        origins = s.scalar(select(func.count(func.distinct(InputScore.request_id))))
        dead = s.scalar(select(func.count()).select_from(DeadLetter))
    return scores, origins, dead


def test_sigkill_mid_file_then_restart(demo_home, digits, tmp_path: Path) -> None:
    from monitor.config import load_settings
    from monitor.db.session import open_database

    n = 6000
    lines = []
    for i in range(n):
        if i % 500 == 7:
            lines.append('{"not json')  # a dead letter every 500 lines
        else:
            lines.append(record(digits.x[i % len(digits.x)], source=f"s{i % 40}", rid=f"r{i}"))
    log = write_lines(tmp_path / "big.jsonl", lines)
    db = open_database(load_settings())
    command = [sys.executable, "-m", "monitor", "ingest", str(log), "--batch-size", "25"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and _counts(db)[0] < 600:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)
    scored_at_kill = _counts(db)[0]
    assert 0 < scored_at_kill < n - 500, "the kill must land mid-file"

    restart = subprocess.run([*command, "--json"], capture_output=True, text=True, timeout=300)
    assert restart.returncode == 0, restart.stderr
    scores, origins, dead = _counts(db)
    assert dead == n // 500  # lines 7, 507, ... are bad
    assert scores == n - dead and origins == scores  # every line once, none twice
    with db.session() as s:
        offset = s.scalar(select(IngestOffset.offset))
    assert offset == log.stat().st_size
    db.dispose()
