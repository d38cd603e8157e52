"""A sweep's bookkeeping at the engine's speed (BENCHMARKS "Issue 17, sixth pass") changes no
number: replayed random draws equal numpy's real calls, the vectorised explore step equals the
old per-member ``Prior.perturb`` (re-derived here as it was), the batched exploit of many units
equals each unit's old ``exploit_slice``, and the fast member tensors equal the
``FinetuneConfig`` path (same values, same errors)."""

from __future__ import annotations

import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest
import torch

from raymeta.core.models import ModelSpec
from raymeta.finetune.exploit import Group, exploit_groups
from raymeta.finetune.hparams import broad_space, checked_member_tensors, member_tensors
from raymeta.finetune.population import (
    SWEEP_RULE,
    ExploitRule,
    Population,
    PopulationState,
    initial_state,
)
from raymeta.priors import (
    Categorical,
    CategoricalDist,
    Conditional,
    Float,
    Int,
    NumericDist,
    Prior,
    SearchSpace,
    broad_prior,
)
from raymeta.priors.draws import real, replay, replay_many
from raymeta.priors.joint import Joint

# --- the old per-member code (9c8f79d), the reference -------------------------------------


def old_perturb(
    prior: Prior, config: Mapping[str, Any], rng: np.random.Generator, resample_p: float = 0.25
) -> dict[str, Any]:
    out = dict(config)
    params = list(prior.space)
    draws = [
        (rng.random(), rng.random(), rng.random(), (-1.0, 1.0)[int(rng.integers(0, 2))])
        for _ in params
    ]
    for j in prior.perturb_order():
        p, (r, a, b, sign) = params[j], draws[j]
        if p.name not in config or r < resample_p:
            out[p.name] = prior.value_from_uniforms(p.name, a, b, out)
            continue
        if isinstance(p, Categorical):
            continue
        d = prior.dist(p.name, out)
        assert isinstance(d, NumericDist) and isinstance(p, Float | Int)
        u = p.to_unit(p.clip(float(config[p.name])))
        u_new = min(max(u + sign * max(0.25 * d.spread(), 0.01), 0.0), 1.0)
        new = p.from_unit(u_new)
        if isinstance(p, Int) and new == config[p.name]:
            new = p.clip(new + int(sign))
        out[p.name] = new
    return out


def old_exploit_slice(
    pop: Population,
    lo: int,
    hi: int,
    rng: np.random.Generator,
    prior: Prior,
    rule: ExploitRule,
    log: list[tuple[int, int]],
) -> list[dict[str, Any]]:
    """``batch.exploit_slice`` + ``population.exploit_worst`` as they were (``rng.choice``)."""
    n, k = hi - lo, rule.count(hi - lo)
    events: list[dict[str, Any]] = []
    if k < 1 or n < 2:
        return events
    val = pop.last_val[lo:hi].cpu().numpy()
    order = np.argsort(val, kind="stable")
    top, bottom = [int(i) for i in order[:k]], [int(i) for i in order[n - k :]]
    for dst in bottom:
        src = int(rng.choice(top))
        log.append((lo + src, lo + dst))
        old = pop.configs[lo + dst]
        new = (
            old
            if dst in rule.pinned
            else {**old_perturb(prior, pop.configs[lo + src], rng), "model": pop.name}
        )
        pop.set_config(lo + dst, new)
        events.append({"kind": "member_exploit", "src": src, "dst": dst, "old": old, "new": new})
    return events


# --- priors and configs to test on --------------------------------------------------------


def _dist(r: np.random.Generator) -> NumericDist:
    return NumericDist(float(r.random()), float(r.random()), float(0.01 + r.random()))


def priors() -> list[Prior]:
    r = np.random.default_rng(0)
    sp = broad_space(["mlp", "conv"], max_batch=10, max_steps=100)
    odd = SearchSpace(
        [
            Float("x", 0.0, 3.0),
            Int("k", 1, 7),
            Int("j", -3, 50),
            Categorical("c", ("a", "b", "c")),
            Float("y", 1e-3, 10.0, log=True),
            Int("z", 2, 1000, log=True),
            Float("w", 1, 10, log=True),  # int bounds: its clamps return ints
        ]
    )
    centre = {
        "lr": 0.05,
        "optimizer": "adam",
        "weight_decay": 1e-4,
        "steps": 80,
        "batch_size": 4,
        "adapt": "head",
        "model": "mlp",
    }
    return [
        broad_prior(sp),
        Prior(
            sp,
            {
                "lr": _dist(r),
                "optimizer": CategoricalDist((0.4, 0.6)),
                "steps": _dist(r),
                "batch_size": _dist(r),
                "model": CategoricalDist((0.3, 0.7)),
            },
            Conditional(
                "optimizer",
                {
                    "sgd": {"lr": _dist(r)},
                    "adam": {"lr": _dist(r), "steps": _dist(r), "weight_decay": _dist(r)},
                },
            ),
            Joint(0.6, 0.05, 0.9, (centre,), (1.0,)),
        ),
        Prior(
            odd,
            {"x": _dist(r), "c": CategoricalDist((0.2, 0.0, 0.8)), "w": _dist(r)},
            Conditional("c", {"a": {"x": _dist(r), "z": _dist(r)}, "c": {"k": _dist(r)}}),
        ),
    ]


def configs(prior: Prior, n: int, seed: int) -> list[dict[str, Any]]:
    """Samples, some missing a key, some with keys outside the space, some out of bounds."""
    out = []
    for i, c in enumerate(prior.sample(n, np.random.default_rng(seed))):
        c = dict(c)
        names = list(c)
        if i % 5 == 0:
            c.pop(names[i % len(names)])
        if i % 7 == 0:
            c["extra"] = "kept"
        if i % 11 == 0:
            p = list(prior.space)[i % len(prior.space)]
            if isinstance(p, Float | Int):
                c[p.name] = p.high * 2 if i % 2 else p.low - 1
        if i % 13 == 0:
            for p in prior.space:
                if isinstance(p, Int) and p.name in c:
                    c[p.name] = float(c[p.name])  # a whole float where an int is expected
        out.append(c)
    return out


def same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Equal values of equal types, in the same key order."""
    return list(a) == list(b) and all(a[k] == b[k] and type(a[k]) is type(b[k]) for k in a)


# --- replayed draws ----------------------------------------------------------------------


def test_replay_equals_the_real_calls_and_leaves_the_same_state() -> None:
    rnd = random.Random(0)
    bounds = [0, 0, 0, 1, 2, 2, 3, 5, 8, 12, 2**31 + 7, 2**32 - 1, 2**32, 2**33]
    for _ in range(600):
        ops = tuple(rnd.choice(bounds) for _ in range(rnd.randint(0, 40)))
        seeds = [rnd.randint(0, 10**6) for _ in range(rnd.randint(1, 5))]
        a = [np.random.default_rng(s) for s in seeds]
        b = [np.random.default_rng(s) for s in seeds]
        c = [np.random.default_rng(s) for s in seeds]
        for x, y, z in zip(a, b, c, strict=True):
            for _ in range(rnd.randint(0, 3)):  # leave a half-used 32-bit draw, or none
                x.integers(0, 2), y.integers(0, 2), z.integers(0, 2)
        want = [real(x, ops) for x in a]
        doubles, ints = replay_many(b, ops)
        for k in range(len(seeds)):
            assert replay(c[k], ops) == want[k]
            assert (doubles[k].tolist(), ints[k].tolist()) == want[k]
            assert a[k].bit_generator.state == b[k].bit_generator.state
            assert a[k].bit_generator.state == c[k].bit_generator.state


def test_other_bit_generators_get_the_real_calls() -> None:
    """The replay knows only PCG64's layout: any other generator (a user's MT19937 or Philox)
    goes through the real calls, same values and state."""
    ops = (0, 2, 0, 3, 5, 0, 1, 2**31 + 5)
    for make in (np.random.MT19937, np.random.Philox, np.random.SFC64):
        a, b, c = (np.random.Generator(make(11)) for _ in range(3))
        want = real(a, ops)
        assert replay(b, ops) == want
        doubles, ints = replay_many([c], ops)
        assert (doubles[0].tolist(), ints[0].tolist()) == want
        # the states agree: the next draws of all three are the same (MT19937's state holds
        # arrays, so compare what it produces)
        nxt = [g.integers(0, 2**32, size=8).tolist() + [g.random()] for g in (a, b, c)]
        assert nxt[0] == nxt[1] == nxt[2]


def test_choice_of_k_items_draws_integers_below_k() -> None:
    """``exploit_worst`` draws its source as ``top[integers(0, k)]``, as ``choice`` did."""
    for seed in range(100):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        for k in (1, 2, 3, 5, 8):
            top = list(range(10, 10 + k))
            assert a.choice(top) == top[int(b.integers(0, k))]
            assert a.random() == b.random()


# --- the explore step --------------------------------------------------------------------


@pytest.mark.parametrize("resample_p", [0.0, 0.25, 1.0])
def test_perturb_equals_the_old_per_member_code(resample_p: float) -> None:
    for pr in priors():
        for i, c in enumerate(configs(pr, 120, 1)):
            a, b = np.random.default_rng([i, 7]), np.random.default_rng([i, 7])
            if i % 2:
                a.integers(0, 2), b.integers(0, 2)
            want = old_perturb(pr, c, a, resample_p)
            got = pr.perturb(c, b, resample_p)
            assert same(got, want), (c, want, got)
            assert a.bit_generator.state == b.bit_generator.state


@pytest.mark.parametrize("resample_p", [0.0, 0.25, 1.0])
def test_perturb_many_equals_perturb_one_by_one(resample_p: float) -> None:
    for pr in priors():
        cs = configs(pr, 200, 2)
        rngs = [np.random.default_rng([i, 3]) for i in range(len(cs))]
        want = [
            old_perturb(pr, c, np.random.default_rng([i, 3]), resample_p) for i, c in enumerate(cs)
        ]
        uniforms, coins = replay_many(rngs, pr.perturb_plan.ops)
        got = pr.perturb_many(cs, uniforms, coins, resample_p)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            assert same(g, w), (w, g)


# --- the batched exploit -----------------------------------------------------------------


SPEC = ModelSpec("mlp", (1,), 1, {"widths": [4]})


def packed(prior: Prior, sizes: list[int], seed: int) -> tuple[Population, list[tuple[int, int]]]:
    """A population of units of ``sizes`` members, with tied and random last val losses."""
    n = sum(sizes)
    cs = [{**c, "model": "mlp"} for c in prior.sample(n, np.random.default_rng(seed))]
    state = initial_state(SPEC, None, list(range(n)))
    pop = Population(SPEC, "regression", "mlp", cs, list(range(n)), state)
    val = np.random.default_rng(seed).random(n).round(1)  # ties
    pop.last_val = torch.tensor(val, dtype=torch.float64)
    bounds, lo = [], 0
    for s in sizes:
        bounds.append((lo, lo + s))
        lo += s
    return pop, bounds


@pytest.mark.parametrize("rule", [SWEEP_RULE, ExploitRule(pinned=(0, 3)), ExploitRule(0.5)])
def test_batched_exploit_equals_the_old_unit_by_unit_exploit(rule: ExploitRule) -> None:
    for pr in priors()[:2]:
        sizes = [8, 8, 1, 2, 3, 12, 8, 5, 16]
        old_pop, bounds = packed(pr, sizes, 4)
        new_pop, _ = packed(pr, sizes, 4)
        rngs_old = {u: np.random.default_rng([u, 9]) for u in range(len(sizes))}
        rngs_new = {u: np.random.default_rng([u, 9]) for u in range(len(sizes))}
        for u in rngs_old:  # some generators start with a cached 32-bit half
            if u % 3 == 0:
                rngs_old[u].integers(0, 2), rngs_new[u].integers(0, 2)
        for _round in range(3):
            log_old: list[tuple[int, int]] = []
            want = [
                old_exploit_slice(old_pop, lo, hi, rngs_old[u], pr, rule, log_old)
                for u, (lo, hi) in enumerate(bounds)
            ]
            logs: dict[str, list[tuple[int, int]]] = {}
            groups = [Group(u, "mlp", lo, hi) for u, (lo, hi) in enumerate(bounds)]
            got = exploit_groups(
                {"mlp": new_pop}, groups, rngs_new, dict.fromkeys(rngs_new, pr), rule, logs
            )
            assert got == want
            assert logs.get("mlp", []) == log_old
            assert all(same(a, b) for a, b in zip(new_pop.configs, old_pop.configs, strict=True))
            for u in rngs_old:
                assert rngs_old[u].bit_generator.state == rngs_new[u].bit_generator.state
            val = np.random.default_rng(_round).random(sum(sizes)).round(1)
            old_pop.last_val = new_pop.last_val = torch.tensor(val, dtype=torch.float64)


def test_batched_exploit_refuses_more_than_half() -> None:
    pr = priors()[0]
    pop, _ = packed(pr, [4], 0)
    with pytest.raises(ValueError, match="worst half"):
        exploit_groups(
            {"mlp": pop},
            [Group(0, "mlp", 0, 4)],
            {0: np.random.default_rng(0)},
            {0: pr},
            ExploitRule(0.75),
            {},
        )


# --- member tensors ----------------------------------------------------------------------


def run(f: Any, cs: list[dict[str, Any]], horizon: int | None) -> Any:
    try:
        return f(cs, 5, horizon)
    except Exception as exc:  # the same error, the same message
        return (type(exc), str(exc))


def test_member_tensors_equal_the_checked_path_values_and_errors() -> None:
    values: dict[str, list[Any]] = {
        "lr": [0.1, 1e-3, 0.0, -1.0, 2, True, float("nan"), float("inf"), None, "x", 5e-324],
        "optimizer": ["sgd", "adam", "bad", None, 3, np.str_("adam")],
        "weight_decay": [0.0, 1e-4, -0.0, 1, None, float("nan"), -1e-9, np.float64(0.5)],
        "steps": [1, 5, 0, 3.0, 2.5, None, True, -2, 10**20],
        "batch_size": [1, 4, 100, None, 2.0, 0],
        "adapt": ["all", "head", "x"],
        "model": ["mlp", "", None, 3],
        "extra": [1, "z"],
    }
    rnd = random.Random(0)
    errors = 0
    for _ in range(3000):
        cs = [
            {k: rnd.choice(v) for k, v in values.items() if rnd.random() < 0.6}
            for _ in range(rnd.randint(0, 4))
        ]
        horizon = rnd.choice([None, 7])
        fast, checked = (run(f, cs, horizon) for f in (member_tensors, checked_member_tensors))
        if isinstance(checked, tuple):
            errors += 1
            assert fast == checked
            continue
        assert fast.keys() == checked.keys()
        for k in fast:
            assert fast[k].dtype == checked[k].dtype and torch.equal(fast[k], checked[k])
    assert 100 < errors < 2900


def test_packed_hparams_patch_equals_a_rebuild() -> None:
    """``PackedPopulation`` patches changed members' tensors; the result is a full rebuild."""
    from raymeta.finetune.batch import PackedPopulation
    from raymeta.finetune.step import MemberHParams

    pr = priors()[1]
    cs = [{**c, "model": "mlp"} for c in pr.sample(40, np.random.default_rng(0))]
    state: PopulationState = initial_state(SPEC, None, list(range(40)))
    pop = PackedPopulation(SPEC, "regression", "mlp", cs, list(range(40)), state, horizon=9)
    pop.hparams(6)
    rng = np.random.default_rng(1)
    for i in (3, 17, 39):
        pop.set_config(i, {**pr.perturb(pop.configs[i], rng), "model": "mlp"})
    got = pop.hparams(6)
    want = MemberHParams.from_configs(pop.configs, pop.seeds, 6, 9)
    assert got.values.keys() == want.values.keys()
    assert all(torch.equal(got[k], want[k]) for k in want.values)
    assert torch.equal(got.seed, want.seed)


def test_categorical_draws_equal_index_from_uniform() -> None:
    """``Prior.value_from_uniforms`` bisects cached cumulative sums where it called
    ``CategoricalDist.index_from_uniform`` (``np.cumsum`` + ``searchsorted``) per draw."""
    r = np.random.default_rng(0)
    for probs in [(1.0,), (0.5, 0.5), (0.2, 0.0, 0.8), (0.0, 1.0, 0.0), (1, 0), (0.1,) * 10]:
        p = Categorical("c", tuple(range(len(probs))))
        d = CategoricalDist(probs)
        pr = Prior(SearchSpace([p]), {"c": d})
        cum = np.cumsum(probs)
        edges = [0.0, 1.0 - 2.0**-53, *(cum / cum[-1]).tolist()]
        for a in edges + r.random(2000).tolist():
            assert pr.value_from_uniforms("c", a, 0.5) == p.choices[d.index_from_uniform(a)]
    for pr in priors():  # and whole samples, conditional and joint priors included
        for seed in range(3):
            want = old_sample(pr, 200, np.random.default_rng(seed))
            got = pr.sample(200, np.random.default_rng(seed))
            assert all(same(g, w) for g, w in zip(got, want, strict=True))


def old_value_from_uniforms(
    prior: Prior, name: str, a: float, b: float, given: Mapping[str, Any] | None = None
) -> Any:
    p, d = prior.space[name], prior.dist(name, given)
    if isinstance(p, Categorical):
        assert isinstance(d, CategoricalDist)
        return p.choices[d.index_from_uniform(a)]
    assert isinstance(d, NumericDist)
    return p.from_unit(d.unit_from_uniforms(a, b))


def old_sample(prior: Prior, n: int, rng: np.random.Generator) -> list[dict[str, Any]]:
    """``Prior.sample`` as it was."""
    names = prior.space.names()
    u = rng.random((n, len(names), 2))
    jt = prior.joint
    v = rng.random((n, 2 + len(names))) if jt is not None else None
    out = []
    for i in range(n):
        if v is not None and jt is not None and v[i, 0] < jt.weight:
            centre = jt.centres[jt.centre_index(float(v[i, 1]))]
            row: dict[str, Any] = {}
            for j, p in enumerate(prior.space):
                if isinstance(p, Categorical):
                    keep = v[i, 2 + j] < jt.keep
                    row[p.name] = (
                        centre[p.name]
                        if keep
                        else old_value_from_uniforms(prior, p.name, u[i, j, 0], u[i, j, 1])
                    )
                else:
                    cu = p.to_unit(float(centre[p.name]))
                    row[p.name] = p.from_unit(jt.unit_from_uniform(cu, float(u[i, j, 1])))
            out.append(row)
            continue
        c: dict[str, Any] = {}
        for j in prior.perturb_order():
            c[names[j]] = old_value_from_uniforms(prior, names[j], u[i, j, 0], u[i, j, 1], c)
        out.append({nm: c[nm] for nm in names})
    return out
