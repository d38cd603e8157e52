"""Sinusoid toward 0.20 (issue 18; BENCHMARKS.md "Sinusoid toward 0.20"): meta-train one
variant and score it with the bench's own evaluation (raymeta.bench.fewshot.finetune_episodes: 500 test tasks, K=5, SGD at the inner lr, all layers,
whole support set) at several meta-steps; extra fine-tune lrs scored on 64 meta-val tasks and
on test. Why a script: the screens need MSE at several meta-steps of one run, which the bench
command does not print. Usage (one torch thread, as the recorded runs):
  python benchmarks/sinusoid_curve.py NAME STEPS EVAL_EVERY JSON_OVERRIDES [JSON_EXTRA_LRS]
An ANIL init (``"algo": "anil"``) is fine-tuned as its paper does: head only. An init that
learns its inner rates (``"learn_inner_lr": true`` or ``"algo": "metasgd"``, with
``"rates_lr_scale"``) is also scored with its own inner loop (the bench's learned-loop row,
``learned_loop_episodes``) after 1 / 2 / 3 / 5 / 10 steps, and on meta-val after its own steps:
BENCHMARKS.md "Learned inner rates on sinusoid", e.g.
  python benchmarks/sinusoid_curve.py L3 5000 1000 '{"learn_inner_lr":true,"inner_steps":3,
    "rates_lr_scale":0.1,"outer_lr":1e-2,"outer_schedule":"cosine","outer_lr_min":1e-5,
    "model_options":{"widths":[40,40,40]}}'
"""

import json
import sys
import time

import torch

from raymeta.bench.fewshot import finetune_episodes, interval, learned_loop, learned_loop_episodes
from raymeta.core.train import MetaTrainConfig, MetaTrainer, diverged, nonfinite
from raymeta.finetune.hparams import default_config
from raymeta.tasks import FamilySpec, make_family

torch.set_num_threads(1)
name, steps, every = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
over = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
fam = {"shots": 5, "queries": 10, "task_shots": 5, "test_size": 100}
meta = {
    "model": "mlp",
    "model_options": {"widths": [40, 40]},
    "meta_batch": 25,
    "algo": "maml",
    "inner_steps": 1,
    "inner_lr": 0.01,
    "outer_lr": 1e-3,
    **over,
    "steps": steps,
}
cfg = MetaTrainConfig(
    family="sinusoid", family_options=fam, seed=0, val_every=steps, val_tasks=32, **meta
).validate()
family = make_family(FamilySpec("sinusoid", fam))
test = [family.task("test", i) for i in range(500)]
val = [family.task("val", i) for i in range(64)]
lrs = sorted({cfg.inner_lr, *json.loads(sys.argv[5] if len(sys.argv) > 5 else "[]")})
tr = MetaTrainer(cfg)
t0 = time.perf_counter()
train_s = 0.0
print(f"# {name}: {json.dumps(meta)}", flush=True)
while tr.step < steps:
    a = time.perf_counter()
    loss, grads = tr.local_grad()
    if bool(nonfinite(loss, grads)):
        print(f"{name} diverged at {tr.step}", flush=True)
        raise diverged(tr.step)
    tr.apply(grads)
    train_s += time.perf_counter() - a
    if tr.step % every == 0 or tr.step == steps:
        cand = tr.to_checkpoint(name="meta").candidate()
        parts = []
        for lr in lrs:
            c = default_config(lr, 10, 5, "meta")
            if cfg.algo == "anil":
                c["adapt"] = "head"
            te = finetune_episodes(cand, test, c, "meta", (1, 5, 10), 0)
            va = finetune_episodes(cand, val, c, "meta", (10,), 0)[10]
            ivs = {k: interval(v) for k, v in te.items()}
            parts.append(
                f"lr {lr:g}: "
                + " / ".join(f"{ivs[k].mean:.3f}" for k in (1, 5, 10))
                + f" ±{ivs[10].half:.3f} (val10 {sum(va) / len(va):.3f})"
            )
        if learned_loop(meta, 10):
            own = learned_loop_episodes(cand, test, meta, (1, 2, 3, 5, 10))
            va = learned_loop_episodes(cand, val, meta, (cfg.inner_steps,))[cfg.inner_steps]
            parts.append(
                "own loop: "
                + " / ".join(f"{interval(v).mean:.3f}" for v in own.values())
                + f" (val{cfg.inner_steps} {sum(va) / len(va):.3f})"
            )
        print(
            f"{name} step {tr.step} train {train_s:.0f}s wall {time.perf_counter() - t0:.0f}s | "
            + " | ".join(parts),
            flush=True,
        )
