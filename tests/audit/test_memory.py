"""Memory-aware audits: the batch size is measured against the memory there is, halved on a real
out-of-memory error, and never changes the audit's numbers."""

import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from monitor.audit.config import AuditConfig, audit_defaults
from monitor.audit.measure import Attackers, Measurements, measure
from monitor.audit.memory import ATTACK_COPIES, BatchSize, per_sample_bytes
from monitor.classifiers import TorchClassifier
from monitor.errors import AuditError

CONFIG = AuditConfig(dataset="digits", eps=(0.1,), steps=5, limit=60)


def numbers(m: Measurements) -> tuple:
    """Everything an audit stores from its measurements (not timings, not the batch record)."""
    cells = [
        (
            c.threat,
            c.attack,
            c.norm,
            c.eps,
            c.robust_accuracy,
            c.attack_success_rate,
            c.mean_perturbation,
            c.max_perturbation,
            c.passes,
            c.per_class,
            [(e.label, e.adversarial_label) for e in c.examples],
        )
        for c in [*m.cells, m.probes.large_eps]
    ]
    return m.clean_accuracy, m.per_class_clean, cells, m.probes.zero_gradient_share


def test_per_sample_estimate_is_within_a_factor_2_of_the_activation_bytes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),  # 32×32×32
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),  # 64×16×16
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(64 * 16 * 16, 10),
    ).eval()
    floats = 2 * 32 * 32 * 32 + 2 * 64 * 16 * 16 + 10  # every layer's output (flatten is a view)
    activations = 4 * floats
    attack = 4 * ATTACK_COPIES * 3 * 32 * 32  # input-sized tensors the attack keeps
    estimate = per_sample_bytes(model, torch.rand(1, 3, 32, 32), torch.device("cpu"))
    assert (activations + attack) / 2 <= estimate <= 2 * (activations + attack)
    # weights are not per sample: a 1000-class head (65 MB of weights, saved for the backward
    # pass) adds only its logits and their softmax
    head = nn.Sequential(*list(model)[:-1], nn.Linear(64 * 16 * 16, 1000)).eval()
    more = per_sample_bytes(head, torch.rand(1, 3, 32, 32), torch.device("cpu")) - estimate
    assert 0 < more < 64 * 1024


def test_tiny_memory_limit_gives_small_batches_and_the_same_numbers(trained_cnn, digits) -> None:
    x, y = digits.x[:60], digits.y[:60]
    attackers = Attackers(TorchClassifier("digits-cnn", trained_cnn))
    tiny = measure(attackers, x, y, CONFIG, batch_size=BatchSize(None, memory_limit=1))
    fixed = measure(attackers, x, y, CONFIG, batch_size=64)
    uneven = measure(attackers, x, y, CONFIG, batch_size=7)
    assert tiny.batch["requested"] == "auto" and tiny.batch["used"] == 1
    assert "memory limit 0 MB" in tiny.batch["why"] and tiny.batch["budget_mb"] == 0
    assert tiny.batch["per_sample_mb"] > 0 and tiny.batch["halvings"] == 0
    assert fixed.batch == {
        "requested": 64,
        "used": 60,  # all 60 samples: no batch is bigger than the data
        "per_sample_mb": None,
        "budget_mb": None,
        "halvings": 0,
        "device": "cpu",
        "why": "fixed at 64 (all 60 samples)",
    }
    assert numbers(tiny) == numbers(fixed) == numbers(uneven)
    pgd = next(c for c in fixed.cells if c.attack == "pgd")
    assert 0 < pgd.robust_accuracy < fixed.clean_accuracy  # numbers worth comparing


def test_auto_without_a_limit_fits_the_free_memory(trained_cnn, digits) -> None:
    x, y = digits.x[:40], digits.y[:40]
    m = measure(Attackers(TorchClassifier("digits-cnn", trained_cnn)), x, y, CONFIG)
    per_sample = m.batch["per_sample_mb"]
    assert 0.005 < per_sample < 1.0  # an 8×8 CNN: kilobytes per sample
    assert m.batch["used"] == 40  # all of it fits: capped by the number of samples
    assert m.batch["budget_mb"] > 40 * per_sample
    assert m.batch["why"].startswith("auto: ") and "MB per sample" in m.batch["why"]


# A child process with an address-space limit 120 MB above what it holds: batches of 96 and
# 48 images 3×64×64 cannot be allocated, 24 can (halved twice in ten runs out of ten). It
# prints the batch record and the numbers of the limited run (FGSM, and the probes' large-eps
# PGD with random starts) and of an unlimited run with a fixed batch of 16.
OOM_CHILD = """
import json, resource, sys
import torch
from torch import nn
import monitor.harden.transforms  # imported before the limit (the probes import it)
from monitor.audit.config import AuditConfig
from monitor.audit.measure import Attackers, measure
from monitor.classifiers import TorchClassifier

class Centre(nn.Module):
    def forward(self, x):
        return x - 0.5

# oneDNN convolutions report a failed allocation as "could not create a primitive" and keep
# failing afterwards in the same process; torch's own kernels allocate through its CPU
# allocator, whose error is the one a memory-starved audit sees most
torch.backends.mkldnn.enabled = False
torch.manual_seed(0)
model = nn.Sequential(
    Centre(), nn.Conv2d(3, 32, 3, padding=1, bias=False), nn.ReLU(),
    nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU(),
    nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(64 * 16, 10),
).eval()
x = torch.rand(96, 3, 64, 64)
with torch.no_grad():
    y = model(x).argmax(1)
y[::3] = (y[::3] + 1) % 10  # some wrong clean: not every sample is attacked
config = AuditConfig(dataset="random", attacks=("fgsm",), eps=(0.5 / 255,), steps=2)
attackers = Attackers(TorchClassifier("random-cnn", model))

def summary(m):
    cells = [(c.attack, c.robust_accuracy, c.mean_perturbation, c.passes, c.per_class)
             for c in [*m.cells, m.probes.large_eps]]
    return {"batch": m.batch, "clean": m.clean_accuracy, "cells": cells}

# a few samples first, without a limit: this grows the C stack to the depth the attacks need
# (a stack that cannot grow under RLIMIT_AS is a SIGSEGV, not an error)
measure(attackers, x[:6], y[:6], config, batch_size=2)
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
held = int(open("/proc/self/statm").read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (held + 120 * 2**20, hard))
limited = summary(measure(attackers, x, y, config, batch_size=96))
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
free = summary(measure(attackers, x, y, config, batch_size=16))
print(json.dumps({"limited": limited, "free": free}))
"""


def test_real_out_of_memory_halves_and_gives_the_same_numbers() -> None:
    done = subprocess.run(
        [sys.executable, "-c", OOM_CHILD],
        capture_output=True,
        text=True,
        timeout=300,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    limited, free = out["limited"], out["free"]
    assert limited["batch"]["requested"] == 96 and limited["batch"]["halvings"] >= 1
    assert limited["batch"]["used"] == 96 // 2 ** limited["batch"]["halvings"]
    assert "after running out of memory" in limited["batch"]["why"]
    assert free["batch"]["halvings"] == 0
    assert limited["cells"] == free["cells"] and limited["clean"] == free["clean"]
    fgsm = limited["cells"][0]
    assert 0 < fgsm[1] < limited["clean"]  # some samples fooled, some not


class GreedyBelow(nn.Module):
    """The CNN, but an attack batch (gradients on) of more than ``most`` samples asks the
    allocator for a petabyte: a genuine allocation failure at a batch size a test chooses."""

    def __init__(self, model: nn.Module, most: int) -> None:
        super().__init__()
        self.model, self.most = model, most

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() and len(x) > self.most:
            torch.empty(2**50, dtype=torch.uint8)
        return self.model(x)


def test_allocation_failures_halve_down_to_one_and_then_fail_in_one_sentence(
    trained_cnn, digits
) -> None:
    x, y = digits.x[:60], digits.y[:60]
    greedy = Attackers(TorchClassifier("greedy", GreedyBelow(trained_cnn, 12)))
    halved = measure(greedy, x, y, CONFIG, batch_size=64)
    assert halved.batch["used"] == 7 and halved.batch["halvings"] == 3  # 60 → 30 → 15 → 7
    plain = measure(Attackers(TorchClassifier("plain", trained_cnn)), x, y, CONFIG, batch_size=8)
    assert numbers(halved) == numbers(plain)

    hopeless = Attackers(TorchClassifier("hopeless", GreedyBelow(trained_cnn, 0)))
    with pytest.raises(AuditError) as err:
        measure(hopeless, x, y, CONFIG, batch_size=4)
    assert str(err.value) == (
        "out of memory on cpu even at batch size 1; free memory on the device or audit a "
        "smaller input size."
    )


def test_batch_size_and_memory_limit_settings() -> None:
    assert BatchSize.of("auto") == BatchSize(None, None)
    assert BatchSize.of("32", "1.5GB") == BatchSize(32, 3 * 2**29)
    assert BatchSize.of(None, "512MiB").memory_limit == 512 * 2**20
    assert str(BatchSize.of("auto")) == "auto" and str(BatchSize.of(8)) == "8"
    for bad in ("0", "abc", "-3", "2.5"):
        with pytest.raises(AuditError, match="--batch-size takes auto or a whole number"):
            BatchSize.of(bad)
    with pytest.raises(AuditError, match="--memory-limit takes a size such as 4GB"):
        BatchSize.of("auto", "lots")
    assert audit_defaults({"batch_size": "auto", "memory_limit": "4GB"}) == {
        "batch_size": "auto",
        "memory_limit": 4 * 2**30,
    }
    assert audit_defaults({"batch_size": 128}) == {"batch_size": 128}
    with pytest.raises(AuditError, match=r'audit\.batch_size must be "auto" or a whole number'):
        audit_defaults({"batch_size": 0})
    with pytest.raises(AuditError, match=r'audit\.memory_limit must be a size such as "4GB"'):
        audit_defaults({"memory_limit": "4 potatoes"})


@pytest.mark.parametrize(
    ("option", "value", "needle"),
    [
        ("--batch-size", "0", "--batch-size takes auto or a whole number of at least 1, not '0'."),
        ("--batch-size", "abc", "--batch-size takes auto or a whole number of at least 1"),
        ("--memory-limit", "4 potatoes", "--memory-limit takes a size such as 4GB or 512MB"),
    ],
)
def test_cli_rejects_bad_batch_options_in_one_sentence(home, robmon, option, value, needle):
    result = robmon("audit", "digits-cnn", option, value)
    assert result.code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0]


def test_audit_records_its_batch_and_keeps_its_numbers(demo_home, robmon) -> None:
    args = ("audit", "digits-cnn", "--eps", "0.1", "--limit", "40", "--json")
    small = robmon(*args, "--memory-limit", "1MB")
    assert small.code == 0, small.stderr
    batch = small.json()["run_info"]["batch"]
    assert batch["requested"] == "auto" and batch["used"] == 1 and batch["halvings"] == 0
    assert batch["why"].startswith("auto: ") and "memory limit 1 MB" in batch["why"]
    large = robmon(*args, "--batch-size", "64", "--force")
    assert large.json()["run_info"]["batch"]["used"] == 40  # the 40 samples, not 64

    def cells(result) -> list:
        return [
            (r["attack"], r["eps"], r["robust_accuracy"], r["mean_perturbation"])
            for r in result.json()["results"]
        ]

    assert cells(small) == cells(large)
    shown = robmon("audits", "show", str(small.json()["audit_id"]))
    assert "Batch size: 1 on cpu (auto: " in shown.stdout


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("", BatchSize(None, None)),
        ('[audit]\nbatch_size = 32\nmemory_limit = "2GB"\n', BatchSize(32, 2 * 2**30)),
        ('[audit]\nmemory_limit = "2GB"\n[watch]\nbatch_size = 8\n', BatchSize(8, 2 * 2**30)),
    ],
)
def test_workers_take_watch_then_audit_batch_settings(home, toml, expected) -> None:
    from monitor.config import load_settings
    from monitor.jobs import JobContext
    from monitor.watch import WatchSettings
    from monitor.worker import audit_batch_size

    (home.parent / "robmon.toml").write_text(toml)
    settings = load_settings({"ROBMON_CONFIG": str(home.parent / "robmon.toml")})
    watch = WatchSettings.from_settings(settings)
    context = JobContext(db=None, registry=None, settings=settings, watch=watch, worker="w")
    assert audit_batch_size(context) == expected
