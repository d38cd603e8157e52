"""``algo=pretrain`` on global labels (issue 18, item 3): the families' global labels, the
pretraining step's gradient against a looped float64 autograd reference, the stored N-way
checkpoint, the fingerprint of other runs, bad inputs, and the Ray Train path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint
from raymeta.core.models import build_model
from raymeta.core.pretrain import EPISODIC, GLOBAL, formulation_of
from raymeta.core.train import MetaTrainConfig, MetaTrainer, derive_seed, meta_train, preflight
from raymeta.errors import ConfigError
from raymeta.tasks import make_family
from raymeta.tasks.digits import ROTATED_SPLIT, ClassPool, read_digits

TINY = {"model": "conv4", "model_options": {"hidden": 16}}
FAM = {"ways": 5, "shots": 1, "queries": 3}


def _cfg(**kw: Any) -> MetaTrainConfig:
    base: dict[str, Any] = dict(
        family="digits",
        family_options=dict(FAM),
        algo="pretrain",
        inner_steps=0,
        steps=2,
        meta_batch=3,
        val_tasks=2,
        val_every=1,
        **TINY,
    )
    base.update(kw)
    return MetaTrainConfig(**base)


# ----------------------------------------------------------------------------- global labels
def test_digits_global_labels_are_the_rotated_digit_they_show() -> None:
    """Every example labelled ``y`` in a split is an image of that split's ``y``-th (digit,
    quarter turns) class, checked against the raw packaged data rotated with numpy."""
    raw, target = read_digits()
    fam = make_family("digits")
    seen: dict[str, set[tuple[int, int]]] = {}
    for split in ("train", "val", "test"):
        table = ROTATED_SPLIT[split]
        assert fam.global_classes(split) == len(table)
        x, y = fam.sample_labelled(split, 400, torch.Generator().manual_seed(3))
        assert x.shape == (400, 1, 8, 8) and y.dtype == torch.int64
        assert int(y.min()) >= 0 and int(y.max()) < len(table)
        seen[split] = set()
        for xi, yi in zip(x.numpy(), y.tolist(), strict=True):
            digit, turns = table[yi]
            cands = np.rot90(raw[target == digit] / 16.0, turns, axes=(1, 2))
            assert np.abs(cands - xi[0]).reshape(len(cands), -1).max(1).min() < 1e-6
            seen[split].add((digit, turns))
        assert len(seen[split]) == len(table)  # 400 draws reach every class of the split
    assert not (seen["train"] & seen["val"] or seen["train"] & seen["test"])
    assert not seen["val"] & seen["test"]


def test_sample_labelled_is_deterministic_per_generator_and_distinct_within_a_draw() -> None:
    fam = make_family("digits")
    a = fam.sample_labelled("train", 64, torch.Generator().manual_seed(5))
    b = fam.sample_labelled("train", 64, torch.Generator().manual_seed(5))
    c = fam.sample_labelled("train", 64, torch.Generator().manual_seed(6))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_class_pool_labels_rotations_and_counts_exactly() -> None:
    """A synthetic pool whose pixel (0, 0) codes (base, example) and pixel (0, 1) marks the
    orientation: each drawn example is of its label's base, rotated by its label's turns,
    within that base's count, and no (class, example) pair repeats within one draw."""
    b, m, s = 3, 4, 4
    img = torch.zeros(b, m, s, s)
    for i in range(b):
        for e in range(m):
            img[i, e, 0, 0] = 10 * i + e + 1
            img[i, e, 0, 1] = 100.0
    counts = torch.tensor([4, 2, 3])
    pool = ClassPool(img, counts, rotations=True)
    classes = torch.tensor([11, 0, 5, 2])  # (base, turns): (2, 3), (0, 0), (1, 1), (0, 2)
    x, y = pool.sample_labelled(classes, 12, torch.Generator().manual_seed(0))
    pairs = set()
    for xi, yi in zip(x[:, 0], y.tolist(), strict=True):
        c = int(classes[yi])
        base, turns = divmod(c, 4)
        back = torch.rot90(xi, -turns, dims=(0, 1))  # undo the rotation: the marks return
        assert float(back[0, 1]) == 100.0
        code = int(back[0, 0]) - 1
        assert code // 10 == base and code % 10 < int(counts[base])
        pairs.add((c, code % 10))
    assert len(pairs) == 12  # the four classes hold 3 + 4 + 2 + 4 = 13 examples
    many = pool.sample_labelled(classes, 40, torch.Generator().manual_seed(0))[1]
    assert many.shape == (40,)  # past the pool: with replacement


def test_regression_and_parquet_keep_the_episodic_fallback() -> None:
    sin = make_family("sinusoid")
    assert sin.global_classes("train") is None
    with pytest.raises(ConfigError, match="global class labels are not available") as exc:
        sin.sample_labelled("train", 4, torch.Generator())
    assert "\n" not in str(exc.value)
    tr = MetaTrainer(MetaTrainConfig(family="sinusoid", algo="pretrain", steps=1, model="mlp"))
    assert tr.global_pretrain is None
    info = tr.to_checkpoint().candidate().info
    assert info["pretrain"] == {"formulation": EPISODIC} and formulation_of(info) == EPISODIC


# ----------------------------------------------------------------------------- the step
def _reference_grad(tr: MetaTrainer, step: int) -> tuple[float, dict[str, torch.Tensor]]:
    """Plain autograd in float64 on a per-example loop of cross-entropies over the C-way model,
    on the examples the trainer's shards draw (``derive_seed(seed, step, shard)``)."""
    fam, cfg = tr.family, tr.cfg
    e = fam.episode_examples()
    sizes = [cfg.meta_batch // cfg.shards + (r < cfg.meta_batch % cfg.shards) for r in range(2)]
    model = build_model(tr.global_pretrain.train_spec).double()  # type: ignore[union-attr]
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tr.params[n].double())
    total = torch.zeros((), dtype=torch.float64)
    for r in range(cfg.shards):
        g = torch.Generator().manual_seed(derive_seed(cfg.seed, step, r))
        x, y = fam.sample_labelled("train", sizes[r] * e, g)
        for xi, yi in zip(x.double(), y, strict=True):
            total = total + F.cross_entropy(model(xi[None]), yi[None])
    loss = total / (cfg.meta_batch * e)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    return float(loss.detach()), {
        n: g for (n, _), g in zip(model.named_parameters(), grads, strict=True)
    }


def test_pretraining_gradient_equals_looped_float64_reference() -> None:
    cfg = _cfg(dtype="float64", meta_batch=3, shards=2, seed=4)
    tr = MetaTrainer(cfg)
    assert tr.global_pretrain is not None and tr.global_pretrain.classes == 24
    assert tr.params["head.weight"].shape[0] == 24  # trained C-way
    loss_sum, grads = tr.local_grad(0)
    ref_loss, ref = _reference_grad(tr, 0)
    assert float(loss_sum) / cfg.meta_batch == pytest.approx(ref_loss, rel=1e-10)
    for k, v in ref.items():
        torch.testing.assert_close(grads[k] / cfg.meta_batch, v, rtol=1e-9, atol=1e-12)
    # the ranks of a 2-worker run each compute their shard; their sums are the whole step
    parts = [MetaTrainer(cfg, rank=r, world=2).local_grad(0) for r in range(2)]
    for k in grads:
        torch.testing.assert_close(parts[0][1][k] + parts[1][1][k], grads[k])
    # chunking bounds memory without changing the gradient
    chunked = MetaTrainer(_cfg(dtype="float64", meta_batch=3, shards=2, seed=4, chunk_size=1))
    for k, v in chunked.local_grad(0)[1].items():
        torch.testing.assert_close(v, grads[k], rtol=1e-12, atol=1e-14)


# ----------------------------------------------------------------------------- the checkpoint
def test_checkpoint_stores_an_n_way_zero_head_and_loads_weights_only(tmp_path: Path) -> None:
    cfg = _cfg(steps=3)
    tr = meta_train(cfg)
    trained = {k: v.detach().clone() for k, v in tr.params.items()}
    assert trained["head.weight"].shape == (24, 16)
    out = save_meta_checkpoint(tmp_path / "ck", tr.to_checkpoint(name="pre"))
    cand = load_meta_checkpoint(out).candidate("pre")
    assert cand.spec.output_dim == 5
    assert cand.info["algorithm"] == "pretrain" and formulation_of(cand.info) == GLOBAL
    assert cand.info["pretrain"] == {
        "formulation": GLOBAL,
        "classes": 24,
        "batch_size": cfg.meta_batch * 5 * (1 + 3),
        "head_init": "zeros",
    }
    assert torch.equal(cand.params["head.weight"], torch.zeros(5, 16))
    assert torch.equal(cand.params["head.bias"], torch.zeros(5))
    for k, v in trained.items():
        if not k.startswith("head."):
            assert torch.equal(cand.params[k], v)
    for f in (out / "weights").iterdir():  # tensors only: weights_only loading
        loaded = torch.load(f, weights_only=True)
        assert loaded["head.weight"].shape == (5, 16)
    model = build_model(cand.spec)
    model.load_state_dict(cand.params)  # the family's N-way model, as fine-tuning builds it
    x, _ = make_family("digits", **FAM).sample_labelled("test", 4, torch.Generator())
    assert model(x).shape == (4, 5)


def test_old_pretrain_info_reads_as_episodic() -> None:
    assert formulation_of({"algorithm": "pretrain", "metrics": {}}) == EPISODIC
    assert formulation_of({"algorithm": "maml"}) is None
    assert formulation_of({"algorithm": "pretrained", "weights": "w.pt"}) is None


def test_fingerprints_of_other_runs_are_unchanged() -> None:
    """Values computed at the commit before this feature: only pretraining on a family with
    global labels (alone or as a candidate) gets a new fingerprint."""
    assert MetaTrainConfig(family="digits").fingerprint() == "7bb97c33f61a2752"
    assert MetaTrainConfig(family="sinusoid", algo="pretrain").fingerprint() == "9fb299af49886c6b"
    assert MetaTrainConfig(family="digits", algo="pretrain").fingerprint() != "c68b45248f805454"
    both = MetaTrainConfig(family="digits", candidates=["a", "b algo=pretrain"]).validate()
    assert both.fingerprint() != "fe77eed992573c85"


# ----------------------------------------------------------------------------- bad input
class NoHeadModel(nn.Module):
    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(64, output_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_bad_inputs_are_one_line() -> None:
    fam = make_family("digits")
    for call, match in (
        (lambda: fam.sample_labelled("train", 0, torch.Generator()), "n must be an integer"),
        (lambda: fam.sample_labelled("nope", 3, torch.Generator()), "unknown split"),  # type: ignore[arg-type]
        (lambda: fam.global_classes("nope"), "unknown split"),  # type: ignore[arg-type]
        (lambda: preflight(_cfg(model=NoHeadModel, model_options={}).validate()), "named 'head"),
    ):
        with pytest.raises(ConfigError, match=match) as exc:
            call()
        assert "\n" not in str(exc.value)


# ----------------------------------------------------------------------------- Ray Train
@pytest.mark.slow  # one TorchTrainer.fit (~20 s)
def test_ray_train_pretraining_matches_in_process(ray_session: None, tmp_path: Path) -> None:
    from raymeta.orchestration.meta_train.ray_train import train_distributed

    cfg = _cfg(dtype="float64", steps=3, meta_batch=3, shards=2)
    res = train_distributed(cfg, tmp_path / "ray", workers=2, checkpoint_every=2, progress=False)
    want = meta_train(cfg)
    got = res.state["params"]
    assert got["head.weight"].shape == (24, 16)
    for k, v in want.params.items():
        torch.testing.assert_close(got[k], v.detach(), rtol=1e-6, atol=1e-8)
    cand = load_meta_checkpoint(tmp_path / "ray").candidate()
    assert cand.spec.output_dim == 5 and formulation_of(cand.info) == GLOBAL
