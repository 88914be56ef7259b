"""One hostile record never stops ingestion (issue 17, item 1): it becomes a dead letter with a
reason and the rest of its batch is committed; on a Redis Stream, an entry delivered more than
``max_deliveries`` times is dead-lettered and acknowledged (a poison pill)."""

import base64
import io
import os
import struct
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sqlalchemy import select

from monitor.db.models import DeadLetter, InputScore
from tests.ingest.lines import record, write_lines
from tests.stores import context_for

pytestmark = pytest.mark.timeout(300, method="thread")


def _recent(minutes: int = 5) -> str:
    """A record time relative to now (the tests also run under faketime)."""
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


def _npy_claiming_149_gib() -> str:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 200000, 200000), }"
    header += " " * (63 - (len(header) + 10) % 64) + "\n"
    data = b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + bytes(16)
    return base64.b64encode(data).decode()


def _bmp() -> str:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(buffer, format="BMP")
    return base64.b64encode(buffer.getvalue()).decode()


def _stored(db) -> tuple[list[str], dict[int, str]]:
    with db.session() as s:
        scored = sorted(s.scalars(select(InputScore.request_id)))
        dead = {d.line_number: d.reason for d in s.scalars(select(DeadLetter))}
    return scored, dead


def _senders(db) -> dict[int, str | None]:
    with db.session() as s:
        return {d.line_number: d.source for d in s.scalars(select(DeadLetter))}


def test_hostile_records_are_dead_lettered_and_their_batch_committed(
    demo_home, digits, robmon, tmp_path: Path
) -> None:
    settings, db, _ = context_for(demo_home)
    settings.input_root.mkdir(parents=True, exist_ok=True)
    os.mkfifo(settings.input_root / "pipe.png")
    good = [record(digits.x[i], rid=f"g{i}", ts=_recent()) for i in range(4)]
    hostile = [
        '{"ts": "'
        + _recent()
        + '", "source": "s", "model": "digits-cnn", "input": {"array": '
        + "[" * 200_000
        + "]" * 200_000
        + "}}",
        record(digits.x[0], ts="0001-01-01T00:00:00+05:00"),
        record(digits.x[0], ts="9999-12-31T23:59:59-05:00"),
        record(inp={"npy_b64": _npy_claiming_149_gib()}, ts=_recent()),
        record(inp={"png_b64": _bmp()}, ts=_recent()),
        record(inp={"path": "pipe.png"}, ts=_recent()),
    ]
    log = write_lines(
        tmp_path / "prod.jsonl", [good[0], *hostile[:3], good[1], *hostile[3:], *good[2:]]
    )

    result = robmon("ingest", str(log), "--json")  # one batch: all ten lines

    assert result.code == 0, result.stderr
    summary = result.json()
    assert (summary["records"], summary["scored"], summary["dead_letters"]) == (10, 4, 6)
    scored, dead = _stored(db)
    assert scored == ["g0", "g1", "g2", "g3"]
    assert sorted(dead) == [2, 3, 4, 6, 7, 8]
    assert "nested too deeply" in dead[2]
    assert "'0001-01-01T00:00:00+05:00' is out of range" in dead[3]
    assert "'9999-12-31T23:59:59-05:00' is out of range" in dead[4]
    assert "image of 200000×200000 pixels is over the limit of 4000000 pixels" in dead[6]
    assert dead[7] == "input.png_b64 holds BMP, not an accepted image format (PNG, JPEG)."
    assert dead[8] == (
        "input.path 'pipe.png' is a FIFO, not a regular file: only regular files are read."
    )
    assert all(reason.endswith(".") and "\n" not in reason for reason in dead.values())
    # a record refused after naming its sender keeps the sender with its dead letter
    assert _senders(db) == {
        2: None,
        3: "10.0.0.1",
        4: "10.0.0.1",
        6: "10.0.0.1",
        7: "10.0.0.1",
        8: "10.0.0.1",
    }
    db.dispose()


# -- Redis Stream -------------------------------------------------------------------------------


@pytest.fixture
def stream():
    """A fresh stream on the test Redis (ROBMON_TEST_REDIS_URL, default db 15), deleted after."""
    import redis

    url = os.environ.get("ROBMON_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    client = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as err:
        pytest.skip(f"no Redis at {url}: {err}")
    name = f"robmon-test-{uuid.uuid4().hex[:8]}"
    yield f"{url}/{name}", client, name
    client.delete(name)


def _publish(client, name: str, bodies: list[str]) -> list[str]:
    return [client.xadd(name, {"record": body}).decode() for body in bodies]


def _consumer(home, address: str, consumer: str, **options):
    from monitor.ingest.broker import StreamConsumer
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.redis_stream import StreamAddress

    settings, db, registry = context_for(home)
    ingester = Ingester(db, registry, settings)
    return StreamConsumer(ingester, StreamAddress.parse(address), "g", consumer, **options), db


def _dead_by_entry(db, name: str) -> dict[str, str]:
    with db.session() as s:
        return {
            d.entry_key.removeprefix(f"{name}:"): d.reason for d in s.scalars(select(DeadLetter))
        }


def test_a_bad_ts_among_good_entries_is_dead_lettered_not_a_poison_pill(
    demo_home, digits, stream
) -> None:
    address, client, name = stream
    bodies = [record(digits.x[i], rid=f"r{i}", ts=_recent()) for i in range(3)]
    bodies.insert(2, record(digits.x[5], rid="bad", ts="0001-01-01T00:00:00+05:00"))
    ids = _publish(client, name, bodies)
    consumer, db = _consumer(demo_home, address, "c1", retry_after=0.1)

    summary = consumer.run(threading.Event(), drain=True)

    assert (summary.records, summary.scored, summary.dead_letters) == (4, 3, 1)
    assert client.xpending(name, "g")["pending"] == 0
    scored, _ = _stored(db)
    assert scored == ["r0", "r1", "r2"]
    dead = _dead_by_entry(db, name)
    assert list(dead) == [ids[2]] and "is out of range" in dead[ids[2]]
    db.dispose()


def test_an_entry_delivered_too_often_is_dead_lettered_and_acknowledged(
    demo_home, digits, stream
) -> None:
    """Consumer "crashing" took four entries and kept failing on the first (delivered six times
    in all, never committed); restarted under the same name it reads its pending entries again:
    the first is set aside unscored, the other three are scored, all four acknowledged."""
    address, client, name = stream
    ids = _publish(client, name, [record(digits.x[i], rid=f"r{i}", ts=_recent()) for i in range(4)])
    client.xgroup_create(name, "g", id="0")
    client.xreadgroup("g", "crashing", {name: ">"}, count=4)
    for _ in range(5):  # re-reads its own pending entries from the start, one at a time
        client.xreadgroup("g", "crashing", {name: "0"}, count=1)
    consumer, db = _consumer(demo_home, address, "crashing", max_deliveries=5)

    summary = consumer.run(threading.Event(), drain=True)

    assert (summary.records, summary.scored, summary.dead_letters) == (4, 3, 1)
    assert client.xpending(name, "g")["pending"] == 0
    scored, _ = _stored(db)
    assert scored == ["r1", "r2", "r3"]
    assert _dead_by_entry(db, name) == {
        ids[0]: f"stream entry {ids[0]} was delivered 7 times without being committed "
        "(more than max_deliveries = 5): set aside as a poison pill."
    }
    db.dispose()


def test_max_deliveries_is_read_from_the_ingest_table(home, tmp_path: Path) -> None:
    from monitor.config import load_settings
    from monitor.errors import ConfigError
    from monitor.ingest.settings import IngestSettings

    config = tmp_path / "robmon.toml"
    config.write_text("[ingest]\nmax_deliveries = 3\n")
    assert IngestSettings.from_settings(load_settings()).max_deliveries == 3
    config.write_text("[ingest]\nmax_deliveries = 0\n")
    with pytest.raises(ConfigError, match=r"ingest\.max_deliveries must be a positive integer"):
        IngestSettings.from_settings(load_settings())


def test_retries_after_an_outage_are_not_counted_as_deliveries(demo_home, digits, stream) -> None:
    """While the database refuses the batch, the consumer retries many times; the entries stay
    at one delivery each (re-read with XRANGE), so none becomes a poison pill, and all are
    scored once the database takes them."""
    from sqlalchemy import text

    address, client, name = stream
    _publish(client, name, [record(digits.x[i], rid=f"r{i}", ts=_recent()) for i in range(4)])
    consumer, db = _consumer(demo_home, address, "c1", retry_after=0.02, max_deliveries=2)
    with db.session() as s:
        s.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON input_scores "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    try:
        deadline = time.monotonic() + 60
        while client.xpending(name, "g")["pending"] < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(1.0)  # many failed commits and retries, 0.02 s apart
        counts = [r["times_delivered"] for r in client.xpending_range(name, "g", "-", "+", 10)]
        assert counts == [1, 1, 1, 1] and consumer.ingester.summary.scored == 0
        with db.session() as s:
            s.execute(text("DROP TRIGGER refuse"))
        deadline = time.monotonic() + 60
        while client.xpending(name, "g")["pending"] and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        worker.join(timeout=30)
    assert client.xpending(name, "g")["pending"] == 0
    scored, dead = _stored(db)
    assert scored == ["r0", "r1", "r2", "r3"] and dead == {}
    db.dispose()
