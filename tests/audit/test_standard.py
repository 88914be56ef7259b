"""Gate-grade audits end to end on the demo store (real MLflow, real models): the standard
chain, black boxes attacked by queries, masking caught in the numbers, the headline score,
content-addressed datasets and APGD's own step budget."""

import numpy as np
import pytest

from monitor.datasets import load_dataset


def _cells(data: dict, threat: str = "white-box") -> dict[tuple[str, float], dict]:
    return {(r["attack"], r["eps"]): r for r in data["results"] if r["threat"] == threat}


def test_standard_chains_apgd_apgd_t_and_square_and_never_flatters_quick(demo_home, robmon):
    args = ("audit", "digits-cnn", "--eps", "0.1", "--limit", "100", "--json")
    standard = robmon(*args, "--preset", "standard", "--queries", "1000")
    assert standard.code == 0, standard.stderr
    data = standard.json()
    cells = _cells(data)
    assert [a for a, _ in cells] == ["apgd", "apgd-t", "square"]  # in the order they ran
    chain = [cells[(a, 0.1)]["robust_accuracy"] for a in ("apgd", "apgd-t", "square")]
    assert chain == sorted(chain, reverse=True)  # each is the worst case so far
    assert data["score"] == pytest.approx(100 * chain[-1], abs=1e-6)
    assert cells[("apgd", 0.1)]["steps"] == 100 and cells[("square", 0.1)]["steps"] == 1000
    queries = cells[("square", 0.1)]["queries"]
    assert queries["budget"] == 1000 and 1 <= queries["median"] <= queries["max"] <= 1000
    assert data["preset"] == "custom"  # 1000 queries is not the standard preset's 5000
    quick = robmon(*args, "--preset", "quick").json()
    assert quick["preset"] == "quick"
    assert chain[-1] <= _cells(quick)[("pgd", 0.1)]["robust_accuracy"]
    shown = robmon("audits", "show", str(data["audit_id"])).stdout
    assert "Attacks: custom (not a preset): APGD-CE-100 → APGD-T-100 (9 targets; after the" in shown
    assert "chained" in shown and "Queries (white-box square linf 0.1): mean" in shown


def test_the_headline_score_is_the_gate_grade_one(demo_home, robmon):
    result = robmon("audit", "digits-cnn", "--preset", "standard", "--eps", "0.2", "--json")
    assert result.code == 0, result.stderr
    standard = result.json()
    assert standard["preset"] == "standard"
    # a quick one-eps audit on few images afterwards does not replace it
    later = robmon("audit", "digits-cnn", "--attack", "fgsm", "--eps", "0.05", "--limit", "50")
    assert later.code == 0, later.stderr
    listed = robmon("models", "list", "digits-cnn", "--json")
    assert listed.code == 0, listed.stderr
    [model] = listed.json()
    version = next(v for v in model["versions"] if v["version"] == "1")
    assert version["robustness_score"] == pytest.approx(standard["score"], abs=1e-3)
    assert version["robustness_score_source"].startswith(
        f"standard preset, audit {standard['audit_id']}"
    )
    assert version["tags"]["robustness.score.custom"]  # the later audit kept apart
    table = robmon("models", "list", "digits-cnn").stdout
    assert "standard" in table


def test_a_black_box_is_attacked_by_queries_beside_transfer(demo_home, robmon):
    result = robmon(
        "audit", "digits-logreg", "--preset", "standard", "--queries", "500",
        "--eps", "0.1", "--limit", "60", "--json",
    )  # fmt: skip
    assert result.code == 0, result.stderr
    data = result.json()
    assert {r["threat"] for r in data["results"]} == {"transfer", "query"}
    [query] = [r for r in data["results"] if r["threat"] == "query"]
    assert query["attack"] == "square" and query["queries"]["budget"] == 500
    assert query["robust_accuracy"] < data["clean_accuracy"]  # a real attacker gets somewhere
    checks = {c["name"]: c for c in data["checks"]}
    assert checks["query_weaker_than_transfer"]["status"] in ("passed", "warning")


def test_square_takes_off_the_false_robustness_of_input_rounding(demo_home, robmon):
    defended = robmon(
        "defend", "models:/digits-cnn/1", "--transform", "bits:2", "--preset", "quick", "--json"
    )
    assert defended.code == 0, defended.stderr
    ref = "models:/" + defended.json()["registered"]  # NAME/VERSION
    common = ("--eps", "0.2", "--limit", "80", "--json")
    naive = robmon("audit", ref, "--preset", "standard", "--no-adaptive", *common).json()
    bpda = robmon("audit", ref, "--attack", "pgd", "--steps", "40", *common).json()
    naive_cells = _cells(naive)
    worst = naive_cells[("square", 0.2)]["robust_accuracy"]
    # the gradient attacks see zero gradients through the rounding; Square does not care
    assert naive_cells[("apgd", 0.2)]["robust_accuracy"] > worst + 0.1
    assert worst <= _cells(bpda)[("pgd", 0.2)]["robust_accuracy"] + 0.05
    checks = {c["name"]: c for c in naive["checks"]}
    assert checks["weaker_family_flatters"]["status"] == "warning"
    assert "masking" in checks["weaker_family_flatters"]["detail"]


def test_new_contents_under_the_same_path_are_a_new_audit(demo_home, robmon, tmp_path):
    digits = load_dataset("digits")
    path = tmp_path / "eval.npz"
    np.savez(path, x=digits.x[:40].numpy(), y=digits.y[:40].numpy())
    args = ("audit", "digits-cnn", "--dataset", str(path), "--eps", "0.1", "--json")
    first = robmon(*args).json()
    assert robmon(*args).json()["reused"] is True
    shuffled = np.random.default_rng(0).permutation(digits.y[:40].numpy())
    np.savez(path, x=digits.x[:40].numpy(), y=shuffled)  # random labels, same file name
    second = robmon(*args).json()
    assert second["reused"] is False and second["audit_id"] != first["audit_id"]
    assert second["clean_accuracy"] < first["clean_accuracy"] - 0.3


def test_apgd_runs_its_own_hundred_steps(demo_home, robmon):
    data = robmon(
        "audit", "digits-cnn", "--attack", "apgd", "--eps", "0.1", "--limit", "40", "--json"
    ).json()
    [row] = data["results"]
    assert (row["attack"], row["steps"]) == ("apgd", 100)
    ten = robmon(
        "audit", "digits-cnn", "--attack", "apgd", "--apgd-steps", "10", "--eps", "0.1",
        "--limit", "40", "--json",
    ).json()  # fmt: skip
    assert ten["reused"] is False and ten["results"][0]["steps"] == 10


def test_preset_errors_are_one_sentence(demo_home, robmon):
    result = robmon("audit", "digits-cnn", "--preset", "fast")
    assert result.code == 1
    assert "unknown preset 'fast'; choose from quick, standard, thorough" in result.stderr
    assert "Traceback" not in result.stderr
