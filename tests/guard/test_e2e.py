"""The inline guard end to end, with a real client: the demo CNN wrapped by ``robmon guard
wrap``, served by a real ``mlflow models serve`` process on 127.0.0.1, requests over HTTP from
benign sources and an attacker, the published records ingested, alerts evaluated and triaged.

What it shows (issue 20, item 3): clean requests are allowed; adversarial inputs are refused or
sent to review exactly as the policy says of the flags the monitor itself stores for them; once
an incident is open for the attacker, its next requests are refused (clean ones too) while
benign sources stay allowed; after the incident is marked a false positive they are allowed
again; and every request's verdict is recorded with its score.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from monitor.attacks import pgd
from monitor.datasets import load_dataset
from tests.conftest import ENV_KEYS, copy_store, run_robmon
from tests.serving import serve_model, serving_env

CACHE_SECONDS = 0.5  # the guard's incident-state cache in this test ([guard] cache_seconds)
BENIGN = ("10.0.0.1", "10.0.0.2", "10.0.0.3")
ATTACKER = "203.0.113.7"


@dataclass
class Deployment:
    home: Path
    url: str
    published: Path
    parent: str  # models:/digits-cnn/1
    guarded: str


@pytest.fixture(scope="module")
def deployment(demo_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("guard-e2e")
    home = copy_store(demo_store, root / ".robmon")
    published = root / "guarded.jsonl"
    config = root / "robmon.toml"
    config.write_text(f'[guard]\ncache_seconds = {CACHE_SECONDS}\npublish = "{published}"\n')
    with pytest.MonkeyPatch.context() as mp:
        for key in ENV_KEYS:
            mp.delenv(key, raising=False)
        mp.chdir(root)
        mp.setenv("ROBMON_HOME", str(home))
        mp.setenv("ROBMON_CONFIG", str(config))
        wrapped = run_robmon("guard", "wrap", "models:/digits-cnn/1", "--json")
        assert wrapped.code == 0, wrapped.stderr
        info = wrapped.json()
        assert info["policy"]["publish"] == str(published)
        env = serving_env(
            ROBMON_HOME=str(home),
            MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}",
            OMP_NUM_THREADS="1",
        )
        with serve_model(info["guarded"], env, root / "serve.log") as (url, _):
            yield Deployment(home, url, published, info["parent"], info["guarded"])


def send(url: str, rows: list[dict]) -> list[dict]:
    body = json.dumps({"dataframe_records": rows}).encode()
    request = urllib.request.Request(
        f"{url}/invocations", body, {"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())["predictions"]


def rows(source: str, images: torch.Tensor, prefix: str) -> list[dict]:
    return [
        {"source": source, "id": f"{prefix}-{i}", "array": image.tolist()}
        for i, image in enumerate(images)
    ]


def robmon(*args: str):
    result = run_robmon(*args)
    assert result.code == 0, result.stderr
    return result


def stored_scores(home: Path) -> dict[tuple[str, str], dict]:
    """(source, request id) -> the stored score row, from robmon's database."""
    from sqlalchemy import select

    from monitor.config import load_settings
    from monitor.db.models import InputScore
    from monitor.db.session import open_database

    db = open_database(load_settings({"ROBMON_HOME": str(home)}))
    try:
        with db.session() as s:
            return {
                (r.source, r.request_id): {
                    "verdict": r.guard_verdict,
                    "reason": r.guard_reason,
                    "combined": r.combined_suspicious,
                    "strong": r.strong_suspicious,
                    "predicted": r.predicted,
                }
                for r in s.scalars(select(InputScore)).all()
            }
    finally:
        db.dispose()


def wait_for_lines(path: Path, count: int, timeout: float = 30.0) -> None:
    """The publisher writes on a thread of the server: wait until ``count`` lines landed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= count:
            return
        time.sleep(0.1)
    raise AssertionError(f"{path} holds fewer than {count} published records")


def test_verdicts_follow_policy_incidents_and_triage(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ROBMON_HOME", str(deployment.home))
    monkeypatch.setenv("ROBMON_CONFIG", str(deployment.published.parent / "robmon.toml"))
    url, sent = deployment.url, 0
    test = load_dataset("digits", "test")
    clean, labels = test.x[:240], test.y[:240]

    # 1. benign sources send clean digits; the attacker sends PGD examples (eps 0.3, stopped
    #    once misclassified, as an attacker who wants to stay close to the image does)
    answers: dict[tuple[str, str], dict] = {}
    for k, source in enumerate(BENIGN):
        for a in send(url, rows(source, clean[k * 40 : (k + 1) * 40], "clean")):
            answers[(a["source"], a["request_id"])] = a
    from monitor.config import load_settings
    from monitor.registry import Registry

    registry = Registry(load_settings())
    parent = registry.load_torch(registry.resolve(deployment.parent))
    adversarial = pgd(parent.module, clean[120:200], labels[120:200], 0.3, seed=0)
    for a in send(url, rows(ATTACKER, adversarial, "adv")):
        answers[(a["source"], a["request_id"])] = a
    sent = len(answers)
    assert sent == 200

    benign = Counter(a["verdict"] for a in answers.values() if a["source"] != ATTACKER)
    attacked = Counter(a["verdict"] for a in answers.values() if a["source"] == ATTACKER)
    assert benign["allow"] >= 0.9 * 120 and benign["refuse"] <= 1, benign
    flagged_share = (attacked["review"] + attacked["refuse"]) / 80
    benign_share = (benign["review"] + benign["refuse"]) / 120
    assert flagged_share >= 0.5 and flagged_share >= 4 * benign_share, (attacked, benign)
    for a in answers.values():  # refused rows carry no prediction nor confidence; others do
        assert (a["prediction"] is None) == (a["verdict"] == "refuse"), a
        assert (a["confidence"] is None) == (a["verdict"] == "refuse"), a
        assert a["request_id"].startswith(a["id"] + "~")  # the client's id, made unique

    # 2. the monitor sees every request: its own flags agree with the guard's verdicts
    wait_for_lines(deployment.published, sent)
    robmon("ingest", str(deployment.published))
    stored = stored_scores(deployment.home)
    assert set(answers) <= set(stored)
    for key, a in answers.items():
        row = stored[key]
        assert row["verdict"] == a["verdict"], (key, row, a)
        expected = "refuse" if row["strong"] else "review" if row["combined"] else "allow"
        # the default policy: the strong tier refuses, the combined detector sends to review
        assert a["verdict"] == expected, (key, row, a)
        if a["verdict"] != "refuse":
            assert row["predicted"] == a["prediction"]

    # 3. the alert rules open an incident for the attacker (and for no benign source)
    robmon("alerts", "evaluate")
    incidents = robmon("alerts", "list", "--status", "active", "--json").json()
    mine = [i for i in incidents if i["source"] == ATTACKER]
    assert mine and not [i for i in incidents if i["source"] in BENIGN], incidents
    incident = mine[0]
    assert incident["severity"] in ("high", "critical"), incident
    time.sleep(CACHE_SECONDS * 2)

    # 4. the attacker's next requests are refused, clean ones included; benign ones are not
    after = send(url, rows(ATTACKER, clean[200:210], "after-incident"))
    assert [a["verdict"] for a in after] == ["refuse"] * 10
    assert all(f"incident {incident['id']}" in a["reason"] for a in after)
    assert all(a["prediction"] is None for a in after)
    still = send(url, rows(BENIGN[0], clean[200:210], "benign-during-incident"))
    assert Counter(a["verdict"] for a in still)["refuse"] == 0

    # 5. marked a false positive, the source is answered again
    robmon("alerts", "false-positive", str(incident["id"]), "--by", "alice", "--note", "load test")
    time.sleep(CACHE_SECONDS * 2)
    back = send(url, rows(ATTACKER, clean[210:220], "after-false-positive"))
    assert Counter(a["verdict"] for a in back)["refuse"] == 0, back
    right = sum(a["prediction"] == int(y) for a, y in zip(back, labels[210:220], strict=True))
    assert right >= 8  # answered by the model again

    # 6. a triager's order beats the policy: on refuse, then cleared
    robmon("guard", "refuse", BENIGN[1], "--by", "bob", "--note", "scraping")
    time.sleep(CACHE_SECONDS * 2)
    ordered = send(url, rows(BENIGN[1], clean[220:225], "ordered"))
    assert [a["verdict"] for a in ordered] == ["refuse"] * 5
    assert all("source on refuse by bob (scraping)" in a["reason"] for a in ordered)
    robmon("guard", "clear", BENIGN[1], "--by", "bob")
    time.sleep(CACHE_SECONDS * 2)
    cleared = send(url, rows(BENIGN[1], clean[225:230], "cleared"))
    assert Counter(a["verdict"] for a in cleared)["refuse"] == 0

    # 7. a client that repeats one id is still seen whole (its requests are not "duplicates")
    repeated = [dict(row, id="same") for row in rows(BENIGN[2], clean[230:236], "x")]
    again = send(url, repeated)
    assert [a["id"] for a in again] == ["same"] * 6 and len({a["request_id"] for a in again}) == 6

    # 8. a bare tensor (no rows, no source) is refused row by row, not a server error
    bare = urllib.request.Request(
        f"{url}/invocations",
        json.dumps({"inputs": clean[236:238].tolist()}).encode(),
        {"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(bare, timeout=60) as response:
        refused = json.loads(response.read())["predictions"]
    assert [a["verdict"] for a in refused] == ["refuse", "refuse"]
    assert all("missing field: source" in a["reason"] for a in refused)

    # 9. every verdict recorded: each scored request's row holds the verdict it was answered;
    #    the two without a source are dead letters (nothing lost)
    total = sent + 10 + 10 + 10 + 5 + 5 + 6
    wait_for_lines(deployment.published, total + 2)
    robmon("ingest", str(deployment.published))
    stored = stored_scores(deployment.home)
    for batch in (after, still, back, ordered, cleared, again):
        for a in batch:
            assert stored[(a["source"], a["request_id"])]["verdict"] == a["verdict"]
    guarded_rows = [r for r in stored.values() if r["verdict"] is not None]
    assert len(guarded_rows) == total
    letters = robmon("dead-letters", "list", "--json").json()["dead_letters"]
    assert sum("missing field(s): source" in d["reason"] for d in letters) == 2
