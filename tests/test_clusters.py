"""Every deployment file under clusters/ parses and carries the fields Ray / KubeRay require.

The launcher YAMLs are checked by Ray's own validator (``validate_config`` against
``ray-schema.json`` after ``fillout_defaults``), so "valid" means what ``ray up`` means. KubeRay
has no offline validator, so its required fields (CRD ``ray.io/v1``) are checked by hand.
"""

from __future__ import annotations

import copy
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

CLUSTERS = Path(__file__).resolve().parents[1] / "clusters"
YAMLS = sorted(CLUSTERS.rglob("*.yaml"))
LAUNCHERS = [CLUSTERS / "aws.yaml", CLUSTERS / "gcp.yaml"]


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kuberay(kind: str) -> list[tuple[Path, dict[str, Any]]]:
    return [
        (p, d)
        for p in sorted((CLUSTERS / "kuberay").glob("*.yaml"))
        for d in _docs(p)
        if d.get("kind") == kind
    ]


def test_expected_files_exist() -> None:
    names = {p.relative_to(CLUSTERS).as_posix() for p in CLUSTERS.rglob("*") if p.is_file()}
    expected = {"README.md", "runtime_env.yaml", "local_cluster.sh", "aws.yaml", "gcp.yaml"}
    expected |= {"kuberay/raycluster.yaml", "kuberay/rayjob.yaml"}
    assert expected <= names
    assert os.access(CLUSTERS / "local_cluster.sh", os.X_OK)


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.relative_to(CLUSTERS).as_posix())
def test_every_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs and all(isinstance(d, dict) for d in docs)


@pytest.mark.parametrize(
    "path", sorted((CLUSTERS / "kuberay").glob("*.yaml")), ids=lambda p: p.name
)
def test_kubernetes_objects_have_envelope(path: Path) -> None:
    for doc in _docs(path):
        assert {"apiVersion", "kind", "metadata", "spec"} <= doc.keys()
        assert doc["metadata"].get("name")
        if doc["kind"] in ("RayCluster", "RayJob"):
            assert doc["apiVersion"] == "ray.io/v1"


def _check_pod_template(template: dict[str, Any], where: str) -> list[dict[str, Any]]:
    containers = template["spec"]["containers"]
    assert containers, where
    for c in containers:
        assert c.get("name") and c.get("image"), where
    mounted = {m["name"] for c in containers for m in c.get("volumeMounts", [])}
    declared = {v["name"] for v in template["spec"].get("volumes", [])}
    assert mounted <= declared, f"{where}: volumeMounts without volumes: {mounted - declared}"
    return containers


def _check_cluster_spec(spec: dict[str, Any], where: str) -> None:
    assert str(spec["rayVersion"]) == "2.60.0", where
    assert spec.get("authOptions", {}).get("mode") == "token", f"{where}: token auth not enabled"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_containers = _check_pod_template(head["template"], f"{where} head")
    ports = {p["containerPort"] for c in head_containers for p in c.get("ports", [])}
    assert {6379, 8265} <= ports, f"{where}: head must expose GCS 6379 and dashboard 8265"
    groups = spec["workerGroupSpecs"]
    assert groups
    names = [g["groupName"] for g in groups]
    assert len(set(names)) == len(names), f"{where}: duplicate groupName"
    for g in groups:
        assert {
            "groupName",
            "replicas",
            "minReplicas",
            "maxReplicas",
            "rayStartParams",
            "template",
        } <= g.keys()
        assert 0 <= g["minReplicas"] <= g["replicas"] <= g["maxReplicas"], (
            f"{where}/{g['groupName']}"
        )
        _check_pod_template(g["template"], f"{where}/{g['groupName']}")


def _gpu_limits(group: dict[str, Any]) -> int:
    return sum(
        int(c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))
        for c in group["template"]["spec"]["containers"]
    )


def test_raycluster_has_cpu_and_gpu_groups_and_shared_storage() -> None:
    clusters = _kuberay("RayCluster")
    assert clusters
    for path, doc in clusters:
        _check_cluster_spec(doc["spec"], path.name)
        groups = doc["spec"]["workerGroupSpecs"]
        assert any(_gpu_limits(g) > 0 for g in groups), "no GPU worker group (nvidia.com/gpu limit)"
        assert any(_gpu_limits(g) == 0 for g in groups), "no CPU worker group"
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for g in [doc["spec"]["headGroupSpec"], *groups]
            for v in g["template"]["spec"].get("volumes", [])
            if "persistentVolumeClaim" in v
        }
        assert claims, "no shared volume for checkpoints"
        pvcs = {
            d["metadata"]["name"]: d
            for p in (CLUSTERS / "kuberay").glob("*.yaml")
            for d in _docs(p)
            if d["kind"] == "PersistentVolumeClaim"
        }
        for claim in claims:
            assert claim in pvcs, f"PVC {claim} is not defined under clusters/kuberay"
            assert "ReadWriteMany" in pvcs[claim]["spec"]["accessModes"], (
                "multi-node checkpoints need ReadWriteMany"
            )


def test_rayjobs_run_raymeta_with_runtime_env_and_cleanup() -> None:
    jobs = _kuberay("RayJob")
    commands = set()
    for path, doc in jobs:
        spec = doc["spec"]
        entry = spec["entrypoint"].split()
        assert entry[0] == "raymeta", f"{path.name}: entrypoint must run the raymeta CLI"
        commands.add(entry[1])
        assert "--address" in entry and entry[entry.index("--address") + 1] == "auto"
        env = yaml.safe_load(spec["runtimeEnvYAML"])
        assert isinstance(env, dict) and env, f"{path.name}: runtimeEnvYAML must be a YAML mapping"
        assert spec["shutdownAfterJobFinishes"] is True
        assert (
            isinstance(spec["ttlSecondsAfterFinished"], int)
            and spec["ttlSecondsAfterFinished"] >= 0
        )
        assert spec.get("submissionMode", "K8sJobMode") in (
            "K8sJobMode",
            "HTTPMode",
            "SidecarMode",
            "InteractiveMode",
        )
        _check_cluster_spec(spec["rayClusterSpec"], path.name)
    assert {"meta-train", "tune"} <= commands


def test_meta_train_job_asks_for_gpus_that_the_cluster_offers() -> None:
    for _, doc in _kuberay("RayJob"):
        entry = doc["spec"]["entrypoint"].split()
        if entry[1] != "meta-train" or "--gpus-per-worker" not in entry:
            continue
        workers = int(entry[entry.index("--workers") + 1])
        per = float(entry[entry.index("--gpus-per-worker") + 1])
        groups = doc["spec"]["rayClusterSpec"]["workerGroupSpecs"]
        offered = sum(_gpu_limits(g) * g["maxReplicas"] for g in groups)
        assert workers * per <= offered


def test_runtime_env_file_is_a_valid_ray_runtime_env() -> None:
    from ray.runtime_env import RuntimeEnv

    env = yaml.safe_load((CLUSTERS / "runtime_env.yaml").read_text())
    assert all(isinstance(v, str) for v in env["env_vars"].values()), (
        "env_vars values must be strings"
    )
    assert ".venv/" in env["excludes"]
    RuntimeEnv(**env)  # Ray's own validation of field names and types


@pytest.mark.parametrize("path", LAUNCHERS, ids=lambda p: p.name)
def test_launcher_config_passes_rays_validator(path: Path) -> None:
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(path.read_text())
    validate_config(fillout_defaults(copy.deepcopy(config)))
    assert config["cluster_name"] and config["provider"]["type"] in ("aws", "gcp")
    types = config["available_node_types"]
    assert config["head_node_type"] in types
    gpu_types = [n for n, t in types.items() if t.get("resources", {}).get("GPU", 0) > 0]
    assert gpu_types, "no GPU worker node type"
    assert all(n != config["head_node_type"] for n in gpu_types)
    assert any("raymeta" in cmd for cmd in config["setup_commands"]), (
        "setup_commands must install raymeta"
    )
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=" in cmd for cmd in starts if "ray start" in cmd), (
        "every ray start must set RAY_AUTH_MODE"
    )


def test_launcher_validator_rejects_a_broken_config() -> None:
    """Guard against the validator silently accepting anything (then the test above proves nothing)."""
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = yaml.safe_load(LAUNCHERS[0].read_text())
    config["head_node_type"] = "no-such-type"
    with pytest.raises(ValueError, match="head_node_type"):
        validate_config(fillout_defaults(copy.deepcopy(config)))
    config = yaml.safe_load(LAUNCHERS[0].read_text())
    config["available_node_types"]["ray.worker.gpu"]["bogus_key"] = 1
    with pytest.raises(Exception, match="bogus_key"):  # jsonschema.ValidationError
        validate_config(fillout_defaults(config))


NO_CLUSTER_DIR = f"/tmp/rmc-none-{os.getpid()}"  # short (unix socket limit) and never started


def test_local_cluster_script_rejects_bad_settings() -> None:
    script = str(CLUSTERS / "local_cluster.sh")
    base = {**os.environ, "RAYMETA_CLUSTER_DIR": NO_CLUSTER_DIR}
    cases = [
        ({}, ["bogus"]),
        ({"RAY_AUTH_MODE": "maybe"}, ["status"]),
        ({"RAYMETA_GCS_PORT": "12ab"}, ["status"]),
        ({"RAYMETA_CLUSTER_DIR": "relative/dir"}, ["status"]),
        ({"RAYMETA_CLUSTER_DIR": "/tmp/" + "x" * 40}, ["start"]),
    ]
    for extra, args in cases:
        r = subprocess.run(
            ["bash", script, *args],
            env={**base, **extra},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 2, (extra, args, r.stdout, r.stderr)
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("local_cluster.sh: error: "), r.stderr


def test_local_cluster_script_status_and_stop_when_nothing_runs() -> None:
    script = str(CLUSTERS / "local_cluster.sh")
    env = {**os.environ, "RAYMETA_CLUSTER_DIR": NO_CLUSTER_DIR, "RAYMETA_GCS_PORT": "29999"}
    status = subprocess.run(
        ["bash", script, "status"], env=env, capture_output=True, text=True, timeout=30
    )
    assert status.returncode == 3 and "not running" in status.stdout
    stop = subprocess.run(
        ["bash", script, "stop"], env=env, capture_output=True, text=True, timeout=30
    )
    assert stop.returncode == 0 and "nothing to stop" in stop.stdout
    pids = subprocess.run(
        ["bash", script, "pids"], env=env, capture_output=True, text=True, timeout=30
    )
    assert pids.returncode == 0 and pids.stdout == ""


def test_readme_documents_the_essentials() -> None:
    text = (CLUSTERS / "README.md").read_text()
    for needle in (
        "ray job submit --address",
        "--working-dir .",
        "raymeta meta-train",
        "RAY_AUTH_MODE",
        "--gpus-per-worker",
        "s3://",
        "NFS",
        "local_cluster.sh",
        "kubectl apply",
        "ray up",
    ):
        assert needle in text, needle
