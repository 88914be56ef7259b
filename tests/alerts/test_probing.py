"""Probing on 28×28 digits: small probes caught within one source, popular content never grouped,
and the match threshold calibrated under exactly the rule the matcher applies."""

import json
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import torch

from monitor.alerts.evaluate import Evaluator
from monitor.alerts.queries import get_alert, list_alerts
from monitor.alerts.settings import AlertSettings
from monitor.datasets import load_dataset
from monitor.ingest.pipeline import Ingester
from monitor.ingest.sources import RawLine
from tests.conftest import ENV_KEYS, copy_store
from tests.stores import context_for

START = (datetime.now(UTC) - timedelta(hours=6)).replace(microsecond=0)


@pytest.fixture
def store28(digits28_store, tmp_path, monkeypatch):
    home = copy_store(digits28_store, tmp_path / ".robmon")
    for key in ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("ROBMON_HOME", str(home))
    monkeypatch.chdir(tmp_path)
    return context_for(home)


def _record(image: torch.Tensor, source: str, k: int, seconds: float) -> str:
    ts = (START + timedelta(seconds=seconds)).isoformat().replace("+00:00", "Z")
    pixels = (image.clamp(0, 1) * 255).round() / 255
    return json.dumps(
        {
            "id": f"{source}-{k}",
            "ts": ts,
            "source": source,
            "model": "digits28-cnn",
            "version": "1",
            "input": {"array": pixels.squeeze(0).tolist()},
        }
    )


def _ingest_and_evaluate(context, lines: list[str]):
    settings, db, registry = context
    Ingester(db, registry, settings).process(
        [RawLine("t", i + 1, 0, 0, line.encode(), len(line)) for i, line in enumerate(lines)],
        None,
    )
    Evaluator(db, AlertSettings.from_settings(settings), "test").evaluate()
    incidents = {}
    for incident in list_alerts(db, limit=1000):
        detail = get_alert(db, incident.id)
        for source in detail.evidence["sources"]:
            incidents[source] = set(incident.rules)
    return incidents


def _probes(seed: torch.Tensor, step: float, n: int, rng: np.random.Generator) -> list:
    """A pixel search's queries: one pixel moved by ±step from the current image each time,
    every third move kept."""
    current, queries = seed.clone(), []
    for k in range(n):
        candidate = current.clone().view(-1)
        index = int(rng.integers(candidate.numel()))
        candidate[index] = (candidate[index] + step * rng.choice([-1, 1])).clamp(0, 1)
        candidate = candidate.view_as(seed)
        queries.append(candidate)
        if k % 3 == 0:
            current = candidate
    return queries


@pytest.mark.parametrize("step", [0.01, 0.02])
def test_small_probes_from_one_source_are_caught(store28, step) -> None:
    data = load_dataset("digits28")
    rng = np.random.default_rng(0)
    lines = []
    for source in range(12):  # benign sources, distinct pictures
        for k in range(15):
            image = data.x[source * 15 + k]
            lines.append(_record(image, f"10.0.0.{source}", k, 60 * (k + source / 12)))
    queries = _probes(data.x[400], step, 30, rng)
    lines += [_record(q, "10.66.0.9", k, 600 + 20 * k) for k, q in enumerate(queries)]
    lines.sort(key=lambda line: json.loads(line)["ts"])
    incidents = _ingest_and_evaluate(store28, lines)
    assert "probing" in incidents.get("10.66.0.9", set())
    assert set(incidents) == {"10.66.0.9"}


def test_popular_pictures_shared_by_many_sources_form_no_group(store28) -> None:
    """40 sources send pictures from a pool of 8 (each picture re-lit slightly at every send,
    one to three times per source, between their own other pictures): many near-duplicates
    across sources, no query attack."""
    data = load_dataset("digits28", "all")
    rng = np.random.default_rng(1)
    pool = data.x[500:508]
    lines = []
    for source in range(40):
        own = data.x[600 + source * 10 : 600 + source * 10 + 10]
        sends = list(own)
        for _ in range(int(rng.integers(1, 4))):
            picture = pool[int(rng.integers(len(pool)))]
            sends.insert(int(rng.integers(len(sends))), picture + float(rng.uniform(-0.03, 0.03)))
        for k, image in enumerate(sends):
            lines.append(_record(image, f"10.0.1.{source}", k, 90 * k + source))
    lines.sort(key=lambda line: json.loads(line)["ts"])
    incidents = _ingest_and_evaluate(store28, lines)
    assert not any(rules & {"probing", "probing-distributed"} for rules in incidents.values())


def test_match_threshold_is_calibrated_on_the_fingerprints_the_matcher_compares(store28) -> None:
    from monitor.calibrate import current_calibration
    from monitor.detect.fingerprints import fingerprints, shared

    _, db, _ = store28
    calibration = current_calibration(db, "digits28-cnn", "1")
    stop = np.array(calibration.baseline["stop_hashes"], dtype=np.uint64)
    assert len(stop) > 0  # 28×28 digits have uninformative (background) hashes
    min_shared = calibration.baseline["min_shared"]
    x = load_dataset("digits28").x[:300]
    prints = fingerprints(x, stop=stop)
    assert all(not np.isin(p, stop).any() for p in prints)  # stop hashes never stored
    unrelated = [shared(prints[i], prints[j]) for i in range(100) for j in range(i + 1, 100)]
    assert np.quantile(unrelated, 0.999) < min_shared
    probe = _probes(x[0], 0.02, 5, np.random.default_rng(2))
    close = [shared(prints[0], p) for p in fingerprints(torch.stack(probe), stop=stop)]
    assert min(close) >= min_shared
