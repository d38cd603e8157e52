"""Starting or joining Ray, with clear errors instead of hangs.

Without an address raymeta starts an embedded local Ray bound to 127.0.0.1 and shuts it down
afterwards. With ``--address`` (or ``RAY_ADDRESS``, which ``ray job submit`` sets for its
entrypoint) it joins that cluster; the address is probed with a plain TCP connect first, so an
unreachable cluster is a one-line ``ClusterError`` within the timeout rather than a long retry
loop inside ``ray.init``. An already-initialised Ray (tests, notebooks) is reused untouched.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from raymeta.errors import ClusterError

DEFAULT_TIMEOUT_S = 30.0


def _current_cluster_address() -> str | None:
    p = Path("/tmp/ray/ray_current_cluster")
    return p.read_text().strip() or None if p.is_file() else None


def _probe(address: str, timeout_s: float) -> None:
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(
            f"cannot parse Ray address {address!r} (expected HOST:PORT, ray://HOST:PORT or auto)"
        )
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            pass
    except OSError as exc:
        raise ClusterError(
            f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}"
        ) from None


def resolve_address(address: str | None) -> str | None:
    """The cluster to join, or None for an embedded local Ray."""
    if address is None:
        address = os.environ.get("RAY_ADDRESS") or None
        if address is None:
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
) -> Iterator[None]:
    """Run the block with Ray available; only a Ray started here is shut down here."""
    import ray

    if ray.is_initialized():
        yield
        return
    target = resolve_address(address)
    kwargs: dict[str, Any] = {"log_to_driver": not quiet, "logging_level": logging.WARNING}
    if target is None:
        try:
            ray.init(
                num_cpus=num_cpus,
                num_gpus=num_gpus,
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                **kwargs,
            )
        except Exception as exc:  # Ray raises bare Exception when its node fails to start
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ClusterError(f"could not start a local Ray instance: {first}") from None
    else:
        if not target.startswith("ray://"):
            _probe(target, timeout_s)
        try:
            ray.init(address=target, **kwargs)
        except (ConnectionError, TimeoutError, RuntimeError) as exc:
            raise ClusterError(
                f"cannot connect to the Ray cluster at {target}: {str(exc).splitlines()[0]}"
            ) from None
    try:
        yield
    finally:
        ray.shutdown()


def check_resources(cpus: float = 0.0, gpus: float = 0.0, what: str = "this run") -> None:
    """Refuse requests the cluster can never satisfy (Ray would otherwise wait forever)."""
    import ray

    total = ray.cluster_resources()
    have_cpu, have_gpu = float(total.get("CPU", 0.0)), float(total.get("GPU", 0.0))
    if cpus > have_cpu:
        raise ClusterError(f"{what} needs {cpus:g} CPUs but the Ray cluster has {have_cpu:g}")
    if gpus > have_gpu:
        raise ClusterError(f"{what} needs {gpus:g} GPUs but the Ray cluster has {have_gpu:g}")
