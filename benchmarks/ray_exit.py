"""Seconds of an embedded Ray's start, first tasks and ``ray.shutdown`` inside raymeta's
``ray_context`` (issue 17, BENCHMARKS.md "Issue 17, fifth pass"): the fixed cost every embedded
``raymeta`` command pays. Usage: python benchmarks/ray_exit.py
"""

from __future__ import annotations

import time

import ray

from raymeta.orchestration import ray_runtime


def main() -> None:
    shutdown = ray.shutdown
    took: dict[str, float] = {}

    def timed_shutdown() -> None:
        t = time.perf_counter()
        shutdown()
        took["ray.shutdown"] = time.perf_counter() - t

    ray.shutdown = timed_shutdown  # what ray_context calls on exit
    t0 = time.perf_counter()
    with ray_runtime.ray_context():
        took["ray.init"] = time.perf_counter() - t0

        @ray.remote
        def touch() -> int:
            import torch

            return int(torch.ones(1).item())

        t = time.perf_counter()
        ray.get([touch.remote(), touch.remote()])
        took["first tasks (worker imports)"] = time.perf_counter() - t
        t_exit = time.perf_counter()
    took["context exit"] = time.perf_counter() - t_exit
    print("  ".join(f"{k} {v:.2f}s" for k, v in took.items()))


if __name__ == "__main__":
    main()
