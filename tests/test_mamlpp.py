"""MAML++ options (multi-step loss, learned per-step inner rates, cosine outer lr, derivative-
order annealing) and Meta-SGD on conv nets: the engine's vmap and folded paths against the
looped float64 reference, the schedules, resume, checkpoints and the bad-input contract."""

from __future__ import annotations

import io
import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import torch

from raymeta.cli.main import main as cli_main
from raymeta.core.checkpoint import load_meta_checkpoint, save_meta_checkpoint
from raymeta.core.engine import LSLR_PREFIX, InnerConfig, MetaEngine
from raymeta.core.models import ModelSpec, build_model
from raymeta.core.reference import ref_adapt, ref_loss, ref_meta_grad
from raymeta.core.train import (
    LATER_DEFAULTS,
    MetaTrainConfig,
    MetaTrainer,
    meta_train,
    msl_weights,
    outer_lr_at,
)
from raymeta.errors import CheckpointError, ConfigError
from raymeta.tasks.base import TaskBatch

STEPS, LR = 3, 0.1
F64 = torch.float64


def _rel(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert sorted(a) == sorted(b)
    diff = torch.sqrt(sum(((a[k] - b[k]) ** 2).sum() for k in b))
    return float(diff / torch.sqrt(sum((b[k] ** 2).sum() for k in b)))


def _mlp(n: int = 3) -> tuple[torch.nn.Module, str, TaskBatch]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = build_model(ModelSpec("mlp", (1,), 1, {"widths": [8, 8]})).double()
    xs, xq = (
        torch.randn(n, 5, 1, generator=g, dtype=F64),
        torch.randn(n, 6, 1, generator=g, dtype=F64),
    )
    return model, "regression", TaskBatch(xs, torch.sin(3 * xs), xq, torch.sin(3 * xq))


def _conv4(n: int = 2) -> tuple[torch.nn.Module, str, TaskBatch]:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model = build_model(ModelSpec("conv4", (1, 12, 12), 3, {"hidden": 4})).double()
    batch = TaskBatch(
        torch.randn(n, 3, 1, 12, 12, generator=g, dtype=F64),
        torch.randint(0, 3, (n, 3), generator=g),
        torch.randn(n, 4, 1, 12, 12, generator=g, dtype=F64),
        torch.randint(0, 3, (n, 4), generator=g),
    )
    return model, "classification", batch


def _params(engine: MetaEngine) -> dict[str, torch.Tensor]:
    """Initial meta-parameters with distinct learned rates (Meta-SGD's per entry, LSLR's per
    step), so a mix-up of rates or steps would show."""
    g = torch.Generator().manual_seed(7)
    return {
        k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype))
        if k.startswith(("lr.", LSLR_PREFIX))
        else v
        for k, v in engine.init_params().items()
    }


MSL = (0.2, 0.3, 0.5)

CASES = [
    # model, algo, conv path, LSLR, MSL weights, first-order step
    ("mlp", "maml", "vmap", True, MSL, False),
    ("mlp", "maml", "folded", True, MSL, False),
    ("mlp", "anil", "vmap", True, MSL, False),
    ("mlp", "metasgd", "vmap", False, MSL, False),
    ("mlp", "maml", "vmap", False, None, True),
    ("conv4", "maml", "vmap", True, MSL, False),
    ("conv4", "maml", "folded", True, MSL, False),
    ("conv4", "fomaml", "folded", True, None, False),
    ("conv4", "anil", "folded", True, MSL, False),
    ("conv4", "metasgd", "vmap", False, None, False),
    ("conv4", "metasgd", "folded", False, None, False),
    ("conv4", "metasgd", "folded", False, MSL, False),
    ("conv4", "maml", "vmap", False, None, True),
    ("conv4", "maml", "folded", True, MSL, True),
]


@pytest.mark.parametrize(("model_name", "algo", "path", "lslr", "weights", "fo"), CASES)
def test_options_match_looped_reference(
    model_name: str,
    algo: str,
    path: str,
    lslr: bool,
    weights: tuple[float, ...] | None,
    fo: bool,
) -> None:
    model, kind, batch = _mlp() if model_name == "mlp" else _conv4()
    steps = STEPS
    if model_name == "conv4":  # two inner steps keep the float64 double-backward cheap on CPU
        steps, weights = 2, None if weights is None else (0.4, 0.6)
    engine = MetaEngine(
        model,
        kind,
        algo,
        InnerConfig(steps, LR, learn_lr=lslr),
        chunk_size=2,
        conv_path=path,  # type: ignore[arg-type]
    )
    assert engine.uses_folded(torch.device("cpu")) == (path == "folded")
    params = _params(engine)
    if lslr:
        want = engine.adapt_keys
        assert sorted(k for k in params if k.startswith(LSLR_PREFIX)) == sorted(
            LSLR_PREFIX + k for k in want
        )
        assert all(params[LSLR_PREFIX + k].shape == (steps,) for k in want)
    loss, grads = engine.meta_grad(params, batch, first_order=fo, step_weights=weights)
    ref_l, ref_g = ref_meta_grad(
        model, kind, algo, params, batch, steps, LR, fo, learn_lr=lslr, step_weights=weights
    )
    assert sorted(grads) == sorted(params)
    assert abs(float(loss) - float(ref_l)) <= 1e-10 * abs(float(ref_l))
    assert _rel(grads, ref_g) <= 1e-9
    if lslr:  # the learned rates get a real gradient
        assert all(float(grads[LSLR_PREFIX + k].abs().max()) > 0 for k in engine.adapt_keys)


def test_checkpointed_inner_loop_with_msl_and_lslr() -> None:
    model, kind, batch = _conv4()
    ckpt = MetaEngine(model, kind, "maml", InnerConfig(2, LR, checkpoint=True, learn_lr=True))
    params = _params(ckpt)
    loss, grads = ckpt.meta_grad(params, batch, step_weights=(0.4, 0.6))
    ref_l, ref_g = ref_meta_grad(
        model, kind, "maml", params, batch, 2, LR, learn_lr=True, step_weights=(0.4, 0.6)
    )
    assert abs(float(loss) - float(ref_l)) <= 1e-10 * abs(float(ref_l))
    assert _rel(grads, ref_g) <= 1e-9


def test_one_hot_weights_and_first_order_override() -> None:
    """Weights (0, .., 0, 1) are the plain loss; ``first_order=True`` is FOMAML's gradient and
    differs from MAML's; it never makes FOMAML second-order."""
    model, kind, batch = _mlp()
    maml = MetaEngine(model, kind, "maml", InnerConfig(STEPS, LR))
    params = maml.init_params()
    plain = maml.meta_grad(params, batch)
    hot = maml.meta_grad(params, batch, step_weights=(0.0, 0.0, 1.0))
    assert torch.equal(plain[0], hot[0]) and _rel(hot[1], plain[1]) <= 1e-12
    fomaml = MetaEngine(model, kind, "fomaml", InnerConfig(STEPS, LR)).meta_grad(params, batch)
    annealed = maml.meta_grad(params, batch, first_order=True)
    assert _rel(annealed[1], fomaml[1]) <= 1e-12
    assert _rel(annealed[1], plain[1]) > 1e-3


# ------------------------------------------------------------------------- MSL weights
def _antoniou(s: int, epoch: int, n: int) -> list[float]:
    """A transcription of MAML++'s ``get_per_step_loss_importance_vector`` (numpy there)."""
    w = [1.0 / s] * s
    decay = 1.0 / s / n
    floor = 0.03 / s
    for i in range(s - 1):
        w[i] = max(w[i] - epoch * decay, floor)
    w[-1] = min(w[-1] + epoch * (s - 1) * decay, 1.0 - (s - 1) * floor)
    return w


@pytest.mark.parametrize("s", [1, 2, 5])
def test_msl_weight_schedule(s: int) -> None:
    n = 40
    assert msl_weights(s, 0, 0) is None and msl_weights(s, n, n) is None
    assert msl_weights(s, 0, n) == pytest.approx([1.0 / s] * s)  # uniform at the start
    prev: tuple[float, ...] | None = None
    for t in range(n):
        w = msl_weights(s, t, n)
        assert w is not None and len(w) == s
        assert math.isclose(sum(w), 1.0, rel_tol=1e-12)
        assert list(w) == pytest.approx(_antoniou(s, t, n), abs=1e-15)
        assert all(x >= 0.03 / s - 1e-15 for x in w[:-1])
        if prev is not None:  # non-final weights fall, the final one grows
            assert all(a <= b for a, b in zip(w[:-1], prev[:-1], strict=True))
            assert w[-1] >= prev[-1]
        prev = w
    if s > 1:  # near the end the non-final weights sit at their floor
        assert msl_weights(s, n - 1, n)[0] == pytest.approx(0.03 / s)  # type: ignore[index]


# ----------------------------------------------------------------------- outer schedule
def test_cosine_outer_lr_equals_torch_cosine_annealing() -> None:
    cfg = MetaTrainConfig(steps=17, outer_lr=0.01, outer_schedule="cosine", outer_lr_min=1e-4)
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=cfg.outer_lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.steps, eta_min=1e-4)
    for step in range(cfg.steps):
        assert outer_lr_at(cfg, step) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()
    assert outer_lr_at(replace(cfg, outer_schedule="constant", outer_lr_min=0.0), 9) == 0.01


SMALL = MetaTrainConfig(
    family="sinusoid",
    model_options={"widths": [8, 8]},
    inner_steps=2,
    inner_lr=0.02,
    outer_lr=0.005,
    steps=8,
    meta_batch=4,
    dtype="float64",
    val_tasks=4,
    val_every=4,
    multi_step_loss=5,
    learn_inner_lr=True,
    outer_schedule="cosine",
    outer_lr_min=1e-4,
    first_order_until=3,
)


def test_interrupted_run_resumed_from_checkpoint_equals_uninterrupted() -> None:
    whole = meta_train(SMALL)
    first = MetaTrainer(SMALL)
    for _ in range(4):
        first.apply(first.local_grad()[1])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)  # what the Ray worker writes (state.pt)
    buf.seek(0)
    resumed = MetaTrainer(SMALL)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    assert resumed.step == 4
    while resumed.step < SMALL.steps:
        resumed.apply(resumed.local_grad()[1])
    for k, v in whole.params.items():
        assert torch.equal(resumed.params[k], v), k
    assert whole.opt.param_groups[0]["lr"] == pytest.approx(outer_lr_at(SMALL, SMALL.steps - 1))
    # the learned rates moved away from the inner lr, per step
    rates = [v for k, v in whole.params.items() if k.startswith(LSLR_PREFIX)]
    assert rates and all(v.shape == (2,) for v in rates)
    assert any(float((v.detach() - SMALL.inner_lr).abs().max()) > 1e-6 for v in rates)


@pytest.mark.parametrize("algo", ["maml", "metasgd"])
def test_rates_lr_scale_moves_only_the_learned_rates_slower(algo: str) -> None:
    """Adam's first step moves every element by ~its learning rate, so with
    ``rates_lr_scale=0.1`` the learned rates (LSLR's ``lslr.*``, Meta-SGD's ``lr.*``) move a
    tenth as far as with 1, and every other parameter exactly as far."""
    from raymeta.core.engine import LR_PREFIX

    base = replace(SMALL, multi_step_loss=0, first_order_until=0, outer_schedule="constant")
    base = replace(base, outer_lr_min=0.0, algo=algo, learn_inner_lr=algo == "maml")
    moved = {}
    for scale in (1.0, 0.1):
        tr = MetaTrainer(replace(base, rates_lr_scale=scale).validate())
        before = {k: v.detach().clone() for k, v in tr.params.items()}
        tr.apply(tr.local_grad()[1])
        moved[scale] = {k: (tr.params[k].detach() - before[k]) for k in before}
    rates = [k for k in moved[1.0] if k.startswith((LSLR_PREFIX, LR_PREFIX))]
    assert rates and len(rates) < len(moved[1.0])
    for k, d in moved[1.0].items():
        if k in rates:
            assert torch.allclose(moved[0.1][k], 0.1 * d, rtol=1e-6, atol=1e-15), k
            assert float(d.abs().max()) > 0
        else:
            assert torch.equal(moved[0.1][k], d), k


def test_rates_lr_scale_resumes_exactly_and_keeps_old_fingerprints() -> None:
    cfg = replace(SMALL, rates_lr_scale=0.25).validate()
    whole = meta_train(cfg)
    first = MetaTrainer(cfg)
    for _ in range(4):
        first.apply(first.local_grad()[1])
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    resumed = MetaTrainer(cfg)
    resumed.load_state_dict(torch.load(buf, weights_only=True))
    while resumed.step < cfg.steps:
        resumed.apply(resumed.local_grad()[1])
    for k, v in whole.params.items():
        assert torch.equal(resumed.params[k], v), k
    # another scale is another run (the default's fingerprint: test_old_meta_json_...)
    assert cfg.fingerprint() != SMALL.fingerprint()


def test_order_annealing_switches_at_n() -> None:
    cfg = replace(SMALL, multi_step_loss=0, learn_inner_lr=False)
    tr = MetaTrainer(cfg)
    params = {k: v.detach() for k, v in tr.params.items()}
    model, kind = tr.engine.model, tr.engine.kind
    for step, fo in [(2, True), (3, False)]:
        loss, grads = tr.local_grad(step)
        batch = tr.draw(step)
        _, want = ref_meta_grad(model, kind, "maml", params, batch, 2, cfg.inner_lr, fo)
        _, other = ref_meta_grad(model, kind, "maml", params, batch, 2, cfg.inner_lr, not fo)
        n = cfg.meta_batch
        assert _rel({k: g / n for k, g in grads.items()}, want) <= 1e-10
        assert _rel({k: g / n for k, g in grads.items()}, other) > 1e-4


def test_msl_weights_follow_the_outer_step() -> None:
    cfg = replace(SMALL, learn_inner_lr=False, first_order_until=0)
    tr = MetaTrainer(cfg)
    params = {k: v.detach() for k, v in tr.params.items()}
    model, kind = tr.engine.model, tr.engine.kind
    for step in (1, 5):  # 5 = multi_step_loss: the plain final-step loss from here on
        w = msl_weights(2, step, 5)
        assert (w is None) == (step == 5)
        loss, _ = tr.local_grad(step)
        want, _ = ref_meta_grad(
            model, kind, "maml", params, tr.draw(step), 2, cfg.inner_lr, step_weights=w
        )
        assert float(loss) / cfg.meta_batch == pytest.approx(float(want), rel=1e-10)


# ------------------------------------------------------------ learned rates downstream
def test_evaluate_and_validation_use_learned_rates() -> None:
    model, kind, batch = _mlp(4)
    engine = MetaEngine(model, kind, "maml", InnerConfig(2, LR, learn_lr=True))
    params = _params(engine)

    def ref_eval(p: dict[str, torch.Tensor], steps: int) -> float:
        losses = []
        for i in range(batch.n_tasks):
            leaf = {k: v.detach().requires_grad_(True) for k, v in p.items()}
            fast = ref_adapt(
                model,
                kind,
                leaf,
                batch.xs[i],
                batch.ys[i],
                steps,
                LR,
                first_order=True,
                learn_lr=True,
            )
            out = model_call(model, fast, batch.xq[i])
            losses.append(float(ref_loss(kind, out, batch.yq[i]).detach()))
        return sum(losses) / len(losses)

    assert engine.evaluate(params, batch)["loss"] == pytest.approx(ref_eval(params, 2), rel=1e-10)
    # an engine built without LSLR still runs the loop the parameters carry (a loaded checkpoint)
    plain = MetaEngine(model, kind, "maml", InnerConfig(2, LR))
    assert plain.evaluate(params, batch)["loss"] == engine.evaluate(params, batch)["loss"]
    # past its learned steps the loop goes on at the fixed inner lr
    padded = {
        k: torch.cat([v, v.new_full((2,), LR)]) if k.startswith(LSLR_PREFIX) else v
        for k, v in params.items()
    }
    assert engine.evaluate(params, batch, steps=4)["loss"] == pytest.approx(
        ref_eval(padded, 4), rel=1e-10
    )


def model_call(model: torch.nn.Module, p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    return torch.func.functional_call(model, p, (x,))


def test_lslr_checkpoint_round_trip_and_validation(tmp_path: Path) -> None:
    # SMALL's MAML++ lengths (5, 3) are longer than two steps: shortened with the run
    tr = meta_train(replace(SMALL, steps=2, multi_step_loss=2, first_order_until=1))
    ck = tr.to_checkpoint({"val_loss": 1.0})
    cand = ck.candidate()
    assert len(cand.info["learned_inner_lrs"]) == 2
    save_meta_checkpoint(tmp_path / "ok", ck)
    loaded = load_meta_checkpoint(tmp_path / "ok").candidate()
    assert sorted(loaded.params) == sorted(cand.params)
    # the loaded rates drive meta-validation exactly like the trainer's own
    batch = tr.family.sample("val", 3, torch.Generator().manual_seed(0)).to("cpu", F64)
    got = tr.engine.evaluate({k: v.double() for k, v in loaded.params.items()}, batch)["loss"]
    want = tr.engine.evaluate({k: v.detach().float().double() for k, v in tr.params.items()}, batch)
    assert got == pytest.approx(want["loss"], rel=1e-12)
    key = next(k for k in cand.params if k.startswith(LSLR_PREFIX))
    for bad, needle in [
        ({**cand.params, key: torch.zeros(3)}, "needs floating point (2,)"),
        ({k: v for k, v in cand.params.items() if k != key}, "missing"),
        ({**cand.params, LSLR_PREFIX + "nope": torch.zeros(2)}, "unexpected tensor"),
    ]:
        ck.candidates[cand.name].params = bad
        save_meta_checkpoint(tmp_path / "bad", ck, overwrite=True)
        with pytest.raises(CheckpointError, match="does not match|needs floating") as e:
            load_meta_checkpoint(tmp_path / "bad")
        assert needle in str(e.value) and "\n" not in str(e.value)


def test_old_meta_json_without_the_new_fields_loads(tmp_path: Path) -> None:
    cfg = replace(SMALL, steps=1, multi_step_loss=0, learn_inner_lr=False)
    cfg = replace(cfg, outer_schedule="constant", outer_lr_min=0.0, first_order_until=0)
    tr = meta_train(cfg)
    save_meta_checkpoint(tmp_path / "ck", tr.to_checkpoint({}))
    meta_file = tmp_path / "ck" / "meta.json"
    meta = json.loads(meta_file.read_text())
    for k in LATER_DEFAULTS:  # what an earlier raymeta wrote
        del meta["config"][k]
    meta_file.write_text(json.dumps(meta))
    old = load_meta_checkpoint(tmp_path / "ck")
    back = MetaTrainConfig.from_dict(old.config).validate()
    assert back == cfg.validate()
    # the fingerprint is the one the earlier raymeta computed (resume checks stay valid)
    import hashlib

    earlier = hashlib.sha256(repr(sorted(old.config.items())).encode()).hexdigest()[:16]
    assert back.fingerprint() == earlier
    assert replace(back, multi_step_loss=3).fingerprint() != earlier


# ------------------------------------------------------------------------- bad inputs
BAD: list[tuple[dict[str, Any], str]] = [
    ({"algo": "metasgd", "learn_inner_lr": True}, "learn-inner-lr needs one of maml"),
    ({"algo": "reptile", "learn_inner_lr": True}, "learn-inner-lr needs"),
    ({"algo": "pretrain", "learn_inner_lr": True}, "learn-inner-lr needs"),
    ({"inner_steps": 0, "learn_inner_lr": True}, "inner-steps >= 1"),
    ({"multi_step_loss": -1}, "multi-step-loss"),
    ({"multi_step_loss": 1.5}, "multi-step-loss"),
    ({"algo": "reptile", "multi_step_loss": 5}, "multi-step-loss needs"),
    ({"outer_schedule": "cosine", "outer_lr_min": 1e-3}, "must be below outer-lr"),
    ({"outer_schedule": "cosine", "outer_lr_min": 1.0}, "must be below outer-lr"),
    ({"outer_schedule": "cosine", "outer_lr_min": float("nan")}, "outer-lr-min"),
    ({"outer_schedule": "cosine", "outer_lr_min": float("inf")}, "outer-lr-min"),
    ({"outer_schedule": "cosine", "outer_lr_min": -1e-5}, "outer-lr-min"),
    ({"outer_lr_min": 1e-5}, "only applies with --outer-schedule cosine"),
    ({"outer_schedule": "linear"}, "outer-schedule"),
    ({"first_order_until": -2}, "first-order-until"),
    ({"algo": "fomaml", "first_order_until": 5}, "first-order-until anneals"),
    ({"first_order": True, "first_order_until": 5}, "first-order-until anneals"),
    ({"learn_inner_lr": "yes"}, "learn-inner-lr"),
    ({"learn_inner_lr": True, "rates_lr_scale": 0.0}, "rates-lr-scale"),
    ({"learn_inner_lr": True, "rates_lr_scale": float("nan")}, "rates-lr-scale"),
    ({"learn_inner_lr": True, "rates_lr_scale": float("inf")}, "rates-lr-scale"),
    ({"learn_inner_lr": True, "rates_lr_scale": -0.1}, "rates-lr-scale"),
    ({"learn_inner_lr": True, "rates_lr_scale": "0.1"}, "rates-lr-scale"),
    ({"rates_lr_scale": 0.1}, "rates-lr-scale scales the outer lr of learned inner rates"),
]


@pytest.mark.parametrize(("kw", "needle"), BAD)
def test_bad_options_are_one_line_config_errors(kw: dict[str, Any], needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        MetaTrainConfig(**kw).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_engine_refuses_bad_lslr_and_weights() -> None:
    model, kind, batch = _mlp()
    for algo in ("metasgd", "reptile", "pretrain"):
        with pytest.raises(ConfigError, match="learned per-step"):
            MetaEngine(model, kind, algo, InnerConfig(2, LR, learn_lr=True))
    engine = MetaEngine(model, kind, "maml", InnerConfig(2, LR))
    for w in [(1.0,), (0.5, float("nan")), (-0.1, 1.1)]:
        with pytest.raises(ConfigError, match="multi-step loss weights"):
            engine.meta_grad(engine.init_params(), batch, step_weights=w)
    reptile = MetaEngine(model, kind, "reptile", InnerConfig(2, LR))
    with pytest.raises(ConfigError, match="multi-step loss works with"):
        reptile.meta_grad(reptile.init_params(), batch, step_weights=(0.5, 0.5))


def test_cli_flags_and_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from raymeta.cli.main import build_parser
    from raymeta.cli.meta_train import build_config

    args = build_parser().parse_args(
        [
            "meta-train",
            "--inner-steps",
            "3",
            "--multi-step-loss",
            "50",
            "--learn-inner-lr",
            "--outer-schedule",
            "cosine",
            "--outer-lr-min",
            "1e-5",
            "--first-order-until",
            "20",
            "--rates-lr-scale",
            "0.1",
        ]
    )
    cfg = build_config(args)
    assert (cfg.multi_step_loss, cfg.learn_inner_lr, cfg.outer_schedule) == (50, True, "cosine")
    assert (cfg.outer_lr_min, cfg.first_order_until, cfg.rates_lr_scale) == (1e-5, 20, 0.1)
    out = str(tmp_path / "o")
    for argv, needle in [
        (["--algo", "metasgd", "--learn-inner-lr"], "learn-inner-lr needs one of"),
        (["--outer-schedule", "cosine", "--outer-lr-min", "0.01"], "must be below outer-lr"),
        (["--algo", "fomaml", "--first-order-until", "3"], "first-order-until anneals"),
        (["--rates-lr-scale", "0.1"], "needs --learn-inner-lr or algo metasgd"),
    ]:
        assert cli_main(["meta-train", "--local", "--out", out, *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("raymeta: error:") and needle in err[0]
    with pytest.raises(SystemExit) as ex:  # argparse's own range check
        cli_main(["meta-train", "--local", "--out", out, "--multi-step-loss", "-1"])
    assert ex.value.code == 2
    assert not (tmp_path / "o").exists()
