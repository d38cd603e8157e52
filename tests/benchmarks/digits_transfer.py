"""Does a meta-learned initialization transfer to held-out digits classes? (issue 5 diagnostic)

Meta-trains one digits model in-process, then fine-tunes it on 20 held-out meta-test tasks with
a few fixed configurations and prints the mean validation loss and accuracy after
0, 1, 2, 5, 10, 20, 50 and 100 steps, next to the same configurations from a seeded random init.
This is how we found that on 8x8 digits the meta-inits we can train on this CPU do not fine-tune
to a better model than a random init does (BENCHMARKS.md, "Time to quality").

    .venv/bin/python tests/benchmarks/digits_transfer.py --algo reptile --inner-steps 10 \\
        --inner-lr 0.1 --steps 2000 --width 128
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch

from raymeta.core.models import build_model
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.finetune.population import scratch_params
from raymeta.finetune.step import MemberHParams, PopulationState, PopulationTrainer
from raymeta.tasks import make_family

GRID = [0, 1, 2, 5, 10, 20, 50, 100]


def curves(
    trainer: PopulationTrainer,
    inits: list[dict[str, torch.Tensor]],
    cfg: dict[str, Any],
    data: tuple[torch.Tensor, ...],
) -> list[tuple[int, float, float]]:
    """Mean (step, val loss, val accuracy) over the tasks, one member per task."""
    x, y, xv, yv = data
    n = len(inits)
    st = PopulationState.from_stacked({k: torch.stack([p[k] for p in inits]) for k in inits[0]})
    hp = MemberHParams.from_configs([cfg] * n, list(range(n)), x.shape[1])
    out, prev = [], 0
    for s in GRID:
        st = trainer.train(st, hp, x, y, s - prev, per_member_data=True)
        prev = s
        ev = trainer.evaluate(st.params, xv, yv, per_member_data=True)
        out.append((s, float(ev["loss"].mean()), float(ev["accuracy"].mean())))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--algo", default="maml")
    ap.add_argument("--model", default="mlp", choices=["mlp", "conv4"])
    ap.add_argument("--width", type=int, default=128, help="MLP widths or Conv4 channels")
    ap.add_argument("--shots", type=int, default=5, help="meta-training shots")
    ap.add_argument("--task-shots", type=int, default=5, help="held-out tasks' train shots")
    ap.add_argument("--inner-steps", type=int, default=5)
    ap.add_argument("--inner-lr", type=float, default=0.1)
    ap.add_argument("--outer-lr", type=float, default=1e-3)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--meta-batch", type=int, default=16)
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--device", default="cpu", help="cpu or cuda (meta-training and fine-tuning)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    opts = {"ways": 5, "shots": args.shots, "queries": 15, "task_shots": args.task_shots}
    model_opts: dict[str, Any] = (
        {"widths": [args.width, args.width]} if args.model == "mlp" else {"hidden": args.width}
    )
    cfg = MetaTrainConfig(
        family="digits",
        family_options=opts,
        model=args.model,
        model_options=model_opts,
        algo=args.algo,
        inner_steps=args.inner_steps,
        inner_lr=args.inner_lr,
        outer_lr=args.outer_lr,
        steps=args.steps,
        meta_batch=args.meta_batch,
        val_tasks=50,
    )
    t0 = time.perf_counter()
    dev = torch.device(args.device)
    ckpt = meta_train(cfg, device=dev).to_checkpoint()
    print(f"meta-train {time.perf_counter() - t0:.0f} s", flush=True)
    cand = ckpt.candidate()
    family = make_family(ckpt.family)
    tasks = [family.task("test", i) for i in range(args.tasks)]
    data = tuple(
        torch.stack([getattr(t, k) for t in tasks]).to(dev)
        for k in ("x_train", "y_train", "x_val", "y_val")
    )
    trainer = PopulationTrainer(build_model(cand.spec).to(dev), "classification")
    names = [k for k, _ in build_model(cand.spec).named_parameters()]
    meta = {k: cand.params[k].float().to(dev) for k in names}
    scratch = [
        {k: v.to(dev) for k, v in scratch_params(cand.spec, 100 + i).items()}
        for i in range(len(tasks))
    ]
    configs = [
        {"lr": args.inner_lr, "optimizer": "sgd"},
        {"lr": 0.3, "optimizer": "sgd"},
        {"lr": 1e-3, "optimizer": "adam"},
        {"lr": 3e-3, "optimizer": "adam"},
        {"lr": 1e-2, "optimizer": "adam"},
    ]
    print(f"{'init':<8} {'config':<26} " + " ".join(f"{s:>12}" for s in GRID))
    for name, inits in (("meta", [meta] * len(tasks)), ("scratch", scratch)):
        for c in configs:
            row = curves(trainer, inits, c, data)
            cells = " ".join(f"{loss:>6.3f}/{acc:>5.1%}" for _, loss, acc in row)
            print(f"{name:<8} {c['optimizer'] + ' lr=' + str(c['lr']):<26} {cells}", flush=True)


if __name__ == "__main__":
    main()
