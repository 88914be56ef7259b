"""Each credibility check on hand-made measurements (status and numbers in the detail)."""

import pytest

from monitor.audit.checks import PASSED, SKIPPED, WARNING, run_checks
from monitor.audit.measure import Baseline, CellResult, Measurements, Probes
from monitor.audit.score import robustness_score


def cell(attack, eps, acc, threat="white-box", norm="linf") -> CellResult:
    return CellResult(attack, norm, eps, threat, 10, 1, acc, None, 500, None, None, 0.1, 0, {})


def measurements(cells, **probes) -> Measurements:
    defaults = dict(
        zero_gradient_share=0.0,
        nonfinite_gradient_share=0.0,
        outputs_look_like_probabilities=False,
        randomized=False,
        large_eps=cell("pgd", 1.0, 0.0),
    )
    return Measurements(0.98, 500, 10, {}, cells, Probes(**(defaults | probes)))


def statuses(m: Measurements) -> dict[str, str]:
    return {c.name: c.status for c in run_checks(m)}


HONEST = [
    cell("fgsm", 0.1, 0.53),
    cell("pgd", 0.1, 0.49),
    cell("fgsm", 0.2, 0.03),
    cell("pgd", 0.2, 0.01),
]


def test_an_honest_audit_passes_everything_applicable() -> None:
    result = statuses(measurements(HONEST))
    for not_applicable in (
        "transfer_stronger_than_whitebox",
        "defence_attacked_adaptively",  # no defence
        "defence_gain_plausible",
    ):
        assert result.pop(not_applicable) == SKIPPED
    assert set(result.values()) == {PASSED}


@pytest.mark.parametrize(
    ("cells", "probes", "check", "needle"),
    [
        (
            [cell("fgsm", 0.1, 0.40), cell("pgd", 0.1, 0.60)],
            {},
            "pgd_weaker_than_fgsm",
            "PGD leaves 0.600",
        ),
        (
            [cell("fgsm", 0.2, 0.87), cell("pgd", 0.2, 0.00)],
            {},
            "fgsm_far_above_pgd",
            "FGSM leaves 0.870 but PGD 0.000",
        ),
        (
            [cell("pgd", 0.1, 0.30), cell("pgd", 0.2, 0.45)],
            {},
            "accuracy_rises_with_eps",
            "rises from 0.300",
        ),
        (HONEST, {"large_eps": cell("pgd", 1.0, 0.12)}, "large_eps_accuracy", "leaves 0.120"),
        (
            [*HONEST, cell("pgd", 0.1, 0.2, threat="transfer")],
            {},
            "transfer_stronger_than_whitebox",
            "transfer pgd",
        ),
        (HONEST, {"zero_gradient_share": 0.8}, "zero_gradients", "80%"),
        (
            HONEST,
            {"outputs_look_like_probabilities": True},
            "outputs_are_probabilities",
            "sum to 1",
        ),
        (HONEST, {"randomized": True}, "randomized_model", "EOT"),
    ],
)
def test_each_red_flag_warns_with_its_numbers(cells, probes, check, needle) -> None:
    found = {c.name: c for c in run_checks(measurements(cells, **probes))}[check]
    assert found.status == WARNING
    assert needle in found.detail


def test_small_differences_within_sampling_noise_pass() -> None:
    cells = [cell("fgsm", 0.1, 0.500), cell("pgd", 0.1, 0.505)]  # +0.5 points on 500 samples
    assert statuses(measurements(cells))["pgd_weaker_than_fgsm"] == PASSED


def test_black_box_audits_skip_gradient_checks() -> None:
    m = Measurements(0.97, 500, 10, {}, [cell("fgsm", 0.1, 0.8, threat="transfer")], Probes())
    result = statuses(m)
    for name in (
        "zero_gradients",
        "large_eps_accuracy",
        "pgd_weaker_than_fgsm",
        "randomized_model",
        "outputs_are_probabilities",
    ):
        assert result[name] == SKIPPED


def test_score_is_the_mean_worst_case_robust_accuracy() -> None:
    assert robustness_score(HONEST) == pytest.approx(100 * (0.49 + 0.01) / 2)
    assert robustness_score([]) is None
    # a transfer attack stronger than white-box at one eps lowers the score there
    assert robustness_score([*HONEST, cell("fgsm", 0.1, 0.2, threat="transfer")]) == (
        pytest.approx(100 * (0.2 + 0.01) / 2)
    )


DEFENDED = {"defence": ["bits:4: BPDA (identity gradient)"], "adaptive": True}


def with_parent(cells, parent_pgd: float, **probes) -> Measurements:
    m = measurements(cells, **probes)
    m.baseline = Baseline(
        "digits-cnn v1",
        0.98,
        {("white-box", "pgd", "linf", 0.1): parent_pgd, ("white-box", "fgsm", "linf", 0.1): 0.53},
    )
    return m


def test_a_defence_attacked_adaptively_close_to_its_parent_passes() -> None:
    result = {c.name: c for c in run_checks(with_parent(HONEST, 0.47, **DEFENDED))}
    assert result["defence_attacked_adaptively"].status == PASSED
    assert "bits:4: BPDA" in result["defence_attacked_adaptively"].detail
    assert result["defence_gain_plausible"].status == PASSED
    assert "+0.020" in result["defence_gain_plausible"].detail


def test_a_defence_far_above_its_parent_or_attacked_naively_warns() -> None:
    cells = [cell("fgsm", 0.1, 0.90), cell("pgd", 0.1, 0.88)]
    result = {c.name: c for c in run_checks(with_parent(cells, 0.49, **DEFENDED))}
    assert result["defence_gain_plausible"].status == WARNING
    assert "+0.390 above digits-cnn v1's" in result["defence_gain_plausible"].detail
    naive = {**DEFENDED, "adaptive": False}
    result = {c.name: c for c in run_checks(with_parent(cells, 0.49, **naive))}
    assert result["defence_attacked_adaptively"].status == WARNING
    assert "without BPDA/EOT" in result["defence_attacked_adaptively"].detail


def test_a_randomised_model_attacked_with_eot_passes() -> None:
    m = measurements(HONEST, randomized=True, eot_samples=10)
    assert statuses(m)["randomized_model"] == PASSED
