"""End to end on a real 2-node Ray cluster (clusters/local_cluster.sh) driven by `ray job submit`.

Slow (a cluster start is ~15-45 s on 2 cores, each job ~20-60 s), so it only runs with
``pytest -m slow``. The cluster uses its own ports and directory, never the test-session Ray, and
is stopped in a ``finally``; teardown then proves that none of its processes survived.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "clusters" / "local_cluster.sh"
RUNTIME_ENV = REPO / "clusters" / "runtime_env.yaml"
BIN = Path(sys.executable).parent
RAY = BIN / "ray"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass
class Cluster:
    dir: Path
    gcs_port: int
    dashboard: str
    env: dict[str, str]  # for the ray CLI: auth mode + token path, venv first on PATH


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def _pick_ports() -> tuple[int, int, int]:
    """GCS port, dashboard port and a base for ~400 internal ports, below the ephemeral range."""
    rng = random.Random()
    for _ in range(50):
        base = rng.randrange(20000, 31000, 500)
        gcs, dash = base + 450, base + 451
        if _ports_free([gcs, dash, *range(base, base + 20), base + 100, base + 250]):
            return gcs, dash, base
    pytest.skip("no free port block for the local cluster")


def _is_live(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _cluster_processes(cluster_dir: Path, gcs_port: int) -> list[str]:
    """Live processes naming the cluster's dir or GCS port (independent of the script's own scan)."""
    found = []
    pattern = re.compile(rf"--(gcs-)?address=\S*:{gcs_port}(\s|$)")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if (str(cluster_dir) + "/" in cmd or pattern.search(cmd)) and _is_live(int(entry.name)):
            found.append(f"{entry.name}: {cmd[:160]}")
    return found


def _script(action: str, env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), action], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    if not (
        RAY.exists()
        and importlib.util.find_spec("ray.dashboard.modules.job")
        and importlib.util.find_spec("aiohttp")
    ):
        pytest.skip("needs ray[default] in the venv: pip install 'raymeta[cluster]'")
    gcs, dash, base = _pick_ports()
    cdir = Path(tempfile.mkdtemp(prefix="rmc", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_ADDRESS")}
    env.update(
        RAYMETA_CLUSTER_DIR=str(cdir),
        RAYMETA_GCS_PORT=str(gcs),
        RAYMETA_DASHBOARD_PORT=str(dash),
        RAYMETA_PORT_BASE=str(base),
        RAY_BIN=str(RAY),
        RAY_AUTH_MODE="token",
        PATH=f"{BIN}:{os.environ.get('PATH', '')}",
    )
    cli_env = {**env, "RAY_AUTH_TOKEN_PATH": str(cdir / "auth_token")}
    pids: list[int] = []
    try:
        started = _script("start", env, timeout=420)
        assert started.returncode == 0, f"cluster start failed:\n{started.stdout}\n{started.stderr}"
        pids = [int(p) for p in _script("pids", env, timeout=30).stdout.split()]
        assert pids, "the script sees no processes of the cluster it just started"
        yield Cluster(cdir, gcs, f"http://127.0.0.1:{dash}", cli_env)
    finally:
        pids += [int(p) for p in _script("pids", env, timeout=30).stdout.split()]
        stopped = _script("stop", env, timeout=120)
        survivors = [p for p in set(pids) if _is_live(p)] + _cluster_processes(cdir, gcs)
        shutil.rmtree(cdir, ignore_errors=True)
        assert stopped.returncode == 0, f"cluster stop failed:\n{stopped.stdout}\n{stopped.stderr}"
        assert not survivors, f"Ray processes left behind: {survivors}"


def _submit(c: Cluster, entrypoint: list[str]) -> str:
    cmd = [
        str(RAY),
        "job",
        "submit",
        "--address",
        c.dashboard,
        "--no-wait",
        "--working-dir",
        str(REPO),
    ]
    cmd += ["--runtime-env", str(RUNTIME_ENV), "--", *entrypoint]
    r = subprocess.run(cmd, env=c.env, capture_output=True, text=True, timeout=180, cwd=REPO)
    m = re.search(r"raysubmit_\w+", r.stdout + r.stderr)
    assert r.returncode == 0 and m, f"ray job submit failed:\n{r.stdout}\n{r.stderr}"
    return m.group(0)


def _logs(c: Cluster, job: str) -> str:
    r = subprocess.run(
        [str(RAY), "job", "logs", "--address", c.dashboard, job],
        env=c.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return r.stdout + r.stderr


def _wait(c: Cluster, job: str, timeout: float = 600) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = subprocess.run(
            [str(RAY), "job", "status", "--address", c.dashboard, job],
            env=c.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        # `ray job status` prints "Job 'ID' succeeded|failed|was stopped" once the job is over.
        m = re.search(
            rf"Job '{job}' (?:was )?(succeeded|failed|stopped)", ANSI.sub("", r.stdout + r.stderr)
        )
        if m:
            return m.group(1).upper()
        time.sleep(2)
    subprocess.run(
        [str(RAY), "job", "stop", "--address", c.dashboard, "--no-wait", job],
        env=c.env,
        capture_output=True,
        timeout=60,
    )
    return "TIMEOUT"


def _run_job(c: Cluster, entrypoint: list[str], timeout: float = 600) -> str:
    job = _submit(c, entrypoint)
    status = _wait(c, job, timeout)
    logs = _logs(c, job)
    assert status == "SUCCEEDED", f"job {job} {status}; logs:\n{logs[-4000:]}"
    return logs


PROBE = """
import json, os, ray
ray.init(address="auto")
alive = [n for n in ray.nodes() if n["Alive"]]
@ray.remote(num_cpus=1, resources={"worker": 1})
def where():
    return ray.get_runtime_context().get_node_id()
print("PROBE", json.dumps({"resources": ray.cluster_resources(), "nodes": len(alive),
      "address": os.environ.get("RAY_ADDRESS"), "driver_node": ray.get_runtime_context().get_node_id(),
      "task_node": ray.get(where.remote())}))
"""


def test_job_submit_reaches_both_nodes(cluster: Cluster) -> None:
    logs = _run_job(cluster, ["python", "-c", PROBE], timeout=300)
    line = next(ln for ln in logs.splitlines() if ln.startswith("PROBE "))
    probe = json.loads(line[len("PROBE ") :])
    assert probe["nodes"] == 2
    assert probe["resources"]["head"] == 1 and probe["resources"]["worker"] == 1
    assert probe["resources"]["CPU"] == 2
    # The job driver runs on the head; a task asking for {"worker": 1} lands on the other node.
    assert probe["task_node"] != probe["driver_node"]
    assert probe["address"] and probe["address"].endswith(f":{cluster.gcs_port}")


def test_token_auth_is_enforced(cluster: Cluster) -> None:
    env = {
        k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_TOKEN_PATH", "RAY_AUTH_TOKEN")
    }
    env["RAY_AUTH_MODE"] = "disabled"
    env["HOME"] = str(cluster.dir)  # no ~/.ray/auth_token to fall back on
    r = subprocess.run(
        [str(RAY), "job", "list", "--address", cluster.dashboard],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "token" in (r.stdout + r.stderr).lower()


def _have_cli(name: str) -> bool:
    return importlib.util.find_spec(f"raymeta.cli.{name}") is not None


@pytest.mark.skipif(
    not (_have_cli("meta_train") and _have_cli("tune")),
    reason="raymeta meta-train / tune CLI not available yet",
)
def test_meta_train_then_tune_via_job_submit(cluster: Cluster, tmp_path: Path) -> None:
    out, out2 = tmp_path / "meta", tmp_path / "tune"
    meta_train = [
        "raymeta",
        "meta-train",
        "--family",
        "sinusoid",
        "--algo",
        "maml",
        "--workers",
        "2",
    ]
    meta_train += ["--steps", "20", "--meta-batch", "8", "--out", str(out), "--address", "auto"]
    _run_job(cluster, meta_train)
    meta = json.loads((out / "meta.json").read_text())
    assert "sinusoid" in json.dumps(meta.get("family", meta))

    # `raymeta tune` (auto, the default: here meta+learned+pbt, no strategy selection) needs
    # the priors fitted into the checkpoint.
    fit = ["raymeta", "priors", "fit", "--meta", str(out), "--tasks", "4", "--configs", "8"]
    _run_job(cluster, [*fit, "--select-tasks", "0"])
    assert json.loads((out / "meta.json").read_text())["priors"].startswith("priors-")

    tune = ["raymeta", "tune", "--meta", str(out), "--task", "sinusoid:0", "--trials", "2"]
    tune += ["--budget", "20", "--out", str(out2), "--address", "auto"]
    _run_job(cluster, tune)
    report = json.loads((out2 / "report.json").read_text())
    assert report, "empty report.json"
