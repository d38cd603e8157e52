"""One-line messages for a failed Ray Train run that say whether a rerun resumes.

``TorchTrainer.fit()`` fails in three ways: a ``WorkerGroupError`` (a worker raised, or its
process died), a ``ControllerError`` (Ray Train's own logic gave up), or an exception from the
controller actor itself (``ActorDiedError`` when it was killed, ``OutOfMemoryError`` when Ray's
memory monitor killed it). Ray's own message starts with a generic header ("Training failed
due to worker errors:") and hides the cause below it, so the cause is dug out here: the
exception a worker raised (``WorkerGroupError.worker_failures``), or the death of a worker
process. A ``RaymetaError`` raised inside a worker is an input problem that a rerun of the same
command meets again, so it keeps its class and says so; anything else (a crash, a kill, OOM)
resumes from the last checkpoint when the same command is rerun.
"""

from __future__ import annotations

from raymeta.errors import ClusterError, RaymetaError

RESUMES = "rerun the same command to resume from the last checkpoint"
REPEATS = "rerunning the same command will fail the same way"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _root(exc: BaseException) -> BaseException:
    """The exception that started it, through Ray's wrappers (health checks, task errors)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "health_check_failure", None) or getattr(exc, "cause", None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return exc


def _is_oom(exc: BaseException) -> bool:
    import ray.exceptions

    text = str(exc).lower()
    return (
        isinstance(exc, ray.exceptions.OutOfMemoryError)
        or "memory monitor" in text
        or ("out of memory" in text)
    )


def _died(exc: BaseException) -> bool:
    import ray.exceptions

    return isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError))


def _worker_failure(failures: dict[int, Exception]) -> tuple[int, BaseException]:
    """The failure to report: an input error first, then a dead process (whose peers then fail
    in their collective), then the lowest rank."""
    roots = {rank: _root(exc) for rank, exc in failures.items()}

    def order(rank: int) -> tuple[int, int]:
        r = roots[rank]
        return (0 if isinstance(r, RaymetaError) else 1 if _died(r) else 2, rank)

    rank = min(roots, key=order)
    return rank, roots[rank]


def training_failure(exc: BaseException) -> RaymetaError | None:
    """The one-line error for a failed ``fit()``, or None when ``exc`` is not a Ray failure."""
    import ray.exceptions
    import ray.train

    if isinstance(exc, ray.train.WorkerGroupError) and exc.worker_failures:
        rank, root = _worker_failure(exc.worker_failures)
        where = f"meta-training failed on worker {rank}"
        if isinstance(root, RaymetaError):
            return type(root)(f"{where}: {first_line(root)}; {REPEATS}")
        if _died(root):
            what = "was killed by Ray's memory monitor (out of memory)" if _is_oom(root) else "died"
            return ClusterError(f"{where}: its process {what} ({first_line(root)}); {RESUMES}")
        return ClusterError(f"{where}: {type(root).__name__}: {first_line(root)}; {RESUMES}")
    if isinstance(exc, ray.train.ControllerError):
        root = _root(exc.controller_failure)
        return ClusterError(
            f"meta-training failed in the Ray Train controller: {first_line(root)}; {RESUMES}"
        )
    if isinstance(exc, ray.train.TrainingFailedError):
        return ClusterError(f"meta-training failed ({first_line(exc)}); {RESUMES}")
    if isinstance(exc, (ray.exceptions.RayActorError, ray.exceptions.OutOfMemoryError)):
        what = "was killed by Ray's memory monitor (out of memory)" if _is_oom(exc) else "died"
        return ClusterError(
            f"meta-training failed: the Ray Train controller {what} ({first_line(exc)}); {RESUMES}"
        )
    if isinstance(exc, ray.exceptions.RayError):
        return ClusterError(f"meta-training failed: {first_line(exc)}; {RESUMES}")
    return None
