"""`raymeta tune` without Ray: packed-trial semantics, trial checkpoints, input validation."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.core.checkpoint import MetaCheckpoint, save_meta_checkpoint
from raymeta.core.train import MetaTrainConfig, MetaTrainer
from raymeta.errors import CheckpointError, ConfigError, DataError
from raymeta.finetune.hparams import broad_space
from raymeta.finetune.population import TRIAL_RULE, Population, initial_state, member_seeds
from raymeta.finetune.strategy import Strategy, member_configs
from raymeta.orchestration.tune.lineage import TrialHistory, population_curve, steps_to_reach
from raymeta.orchestration.tune.plan import TunePlan, plan_tune
from raymeta.orchestration.tune.request import TuneRequest
from raymeta.orchestration.tune.trainable import TrialSetup, load_trial, new_population, save_trial
from raymeta.priors import broad_prior
from raymeta.tasks import make_family


@pytest.fixture(scope="module")
def untrained_meta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid meta-checkpoint (random init, no priors.json): enough for planning checks."""
    ckpt: MetaCheckpoint = MetaTrainer(MetaTrainConfig(steps=1, val_tasks=1)).to_checkpoint()
    return save_meta_checkpoint(tmp_path_factory.mktemp("m") / "meta", ckpt)


def _task():
    return make_family("sinusoid", task_shots=10).task("test", 1)


def _prior():
    return broad_prior(broad_space(["mlp"], max_batch=10))


def MemberGroup(spec, kind, configs, seeds, state) -> Population:  # noqa: N802 - the old name
    """A packed trial's population (what ``MemberGroup`` was before the one runner)."""
    return Population(spec, kind, "mlp", configs, seeds, state, horizon=2**62)


def plan(meta, task, trials, members_per_trial=1, **kw) -> TunePlan:  # type: ignore[no-untyped-def]
    return plan_tune(TuneRequest(meta, task, trials, members_per_trial=members_per_trial, **kw))


def test_packed_members_equal_one_by_one(untrained_meta: Path) -> None:
    ckpt = MetaTrainer(MetaTrainConfig(steps=1, val_tasks=1)).to_checkpoint()
    cand = ckpt.candidate()
    task = _task()
    # broad-prior configs (mixed optimizers, batch sizes, head-only), lr capped so none diverges
    configs = [
        {**c, "model": "mlp", "lr": min(c["lr"], 0.03)}
        for c in _prior().sample(5, np.random.default_rng(3))
    ]
    seeds = member_seeds(0, 2, 5)
    for params in (cand.params, None):  # meta-init and per-member seeded scratch init
        packed = MemberGroup(
            cand.spec,
            "regression",
            [dict(c) for c in configs],
            seeds,
            initial_state(cand.spec, params, seeds),
        )
        singles = [
            MemberGroup(
                cand.spec,
                "regression",
                [dict(configs[i])],
                [seeds[i]],
                initial_state(cand.spec, params, [seeds[i]]),
            )
            for i in range(5)
        ]
        for _ in range(3):
            packed.train(task.x_train, task.y_train, 7)
            vp = packed.evaluate(task.x_val, task.y_val)["loss"]
            vs = torch.cat(
                [
                    g.train(task.x_train, task.y_train, 7).sum() * 0
                    + g.evaluate(task.x_val, task.y_val)["loss"]
                    for g in singles
                ]
            )
            torch.testing.assert_close(vp, vs, rtol=1e-5, atol=1e-6)
        for i, g in enumerate(singles):
            for k, v in packed.state.params.items():
                torch.testing.assert_close(v[i], g.state.params[k][0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            packed.best_val, torch.cat([g.best_val for g in singles]), rtol=1e-5, atol=1e-6
        )


def test_exploit_quarter_copies_best_and_keeps_member0_config() -> None:
    ckpt = MetaTrainer(MetaTrainConfig(steps=1, val_tasks=1)).to_checkpoint()
    cand = ckpt.candidate()
    prior = _prior()
    configs = [{**c, "model": "mlp"} for c in prior.sample(8, np.random.default_rng(0))]
    seeds = member_seeds(1, 0, 8)
    g = MemberGroup(
        cand.spec,
        "regression",
        [dict(c) for c in configs],
        seeds,
        initial_state(cand.spec, None, seeds),
    )
    g.last_val = torch.tensor([9.0, 1.0, 5.0, 2.0, math.inf, 4.0, 6.0, 3.0], dtype=torch.float64)
    before = {k: v.clone() for k, v in g.state.params.items()}
    events = g.exploit(np.random.default_rng(0), prior.perturb, TRIAL_RULE)
    assert sorted(e["dst"] for e in events) == [0, 4]  # the two worst (9.0 and inf)
    for e in events:
        assert e["src"] in (1, 3)  # the two best
        for k in before:
            assert torch.equal(g.state.params[k][e["dst"]], before[k][e["src"]])
    assert g.configs[0] == configs[0]  # Tune owns member 0's config
    assert g.configs[4] != configs[4] and prior.space.validate(g.configs[4])
    for i in (1, 2, 3, 5, 6, 7):
        assert g.configs[i] == configs[i]
        for k in before:
            assert torch.equal(g.state.params[k][i], before[k][i])
    assert g.seeds == seeds
    assert (
        MemberGroup(
            cand.spec,
            "regression",
            configs[:3],
            seeds[:3],
            initial_state(cand.spec, None, seeds[:3]),
        ).exploit(np.random.default_rng(0), prior.perturb, TRIAL_RULE)
        == []
    )


def test_trial_checkpoint_roundtrip_weights_only(tmp_path: Path) -> None:
    ckpt = MetaTrainer(MetaTrainConfig(steps=1, val_tasks=1)).to_checkpoint()
    task = _task()
    setup = TrialSetup(
        "regression",
        task.x_train,
        task.y_train,
        task.x_val,
        task.y_val,
        dict(ckpt.candidates),
        "scratch",
        _prior(),
        4,
        20,
        5,
        0,
    )
    g = new_population(setup, {"lr": 0.01, "optimizer": "adam", "model": "mlp"}, 3)
    assert g.configs[0]["lr"] == 0.01 and len(g.configs) == 4
    assert all(c["model"] == "mlp" for c in g.configs)
    g.train(task.x_train, task.y_train, 5)
    g.evaluate(task.x_val, task.y_val)
    save_trial(tmp_path, g, {"owner": "x_00003", "trial_step": 5})
    g2, info = load_trial(tmp_path, setup)
    assert info["owner"] == "x_00003" and g2.configs == g.configs and g2.seeds == g.seeds
    for k, v in g.tensors().items():
        assert torch.equal(v, g2.tensors()[k])
    g.train(task.x_train, task.y_train, 5)
    g2.train(task.x_train, task.y_train, 5)
    for k, v in g.state.params.items():
        assert torch.equal(v, g2.state.params[k])  # resuming continues the same trajectory


def test_warm_start_beats_scratch_without_ray(tmp_path: Path) -> None:
    """Same configs, same budget: meta-init members reach lower val loss than scratch ones."""
    from raymeta.core.train import meta_train

    tr = meta_train(MetaTrainConfig(steps=60, meta_batch=10, val_tasks=5, inner_lr=0.01, seed=0))
    cand = tr.to_checkpoint().candidate()
    fam = make_family("sinusoid")
    cfgs = [
        {"lr": 0.01, "optimizer": "sgd", "adapt": "all", "model": "mlp"},
        {"lr": 0.003, "optimizer": "adam", "adapt": "all", "model": "mlp"},
    ]
    wins = 0
    for i in range(6):
        t = fam.task("test", i)
        best = {}
        for name, params in (("meta", cand.params), ("scratch", None)):
            seeds = member_seeds(0, i, 2)
            g = MemberGroup(
                cand.spec,
                "regression",
                [dict(c) for c in cfgs],
                seeds,
                initial_state(cand.spec, params, seeds),
            )
            for _ in range(4):
                g.train(t.x_train, t.y_train, 5)
                g.evaluate(t.x_val, t.y_val)
            best[name] = float(g.best_val.min())
        wins += best["meta"] < best["scratch"]
    assert wins >= 5


def test_population_curve_and_steps_to_reach() -> None:
    a, b = TrialHistory("a"), TrialHistory("b")
    a.rows = [
        {"trial": "a", "spent": 10, "best_val_loss": 5.0, "wall_time": 1.0},
        {"trial": "a", "spent": 20, "best_val_loss": 2.0, "wall_time": 3.0},
    ]
    b.rows = [
        {"trial": "b", "spent": 10, "best_val_loss": 4.0, "wall_time": 2.0},
        {"trial": "b", "spent": 20, "best_val_loss": 3.0, "wall_time": 4.0},
    ]
    curve = population_curve([a, b])
    assert curve == [(10, 5.0), (20, 4.0), (30, 2.0), (40, 2.0)]
    assert steps_to_reach(curve, 4.0) == 20 and steps_to_reach(curve, 1.0) is None


def test_plan_bad_input(untrained_meta: Path, tmp_path: Path) -> None:
    from raymeta.tasks._parquet_io import write_tasks

    with pytest.raises(CheckpointError, match="no priors.json"):
        plan(untrained_meta, "sinusoid:0", 2, prior="learned")
    p = plan(untrained_meta, "sinusoid:0", 2, 4, prior="broad", budget=800)
    assert p.setup.steps_per_member == 100 and p.setup.interval == 25 and p.portfolio == []
    with pytest.raises(ConfigError, match="needs --budget >= 64"):
        plan(untrained_meta, "sinusoid:0", 4, 16, prior="broad", budget=63)
    with pytest.raises(ConfigError, match="trained on family 'sinusoid'"):
        plan(untrained_meta, "digits:0", 2, prior="broad")
    with pytest.raises(ConfigError, match="neither FAMILY:INDEX"):
        plan(untrained_meta, str(tmp_path / "missing.parquet"), 2, prior="broad")
    with pytest.raises(ConfigError, match="--scheduler"):
        plan(untrained_meta, "sinusoid:0", 2, scheduler="hyperband", prior="broad")
    t = _task()
    # a task with 3 input features cannot use a 1-input model
    wide = type(t)(
        "wide",
        t.x_train.repeat(1, 3),
        t.y_train,
        t.x_val.repeat(1, 3),
        t.y_val,
        t.x_test.repeat(1, 3),
        t.y_test,
        "regression",
        1,
    )
    write_tasks(tmp_path / "wide.parquet", [wide])
    with pytest.raises(DataError, match="takes inputs"):
        plan(untrained_meta, str(tmp_path / "wide.parquet"), 2, prior="broad")
    bad = type(t)(
        "nan", t.x_train, t.y_train.clone(), t.x_val, t.y_val, t.x_test, t.y_test, "regression", 1
    )
    bad.y_train[2] = float("nan")
    write_tasks(tmp_path / "nan.parquet", [bad])
    with pytest.raises(DataError, match="(?i)nan"):
        plan(untrained_meta, str(tmp_path / "nan.parquet"), 2, prior="broad")
    noval = type(t)(
        "noval", t.x_train, t.y_train, t.x_val[:0], t.y_val[:0], t.x_test, t.y_test, "regression", 1
    )
    write_tasks(tmp_path / "noval.parquet", [noval])
    p = plan(untrained_meta, str(tmp_path / "noval.parquet"), 2, prior="broad")
    assert p.notes and "carved" in p.notes[0] and len(p.task.x_val) > 0
    notest = type(t)(
        "notest",
        t.x_train,
        t.y_train,
        t.x_val,
        t.y_val,
        t.x_test[:0],
        t.y_test[:0],
        "regression",
        1,
    )
    write_tasks(tmp_path / "notest.parquet", [notest])
    with pytest.raises(DataError, match="test"):
        plan(untrained_meta, str(tmp_path / "notest.parquet"), 2, prior="broad")


def test_trial_device_without_cuda_is_a_clear_error() -> None:
    from raymeta.orchestration.tune.trainable import trial_device

    setup = TrialSetup(
        "regression",
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        torch.zeros(2, 1),
        {},
        "meta",
        broad_prior(broad_space(["mlp"], max_batch=2)),
        1,
        1,
        1,
        0,
    )
    assert trial_device(setup) == torch.device("cpu")
    setup.device = "cuda"
    if torch.cuda.is_available():
        assert trial_device(setup).type == "cuda"
    else:
        with pytest.raises(RuntimeError, match="torch.cuda is not available"):
            trial_device(setup)


def test_plan_fixes_every_trials_first_config_from_the_prior(untrained_meta: Path) -> None:
    """Tune's param_space marginals never draw a config: all P trials are points_to_evaluate,
    portfolio first, then seeded samples of the prior itself (its joint/conditional structure)."""
    a = plan(untrained_meta, "sinusoid:0", 6, prior="broad", seed=3)
    b = plan(untrained_meta, "sinusoid:0", 6, prior="broad", seed=3)
    c = plan(untrained_meta, "sinusoid:0", 6, prior="broad", seed=4)
    assert len(a.initial) == 6 and a.initial == b.initial and a.initial != c.initial
    for cfg in a.initial:
        assert a.prior.space.validate(cfg) == cfg
    portfolio = [dict(a.initial[1])]  # a portfolio comes first, in order
    rng = np.random.default_rng([3, 11])
    initial = member_configs(Strategy("meta", "learned"), 6, a.prior, portfolio, rng, {})
    assert initial[0] == portfolio[0] and len(initial) == 6


def test_task_options_override_split_sizes_only(
    untrained_meta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from raymeta.cli.main import main
    from raymeta.tasks._parquet_io import write_tasks

    base = plan(untrained_meta, "sinusoid:0", 2, prior="broad")
    big = plan(untrained_meta, "sinusoid:0", 2, prior="broad", task_options={"val_size": 40})
    assert len(base.task.x_val) == 10 and len(big.task.x_val) == 40
    # the same held-out task: its train split is untouched, only the val split grows
    torch.testing.assert_close(big.task.x_train, base.task.x_train)
    torch.testing.assert_close(big.task.x_val[:10], base.task.x_val)
    assert "task_options" not in base.fingerprint()  # runs started before the option still resume
    assert big.fingerprint()["task_options"] == {"val_size": 40}
    with pytest.raises(ConfigError, match="'ways' cannot be overridden"):
        plan(untrained_meta, "sinusoid:0", 2, prior="broad", task_options={"ways": 3})
    with pytest.raises(ConfigError, match="val_size"):
        plan(untrained_meta, "sinusoid:0", 2, prior="broad", task_options={"val_size": 0})
    write_tasks(tmp_path / "one.parquet", [_task()])
    with pytest.raises(ConfigError, match="not to Parquet task files"):
        plan(
            untrained_meta,
            str(tmp_path / "one.parquet"),
            2,
            prior="broad",
            task_options={"val_size": 5},
        )
    out = tmp_path / "out"
    common = ["tune", "--meta", str(untrained_meta), "--task", "sinusoid:0", "--trials", "2"]
    for bad, needle in (("val_size", "expects KEY=VALUE"), ("shots=3", "'shots' cannot be")):
        rc = main([*common, "--prior", "broad", "--out", str(out), "--task-option", bad])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and needle in err, err
    assert not out.exists()


def test_plan_notes_an_init_with_learned_rates(tmp_path: Path, untrained_meta: Path) -> None:
    """An LSLR init's rates reach only the engine's own loop: ``raymeta tune`` says so in
    its notes (printed as ``note:`` lines and stored in report.json), a plain init does not."""
    cfg = MetaTrainConfig(steps=1, val_tasks=1, inner_steps=2, learn_inner_lr=True)
    lslr = save_meta_checkpoint(tmp_path / "lslr", MetaTrainer(cfg).to_checkpoint())
    (note,) = [n for n in plan(lslr, "sinusoid:1", 2).notes if "inner rates" in n]
    assert "learned its inner rates (LSLR, 2 inner steps)" in note
    assert "one learning rate per member" in note
    assert not [n for n in plan(untrained_meta, "sinusoid:1", 2).notes if "inner rates" in n]
