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


@pytest.mark.thread_waits
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


@pytest.mark.thread_waits
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


@pytest.mark.thread_waits
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


# -- pentest 2026-11-29: one record's registry answer, NUL bytes, redelivered batches ----------


def test_a_registry_refusal_about_one_record_is_that_records_dead_letter(demo_home) -> None:
    """What MLflow answers about a record's model or version (a name it refuses, a number its
    store cannot hold) is a BadRecord; every spelling of a version resolves to its number."""
    from monitor.errors import BadRecord
    from monitor.ingest.models import ModelCache
    from monitor.registry import ModelVersionRef

    settings, db, registry = context_for(demo_home)
    cache = ModelCache(db, registry, settings)
    for model, version in (("a:b", None), ("digits-cnn", "999999999999999999999999")):
        with pytest.raises(BadRecord):
            cache.resolve(model, version)
    assert cache.resolve("digits-cnn", "01") == ModelVersionRef("digits-cnn", "1")
    assert cache.resolve("digits-cnn", "champion") == ModelVersionRef("digits-cnn", "1")
    db.dispose()


def test_a_model_name_mlflow_refuses_does_not_stop_the_file(
    demo_home, digits, robmon, tmp_path: Path
) -> None:
    lines = [
        record(digits.x[0], rid="g0", ts=_recent()),
        record(digits.x[1], rid="colon", ts=_recent(), model="a:b"),
        record(digits.x[2], rid="big", ts=_recent(), version="999999999999999999999999"),
        record(digits.x[3], rid="g3", ts=_recent()),
    ]
    result = robmon("ingest", str(write_lines(tmp_path / "p.jsonl", lines)), "--json")

    assert result.code == 0, result.stderr
    assert (result.json()["scored"], result.json()["dead_letters"]) == (2, 2)
    _, db, _ = context_for(demo_home)
    scored, dead = _stored(db)
    assert scored == ["g0", "g3"]
    assert "model 'a:b' is not a model name" in dead[2] and "out of range" in dead[3]
    assert _senders(db) == {2: "10.0.0.1", 3: "10.0.0.1"}  # traced to their sender
    db.dispose()


def test_nul_bytes_never_reach_a_dead_letter(
    demo_home, digits, db_url, monkeypatch, robmon, tmp_path: Path
) -> None:
    """PostgreSQL refuses NUL in text: a NUL in an invalid line, or in a refused source, must not
    make the dead letter's insert fail (which would stop the batch)."""
    monkeypatch.setenv("ROBMON_DB_URL", db_url)
    assert robmon("db", "upgrade").code == 0
    log = tmp_path / "nul.jsonl"
    log.write_bytes(
        record(digits.x[0], rid="g0", ts=_recent()).encode()
        + b'\n{"ts": \x00 broken\n'
        + record(digits.x[1], rid="nul", ts=_recent(), source="10.0.0.1\x00").encode()
        + b"\n"
        + record(digits.x[2], rid="g2", ts=_recent()).encode()
        + b"\n"
    )
    result = robmon("ingest", str(log), "--json")

    assert result.code == 0, result.stderr
    assert (result.json()["scored"], result.json()["dead_letters"]) == (2, 2)
    _, db, _ = context_for(demo_home)
    with db.session() as s:
        rows = s.scalars(select(DeadLetter).order_by(DeadLetter.line_number)).all()
        texts = [(d.reason, d.excerpt, d.source or "") for d in rows]
    assert [d.line_number for d in rows] == [2, 3]
    assert all("\x00" not in t for row in texts for t in row)
    assert texts[0][1] == '{"ts": \ufffd broken'
    assert "source holds a control character (U+0000)" in texts[1][0]
    db.dispose()


def _crashing_consumer(home, address: str, **options):
    """A consumer whose commit of any score from source "pill" fails the way a crash does (an
    error no retry handles: the process stops, its entries stay pending)."""
    from monitor.ingest.broker import StreamConsumer
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.redis_stream import StreamAddress

    def crash(_session, scores, _ids) -> None:
        if "pill" in scores.column("source"):
            raise SystemError("the pill crashed the consumer")

    settings, db, registry = context_for(home)
    ingester = Ingester(db, registry, settings, on_commit=crash)
    return StreamConsumer(ingester, StreamAddress.parse(address), "g", "c1", **options), db


@pytest.mark.thread_waits
def test_a_poison_pill_takes_only_itself_down(demo_home, digits, stream) -> None:
    """The pill crashes its consumer on every try; after each restart, the entries pending beside
    it are delivered one at a time, so they are scored and the pill alone reaches max_deliveries."""
    address, client, name = stream
    bodies = [record(digits.x[i], rid=f"r{i}", ts=_recent()) for i in range(4)]
    bodies[1] = record(digits.x[1], rid="p", ts=_recent(), source="pill")
    ids = _publish(client, name, bodies)

    crashes = 0
    for _ in range(6):  # a supervisor restarting the consumer under the same name
        consumer, db = _crashing_consumer(demo_home, address, max_deliveries=2, retry_after=0.05)
        try:
            consumer.run(threading.Event(), drain=True)
            break
        except SystemError:
            crashes += 1
        finally:
            db.dispose()

    assert crashes == 2 and client.xpending(name, "g")["pending"] == 0
    _, db, _ = context_for(demo_home)
    scored, _ = _stored(db)
    assert scored == ["r0", "r2", "r3"]
    dead = _dead_by_entry(db, name)
    assert list(dead) == [ids[1]] and "poison pill" in dead[ids[1]]
    db.dispose()


def _publish_pentest_entries(client, name: str, digits) -> list[str]:
    """The penetration test's six entries: good, not JSON, no record field, not UTF-8, a model
    name MLflow refuses, good. Their stream ids."""
    return [
        client.xadd(name, fields).decode()
        for fields in (
            {"record": record(digits.x[0], rid="r0", ts=_recent())},
            {"record": "{not json"},
            {"other": "no record field"},
            {"record": b"\xff\xfe"},
            {"record": record(digits.x[1], rid="r1", ts=_recent(), model="a:b")},
            {"record": record(digits.x[2], rid="r2", ts=_recent())},
        )
    ]


@pytest.mark.thread_waits
def test_redelivered_entries_keep_their_own_reasons(demo_home, digits, stream) -> None:
    """The pentest's six entries, delivered six times without a commit: the malformed ones keep
    their own reasons, only the well-formed ones are set aside as poison pills."""
    address, client, name = stream
    ids = _publish_pentest_entries(client, name, digits)
    client.xgroup_create(name, "g", id="0")
    for _ in range(6):
        client.xreadgroup("g", "c1", {name: "0" if _ else ">"}, count=6)
    consumer, db = _consumer(demo_home, address, "c1", max_deliveries=5)

    summary = consumer.run(threading.Event(), drain=True)

    assert (summary.records, summary.scored, summary.dead_letters) == (6, 0, 6)
    dead = _dead_by_entry(db, name)
    assert "poison pill" in dead[ids[0]] and "poison pill" in dead[ids[5]]
    assert "not valid JSON" in dead[ids[1]]
    assert dead[ids[2]] == "stream entry has no 'record' field (its fields: 'other')."
    assert "poison pill" not in dead[ids[3]]
    assert "model 'a:b' is not a model name" in dead[ids[4]]
    db.dispose()


@pytest.mark.thread_waits
def test_the_pentest_stream_drains(demo_home, digits, stream) -> None:
    """Good entries, malformed ones and a model name MLflow refuses: --drain scores the good
    ones, dead-letters the rest for their own reasons, and returns."""
    address, client, name = stream
    ids = _publish_pentest_entries(client, name, digits)
    consumer, db = _consumer(demo_home, address, "c1", retry_after=0.05)
    done = threading.Event()
    worker = threading.Thread(target=lambda: (consumer.run(done, drain=True), done.set()))
    worker.start()
    finished = done.wait(60)
    done.set()
    worker.join(timeout=30)

    assert finished, "--drain did not return"
    scored, _ = _stored(db)
    assert scored == ["r0", "r2"]
    dead = _dead_by_entry(db, name)
    assert sorted(dead) == sorted(ids[1:5])
    assert not any("poison pill" in reason for reason in dead.values())
    db.dispose()


@pytest.mark.thread_waits
def test_drain_gives_up_on_an_error_that_repeats(demo_home, digits, stream) -> None:
    """With --drain, a commit that keeps failing ends the run with one sentence after a bounded
    number of attempts; the entries stay pending, not counted as deliveries."""
    from sqlalchemy import text

    from monitor.errors import RobmonError

    address, client, name = stream
    _publish(client, name, [record(digits.x[i], rid=f"r{i}", ts=_recent()) for i in range(3)])
    consumer, db = _consumer(demo_home, address, "c1", retry_after=0.02)
    with db.session() as s:
        s.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON input_scores "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    outcome: list[BaseException] = []
    stop = threading.Event()

    def run() -> None:
        try:
            consumer.run(stop, drain=True)
        except RobmonError as err:
            outcome.append(err)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join(timeout=60)
    stop.set()
    worker.join(timeout=30)

    assert len(outcome) == 1, "--drain did not give up"
    message = str(outcome[0])
    assert message.startswith("stream ingest stopped after 3 failed attempts in a row")
    assert "refused by the test" in message and "\n" not in message
    counts = [r["times_delivered"] for r in client.xpending_range(name, "g", "-", "+", 10)]
    assert counts == [1, 1, 1]
    db.dispose()


@pytest.mark.thread_waits
def test_an_entry_whose_field_names_are_not_utf8_is_dead_lettered_not_fatal(
    demo_home, digits, stream
) -> None:
    """Pentest 17, F1: a field NAME that is not UTF-8 crashed every run before any entry of its
    batch was scored; now it is a dead letter of its own, and the entries beside it are scored."""
    address, client, name = stream
    ids = [
        client.xadd(name, fields).decode()
        for fields in (
            {b"\xff": b"x"},
            {"record": record(digits.x[0], rid="r0", ts=_recent())},
            {"other": "x"},
            {b"\xfe\xff": b"y", "record": record(digits.x[1], rid="r1", ts=_recent())},
        )
    ]
    consumer, db = _consumer(demo_home, address, "c1", retry_after=0.05)

    summary = consumer.run(threading.Event(), drain=True)

    assert (summary.records, summary.scored, summary.dead_letters) == (4, 2, 2)
    assert client.xpending(name, "g")["pending"] == 0
    scored, _ = _stored(db)
    assert scored == ["r0", "r1"]
    dead = _dead_by_entry(db, name)
    assert dead == {
        ids[0]: "stream entry has no 'record' field (its field names are not UTF-8).",
        ids[2]: "stream entry has no 'record' field (its fields: 'other').",
    }
    with db.session() as s:
        excerpts = {d.entry_key: d.excerpt for d in s.scalars(select(DeadLetter))}
    assert excerpts[f"{name}:{ids[0]}"] == "{b'\\xff': b'x'}"
    db.dispose()
