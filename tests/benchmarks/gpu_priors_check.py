"""GPU check for ``raymeta priors fit --device cuda`` (CI has no GPU; run on the device machine).

    PYTHONPATH=. python3 tests/benchmarks/gpu_priors_check.py [DIGITS_META_DIR]

1. correctness: a small sinusoid meta-init's config curves trained on CUDA equal the CPU's in
   float64 (member randomness is device-independent); float32 is reported too (rounding grows
   over 20 training steps at rates up to 1);
2. speed: with a digits Conv4 meta-checkpoint, the anytime fit of the time-to-quality recipe
   (16 meta-val tasks x 32 configs, one fresh-seed re-run, 100 steps) on CUDA; on the 2-core CPU
   it took 1,182 s. Prints the fit time and the portfolio's first configs.
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace

import numpy as np
import torch

from raymeta.core.checkpoint import load_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train
from raymeta.finetune import fit_priors
from raymeta.finetune.evaluate import evaluate_configs
from raymeta.finetune.fit import val_tasks
from raymeta.finetune.hparams import broad_space
from raymeta.priors import broad_prior
from raymeta.tasks import make_family


def correctness() -> bool:
    ckpt = meta_train(MetaTrainConfig(steps=50, meta_batch=8, val_tasks=2)).to_checkpoint()
    tasks = val_tasks(make_family(ckpt.family), 4)
    space = broad_space(["mlp"], max_batch=int(tasks[0].x_train.shape[0]), max_steps=20)
    configs = broad_prior(space).sample(16, np.random.default_rng(0))
    ok = True
    for dtype in (torch.float64, torch.float32):
        for cand in ckpt.candidates.values():
            cand.params = {k: v.to(dtype) for k, v in cand.params.items()}
        keys = ("x_train", "y_train", "x_val", "y_val")
        typed = [replace(t, **{k: getattr(t, k).to(dtype) for k in keys}) for t in tasks]
        cpu = evaluate_configs(ckpt, typed, configs, seed=1, objective="anytime")
        gpu = evaluate_configs(ckpt, typed, configs, seed=1, objective="anytime", device="cuda")
        err = float(np.nanmax(np.abs(gpu.curves - cpu.curves) / (np.abs(cpu.curves) + 1e-12)))
        tag = "   "
        if dtype == torch.float64:
            ok = bool(np.allclose(gpu.curves, cpu.curves, rtol=1e-9, equal_nan=True))
            tag = "ok " if ok else "BAD"
        print(f"{tag} curves cuda vs cpu ({dtype}), 4 tasks x 16 configs: max rel err {err:.2e}")
    return ok


def speed(meta: str) -> None:
    ckpt = load_meta_checkpoint(meta)
    t = time.perf_counter()
    pri = fit_priors(
        ckpt, n_tasks=16, n_configs=32, refine_repeats=1, objective="anytime", device="cuda"
    )
    print(
        f"digits Conv4 anytime fit on {torch.cuda.get_device_name()}: {time.perf_counter() - t:.1f} s"
    )
    for c in pri.portfolio[:4]:
        print("   ", {k: (f"{v:.3g}" if isinstance(v, float) else v) for k, v in c.items()})


if __name__ == "__main__":
    good = correctness()
    if len(sys.argv) > 1 and "--no-speed" not in sys.argv:
        speed(sys.argv[1])
    sys.exit(0 if good else 1)
