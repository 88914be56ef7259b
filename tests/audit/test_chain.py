"""AutoAttack's whole standard ensemble as a custom chain: APGD-CE, APGD-T, FAB-T and Square in
AutoAttack's order, each on the samples the ones before left robust."""

from monitor.audit.checks import FAMILIES
from monitor.audit.config import AuditConfig, preset_text
from monitor.audit.measure import Attackers, measure
from monitor.classifiers import TorchClassifier


def test_fab_t_runs_after_apgd_t_on_what_it_left(trained_cnn, digits):
    config = AuditConfig(
        dataset="digits", attacks=("square", "fab-t", "apgd", "apgd-t"), eps=(0.1,), chain=True,
        apgd_steps=10, target_classes=3, queries=100,
    )  # fmt: skip
    assert config.ordered() == ("apgd", "apgd-t", "fab-t", "square")
    assert "APGD-T-10 (3 targets) → FAB-T-10 (3 targets) → Square" in preset_text(config)
    assert config.preset == "custom" and "fab-t" in FAMILIES
    alone = AuditConfig(dataset="digits", attacks=("fab-t",), eps=(0.1,), apgd_steps=10)
    assert alone.hash() != AuditConfig(dataset="digits", attacks=("fab-t",), eps=(0.1,)).hash()
    m = measure(Attackers(TorchClassifier("cnn", trained_cnn)), digits.x[:200], digits.y[:200],
                config)  # fmt: skip
    cells = {c.attack: c for c in m.cells}
    assert list(cells) == ["apgd", "apgd-t", "fab-t", "square"]
    assert cells["fab-t"].attacked == round(cells["apgd-t"].robust_accuracy * 200)
    chain = [c.robust_accuracy for c in m.cells]
    assert chain == sorted(chain, reverse=True) and chain[0] < m.clean_accuracy - 0.2
    assert cells["fab-t"].steps == 10
    sizes = [c.max_perturbation for c in m.cells if c.max_perturbation is not None]
    assert sizes and max(sizes) <= 0.1 + 1e-5  # every example inside the ball
