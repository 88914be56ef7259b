"""The release gate against a real MLflow store with the demo models (exit 0 / 1 / 2)."""

from pathlib import Path

import pytest
import torch

from monitor.architectures import InputRounding, digits_cnn

AUDIT = """
[audit]
dataset = "digits"
attacks = ["fgsm", "pgd"]
eps = [0.05, 0.1, 0.2]
limit = 150
"""


def policy(tmp_path: Path, criteria: str = "", baseline: str = "", name: str = "p.toml") -> str:
    path = tmp_path / name
    path.write_text(AUDIT + "\n[criteria]\n" + criteria + "\n[baseline]\n" + baseline)
    return str(path)


def gate(robmon, model: str, path: str, *extra: str):
    return robmon("gate", model, "--policy", path, "--audit-if-missing", "--json", *extra)


def test_a_robust_enough_version_passes_and_is_recorded(
    demo_home, demo_registry, robmon, tmp_path
) -> None:
    path = policy(
        tmp_path,
        "min_clean_accuracy = 0.9\nmin_score = 20\ncredibility = "
        '"must-pass"\nmax_audit_age = "1d"\nmin_robust_accuracy = [{attack = "pgd", '
        'norm = "linf", eps = 0.1, value = 0.3}]\n',
        "max_relative_drop = 0.1\n",
    )
    result = gate(robmon, "models:/digits-cnn/1", path, "--summary", str(tmp_path / "s.md"))
    assert result.code == 0, result.stderr
    decision = result.json()
    assert decision["verdict"] == "passed" and decision["exit_code"] == 0
    names = {c["name"]: c for c in decision["criteria"]}
    assert names["min_robust_accuracy[pgd linf 0.1]"]["passed"] is True
    assert names["baseline"]["passed"] is None  # the champion is this version: said, skipped
    assert "is this version" in names["baseline"]["reason"]
    tags = demo_registry.version_tags(demo_registry.resolve("models:/digits-cnn/1"))
    assert tags["robustness.gate"] == "passed"
    assert tags["robustness.gate_policy"] == decision["policy_hash"]
    history = robmon("gate", "history", "digits-cnn", "--json").json()
    assert [h["id"] for h in history] == [decision["decision_id"]]
    assert "Robustness gate: digits-cnn/1 passed" in (tmp_path / "s.md").read_text()


def test_under_a_robust_accuracy_floor_fails_naming_it(demo_home, robmon, tmp_path) -> None:
    path = policy(
        tmp_path,
        'min_robust_accuracy = [{attack = "pgd", norm = "linf", eps = 0.2, value = 0.5}]\n',
    )
    result = gate(robmon, "models:/digits-cnn/1", path)
    assert result.code == 1
    decision = result.json()
    assert decision["verdict"] == "failed"
    assert "PGD linf eps 0.2 robust accuracy" in decision["reason"]
    [failed] = [c for c in decision["criteria"] if c["passed"] is False]
    assert failed["name"] == "min_robust_accuracy[pgd linf 0.2]" and failed["threshold"] == 0.5


def test_a_regression_against_the_champion_fails(
    demo_home, demo_registry, robmon, tmp_path
) -> None:
    torch.manual_seed(3)
    weak = demo_registry.register_torch(
        digits_cnn(), "digits-cnn", torch.rand(2, 1, 8, 8), tags={"robustness.dataset": "digits"}
    )
    path = policy(tmp_path, baseline="max_relative_drop = 0.1\n")
    result = gate(robmon, weak.uri, path)
    assert result.code == 1, result.stderr
    decision = result.json()
    assert decision["baseline"] == "digits-cnn/1"
    failed = {c["name"] for c in decision["criteria"] if c["passed"] is False}
    assert "max_relative_drop[robustness score]" in failed


def test_gradient_masking_fails_a_must_pass_policy(
    demo_home, demo_registry, trained_cnn, robmon, tmp_path
) -> None:
    masked = demo_registry.register_torch(
        InputRounding(trained_cnn).eval(),
        "masked-cnn",
        torch.rand(2, 1, 8, 8),
        tags={"robustness.dataset": "digits"},
    )
    path = policy(tmp_path, 'credibility = "must-pass"\n')
    decision = gate(robmon, masked.uri, path).json()
    assert decision["verdict"] == "failed"
    [credibility] = [c for c in decision["criteria"] if c["name"] == "credibility"]
    assert credibility["passed"] is False and "zero_gradients" in credibility["reason"]
    lenient = policy(
        tmp_path,
        'credibility = ["zero_gradients", "large_eps_accuracy", '
        '"fgsm_far_above_pgd", "pgd_weaker_than_fgsm"]\n',
        name="lenient.toml",
    )
    assert gate(robmon, masked.uri, lenient).json()["verdict"] == "passed"


def test_a_missing_audit_is_exit_2_without_and_a_decision_with_audit_if_missing(
    demo_home, robmon, tmp_path
) -> None:
    path = policy(tmp_path, "min_score = 10\n")
    missing = robmon("gate", "models:/digits-cnn/2", "--policy", path)
    assert missing.code == 2
    assert "no audit of the candidate digits-cnn/2 matches the policy" in missing.stdout
    assert robmon("audits", "list", "--json").json() == []
    decided = robmon("gate", "models:/digits-cnn/2", "--policy", path, "--audit-if-missing")
    assert decided.code == 0
    assert [a["trigger"] for a in robmon("audits", "list", "--json").json()] == ["gate"]


def test_promotion_only_on_pass_and_rollback_restores(
    demo_home, demo_registry, robmon, tmp_path
) -> None:
    passing = policy(tmp_path, "min_score = 10\n", name="pass.toml")
    failing = policy(tmp_path, "min_score = 99\n", name="fail.toml")
    refused = gate(robmon, "models:/digits-cnn/2", failing, "--promote", "champion")
    assert refused.code == 1 and refused.json()["promoted_alias"] is None
    assert demo_registry.aliases("digits-cnn")["champion"] == "1"

    promoted = gate(robmon, "models:/digits-cnn/2", passing, "--promote", "champion").json()
    assert (promoted["promoted_alias"], promoted["previous_version"]) == ("champion", "1")
    assert demo_registry.aliases("digits-cnn")["champion"] == "2"

    back = robmon("gate", "rollback", "digits-cnn", "champion", "--json")
    assert back.code == 0 and back.json()["restored_version"] == "1"
    assert demo_registry.aliases("digits-cnn")["champion"] == "1"
    again = robmon("gate", "rollback", "digits-cnn", "champion")
    assert again.code == 1 and "no gate promotion of digits-cnn@champion" in again.stderr
    kinds = [h["kind"] for h in robmon("gate", "history", "digits-cnn", "--json").json()]
    assert kinds == ["rollback", "decision", "decision"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[audit\n", "is not valid TOML"),
        ("[criteria]\nmin_scor = 3\n", "unknown key criteria.min_scor"),
        (
            "[criteria]\nmin_clean_accuracy = 1.5\n",
            "criteria.min_clean_accuracy must be a number from 0 to 1",
        ),
        ("[criteria]\ncredibility = ['no_such_check']\n", "unknown check 'no_such_check'"),
        (
            "[criteria]\nmin_robust_accuracy = [{attack = 'pgd', eps = 0.1, value = 0.5}]\n",
            "needs exactly attack, norm, eps and value",
        ),
        (
            "[baseline]\nmax_absolute_drop = {scor = 1}\n",
            "unknown key baseline.max_absolute_drop.scor",
        ),
        ("[audit]\nattack = ['pgd']\n", "unknown key audit.attack"),
        ("[gate]\n", "unknown key gate"),
    ],
)
def test_malformed_policies_are_one_sentence_and_exit_2(
    demo_home, robmon, tmp_path, text, message
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = robmon("gate", "digits-cnn", "--policy", str(path))
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_a_floor_the_audit_does_not_measure_is_a_policy_error(demo_home, robmon, tmp_path):
    path = policy(
        tmp_path,
        'min_robust_accuracy = [{attack = "pgd", norm = "linf", eps = 0.3, value = 0.1}]\n',
    )
    result = gate(robmon, "models:/digits-cnn/1", path)
    assert result.code == 2 and "which the policy's [audit] does not measure" in result.stderr


def test_the_documented_examples_stay_valid() -> None:
    import yaml

    from monitor.gate.policy import load_policy

    root = Path(__file__).resolve().parents[1]
    policy_ = load_policy(root / "docs/examples/gate-policy.toml")
    assert policy_.credibility == "must-pass" and len(policy_.min_robust_accuracy) == 2
    workflow = yaml.safe_load((root / "docs/examples/ci-gate.yml").read_text())
    steps = workflow["jobs"]["release"]["steps"]
    gate_step = next(s for s in steps if "robmon gate" in s.get("run", ""))
    assert "--promote champion" in gate_step["run"] and "--audit-if-missing" in gate_step["run"]


def test_a_policy_can_require_apgd(demo_home, robmon, tmp_path) -> None:
    path = tmp_path / "apgd.toml"
    path.write_text(
        '[audit]\ndataset = "digits"\nattacks = ["pgd", "apgd"]\neps = [0.1]\nlimit = 150\n'
        '[criteria]\nmin_robust_accuracy = [{attack = "apgd", norm = "linf", eps = 0.1, '
        "value = 0.6}]\n"
    )
    result = gate(robmon, "models:/digits-cnn/1", str(path))
    assert result.code == 1, result.stderr
    [criterion] = [c for c in result.json()["criteria"] if c["name"].startswith("min_robust")]
    assert criterion["name"] == "min_robust_accuracy[apgd linf 0.1]"
    assert criterion["passed"] is False and 0.3 < criterion["actual"] < 0.6
    assert result.json()["preset"] == "custom"  # attacks named: no preset
    shown = robmon("audits", "show", str(result.json()["audit_id"]), "--json").json()
    assert {r["attack"] for r in shown["results"]} == {"pgd", "apgd"}


def test_a_detection_floor_reads_the_calibration_pooled_over_strengths(
    demo_home, robmon, tmp_path
) -> None:
    from monitor.calibrate import current_calibration
    from monitor.config import load_settings
    from monitor.db.session import open_database

    report = current_calibration(open_database(load_settings()), "digits-cnn", "1").report
    combined = next(d for d in report["detectors"] if d["detector"] == "combined")
    pgd = [counts for name, counts in combined["detected"].items() if name.startswith("pgd@")]
    rate = sum(h for h, _ in pgd) / sum(n for _, n in pgd)  # pgd@0.1, pgd@0.2, pgd@0.3 pooled
    below = (
        f'min_detection_rate = {{detector = "combined", attack = "pgd", value = {rate - 0.01:.4f}}}'
    )
    above = (
        f'min_detection_rate = {{detector = "combined", attack = "pgd", value = {rate + 0.01:.4f}}}'
    )
    passed = gate(robmon, "models:/digits-cnn/1", policy(tmp_path, below, name="a.toml"))
    failed = gate(robmon, "models:/digits-cnn/1", policy(tmp_path, above, name="b.toml"))
    assert (passed.code, failed.code) == (0, 1), (passed.stderr, failed.stderr)
    criterion = next(
        c for c in failed.json()["criteria"] if c["name"] == "min_detection_rate[combined pgd]"
    )
    assert criterion["passed"] is False and criterion["actual"] == pytest.approx(rate, abs=1e-6)
