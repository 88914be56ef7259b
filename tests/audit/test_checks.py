"""Each credibility check on hand-made measurements (status and numbers in the detail), and on
real models trained here: ordinary ones pass, bad ones warn."""

import pytest
import torch

from monitor.architectures import InputRounding, Standardize, digits_cnn
from monitor.attacks import fgsm
from monitor.audit.checks import PASSED, SKIPPED, WARNING, Check, run_checks
from monitor.audit.config import AuditConfig
from monitor.audit.measure import Attackers, Baseline, CellResult, Measurements, Probes, measure
from monitor.audit.score import robustness_score
from monitor.classifiers import TorchClassifier
from monitor.datasets import load_dataset
from monitor.training import train_classifier


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
        "weaker_family_flatters",  # one family: FGSM and PGD
        "query_weaker_than_transfer",
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


def test_a_plain_models_fgsm_pgd_gap_passes_where_fgsm_still_fools_most() -> None:
    # issue 18's plain MNIST CNN: FGSM 0.33 above PGD at eps 0.2, yet fooling 66% as many inputs
    m = measurements([cell("fgsm", 0.2, 0.36), cell("pgd", 0.2, 0.03)])
    m.clean_accuracy = 0.99
    found = {c.name: c for c in run_checks(m)}["fgsm_far_above_pgd"]
    assert found.status == PASSED
    assert "largest FGSM-PGD gap 0.330 (at eps 0.2), where FGSM fools 66%" in found.detail


def test_fgsm_barely_moving_a_model_that_pgd_breaks_warns() -> None:
    m = measurements([cell("fgsm", 0.3, 0.66), cell("pgd", 0.3, 0.03)])
    m.clean_accuracy = 0.925
    found = {c.name: c for c in run_checks(m)}["fgsm_far_above_pgd"]
    assert found.status == WARNING
    assert "one step fools only 30% as many inputs as PGD" in found.detail


def test_a_small_fgsm_share_within_a_small_gap_passes() -> None:
    # a robust model at a small eps: FGSM fools 1 in 5 of PGD's few, but the gap is 0.08
    cells = [cell("fgsm", 0.1, 0.88), cell("pgd", 0.1, 0.80)]
    assert statuses(measurements(cells))["fgsm_far_above_pgd"] == PASSED


@pytest.mark.parametrize(
    ("clean", "n_classes", "status"),
    [
        (0.09, 10, WARNING),
        (0.15, 10, WARNING),
        (0.16, 10, PASSED),
        (0.6, 2, WARNING),
        (0.7, 2, PASSED),  # an ordinary hard binary task, not a wrong contract
        (0.4, 3, WARNING),
        (0.45, 3, PASSED),
    ],
)
def test_clean_accuracy_near_chance(clean, n_classes, status) -> None:
    m = measurements(HONEST)
    m.clean_accuracy, m.n_classes = clean, n_classes
    found = {c.name: c for c in run_checks(m)}["clean_accuracy_near_chance"]
    assert found.status == status
    if status == WARNING:
        chance = f"({1 / n_classes:.3f} for {n_classes} classes)"
        assert f"clean accuracy {clean:.3f} is near chance {chance}" in found.detail
        assert "robustness.input" in found.detail


def test_near_chance_is_skipped_without_the_number_of_classes() -> None:
    m = Measurements(0.05, 500, None, {}, [cell("fgsm", 0.1, 0.0, threat="transfer")], Probes())
    assert statuses(m)["clean_accuracy_near_chance"] == SKIPPED


# End to end: real models trained here on the 8×8 digits, audited at the grayscale L∞ grid.

GREY = (0.1, 0.2, 0.3)


def audit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Check]:
    config = AuditConfig(dataset="digits", eps=GREY)
    m = measure(Attackers(TorchClassifier("model", model.eval())), x[:200], y[:200], config)
    return {c.name: c for c in run_checks(m)}


def warnings(checks: dict[str, Check]) -> set[str]:
    return {name for name, c in checks.items() if c.status == WARNING}


def test_a_plainly_trained_digits_cnn_raises_no_warning(trained_cnn, digits) -> None:
    checks = audit(trained_cnn, digits.x, digits.y)
    assert warnings(checks) == set()
    assert checks["fgsm_far_above_pgd"].status == PASSED


def test_fgsm_only_training_that_overfits_catastrophically_warns(digits) -> None:
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = digits_cnn()
    step = lambda m, x, y: fgsm(m, x, y, 0.4)  # noqa: E731  (no random start: overfits)
    train_classifier(
        model, train.x, train.y, epochs=20, lr=2e-3, transform=step, transform_ratio=1.0
    )
    checks = audit(model, digits.x, digits.y)
    assert checks["fgsm_far_above_pgd"].status == WARNING
    assert "FGSM-only adversarial training" in checks["fgsm_far_above_pgd"].detail


def test_an_input_rounded_model_warns(trained_cnn, digits) -> None:
    checks = audit(InputRounding(trained_cnn, levels=4), digits.x, digits.y)
    assert {"zero_gradients", "large_eps_accuracy"} <= warnings(checks)


def test_a_model_fed_pixels_on_the_wrong_scale_is_near_chance(digits) -> None:
    train = load_dataset("digits", "train")
    torch.manual_seed(0)
    model = digits_cnn()
    model[0] = Standardize(127.5, 127.5)  # trained on 0-255 pixels, audited on [0, 1]
    train_classifier(model, train.x * 255, train.y, epochs=10, lr=2e-3)
    checks = audit(model, digits.x, digits.y)
    assert checks["clean_accuracy_near_chance"].status == WARNING
    assert "check the model's input contract" in checks["clean_accuracy_near_chance"].detail
