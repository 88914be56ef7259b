"""Credibility checks: the red flags of gradient masking and broken evaluations.

After Athalye, Carlini & Wagner (ICML 2018), Carlini et al. "On Evaluating Adversarial
Robustness" (2019) and AutoAttack's ``checks.py``. Each check returns ``passed``, ``warning`` or
``skipped`` (not applicable to this audit) with a one-line explanation that carries its numbers.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from monitor.audit.config import LARGE_EPS
from monitor.audit.measure import CellResult, Measurements

PASSED, WARNING, SKIPPED = "passed", "warning", "skipped"
# fgsm_far_above_pgd: FGSM's success rate as a share of PGD's, at an accuracy gap over 0.30.
# Measured (benchmarks/checks.py): ordinary CNNs 0.76 and up at every eps; FGSM-only training
# with catastrophic overfitting 0.34 and below where the gap is over 0.30.
FGSM_MIN_SHARE = 0.5
FGSM_PGD_GAP = 0.30
# near chance: clean accuracy at most 1.5× chance, and at most 0.1 above it (two classes: 0.6)
NEAR_CHANCE, NEAR_CHANCE_MARGIN = 1.5, 0.10
LARGE_EPS_MAX_ACCURACY = 0.05
ZERO_GRADIENT_MAX_SHARE = 0.10
DEFENCE_MAX_GAIN = 0.10  # robust accuracy an input transformation may add over its parent


@dataclass(frozen=True)
class Check:
    name: str
    status: str
    detail: str


def tolerance(n: int) -> float:
    """Sampling slack for comparing two accuracies on n samples."""
    return max(0.02, 3.0 / max(n, 1))


def _cells(m: Measurements, **match: object) -> list[CellResult]:
    return [c for c in m.cells if all(getattr(c, k) == v for k, v in match.items())]


def _pairs(m: Measurements, threat: str = "white-box") -> list[tuple[CellResult, CellResult]]:
    """(FGSM, PGD) cells at the same norm and eps."""
    pgd = {(c.norm, c.eps): c for c in _cells(m, attack="pgd", threat=threat)}
    return [
        (f, pgd[(f.norm, f.eps)])
        for f in _cells(m, attack="fgsm", threat=threat)
        if (f.norm, f.eps) in pgd
    ]


def clean_accuracy_near_chance(m: Measurements) -> Check:
    """A model near chance on clean data is usually fed pixels it does not expect (a wrong
    input contract: scale, layout, mean/std) or a dataset with other labels."""
    name = "clean_accuracy_near_chance"
    if not m.n_classes:
        return Check(name, SKIPPED, "needs the model's number of classes (probabilities).")
    chance = 1 / m.n_classes
    if near_chance(m.clean_accuracy, m.n_classes):
        return Check(
            name,
            WARNING,
            f"clean accuracy {m.clean_accuracy:.3f} is near chance ({chance:.3f} for "
            f"{m.n_classes} classes) on this dataset: check the model's input contract (scale, "
            "layout, mean/std: tag robustness.input) or the dataset's labels.",
        )
    return Check(
        name,
        PASSED,
        f"clean accuracy {m.clean_accuracy:.3f} is well above chance "
        f"({chance:.3f} for {m.n_classes} classes).",
    )


def near_chance(accuracy: float, n_classes: int) -> bool:
    """At most 1.5× chance and at most 0.1 above it (0.15 for 10 classes, 0.6 for 2)."""
    chance = 1 / n_classes
    return accuracy <= min(NEAR_CHANCE * chance, chance + NEAR_CHANCE_MARGIN)


def pgd_weaker_than_fgsm(m: Measurements) -> Check:
    name, tol = "pgd_weaker_than_fgsm", tolerance(m.n)
    pairs = _pairs(m)
    if not pairs:
        return Check(name, SKIPPED, "needs white-box FGSM and PGD at the same eps.")
    bad = [(f, p) for f, p in pairs if p.robust_accuracy > f.robust_accuracy + tol]
    if bad:
        f, p = bad[0]
        return Check(
            name,
            WARNING,
            f"PGD leaves {p.robust_accuracy:.3f} at {p.norm} eps "
            f"{p.eps:g} where one-step FGSM leaves {f.robust_accuracy:.3f}: the "
            "iterative attack is failing (gradient masking or a broken step size).",
        )
    return Check(name, PASSED, f"PGD is at least as strong as FGSM at all {len(pairs)} eps.")


def fgsm_far_above_pgd(m: Measurements) -> Check:
    """FGSM-only adversarial training (catastrophic overfitting) leaves a model that one FGSM
    step barely moves while PGD breaks it: FGSM fools under half as many inputs as PGD. Ordinary
    models are less linear than FGSM assumes too (PGD beats FGSM by 0.33 at eps 0.2 on a plain
    MNIST CNN), but there FGSM still fools most of what PGD fools."""
    name = "fgsm_far_above_pgd"
    pairs = _pairs(m)
    if not pairs or m.clean_accuracy == 0:
        return Check(name, SKIPPED, "needs white-box FGSM and PGD at the same eps.")
    flagged = [
        (f, p)
        for f, p in pairs
        if _fgsm_share(m, f, p) < FGSM_MIN_SHARE
        and f.robust_accuracy - p.robust_accuracy > FGSM_PGD_GAP
    ]
    if flagged:
        f, p = min(flagged, key=lambda fp: _fgsm_share(m, *fp))
        return Check(
            name,
            WARNING,
            f"FGSM leaves {f.robust_accuracy:.3f} but PGD {p.robust_accuracy:.3f} at {f.norm} "
            f"eps {f.eps:g}: one step fools only {_fgsm_share(m, f, p):.0%} as many inputs as "
            "PGD, the mark of FGSM-only adversarial training (catastrophic overfitting) or a "
            "masked gradient.",
        )
    f, p = max(pairs, key=lambda fp: fp[0].robust_accuracy - fp[1].robust_accuracy)
    return Check(
        name,
        PASSED,
        f"largest FGSM-PGD gap {f.robust_accuracy - p.robust_accuracy:.3f} (at eps {f.eps:g}), "
        f"where FGSM fools {_fgsm_share(m, f, p):.0%} as many inputs as PGD (warns under "
        f"{FGSM_MIN_SHARE:.0%} with a gap over {FGSM_PGD_GAP:.2f}).",
    )


def _fgsm_share(m: Measurements, f: CellResult, p: CellResult) -> float:
    """How many inputs FGSM fools per input PGD fools (1.0 when PGD fools none)."""
    fooled_by_pgd = m.clean_accuracy - p.robust_accuracy
    if fooled_by_pgd <= 0:
        return 1.0
    return max(m.clean_accuracy - f.robust_accuracy, 0.0) / fooled_by_pgd


def accuracy_rises_with_eps(m: Measurements) -> Check:
    name, tol = "accuracy_rises_with_eps", tolerance(m.n)
    groups: dict[tuple[str, str, str], list[CellResult]] = {}
    for c in m.cells:
        groups.setdefault((c.threat, c.attack, c.norm), []).append(c)
    for (threat, attack, norm), cells in groups.items():
        cells = sorted(cells, key=lambda c: c.eps)
        for lo, hi in itertools.pairwise(cells):
            if hi.robust_accuracy > lo.robust_accuracy + tol:
                return Check(
                    name,
                    WARNING,
                    f"{threat} {attack} {norm}: robust accuracy rises "
                    f"from {lo.robust_accuracy:.3f} at eps {lo.eps:g} to "
                    f"{hi.robust_accuracy:.3f} at eps {hi.eps:g}; a larger ball "
                    "cannot make a model more robust.",
                )
    return Check(name, PASSED, "robust accuracy never rises with eps.")


def large_eps_accuracy(m: Measurements) -> Check:
    name, cell = "large_eps_accuracy", m.probes.large_eps
    if cell is None:
        return Check(name, SKIPPED, "needs a white-box model.")
    if cell.robust_accuracy > LARGE_EPS_MAX_ACCURACY:
        return Check(
            name,
            WARNING,
            f"PGD at {cell.norm} eps {LARGE_EPS[cell.norm]:g} (where any "
            f"image is reachable) still leaves {cell.robust_accuracy:.3f}; an honest "
            "attack leaves almost nothing, so gradients are not guiding the attack.",
        )
    return Check(
        name,
        PASSED,
        f"PGD at {cell.norm} eps {LARGE_EPS[cell.norm]:g} leaves {cell.robust_accuracy:.3f}.",
    )


def transfer_stronger_than_whitebox(m: Measurements) -> Check:
    name, tol = "transfer_stronger_than_whitebox", tolerance(m.n)
    white = {(c.attack, c.norm, c.eps): c for c in _cells(m, threat="white-box")}
    both = [
        (c, white[(c.attack, c.norm, c.eps)])
        for c in _cells(m, threat="transfer")
        if (c.attack, c.norm, c.eps) in white
    ]
    if not both:
        return Check(name, SKIPPED, "needs white-box and transfer attacks on the same model.")
    bad = [(t, w) for t, w in both if t.robust_accuracy < w.robust_accuracy - tol]
    if bad:
        t, w = bad[0]
        return Check(
            name,
            WARNING,
            f"transfer {t.attack} from a surrogate leaves "
            f"{t.robust_accuracy:.3f} but white-box {w.robust_accuracy:.3f} at "
            f"{t.norm} eps {t.eps:g}: the model's own gradients are misleading.",
        )
    return Check(name, PASSED, "white-box attacks are at least as strong as transfer attacks.")


def zero_gradients(m: Measurements) -> Check:
    name, p = "zero_gradients", m.probes
    if p.zero_gradient_share is None:
        return Check(name, SKIPPED, "needs a white-box model.")
    share = p.zero_gradient_share + (p.nonfinite_gradient_share or 0.0)
    if share > ZERO_GRADIENT_MAX_SHARE:
        return Check(
            name,
            WARNING,
            f"{share:.0%} of correctly classified inputs have a zero or "
            "non-finite input gradient (non-differentiable layers such as rounding, or "
            "saturated outputs): gradient attacks cannot move them.",
        )
    return Check(name, PASSED, f"{share:.1%} of inputs have a zero or non-finite gradient.")


def outputs_are_probabilities(m: Measurements) -> Check:
    name, p = "outputs_are_probabilities", m.probes
    if p.outputs_look_like_probabilities is None:
        return Check(name, SKIPPED, "needs a white-box model.")
    if p.outputs_look_like_probabilities:
        return Check(
            name,
            WARNING,
            "the model's outputs lie in [0, 1] and sum to 1: attacks take "
            "cross-entropy of logits, and a softmax output weakens them.",
        )
    return Check(name, PASSED, "the model returns logits.")


def randomized_model(m: Measurements) -> Check:
    name, p = "randomized_model", m.probes
    if p.randomized is None:
        return Check(name, SKIPPED, "needs a white-box model.")
    if p.randomized and p.eot_samples > 1:
        return Check(
            name,
            PASSED,
            f"the model is randomised; gradients were averaged over {p.eot_samples} draws (EOT).",
        )
    if p.randomized:
        return Check(
            name,
            WARNING,
            "two forward passes on the same inputs disagree: a "
            "randomised model needs expectation over transformation (EOT) attacks.",
        )
    return Check(name, PASSED, "the model is deterministic.")


def defence_attacked_adaptively(m: Measurements) -> Check:
    name, p = "defence_attacked_adaptively", m.probes
    if p.defence is None:
        return Check(name, SKIPPED, "the model applies no input transformation.")
    how = "; ".join(p.defence)
    if p.adaptive:
        return Check(name, PASSED, f"attacked through the defence: {how}.")
    return Check(
        name,
        WARNING,
        f"the defence ({how.replace(' (identity gradient)', '')}) was attacked without BPDA/EOT: "
        "obfuscated gradients make such numbers overstate robustness (Athalye et al. 2018).",
    )


def defence_gain_plausible(m: Measurements) -> Check:
    """An input transformation rarely adds more than a few points of robust accuracy under an
    adaptive attack; much more means the attack did not get through."""
    name, b = "defence_gain_plausible", m.baseline
    if m.probes.defence is None or b is None:
        return Check(name, SKIPPED, "needs a defended version and its parent's matching audit.")
    allowed = max(DEFENCE_MAX_GAIN, 2 * tolerance(m.n))
    gains = [
        (c.robust_accuracy - b.robust[key], c)
        for c in m.cells
        if (key := (c.threat, c.attack, c.norm, c.eps)) in b.robust and c.threat == "white-box"
    ]
    if not gains:
        return Check(name, SKIPPED, f"the audit of {b.label} has no matching white-box cells.")
    gain, cell = max(gains, key=lambda g: g[0])
    where = f"{cell.attack.upper()} {cell.norm} eps {cell.eps:g}"
    if gain > allowed:
        return Check(
            name,
            WARNING,
            f"robust accuracy {cell.robust_accuracy:.3f} under {where} is {gain:+.3f} above "
            f"{b.label}'s: more than an input transformation plausibly gives (at most "
            f"{allowed:.2f}); suspect gradient masking: attack with more steps and restarts, and "
            "look at larger eps (quantising defences resist eps under half their step only).",
        )
    return Check(
        name,
        PASSED,
        f"largest gain over {b.label}: {gain:+.3f} under {where} (at most {allowed:.2f}).",
    )


# attack families: a stronger family taking off more than the noise margin means the weaker
# ones flatter the model (CE-loss gradients misled, or gradients masked altogether)
FAMILIES = {
    "fgsm": "gradient (cross-entropy)",
    "pgd": "gradient (cross-entropy)",
    "apgd": "gradient (cross-entropy)",
    "apgd-t": "gradient (targeted DLR)",
    "fab-t": "gradient (minimal distortion)",
    "square": "query (Square)",
}


def weaker_family_flatters(m: Measurements) -> Check:
    """In a chain: what each later family takes off beyond the earlier ones; standalone: each
    family's lowest robust accuracy against the others'."""
    name, tol = "weaker_family_flatters", tolerance(m.n)
    if len({FAMILIES[c.attack] for c in m.cells if c.threat != "query"}) < 2:
        return Check(name, SKIPPED, "needs attacks of more than one family (--preset standard).")
    found = []
    for (threat, norm, eps), cells in _by_point(m).items():
        best: dict[str, float] = {}
        for c in cells:
            family = FAMILIES[c.attack]
            best[family] = min(best.get(family, 1.0), c.robust_accuracy)
        if len(best) < 2:
            continue
        order = list(dict.fromkeys(FAMILIES[c.attack] for c in cells))
        for i, family in enumerate(order[1:], 1):
            before = min(best[f] for f in order[:i])
            if before - best[family] > tol:
                found.append((before - best[family], threat, norm, eps, order[:i], family))
    if not found:
        return Check(
            name, PASSED, f"no attack family takes more than {tol:.3f} off what the others leave."
        )
    # a chain's result already is the worst case: a stronger gradient loss is news, not a red
    # flag; queries beating gradients are (masked gradients), and so is any gap in a result
    # that reports each attack alone (a criterion on the weaker one would flatter)
    masking = [f for f in found if f[5] == FAMILIES["square"]]
    gap, threat, norm, eps, weaker, stronger = max(masking or found)
    what = (
        f"{stronger} attacks take {gap:.3f} more off than {' and '.join(weaker)} at {threat} "
        f"{norm} eps {eps:g}"
    )
    if masking:
        return Check(
            name,
            WARNING,
            f"{what}: the gradients mislead the gradient attacks (masking); the worst case is "
            "counted, but more queries may find more (--preset thorough).",
        )
    if not m.chained:
        return Check(name, WARNING, f"{what}: the weaker attacks alone flatter this model.")
    return Check(
        name,
        PASSED,
        f"{what} (counted: the chain keeps the worst case); an audit with the weaker ones alone "
        "(the quick preset) would flatter this model by that much.",
    )


def _by_point(m: Measurements) -> dict[tuple[str, str, float], list[CellResult]]:
    groups: dict[tuple[str, str, float], list[CellResult]] = {}
    for c in m.cells:
        if c.threat != "query":
            groups.setdefault((c.threat, c.norm, c.eps), []).append(c)
    return groups


def query_weaker_than_transfer(m: Measurements) -> Check:
    """A black box's query attack should find at least what transfer from a surrogate does."""
    name, tol = "query_weaker_than_transfer", tolerance(m.n)
    transfer: dict[tuple[str, float], float] = {}
    for c in _cells(m, threat="transfer"):
        transfer[(c.norm, c.eps)] = min(transfer.get((c.norm, c.eps), 1.0), c.robust_accuracy)
    both = [(q, transfer[(q.norm, q.eps)]) for q in _cells(m, threat="query")
            if (q.norm, q.eps) in transfer]  # fmt: skip
    if not both:
        return Check(name, SKIPPED, "needs query and transfer attacks on a black box.")
    bad = [(q, t) for q, t in both if q.robust_accuracy > t + tol]
    if bad:
        q, t = bad[0]
        return Check(
            name,
            WARNING,
            f"Square with {q.steps} queries leaves {q.robust_accuracy:.3f} but transfer "
            f"{t:.3f} at {q.norm} eps {q.eps:g}: the query budget is too small or the model's "
            "scores are flattened (rounded, top-1 only); the transfer number is the tighter.",
        )
    return Check(name, PASSED, "query attacks are at least as strong as transfer attacks.")


CHECKS: tuple[Callable[[Measurements], Check], ...] = (
    clean_accuracy_near_chance,
    pgd_weaker_than_fgsm,
    fgsm_far_above_pgd,
    accuracy_rises_with_eps,
    large_eps_accuracy,
    transfer_stronger_than_whitebox,
    zero_gradients,
    outputs_are_probabilities,
    randomized_model,
    defence_attacked_adaptively,
    defence_gain_plausible,
    weaker_family_flatters,
    query_weaker_than_transfer,
)


def run_checks(m: Measurements) -> list[Check]:
    """Every credibility check on one audit's measurements."""
    return [check(m) for check in CHECKS]
