"""`robmon audit` and `robmon audits list|show` as a user runs them."""

import json
from pathlib import Path

DOCUMENTED_KEYS = {
    "audit_id",
    "model",
    "dataset",
    "clean_accuracy",
    "results",
    "score",
    "checks",
    "status",
}
RESULT_KEYS = {
    "attack",
    "norm",
    "eps",
    "steps",
    "robust_accuracy",
    "attack_success_rate",
    "n",
    "seconds",
}


def test_audit_json_has_the_documented_shape(demo_home, robmon) -> None:
    result = robmon("audit", "digits-cnn", "--eps", "0.05,0.1", "--limit", "120", "--json")
    assert result.code == 0, result.stderr
    data = result.json()
    assert set(data) >= DOCUMENTED_KEYS
    assert data["model"] == {"name": "digits-cnn", "version": "1"}
    assert data["dataset"] == "digits"  # from the version's robustness.dataset tag
    assert data["status"] == "succeeded" and data["reused"] is False
    assert len(data["results"]) == 4
    for row in data["results"]:
        assert set(row) >= RESULT_KEYS
        assert 0 <= row["robust_accuracy"] <= data["clean_accuracy"]
    assert {c["status"] for c in data["checks"]} <= {"passed", "warning", "skipped"}

    again = robmon("audit", "digits-cnn", "--eps", "0.1,0.05", "--limit", "120", "--json")
    assert again.json()["reused"] is True and again.json()["audit_id"] == data["audit_id"]

    listing = robmon("audits", "list", "--json").json()
    assert [a["id"] for a in listing] == [data["audit_id"]]
    shown = robmon("audits", "show", str(data["audit_id"]), "--json").json()
    assert shown["results"] == data["results"]


def test_audits_show_saves_plots_and_renders_tables(demo_home, robmon, tmp_path: Path):
    robmon("audit", "digits-logreg", "--eps", "0.1", "--limit", "60", "--json")
    result = robmon("audits", "show", "1", "--save-artifacts", str(tmp_path / "out"))
    assert result.code == 0, result.stderr
    assert "transfer from digits-cnn/2" in result.stdout
    assert "transfer_stronger_than_whitebox" in result.stdout
    assert (tmp_path / "out" / "robust_accuracy.png").read_bytes()[:4] == b"\x89PNG"


def test_audit_errors_are_one_sentence(demo_home, robmon) -> None:
    cases = {
        ("audit", "nope"): "no-such",
        ("audit", "digits-cnn", "--attack", "cw"): "unknown attack 'cw'",
        ("audit", "digits-cnn", "--eps", "0.1,abc"): "--eps takes numbers",
        ("audit", "digits-cnn", "--dataset", "missing.npz"): "neither a built-in",
        ("audit", "digits-cnn", "--device", "cuda"): "CUDA is not available",
        ("audits", "show", "999"): "there is no audit 999",
    }
    for args, needle in cases.items():
        result = robmon(*args)
        assert result.code == 1, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, result.stderr)
        if needle != "no-such":
            assert needle in lines[0], (args, lines)
    # bad options stop before anything is recorded
    assert robmon("audits", "list", "--json").json() == []


def test_failed_audit_is_listed_with_its_error(demo_home, robmon) -> None:
    result = robmon("audit", "digits-cnn", "--dataset", "digits28", "--limit", "10")
    assert result.code == 1
    assert "failed: digits-cnn/1 takes inputs shaped 1×8×8" in result.stderr
    [row] = robmon("audits", "list", "--status", "failed", "--json").json()
    assert row["error"].startswith("digits-cnn/1 takes inputs shaped")
    assert json.dumps(row)
