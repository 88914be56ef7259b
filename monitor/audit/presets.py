"""Presets: named sets of attack settings, expanded into an audit's configuration
(``config.merge_levels``) and read back from its settings (``config.preset_of``), never stored
apart.

``quick`` is FGSM + PGD-10 (fast feedback, flatters adversarially trained models by several
points); ``standard`` is gate-grade, AutoAttack's structure (APGD-CE, APGD-T on the DLR loss,
Square on the scores) chained so that each attack runs only on the samples still robust after
the previous ones, the budgets of APGD-T and Square spent in stages (``stages``: APGD-T's top
target at the full 100 steps, the other eight at 25 each; Square's 5000 queries from 500,
doubling while any fools); ``thorough`` adds restarts and queries and spends every budget in
full. ``benchmarks/autoattack.py`` measures
them against AutoAttack.
"""

from __future__ import annotations

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "quick": {
        "attacks": ("fgsm", "pgd"),
        "steps": 10,
        "restarts": 1,
        "chain": False,
    },
    "standard": {
        "attacks": ("apgd", "apgd-t", "square"),
        "restarts": 1,
        "apgd_steps": 100,
        "target_classes": 9,
        "target_stop": 1,
        "target_screen": 25,
        "queries": 5000,
        "query_probe": 500,
        "chain": True,
    },
    "thorough": {
        "attacks": ("apgd", "apgd-t", "square"),
        "restarts": 3,
        "apgd_steps": 100,
        "target_classes": 9,
        "target_stop": 0,
        "queries": 10000,
        "query_probe": 0,
        "chain": True,
    },
}
PRESET_KEYS = (
    "attacks",
    "steps",
    "restarts",
    "apgd_steps",
    "target_classes",
    "target_stop",
    "target_screen",
    "queries",
    "query_probe",
    "chain",
)
GATE_GRADE = ("standard", "thorough")  # presets whose audits a release gate can trust
# how much a preset's numbers can be trusted, to pick a headline score (custom: unknown)
PRESET_RANK = {"custom": 0, "quick": 1, "standard": 2, "thorough": 3}
