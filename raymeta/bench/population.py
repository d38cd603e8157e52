"""``raymeta bench population``: member-steps/s of raymeta's population trainer against its
ceiling, a bare ``vmap(grad)`` SGD population, measured interleaved in the same run.

Both train the SAME sinusoid-MLP members (plain SGD, one learning rate, the whole train split
of each member's own task, from the same init) for the same steps. ``--members-config mixed`` gives
raymeta's members what learned priors and the broad space give them instead (``mixed_configs``:
SGD or Adam, log-uniform learning rates and weight decays, minibatches, head-only members),
against the same bare SGD ceiling (what the issue's targets are stated against):

* ``raymeta`` -- ``finetune.step.PopulationTrainer.train`` (what priors fitting, sweeps and
  Tune trials fine-tune with);
* ``compiled`` -- with ``--compile``: the same trainer with ``compile=True`` (``torch.compile``
  of its general step; CUDA graphs on a GPU), timed after its first call (which compiles);
* ``bare``    -- ``bare_population`` below: ``vmap(grad(loss))`` and one SGD line, sharing no
  code with the trainer. It is the ceiling: raymeta's trainer carries per-member optimizers,
  batch sizes, step limits and head-only adaptation, and should cost nothing for them when
  no member uses them.

Each round times one call of each (best of ``--repeats`` interleaved rounds, so both see the
same load on a shared machine). Peak memory is the process's peak RSS after each size (on
CUDA: each implementation's ``max_memory_allocated``). The two final weights are compared too
(they should agree to rounding).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from raymeta import checks
from raymeta.bench.args import MAX_THREADS, add_json_out
from raymeta.core.models import ModelSpec, build_model
from raymeta.fileio import atomic_write_json
from raymeta.finetune.step import MemberHParams, PopulationState, PopulationTrainer
from raymeta.options import int_arg
from raymeta.tasks.sinusoid import Sinusoid

HELP = "population trainer member-steps/s vs a bare vmap(grad) SGD population (and peak memory)"
MLP = ModelSpec("mlp", (1,), 1, {"widths": [40, 40]})
LR = 0.01
CONFIGS = ("sgd", "mixed")
Params = dict[str, torch.Tensor]


def mixed_configs(n: int, n_train: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` member configs as a broad space or a learned prior mixes them: SGD or Adam (even
    odds), learning rate log-uniform in [1e-3, 1e-1], weight decay log-uniform in [1e-6, 1e-1],
    batch size log-uniform in [1, n_train] (about half are full batch), head-only or all (even
    odds); the same configs for every ``n`` prefix of one ``seed``."""
    r = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        u = r.random(5)
        out.append(
            {
                "lr": float(10 ** (-3 + 2 * u[0])),
                "optimizer": "adam" if u[1] < 0.5 else "sgd",
                "weight_decay": float(10 ** (-6 + 5 * u[2])),
                "batch_size": min(n_train, int(round(n_train ** u[3]))),
                "adapt": "head" if u[4] < 0.5 else "all",
            }
        )
    return out


def bare_population(
    model: nn.Module, params: Params, x: torch.Tensor, y: torch.Tensor, steps: int
) -> Params:
    """The ceiling: an SGD population in as few ``torch.func`` lines as possible."""

    def loss(p: Params, xx: torch.Tensor, yy: torch.Tensor) -> torch.Tensor:
        return ((functional_call(model, p, (xx,)) - yy) ** 2).sum(-1).mean()

    member_grads = vmap(grad(loss))
    with torch.no_grad():
        for _ in range(steps):
            g = member_grads(params, x, y)
            params = {k: params[k] - LR * g[k] for k in params}
    return params


def _peak_rss_mb() -> float:
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # bytes on macOS, KiB elsewhere
    return kb / (2**20 if sys.platform == "darwin" else 2**10)


def _timed(fn: Callable[[], Params], dev: torch.device) -> tuple[float, Params]:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    out = fn()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    return time.perf_counter() - t0, out


def run_size(
    n: int,
    steps: int,
    repeats: int,
    dev: torch.device,
    trainers: Mapping[str, Callable[[nn.Module, str], PopulationTrainer]] | None = None,
    config: str = "sgd",
) -> list[dict[str, Any]]:
    """Records of each trainer (``trainers``: name -> factory, default raymeta's) and the bare
    population at ``n`` members (best of ``repeats`` interleaved rounds); ``config`` is the
    trainers' members: ``sgd`` (the bare population's) or ``mixed`` (``mixed_configs``)."""
    torch.manual_seed(0)
    model = build_model(MLP).to(dev)
    init = {k: v.detach() for k, v in model.named_parameters()}
    b = Sinusoid(shots=10, queries=10).sample("train", n, torch.Generator().manual_seed(1))
    x, y = b.xs.to(dev), b.ys.to(dev)
    n_train = int(x.shape[1])
    configs = [{"lr": LR}] * n if config == "sgd" else mixed_configs(n, n_train)
    hp = MemberHParams.from_configs(configs, list(range(n)), n_train).to(dev)
    start = PopulationState.from_params(init, n).params
    impls: dict[str, Callable[[int], Params]] = {}
    for name, make in (trainers or {"raymeta": PopulationTrainer}).items():
        tr = make(model, "regression")
        impls[name] = lambda k, tr=tr: (
            tr.train(  # type: ignore[misc]
                PopulationState.from_stacked(start), hp, x, y, k, per_member_data=True
            ).params
        )
    impls["bare"] = lambda k: bare_population(model, dict(start), x, y, k)
    best = dict.fromkeys(impls, float("inf"))
    mem: dict[str, float] = {}
    first_call: dict[str, float] = {}  # a compiled trainer's compile time is in its first call
    final: dict[str, Params] = {}
    for name, fn in impls.items():  # warm-up (and the CUDA peak of each)
        if dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(dev)
        first_call[name] = _timed(lambda fn=fn: fn(2), dev)[0]  # type: ignore[misc]
        if dev.type == "cuda":
            mem[name] = torch.cuda.max_memory_allocated(dev) / 2**20
    for _ in range(repeats):
        for name, fn in impls.items():
            sec, final[name] = _timed(lambda fn=fn: fn(steps), dev)  # type: ignore[misc]
            best[name] = min(best[name], sec)

    def diff(name: str) -> float | None:
        if config != "sgd":  # other members than the bare population's: nothing to compare
            return None
        return max(float((final[name][k] - final["bare"][k]).abs().max()) for k in init)

    rss = _peak_rss_mb()
    bare_rate = n * steps / best["bare"]
    return [
        {
            "members": n,
            "impl": name,
            "config": config,
            "member_steps_per_s": round(n * steps / sec, 1),
            "ratio_to_bare": round(n * steps / sec / bare_rate, 4),
            "peak_mb": round(mem.get(name, rss), 1),
            "peak_kind": "cuda_max_allocated" if dev.type == "cuda" else "process_rss",
            "max_abs_diff_vs_bare": diff(name),
            "first_call_s": round(first_call[name], 3),
            "device": str(dev),
            "threads": torch.get_num_threads(),
            "load_avg_1m": round(_load(), 2),
        }
        for name, sec in best.items()
    ]


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:  # pragma: no cover - platforms without a load average
        return float("nan")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_json_out(p, "also write the figures as a JSON list of records")
    p.add_argument(
        "--members",
        type=int_arg(1),
        nargs="+",
        default=None,
        help="population sizes (default 64 1024 16384; smoke test 4 16)",
    )
    p.add_argument(
        "--steps-per-member",
        type=int_arg(1),
        default=None,
        help="steps of every member per timed call (default 20, smoke test 2)",
    )
    p.add_argument(
        "--repeats",
        type=int_arg(1),
        default=3,
        help="interleaved rounds; the best of each is reported",
    )
    p.add_argument(
        "--members-config",
        choices=CONFIGS,
        default="sgd",
        help="raymeta's members: sgd (the bare population's, default) or mixed "
        "(SGD/Adam, weight decay, minibatches, head-only: as priors and broad spaces mix them)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="also time the trainer with torch.compile (PopulationTrainer(compile=True); CUDA "
        "graphs on a GPU); its first call per size compiles (the '1st call s' column)",
    )
    p.add_argument("--smoke-test", action="store_true", help="tiny sizes (a smoke test)")
    p.add_argument(
        "--threads",
        type=int_arg(1, MAX_THREADS),
        default=None,
        help="torch intra-op threads (default: torch's own)",
    )
    p.add_argument(
        "--device", default=None, help="torch device (default: cuda when available, else cpu)"
    )


def check_args(args: argparse.Namespace, members: list[int]) -> torch.device:
    """``--device`` checked and the largest population's memory estimated before the first
    population is built: an absurd ``--members`` is refused up front instead of failing in an
    allocator's error after the smaller sizes ran (the counts' ranges are the flags' types,
    which ``--config`` values pass through too). Returns the device."""
    from raymeta.finetune.evaluate import eval_device

    dev = eval_device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    params = sum(p.numel() for p in build_model(MLP).parameters())
    # start, trainer and bare copies, gradients and optimizer moments of every member: a floor
    checks.check_fits(f"--members {max(members)}", max(members) * params * 4 * 8, "lower --members")
    return dev


def run(args: argparse.Namespace) -> int:
    members = args.members or ([4, 16] if args.smoke_test else [64, 1024, 16384])
    steps = (
        args.steps_per_member
        if args.steps_per_member is not None
        else (2 if args.smoke_test else 20)
    )
    dev = check_args(args, members)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {dev}, {torch.get_num_threads()} threads, {steps} steps, "
        f"{args.members_config} members"
    )
    print(
        f"{'members':>8} {'impl':<8} {'member-steps/s':>15} {'/ bare':>7} {'peak MB':>8} "
        f"{'1st call s':>10}"
    )
    records: list[dict[str, Any]] = []
    trainers: dict[str, Callable[[nn.Module, str], PopulationTrainer]] = {
        "raymeta": PopulationTrainer
    }
    if args.compile:
        trainers["compiled"] = lambda model, kind: PopulationTrainer(model, kind, compile=True)
    for n in members:
        rows = run_size(n, steps, args.repeats, dev, trainers, config=args.members_config)
        for r in rows:
            print(
                f"{n:>8} {r['impl']:<8} {r['member_steps_per_s']:>15,.0f} "
                f"{r['ratio_to_bare']:>7.2f} {r['peak_mb']:>8.0f} {r['first_call_s']:>10.2f}",
                flush=True,
            )
        diffs = [(r["impl"], r["max_abs_diff_vs_bare"]) for r in rows if r["impl"] != "bare"]
        same = "".join(f"max |{i} - bare| = {d:.2e}, " for i, d in diffs if d is not None)
        print(f"{'':>8} {same}load {rows[0]['load_avg_1m']}")
        records.extend(rows)
    if args.out:
        atomic_write_json(Path(args.out), records)
        print(f"wrote {len(records)} records to {args.out}")
    return 0


def main() -> None:  # pragma: no cover - convenience for `python -m raymeta.bench.population`
    p = argparse.ArgumentParser(description=HELP)
    add_arguments(p)
    raise SystemExit(run(p.parse_args()))


if __name__ == "__main__":  # pragma: no cover
    main()
