"""Task families: shapes, determinism, disjoint meta-splits, label sanity and bad options.

Class membership of sampled images is checked against an independent reference: every image of
every (class, rotation) rebuilt with NumPy from the raw data, looked up by its bytes.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

from raymeta.errors import ConfigError, DataError
from raymeta.tasks import SPLITS, FamilySpec, TaskBatch, make_family, resize_splits
from raymeta.tasks.digits import PLAIN_SPLIT, ROTATED_SPLIT, Digits
from raymeta.tasks.sinusoid import Sinusoid


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _same(a: TaskBatch, b: TaskBatch) -> bool:
    return all(
        torch.equal(x, y)
        for x, y in zip((a.xs, a.ys, a.xq, a.yq), (b.xs, b.ys, b.xq, b.yq), strict=True)
    )


# ---------------------------------------------------------------- sinusoid


def test_sinusoid_meta_splits_never_share_an_amplitude() -> None:
    for code, split in enumerate(SPLITS):
        amp = Sinusoid.amplitude(split, 20000, _gen(code))
        assert bool((Sinusoid.split_of_amplitude(amp) == code).all())
        assert float(amp.min()) >= 0.1 and float(amp.max()) <= 5.0


def test_sinusoid_shapes_and_determinism() -> None:
    fam = make_family("sinusoid", shots=7, queries=3)
    b = fam.sample("train", 4, _gen(0))
    assert (b.xs.shape, b.ys.shape, b.xq.shape, b.yq.shape) == (
        (4, 7, 1),
        (4, 7, 1),
        (4, 3, 1),
        (4, 3, 1),
    )
    assert _same(b, fam.sample("train", 4, _gen(0)))
    assert not _same(b, fam.sample("train", 4, _gen(1)))


# ---------------------------------------------------------------- digits reference


def _digit_reference() -> dict[bytes, set[tuple[int, int]]]:
    """image bytes (pixel*16 as uint8) -> the (digit, quarter-turn) classes that image belongs to."""
    from sklearn.datasets import load_digits

    d = load_digits()
    ref: dict[bytes, set[tuple[int, int]]] = defaultdict(set)
    for img, t in zip(d.images, d.target, strict=True):
        for r in range(4):
            ref[np.rot90(img, r).astype(np.uint8).tobytes()].add((int(t), r))
    return ref


def _classes_of(
    x: torch.Tensor, ref: dict[bytes, set[tuple[int, int]]], scale: float
) -> list[set[tuple[int, int]]]:
    arr = np.rint(x.reshape(-1, x.shape[-2], x.shape[-1]).numpy() * scale).astype(np.uint8)
    return [ref.get(a.tobytes(), set()) for a in arr]


def _check_episodes(
    b: TaskBatch,
    ways: int,
    allowed: set[tuple[int, int]],
    ref: dict[bytes, set[tuple[int, int]]],
    scale: float,
) -> None:
    """Every image is from an allowed class; each label is one class, shared by support and query;
    different labels are different classes; labels are balanced."""
    for i in range(b.n_tasks):
        per_label: dict[int, set[tuple[int, int]]] = {}
        for x, y in ((b.xs[i], b.ys[i]), (b.xq[i], b.yq[i])):
            assert sorted(torch.bincount(y, minlength=ways).tolist()) == [len(y) // ways] * ways
            for cls, label in zip(_classes_of(x, ref, scale), y.tolist(), strict=True):
                assert cls & allowed, f"image of classes {cls} is not in the split"
                per_label[label] = per_label.get(label, cls & allowed) & cls
        assert set(per_label) == set(range(ways))
        assert all(per_label.values()), "a label mixes classes"
        chosen = [min(c) for c in per_label.values()]
        assert len(set(chosen)) == ways


# ---------------------------------------------------------------- digits


def test_digits_split_table_is_a_partition_without_look_alikes() -> None:
    every = [c for s in SPLITS for c in ROTATED_SPLIT[s]]
    assert sorted(every) == [(d, r) for d in range(10) for r in range(4)]
    assert [len(ROTATED_SPLIT[s]) for s in SPLITS] == [24, 8, 8]
    split_of = {c: s for s in SPLITS for c in ROTATED_SPLIT[s]}
    look_alikes = [((d, r), (d, r + 2)) for d in (0, 1, 8) for r in (0, 1)]
    look_alikes += [((6, r), (9, (r + 2) % 4)) for r in range(4)]
    for a, b in look_alikes:
        assert split_of[a] != split_of[b], (a, b)
    assert sorted(d for s in SPLITS for d in PLAIN_SPLIT[s]) == list(range(10))


def test_packaged_digits_equal_scikit_learns() -> None:
    """The copy shipped in raymeta/tasks/data is the data scikit-learn's loader returns."""
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from raymeta.tasks.digits import read_digits

    images, target = read_digits()
    ref = sklearn_datasets.load_digits()
    assert images.shape == (1797, 8, 8) and target.dtype == np.int64
    np.testing.assert_array_equal(images, ref.images)
    np.testing.assert_array_equal(target, ref.target)


@pytest.mark.parametrize("rotations", [True, False])
def test_digits_episodes_use_only_their_split(rotations: bool) -> None:
    ref = _digit_reference()
    ways = 3
    fam = Digits(ways=ways, shots=2, queries=4, rotations=rotations)
    for split in SPLITS:
        plain = {(d, 0) for d in PLAIN_SPLIT[split]}
        allowed = set(ROTATED_SPLIT[split]) if rotations else plain
        b = fam.sample(split, 30, _gen(7))
        assert b.xs.shape == (30, ways * 2, 1, 8, 8) and b.xq.shape == (30, ways * 4, 1, 8, 8)
        assert b.xs.dtype == torch.float32 and b.ys.dtype == torch.int64
        assert float(b.xs.min()) >= 0.0 and float(b.xs.max()) <= 1.0
        _check_episodes(b, ways, allowed, ref, 16.0)
        # no example is used twice in an episode (all 1797 digit images are distinct)
        for i in range(b.n_tasks):
            flat = torch.cat([b.xs[i], b.xq[i]]).reshape(ways * 6, -1)
            assert torch.unique(flat, dim=0).shape[0] == ways * 6


def test_digits_determinism_and_label_shuffling() -> None:
    fam = make_family("digits")
    a, b = fam.sample("train", 8, _gen(3)), fam.sample("train", 8, _gen(3))
    assert _same(a, b)
    assert not _same(a, fam.sample("train", 8, _gen(4)))
    # a class gets different labels in different episodes: the first support image's label varies
    firsts = {int(x) for x in fam.sample("train", 200, _gen(5)).ys[:, 0]}
    assert firsts == set(range(5))


def test_digits_fixed_task() -> None:
    ref = _digit_reference()
    fam = Digits(ways=4, shots=1, task_shots=3, val_size=5, test_size=7)
    t = fam.task("test", 2)
    t2 = fam.task("test", 2)
    assert torch.equal(t.x_train, t2.x_train) and torch.equal(t.y_test, t2.y_test)
    assert not torch.equal(t.x_train, fam.task("test", 3).x_train)
    assert (
        t.x_train.shape == (12, 1, 8, 8)
        and t.x_val.shape == (20, 1, 8, 8)
        and t.x_test.shape == (28, 1, 8, 8)
    )
    assert t.kind == "classification" and t.output_dim == 4 and t.task_id == "digits:test:2"
    both = TaskBatch(
        t.x_train[None],
        t.y_train[None],
        torch.cat([t.x_val, t.x_test])[None],
        torch.cat([t.y_val, t.y_test])[None],
    )
    _check_episodes(both, 4, set(ROTATED_SPLIT["test"]), ref, 16.0)
    flat = torch.cat([t.x_train, t.x_val, t.x_test]).reshape(60, -1)
    assert torch.unique(flat, dim=0).shape[0] == 60


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"ways": 9}, "exceeds the 8 classes"),
        ({"ways": 4, "rotations": False}, "exceeds the 3 classes"),
        ({"shots": 100, "queries": 80}, "shots \\+ queries = 180"),
        ({"test_size": 200}, "task_shots \\+ val_size \\+ test_size"),
        ({"ways": 1}, "ways must be >= 2"),
        ({"shots": 0}, "shots must be an integer >= 1"),
        ({"ways": "5"}, "ways must be an integer"),
        ({"bogus": 1}, "bad options for family 'digits'"),
        ({"rotations": "maybe"}, "rotations must be true or false"),
    ],
)
def test_digits_bad_options(options: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        make_family(FamilySpec("digits", options))


def test_unknown_family_and_split() -> None:
    with pytest.raises(ConfigError, match="unknown task family 'nope'"):
        make_family("nope")
    with pytest.raises(ConfigError, match="unknown split"):
        make_family("digits").sample("training", 2, _gen(0))  # type: ignore[arg-type]


def test_family_spec_roundtrip_rebuilds_the_same_family() -> None:
    fam = make_family("digits", ways=3, shots=2, rotations=False)
    again = make_family(FamilySpec.from_dict(fam.spec().to_dict()))
    assert _same(fam.sample("val", 3, _gen(1)), again.sample("val", 3, _gen(1)))


# ---------------------------------------------------------------- omniglot


@pytest.fixture(scope="module")
def omniglot(omniglot_dir: Path):  # type: ignore[no-untyped-def]
    from raymeta.tasks.omniglot import Omniglot

    return Omniglot(path=str(omniglot_dir), ways=5, shots=1, queries=3)


def test_omniglot_missing_path_is_a_one_line_data_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=str(missing)):
        make_family("omniglot", path=str(missing))
    monkeypatch.delenv("RAYMETA_OMNIGLOT", raising=False)
    with pytest.raises(DataError, match="RAYMETA_OMNIGLOT"):
        make_family("omniglot")
    (tmp_path / "images_background.npz").write_bytes(b"not a zip")
    (tmp_path / "images_evaluation.npz").write_bytes(b"not a zip")
    with pytest.raises(DataError, match="cannot read") as exc:
        make_family("omniglot", path=str(tmp_path))
    assert "\n" not in str(exc.value)


def test_omniglot_split_sizes_and_disjointness(omniglot) -> None:  # type: ignore[no-untyped-def]
    bases = {s: set((omniglot.classes[s] // 4).tolist()) for s in SPLITS}
    assert [len(bases[s]) for s in SPLITS] == [1100, 100, 423]
    assert set().union(*bases.values()) == set(range(1623))
    assert (
        not (bases["train"] & bases["val"])
        and not (bases["train"] & bases["test"])
        and not (bases["val"] & bases["test"])
    )
    assert omniglot.classes["train"].numel() == 4400


def test_omniglot_resize_matches_pil(omniglot, omniglot_dir: Path) -> None:  # type: ignore[no-untyped-def]
    from PIL import Image

    raw = np.load(omniglot_dir / "images_evaluation.npz")["images"][:3]
    for c in range(3):
        for d in (0, 19):
            ink = Image.fromarray((~raw[c, d]).astype(np.uint8) * 255)
            ref = np.asarray(ink.resize((28, 28), Image.BILINEAR)).astype(np.float32)
            ours = omniglot.pool.images[964 + c, d].numpy().astype(np.float32)
            assert np.abs(ours - ref).max() <= 2.0  # 255 scale: rounding only


def test_omniglot_episodes(omniglot) -> None:  # type: ignore[no-untyped-def]
    stored = omniglot.pool.images.numpy()
    b = omniglot.sample("test", 6, _gen(0))
    assert b.xs.shape == (6, 5, 1, 28, 28) and b.xq.shape == (6, 15, 1, 28, 28)
    assert float(b.xs.min()) >= 0.0 and float(b.xs.max()) <= 1.0
    assert float(b.xs.mean()) < 0.3  # strokes are 1 on a 0 background
    # reference: only the images of the chosen split's characters, each rotated with NumPy
    allowed_chars = sorted(set((omniglot.classes["test"] // 4).tolist()))
    ref: dict[bytes, set[tuple[int, int]]] = defaultdict(set)
    for ch in allowed_chars:
        for dr in range(20):
            for r in range(4):
                ref[np.rot90(stored[ch, dr], r).tobytes()].add((ch, r))
    _check_episodes(b, 5, {(c, r) for c in allowed_chars for r in range(4)}, ref, 255.0)
    assert _same(b, omniglot.sample("test", 6, _gen(0)))
    t = omniglot.task("val", 0)
    assert (
        t.x_train.shape == (5, 1, 28, 28)
        and t.x_val.shape == (20, 1, 28, 28)
        and t.x_test.shape == (50, 1, 28, 28)
    )


def test_omniglot_too_many_shots(omniglot_dir: Path) -> None:
    with pytest.raises(ConfigError, match="exceeds the 20"):
        make_family("omniglot", path=str(omniglot_dir), shots=10, queries=15)
    with pytest.raises(ConfigError, match="exceeds the 400 classes"):
        make_family("omniglot", path=str(omniglot_dir), ways=401)


# ---------------------------------------------------------------- parquet (family contract)


def test_parquet_family_contract(tmp_path: Path) -> None:
    from raymeta.tasks.parquet import write_tasks

    src = Sinusoid(task_shots=12, val_size=12, test_size=5)
    tasks = [src.task("train", i) for i in range(40)]
    write_tasks(tmp_path / "s.parquet", tasks)
    fam = make_family("parquet", path=str(tmp_path / "s.parquet"), shots=5, queries=7)
    assert fam.kind == "regression" and fam.input_shape == (1,) and fam.output_dim == 1
    b = fam.sample("train", 9, _gen(0))
    assert (b.xs.shape, b.ys.shape, b.xq.shape, b.yq.shape) == (
        (9, 5, 1),
        (9, 5, 1),
        (9, 7, 1),
        (9, 7, 1),
    )
    assert _same(b, make_family(fam.spec()).sample("train", 9, _gen(0)))
    ids = {s: {fam.task(s, i).task_id for i in range(fam.n_tasks(s))} for s in SPLITS}  # type: ignore[attr-defined]
    assert sum(len(v) for v in ids.values()) == 40
    assert (
        not (ids["train"] & ids["val"])
        and not (ids["train"] & ids["test"])
        and not (ids["val"] & ids["test"])
    )


def test_resize_splits_changes_split_sizes_only() -> None:
    spec = FamilySpec("digits", {"ways": 3, "shots": 1, "task_shots": 2, "rotations": False})
    small = make_family(spec).task("test", 1)
    big = make_family(resize_splits(spec, {"val_size": 30, "test_size": 20})).task("test", 1)
    assert len(small.x_val) == 3 * 50 and len(big.x_val) == 3 * 30 and len(big.x_test) == 3 * 20
    torch.testing.assert_close(big.x_train, small.x_train)  # the same task, other split sizes
    assert resize_splits(spec, None) is spec and resize_splits(spec, {}) is spec
    with pytest.raises(ConfigError, match="'ways' cannot be overridden"):
        resize_splits(spec, {"ways": 2})
