"""Torch process groups that stay on loopback when Ray itself is loopback-only.

Ray Train's ``TorchConfig`` rendezvouses through a ``TCPStore`` hosted by rank 0, and torch's
store server listens on every interface (``::``) whatever ``MASTER_ADDR`` says; gloo and NCCL
then pick an interface from the host name. On raymeta's embedded Ray every worker is on this
machine, so the process group rendezvouses through a ``FileStore`` in a private temporary
directory instead (no listening socket at all) and gloo/NCCL are pinned to the loopback
interface. On a real cluster (node IP not loopback) Ray Train's own ``TorchConfig`` is used.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass
from typing import Any

import ray
from ray.train.torch import TorchConfig
from ray.train.torch.config import (  # Ray-internal helpers of the stock backend we extend
    _set_torch_distributed_env_vars,
    _setup_torch_process_group,
    _TorchBackend,
)

from raymeta.orchestration.ray_runtime import LOOPBACK

LOOPBACK_IFNAME = "lo" if sys.platform.startswith("linux") else "lo0"


def _pin_loopback() -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = LOOPBACK_IFNAME
    os.environ["NCCL_SOCKET_IFNAME"] = LOOPBACK_IFNAME


class _LoopbackTorchBackend(_TorchBackend):
    """``_TorchBackend`` with a FileStore rendezvous and loopback-pinned collectives."""

    def on_start(self, worker_group: Any, backend_config: Any) -> None:
        backend = backend_config.backend or (
            "nccl" if worker_group.get_resources_per_worker().get("GPU", 0) > 0 else "gloo"
        )
        # mkdtemp is 0700: no other user can pre-create or read the store file
        shutil.rmtree(getattr(self, "_store_dir", ""), ignore_errors=True)  # a crashed group's
        self._store_dir = tempfile.mkdtemp(prefix="raymeta-pg-")
        url = "file://" + os.path.join(self._store_dir, uuid.uuid4().hex)
        worker_group.execute(_pin_loopback)
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get(
            [
                worker_group.execute_single_async(
                    i,
                    _setup_torch_process_group,
                    backend=backend,
                    world_rank=i,
                    world_size=len(worker_group),
                    init_method=url,
                    timeout_s=backend_config.timeout_s,
                )
                for i in range(len(worker_group))
            ]
        )

    def on_shutdown(self, worker_group: Any, backend_config: Any) -> None:
        try:
            super().on_shutdown(worker_group, backend_config)
        finally:
            shutil.rmtree(getattr(self, "_store_dir", ""), ignore_errors=True)


@dataclass
class LoopbackTorchConfig(TorchConfig):
    """``TorchConfig`` whose process group never listens off loopback (one node only)."""

    @property
    def backend_cls(self) -> type[_TorchBackend]:
        return _LoopbackTorchBackend


def torch_config(backend: str) -> TorchConfig:
    """The process-group config for this Ray: loopback-only when Ray's node IP is loopback."""
    if ray.util.get_node_ip_address() == LOOPBACK:
        return LoopbackTorchConfig(backend=backend)
    return TorchConfig(backend=backend)
