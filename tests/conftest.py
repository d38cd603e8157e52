"""Shared fixtures: one real local Ray per test session (loopback only, like raymeta's embedded
Ray: ``start_local_ray``), started lazily.

Tests that need Ray take the ``ray_session`` fixture; the pure-layer tests never start it.
The orchestration API reuses an already-initialised Ray and does not shut it down.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from raymeta.core.checkpoint import MetaCheckpoint

os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
# raymeta tune signs run state with a per-user key: keep the tests' key out of the real home,
# in a directory of this session's own that goes when the session ends
if "RAYMETA_KEY_FILE" not in os.environ:
    _KEY_DIR = tempfile.mkdtemp(prefix="raymeta-key-")
    atexit.register(shutil.rmtree, _KEY_DIR, ignore_errors=True)
    os.environ["RAYMETA_KEY_FILE"] = os.path.join(_KEY_DIR, "run-key")

OMNIGLOT_DIR = Path(
    os.environ.get(
        "RAYMETA_OMNIGLOT", Path(__file__).resolve().parents[2] / "shared" / "data" / "omniglot"
    )
)


@pytest.fixture(scope="session")
def ray_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    import ray

    from raymeta.orchestration.ray_runtime import start_local_ray

    if not ray.is_initialized():
        tmp = tmp_path_factory.mktemp("ray")
        start_local_ray(
            num_cpus=2, _temp_dir=str(tmp), log_to_driver=False, configure_logging=False
        )
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def omniglot_dir() -> Path:
    if not (OMNIGLOT_DIR / "images_background.npz").is_file():
        pytest.skip(f"Omniglot archives not found under {OMNIGLOT_DIR}")
    return OMNIGLOT_DIR


@pytest.fixture(scope="session")
def ckpt_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sinusoid meta-checkpoint (3 MAML steps) for the priors tests; tests that write
    into a checkpoint copy it first."""
    from raymeta.core.checkpoint import save_meta_checkpoint
    from raymeta.core.train import MetaTrainConfig, meta_train

    tr = meta_train(MetaTrainConfig(steps=3, meta_batch=4, val_tasks=2))
    return save_meta_checkpoint(tmp_path_factory.mktemp("meta") / "ckpt", tr.to_checkpoint())


@pytest.fixture()
def ckpt(ckpt_dir: Path) -> MetaCheckpoint:
    from raymeta.core.checkpoint import load_meta_checkpoint

    return load_meta_checkpoint(ckpt_dir)
