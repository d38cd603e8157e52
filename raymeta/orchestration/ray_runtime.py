"""Starting or joining Ray, with clear errors instead of hangs.

Without an address raymeta starts an embedded local Ray that listens on 127.0.0.1 only (see
``loopback_only``) and shuts it down afterwards. With ``--address`` (or ``RAY_ADDRESS``, which
``ray job submit`` sets for its entrypoint) it joins that cluster; the address is parsed and
probed with a plain TCP connect first, so a malformed or unreachable address is a one-line
``ClusterError`` within the timeout rather than a traceback or a long retry loop inside
``ray.init``. An already-initialised Ray (tests, notebooks) is reused untouched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from raymeta.errors import ClusterError
from raymeta.orchestration import _reaper

DEFAULT_TIMEOUT_S = 30.0
LOOPBACK = "127.0.0.1"
# Ray 2.60's ``ray.init(_node_ip_address="127.0.0.1")`` passes the address through
# ``services.resolve_ip_for_localhost``, which replaces a loopback address by the node's
# routable IP unless ``ray_constants.ENABLE_RAY_CLUSTER`` is false (the switch Ray uses to keep
# macOS/Windows laptops local). Every Ray server binds the node IP (GCS, raylet node and
# object managers, core-worker gRPC servers of the driver and all workers, runtime-env agent),
# so keeping the node IP at 127.0.0.1 keeps all of them on loopback.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def local_init_kwargs(
    *, prestart_workers: bool = True, preload: Sequence[str] = ()
) -> dict[str, Any]:
    """The ``ray.init`` arguments of raymeta's embedded Ray (use inside ``loopback_only``).

    ``prestart_workers=False``: the raylet does not start one idle Python worker per CPU when
    the driver connects. Why: Ray Tune gives its trial actors a ``runtime_env`` (env vars), so
    the raylet starts fresh worker processes for them and never uses those idle ones; on a
    small machine their start-up (each imports Ray) only competes for CPU with the driver and
    the trial processes (``raymeta tune``). Ray tasks (sweeps) do use them: keep the default.

    ``preload``: modules every worker of this Ray imports as it starts, before it takes work
    (the raylet's ``preload_python_modules``). Why: a prestarted worker otherwise imports its
    first task's module (torch and raymeta: ~1.8 s on 2 cores) only when that task arrives;
    preloaded, the import runs while the driver is still starting up and planning."""
    kwargs: dict[str, Any] = {"_node_ip_address": LOOPBACK, "include_dashboard": False}
    system: dict[str, Any] = {}
    if not prestart_workers:
        system["prestart_worker_first_driver"] = False
    if preload:
        system["preload_python_modules"] = list(preload)
    if system:
        kwargs["_system_config"] = system
    return kwargs


@contextlib.contextmanager
def loopback_only() -> Iterator[None]:
    """Keep an embedded Ray started in this block on 127.0.0.1.

    Sets ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` (read when Ray is imported, and inherited by
    the GCS, raylet and workers it spawns) and, since Ray may already be imported, the
    constant it sets. Both are restored on exit, so joining a real cluster later in the same
    process is unaffected; processes started inside the block keep the setting.
    """
    import ray._private.ray_constants as ray_constants

    old_env, old_flag = os.environ.get(_LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = old_flag
        if old_env is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = old_env


def start_local_ray(
    *, prestart_workers: bool = True, preload: Sequence[str] = (), **kwargs: Any
) -> None:
    """``ray.init`` of an embedded, loopback-only Ray; ``kwargs`` add to ``local_init_kwargs``."""
    import ray

    with loopback_only():
        local = local_init_kwargs(prestart_workers=prestart_workers, preload=preload)
        ray.init(**{**local, **kwargs})
        node_ip = ray.util.get_node_ip_address()
    if node_ip != LOOPBACK:  # a Ray upgrade changed the mechanism: never run exposed
        ray.shutdown()
        raise ClusterError(
            f"the embedded Ray bound {node_ip} instead of {LOOPBACK}; refusing to run it exposed"
        )


def _current_cluster_address() -> str | None:
    p = Path("/tmp/ray/ray_current_cluster")
    return p.read_text().strip() or None if p.is_file() else None


def parse_address(address: str) -> tuple[str, int]:
    """``(host, port)`` of a ``HOST:PORT`` / ``[IPv6]:PORT`` GCS address, or a ClusterError."""
    expected = "expected HOST:PORT of the head node's GCS, e.g. 10.0.0.1:6379, or auto"
    if "://" in address:
        scheme = address.split("://", 1)[0].lower()
        if scheme == "ray":
            raise ClusterError(
                f"{address}: ray:// (Ray Client) addresses are not supported; give the head's "
                "GCS address HOST:PORT (default port 6379) or run raymeta with 'ray job submit'"
            )
        raise ClusterError(f"cannot parse Ray address {address!r} ({expected})")
    host, sep, port = address.strip().rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or any(c.isspace() or c in "[]/" for c in host):
        raise ClusterError(f"cannot parse Ray address {address!r} ({expected})")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise ClusterError(f"Ray address {address!r}: the port must be a number in 1..65535")
    return host, int(port)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _probe(address: str, timeout_s: float) -> None:
    host, port = parse_address(address)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except (OSError, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ClusterError(f"cannot reach a Ray cluster at {address}: {reason}") from None


def resolve_address(address: str | None) -> str | None:
    """The cluster to join, or None for an embedded local Ray (also for Ray's ``local``)."""
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
            return None
    address = address.strip()
    if address == "local":
        return None
    if address == "auto":
        found = os.environ.get("RAY_ADDRESS") or _current_cluster_address()
        if not found or found == "auto":
            raise ClusterError(
                "--address auto: no running Ray cluster found on this machine (start one with 'ray start --head')"
            )
        return found
    return address


@contextlib.contextmanager
def ray_context(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    num_gpus: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    quiet: bool = True,
    prestart_workers: bool = True,
    preload: Sequence[str] = (),
) -> Iterator[None]:
    """Run the block with Ray available; only a Ray started here is shut down here.

    An already-initialised Ray is used as it is, so a process that runs several Ray jobs in a
    row (``raymeta bench tune``, ``raymeta quickstart``, a notebook) starts Ray once.
    ``prestart_workers`` and ``preload`` apply to an embedded Ray started here
    (``local_init_kwargs``)."""
    import ray

    if ray.is_initialized():
        yield
        return
    target = resolve_address(address)
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "logging_level": logging.WARNING}
    watcher = None
    if target is None:
        before = _reaper.descendants(os.getpid()) if sys.platform.startswith("linux") else set()
        try:
            with _quiet_auth_notice(quiet):
                start_local_ray(
                    num_cpus=num_cpus,
                    num_gpus=num_gpus,
                    prestart_workers=prestart_workers,
                    preload=preload,
                    **kwargs,
                )
        except ClusterError:
            raise
        except Exception as exc:  # Ray raises bare Exception when its node fails to start
            raise ClusterError(f"could not start a local Ray instance: {_first(exc)}") from None
        if sys.platform.startswith("linux"):  # reap Ray's agents even if this driver is killed
            watcher = _reaper.start(_reaper.descendants(os.getpid()) - before)
    else:
        _probe(target, timeout_s)
        # a cluster on this machine's loopback (raymeta's own embedded Ray, or `ray start
        # --node-ip-address=127.0.0.1`) registered its node at 127.0.0.1: a driver that took
        # the routable IP would wait forever for a raylet there
        local = _is_loopback(parse_address(target)[0])
        try:
            with (
                loopback_only() if local else contextlib.nullcontext(),
                _quiet_auth_notice(quiet),
            ):
                if local or _wants_auto(address):
                    _use_local_token()
                ray.init(address=target, **kwargs)
        except Exception as exc:  # ConnectionError, ValueError (bad port), auth errors...
            raise ClusterError(
                f"cannot connect to the Ray cluster at {target}: {_first(exc)}{_auth_hint()}"
            ) from None
    try:
        yield
    finally:
        if target is None:
            stop_monitor_now()
        ray.shutdown()
        _reaper.stop(watcher)


def stop_monitor_now() -> None:
    """SIGKILL the autoscaler monitor of the embedded Ray this process started, right before
    ``ray.shutdown``.

    Why: ``ray.shutdown`` sends each of its processes SIGTERM and waits up to 1 s for it to
    exit, then SIGKILLs it. The monitor (Ray's autoscaler, which has nothing to scale on one
    machine) outlives that whole second every time: 1.0 of the 1.35 s that ``ray.shutdown``
    took at the end of every embedded ``raymeta`` run (BENCHMARKS.md, issue 17 fifth pass).
    Killing it first is the same end, a second sooner; Ray then finds it gone and moves on.
    Only processes of the node this process started are touched (a joined cluster has none)."""
    try:
        import ray._private.ray_constants as ray_constants
        import ray._private.worker as ray_worker

        node: Any = ray_worker._global_node  # None when this process joined a cluster
        infos = list(node.all_processes.get(ray_constants.PROCESS_TYPE_MONITOR, []))
    except (AttributeError, ImportError):  # another Ray layout: shutdown does it the slow way
        return
    for info in infos:
        proc = info.process
        if proc.poll() is None:
            proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


@contextlib.contextmanager
def _quiet_auth_notice(quiet: bool) -> Iterator[None]:
    """Hide Ray's "Token authentication is enabled" notice while the embedded Ray starts.

    Why: it is printed on stderr at every start, so a one-line ``raymeta: error:`` raised
    later in the run would come with a second line; token auth stays on (the embedded Ray is
    loopback-only and authenticated), and ``quiet=False`` shows the notice again."""
    log = logging.getLogger("ray._private.authentication.authentication_token_setup")
    old = log.level
    if quiet:
        log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(old)


def _wants_auto(address: str | None) -> bool:
    """Whether the user asked for ``auto`` (the argument, else ``RAY_ADDRESS``)."""
    given = address if address is not None else os.environ.get("RAY_ADDRESS")
    return (given or "").strip() == "auto"


def _use_local_token() -> None:
    """Join a cluster on this machine with this machine's Ray token, as ``ray.init("auto")``
    does and an explicit address does not.

    Why: Ray (>= 2.59) starts clusters on one machine (``ray start --head``, an embedded
    ``ray.init``) with token authentication, but a driver given an explicit address sends no
    token unless ``RAY_AUTH_MODE=token`` is set, and fails after ~20 s with "Failed to connect".
    raymeta resolves ``--address auto`` to the explicit address (to probe it first), so without
    this both ``auto`` and ``127.0.0.1:PORT`` failed from a fresh shell. Only for loopback
    addresses and ``auto`` (this machine): the token is a secret, never sent to another host
    unasked. An explicit ``RAY_AUTH_MODE`` is respected; a token-sending driver also joins a
    cluster without authentication."""
    if os.environ.get("RAY_AUTH_MODE") is not None:
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a later Ray moved it: the error's hint still names the fix
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


def _auth_hint() -> str:
    """Why a reachable cluster may refuse this driver: Ray turns token authentication on for
    clusters started on one machine (``ray start``, an embedded ``ray.init``) but a driver
    given an explicit address sends no token unless ``RAY_AUTH_MODE=token`` is set."""
    if os.environ.get("RAY_AUTH_MODE", "").strip().lower() == "token":
        return ""
    return (
        " (if the cluster uses token authentication, as Ray >= 2.59 turns on for clusters "
        "started on one machine: set RAY_AUTH_MODE=token, with the token in RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)"
    )


def _first(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_resources(cpus: float = 0.0, gpus: float = 0.0, what: str = "this run") -> None:
    """Refuse requests the cluster can never satisfy (Ray would otherwise wait forever).
    Needs Ray running; ``check_resources_before_start`` is the same check for the CPUs and
    GPUs of an embedded Ray that is not started yet."""
    import ray

    total = ray.cluster_resources()
    have_cpu, have_gpu = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    if cpus > have_cpu:
        raise ClusterError(f"{what} needs {cpus:g} CPUs but the Ray cluster has {have_cpu:g}")
    if gpus > have_gpu:
        raise ClusterError(f"{what} needs {gpus:g} GPUs but the Ray cluster has {have_gpu:g}")


def embedded_cpus() -> float | None:
    """The CPUs of the embedded Ray that ``ray_context`` would start (it passes no
    ``num_cpus``): ``RAY_OVERRIDE_RESOURCES``'s ``CPU`` where that sets one, else what Ray
    detects on this machine (the container's CPU quota or ``os.cpu_count()``; not the
    process's CPU affinity, which Ray does not read). None where that cannot be told."""
    override = os.environ.get("RAY_OVERRIDE_RESOURCES")
    if override:
        try:
            cpu = json.loads(override).get("CPU")
        except (ValueError, AttributeError):
            return None  # Ray refuses the variable itself when it starts
        ok = isinstance(cpu, (int, float)) and not isinstance(cpu, bool)
        return float(cpu) if ok else None
    try:
        from ray._private.utils import get_num_cpus

        return float(get_num_cpus(override_docker_cpu_warning=True))
    except Exception:  # noqa: BLE001 - a Ray without it: the check after the start remains
        return None


def embedded_gpus() -> float | None:
    """The GPUs of the embedded Ray that ``ray_context`` would start: ``RAY_OVERRIDE_RESOURCES``'s
    ``GPU`` where that sets one, else what Ray's own GPU detection finds on this machine
    (``CUDA_VISIBLE_DEVICES`` respected). None where that cannot be told."""
    override = os.environ.get("RAY_OVERRIDE_RESOURCES")
    if override:
        try:
            gpu = json.loads(override).get("GPU")
        except (ValueError, AttributeError):
            return None
        if gpu is not None:
            ok = isinstance(gpu, (int, float)) and not isinstance(gpu, bool)
            return float(gpu) if ok else None
    try:
        from ray._private.accelerators import get_accelerator_manager_for_resource

        manager = get_accelerator_manager_for_resource("GPU")
        if manager is None:
            return None
        count = manager.get_current_node_num_accelerators()
        visible = manager.get_current_process_visible_accelerator_ids()
        # as Ray counts them (``resource_and_label_spec``): the node's, at most the visible
        return float(count if visible is None else min(count, len(visible)))
    except Exception:  # noqa: BLE001 - a Ray without it: the check after the start remains
        return None


def check_resources_before_start(
    address: str | None, cpus: float, what: str = "this run", gpus: float = 0.0
) -> None:
    """Before ``ray_context(address)``: where it would start an embedded Ray, refuse ``cpus``
    beyond that Ray's CPUs (``embedded_cpus``) and ``gpus`` beyond its GPUs
    (``embedded_gpus``), so the request is one line before any Ray process starts instead of
    after the start (``check_resources``, the same words). Where it would join a cluster
    (``address``, ``RAY_ADDRESS``) or use a Ray already running, nothing is checked here: the
    cluster decides, once joined."""
    ray = sys.modules.get("ray")
    if ray is not None and getattr(ray, "is_initialized", lambda: False)():
        return
    try:
        if resolve_address(address) is not None:
            return
    except ClusterError:
        return  # ``ray_context`` says what is wrong with the address, in its words
    have = embedded_cpus()
    if have is not None and cpus > have:
        raise ClusterError(
            f"{what} needs {cpus:g} CPUs but the embedded local Ray has {have:g} (the CPUs "
            "Ray finds on this machine; join a larger cluster with --address)"
        )
    have_gpu = embedded_gpus() if gpus > 0 else None
    if have_gpu is not None and gpus > have_gpu:
        raise ClusterError(
            f"{what} needs {gpus:g} GPUs but the embedded local Ray has {have_gpu:g} (the GPUs "
            "Ray finds on this machine; join a cluster with GPUs with --address)"
        )
