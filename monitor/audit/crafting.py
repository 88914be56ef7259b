"""Which function crafts each attack of an audit, and with what settings: one lookup table.

Gradient attacks (FGSM, PGD, APGD-CE, APGD-T, FAB-T) differentiate a torch module (the
target's, or a surrogate's for transfer). Square needs only scores: the target's logits, or the
log of a black box's probabilities (the margin of log-softmax equals that of the logits), so it
attacks any model that returns probabilities, and it always queries the model as served (a
defence's real forward pass, not the BPDA/EOT view gradients go through).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from monitor.attacks import AttackStats, apgd, apgd_targeted, fab_targeted, fgsm, pgd, square
from monitor.audit.config import QUERY_ATTACKS, AuditConfig
from monitor.classifiers import Classifier, TorchClassifier

# (model or scores, x, y, eps, norm, config, early_stop, seeds per sample, stats) -> x_adv
Craft = Callable[..., torch.Tensor]
CRAFT: dict[str, Craft] = {
    "fgsm": lambda m, x, y, eps, norm, cfg, es, seed, st: fgsm(m, x, y, eps, norm=norm, stats=st),
    "pgd": lambda m, x, y, eps, norm, cfg, es, seed, st: pgd(
        m, x, y, eps, norm=norm, steps=cfg.steps, restarts=cfg.restarts, early_stop=es,
        seed=seed, stats=st,
    ),
    "apgd": lambda m, x, y, eps, norm, cfg, es, seed, st: apgd(
        m, x, y, eps, norm=norm, steps=cfg.apgd_steps, restarts=cfg.restarts, seed=seed, stats=st
    ),
    "apgd-t": lambda m, x, y, eps, norm, cfg, es, seed, st, skip=0: apgd_targeted(
        m, x, y, eps, norm=norm, steps=cfg.apgd_steps, target_classes=cfg.target_classes,
        skip_targets=skip, seed=seed, stats=st,
    ),
    "fab-t": lambda m, x, y, eps, norm, cfg, es, seed, st: fab_targeted(
        m, x, y, eps, norm=norm, steps=cfg.apgd_steps, target_classes=cfg.target_classes, stats=st
    ),
    "square": lambda m, x, y, eps, norm, cfg, es, seed, st, skip=0: square(
        m, x, y, eps, norm=norm, queries=cfg.queries, seed=seed, stats=st
    ),
}  # fmt: skip


def attacks_for(threat: str, config: AuditConfig) -> tuple[str, ...]:
    """The attacks a threat runs, in order: gradient attacks by transfer, query attacks only
    against the target itself (white-box or query), everything white-box."""
    ordered = config.ordered()
    if threat == "transfer":
        return tuple(a for a in ordered if a not in QUERY_ATTACKS)
    if threat == "query":
        return tuple(a for a in ordered if a in QUERY_ATTACKS)
    return ordered


def scores_of(target: Classifier) -> Callable[[torch.Tensor], torch.Tensor]:
    """What a query attack sees of the target: logits of a torch model (its real forward pass),
    log-probabilities of a black box (on the inputs' device)."""
    if isinstance(target, TorchClassifier):
        module = target.module
        return lambda x: module(x.to(target.device)).float()

    def black_box(x: torch.Tensor) -> torch.Tensor:
        probs = target.probabilities(x)
        if probs is None:  # labels only: planning leaves query attacks out for these
            raise ValueError(f"{target.name} returns labels only; query attacks need scores")
        return probs.clamp_min(1e-12).log().to(x.device)

    return black_box


def craft(
    attack: str,
    crafter: TorchClassifier | None,
    target: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    norm: str,
    config: AuditConfig,
    early_stop: bool,
    seeds: torch.Tensor,
    stats: AttackStats,
    skip: int = 0,
) -> torch.Tensor:
    """Adversarial examples of one batch by one attack (x on the crafting device); ``skip``
    leaves out the first APGD-T targets (a later stage of a staged cell)."""
    model = scores_of(target) if attack in QUERY_ATTACKS else crafter.crafting_module
    extra = {"skip": skip} if skip else {}
    return CRAFT[attack](model, x, y, eps, norm, config, early_stop, seeds, stats, **extra).detach()
