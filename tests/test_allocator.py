"""``raymeta.allocator``: freed tensors' pages stay in the process (counted in page faults,
not timed), and the user's own allocator settings win."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from raymeta.allocator import ENV_SWITCH, user_tunes_allocator

# A child process: optionally keep freed memory, warm up, then count the minor page faults of
# ten allocate-touch-free rounds of a 64 MB tensor (16,384 pages of 4 KiB per round when each
# round gets fresh pages). The warm-up matters: a freed block can sit below a small live one,
# and the aligned allocation of the same size does not fit the hole until neighbouring holes
# merge, so the first rounds may still grow the heap.
_CHILD = textwrap.dedent(
    """
    import json, resource, sys
    import torch
    from raymeta.allocator import in_force, retain_freed_memory
    kept = retain_freed_memory() if sys.argv[1] == "keep" else False
    assert in_force() is kept
    def rounds(n):
        for _ in range(n):
            t = torch.ones(16 << 20)  # 64 MB, every page written
            small = torch.ones(100)  # a live block allocated after the large one
            del t
    rounds(10)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds(10)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    print(json.dumps({"kept": kept, "faults": faults}))
    """
)


def _child(mode: str, **env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    clean.pop(ENV_SWITCH, None)
    clean.update(env)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, mode],
        capture_output=True,
        text=True,
        env=clean,
        check=True,
        timeout=120,
    )
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_memory_is_reused_without_page_faults() -> None:
    default = _child("default")
    kept = _child("keep")
    assert kept["kept"] is True and default["kept"] is False
    # glibc's default: a 64 MB block is mmap'd and unmapped each round, so every round
    # faults its 16,384 pages in again; kept, the heap's pages are reused
    assert int(default["faults"]) > 10 * 16_000  # type: ignore[call-overload]
    assert int(kept["faults"]) < 16_000  # type: ignore[call-overload]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_switch_off_leaves_glibc_alone() -> None:
    off = _child("keep", **{ENV_SWITCH: "0"})
    assert off["kept"] is False
    assert int(off["faults"]) > 10 * 16_000  # type: ignore[call-overload]


@pytest.mark.parametrize(
    ("env", "tuned"),
    [
        ({}, False),
        ({ENV_SWITCH: "1"}, False),
        ({ENV_SWITCH: "0"}, True),
        ({ENV_SWITCH: "off"}, True),
        ({"MALLOC_ARENA_MAX": "2"}, True),
        ({"MALLOC_MMAP_THRESHOLD_": "65536"}, True),
        ({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, True),
        ({"LD_PRELOAD": "  "}, False),
    ],
)
def test_user_settings_win(env: dict[str, str], tuned: bool) -> None:
    assert user_tunes_allocator(env) is tuned


def test_importing_raymeta_leaves_the_allocator_alone() -> None:
    """A library must not change its host's allocator: only raymeta's own processes (the CLI,
    its Ray workers) or an explicit ``raymeta.retain_freed_memory()`` do."""
    code = (
        "import raymeta, raymeta.core.engine, raymeta.finetune.step\n"
        "from raymeta.allocator import in_force\n"
        "print(in_force(), raymeta.retain_freed_memory(), in_force())"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.pop(ENV_SWITCH, None)
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    expected = "False True True" if sys.platform.startswith("linux") else "False False False"
    assert out.stdout.split() == expected.split()
