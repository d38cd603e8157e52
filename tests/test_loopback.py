"""The embedded Ray that raymeta starts listens on loopback only and dies with its driver, and
bad ``--address`` values are one-line errors.

The test session already shares a Ray instance, so the embedded Ray is started by
``ray_context`` in a fresh interpreter that runs real work (Ray tasks, an actor, and a 2-worker
torch process group through the same loopback ``TorchConfig`` Ray Train uses), and lists the
listening TCP sockets of itself and every process it spawned while Ray is up. Its workers
preload a module (``ray_context(preload=...)``, what a sweep's embedded Ray does), which a task
finds imported.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from raymeta.errors import ClusterError
from raymeta.orchestration.ray_runtime import parse_address, resolve_address

PROBE = textwrap.dedent(
    """
    import json, os, psutil, ray
    from raymeta.orchestration.ray_runtime import ray_context

    def listening():
        me = psutil.Process()
        found = set()
        for p in [me, *me.children(recursive=True)]:
            try:
                found |= {(p.name(), c.laddr.ip, c.laddr.port)
                          for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
            except psutil.Error:
                pass
        return found

    # workers import the preloaded module as they start (the sweep's ``backends.PRELOAD``)
    with ray_context(num_cpus=2, preload=("raymeta.orchestration.sweep.batch",)):
        import torch, torch.distributed as dist
        from ray.train import ScalingConfig, RunConfig
        from ray.train.torch import TorchTrainer
        from raymeta.orchestration.meta_train._local_torch import torch_config
        from raymeta.orchestration.ray_runtime import LOOPBACK

        seen = set()
        def loop(config):
            t = torch.ones(2)
            dist.all_reduce(t)
            assert t.tolist() == [2.0, 2.0]
            here = sorted((c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections("inet")
                          if c.status == psutil.CONN_LISTEN)
            rank = ray.train.get_context().get_world_rank()
            with open(os.path.join(os.environ["PROBE_STORAGE"], f"rank{rank}.json"), "w") as f:
                json.dump(here, f)

        @ray.remote
        def task(x):
            return x + 1

        @ray.remote
        def preloaded():
            import sys
            return "raymeta.orchestration.sweep.batch" in sys.modules

        @ray.remote(num_cpus=0)
        class Echo:
            def ping(self):
                return os.getpid()

        assert ray.get([task.remote(i) for i in range(4)]) == [1, 2, 3, 4]
        actor = Echo.remote()
        ray.get(actor.ping.remote())
        seen |= listening()
        node_ip = ray.util.get_node_ip_address()
        cfg = torch_config("gloo")
        out = {"node_ip": node_ip, "config": type(cfg).__name__}
        out["preloaded"] = ray.get([preloaded.remote() for _ in range(2)])
        if os.environ.get("PROBE_TRAIN"):
            TorchTrainer(
                loop, torch_config=cfg, scaling_config=ScalingConfig(num_workers=2),
                run_config=RunConfig(storage_path=os.environ["PROBE_STORAGE"], name="probe"),
            ).fit()
            out["worker"] = [json.load(open(os.path.join(os.environ["PROBE_STORAGE"], f"rank{r}.json")))
                             for r in range(2)]
        seen |= listening()
        out["sockets"] = sorted(seen)
    print("RESULT " + json.dumps(out))
    """
)


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _probe(tmp_path: Path, train: bool) -> dict[str, Any]:
    drop = ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    env["PROBE_STORAGE"] = str(tmp_path)
    if train:
        env["PROBE_TRAIN"] = "1"
    p = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=240, env=env
    )
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
    assert p.returncode == 0 and lines, p.stderr[-3000:]
    got: dict[str, Any] = json.loads(lines[0][len("RESULT ") :])
    assert got["node_ip"] == "127.0.0.1" and got["config"] == "LoopbackTorchConfig"
    assert got["preloaded"] == [True, True]  # imported by the workers before any task asked
    names = {name for name, _, _ in got["sockets"]}
    # the check must see Ray's own servers, not just an empty list
    assert {"gcs_server", "raylet"} <= names and len(got["sockets"]) >= 5, got
    exposed = [s for s in got["sockets"] if not _loopback(s[1])]
    assert exposed == [], exposed
    return got


def test_embedded_ray_listens_on_loopback_only(tmp_path: Path) -> None:
    """GCS, raylet, runtime-env agent, the driver's and the workers' gRPC servers."""
    got = _probe(tmp_path, train=False)
    names = {name for name, _, _ in got["sockets"]}
    assert any(n.startswith("ray::") for n in names), names  # a worker's core-worker server


@pytest.mark.slow
def test_train_process_group_listens_on_loopback_only(tmp_path: Path) -> None:
    got = _probe(tmp_path, train=True)
    # a Train worker with a live gloo process group: its sockets are loopback too (no TCPStore)
    for rank in got["worker"]:
        assert rank and all(_loopback(ip) for ip, _ in rank), got["worker"]


@pytest.mark.parametrize(
    ("address", "needle"),
    [
        ("ray://10.0.0.1:10001", "ray:// (Ray Client) addresses are not supported"),
        ("RAY://head:10001", "ray:// (Ray Client) addresses are not supported"),
        ("http://head:8265", "cannot parse Ray address"),
        (":", "cannot parse Ray address"),
        ("head", "cannot parse Ray address"),
        (":6379", "cannot parse Ray address"),
        ("a b:6379", "cannot parse Ray address"),
        ("127.0.0.1:99999", "port must be a number in 1..65535"),
        ("127.0.0.1:0", "port must be a number in 1..65535"),
        ("[::1]:x", "port must be a number in 1..65535"),
        ("head:", "port must be a number in 1..65535"),
        ("head:٣", "port must be a number in 1..65535"),
    ],
)
def test_bad_addresses_are_one_line_cluster_errors(address: str, needle: str) -> None:
    with pytest.raises(ClusterError) as info:
        parse_address(address)
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_address_forms() -> None:
    assert parse_address("[::1]:6379") == ("::1", 6379)
    assert parse_address(" 10.0.0.1:6379 ") == ("10.0.0.1", 6379)
    assert resolve_address("local") is None
    with pytest.raises(ClusterError, match="cannot parse"):
        parse_address("")


def test_killed_driver_leaves_no_ray_process_behind() -> None:
    """Without the watcher Ray's dashboard and runtime-env agents outlive a SIGKILLed driver
    by ~62 s (a 60 s publish to the dead GCS); with it every process is gone in seconds."""
    import signal
    import time

    import psutil

    code = (
        "import time\nfrom raymeta.orchestration.ray_runtime import ray_context\n"
        "with ray_context(num_cpus=1):\n    print('up', flush=True)\n    time.sleep(300)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    driver = subprocess.Popen(
        [sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, text=True
    )
    tree: list[psutil.Process] = []
    try:
        assert driver.stdout is not None and driver.stdout.readline().strip() == "up"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # wait for the raylet to have started its agents
            tree = psutil.Process(driver.pid).children(recursive=True)
            if sum("Agent" in p.name() for p in tree) >= 2:
                break
            time.sleep(0.2)
        names = {p.name() for p in tree}
        assert {"gcs_server", "raylet", "ray::DashboardAgent", "ray::RuntimeEnvAgent"} <= names
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        t0 = time.monotonic()
        _, alive = psutil.wait_procs(tree, timeout=20)
        assert alive == [], [(p.pid, p.name()) for p in alive]
        assert time.monotonic() - t0 < 20
    finally:
        driver.kill()
        for p in tree:  # only the processes this test's driver started
            with contextlib.suppress(psutil.Error):
                p.kill()


JOIN = textwrap.dedent(
    """
    import sys, ray
    from raymeta.orchestration.ray_runtime import ray_context

    with ray_context(sys.argv[1]):
        print("CPUS", ray.cluster_resources()["CPU"])
    """
)


@pytest.mark.parametrize("how", ["auto", "explicit"])
def test_joins_a_token_cluster_on_this_machine_from_a_fresh_shell(
    ray_session: None, how: str
) -> None:
    """Ray (>= 2.59) starts clusters on one machine with token authentication; a driver that
    gives ray.init an explicit address sends no token unless RAY_AUTH_MODE=token is set, and
    failed after ~20 s with "Failed to connect" (raymeta resolves ``auto`` to the explicit
    address, so both forms failed). From a shell without RAY_AUTH_* both now join with this
    machine's token."""
    import ray

    gcs = ray.get_runtime_context().gcs_address
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS"))}
    if how == "auto":
        env["RAY_ADDRESS"] = gcs
    out = subprocess.run(
        [sys.executable, "-c", JOIN, "auto" if how == "auto" else gcs],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "CPUS 2.0" in out.stdout


MONITOR = textwrap.dedent(
    """
    import ray, ray._private.ray_constants as rc, ray._private.worker as w
    from raymeta.orchestration.ray_runtime import ray_context, stop_monitor_now

    with ray_context(num_cpus=1):
        node = w._global_node
        mon = node.all_processes[rc.PROCESS_TYPE_MONITOR][0].process
        others = [
            i.process for k, v in node.all_processes.items() for i in v
            if k != rc.PROCESS_TYPE_MONITOR
        ]
        alive = mon.poll() is None
        stop_monitor_now()
        print("MONITOR", alive, mon.poll(), flush=True)
        print("WORKS", ray.get(ray.remote(lambda: 41 + 1).remote()), flush=True)
    print("AFTER", sorted({p.poll() is None for p in others}), flush=True)
    """
)


def test_embedded_ray_exit_kills_the_monitor_first() -> None:
    """``stop_monitor_now`` (which ``ray_context`` runs before ``ray.shutdown``: that gives the
    embedded Ray's autoscaler monitor a 1 s SIGTERM grace it always uses up) SIGKILLs only the
    monitor: Ray still runs tasks, then exits with every process it started gone."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", MONITOR], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-2000:]
    lines = dict(ln.split(" ", 1) for ln in out.stdout.splitlines() if " " in ln)
    assert lines["MONITOR"] == "True -9"  # alive, then SIGKILLed
    assert lines["WORKS"] == "42"
    assert lines["AFTER"] == "[False]"  # every other process Ray started has exited
