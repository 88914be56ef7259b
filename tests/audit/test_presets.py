"""Presets: what each one runs, how levels of settings combine, hashes that stay put for old
audits and change where the numbers change, and the preset read back from stored audits."""

from dataclasses import replace

import numpy as np
import pytest

from monitor.audit.config import (
    AuditConfig,
    audit_defaults,
    config_from,
    merge_levels,
    preset_text,
    stored_preset,
)
from monitor.audit.presets import PRESETS
from monitor.datasets import dataset_digest
from monitor.errors import AuditError

# the hash of AuditConfig(dataset="digits") before presets existed: quick audits keep it
QUICK_DIGITS_HASH = "937de1feabadc07789485c4a8c01adbac070e1962ceb6a3ada705415bd2e9c4f"
# standard on digits before APGD-T screened its targets after the first (its audits keep this
# hash and read back as custom), and since
OLD_STANDARD_DIGITS_HASH = "a5004e9a10b542702e8e0b1ca5a234a4ceb45fc08823e06b9542c0260fc680d7"
STANDARD_DIGITS_HASH = "39d9f69eafd26aa6b5eeee8481d3a253b476aa066c1d34057a06132fe631022e"
THOROUGH_DIGITS_HASH = "4e590b86c16ea57fc3237d8ebb1c6740651bbc19d3d18df76d7caac122d18971"


def test_standard_is_autoattacks_structure_in_its_order():
    config = config_from({"preset": "standard"}, {"dataset": "digits"})
    assert config.ordered() == ("apgd", "apgd-t", "square")
    assert config.chain and config.apgd_steps == 100 and config.target_classes == 9
    assert config.queries == 5000 and config.preset == "standard"
    assert [a for a, _, e in config.cells() if e == 0.1] == ["apgd", "apgd-t", "square"]
    assert preset_text(config).startswith("standard (gate-grade): APGD-CE-100 → APGD-T-100")


def test_standard_screens_apgd_t_targets_after_the_first_and_thorough_runs_them_all():
    config = config_from({"preset": "standard"}, {"dataset": "digits"})
    assert (config.target_stop, config.target_screen) == (1, 25)
    assert config.hash() == STANDARD_DIGITS_HASH
    assert "APGD-T-100 (9 targets; after the first, 25 steps each) → Square" in preset_text(config)
    # before: three targets, then one at a time while the one before fools any
    before = replace(config, target_stop=3, target_screen=0)
    assert before.hash() == OLD_STANDARD_DIGITS_HASH and before.preset == "custom"
    assert "target_screen" not in before.canonical()
    assert stored_preset(before.canonical()) == "custom"
    assert stored_preset(config.canonical()) == "standard"
    thorough = config_from({"preset": "thorough"}, {"dataset": "digits"})
    assert thorough.target_screen == 0 and thorough.hash() == THOROUGH_DIGITS_HASH
    # no APGD-T, no screen: the default audit keeps its hash whatever the setting says
    assert AuditConfig(dataset="digits", target_screen=25).hash() == QUICK_DIGITS_HASH
    with pytest.raises(AuditError, match="--target-screen must be 0"):
        AuditConfig(dataset="digits", target_screen=-1)
    with pytest.raises(AuditError, match=r"audit\.target_screen must be an integer"):
        audit_defaults({"target_screen": "25"})


def test_the_default_audit_is_quick_and_keeps_its_hash():
    config = AuditConfig(dataset="digits")
    assert config.preset == "quick" and config.hash() == QUICK_DIGITS_HASH
    assert config_from({"preset": "quick"}, {"dataset": "digits"}).hash() == QUICK_DIGITS_HASH
    assert "apgd_steps" not in config.canonical() and "queries" not in config.canonical()
    assert preset_text(config) == "quick (fast feedback, not gate-grade): FGSM + PGD-10"


def test_a_preset_above_replaces_the_attacks_below_and_attacks_above_replace_a_preset():
    # [audit] says FGSM only; the command line says --preset standard: standard runs
    config = config_from({"attacks": ("fgsm",), "dataset": "digits"}, {"preset": "standard"})
    assert config.preset == "standard"
    # the watch's preset is thorough; [watch.config.NAME] names its own attacks: no restarts
    # or chaining of thorough leak into them
    config = config_from({"preset": "thorough"}, {"attacks": ("fgsm", "pgd"), "dataset": "d"})
    assert config.preset == "quick" and config.restarts == 1 and not config.chain
    # a setting above a preset changes it: custom, and a different audit
    more = config_from({"preset": "standard"}, {"dataset": "digits", "queries": 100})
    assert more.preset == "custom"
    assert more.hash() != config_from({"preset": "standard", "dataset": "digits"}).hash()


def test_settings_of_attacks_an_audit_does_not_run_leave_its_hash_alone():
    base = AuditConfig(dataset="digits")
    assert AuditConfig(dataset="digits", queries=10, apgd_steps=3).hash() == base.hash()
    apgd = AuditConfig(dataset="digits", attacks=("apgd",))
    assert AuditConfig(dataset="digits", attacks=("apgd",), apgd_steps=10).hash() != apgd.hash()
    assert apgd.steps_of("apgd") == 100  # APGD's own budget, not PGD's 10 steps


def test_unknown_presets_are_one_sentence():
    with pytest.raises(AuditError, match="unknown preset 'fast'; choose from quick"):
        merge_levels({"preset": "fast"})
    with pytest.raises(AuditError, match=r"audit\.preset must be one of quick, standard"):
        audit_defaults({"preset": "fast"})
    with pytest.raises(AuditError, match="at least 1"):
        AuditConfig(dataset="digits", queries=0)


@pytest.mark.parametrize("name", list(PRESETS))
def test_the_preset_is_read_back_from_a_stored_configuration(name):
    config = config_from({"preset": name}, {"dataset": "digits", "limit": 50, "eps": (0.1,)})
    assert stored_preset(config.canonical()) == name
    assert stored_preset({"attacks": ["fgsm"], "steps": 10, "restarts": 1}) == "custom"


def test_dataset_digest_follows_the_contents_not_the_path(tmp_path):
    path = tmp_path / "data.npz"
    rng = np.random.default_rng(0)
    x = rng.random((20, 1, 8, 8), dtype=np.float32)
    np.savez(path, x=x, y=np.arange(20) % 10)
    first = dataset_digest(str(path))
    np.savez(path, x=x, y=(np.arange(20) + 1) % 10)  # new labels, same path
    assert dataset_digest(str(path)) != first
    np.savez(path, x=x, y=np.arange(20) % 10)
    assert dataset_digest(str(path)) == first
    folder = tmp_path / "images"
    (folder / "a").mkdir(parents=True)
    (folder / "a" / "1.png").write_bytes(b"one")
    before = dataset_digest(str(folder))
    (folder / "a" / "2.png").write_bytes(b"two")
    assert dataset_digest(str(folder)) != before
    assert dataset_digest("digits") is None


def test_a_policy_without_a_preset_gates_on_standard_and_the_example_names_it():
    from pathlib import Path

    from monitor.gate.policy import load_policy, parse_policy
    from monitor.watch import WatchSettings

    bare = parse_policy({"audit": {"dataset": "digits"}}, "")
    assert bare.audit_config(None).preset == "standard"
    named = parse_policy({"audit": {"dataset": "digits", "attacks": ["fgsm", "pgd"]}}, "")
    assert named.audit_config(None).preset == "quick"
    root = Path(__file__).resolve().parents[2]
    example = load_policy(root / "docs/examples/gate-policy.toml")
    assert example.audit_config(None).preset == "standard"
    watch = WatchSettings()
    assert (watch.preset_for("registry-poll"), watch.preset_for("alias-moved")) == ("quick",) * 2
    assert watch.preset_for("nightly-sweep") == "standard"
