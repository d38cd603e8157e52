"""Meta-train the digits Conv4 used by the digits time-to-quality run on a GPU, save it to DIR.

    PYTHONPATH=. python3 tests/benchmarks/gpu_digits_meta.py OUT_DIR

(~3 min on an H200; the same run on the 2-core CPU, ~35 Conv4 tasks/s, would take over an hour.)
Priors and the time-to-quality runs then go on the CPU: copy OUT_DIR to runs/ttq/digits-meta and
run `time_to_quality.py --families digits` (fits priors with `--objective anytime`, ~20 min,
then the in-process sweep) and `raymeta bench tune --meta runs/ttq/digits-meta --family digits
--tasks 20 --packing-steps 0` (40 real `raymeta tune` runs).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from raymeta.core.checkpoint import save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, meta_train

CFG = MetaTrainConfig(
    family="digits",
    family_options={"ways": 5, "shots": 5, "queries": 15, "task_shots": 5},
    model="conv4",
    model_options={"hidden": 64},
    algo="maml",
    inner_steps=1,
    inner_lr=0.4,
    steps=4000,
    meta_batch=32,
    val_tasks=50,
    val_every=500,
)

if __name__ == "__main__":
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else CFG.steps
    cfg = MetaTrainConfig(**{**CFG.to_dict(), "steps": steps})
    t0 = time.perf_counter()
    tr = meta_train(cfg, progress=lambda s, m: print(s, m, flush=True), log_every=500, device=dev)
    save_meta_checkpoint(Path(sys.argv[1]), tr.to_checkpoint(), overwrite=True)
    print(f"meta-trained {steps} steps on {dev} in {time.perf_counter() - t0:.0f} s", flush=True)
