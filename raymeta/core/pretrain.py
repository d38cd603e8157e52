"""``algo=pretrain`` on global labels: the "pretrain on all meta-train classes" baseline.

Why: "A Closer Look at Few-shot Classification" (Chen et al. 2019) and "Rethinking Few-Shot
Image Classification" (Tian et al. 2020) show that ordinary supervised training of one C-way
classifier over *all* meta-train classes, followed by a fresh N-way head per task (fine-tune
or linear probe), is a strong few-shot baseline. Episodic multi-task pretraining is not that
baseline on classification: episodes relabel their classes 0..N-1 at random, so a shared head
can only learn to predict uniformly (BENCHMARKS.md, "Few-shot benchmarks (issue 18)").

What runs (``formulation``):

* ``global-labels``: the family exposes global classes (``TaskFamily.global_classes``; the
  image families do). The model is built with a C-way output (C = meta-train classes) and
  trained by plain cross-entropy on minibatches of meta-train examples with their global labels
  (``TaskFamily.sample_labelled``), with the run's ``steps``, ``outer_optimizer`` and
  ``outer_lr``. One step's minibatch holds ``meta_batch x episode_examples()`` examples, as
  many as the episodes of a meta-training step, so both see the same data per step; shard
  ``r`` of step ``s`` draws its ``shard_sizes(...)[r] x episode_examples()`` examples from
  ``derive_seed(seed, s, r)``, exactly as episodes are sharded, so a W-worker Ray Train run
  and an in-process run with ``shards = W`` agree. The summed loss and gradient of a shard are
  divided by ``episode_examples()`` ("per task"), so the trainer's division by the meta-batch
  makes the step's loss the mean cross-entropy over the whole minibatch.
* ``episodic``: every other family (regression, Parquet): the shared weights on each episode's
  support and query rows, as before (``MetaEngine``).

The stored checkpoint's model has the family's N-way head: the C-way head is dropped and the new
head is **zeros** (``HEAD_INIT``). Why zeros and not a standard random init: the linear probe is
convex, and from a zero head its first gradient step on the support set sets each class's
weights to (about) that class's mean feature minus the overall mean, a nearest-centroid
classifier (the known strong few-shot probe); every class starts with the same logit (loss
exactly ln N), and the head adds no randomness of its own, so two episodes differ only in their
data. It is deterministic by construction (the same for every seed). The cost: at the first
fine-tuning step the body gets no gradient through a zero head (it does from the second on).

Resume: the trainer's state (``MetaTrainer.state_dict``) holds the C-way parameters and the
optimizer state, so a Ray Train run interrupted mid-pretraining resumes from its last state
exactly like a meta-training run (and an in-process run, like in-process meta-training, does
not checkpoint mid-run). ``MetaTrainConfig.fingerprint`` adds ``pretrain_labels=global`` for
such runs, so a run of the earlier episodic formulation is never resumed into this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad_and_value

from raymeta.core.models import ModelSpec, build_model, expected_shapes, head_keys
from raymeta.errors import ConfigError
from raymeta.tasks.base import TaskFamily

if TYPE_CHECKING:
    from raymeta.core.train import MetaTrainConfig

Params = dict[str, torch.Tensor]
PRETRAIN = "pretrain"
GLOBAL = "global-labels"
EPISODIC = "episodic"
HEAD_INIT = "zeros"
INFO_KEY = "pretrain"  # the candidate info (meta.json) entry describing the formulation
FINGERPRINT_KEY = "pretrain_labels"
# built-in families whose global labels are known without building them (fingerprints)
GLOBAL_BUILTINS = ("digits", "omniglot")


def formulation(algo: str, family: TaskFamily) -> str | None:
    """``global-labels`` or ``episodic`` for ``algo=pretrain``, None for other algorithms."""
    if algo != PRETRAIN:
        return None
    if family.kind == "classification" and family.global_classes("train") is not None:
        return GLOBAL
    return EPISODIC


def family_has_global_labels(family: Any) -> bool:
    """Whether a config's family (a name or import path) pretrains on global labels, decided
    without building it (a fingerprint must not read data): the built-in image families, or a
    family class that overrides ``TaskFamily.global_classes``."""
    if family in GLOBAL_BUILTINS:
        return True
    if family in ("sinusoid", "parquet"):
        return False
    try:
        from raymeta.plugins import resolve

        obj = resolve("family", str(family))
    except Exception:  # an unresolvable name fails where the family is built, not here
        return False
    return (
        isinstance(obj, type)
        and issubclass(obj, TaskFamily)
        and obj.global_classes is not TaskFamily.global_classes
    )


def fingerprint_tag(cfg: MetaTrainConfig) -> dict[str, str]:
    """``{"pretrain_labels": "global"}`` when ``cfg`` or one of its trained candidates
    pretrains on global labels, else nothing: every other run keeps its fingerprint."""
    algos = {cfg.algo}
    # candidates may still be dicts here (configs whose per-candidate parts are fingerprinted
    # before conversion, e.g. each trained candidate's own run): read both forms
    for cand in cfg.candidates:
        algo = getattr(cand, "algo", None) if not isinstance(cand, Mapping) else cand.get("algo")
        weights = (
            getattr(cand, "weights", None) if not isinstance(cand, Mapping) else cand.get("weights")
        )
        if weights is None:
            algos.add(algo or cfg.algo)
    if PRETRAIN in algos and family_has_global_labels(cfg.family):
        return {FINGERPRINT_KEY: "global"}
    return {}


def formulation_of(info: Mapping[str, Any]) -> str | None:
    """The pretraining formulation a stored candidate's info records; ``episodic`` for a
    pretrain candidate written before the key existed (the only one there was), None for
    candidates that are not pretrained by ``algo=pretrain``."""
    if info.get("algorithm") != PRETRAIN:
        return None
    entry = info.get(INFO_KEY)
    if isinstance(entry, Mapping) and isinstance(entry.get("formulation"), str):
        return str(entry["formulation"])
    return EPISODIC


class GlobalPretraining:
    """The global-label pretraining of one run: its C-way model spec, its minibatches and
    gradient, and the N-way model it stores. ``spec`` is the family's N-way spec."""

    def __init__(self, family: TaskFamily, spec: ModelSpec, episode_examples: int):
        classes = family.global_classes("train")
        if classes is None or classes < 1:
            raise ConfigError(f"{family.name}: no global classes in meta-split 'train'")
        self.family = family
        self.classes = int(classes)
        self.spec = spec
        self.train_spec = replace(spec, output_dim=self.classes)
        self.per_task = int(episode_examples)
        n_way, c_way = expected_shapes(spec), expected_shapes(self.train_spec)
        self.head = head_keys(list(n_way))
        if not self.head:
            raise ConfigError(
                f"algo=pretrain on {family.name}'s global labels needs a model whose output "
                f"layer's parameters are named 'head.*' (as mlp and conv4's are); "
                f"{spec.name!r} has none"
            )
        body_n = {k: v for k, v in n_way.items() if k not in self.head}
        body_c = {k: v for k, v in c_way.items() if k not in self.head}
        if body_n != body_c or set(head_keys(list(c_way))) != set(self.head):
            raise ConfigError(
                f"algo=pretrain on global labels: model {spec.name!r}'s parameters outside "
                "'head.*' change with its number of outputs, so its C-way body cannot carry "
                "over to an N-way head"
            )
        self.head_shapes = {k: n_way[k] for k in self.head}

    def skeleton(self, device: torch.device, dtype: torch.dtype) -> nn.Module:
        """The N-way model for evaluating stored parameters; built without touching the global
        RNG (the run's C-way model was built from the seed, and resumes restore that RNG)."""
        with torch.random.fork_rng(devices=[]):
            return build_model(self.spec).to(device=device, dtype=dtype)

    def draw(
        self, seeds: list[int], tasks: list[int], device: torch.device, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The labelled minibatch of the given shards: shard ``i`` draws ``tasks[i] x
        per_task`` examples from a generator seeded with ``seeds[i]``."""
        xs, ys = [], []
        for seed, n in zip(seeds, tasks, strict=True):
            g = torch.Generator().manual_seed(seed)
            x, y = self.family.sample_labelled("train", n * self.per_task, g)
            xs.append(x)
            ys.append(y)
        x, y = torch.cat(xs), torch.cat(ys)
        return x.to(device=device, dtype=dtype), y.to(device=device)

    def grad(
        self,
        model: nn.Module,
        params: Mapping[str, torch.Tensor],
        x: torch.Tensor,
        y: torch.Tensor,
        chunk: int | None = None,
    ) -> tuple[torch.Tensor, Params]:
        """Summed cross-entropy over ``(x, y)`` divided by ``per_task`` and its gradient with
        respect to ``params`` (summed over chunks of ``chunk`` examples to bound memory)."""
        detached = {k: v.detach() for k, v in params.items()}

        def loss(p: Params, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            out = functional_call(model, p, (xb,))
            return F.cross_entropy(out, yb, reduction="sum") / self.per_task

        n = int(x.shape[0])
        size = n if not chunk else max(1, chunk)
        total = x.new_zeros(())
        grads: Params = {}
        for s in range(0, n, size):
            g, lv = grad_and_value(loss)(detached, x[s : s + size], y[s : s + size])
            total = total + lv.detach()
            grads = g if not grads else {k: grads[k] + g[k] for k in grads}
        return total, grads

    def n_way(self, params: Mapping[str, torch.Tensor]) -> Params:
        """The stored model's parameters: the body as trained, the N-way head zeros."""
        out = {k: v.detach() for k, v in params.items() if k not in self.head}
        ref = next(iter(out.values())) if out else torch.zeros(())
        for k, shape in self.head_shapes.items():
            out[k] = torch.zeros(shape, dtype=ref.dtype, device=ref.device)
        return out

    def info(self, meta_batch: int) -> dict[str, Any]:
        """What the checkpoint records (candidate info ``pretrain``): the formulation, C, the
        minibatch size and how the N-way head was initialised."""
        return {
            "formulation": GLOBAL,
            "classes": self.classes,
            "batch_size": meta_batch * self.per_task,
            "head_init": HEAD_INIT,
        }
