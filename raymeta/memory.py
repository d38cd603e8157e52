"""Memory budgets: how much a vmapped population may use, and how many members that buys.

Why: a population's memory is its member count times what one member costs (weights, Adam
moments, gradients, the step's temporaries, its own copy of the task data), so a fixed member
count that is harmless for a 40-parameter sinusoid MLP is tens of gigabytes for a 784-feature
image MLP (issue 17: ``priors fit`` with 4,096-member chunks was killed at 24 GB). Chunks are
therefore sized from a byte budget: by default a safe share (``BUDGET_SHARE``) of the memory
available now (the free device memory on CUDA; at most ``CPU_BUDGET_CAP`` on the CPU, where
larger chunks are no faster), or what the user gives (``--memory-budget 4GB``).

``parse_size`` reads the flag; ``available_bytes`` and ``default_budget`` size the default;
``member_bytes`` and ``chunk_members`` are the pure arithmetic, unit-tested with made-up sizes.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from raymeta import checks
from raymeta.errors import ConfigError

BUDGET_SHARE = 0.4  # of the available memory: room for the process itself, its peers, the OS
# The default's ceiling on the CPU: there a population step is bound by memory bandwidth and
# its time grows linearly with its members once a chunk holds a few dozen (issue 17 item 5a:
# 85% of a 128-member step of the 784-feature MLP is the elementwise update), so a larger
# chunk only costs memory. On CUDA larger chunks keep the device busy: no ceiling there.
CPU_BUDGET_CAP = 2 << 30
# Copies of a member's parameters alive at the peak of a training step, measured on the
# 784-128-128-5 MLP (``BENCHMARKS.md``, issue 17 item 5a): weights, both Adam moments, the new
# weights and moments of the step, the gradients, the update's temporaries, the copy a partly
# finished population trains, and a best snapshot.
PARAM_COPIES = 16
# Per activation element of one forward: the output, the saved input of the backward and its
# gradient, with room for the loss's temporaries.
ACTIVATION_COPIES = 4
DATA_COPIES = 2  # each member's task data: the chunk's gathered copy and a partial subset's
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "m": 1 << 20,
    "g": 1 << 30,
    "t": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 1 << 10,
    "mib": 1 << 20,
    "gib": 1 << 30,
    "tib": 1 << 40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$")


def parse_size(text: object, what: str = "") -> int:
    """Bytes from ``512MB`` / ``4GB`` (decimal), ``4GiB`` / ``4G`` (binary) or a plain count
    (a config file's integer too); anything else, or less than one byte, is a one-line
    ``ConfigError`` (prefixed with ``what``)."""
    head = f"{what}: " if what else ""
    m = None if isinstance(text, bool) else _SIZE.match(str(text).lower())
    if m is None or m.group(2) not in _UNITS:
        raise ConfigError(f"{head}cannot read {text!r} as a size (use e.g. 512MB, 4GB or 4GiB)")
    value = float(m.group(1)) * _UNITS[m.group(2)]
    if not math.isfinite(value) or value < 1:
        raise ConfigError(f"{head}{text!r} is less than one byte")
    return int(value)


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _cgroup_room() -> int | None:
    """What this process's cgroup still allows (v2 ``memory.max`` or v1 limit), if limited:
    in a container ``MemAvailable`` describes the host, not the limit the kernel enforces."""
    root = Path("/sys/fs/cgroup")
    for limit, usage in (
        ("memory.max", "memory.current"),
        ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes"),
    ):
        try:
            cap = (root / limit).read_text().strip()
            if cap == "max" or int(cap) >= 1 << 60:
                return None
            return max(0, int(cap) - int((root / usage).read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def available_bytes(device: str = "cpu") -> int:
    """Memory available now: free device memory on CUDA, else the smaller of ``MemAvailable``
    (``psutil`` where /proc/meminfo is missing) and the cgroup's remaining room."""
    if device.startswith("cuda"):
        import torch

        free, _total = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not found:
        try:
            import psutil

            found.append(int(psutil.virtual_memory().available))
        except ImportError:  # no /proc and no psutil: physical memory, an upper bound
            found.append(checks.memory_limit())
    return min(found)


def default_budget(device: str = "cpu", share: float = BUDGET_SHARE) -> int:
    """The default budget: ``share`` of what ``available_bytes`` reports, at most
    ``CPU_BUDGET_CAP`` off CUDA, at least 64 MiB."""
    budget = int(share * available_bytes(device))
    if not device.startswith("cuda"):
        budget = min(budget, CPU_BUDGET_CAP)
    return max(64 << 20, budget)


def member_bytes(
    n_params: int, data_bytes: int, activation_elements: int, element_size: int = 4
) -> int:
    """Estimated peak bytes one population member adds: ``PARAM_COPIES`` copies of its
    parameters and ``ACTIVATION_COPIES`` of one forward's activations at the largest batch it
    runs (the train split in a step, the val split in an evaluation), ``element_size`` bytes
    each, and ``DATA_COPIES`` of its own task data (``data_bytes``: train and val tensors)."""
    for name, v in (
        ("parameter", n_params),
        ("data", data_bytes),
        ("activation", activation_elements),
    ):
        if v < 0:
            raise ValueError(f"member_bytes: negative {name} count {v}")
    weights = PARAM_COPIES * n_params + ACTIVATION_COPIES * activation_elements
    return max(1, weights * element_size + DATA_COPIES * data_bytes)


def chunk_members(budget: int, per_member: int, fixed: int = 0, most: int | None = None) -> int:
    """Members that fit ``budget`` bytes after ``fixed`` bytes (at least one: a population of
    one member is the least any run can do), and at most ``most``."""
    if per_member < 1:
        raise ValueError(f"chunk_members: per-member bytes must be >= 1, got {per_member}")
    n = max(1, (budget - fixed) // per_member)
    return int(n if most is None else max(1, min(n, most)))
