"""``raymeta priors fit --address``: the fit as one Ray task on the cluster's resources.

Why a task and not the driver: under ``ray job submit`` (the KubeRay RayJob manifests) the
driver runs on the head pod, which holds no worker resources; a task asking for ``cpus`` CPUs
and ``gpus`` GPUs is scheduled where they are. The checkpoint goes to the task through the
object store (no shared filesystem needed) and only the priors (plain data) come back: the
driver writes them into the checkpoint, atomically, exactly as a local fit does.

Progress: the task is a streaming generator, so the fit runs in a thread of the task and its
progress calls come back to the driver as they happen (``("fit" | "select", done, total)``),
ending with ``("done", priors dict)``; the driver forwards them to its own progress callbacks.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from typing import Any

from raymeta.allocator import retain_freed_memory
from raymeta.core.checkpoint import MetaCheckpoint
from raymeta.errors import RaymetaError
from raymeta.finetune.fit import PriorFitConfig, fit_priors
from raymeta.priors.artifact import Priors

ProgressFn = Callable[[int, int], None]


def _fit_task(ckpt: MetaCheckpoint, config: PriorFitConfig, threads: int) -> Iterator[Any]:
    """Runs on a Ray worker: the fit in a thread, its progress yielded as it comes."""
    import torch

    torch.set_num_threads(max(1, threads))  # what the task was given, not the node's cores
    retain_freed_memory()  # the worker is raymeta's for its life
    events: queue.Queue[Any] = queue.Queue()
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["priors"] = fit_priors(
                ckpt,
                config,
                progress=lambda d, t: events.put(("fit", d, t)),
                select_progress=lambda d, t: events.put(("select", d, t)),
            ).to_dict()
        except BaseException as exc:  # re-raised in the task, so the driver sees it
            outcome["error"] = exc
        finally:
            events.put(None)

    worker = threading.Thread(target=work, name="raymeta-priors-fit", daemon=True)
    worker.start()
    while (event := events.get()) is not None:
        yield event
    worker.join()
    if "error" in outcome:
        raise outcome["error"]
    yield ("done", outcome["priors"])


def fit_priors_remote(
    ckpt: MetaCheckpoint,
    config: PriorFitConfig,
    *,
    address: str | None,
    cpus: float = 1.0,
    gpus: float = 0.0,
    progress: ProgressFn | None = None,
    select_progress: ProgressFn | None = None,
) -> Priors:
    """``fit_priors(ckpt, config)`` as a Ray task holding ``cpus`` CPUs and ``gpus`` GPUs on
    the cluster at ``address`` (or the Ray already initialised); a ``RaymetaError`` of the fit
    (a bad device, a model too large) is raised here as itself, one line."""
    import ray
    from ray.exceptions import RayTaskError

    from raymeta.orchestration.ray_runtime import check_resources, ray_context

    forward = {"fit": progress, "select": select_progress}
    with ray_context(address):
        check_resources(cpus=cpus, gpus=gpus, what="the priors fit")
        task = ray.remote(_fit_task).options(num_cpus=cpus, num_gpus=gpus, max_retries=0)
        try:
            refs: Any = task.remote(ckpt, config, int(cpus))  # an ObjectRefGenerator
            for ref in refs:
                kind, *rest = ray.get(ref)
                if kind == "done":
                    return Priors.from_dict(rest[0])
                fn = forward.get(kind)
                if fn is not None:
                    fn(*rest)
        except RayTaskError as exc:
            if isinstance(exc.cause, RaymetaError):
                raise exc.cause from None
            raise
    raise RaymetaError("the priors fit task ended without a result")
