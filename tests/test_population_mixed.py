"""The grouped population step on populations that mix optimizers (float64).

Members of every kind, in an order that interleaves them, trained by the grouped path
(``MemberGroups``: SGD and Adam members in contiguous slices, minibatch members in one run)
against the looped ``torch.optim`` reference member by member, and against the general path
(``GENERAL``) with moments and step counts; subsets (``members=``) and in-place training
(``inplace=``, what ``Population`` does) change nothing of any member's numbers. Every test
runs twice: with each call's segments (head-only members on their cached features) and with
the members merged into one segment (``MemberGroups.merged``, what small populations run)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import test_population_fast as fast  # tests/ is on sys.path (rootdir-less test modules)
import torch

import raymeta.finetune.step as step_module
from raymeta.core.models import ModelSpec, build_model
from raymeta.finetune.population import Population
from raymeta.finetune.reference import ref_train_member
from raymeta.finetune.step import (
    GENERAL,
    MemberGroups,
    MemberHParams,
    PopulationState,
    PopulationTrainer,
    StepPlan,
    linear_body_macs,
)

N_TRAIN, N_STEPS = 9, 8
# interleaved kinds: the grouped path reorders them (sgd-full, sgd-mini, adam-mini, adam-full)
MIXED: list[dict[str, Any]] = [
    {"lr": 0.01, "optimizer": "adam", "weight_decay": 0.05},
    {"lr": 0.05},
    {"lr": 0.02, "optimizer": "adam", "batch_size": 4, "adapt": "head"},
    {"lr": 0.03, "weight_decay": 0.1, "batch_size": 3},
    {"lr": 0.04, "optimizer": "adam", "steps": 3},  # stops early, mid-call
    {"lr": 0.1, "adapt": "head", "steps": 5},
    {"lr": 0.02, "optimizer": "adam", "batch_size": 2, "weight_decay": 0.01, "steps": 6},
    {"lr": 0.06, "batch_size": 100},  # larger than the data: full batch
    {"lr": 0.03, "optimizer": "adam", "adapt": "head", "weight_decay": 0.02, "batch_size": 5},
    {"lr": 0.02, "batch_size": 1, "adapt": "head", "weight_decay": 0.03, "steps": 1},
]
SEEDS = [21 + 3 * i for i in range(len(MIXED))]


@pytest.fixture(autouse=True, params=["segments", "merged"])
def segments(request: Any, monkeypatch: Any) -> str:
    """Runs each test with the grouped path's segments kept, then merged into one."""
    limit = -1 if request.param == "segments" else 2**62
    monkeypatch.setattr(step_module, "MERGE_MAX_BODY_MACS", limit)
    return str(request.param)


def _setup(
    configs: list[dict[str, Any]], per_member: bool
) -> tuple[PopulationTrainer, PopulationState, MemberHParams, torch.Tensor, torch.Tensor]:
    assert fast.N_TRAIN == N_TRAIN
    return fast._setup(configs, per_member, data_seed=5, seeds=SEEDS)


def _close(a: PopulationState, b: PopulationState) -> None:
    fast._close(a, b, rtol=1e-11, atol=1e-13)


def test_small_mlp_populations_merge_their_segments(monkeypatch: Any) -> None:
    """``merges``: one segment when the head-only members' body work is small (a body of
    linear layers on 1-D examples, on the CPU); the merged groups keep every row's place and
    cover every minibatch row."""
    trainer, _, hp, x, _ = _setup(MIXED, per_member=False)
    groups = MemberGroups.of(hp, N_TRAIN, StepPlan.of(hp, N_TRAIN))
    body = 2 * 6 + 6 * 5  # the test MLP's body weights: one multiply-add each per example
    assert trainer.body_macs == body
    work = groups.head_rows * N_TRAIN * body
    monkeypatch.setattr(step_module, "MERGE_MAX_BODY_MACS", work)
    assert trainer.merges(groups, x, False)
    assert trainer.merges(groups, x.expand(len(MIXED), *x.shape), True)  # per-member data
    assert not trainer.merges(groups, x.unsqueeze(-1), False)  # 2-D examples: work unknown
    monkeypatch.setattr(step_module, "MERGE_MAX_BODY_MACS", work - 1)
    assert not trainer.merges(groups, x, False)
    assert not trainer.merges(groups, x.to("meta"), False)  # CPU only
    one = groups.merged()
    assert [(g.lo, g.hi, g.head) for g in one.segments] == [(0, groups.n, False)]
    assert (one.order, one.sgd, one.sgd_all, one.adam_all) == (
        groups.order,
        groups.sgd,
        groups.sgd_all,
        groups.adam_all,
    )
    mini = [MIXED[i].get("batch_size", N_TRAIN) < N_TRAIN for i in groups.order.tolist()]
    lo, hi = one.segments[0].mini
    assert [r for r in range(groups.n) if mini[r]] == [
        r for r in range(lo, hi) if mini[r]
    ] and lo == mini.index(True)
    assert one.merged() is one


class _NormedBody(torch.nn.Module):
    """A user's model (not a built-in shape: it runs vmapped) of linear and norm layers."""

    def __init__(self, extra: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Linear(2, 4), torch.nn.LayerNorm(4), torch.nn.Tanh(), torch.nn.Linear(4, 3)
        )
        self.extra = extra
        self.head = torch.nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def test_body_work_is_known_only_for_linear_bodies() -> None:
    """``linear_body_macs``: one multiply-add per linear weight and per elementwise parameter,
    the head left out; any other module with parameters (a convolution, a custom parameter)
    makes the body's work unknown, and such populations keep their segments."""
    assert linear_body_macs(_NormedBody()) == 2 * 4 + 2 * 4 + 4 * 3
    assert linear_body_macs(_NormedBody(torch.nn.Conv1d(1, 1, 3))) is None
    assert linear_body_macs(_NormedBody(torch.nn.Embedding(3, 2))) is None
    conv = PopulationTrainer(
        build_model(ModelSpec("conv4", (1, 16, 16), 2, {"hidden": 2, "norm": "none"})),
        "classification",
    )
    trainer, _, hp, x, _ = _setup(MIXED, per_member=False)
    groups = MemberGroups.of(hp, N_TRAIN, StepPlan.of(hp, N_TRAIN))
    assert conv.body_macs is None and not conv.merges(groups, x, False)


@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_a_vmapped_users_model_matches_the_looped_reference(per_member: bool) -> None:
    """A user's linear-and-norm model (vmapped, not folded), merged or in segments by the
    fixture: every member equals the looped ``torch.optim`` reference."""
    _, _, hp, x, y = _setup(MIXED, per_member)
    torch.manual_seed(1)
    trainer = PopulationTrainer(_NormedBody().double(), "regression")
    assert not trainer.folds
    init = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    state = PopulationState.from_params(init, len(MIXED))
    out = trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member)
    _match_reference(trainer, state, out, MIXED, x, y, per_member)


@pytest.mark.parametrize("steps_per_draw", [1, 3, N_STEPS], ids=lambda k: f"{k}-steps-per-draw")
def test_minibatch_masks_drawn_several_steps_at_once(steps_per_draw: int, monkeypatch: Any) -> None:
    """``MinibatchMasks`` draws a call's masks a few steps at a time (a last draw shorter):
    the same minibatches as the general path's per-step draw, members stopping mid-call
    included."""
    trainer, state, hp, x, y = _setup(MIXED, per_member=True)
    # a run of r minibatch rows draws max(1, steps_per_draw // r) steps at a time
    monkeypatch.setattr(step_module, "MASK_CHUNK_BYTES", 8 * N_TRAIN * steps_per_draw)
    draws = []
    real = step_module.hash_uniform
    monkeypatch.setattr(
        step_module, "hash_uniform", lambda *a: draws.append(a[1].shape[0]) or real(*a)
    )
    out = trainer.train(state, hp, x, y, N_STEPS, per_member_data=True)
    assert max(draws) <= steps_per_draw and sum(draws) % N_STEPS == 0
    assert steps_per_draw > 1 or set(draws) == {1}
    monkeypatch.setattr(step_module, "hash_uniform", real)
    _close(out, trainer.train(state, hp, x, y, N_STEPS, True, plan=GENERAL))


def test_groups_are_contiguous_and_ordered() -> None:
    _, _, hp, _, _ = _setup(MIXED, per_member=False)
    groups = MemberGroups.of(hp, N_TRAIN, StepPlan.of(hp, N_TRAIN))
    assert groups.order is not None
    order = groups.order.tolist()
    assert sorted(order) == list(range(len(MIXED)))
    adam = [MIXED[i].get("optimizer") == "adam" for i in order]
    head = [MIXED[i].get("adapt") == "head" for i in order]
    mini = [MIXED[i].get("batch_size", N_TRAIN) < N_TRAIN for i in order]
    n, s = len(MIXED), groups.sgd
    assert adam == [False] * s + [True] * (n - s)
    assert head == [
        r in range(groups.sgd_all, s) or r in range(s, groups.adam_all) for r in range(n)
    ]
    segs = groups.segments
    assert [(g.lo, g.hi, g.head) for g in segs] == [
        (0, groups.sgd_all, False),
        (groups.sgd_all, groups.adam_all, True),
        (groups.adam_all, n, False),
    ]
    for g in segs:  # every minibatch row of a segment is inside its run
        assert all(g.mini[0] <= r < g.mini[1] for r in range(g.lo, g.hi) if mini[r])
    assert groups.sgd_decay and groups.adam_decay
    # members already in group order need no gather; a plan without Adam has no Adam group
    ordered = hp.index(groups.order)
    assert MemberGroups.of(ordered, N_TRAIN, StepPlan.of(ordered, N_TRAIN)).order is None
    assert MemberGroups.of(hp, N_TRAIN, StepPlan(adam=False)).sgd == n
    # no head-only member: one forward and backward for everyone
    alls = MemberGroups.of(hp, N_TRAIN, StepPlan(head_only=False))
    assert [(g.lo, g.hi, g.head) for g in alls.segments] == [(0, n, False)]


@pytest.mark.parametrize(
    "adapt", ["head", "all"], ids=["every-member-head-only", "no-member-head-only"]
)
def test_one_segment_populations_match_general_path(adapt: str) -> None:
    """Populations of one kind of adaptation (a learned prior often gives every member
    ``head``): one segment; the same numbers as the general path."""
    configs = [{**c, "adapt": adapt} for c in MIXED]
    trainer, state, hp, x, y = _setup(configs, per_member=True)
    groups = MemberGroups.of(hp, N_TRAIN, StepPlan.of(hp, N_TRAIN))
    assert [g.head for g in groups.segments] == [adapt == "head"]
    fast = trainer.train(state, hp, x, y, N_STEPS, per_member_data=True)
    _close(fast, trainer.train(state, hp, x, y, N_STEPS, True, plan=GENERAL))


def _kind(c: dict[str, Any]) -> str:
    return f"{c.get('optimizer', 'sgd')}-{c.get('adapt', 'all')}"


@pytest.mark.parametrize(
    "drop",
    [
        ("adam-all",),
        ("sgd-all",),
        ("sgd-all", "sgd-head"),
        ("adam-all", "adam-head"),
        ("sgd-head",),
    ],
    ids=lambda d: "without-" + "+".join(d),
)
def test_populations_missing_some_kinds_match_general_path(drop: tuple[str, ...]) -> None:
    """Empty groups (no Adam member that adapts everything, no SGD member, ...) leave empty
    slices and segments; the numbers stay the general path's."""
    configs = [c for c in MIXED if _kind(c) not in drop]
    trainer, state, hp, x, y = _setup(configs, per_member=True)
    fast = trainer.train(state, hp, x, y, N_STEPS, per_member_data=True)
    _close(fast, trainer.train(state, hp, x, y, N_STEPS, True, plan=GENERAL))


def test_a_member_switched_to_head_only_keeps_its_body() -> None:
    """PBT may switch a member's ``adapt`` from ``all`` to ``head`` after its body moments
    moved: from then on its body and body moments stay as they are (only ``head.*`` moves),
    in the grouped path and the general one alike."""
    trainer, state, hp, x, y = _setup(MIXED, per_member=True)
    warm = trainer.train(state, hp, x, y, 2, per_member_data=True)
    switched = [{**c, "adapt": "head"} if c.get("adapt", "all") == "all" else c for c in MIXED]
    hp2 = MemberHParams.from_configs(switched, SEEDS, N_TRAIN)
    fast = trainer.train(warm, hp2, x, y, 4, per_member_data=True)
    _close(fast, trainer.train(warm, hp2, x, y, 4, True, plan=GENERAL))
    body = [k for k in warm.params if not k.startswith("head.")]
    adam = [i for i, c in enumerate(MIXED) if c.get("optimizer") == "adam" and "adapt" not in c]
    assert adam and any(float(warm.m[k][adam].abs().max()) > 0 for k in body)
    for k in body:
        assert torch.equal(fast.params[k], warm.params[k])
        assert torch.equal(fast.m[k], warm.m[k]) and torch.equal(fast.v[k], warm.v[k])


def _match_reference(
    trainer: PopulationTrainer,
    state: PopulationState,
    out: PopulationState,
    configs: list[dict[str, Any]],
    x: torch.Tensor,
    y: torch.Tensor,
    per_member: bool,
) -> None:
    """Every member of ``out`` (``N_STEPS`` from ``state``) equals the looped ``torch.optim``
    reference of its config trained alone."""
    for i, cfg in enumerate(configs):
        init = {k: v[i] for k, v in state.params.items()}
        xi, yi = (x[i], y[i]) if per_member else (x, y)
        want = ref_train_member(trainer.model, "regression", init, cfg, SEEDS[i], xi, yi, N_STEPS)
        for k, w in want.items():
            torch.testing.assert_close(out.params[k][i], w, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_mixed_population_matches_looped_reference(per_member: bool) -> None:
    trainer, state, hp, x, y = _setup(MIXED, per_member)
    out = trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member)
    _match_reference(trainer, state, out, MIXED, x, y, per_member)
    for i, cfg in enumerate(MIXED):
        init = {k: v[i] for k, v in state.params.items()}
        assert int(out.step[i]) == min(N_STEPS, cfg.get("steps", N_STEPS))
        if cfg.get("adapt") == "head":  # the body stayed exactly at the init
            for k in init:
                if not k.startswith("head."):
                    assert torch.equal(out.params[k][i], init[k]), (i, k)
        if cfg.get("optimizer") != "adam":  # an SGD member's moments never move
            assert all(float(v[i].abs().max()) == 0 for v in out.m.values())


@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_grouped_path_equals_general_path(per_member: bool) -> None:
    trainer, state, hp, x, y = _setup(MIXED, per_member)
    before = {k: v.clone() for k, v in state.state_dict().items()}
    fast = trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member)
    general = trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member, plan=GENERAL)
    _close(fast, general)
    assert all(torch.equal(state.state_dict()[k], v) for k, v in before.items())  # untouched
    # resuming (moments and step counts carried) is the same as one call
    half = trainer.train(state, hp, x, y, 3, per_member_data=per_member)
    _close(trainer.train(half, hp, x, y, N_STEPS - 3, per_member_data=per_member), fast)


@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "in-place"])
def test_a_subset_of_members_trains_alone(inplace: bool) -> None:
    """``members=`` trains those members exactly as a population of them alone; the others
    keep their weights, moments and steps (what ``Population.train`` does with members that
    reached their limit)."""
    trainer, state, hp, x, y = _setup(MIXED, per_member=True)
    warm = trainer.train(state, hp, x, y, 2, per_member_data=True)
    some = torch.tensor([8, 0, 3, 6, 1])
    alone = trainer.train(warm.index(some), hp.index(some), x[some], y[some], 4, True)
    keep = {k: v.clone() for k, v in warm.state_dict().items()}
    target = warm.index(slice(None)) if inplace else warm
    out = trainer.train(target, hp, x, y, 4, True, members=some, inplace=inplace)
    assert (out is target) == inplace
    _close(out.index(some), alone)
    rest = [i for i in range(len(MIXED)) if i not in some.tolist()]
    _close(out.index(rest), PopulationState.from_state_dict(keep).index(rest))
    if not inplace:
        assert all(torch.equal(warm.state_dict()[k], v) for k, v in keep.items())


def test_population_trains_in_place_only_its_own_copy() -> None:
    """A ``Population`` copies the state it was given once, then trains in place: the
    caller's tensors never change, and the numbers are the trainer's."""
    trainer, state, hp, x, y = _setup(MIXED, per_member=True)
    spec = ModelSpec("mlp", (2,), 1, {"widths": [6, 5]})
    given = {k: v.clone() for k, v in state.state_dict().items()}
    pop = Population(spec, "regression", "mlp", MIXED, SEEDS, state, horizon=None)
    pop.trainer = trainer  # the same float64 model
    pop.train(x, y, 3, per_member_data=True)
    pop.train(x, y, N_STEPS - 3, per_member_data=True)  # some members are done by now
    assert all(torch.equal(state.state_dict()[k], v) for k, v in given.items())
    want = trainer.train(state, hp, x, y, N_STEPS, per_member_data=True, plan=GENERAL)
    _close(pop.state, want)


def test_members_at_different_budgets_cost_only_their_steps() -> None:
    """Members stop at their own ``steps`` inside one call; nothing of theirs moves after."""
    configs = [
        {**c, "steps": s} for c, s in zip(MIXED, (1, 2, 3, 4, 5, 6, 7, 8, 2, 1), strict=True)
    ]
    trainer, state, hp, x, y = _setup(configs, per_member=False)
    out = trainer.train(state, hp, x, y, N_STEPS)
    assert out.step.tolist() == [1, 2, 3, 4, 5, 6, 7, 8, 2, 1]
    again = trainer.train(out, hp, x, y, 3)
    _close(again, out)
    _close(out, trainer.train(state, hp, x, y, N_STEPS, plan=GENERAL))


def test_perturb_sign_draw_is_the_choice_stream() -> None:
    """``Prior.perturb`` draws its step sign with ``integers(0, 2)`` where it used
    ``choice((-1, 1))``: the same values from the same stream (exploits are unchanged)."""
    for seed in range(50):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        for _ in range(20):
            assert (a.random(), a.choice((-1.0, 1.0))) == (
                b.random(),
                (-1.0, 1.0)[int(b.integers(0, 2))],
            )


class _ScaledAfterHead(torch.nn.Module):
    """A model whose output is not its head's: ``2 * head(body(x))``."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(2, 5), torch.nn.Tanh())
        self.head = torch.nn.Linear(5, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 2 * self.head(self.body(x))


def test_head_only_steps_run_the_head_on_cached_features(monkeypatch: Any) -> None:
    """A head-only member's body is constant within a call, so its steps run the head alone on
    the body's features (same numbers); a model whose output is not its head's output is
    detected and runs whole. (Segments kept: a merged call has no head-only segment.)"""
    monkeypatch.setattr(step_module, "MERGE_MAX_BODY_MACS", -1)
    configs = [{**c, "adapt": "head"} for c in MIXED]
    trainer, state, hp, x, y = _setup(configs, per_member=True)
    fast = trainer.train(state, hp, x, y, N_STEPS, per_member_data=True)
    assert trainer.head_is_last is True
    _close(fast, trainer.train(state, hp, x, y, N_STEPS, True, plan=GENERAL))
    torch.manual_seed(0)
    odd = PopulationTrainer(_ScaledAfterHead().double(), "regression")
    init = {k: v.detach().clone() for k, v in odd.model.named_parameters()}
    st = PopulationState.from_params(init, len(configs))
    got = odd.train(st, hp, x, y, N_STEPS, per_member_data=True)
    assert odd.head_is_last is False
    _close(got, odd.train(st, hp, x, y, N_STEPS, True, plan=GENERAL))
    for i, cfg in enumerate(configs):
        one = {k: v[i] for k, v in st.params.items()}
        want = ref_train_member(odd.model, "regression", one, cfg, SEEDS[i], x[i], y[i], N_STEPS)
        for k, w in want.items():
            torch.testing.assert_close(got.params[k][i], w, rtol=1e-9, atol=1e-11)


class _DrawsOutsideReset(torch.nn.Module):
    """Draws randomness outside ``reset_parameters``: re-running resets would not rebuild it."""

    def __init__(self, input_shape: tuple[int, ...], output_dim: int) -> None:
        super().__init__()
        self.scale = torch.nn.Parameter(torch.rand(3))
        self.body = torch.nn.Linear(int(input_shape[0]), 3)
        self.head = torch.nn.Linear(3, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x) * self.scale)


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("mlp", (2,), 1, {"widths": [6, 5]}),
        ModelSpec("conv4", (1, 12, 12), 3, {"hidden": 4}),
        ModelSpec("drawsoutsidereset", (2,), 1),
    ],
    ids=["mlp", "conv4", "draws-outside-reset"],
)
def test_scratch_inits_are_the_seeds_builds(spec: ModelSpec, monkeypatch: Any) -> None:
    """Scratch members' initial weights without a model build per seed are what a build per
    seed gives; a model whose build draws outside ``reset_parameters`` is built per seed."""
    from raymeta.core.models import MODELS
    from raymeta.finetune.population import scratch_inits, scratch_params

    monkeypatch.setitem(MODELS, "drawsoutsidereset", _DrawsOutsideReset)
    seeds = [11, 5, 2**33 + 1, 7, 11]
    got = scratch_inits(spec, seeds)
    for s, params in zip(seeds, got, strict=True):
        want = scratch_params(spec, s)
        assert params.keys() == want.keys()
        assert all(torch.equal(params[k], want[k]) for k in want)
    assert not torch.equal(got[0]["head.weight"], got[1]["head.weight"])


@pytest.mark.parametrize(
    "spec",
    [
        ModelSpec("mlp", (2,), 1, {"widths": [6, 5]}),
        ModelSpec("conv4", (1, 12, 12), 3, {"hidden": 4}),
        ModelSpec("conv4", (3, 12, 12), 5, {"hidden": 4, "norm": "group"}),
    ],
    ids=["mlp", "conv4", "conv4-groupnorm"],
)
def test_scratch_stacked_draws_without_building_per_seed(spec: ModelSpec, monkeypatch: Any) -> None:
    """The direct draws (``_reset_draws``) are the builds' draws: only the two checked seeds
    are built, every other seed's weights still equal a build of it (a draw that went wrong
    would fall back to building every seed, slow and silent, so the count is the test)."""
    from raymeta.finetune import population

    built: list[int] = []
    real = population.scratch_params

    def counted(spec_: ModelSpec, seed: int) -> dict[str, torch.Tensor]:
        built.append(seed)
        return real(spec_, seed)

    monkeypatch.setattr(population, "scratch_params", counted)
    seeds = [3, 9, 4, 2**31 + 5, 3]
    got = population.scratch_stacked(spec, seeds)
    assert built == seeds[:2]
    for i, s in enumerate(seeds):
        want = real(spec, s)
        assert all(torch.equal(got[k][i], want[k]) for k in want), s


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The tensors of each ``torch._fused_adam_`` call made while the test runs."""
    seen: list[int] = []
    real = torch._fused_adam_

    def counted(*args: Any, **kwargs: Any) -> Any:
        seen.append(len(args[0]))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_fused_adam_", counted)
    return seen


# every Adam member runs every step of a call: the fused Adam update (``_fused_adam``)
LOCKSTEP = [
    {k: v for k, v in c.items() if k != "steps" or c.get("optimizer") != "adam"} for c in MIXED
]


@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_lockstep_adam_members_take_the_fused_update(per_member: bool, calls: list[int]) -> None:
    """Adam members on one step count, all active (a sweep's, a tune trial's) are updated by
    ``torch._fused_adam_``: the same numbers as the looped ``torch.optim`` reference member by
    member and as the general path, over two calls (the second starts at step 3, head-only,
    decay and minibatch Adam members among them); the kernel ran, and a call whose Adam
    members are not in lockstep does not use it."""
    trainer, state, hp, x, y = _setup(LOCKSTEP, per_member)
    half = trainer.train(state, hp, x, y, 3, per_member_data=per_member)
    out = trainer.train(half, hp, x, y, N_STEPS - 3, per_member_data=per_member)
    assert len(calls) == N_STEPS
    _close(out, trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member, plan=GENERAL))
    _match_reference(trainer, state, out, LOCKSTEP, x, y, per_member)
    calls.clear()
    some = torch.tensor([0, 2])  # two Adam members (one head-only) alone: fused
    trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member, members=some)
    assert len(calls) == N_STEPS
    calls.clear()
    staggered = out.index(slice(None))
    staggered.step[0] -= 1  # one Adam member a step behind the others: the per-member update
    trainer.train(staggered, hp, x, y, 1, per_member_data=per_member)
    assert calls == []


@pytest.mark.parametrize("per_member", [False, True], ids=["shared-data", "per-member-data"])
def test_adam_members_stopping_mid_call_take_the_fused_update(
    per_member: bool, calls: list[int]
) -> None:
    """A priors fit's members each stop at their own ``steps``: Adam members on one step
    count still take ``torch._fused_adam_`` every step while some of them have stopped (the
    kernel updates their rows too; their moments are put back and their update zeroed). The
    numbers are the general path's and the looped reference's; a member that sat steps out is
    bit for bit where it stopped; members stopped before the call starts stay put too."""
    trainer, state, hp, x, y = _setup(MIXED, per_member)
    out = trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member)
    assert len(calls) == N_STEPS  # members 4 and 6 (Adam) stop after steps 3 and 6
    _close(out, trainer.train(state, hp, x, y, N_STEPS, per_member_data=per_member, plan=GENERAL))
    _match_reference(trainer, state, out, MIXED, x, y, per_member)
    for i, steps in ((4, 3), (6, 6)):
        stopped = trainer.train(state, hp, x, y, steps, per_member_data=per_member)
        for got, want in ((out.params, stopped.params), (out.m, stopped.m), (out.v, stopped.v)):
            assert all(torch.equal(got[k][i], want[k][i]) for k in got), (i, steps)
    calls.clear()
    more = trainer.train(out, hp, x, y, 3, per_member_data=per_member)  # 4 and 6 done before
    assert len(calls) == 3
    _close(more, trainer.train(out, hp, x, y, 3, per_member_data=per_member, plan=GENERAL))
    for k in out.params:
        assert torch.equal(more.params[k][4], out.params[k][4])
        assert torch.equal(more.m[k][6], out.m[k][6]) and torch.equal(more.v[k][6], out.v[k][6])


def test_float32_adam_updates_stay_near_float64_fused_or_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Both Adam updates compute the bias corrections in float64 (``bias_corrections``, as the
    fused kernel does): a float32 population lands near its float64 run through either, so a
    member's numbers hardly depend on whether its packmates are in lockstep. (With float32
    corrections the per-member update drifted 4.1e-3 here; the fused one 1.2e-5.)"""
    from raymeta.finetune.step import PopulationTrainer as Trainer

    configs = [{"lr": lr, "optimizer": "adam"} for lr in (0.3, 0.1, 0.05, 0.5)]
    trainer, state, hp, x, y = _setup(configs, per_member=True)
    want = trainer.train(state, hp, x, y, 40, per_member_data=True, plan=GENERAL).params
    model32 = Trainer(trainer.model.float(), "regression")
    s32 = PopulationState.from_stacked({k: v.float() for k, v in state.params.items()})
    x32, y32 = x.float(), y.float()

    def run() -> dict[str, torch.Tensor]:
        return model32.train(s32, hp, x32, y32, 40, per_member_data=True).params

    fused = run()
    monkeypatch.setattr(Trainer, "_lockstep", staticmethod(lambda *a: None))
    per_member = run()
    for k, w in want.items():
        for got in (fused[k], per_member[k]):
            assert float((got.double() - w).abs().max()) < 1e-4, k
        assert float((fused[k] - per_member[k]).abs().max()) < 1e-4, k
