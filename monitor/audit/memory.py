"""How many samples an attack batch holds: measured against the memory there is, not guessed.

``--batch-size auto`` (the default) runs a probe: one forward and backward pass of the crafting
module on 2 and then 4 samples. The difference of the two measurements, halved, is the memory
one more sample costs (fixed costs such as weights cancel out); on CUDA it is read from the
allocator's peak (``torch.cuda.max_memory_allocated``), on CPU, where no allocator peak can be
reset, from the bytes autograd saves for the backward pass (``saved_tensors_hooks``, distinct
storages counted once) plus the input, its gradient and the logits. The attack's own working set
(clean and adversarial copies, steps, projections) adds ``ATTACK_COPIES`` input-sized tensors.

The budget is the memory available on the crafting device (CUDA: free memory; CPU: the smallest
of MemAvailable, the cgroup's ``memory.max`` minus ``memory.current`` and the address space left
under RLIMIT_AS), capped by ``memory_limit`` minus what the process already holds, times
``SAFETY`` for what the probe does not see (transient gradients in the backward pass, allocator
fragmentation, convolution workspaces). The batch is ``budget // per_sample`` within
[1, ``MAX_BATCH``].

A batch that still runs out of memory (torch.OutOfMemoryError, MemoryError, or the CPU
allocator's "can't allocate memory") is halved and the same samples are tried again, down to one
sample. Attacks draw each sample's random start from its own seed, so the numbers do not depend on
the batch size. On Linux an over-committed CPU process is usually killed by the kernel rather than
refused an allocation; that is why the CPU budget is measured up front.
"""

from __future__ import annotations

import gc
import re
import resource
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from monitor.attacks.core import attack_mode, input_gradient
from monitor.errors import AuditError

SAFETY = 0.5
MAX_BATCH = 1024
FALLBACK_BATCH = 256  # when the probe cannot run or the free memory is unknown
PROBE_SIZES = (2, 4)
ATTACK_COPIES = 8
MB = 2**20
_UNITS = {"": 1, "B": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(I?B)?\s*$", re.IGNORECASE)
_CPU_OOM = ("can't allocate memory", "not enough memory", "out of memory")
# oneDNN (CPU convolutions) reports a failed allocation as this, but also other failures: it
# halves the batch like an out-of-memory error, and is raised as it is at one sample
_MAYBE_OOM = ("could not create a primitive",)
_OOM_TYPES: tuple[type[BaseException], ...] = (
    getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
    MemoryError,
)


@dataclass(frozen=True)
class BatchSize:
    """What was asked for: ``fixed`` samples per batch, or None for auto; ``memory_limit`` in
    bytes caps what the process may hold on the crafting device (auto only)."""

    fixed: int | None = None
    memory_limit: int | None = None

    @staticmethod
    def of(value: BatchSize | int | str | None, memory_limit: int | str | None = None) -> BatchSize:
        """A BatchSize from a CLI or robmon.toml value ("auto", a number, or one already)."""
        if isinstance(value, BatchSize):
            return value
        limit = parse_memory_size(memory_limit) if memory_limit is not None else None
        return BatchSize(parse_batch_size(value), limit)

    @property
    def requested(self) -> int | str:
        return "auto" if self.fixed is None else self.fixed

    def __str__(self) -> str:  # the runner's failure message says "at batch size {this}"
        return str(self.requested)


def parse_batch_size(value: int | str | None) -> int | None:
    """``"auto"`` (or None) -> None; a whole number of at least 1 -> itself."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1:
        raise AuditError(f"--batch-size takes auto or a whole number of at least 1, not {value!r}.")
    return int(text)


def parse_memory_size(value: int | str) -> int:
    """``"4GB"``, ``"512MB"``, ``"1.5GiB"`` or a number of bytes -> bytes (powers of 1024)."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.match(str(value))
    if not match or float(match[1]) <= 0:
        raise AuditError(f"--memory-limit takes a size such as 4GB or 512MB, not {value!r}.")
    return int(float(match[1]) * _UNITS[match[2].upper()])


def batch_settings(table: dict) -> dict:
    """The ``batch_size`` (``"auto"`` or N) and ``memory_limit`` (bytes) keys of an ``[audit]``
    table, validated; the other keys are left to the caller."""
    out: dict = {}
    if "batch_size" in table:
        try:
            fixed = parse_batch_size(table["batch_size"])
        except AuditError:
            raise AuditError(
                'robmon.toml: audit.batch_size must be "auto" or a whole number of at least 1.'
            ) from None
        out["batch_size"] = "auto" if fixed is None else fixed
    if "memory_limit" in table:
        try:
            out["memory_limit"] = parse_memory_size(table["memory_limit"])
        except AuditError:
            raise AuditError(
                'robmon.toml: audit.memory_limit must be a size such as "4GB".'
            ) from None
    return out


@dataclass
class BatchPlan:
    """The batch size in use and how it was chosen; ``halve`` shrinks it on out-of-memory."""

    requested: int | str
    size: int
    device: str
    why: str
    per_sample_mb: float | None = None
    budget_mb: float | None = None
    halvings: int = 0

    def halve(self) -> None:
        """Halve the batch size for the next try; below one sample the audit cannot run."""
        if self.size <= 1:
            per = f" (about {self.per_sample_mb:.1f} MB per sample)" if self.per_sample_mb else ""
            raise AuditError(
                f"out of memory on {self.device} even at batch size 1{per}; free memory on "
                "the device or audit a smaller input size."
            )
        self.size //= 2
        self.halvings += 1

    def record(self) -> dict:
        """The audit's ``run_info["batch"]``: requested, used, per-sample and budget MB,
        halvings, device and one line saying why."""
        return {
            "requested": self.requested,
            "used": self.size,
            "per_sample_mb": _round(self.per_sample_mb),
            "budget_mb": _round(self.budget_mb),
            "halvings": self.halvings,
            "device": self.device,
            "why": self.why
            if not self.halvings
            else f"{self.why}; halved {self.halvings}× after running out of memory",
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def plan_batches(
    request: BatchSize, modules: list[nn.Module], x: torch.Tensor, device: torch.device
) -> BatchPlan:
    """The batch size for attacks crafted with ``modules`` on ``device`` against the audit's
    inputs ``x`` (N×C×H×W): fixed as asked, or measured (auto, at most N)."""
    n = len(x)
    if request.fixed is not None:
        size = min(request.fixed, max(n, 1))
        why = f"fixed at {request.fixed}" + (f" (all {n} samples)" if size < request.fixed else "")
        return BatchPlan(request.fixed, size, str(device), why)
    if n == 0 or not modules:
        return BatchPlan("auto", 1, str(device), "auto: nothing to attack")
    try:
        per_sample = max(per_sample_bytes(m, x[:1], device) for m in modules)
    except (RuntimeError, AssertionError, MemoryError) as err:
        if is_out_of_memory(err):
            return BatchPlan("auto", 1, str(device), "auto: the memory probe ran out of memory")
        size = max(1, min(FALLBACK_BATCH, n))
        return BatchPlan(
            "auto", size, str(device), f"auto: the memory probe failed ({type(err).__name__})"
        )
    budget, source = memory_budget(device, request.memory_limit)
    if budget is None:
        size = max(1, min(FALLBACK_BATCH, n))
        why = f"auto: free memory on {device} unknown, {FALLBACK_BATCH} samples"
        return BatchPlan("auto", size, str(device), why, per_sample / MB)
    size = int(max(1, min(budget // per_sample, MAX_BATCH, max(n, 1))))
    why = (
        f"auto: {per_sample / MB:.2f} MB per sample, budget {budget / MB:.0f} MB "
        f"({SAFETY:g} × {source})"
    )
    return BatchPlan("auto", size, str(device), why, per_sample / MB, budget / MB)


def per_sample_bytes(module: nn.Module, one: torch.Tensor, device: torch.device) -> int:
    """Bytes one more sample costs an attack step of ``module`` (1×C×H×W ``one`` repeated)."""
    small, large = (_step_bytes(module, one.expand(k, *one.shape[1:]), device) for k in PROBE_SIZES)
    graph = max(0.0, (large - small) / (PROBE_SIZES[1] - PROBE_SIZES[0]))
    copies = ATTACK_COPIES * one[0].numel() * 4  # float32 copies of the input
    return int(graph + copies)


def _step_bytes(module: nn.Module, x: torch.Tensor, device: torch.device) -> int:
    """Memory of one input-gradient pass on ``x`` (labels 0: the memory does not depend on them)."""
    x = x.to(device).contiguous()
    y = torch.zeros(len(x), dtype=torch.long, device=device)
    if device.type == "cuda":
        return _cuda_step_bytes(module, x, y, device)
    return _cpu_step_bytes(module, x, y)


def _cuda_step_bytes(
    module: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> int:
    """Peak allocated bytes above the baseline during the pass."""
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with attack_mode(module):
        grad, logits = input_gradient(module, x, y, targeted=False)
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) - base
    del grad, logits
    return peak


def _cpu_step_bytes(module: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Distinct storages autograd saves for the backward pass, plus input, gradient and logits."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            saved[storage.data_ptr()] = max(saved.get(storage.data_ptr(), 0), storage.nbytes())
        except (RuntimeError, NotImplementedError):  # tensors without a plain storage
            saved[id(t)] = t.numel() * t.element_size()
        return t

    with attack_mode(module), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        grad, logits = input_gradient(module, x, y, targeted=False)
    edges = x.numel() * x.element_size() + grad.numel() * grad.element_size()
    return sum(saved.values()) + edges + logits.numel() * logits.element_size()


def memory_budget(device: torch.device, memory_limit: int | None) -> tuple[int | None, str]:
    """``SAFETY`` × the smaller of the free memory and ``memory_limit`` minus what the process
    holds, in bytes, and what bounded it; (None, ...) when nothing is known."""
    free, source = free_bytes(device)
    if memory_limit is not None:
        held = in_use_bytes(device)
        if free is None or memory_limit - held < free:
            free = max(memory_limit - held, 0)
            source = f"memory limit {memory_limit / MB:.0f} MB − {held / MB:.0f} MB in use"
    if free is None:
        return None, source
    return int(SAFETY * free), source


def free_bytes(device: torch.device) -> tuple[int | None, str]:
    """Memory this process could still take on ``device``, and where the figure comes from."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return free, f"{free / MB:.0f} MB free on {device}"
    if device.type != "cpu":
        return None, f"free memory on {device} unknown"
    limits = [(v, name) for v, name in _cpu_limits() if v is not None]
    if not limits:
        return None, "free memory unknown"
    value, name = min(limits)
    return value, f"{value / MB:.0f} MB {name}"


def _cpu_limits() -> list[tuple[int | None, str]]:
    return [
        (_meminfo_available(), "MemAvailable"),
        (_cgroup_room(), "left under the cgroup's memory.max"),
        (_address_space_room(), "left under RLIMIT_AS"),
    ]


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> int | None:
    """cgroup v2 ``memory.max - memory.current`` of this process's group (None: no limit)."""
    try:
        group = Path("/proc/self/cgroup").read_text().strip().splitlines()[0].split(":", 2)[2]
        base = Path("/sys/fs/cgroup") / group.lstrip("/")
        limit = (base / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(int(limit) - int((base / "memory.current").read_text()), 0)
    except (OSError, IndexError, ValueError):
        return None


def _address_space_room() -> int | None:
    """RLIMIT_AS minus the process's virtual size (None: unlimited)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None
    return max(soft - pages * resource.getpagesize(), 0)


def in_use_bytes(device: torch.device) -> int:
    """What the process holds now: CUDA memory reserved by torch, or the resident set on CPU."""
    if device.type == "cuda":
        return torch.cuda.memory_reserved(device)
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()
    except (OSError, IndexError, ValueError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def is_out_of_memory(err: BaseException) -> bool:
    """True for CUDA out-of-memory, MemoryError, and the CPU allocator refusing a tensor."""
    if isinstance(err, _OOM_TYPES):
        return True
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _CPU_OOM)


def _maybe_out_of_memory(err: BaseException) -> bool:
    return isinstance(err, RuntimeError) and any(s in str(err) for s in _MAYBE_OOM)


def in_batches(
    plan: BatchPlan, total: int, work: Callable[[int, int], None], device: torch.device
) -> None:
    """Call ``work(start, stop)`` over ``range(total)`` in batches of ``plan.size``; a batch
    that runs out of memory halves ``plan.size`` and is tried again from the same start.

    ``work`` must keep nothing from a failed try (it is called again for the same samples).
    """
    start = 0
    while start < total:
        stop = min(start + plan.size, total)
        if _attempt(work, start, stop, last=plan.size <= 1):
            start = stop
            continue
        release(device)
        plan.halve()


def _attempt(work: Callable[[int, int], None], start: int, stop: int, last: bool) -> bool:
    """Run one batch; False when it ran out of memory (the error and its frames are dropped
    here, so that their tensors can be freed before the retry)."""
    try:
        work(start, stop)
    except (RuntimeError, MemoryError) as err:
        if is_out_of_memory(err) or (_maybe_out_of_memory(err) and not last):
            return False
        raise
    return True


def release(device: torch.device) -> None:
    """Give memory back after an out-of-memory error: garbage, then CUDA's cached blocks."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
