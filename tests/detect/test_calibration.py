"""Calibration on the digits test split with FGSM/PGD at eps 0.1, on the demo CNN."""

import math

import pytest
import torch

from monitor.attacks import fgsm, pgd
from monitor.detect.calibration import calibrate_detector
from monitor.detect.corruptions import benign_corruptions
from monitor.detect.scores import score_inputs
from monitor.detect.squeezers import parse_squeezer
from monitor.detect.thresholds import Thresholds


@pytest.fixture(scope="module")
def calibration(trained_cnn, digits):
    def probabilities(x):
        with torch.no_grad():
            return torch.softmax(trained_cnn(x), 1)

    def craft(x, y, attack):
        return fgsm(trained_cnn, x, y, 0.1) if attack == "fgsm" else pgd(trained_cnn, x, y, 0.1)

    return calibrate_detector(
        probabilities, craft, digits.x, digits.y, eps=0.1, fpr=0.05
    ), probabilities


def test_reports_roc_auc_and_detection_for_every_detector(calibration) -> None:
    result, _ = calibration
    by_name = {d.detector: d for d in result.detectors}
    assert set(by_name) == {"confidence", "squeezing", "combined"}
    for report in by_name.values():
        for attack in ("fgsm", "pgd"):
            assert 0.5 < report.roc_auc[attack] <= 1.0
            assert 0.0 <= report.detection_rate[attack] <= 1.0
    # measured on this model: squeezing separates FGSM(0.1) from clean with ROC AUC above 0.9
    assert by_name["squeezing"].roc_auc["fgsm"] > 0.9
    assert result.best_detector in by_name
    assert result.n_adversarial["fgsm_B"] > 50


def test_squeezers_that_destroy_clean_accuracy_are_rejected(calibration) -> None:
    result, _ = calibration
    decisions = {c.squeezer: c for c in result.candidates}
    assert not decisions["median:2"].kept  # the paper's 2×2 median costs ~30 points here
    assert "drops clean accuracy" in decisions["median:2"].reason
    assert result.thresholds.squeezers
    assert all(s.startswith("bits:") for s in result.thresholds.squeezers)
    assert result.thresholds.squeezers[0] in result.reason


def test_thresholds_hold_the_target_rate_on_clean_held_out_data(calibration) -> None:
    result, _ = calibration
    by_name = {d.detector: d for d in result.detectors}
    for report in by_name.values():
        assert report.fpr_clean <= 0.05 + 0.04  # 268 held-out samples: sampling slack
    assert by_name["squeezing"].fpr_benign["blur"] <= 0.10
    assert set(result.baseline) >= {"low_confidence", "squeeze_suspicious", "flagged"}
    assert all(0 <= v <= 0.2 for v in result.baseline.values())


def test_thresholds_round_trip_and_flag_adversarial_inputs(calibration, trained_cnn, digits):
    result, probabilities = calibration
    restored = Thresholds.from_dict(result.thresholds.to_dict())
    squeezers = [parse_squeezer(s) for s in restored.squeezers]
    x, y = digits.x[:200], digits.y[:200]
    adv = pgd(trained_cnn, x, y, 0.2)
    clean_flags = restored.flags(score_inputs(probabilities, x, squeezers))
    adv_flags = restored.flags(score_inputs(probabilities, adv, squeezers))
    assert (
        adv_flags["squeeze_suspicious"].float().mean()
        > 3 * clean_flags["squeeze_suspicious"].float().mean()
    )
    assert not math.isinf(restored.squeeze)


def test_benign_corruptions_stay_in_range(digits) -> None:
    for name, x in benign_corruptions(digits.x[:20]).items():
        assert x.shape == digits.x[:20].shape, name
        assert x.min() >= 0 and x.max() <= 1, name
        assert not torch.equal(x, digits.x[:20]), name


def test_held_out_benign_rates_stay_near_the_target(calibration) -> None:
    """Thresholds sit one standard error under the target on the calibration split (the
    combined detector's on out-of-fold scores); on 268 held-out images a group may still land
    up to two standard errors (2.7 points) above the target, and the rates over all groups stay
    well under it."""
    result, _ = calibration
    for report in result.detectors:
        assert report.fpr_clean <= 0.05 + 2 * 0.0133, report.detector
        assert max(report.fpr_benign.values()) <= 0.05 + 2 * 0.0133, (
            report.detector,
            report.fpr_benign,
        )
    rates = [r for d in result.detectors for r in (d.fpr_clean, *d.fpr_benign.values())]
    assert sum(rates) / len(rates) <= 0.03


def test_detection_is_reported_per_attack_with_counts(calibration) -> None:
    result, _ = calibration
    squeezing = next(d for d in result.detectors if d.detector == "squeezing")
    hits, total = squeezing.detected["fgsm"]
    assert total == result.n_adversarial["fgsm_B"] and 0 < hits <= total
    assert squeezing.detection_rate["fgsm"] == pytest.approx(hits / total)
    assert all(c.cost >= 1.0 for c in result.candidates)


def test_no_successful_attack_still_calibrates_from_the_benign_side(trained_cnn, digits) -> None:
    """A model no attack fools (here: attacks that change nothing, as on a robust model at a
    tiny eps) gives thresholds from benign inputs and detection 0 of 0, no crash."""

    def probabilities(x):
        with torch.no_grad():
            return torch.softmax(trained_cnn(x), 1)

    result = calibrate_detector(
        probabilities,
        lambda x, y, attack: x.clone(),
        (digits.x[:200] * 255).round().to(torch.uint8),  # stored as uint8: read per batch
        digits.y[:200],
        eps=0.01,
        batch_size=32,
    )
    assert result.n_adversarial == {"fgsm_A": 0, "pgd_A": 0, "fgsm_B": 0, "pgd_B": 0}
    assert "no attack fooled the model" in result.reason and "0 of 0" in result.reason
    assert result.thresholds.combined is None
    for report in result.detectors:
        assert report.detected == {"fgsm": [0, 0], "pgd": [0, 0]}
        assert report.fpr_clean <= 0.05
    # neither of the paper's grey squeezers keeps accuracy on this model: the mildest does
    candidates = {c.squeezer: c for c in result.candidates}
    assert not candidates["bits:1"].kept and not candidates["median:2"].kept
    (chosen,) = result.thresholds.squeezers
    assert candidates[chosen].kept
    assert candidates[chosen].clean_accuracy == max(c.clean_accuracy for c in candidates.values())
    assert math.isfinite(result.thresholds.squeeze) and math.isfinite(result.thresholds.confidence)


def test_squeezers_too_costly_are_reported_and_excluded(trained_cnn, digits) -> None:
    def probabilities(x):
        with torch.no_grad():
            return torch.softmax(trained_cnn(x), 1)

    def craft(x, y, attack):
        return fgsm(trained_cnn, x, y, 0.2)

    result = calibrate_detector(
        probabilities,
        craft,
        digits.x[:200],
        digits.y[:200],
        eps=0.2,
        attacks=("fgsm",),
        candidates=("bits:1", "nlm:11-3-4"),
        max_cost=2.0,
    )
    nlm = next(c for c in result.candidates if c.squeezer == "nlm:11-3-4")
    assert nlm.cost > 2.0 and not nlm.kept and "forward passes per input (limit 2" in nlm.reason
    assert "nlm:11-3-4" not in result.thresholds.squeezers
