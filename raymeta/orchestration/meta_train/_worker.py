"""The Ray Train worker loop: one process per rank, data-parallel over tasks.

Each rank draws its shard of step ``s`` from ``derive_seed(seed, s, rank)`` (``shards`` =
world size), computes the summed loss and meta-gradient with the vmapped engine, and the ranks
sum ``[loss, task count, flat gradient]`` with ONE ``all_reduce`` per step. Every rank then
takes the identical outer step, so no parameter broadcast is ever needed. Rank 0 alone writes
checkpoints (``state.pt``: params, optimizer state, step, RNG; weights-only loadable), runs the
meta-validation and pushes progress records to the driver's queue.
"""

from __future__ import annotations

import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from raymeta.allocator import retain_freed_memory
from raymeta.core.checkpoint import save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, MetaTrainer, diverged
from raymeta.errors import ConfigError
from raymeta.orchestration.meta_train._newest_checkpoint import (
    STATE_FILE,
    newest_state,
    write_manifest,
)
from raymeta.plugins import add_import_roots, blame

FINAL_DIR = "final"


def load_state(ckpt_dir: str | Path) -> dict[str, Any]:
    """A ``MetaTrainer.state_dict`` saved by this loop (weights-only unpickling)."""
    return torch.load(Path(ckpt_dir) / STATE_FILE, map_location="cpu", weights_only=True)


def _flatten(loss: torch.Tensor, count: int, grads: dict[str, torch.Tensor]) -> torch.Tensor:
    ref = next(iter(grads.values()))
    head = torch.stack(
        [loss.detach().to(ref), torch.tensor(float(count), dtype=ref.dtype, device=ref.device)]
    )
    return torch.cat([head, *(g.reshape(-1) for g in grads.values())])


def _unflatten(
    flat: torch.Tensor, like: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
    """Views into ``flat``; no host sync here (on GPU a ``float()`` per step would stall)."""
    out, i = {}, 2
    for k, v in like.items():
        out[k] = flat[i : i + v.numel()].view_as(v)
        i += v.numel()
    return flat[0], flat[1], out


def _maybe_fail(debug: dict[str, Any], step: int, rank: int) -> None:
    """Test hooks, each fired once (guarded by a marker file): raise an error in this worker
    (``raise_at_step``: a ConfigError, as a family that finds a bad option only late would, or
    a RuntimeError), or SIGKILL the Ray Train controller from here (``kill_controller_at_step``)."""
    raise_at, kill_at = debug.get("raise_at_step"), debug.get("kill_controller_at_step")
    if step not in (raise_at, kill_at) or rank != debug.get("fail_rank", 0):
        return
    marker = Path(debug["fail_marker"])
    if marker.exists():
        return
    marker.write_text(f"failed rank {rank} at step {step}\n")
    if step == raise_at:
        if debug.get("raise_kind") == "config":
            raise ConfigError(f"injected bad option at step {step}")
        raise RuntimeError(f"injected crash at step {step}")
    import psutil

    # the controller is an actor process of this node's raylet, like this worker
    for p in psutil.Process(os.getppid()).children():
        if p.name().startswith("ray::TrainControl"):
            p.send_signal(signal.SIGKILL)


def _maybe_crash(debug: dict[str, Any], step: int, rank: int) -> None:
    """Test hook: SIGKILL this worker process once (guarded by a marker file)."""
    _maybe_fail(debug, step, rank)
    crash_at = debug.get("crash_at_step")
    if crash_at is None or step != crash_at or rank != debug.get("crash_rank", 0):
        return
    marker = Path(debug["crash_marker"])
    if marker.exists():
        return
    marker.write_text(f"killed rank {rank} at step {step}\n")
    os.kill(os.getpid(), signal.SIGKILL)


def train_loop(config: dict[str, Any]) -> None:
    """Entry point passed to ``TorchTrainer``; ``config`` is built by ``meta_train.py``."""
    import ray.train

    add_import_roots(config.get("import_roots") or [])  # the user's model / family modules
    retain_freed_memory()  # a Train worker is raymeta's for its life
    cfg = MetaTrainConfig.from_dict(config["cfg"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    if config["use_gpu"]:
        import ray.train.torch

        device = ray.train.torch.get_device()
    else:
        device = torch.device("cpu")
        torch.set_num_threads(max(1, int(config["threads"])))
    debug: dict[str, Any] = dict(config.get("debug") or {})
    queue = config.get("progress")
    every_ckpt, every_log = int(config["checkpoint_every"]), int(config["log_every"])

    tr = MetaTrainer(cfg, rank, world, device)
    restored = ray.train.get_checkpoint()
    if restored is not None:
        with restored.as_directory() as d:
            tr.load_state_dict(load_state(d))
    # Ray's record can lag the newest checkpoint on storage (see _newest_checkpoint)
    newer = newest_state(config.get("storage"), config.get("run_name"), cfg.fingerprint(), tr.step)
    if newer is not None:
        tr.load_state_dict(newer)
    if dist.is_initialized():  # every rank must resume from the same step
        steps = torch.tensor([tr.step, -tr.step], dtype=torch.int64, device=device)
        dist.all_reduce(steps, op=dist.ReduceOp.MAX)
        if int(steps[0]) != -int(steps[1]):
            raise RuntimeError(
                f"ranks resumed from different steps ({int(steps[0])} vs {-int(steps[1])})"
            )
    start = tr.step
    n_local = _local_tasks(tr)
    if rank == 0 and queue is not None:
        queue.put({"event": "start", "step": start, "world": world, "device": str(device)})

    # step of the first non-finite all-reduced loss/gradient, kept on the device (-1 = none) and
    # read only when the loop reports: every rank sees the same all-reduced values, so every rank
    # raises at the same step and none is left waiting in a collective
    first_bad = torch.full((), -1, dtype=torch.int64, device=device)

    def check_finite() -> None:
        bad = int(first_bad)
        if bad >= 0:
            raise diverged(bad)

    def report(metrics: dict[str, Any], final: bool = False) -> None:
        check_finite()  # never checkpoint NaN parameters
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            torch.save(tr.state_dict(), Path(d) / STATE_FILE)
            write_manifest(Path(d), tr.step, cfg.fingerprint())
            if final:
                save_meta_checkpoint(Path(d) / FINAL_DIR, tr.to_checkpoint(metrics))
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    last: dict[str, Any] = {}
    t_int, c_int, tasks_int, val_s, val_c = time.perf_counter(), time.process_time(), 0, 0.0, 0.0
    while tr.step < cfg.steps:
        _maybe_crash(debug, tr.step, rank)
        with blame((cfg.model, cfg.family), f"in meta-training step {tr.step + 1}"):
            loss_sum, grads = tr.local_grad()
        flat = _flatten(loss_sum, n_local, grads)
        if dist.is_initialized():  # also at W=1, so the NCCL/gloo path always runs
            dist.all_reduce(flat)
        loss_all, count, grad_sums = _unflatten(flat, grads)
        bad_now = ~torch.isfinite(flat).all()
        first_bad = torch.where(bad_now & (first_bad < 0), tr.step, first_bad)
        if tr.step == start and round(float(count)) != cfg.meta_batch:  # the split is fixed
            raise RuntimeError(f"all-reduced task count {count} != meta-batch {cfg.meta_batch}")
        if debug.get("record_first_grad") and "first_grad" not in last:
            last["first_grad"] = {k: v.detach().cpu().clone() for k, v in grad_sums.items()}
        tr.apply(grad_sums)
        tasks_int += cfg.meta_batch
        last["meta_loss"] = loss_all.detach() / cfg.meta_batch
        if tr.step % every_log == 0 or tr.step % cfg.val_every == 0 or tr.step == cfg.steps:
            check_finite()
        if rank == 0 and (tr.step % cfg.val_every == 0 or tr.step == cfg.steps):
            t_val, c_val = time.perf_counter(), time.process_time()
            with blame((cfg.model, cfg.family), f"in meta-validation at step {tr.step}"):
                last["val_loss"] = float(tr.validate()["loss"])
            val_s, val_c = val_s + time.perf_counter() - t_val, val_c + time.process_time() - c_val
        if rank == 0 and queue is not None and (tr.step % every_log == 0 or tr.step == cfg.steps):
            dt = max(time.perf_counter() - t_int - val_s, 1e-9)
            dc = max(time.process_time() - c_int - val_c, 1e-9)
            queue.put(
                {
                    "event": "progress",
                    "step": tr.step,
                    "meta_loss": float(last["meta_loss"]),
                    "val_loss": last.get("val_loss"),
                    "tasks_per_s": tasks_int / dt,
                    "cpu_tasks_per_s": tasks_int
                    / dc,  # per process-CPU second: steadier on a busy box
                }
            )
            t_int, c_int, tasks_int, val_s, val_c = (
                time.perf_counter(),
                time.process_time(),
                0,
                0.0,
                0.0,
            )
        if tr.step % every_ckpt == 0 and tr.step < cfg.steps:
            report(_metrics(tr.step, last))
    if rank == 0 and "val_loss" not in last:
        last["val_loss"] = float(tr.validate()["loss"])
    if "first_grad" in last:
        torch.save(
            last["first_grad"], Path(debug["first_grad_path"]).with_suffix(f".rank{rank}.pt")
        )
    report(_metrics(tr.step, last, start=start), final=True)


def _local_tasks(tr: MetaTrainer) -> int:
    from raymeta.core.train import shard_sizes

    sizes = shard_sizes(tr.cfg.meta_batch, tr.cfg.shards)
    return sum(sizes[r] for r in tr.my_shards())


def _metrics(step: int, last: dict[str, Any], start: int | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"step": step}
    for k in ("meta_loss", "val_loss"):
        if last.get(k) is not None:
            m[k] = float(last[k])
    if start is not None:
        m["resumed_from"] = start
    return m
