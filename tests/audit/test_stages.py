"""Staged budgets: the standard preset's stages, and the APGD-T screen that reaches a target the
stop rule never gets to (a hand-made model whose only fooling class ranks last)."""

from dataclasses import replace

import torch
from torch import nn

from monitor.audit.config import AuditConfig, config_from
from monitor.audit.measure import Attackers, measure
from monitor.audit.stages import stage_plan
from monitor.classifiers import TorchClassifier


def test_standard_runs_the_top_target_in_full_then_screens_the_other_eight():
    config = config_from({"preset": "standard"}, {"dataset": "digits"})
    first, screen = stage_plan("apgd-t", config)
    assert (first.config.target_classes, first.config.apgd_steps, first.skip) == (1, 100, 0)
    assert (screen.config.target_classes, screen.config.apgd_steps, screen.skip) == (9, 25, 1)
    assert screen.always and not first.always
    # without a screen: one target at a time, each only while the one before fooled any
    unscreened = stage_plan("apgd-t", replace(config, target_stop=3, target_screen=0))
    assert [(s.config.target_classes, s.skip, s.always) for s in unscreened] == [
        (3, 0, False),
        *[(k + 1, k, False) for k in range(3, 9)],
    ]
    assert [s.config.queries for s in stage_plan("square", config)] == [500, 1000, 2000, 1500]


class _LateTarget(nn.Module):
    """Ten classes: 0 scores 5 and 1 scores 4 whatever the input; 9 scores -10 + 100·mean(x):
    last at a dark image, and the only class that can overtake 0 (once the mean passes 0.15)."""

    def forward(self, x):
        z = torch.linspace(-1.0, -8.0, 10).repeat(len(x), 1)
        z[:, 0], z[:, 1] = 5.0, 4.0
        z[:, 9] = -10.0 + 100.0 * x.flatten(1).mean(dim=1)
        return z


def test_the_screen_reaches_the_target_that_fools_where_the_stop_rule_stops_first():
    x = torch.rand((20, 1, 8, 8), generator=torch.Generator().manual_seed(0)) * 0.02
    y = torch.zeros(20, dtype=torch.long)
    target = TorchClassifier("late", _LateTarget())
    common = {"dataset": "digits", "attacks": ("apgd-t",), "eps": (0.2,), "chain": True,
              "apgd_steps": 10, "target_stop": 3}  # fmt: skip
    screened = measure(Attackers(target), x, y, AuditConfig(**common, target_screen=5))
    stopped = measure(Attackers(target), x, y, AuditConfig(**common))
    [cell] = screened.cells
    assert screened.clean_accuracy == 1.0 and cell.robust_accuracy == 0.0
    assert cell.steps == 10 and cell.attacked == 20
    # the first three targets fool none, so the stop rule never tries the fourth
    assert stopped.cells[0].robust_accuracy == 1.0
