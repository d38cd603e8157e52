"""The task-family contract kit: ``check_task_family`` runs a family through every rule the
rest of raymeta relies on, and names the first one it breaks.

Why a kit: a family is sampled inside Ray Train workers and rebuilt from ``meta.json`` in Tune
trials and sweep tasks, far from the user's session. A family that changes shapes between calls,
draws a different task for the same index, or leaks meta-test classes into meta-training does
not crash there -- it silently trains the wrong thing or reports a held-out score that is not
held out. Checking it once, in the user's own test suite, turns each of those into one line.

Rules, in the order they are checked (``ContractError.rule`` holds the name):

``builds``        the factory (a class, a callable or a registered name) builds with the options
``is-family``     it is a ``raymeta.tasks.TaskFamily``
``attributes``    ``name`` (str), ``kind`` (regression / classification), ``input_shape``
                  (tuple of ints >= 1), ``output_dim`` (int >= 1)
``options``       ``options()`` is a dict of JSON-able plain data (it is stored in meta.json)
``sample``        ``sample(split, n, generator)`` for the sampled meta-splits ``train`` and ``val``
                  gives a ``TaskBatch`` of ``(n, S, *input_shape)`` float inputs, targets
                  ``(n, S, output_dim)`` (regression) or integer labels ``(n, S)`` in
                  ``[0, output_dim)``, everything finite, the same ``S`` / ``Q`` across calls,
                  batch sizes and meta-splits (``vmap`` needs one shape). Meta-test tasks are
                  only reached through ``task``, so ``sample("test", ...)`` is not required
``sample-rng``    ``sample`` draws only from ``generator`` (never torch's global RNG), the same
                  seed gives an identical batch and another seed a different one: every Ray
                  worker derives its slice of a meta-batch from ``(seed, step, rank)``
``task``          ``task(split, index)`` gives a ``Task`` with non-empty train / val / test parts of
                  matching shapes, the family's kind and output_dim, finite values
``task-determinism`` the same ``(split, index)`` gives the identical task, call after call
``disjoint``      meta-splits share no task: no class ids (where the family exposes ``classes``,
                  a mapping split -> class ids, as the built-in episodic families do), no task
                  ids, no identical task data, and ``sample`` does not ignore the split
``round-trip``    rebuilding from ``spec()`` (``make_family``, or the factory for a family that is
                  not registered) with JSON-round-tripped options gives identical tasks: this is
                  what every Ray worker does

The module needs torch only (no Ray): it runs in a plain pytest session.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from raymeta.errors import ContractError
from raymeta.tasks.base import SPLITS, FamilySpec, Split, Task, TaskBatch, TaskFamily

FamilyFactory = Callable[..., TaskFamily]
KINDS = ("regression", "classification")
# a few tasks per split are enough to catch a family that ignores its split or its index
FIXED_TASKS = 3
SAMPLE_TASKS = 3
MAX_MESSAGE = 300
SPLIT_PAIRS: tuple[tuple[Split, Split], ...] = (
    ("train", "val"),
    ("train", "test"),
    ("val", "test"),
)
# raymeta samples episodes from meta-train (training) and meta-val (validation) only; meta-test
# tasks are reached through task() alone (tuning), so a family need not sample them
SAMPLED: tuple[Split, ...] = ("train", "val")


def first_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception, shortened: contract messages stay one line."""
    text = str(exc).strip()
    line = text.splitlines()[0].strip() if text else ""
    line = line if len(line) <= MAX_MESSAGE else line[: MAX_MESSAGE - 3] + "..."
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def fail(who: str, rule: str, problem: str, fix: str) -> ContractError:
    """The one-line error of a broken rule: who, which rule, what is wrong, how to fix it."""
    msg = f"{who} breaks the {rule!r} rule: {problem}; fix: {fix}"
    return ContractError(" ".join(msg.split()), rule)


def json_problem(value: Any, where: str) -> str | None:
    """Why ``value`` is not JSON-able plain data (``None`` if it is).

    Options end up in ``meta.json`` and are the only thing a Ray worker gets to rebuild a model
    or family with, so they must be numbers, strings, booleans, None, lists and string-keyed
    dicts; NaN / infinity are refused because strict JSON has no spelling for them."""
    if value is None or isinstance(value, (bool, str)):
        return None
    if isinstance(value, int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r} (not valid JSON)"
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            p = json_problem(v, f"{where}[{i}]")
            if p:
                return p
        return None
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str):
                return f"{where} has the non-string key {k!r}"
            p = json_problem(v, f"{where}[{k!r}]")
            if p:
                return p
        return None
    return f"{where} is a {type(value).__name__} ({_short_repr(value)}), not plain data"


def json_round_trip(value: Any) -> Any:
    """``value`` as it comes back from ``meta.json`` (tuples become lists)."""
    return json.loads(json.dumps(value, allow_nan=False))


def _short_repr(value: Any) -> str:
    r = repr(value)
    return r if len(r) <= 60 else r[:57] + "..."


def _label(obj: Any) -> str:
    if isinstance(obj, str):
        return f"task family {obj!r}"
    if isinstance(obj, TaskFamily):
        return f"task family {getattr(type(obj), '__qualname__', type(obj).__name__)}"
    return f"task family {getattr(obj, '__qualname__', None) or _short_repr(obj)}"


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same_batch(a: TaskBatch, b: TaskBatch) -> bool:
    return all(
        x.shape == y.shape and x.dtype == y.dtype and torch.equal(x, y)
        for x, y in ((a.xs, b.xs), (a.ys, b.ys), (a.xq, b.xq), (a.yq, b.yq))
    )


def _task_parts(t: Task) -> list[tuple[str, torch.Tensor, torch.Tensor]]:
    return [
        ("train", t.x_train, t.y_train),
        ("val", t.x_val, t.y_val),
        ("test", t.x_test, t.y_test),
    ]


def _same_task(a: Task, b: Task) -> bool:
    if a.task_id != b.task_id or a.kind != b.kind or a.output_dim != b.output_dim:
        return False
    return all(
        x.shape == x2.shape and torch.equal(x, x2) and y.shape == y2.shape and torch.equal(y, y2)
        for (_, x, y), (_, x2, y2) in zip(_task_parts(a), _task_parts(b), strict=True)
    )


def _fingerprint(t: Task) -> str:
    """A hash of a task's training inputs and targets (identical data -> identical hash)."""
    h = hashlib.sha256()
    for x in (t.x_train, t.y_train):
        c = x.detach().cpu().contiguous()
        h.update(str((tuple(c.shape), str(c.dtype))).encode())
        h.update(c.numpy().tobytes())
    return h.hexdigest()


class _Checker:
    """Runs the rules over one family; ``rebuild`` makes a fresh family from JSON options."""

    def __init__(
        self, family: TaskFamily, who: str, rebuild: Callable[[dict[str, Any]], Any]
    ) -> None:
        self.f, self.who, self.rebuild = family, who, rebuild

    def fail(self, rule: str, problem: str, fix: str) -> ContractError:
        return fail(self.who, rule, problem, fix)

    def call(self, rule: str, what: str, fn: Callable[[], Any], fix: str) -> Any:
        try:
            return fn()
        except ContractError:
            raise
        except Exception as exc:
            raise self.fail(rule, f"{what} raised {first_line(exc)}", fix) from None

    # ----------------------------------------------------------------- attributes, options
    def attributes(self) -> None:
        f = self.f
        name, kind = getattr(f, "name", None), getattr(f, "kind", None)
        shape, out = getattr(f, "input_shape", None), getattr(f, "output_dim", None)
        fix = "set name, kind, input_shape and output_dim as class attributes or in __init__"
        if not isinstance(name, str) or not name:
            raise self.fail("attributes", f"name is {name!r}, not a non-empty string", fix)
        if kind not in KINDS:
            raise self.fail(
                "attributes", f"kind is {kind!r}, not 'regression' or 'classification'", fix
            )
        if (
            not isinstance(shape, tuple)
            or not shape
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)
        ):
            raise self.fail(
                "attributes", f"input_shape is {shape!r}, not a tuple of integers >= 1", fix
            )
        if isinstance(out, bool) or not isinstance(out, int) or out < 1:
            raise self.fail("attributes", f"output_dim is {out!r}, not an integer >= 1", fix)

    def options(self) -> dict[str, Any]:
        fix = (
            "return a dict of numbers, strings, booleans, lists and dicts that rebuilds the "
            "family (it is stored in meta.json)"
        )
        opts = self.call("options", "options()", self.f.options, fix)
        if not isinstance(opts, Mapping):
            raise self.fail("options", f"options() returned a {type(opts).__name__}", fix)
        problem = json_problem(opts, "options()")
        if problem:
            raise self.fail("options", problem, fix)
        spec = self.call("options", "spec()", self.f.spec, "do not override spec()")
        if not isinstance(spec, FamilySpec) or json_round_trip(spec.options) != json_round_trip(
            opts
        ):
            raise self.fail("options", "spec() does not carry options()", "do not override spec()")
        return dict(opts)

    # ----------------------------------------------------------------- sample
    def sample(self, split: Split, n: int, seed: int) -> TaskBatch:
        fix = "draw every episode of a split with the same support/query sizes"
        b = self.call(
            "sample",
            f"sample({split!r}, {n}, generator)",
            lambda: self.f.sample(split, n, _generator(seed)),
            fix,
        )
        if not isinstance(b, TaskBatch):
            raise self.fail(
                "sample",
                f"sample({split!r}, ...) returned a {type(b).__name__}",
                "return a raymeta.tasks.TaskBatch",
            )
        return b

    def check_batch(self, b: TaskBatch, split: str, n: int) -> tuple[int, int]:
        f, where = self.f, f"sample({split!r}, {n}, generator)"
        shape = tuple(f.input_shape)
        sizes: list[int] = []
        for name, x, y in (("support", b.xs, b.ys), ("query", b.xq, b.yq)):
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise self.fail("sample", f"{where}: {name} is not tensors", "return tensors")
            if x.dim() != 2 + len(shape) or x.shape[0] != n or tuple(x.shape[2:]) != shape:
                raise self.fail(
                    "sample",
                    f"{where}: {name} inputs have shape {tuple(x.shape)}, expected "
                    f"({n}, examples, {', '.join(map(str, shape))})",
                    "stack episodes as (tasks, examples, *input_shape)",
                )
            k = int(x.shape[1])
            if k < 1:
                raise self.fail("sample", f"{where}: {name} set is empty", "draw >= 1 example")
            self._values("sample", f"{where}: {name}", x, y, (n, k))
            sizes.append(k)
        return sizes[0], sizes[1]

    def _values(
        self, rule: str, where: str, x: torch.Tensor, y: torch.Tensor, lead: tuple[int, ...]
    ) -> None:
        """Dtypes, shapes and ranges of one (inputs, targets) pair whose leading dims are ``lead``."""
        f = self.f
        if not x.is_floating_point():
            raise self.fail(rule, f"{where} inputs are {x.dtype}", "give float inputs")
        if not bool(torch.isfinite(x).all()):
            raise self.fail(rule, f"{where} inputs hold NaN or infinity", "clean the data")
        if f.kind == "regression":
            want = (*lead, f.output_dim)
            if tuple(y.shape) != want:
                raise self.fail(
                    rule,
                    f"{where} targets have shape {tuple(y.shape)}, expected {want}",
                    "give regression targets a trailing output_dim axis",
                )
            if not y.is_floating_point() or not bool(torch.isfinite(y).all()):
                raise self.fail(
                    rule, f"{where} targets are not finite floats", "give finite float targets"
                )
        else:
            if tuple(y.shape) != lead:
                raise self.fail(
                    rule,
                    f"{where} labels have shape {tuple(y.shape)}, expected {lead}",
                    "give one integer label per example",
                )
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise self.fail(
                    rule, f"{where} labels are {y.dtype}", "give integer (int64) labels"
                )
            if y.numel() and (int(y.min()) < 0 or int(y.max()) >= f.output_dim):
                raise self.fail(
                    rule,
                    f"{where} labels span [{int(y.min())}, {int(y.max())}], outside "
                    f"[0, output_dim={f.output_dim})",
                    "relabel each episode's classes 0..ways-1 and set output_dim to ways",
                )

    def samples(self) -> None:
        sizes: dict[str, tuple[int, int]] = {}
        for split in SAMPLED:
            for n in (SAMPLE_TASKS, SAMPLE_TASKS + 2):
                sizes[f"{split}/{n}"] = self.check_batch(self.sample(split, n, 0), split, n)
        if len(set(sizes.values())) > 1:
            seen = ", ".join(f"{k}: S={s}, Q={q}" for k, (s, q) in sizes.items())
            raise self.fail(
                "sample",
                f"support/query sizes change between calls ({seen})",
                "use fixed shots/queries for every split and batch size: vmap needs one shape",
            )

    def rng(self) -> None:
        state = torch.get_rng_state()
        a = self.sample("train", SAMPLE_TASKS, 0)
        touched = not torch.equal(state, torch.get_rng_state())
        torch.set_rng_state(state)
        if touched:
            raise self.fail(
                "sample-rng",
                "sample() drew from torch's global RNG",
                "draw only from the generator argument (pass generator=generator)",
            )
        if not _same_batch(a, self.sample("train", SAMPLE_TASKS, 0)):
            raise self.fail(
                "sample-rng",
                "two sample() calls with the same generator seed gave different batches",
                "draw only from the generator argument, never from numpy, random or time",
            )
        if _same_batch(a, self.sample("train", SAMPLE_TASKS, 1)):
            raise self.fail(
                "sample-rng",
                "sample() gave the same batch for generator seeds 0 and 1",
                "draw the episodes from the generator argument",
            )

    # ----------------------------------------------------------------- fixed tasks
    def count(self, split: Split) -> int:
        """How many fixed tasks to look at: a family with ``n_tasks(split)`` may hold few."""
        n_tasks = getattr(self.f, "n_tasks", None)
        if callable(n_tasks):
            try:
                have = int(n_tasks(split))
            except Exception:
                return FIXED_TASKS
            if have < 1:
                raise self.fail(
                    "task", f"meta-split {split!r} has no tasks", "give every meta-split tasks"
                )
            return min(FIXED_TASKS, have)
        return FIXED_TASKS

    def task(self, split: Split, index: int) -> Task:
        fix = "make task(split, index) return a Task for every split and index >= 0"
        t = self.call("task", f"task({split!r}, {index})", lambda: self.f.task(split, index), fix)
        if not isinstance(t, Task):
            raise self.fail(
                "task", f"task({split!r}, {index}) returned a {type(t).__name__}",
                "return a raymeta.tasks.Task",
            )  # fmt: skip
        return t

    def check_task(self, t: Task, split: str, index: int) -> None:
        f, where = self.f, f"task({split!r}, {index})"
        if not isinstance(t.task_id, str) or not t.task_id:
            raise self.fail("task", f"{where} has task_id {t.task_id!r}", "give a unique task id")
        if t.kind != f.kind or t.output_dim != f.output_dim:
            raise self.fail(
                "task",
                f"{where} has kind={t.kind!r}, output_dim={t.output_dim!r}; the family says "
                f"kind={f.kind!r}, output_dim={f.output_dim!r}",
                "build tasks with the family's kind and output_dim",
            )
        for part, x, y in _task_parts(t):
            w = f"{where} {part}"
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise self.fail("task", f"{w} is not tensors", "give tensors")
            if x.dim() != 1 + len(f.input_shape) or tuple(x.shape[1:]) != tuple(f.input_shape):
                raise self.fail(
                    "task",
                    f"{w} inputs have shape {tuple(x.shape)}, expected (examples, "
                    f"{', '.join(map(str, f.input_shape))})",
                    "give every part (examples, *input_shape) inputs",
                )
            if x.shape[0] < 1:
                raise self.fail(
                    "task", f"{w} is empty", "give train, val and test >= 1 example each"
                )
            self._values("task", w, x, y, (int(x.shape[0]),))

    def tasks(self) -> dict[str, list[Task]]:
        out: dict[str, list[Task]] = {}
        for split in SPLITS:
            out[split] = []
            for i in range(self.count(split)):
                t = self.task(split, i)
                self.check_task(t, split, i)
                if not _same_task(t, self.task(split, i)):
                    raise self.fail(
                        "task-determinism",
                        f"task({split!r}, {i}) gave different tasks on two calls",
                        "seed each fixed task from (split, index) with its own "
                        "torch.Generator, never from the global RNG",
                    )
                out[split].append(t)
        return out

    # ----------------------------------------------------------------- disjoint meta-splits
    def disjoint(self, fixed: dict[str, list[Task]]) -> None:
        fix = "give train, val and test disjoint tasks (classes, or task-id streams)"
        classes = getattr(self.f, "classes", None)
        if isinstance(classes, Mapping) and all(s in classes for s in SPLITS):
            ids: dict[str, set[int]] = {}
            for s in SPLITS:
                c = classes[s]
                values = c.reshape(-1).tolist() if isinstance(c, torch.Tensor) else list(c)
                ids[s] = {int(v) for v in values}
            for a, b in SPLIT_PAIRS:
                shared = sorted(ids[a] & ids[b])
                if shared:
                    raise self.fail(
                        "disjoint",
                        f"classes {shared[:5]} are in both meta-splits {a!r} and {b!r}",
                        fix,
                    )
        seen_id: dict[str, str] = {}
        seen_data: dict[str, str] = {}
        for s in SPLITS:
            for i, t in enumerate(fixed[s]):
                where = f"{s}:{i}"
                other = seen_id.get(t.task_id)
                if other is not None and other.split(":")[0] != s:
                    raise self.fail(
                        "disjoint",
                        f"task id {t.task_id!r} is in meta-splits {other} and {where}",
                        fix,
                    )
                seen_id.setdefault(t.task_id, where)
                fp = _fingerprint(t)
                other = seen_data.get(fp)
                if other is not None and other.split(":")[0] != s:
                    raise self.fail(
                        "disjoint",
                        f"task({other.split(':')[0]!r}, {other.split(':')[1]}) and task({s!r}, "
                        f"{i}) hold the same data",
                        fix,
                    )
                seen_data.setdefault(fp, where)
        if _same_batch(self.sample("train", SAMPLE_TASKS, 0), self.sample("val", SAMPLE_TASKS, 0)):
            raise self.fail(
                "disjoint",
                "sample('train', ...) and sample('val', ...) gave the same batch for one seed",
                "draw each meta-split's episodes from its own tasks",
            )

    # ----------------------------------------------------------------- round trip
    def round_trip(self, opts: dict[str, Any], fixed: dict[str, list[Task]]) -> None:
        fix = (
            "make options() return every constructor argument, so the family rebuilt from "
            "spec() (as in every Ray worker) is the same"
        )
        again = self.call(
            "round-trip", "rebuilding from spec()", lambda: self.rebuild(json_round_trip(opts)), fix
        )
        if type(again) is not type(self.f):
            raise self.fail(
                "round-trip",
                f"rebuilding from spec() gave a {type(again).__name__}, not a "
                f"{type(self.f).__name__}",
                "give the family a name of its own (not a built-in one)",
            )
        for attr in ("name", "kind", "input_shape", "output_dim"):
            if getattr(again, attr) != getattr(self.f, attr):
                raise self.fail(
                    "round-trip",
                    f"the rebuilt family has {attr}={getattr(again, attr)!r}, not "
                    f"{getattr(self.f, attr)!r}",
                    fix,
                )
        if json_round_trip(again.options()) != json_round_trip(opts):
            raise self.fail("round-trip", "the rebuilt family has other options()", fix)
        for s in SPLITS:
            for i, t in enumerate(fixed[s]):
                other = self.call(
                    "round-trip",
                    f"the rebuilt family's task({s!r}, {i})",
                    functools.partial(again.task, s, i),
                    fix,
                )
                if not isinstance(other, Task) or not _same_task(t, other):
                    raise self.fail(
                        "round-trip", f"the rebuilt family's task({s!r}, {i}) differs", fix
                    )
        mine = self.sample("train", SAMPLE_TASKS, 0)
        theirs = self.call(
            "round-trip",
            "the rebuilt family's sample('train', ...)",
            lambda: again.sample("train", SAMPLE_TASKS, _generator(0)),
            fix,
        )
        if not isinstance(theirs, TaskBatch) or not _same_batch(mine, theirs):
            raise self.fail(
                "round-trip", "the rebuilt family samples other episodes for one seed", fix
            )

    def run(self) -> None:
        self.attributes()
        opts = self.options()
        self.samples()
        self.rng()
        fixed = self.tasks()
        self.disjoint(fixed)
        self.round_trip(opts, fixed)


def _registry_rebuild(name: str) -> Callable[[dict[str, Any]], TaskFamily]:
    from raymeta.tasks.registry import make_family

    return lambda opts: make_family(FamilySpec(name, opts))


def _rebuilder(family: TaskFamily) -> Callable[[dict[str, Any]], Any]:
    """How a worker rebuilds ``family`` from its spec: ``make_family`` for a registered name or
    an import path, else the family's own class (what its import path would name). ``spec()``
    is read when rebuilding, so an error in it is reported under the round-trip rule."""
    from raymeta.tasks.registry import FAMILIES

    def rebuild(opts: dict[str, Any]) -> Any:
        name = family.spec().name
        cls = type(family)
        if name in FAMILIES and not cls.__module__.startswith("raymeta."):
            raise fail(
                _label(family),
                "round-trip",
                f"its name {name!r} is a built-in family's, so make_family(spec()) in a Ray "
                f"worker would build that family instead of a {cls.__name__}",
                "give the family a name of its own",
            )
        if name in FAMILIES or ":" in name:
            return _registry_rebuild(name)(opts)
        return cls(**opts)

    return rebuild


def check_task_family(
    family_or_factory: TaskFamily | FamilyFactory | str,
    options: Mapping[str, Any] | None = None,
) -> None:
    """Check a task family against raymeta's contract; raise ``ContractError`` on the first
    broken rule (see the module docstring), with a one-line message saying how to fix it.

    ``family_or_factory`` is a built family, a class or callable building one from keyword
    ``options``, or a registered name / import path (built with ``make_family``). Sampling uses
    private ``torch.Generator``s and leaves the global RNG as it found it."""
    who = _label(family_or_factory)
    opts = dict(options or {})
    problem = json_problem(opts, "options")
    if problem:
        raise fail(
            who,
            "options",
            problem,
            "pass plain data (numbers, strings, lists, dicts): options are stored in meta.json",
        )
    rebuild: Callable[[dict[str, Any]], Any]
    if isinstance(family_or_factory, TaskFamily):
        if options:
            raise ContractError(
                "check_task_family: options are for a factory or name, not a built family",
                "builds",
            )
        family: Any = family_or_factory
        rebuild = _rebuilder(family)
    else:
        if isinstance(family_or_factory, str):
            rebuild = _registry_rebuild(family_or_factory)
        elif callable(family_or_factory):
            factory = family_or_factory

            def rebuild(o: dict[str, Any]) -> Any:
                return factory(**o)
        else:
            raise fail(
                who,
                "is-family",
                f"got a {type(family_or_factory).__name__}",
                "pass a TaskFamily, its class, a factory or a registered name",
            )
        try:
            family = rebuild(opts)
        except Exception as exc:
            raise fail(
                who,
                "builds",
                f"building it raised {first_line(exc)}",
                "fix the family or its options",
            ) from None
    if not isinstance(family, TaskFamily):
        raise fail(
            who,
            "is-family",
            f"it is a {type(family).__name__}",
            "subclass raymeta.tasks.TaskFamily and implement sample, task and options",
        )
    with torch.random.fork_rng(devices=[]):
        _Checker(family, who, rebuild).run()
