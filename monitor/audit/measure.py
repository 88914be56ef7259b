"""The numbers of an audit, computed on tensors: clean accuracy, one result per attack cell,
and the probes the credibility checks read. No database, no MLflow.

Robust accuracy counts a sample as robust when the model classifies it correctly both clean and
attacked (as AutoAttack does); only initially correct samples are attacked.

Batches are sized by ``monitor.audit.memory`` (measured, halved on out-of-memory). Each sample's
random start is drawn from its own seed (``config.seed`` and its position), so the numbers do
not depend on the batch size; what can differ is float rounding in batched kernels, and the
draws of models that are random themselves (randomised defences use torch's global generator).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from monitor.attacks import AttackStats, perturbation_size
from monitor.attacks.core import attack_mode, input_gradient
from monitor.audit.config import LARGE_EPS, QUERY_ATTACKS, AuditConfig
from monitor.audit.crafting import attacks_for, craft
from monitor.audit.memory import BatchPlan, BatchSize, in_batches, plan_batches
from monitor.audit.stages import merge_stages, query_summary, stage_plan
from monitor.classifiers import Classifier, TorchClassifier, check_input_shape
from monitor.errors import ModelIncompatible
from monitor.progress import Reporter, silent

GALLERY_SIZE = 8
PROBE_SAMPLES = 256
STAGED = ("apgd-t", "square")  # attacks whose budget is spent in stages (measure_staged)
RANDOM_DRAWS = 6  # forward passes compared to tell a randomised model from a deterministic one


@dataclass
class Example:
    """One successful adversarial example for the gallery (CPU tensors C×H×W)."""

    clean: torch.Tensor
    adversarial: torch.Tensor
    label: int
    adversarial_label: int


@dataclass
class CellResult:
    attack: str
    norm: str
    eps: float
    threat: str  # white-box | transfer | query
    steps: int
    restarts: int
    robust_accuracy: float
    attack_success_rate: float | None
    n: int
    mean_perturbation: float | None
    max_perturbation: float | None
    seconds: float
    passes: int
    per_class: dict[int, tuple[int, float]]
    examples: list[Example] = field(default_factory=list, repr=False)
    robust: torch.Tensor | None = field(default=None, repr=False)  # per sample, for a chain
    attacked: int = 0  # samples this attack ran on (a chain: those the earlier ones left)
    queries: dict | None = None  # query attacks: per-sample queries (mean, median, max, budget)
    query_counts: torch.Tensor | None = field(default=None, repr=False)  # per sample (0: none)


@dataclass
class Probes:
    """Evidence for the credibility checks beyond the result grid."""

    zero_gradient_share: float | None = None
    nonfinite_gradient_share: float | None = None
    outputs_look_like_probabilities: bool | None = None
    randomized: bool | None = None
    large_eps: CellResult | None = None
    defence: list[str] | None = None  # a defended model: how the attack went through each part
    adaptive: bool | None = None  # BPDA/EOT used against the defence
    eot_samples: int = 1


@dataclass
class Baseline:
    """The parent version's audit with the same configuration (defended versions only)."""

    label: str
    clean_accuracy: float
    robust: dict[tuple[str, str, str, float], float]  # (threat, attack, norm, eps) -> accuracy


@dataclass
class Measurements:
    clean_accuracy: float
    n: int
    n_classes: int | None
    per_class_clean: dict[int, tuple[int, float]]
    cells: list[CellResult]
    probes: Probes
    baseline: Baseline | None = None
    batch: dict | None = None  # how batches were sized: BatchPlan.record()
    chained: bool = False  # each attack ran on what the earlier ones left (results cumulative)


@dataclass
class Attackers:
    """Who is attacked and who crafts: the target itself (white-box) and/or a surrogate."""

    target: Classifier
    surrogate: TorchClassifier | None = None

    def threats(self) -> list[tuple[str, TorchClassifier]]:
        """The crafting models: the target (white-box) and the surrogate (transfer)."""
        pairs = []
        if isinstance(self.target, TorchClassifier):
            pairs.append(("white-box", self.target))
        if self.surrogate is not None:
            pairs.append(("transfer", self.surrogate))
        return pairs

    def plan(self, config: AuditConfig) -> list[tuple[str, TorchClassifier | None, tuple]]:
        """(threat, crafting model, attacks in order) of every threat the audit runs; a black
        box that returns scores is also attacked by queries (what a real attacker gets)."""
        out = [(t, c, attacks_for(t, config)) for t, c in self.threats()]
        scores = not isinstance(self.target, TorchClassifier) and self.target.outputs != "labels"
        if scores and set(config.attacks) & set(QUERY_ATTACKS):
            out.append(("query", None, attacks_for("query", config)))
        return [(t, c, attacks) for t, c, attacks in out if attacks]


def measure(
    attackers: Attackers,
    x: torch.Tensor,
    y: torch.Tensor,
    config: AuditConfig,
    *,
    batch_size: BatchSize | int | str = "auto",
    report: Reporter = silent,
) -> Measurements:
    """Clean accuracy, every (threat, attack, norm, eps) cell, and the probes; ``batch_size``
    "auto" (measured against the free memory), N, or a BatchSize with a memory limit."""
    check_input_shape(attackers.target, tuple(x.shape[1:]), "the dataset")
    plan = batch_plan(attackers, x, BatchSize.of(batch_size))
    correct, n_classes = clean_predictions(attackers.target, x, y, plan)
    cells = []
    for threat, crafter, attacks in attackers.plan(config):
        for norm in config.norms:
            for eps in config.eps_for(norm):
                left = correct  # a chain attacks only what the earlier attacks left robust
                for attack in attacks:
                    run = measure_staged if attack in STAGED else measure_cell
                    cell = run(
                        crafter or attackers.target,
                        attackers.target,
                        x,
                        y,
                        left,
                        attack,
                        norm,
                        eps,
                        config,
                        threat,
                        plan,
                        report,
                    )
                    cells.append(cell)
                    if config.chain:
                        left = cell.robust
    probes = probe(attackers, x, y, correct, config, plan)
    return Measurements(
        clean_accuracy=int(correct.sum()) / len(y),
        n=len(y),
        n_classes=n_classes,
        per_class_clean=per_class(correct, y),
        cells=cells,
        probes=probes,
        batch=plan.record(),
        chained=config.chain,
    )


def batch_plan(attackers: Attackers, x: torch.Tensor, request: BatchSize) -> BatchPlan:
    """The batch size for every crafting model of the audit (the largest need decides)."""
    crafters = [crafter for _, crafter in attackers.threats()]
    if not crafters and request.fixed is None:  # queries only: no gradients to hold
        why = "auto: query attacks only, every sample in one batch"
        return BatchPlan("auto", max(len(x), 1), "cpu", why)
    device = crafters[0].device if crafters else torch.device("cpu")
    return plan_batches(request, [c.crafting_module for c in crafters], x, torch.device(device))


def clean_predictions(
    target: Classifier, x: torch.Tensor, y: torch.Tensor, plan: BatchPlan | None = None
) -> tuple[torch.Tensor, int | None]:
    """Which samples the target gets right, and its number of classes (None: labels only)."""
    check_input_shape(target, tuple(x.shape[1:]), "the dataset")
    try:
        probs = _probabilities(target, x, plan)
    except (RuntimeError, AssertionError) as err:  # pt2 graphs assert on shapes
        raise ModelIncompatible(
            f"{target.name} cannot take inputs shaped {tuple(x.shape[1:])}: "
            f"{str(err).strip().splitlines()[0]}."
        ) from err
    if probs is None:
        return target.labels(x) == y, None
    bad = (~torch.isfinite(probs)).any(dim=1)
    if bad.any():
        raise ModelIncompatible(
            f"{target.name} returned NaN or infinite outputs on {int(bad.sum())} of {len(x)} "
            "clean inputs."
        )
    n_classes = probs.shape[1]
    top = int(y.max())
    if top >= n_classes:
        raise ModelIncompatible(
            f"the dataset has label {top} but {target.name} predicts only {n_classes} classes."
        )
    return probs.argmax(dim=1) == y, n_classes


def _probabilities(
    target: Classifier, x: torch.Tensor, plan: BatchPlan | None
) -> torch.Tensor | None:
    """The target's probabilities on x; a torch model's in the plan's batches."""
    if plan is None or not isinstance(target, TorchClassifier):
        return target.probabilities(x)
    chunks: list[torch.Tensor] = []

    def work(start: int, stop: int) -> None:
        chunks.append(target.probabilities(x[start:stop]))

    in_batches(plan, len(x), work, torch.device(target.device))
    return torch.cat(chunks) if chunks else target.probabilities(x)


def measure_cell(
    crafter: Classifier,
    target: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    attack: str,
    norm: str,
    eps: float,
    config: AuditConfig,
    threat: str,
    batch: BatchPlan | int,
    report: Reporter = silent,
    task: str | None = None,
    skip: int = 0,
) -> CellResult:
    """Attack the samples of ``correct`` (the initially correct ones; in a chain, those still
    robust) in batches (halved on out-of-memory); evaluate the target on the results."""
    plan = batch if isinstance(batch, BatchPlan) else BatchPlan(batch, batch, "", "fixed")
    device = torch.device(getattr(crafter, "device", "cpu"))
    started = time.perf_counter()
    stats = AttackStats()
    robust = torch.zeros(len(y), dtype=torch.bool)
    counts = torch.zeros(len(y), dtype=torch.long)
    sizes: list[torch.Tensor] = []
    examples: list[Example] = []
    todo = correct.nonzero().squeeze(1)
    task = task or f"{threat} {attack} {norm} eps={eps:g}"
    report(task, 0, len(todo))

    def work(start: int, stop: int) -> None:  # keeps nothing from a batch that fails
        idx = todo[start:stop]
        done = _attack_batch(
            crafter, target, x, y, idx, attack, norm, eps, config, threat, device, skip
        )
        still, size, gallery, passes, used = done
        robust[idx] = still
        stats.forward += passes
        if used is not None:
            counts[idx] = used
        if size is not None:
            sizes.append(size)
        examples.extend(gallery[: GALLERY_SIZE - len(examples)])
        report(task, stop, len(todo))

    in_batches(plan, len(todo), work, device)
    n_correct = int(correct.sum())
    size = torch.cat(sizes) if sizes else None
    return CellResult(
        attack=attack,
        norm=norm,
        eps=eps,
        threat=threat,
        steps=config.steps_of(attack),
        restarts=config.restarts_of(attack),
        robust_accuracy=int(robust.sum()) / len(y),
        attack_success_rate=1.0 - int(robust.sum()) / n_correct if n_correct else None,
        n=len(y),
        mean_perturbation=float(size.mean()) if size is not None else None,
        max_perturbation=float(size.max()) if size is not None else None,
        seconds=time.perf_counter() - started,
        passes=stats.forward,
        per_class=per_class(robust, y),
        examples=examples,
        robust=robust,
        attacked=n_correct,
        queries=query_summary(counts[todo], config.queries) if attack in QUERY_ATTACKS else None,
        query_counts=counts if attack in QUERY_ATTACKS else None,
    )


def measure_staged(
    crafter: Classifier,
    target: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    attack: str,
    norm: str,
    eps: float,
    config: AuditConfig,
    threat: str,
    batch: BatchPlan | int,
    report: Reporter = silent,
) -> CellResult:
    """An attack whose budget is spent in stages (``stages.stage_plan``), each on the samples
    still robust, going on only while the stage before fooled any (a screen: whatever it did).
    Where the earlier attacks left nothing to find, the rest of the budget is not spent; where
    they missed something (masked gradients), all of it is. Decided over the whole cell, so
    the numbers do not depend on the batch size."""
    left, done, fooled_any = correct, [], True
    for stage in stage_plan(attack, config):
        if not (fooled_any or stage.always):
            break
        cell = measure_cell(crafter, target, x, y, left, attack, norm, eps, stage.config,
                            threat, batch, report, skip=stage.skip)  # fmt: skip
        done.append(cell)
        fooled_any = int(cell.robust.sum()) < int(left.sum())
        left = cell.robust
    return merge_stages(done, correct, config, GALLERY_SIZE)


def _attack_batch(
    crafter: Classifier,
    target: Classifier,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    attack: str,
    norm: str,
    eps: float,
    config: AuditConfig,
    threat: str,
    device: torch.device,
    skip: int = 0,
) -> tuple[torch.Tensor, torch.Tensor | None, list[Example], int, torch.Tensor | None]:
    """Samples ``idx`` attacked: (still correct, perturbation sizes of the fooled ones, gallery
    candidates, forward passes, queries per sample of a query attack)."""
    stats = AttackStats()
    xb = x[idx].to(device)
    adv = craft(
        attack,
        crafter if isinstance(crafter, TorchClassifier) else None,
        target,
        xb,
        y[idx].to(device),
        eps,
        norm,
        config,
        threat != "transfer",  # early stop; transfer examples are stronger at full strength
        sample_seeds(config.seed, idx),
        stats,
        skip,
    )
    predicted = target.labels(adv).cpu()
    still = predicted == y[idx]
    fooled = ~still
    used = stats.queries.cpu() if getattr(stats, "queries", None) is not None else None
    if not fooled.any():
        return still, None, [], stats.forward, used
    size = perturbation_size(adv[fooled.to(adv.device)], xb[fooled.to(xb.device)], norm).cpu()
    gallery = [
        Example(xb[j].cpu(), adv[j].cpu(), int(y[idx][j]), int(predicted[j]))
        for j in fooled.nonzero().squeeze(1)[:GALLERY_SIZE].tolist()
    ]
    return still, size, gallery, stats.forward, used


def sample_seeds(seed: int, idx: torch.Tensor) -> torch.Tensor:
    """One seed per sample from the audit's seed and the sample's position: a sample's random
    start is the same in whatever batch it is attacked."""
    return (seed % 2**32) * 2**32 + idx.cpu().long()


def per_class(hits: torch.Tensor, y: torch.Tensor) -> dict[int, tuple[int, float]]:
    """label -> (count, accuracy)."""
    out = {}
    for label in torch.unique(y).tolist():
        mask = y == label
        out[int(label)] = (int(mask.sum()), int(hits[mask].sum()) / int(mask.sum()))
    return out


def probe(
    attackers: Attackers,
    x: torch.Tensor,
    y: torch.Tensor,
    correct: torch.Tensor,
    config: AuditConfig,
    batch: BatchPlan | int,
) -> Probes:
    """Gradients, output kind, randomness and a very-large-eps attack, on the white-box model."""
    target = attackers.target
    if not isinstance(target, TorchClassifier):
        return Probes()
    idx = correct.nonzero().squeeze(1)[:PROBE_SAMPLES]
    if idx.numel() == 0:
        return Probes()
    plan = batch if isinstance(batch, BatchPlan) else BatchPlan(batch, batch, "", "fixed")
    grads: list[torch.Tensor] = []
    outputs: list[torch.Tensor] = []
    changes: list[float] = []

    def work(start: int, stop: int) -> None:
        xs, ys = x[idx[start:stop]].to(target.device), y[idx[start:stop]].to(target.device)
        with attack_mode(target.module):  # gradients as the attacks see them (BPDA/EOT included)
            grad, logits = input_gradient(target.crafting_module, xs, ys, targeted=False)
            # several draws: a random transform that draws once per batch may repeat itself
            first, *again = (target.module(xs).detach() for _ in range(RANDOM_DRAWS))
        change = max(float((other - first).abs().max()) for other in again)
        grads.append(grad.flatten(1).cpu())
        outputs.append(logits.cpu())
        changes.append(change)

    in_batches(plan, len(idx), work, torch.device(target.device))
    flat, logits = torch.cat(grads), torch.cat(outputs)
    finite = torch.isfinite(flat).all(dim=1)
    zero = finite & (flat.abs().amax(dim=1) == 0)
    rows = logits.sum(dim=1)
    looks_like_probs = bool(
        (logits >= 0).all()
        and (logits <= 1).all()
        and torch.allclose(rows, torch.ones_like(rows), atol=1e-3)
    )
    norm = "linf" if "linf" in config.norms else config.norms[0]
    large = measure_cell(
        target,
        target,
        x[idx].cpu(),
        y[idx].cpu(),
        torch.ones(len(idx), dtype=torch.bool),
        "pgd",
        norm,
        LARGE_EPS[norm],
        config,
        "white-box",
        plan,
    )
    return Probes(
        zero_gradient_share=float(zero.float().mean()),
        nonfinite_gradient_share=float((~finite).float().mean()),
        outputs_look_like_probabilities=looks_like_probs,
        randomized=max(changes) > 1e-4,
        large_eps=large,
        **defence_record(target, config),
    )


def defence_record(target: TorchClassifier, config: AuditConfig) -> dict:
    """How the audit attacked a defended model (input transformations before a classifier)."""
    from monitor.harden.transforms import DefendedModel

    if not isinstance(target.module, DefendedModel):
        return {}
    return {
        "defence": target.module.adaptations(config.eot_samples),
        "adaptive": config.adaptive,
        "eot_samples": int(getattr(target.crafting_module, "eot_samples", 1)),
    }
