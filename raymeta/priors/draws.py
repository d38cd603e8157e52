"""Exact replays of a numpy ``Generator``'s scalar draws, many per call.

Why: PBT's explore step draws, per perturbed member and hyperparameter, three uniforms and a
coin (``rng.random()`` three times, ``rng.integers(0, 2)``), and each exploit draws its source
(``rng.choice`` of the best members); a sweep batch makes ~60 such calls per unit and
evaluation, and at 0.7 / 2.1 / 11 us a call the draws cost more than the arithmetic they feed.
``replay`` returns what a sequence of those calls returns, and leaves the generator in the state
they leave, from one ``random_raw`` call per generator, so seeded results stay bit-identical.

A sequence is a tuple of ops: ``0`` is ``rng.random()``, ``m >= 1`` is ``rng.integers(0, m)``
(which ``rng.choice`` of ``m`` items draws), ``m <= 2**32``. How numpy's ``PCG64`` generator makes them:

* ``random()`` is ``(next64 >> 11) * 2**-53``;
* ``integers(0, m)`` draws nothing for ``m = 1``; otherwise Lemire's bounded draw on a
  ``next32``: ``(next32 * m) >> 32``, drawn again while the product's low word is below
  ``2**32 mod m`` (a replay that meets that, odds below ``m / 2**32``, restores the generator
  and makes the real calls);
* ``next32`` splits a ``next64``: the low half now, the high half kept (the state's
  ``has_uint32`` / ``uinteger``) for the next ``next32``; ``next64`` leaves that cache alone.

``exact()`` checks all of this against real calls once per process; where it does not hold
(another numpy, another bit generator) every draw is the real call.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Ops = tuple[int, ...]


@dataclass(frozen=True)
class _Layout:
    """Where each draw of ``ops`` comes from, for a generator whose cache flag is ``h0``.

    The 32-bit halves of a replay are ``[low32(words)..., high32(words)..., uinteger]``: each
    integer op reads the half at ``int_half`` (an ``m = 1`` op reads any: ``(x * 1) >> 32``
    is 0)."""

    n_words: int
    double_word: tuple[int, ...]
    int_half: tuple[int, ...]
    bound: tuple[int, ...]  # each integer op's m
    threshold: tuple[int, ...]  # 2**32 mod m: a product's low word below it, numpy redrew
    has_after: int | None  # the cache flag after the ops (None: no next32, unchanged)
    half_after: int  # the half ``uinteger`` holds after the ops


@functools.lru_cache(maxsize=256)
def _layout(ops: Ops, h0: int) -> _Layout:
    words = n32 = 0
    last = -1  # the word of the last next32 that drew one
    double_word: list[int] = []
    half: list[tuple[int, int]] = []  # (0: low / 1: high / 2: uinteger, word)
    after: tuple[int, int] | None = None
    for op in ops:
        if op == 0:
            double_word.append(words)
            words += 1
        elif op == 1:
            half.append((2, 0))
        else:
            if (n32 + h0) % 2 == 0:  # the cache is empty: a new word, its high half kept
                half.append((0, words))
                last, words = words, words + 1
                after = (1, 1)
            else:
                half.append((2, 0) if last < 0 else (1, last))
                after = (0, 2 if last < 0 else 1)
            n32 += 1

    def index(kind: int, w: int) -> int:
        return (0, words, 2 * words)[kind] + (w if kind < 2 else 0)

    bounds = tuple(op for op in ops if op != 0)
    return _Layout(
        words,
        tuple(double_word),
        tuple(index(k, w) for k, w in half),
        bounds,
        tuple((2**32 - m) % m for m in bounds),
        None if after is None else after[0],
        2 * words if after is None else index(after[1], last),
    )


def real(rng: np.random.Generator, ops: Ops) -> tuple[list[float], list[int]]:
    """The draws of ``ops`` made by the real calls, in order: (uniforms, integers)."""
    doubles: list[float] = []
    ints: list[int] = []
    for op in ops:
        if op == 0:
            doubles.append(rng.random())
        else:
            ints.append(int(rng.integers(0, op)))
    return doubles, ints


def replay(rng: np.random.Generator, ops: Ops) -> tuple[list[float], list[int]]:
    """``real(rng, ops)``, from one ``random_raw`` call where ``exact()``."""
    bg = rng.bit_generator
    if type(bg) is np.random.PCG64 and exact() and all(op <= 2**32 for op in ops):
        assert isinstance(bg, np.random.PCG64)
        return _emulate(rng, bg, ops)
    return real(rng, ops)


def _emulate(
    rng: np.random.Generator, bg: np.random.PCG64, ops: Ops
) -> tuple[list[float], list[int]]:
    st: dict[str, Any] = dict(bg.state)
    lay = _layout(ops, int(st["has_uint32"]))
    words: list[int] = bg.random_raw(lay.n_words).tolist() if lay.n_words else []
    halves = [w & 0xFFFFFFFF for w in words] + [w >> 32 for w in words] + [int(st["uinteger"])]
    ints = []
    for h, m, th in zip(lay.int_half, lay.bound, lay.threshold, strict=True):
        prod = halves[h] * m
        if prod & 0xFFFFFFFF < th:  # numpy drew again here: undo, and make the real calls
            _set_state(bg, st)
            return real(rng, ops)
        ints.append(prod >> 32)
    if lay.has_after is not None:
        _set_state(
            bg, {**bg.state, "has_uint32": lay.has_after, "uinteger": halves[lay.half_after]}
        )
    return [(words[w] >> 11) * 2.0**-53 for w in lay.double_word], ints


def replay_many(rngs: Sequence[np.random.Generator], ops: Ops) -> tuple[np.ndarray, np.ndarray]:
    """``replay(rng, ops)`` of each generator, as rows: uniforms ``(len(rngs), ops.count(0))``
    and integers ``(len(rngs), len(ops) - ops.count(0))``. The halves and products of all
    generators are computed as arrays (for a batch's units: a third of the cost of one
    ``replay`` each)."""
    nd = sum(1 for op in ops if op == 0)
    doubles = np.empty((len(rngs), nd), dtype=np.float64)
    ints = np.empty((len(rngs), len(ops) - nd), dtype=np.int64)
    fast = exact() and all(op <= 2**32 for op in ops)
    by_flag: dict[int, list[tuple[int, np.random.PCG64, dict[str, Any]]]] = {0: [], 1: []}
    for u, rng in enumerate(rngs):
        bg = rng.bit_generator
        if fast and type(bg) is np.random.PCG64 and isinstance(bg, np.random.PCG64):
            st: dict[str, Any] = dict(bg.state)
            by_flag[int(st["has_uint32"])].append((u, bg, st))
        else:
            doubles[u], ints[u] = real(rng, ops)
    for h0, group in by_flag.items():
        if group:
            _emulate_rows(rngs, ops, _layout(ops, h0), group, doubles, ints)
    return doubles, ints


def _emulate_rows(
    rngs: Sequence[np.random.Generator],
    ops: Ops,
    lay: _Layout,
    group: list[tuple[int, np.random.PCG64, dict[str, Any]]],
    doubles: np.ndarray,
    ints: np.ndarray,
) -> None:
    """``_emulate`` of generators with one cache flag, as arrays (rows ``u`` of the output)."""
    if lay.n_words:
        words = np.stack([bg.random_raw(lay.n_words) for _, bg, _ in group])
    else:
        words = np.zeros((len(group), 0), dtype=np.uint64)
    u0 = np.array([st["uinteger"] for _, _, st in group], dtype=np.uint64)
    mask, shift = np.uint64(0xFFFFFFFF), np.uint64(32)
    halves = np.concatenate([words & mask, words >> shift, u0[:, None]], axis=1)
    rows = [u for u, _, _ in group]
    dw = np.array(lay.double_word, dtype=np.int64)
    doubles[rows] = (words[:, dw] >> np.uint64(11)).astype(np.float64) * 2.0**-53
    prod = halves[:, np.array(lay.int_half, dtype=np.int64)] * np.array(lay.bound, np.uint64)
    ints[rows] = (prod >> shift).astype(np.int64)
    low = prod & mask
    redrawn = np.any(low < np.array(lay.threshold, dtype=np.uint64), axis=1).tolist()
    for r, (u, bg, st) in enumerate(group):
        if redrawn[r]:  # numpy drew again here: undo, and make the real calls
            _set_state(bg, st)
            doubles[u], ints[u] = real(rngs[u], ops)
        elif lay.has_after is not None:
            half = int(halves[r, lay.half_after])
            _set_state(bg, {**bg.state, "has_uint32": lay.has_after, "uinteger": half})


def _set_state(bg: np.random.PCG64, state: dict[str, Any]) -> None:
    bg.state = state  # type: ignore[assignment]


_CHECK_OPS: Ops = (0, 2, 0, 0, 2, 3, 0, 1, 5, 2, 0, 7, 2, 2, 0, 8, 1, 2, 0, 2**31 + 5, 2**32)


@functools.cache
def exact() -> bool:
    """Whether replays equal the real calls here (values and the state left), on a fixed
    sequence from both cache states; checked once per process."""
    for seed in range(3):
        for warm in (0, 1):
            a, b = np.random.default_rng(seed), np.random.default_rng(seed)
            if warm:
                a.integers(0, 2), b.integers(0, 2)
            pcg = b.bit_generator
            assert isinstance(pcg, np.random.PCG64)
            if real(a, _CHECK_OPS) != _emulate(b, pcg, _CHECK_OPS):
                return False
            if a.bit_generator.state != b.bit_generator.state:
                return False
    return True
