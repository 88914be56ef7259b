"""The traffic generator itself: shapes, times, sharing between sources, attacker paces."""

from collections import Counter
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

from monitor.architectures import digits_cnn_wide
from monitor.datasets import load_dataset
from monitor.simulate import FULL_KINDS, parse_kind, simulate
from monitor.training import train_classifier


@pytest.fixture(scope="module")
def data():
    return load_dataset("digits", "all")


@pytest.fixture(scope="module")
def surrogate():
    train = load_dataset("digits", "train")
    torch.manual_seed(1)
    model = digits_cnn_wide()
    train_classifier(model, train.x, train.y, epochs=4, lr=3e-3, seed=1)
    return model.eval()


@pytest.fixture(scope="module")
def traffic(data, trained_cnn, surrogate):
    return simulate(data, trained_cnn, surrogate)


def _times(records, addresses) -> list[datetime]:
    return [datetime.fromisoformat(r["ts"]) for r in records if r["source"] in addresses]


def test_default_stream_is_demo_sized_sorted_and_ends_about_an_hour_ago(traffic) -> None:
    records = traffic.records
    assert 1500 <= len(records) <= 2500
    assert len({r["id"] for r in records}) == len(records)
    assert [r["ts"] for r in records] == sorted(r["ts"] for r in records)
    assert all(r["ts"].endswith("Z") and r["model"] == "digits-cnn" for r in records)
    now = datetime.now(UTC)
    first, last = (
        datetime.fromisoformat(records[0]["ts"]),
        datetime.fromisoformat(records[-1]["ts"]),
    )
    assert now - timedelta(hours=2, minutes=5) < first < last < now - timedelta(minutes=55)
    assert traffic.start.second == 0 and traffic.start.microsecond == 0
    pixels = np.array([r["input"]["array"] for r in records[:200]])
    assert pixels.shape == (200, 8, 8) and pixels.min() >= 0 and pixels.max() <= 1
    assert np.abs(pixels * 255 - np.round(pixels * 255)).max() < 0.02  # the 8-bit grid


def test_benign_sources_share_popular_pictures_and_vary_in_volume(traffic) -> None:
    benign = [s for s in traffic.sources if not s.attacker]
    assert len(benign) == 30 and {s.kind for s in benign} >= {"benign-clean", "benign-blur"}
    senders: dict[int, set[str]] = {}
    for source in benign:
        for origin in source.origins:
            senders.setdefault(origin, set()).add(source.name)
    assert max(len(names) for names in senders.values()) >= 10
    assert sum(len(set(s.origins)) < len(s.origins) for s in benign) >= 10  # sent twice
    volumes = sorted(len(s.images) for s in benign)
    assert volumes[0] <= 8 and volumes[-1] >= 100
    popular = max(senders, key=lambda o: len(senders[o]))
    sends = [i for s in benign for i, o in zip(s.images, s.origins, strict=True) if o == popular]
    assert len({tuple(i.flatten().tolist()) for i in sends}) > 0.9 * len(sends)  # re-encoded


def test_attackers_have_their_addresses_and_paces(traffic, data, trained_cnn) -> None:
    attackers = traffic.attacker_addresses()
    assert Counter(attackers.values())["query-distributed"] == 10
    assert not set(attackers) & traffic.benign_addresses()
    by_kind = {s.kind: s for s in traffic.sources if s.attacker}
    burst = _times(traffic.records, by_kind["fgsm-burst"].addresses)
    assert len(burst) == 45 and burst[-1] - burst[0] < timedelta(minutes=4)
    slow = np.diff([t.timestamp() for t in _times(traffic.records, ["10.66.0.2"])])
    assert by_kind["pgd-slow40s"].addresses == ["10.66.0.2"] and 25 < np.median(slow) < 55
    mixed = by_kind["mixed-20"]
    with torch.no_grad():
        wrong = trained_cnn(torch.stack(mixed.images)).argmax(1) != torch.tensor(mixed.labels)
    assert 0.1 <= float(wrong.float().mean()) <= 0.3


def test_square_queries_are_near_duplicates_of_their_seed(traffic, data) -> None:
    source = next(s for s in traffic.sources if s.kind == "query-square")
    queries, origins = torch.stack(source.images), torch.tensor(source.origins)
    assert float((queries - data.x[origins]).abs().max()) <= 0.2 + 1e-6
    same = origins[1:] == origins[:-1]
    changed = ((queries[1:] - queries[:-1]).abs() > 1e-6).flatten(1).sum(1)[same]
    assert float(changed.float().median()) <= 16


def test_fixed_seed_and_start_give_the_same_stream(data, trained_cnn, surrogate) -> None:
    start = datetime.now(UTC).replace(second=0, microsecond=0)
    options = {"benign": 4, "per_source": 9, "attackers": ["pgd-slow5m", "mixed-10"]}
    a = simulate(data, trained_cnn, surrogate, start=start, **options)
    b = simulate(data, trained_cnn, surrogate, start=start, **options)
    c = simulate(data, trained_cnn, surrogate, start=start, seed=1, **options)
    assert a.lines() == b.lines() and a.lines() != c.lines()
    assert a.records[0]["ts"] >= start.isoformat().replace("+00:00", "")
    slow = np.diff([t.timestamp() for t in _times(a.records, ["10.66.0.1"])])
    assert 200 < np.median(slow) < 400 and a.end - a.start > timedelta(minutes=30)


def test_kinds_parse_and_unknown_ones_are_refused() -> None:
    assert len(FULL_KINDS) == 24
    assert parse_kind("mixed-10") == ("mixed-10", "steady")
    assert parse_kind("mixed-10-burst") == ("mixed-10", "burst")
    assert parse_kind("query-distributed-slow5m") == ("query-distributed", "slow5m")
    with pytest.raises(ValueError, match="unknown attacker kind"):
        parse_kind("cw-burst")
