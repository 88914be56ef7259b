"""Ingesters on a Redis Stream consumer group, against real PostgreSQL, Redis and an MLflow
server: every entry is scored (or dead-lettered) exactly once, across SIGKILL and across an
entry committed but not acknowledged."""

from __future__ import annotations

import signal
import threading

import pytest
from sqlalchemy import func, select

from monitor.db.models import DeadLetter, InputScore
from tests.deploy.conftest import robmon_process, wait_for
from tests.ingest.lines import record

pytestmark = pytest.mark.timeout(300)


def publish(stream: str, model: str, n: int, bad_every: int = 50) -> list[str]:
    """n records from the digits test split; every ``bad_every``-th one is not JSON."""
    import redis

    from monitor.datasets import load_dataset
    from monitor.ingest.redis_stream import StreamAddress

    test = load_dataset("digits", "test")
    address = StreamAddress.parse(stream)
    client = redis.Redis.from_url(address.url)
    ids = []
    pipe = client.pipeline(transaction=False)
    for i in range(n):
        if i % bad_every == bad_every - 1:
            body = '{"ts": "2026-11-24T19:00:00Z", "source": "x", broken'
        else:
            image = test.x[i % len(test.x)]
            body = record(image, source=f"10.0.{i % 7}.1", model=model, rid=f"r{i}")
        pipe.xadd(address.stream, {"record": body})
    ids = [i.decode() for i in pipe.execute()]
    return ids


def stored_keys(db_url: str) -> tuple[list[str], list[str]]:
    from monitor.config import load_settings
    from monitor.db.session import open_database

    db = open_database(load_settings())
    try:
        with db.session() as s:
            scored = list(s.scalars(select(InputScore.origin)))
            dead = list(s.scalars(select(DeadLetter.entry_key)))
    finally:
        db.dispose()
    return scored, dead


def test_client_send_publishes_a_record_the_ingester_scores(deployment, served_model, stream):
    from monitor.client import send
    from monitor.config import load_settings
    from monitor.datasets import load_dataset
    from monitor.db.session import open_database
    from monitor.ingest.broker import StreamConsumer
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.redis_stream import StreamAddress
    from monitor.registry import Registry

    image = load_dataset("digits", "test").x[0]
    entry = send({"source": "10.9.9.9", "model": served_model, "input": {"array": image}}, stream)
    send({"source": "10.9.9.9", "model": served_model, "input": {"array": image.numpy()}}, stream)
    with pytest.raises(ValueError, match="needs model"):
        send({"source": "10.9.9.9", "input": {"array": [[0.0]]}}, stream)

    settings = load_settings()
    db = open_database(settings)
    ingester = Ingester(db, Registry(settings), settings)
    consumer = StreamConsumer(ingester, StreamAddress.parse(stream), "g", "c1")
    summary = consumer.run(threading.Event(), drain=True)
    assert (summary.scored, summary.dead_letters) == (2, 0)
    with db.session() as s:
        origins = sorted(s.scalars(select(InputScore.origin)))
        sources = set(s.scalars(select(InputScore.source)))
    db.dispose()
    assert f"{StreamAddress.parse(stream).stream}:{entry}" in origins
    assert sources == {"10.9.9.9"}


def test_an_entry_committed_but_not_acknowledged_is_acknowledged_not_scored_twice(
    deployment, served_model, stream
):
    import redis

    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.ingest.broker import StreamConsumer
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.redis_stream import StreamAddress
    from monitor.registry import Registry

    publish(stream, served_model, 40, bad_every=10)
    address = StreamAddress.parse(stream)
    settings = load_settings()
    db = open_database(settings)
    registry = Registry(settings)
    # consumer "dead" reads the entries and commits them, then dies before XACK
    dead = StreamConsumer(Ingester(db, registry, settings), address, "g", "dead", claim_after=0.2)
    entries = dead._read(">", 100, None)
    assert len(entries) == 40
    dead.ingester.process(
        [line for line in _lines(address, entries)],
        None,
        [f"{address.stream}:{entry_id.decode()}" for entry_id, _ in entries],
    )
    client = redis.Redis.from_url(address.url)
    assert client.xpending(address.stream, "g")["pending"] == 40
    # another consumer claims them after the idle time: acknowledges, scores nothing again
    survivor = StreamConsumer(
        Ingester(db, registry, settings), address, "g", "survivor", claim_after=0.2
    )
    wait_for(lambda: _step(survivor, client), 30, "the survivor to acknowledge the entries")
    assert client.xpending(address.stream, "g")["pending"] == 0
    assert survivor.ingester.summary.scored == 0
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(InputScore)) == 36
        assert s.scalar(select(func.count()).select_from(DeadLetter)) == 4
    db.dispose()


def _step(consumer, client) -> bool:
    """One round of reading; True once nothing is pending."""
    entries, source = consumer._next_entries(False, block=False)
    if entries:
        assert source == "claimed"  # from the dead consumer
        consumer.handle(entries, redelivered=True)
    return client.xpending(consumer.address.stream, consumer.group)["pending"] == 0


def _lines(address, entries):
    from monitor.ingest.broker import _line

    return [_line(address.stream, entry_id.decode(), fields) for entry_id, fields in entries]


def test_two_ingesters_score_every_entry_once_even_when_one_is_killed(
    deployment, served_model, stream, tmp_path
):
    import redis

    from monitor.ingest.redis_stream import StreamAddress

    n = 3000
    ids = publish(stream, served_model, n)
    address = StreamAddress.parse(stream)
    args = ("ingest", "--redis-stream", stream, "--group", "g", "--claim-after", "3")
    first = robmon_process(
        deployment, *args, "--consumer", "a", "--batch-size", "64", log=tmp_path / "a.log"
    )
    second = robmon_process(
        deployment,
        *args,
        "--consumer",
        "b",
        "--batch-size",
        "64",
        "--drain",
        "--json",
        log=tmp_path / "b.log",
    )
    try:
        # kill the first ingester in the middle of its work
        wait_for(lambda: len(stored_keys("")[0]) > 600, 120, "600 scored entries")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        client = redis.Redis.from_url(address.url)
        left = {
            c["name"].decode(): c["pending"] for c in client.xinfo_consumers(address.stream, "g")
        }
        assert second.wait(timeout=240) == 0, (tmp_path / "b.log").read_text()[-3000:]
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.kill()
    scored, dead = stored_keys("")
    expected = {f"{address.stream}:{i}" for i in ids}
    assert len(scored) + len(dead) == n  # nothing twice ...
    assert set(scored) | set(dead) == expected  # ... and nothing lost
    assert len(dead) == n // 50
    assert client.xpending(address.stream, "g")["pending"] == 0
    consumers = {c["name"].decode(): c for c in client.xinfo_consumers(address.stream, "g")}
    assert set(consumers) == {"a", "b"}
    if left.get("a"):  # what the killed ingester held, b took over (a may die between batches)
        assert "claimed" in (tmp_path / "b.log").read_text()


def test_a_record_without_its_field_is_dead_lettered_with_what_it_had(
    deployment, served_model, stream
):
    import redis

    from monitor.ingest.redis_stream import StreamAddress

    address = StreamAddress.parse(stream)
    redis.Redis.from_url(address.url).xadd(address.stream, {"payload": "{}"})
    from tests.conftest import run_robmon

    result = run_robmon("ingest", "--redis-stream", stream, "--drain", "--json")
    assert result.code == 0, result.stderr
    assert result.json()["dead_letters"] == 1
    _, dead = stored_keys("")
    assert len(dead) == 1


def test_bad_stream_addresses_get_one_sentence(deployment, robmon):
    result = robmon("ingest", "--redis-stream", "redis://127.0.0.1:6379")
    assert result.code == 1
    assert "names no stream" in result.stderr
    result = robmon("ingest", "--redis-stream", "redis://127.0.0.1:1/records")
    assert result.code == 1
    assert result.stderr.startswith("error: cannot reach Redis at redis://127.0.0.1:1")
    result = robmon("ingest")
    assert result.code == 2


def test_a_failed_commit_leaves_the_entries_pending_and_they_are_scored_once_after_it(
    demo_home, digits, stream
):
    """The database refuses one batch's commit (SQLite trigger): the consumer pauses, reads its
    own pending entries again, and once the database accepts them every entry is stored once."""
    import redis
    from sqlalchemy import text

    from monitor.config import load_settings
    from monitor.db.session import open_database
    from monitor.ingest.broker import StreamConsumer
    from monitor.ingest.pipeline import Ingester
    from monitor.ingest.redis_stream import StreamAddress
    from monitor.registry import Registry

    address = StreamAddress.parse(stream)
    client = redis.Redis.from_url(address.url)
    for i in range(60):
        source = "boom" if i == 35 else f"10.1.0.{i % 5}"
        client.xadd(address.stream, {"record": record(digits.x[i], source=source, rid=f"r{i}")})
    settings = load_settings()
    db = open_database(settings)
    with db.session() as s:
        s.execute(
            text(
                "CREATE TRIGGER refuse BEFORE INSERT ON input_scores WHEN NEW.source = 'boom' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        )
    consumer = StreamConsumer(
        Ingester(db, Registry(settings), settings, batch_size=10),
        address,
        "g",
        "c",
        retry_after=0.5,
    )
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop, True))
    thread.start()
    try:
        # batches before the refused one are committed and acknowledged; it stays pending
        wait_for(lambda: client.xpending(address.stream, "g")["pending"] > 0, 60, "a refusal")
        with db.session() as s:
            assert s.scalar(select(func.count()).select_from(InputScore)) < 60
            s.execute(text("DROP TRIGGER refuse"))
        thread.join(timeout=20)  # well before --claim-after (60 s): its own entries, read again
        assert not thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=30)
    with db.session() as s:
        ids = sorted(s.scalars(select(InputScore.request_id)), key=lambda r: int(r[1:]))
    db.dispose()
    assert ids == [f"r{i}" for i in range(60)]  # each once, none lost
    assert client.xpending(address.stream, "g")["pending"] == 0
