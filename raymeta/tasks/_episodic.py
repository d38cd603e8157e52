"""N-way K-shot episodes from a pool of images grouped by class, fully vectorised.

Shared by the image families (digits, omniglot). Images are stored once per *base* class
(``[B, M, H, W]``, padded to the largest class, with a per-class count); a rotated copy of a base
class is a new class, produced on the fly when an episode needs it, so rotations cost no memory.
Global class id ``c`` means base ``c // R`` rotated by ``90 * (c % R)`` degrees, ``R`` = 4 with
rotations and 1 without.

Every draw comes from the caller's ``torch.Generator``: the same generator state gives the same
episodes. Classes within an episode are drawn in random order, so the label ``j`` (0..ways-1) of
the ``j``-th drawn class is a fresh random labelling per episode; examples are shuffled too.
``sample_labelled`` draws plain labelled examples instead, labelled by the class's position in
its meta-split's class list (global labels, for ``algo=pretrain``'s C-way pretraining).
"""

from __future__ import annotations

import torch

from raymeta.errors import ConfigError
from raymeta.tasks.base import (
    Split,
    Task,
    TaskBatch,
    TaskFamily,
    check_positive_ints,
    check_split,
    check_task_index,
)
from raymeta.tasks.sinusoid import task_seed


class ClassPool:
    """Images ``[B, M, H, W]`` (uint8 scaled by ``scale``, or float) with ``counts[b]`` valid rows."""

    def __init__(
        self, images: torch.Tensor, counts: torch.Tensor, rotations: bool, scale: float = 1.0
    ):
        if images.dim() != 4 or counts.shape != images.shape[:1]:
            raise ValueError("images must be [B, M, H, W] with one count per base class")
        self.images, self.counts = images, counts.long()
        self.n_rot = 4 if rotations else 1
        self.scale = float(scale)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (1, int(self.images.shape[2]), int(self.images.shape[3]))

    def classes_of(self, bases: torch.Tensor) -> torch.Tensor:
        """All global class ids (base x rotation) of the given base classes."""
        return (
            bases.long().view(-1, 1) * self.n_rot + torch.arange(self.n_rot).view(1, -1)
        ).reshape(-1)

    def min_count(self, classes: torch.Tensor) -> int:
        return int(self.counts[classes // self.n_rot].min())

    def check(
        self, who: str, split: str, classes: torch.Tensor, ways: int, per_class: int, what: str
    ) -> None:
        """One-line ConfigError if ``split`` cannot hold ``ways`` classes of ``per_class`` examples."""
        if ways > classes.numel():
            raise ConfigError(
                f"{who}: ways={ways} exceeds the {classes.numel()} classes of meta-split {split!r}"
            )
        have = self.min_count(classes)
        if per_class > have:
            raise ConfigError(
                f"{who}: {what} = {per_class} examples per class exceeds the {have} of the smallest class in meta-split {split!r}"
            )

    def draw(
        self, classes: torch.Tensor, n: int, ways: int, sizes: tuple[int, ...], g: torch.Generator
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """For each size ``k`` in ``sizes``: shuffled ``x [n, ways*k, 1, H, W]`` and labels ``y [n, ways*k]``.

        All parts of one episode use the same ``ways`` classes and never share an example.
        """
        pick = torch.rand(n, classes.numel(), generator=g).topk(ways, dim=1).indices
        cls = classes[pick]  # [n, ways], random order = random labelling
        base = cls // self.n_rot
        m, total = self.images.shape[1], sum(sizes)
        keys = torch.rand(n, ways, m, generator=g)
        keys = keys.masked_fill(torch.arange(m) >= self.counts[base].unsqueeze(-1), 2.0)
        idx = keys.topk(total, dim=-1, largest=False).indices  # distinct examples per class
        out, start, rows = [], 0, torch.arange(n).unsqueeze(1)
        for k in sizes:
            order = torch.rand(n, ways * k, generator=g).argsort(dim=1)  # shuffle within the part
            label = torch.arange(ways).repeat_interleave(k).expand(n, -1)[rows, order]
            example = idx[:, :, start : start + k].reshape(n, ways * k)[rows, order]
            c = cls[rows, label]
            out.append((self._images(c, example), label))
            start += k
        return out

    def sample_labelled(
        self, classes: torch.Tensor, n: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` distinct examples drawn uniformly from all examples of ``classes`` (every
        rotation of a base class counted as its own class): images ``[n, 1, H, W]`` and labels
        ``[n]``, the label of an example being its class's position in ``classes``.

        Uniform over examples, as an ordinary supervised minibatch over the pooled classes is
        (a class with more images is seen more often). Without replacement within one draw
        while ``n`` fits the pool, with replacement beyond it (a tiny split)."""
        cls_all = classes.long()
        counts = self.counts[cls_all // self.n_rot]
        ends = counts.cumsum(0)
        total = int(ends[-1])
        if n <= total:
            flat = torch.rand(total, generator=g).topk(n).indices
        else:
            flat = torch.randint(total, (n,), generator=g)
        label = torch.searchsorted(ends, flat, right=True)
        example = flat - (ends[label] - counts[label])
        return self._images(cls_all[label], example), label

    def _images(self, cls: torch.Tensor, example: torch.Tensor) -> torch.Tensor:
        """Float images ``[*cls.shape, 1, H, W]`` of the given (class, example) pairs, rotated."""
        imgs = self.images[cls // self.n_rot, example]  # gather in the stored (small) dtype
        if self.n_rot > 1:
            rot = cls % self.n_rot
            for r in range(1, 4):
                sel = rot == r
                if bool(sel.any()):
                    imgs[sel] = torch.rot90(imgs[sel], r, dims=(-2, -1))
        x = imgs.unsqueeze(-3).float()
        return x / self.scale if self.scale != 1.0 else x


def sample_episodes(
    pool: ClassPool,
    classes: torch.Tensor,
    n: int,
    ways: int,
    shots: int,
    queries: int,
    g: torch.Generator,
) -> TaskBatch:
    """``n`` episodes: ``ways * shots`` support and ``ways * queries`` query examples each."""
    (xs, ys), (xq, yq) = pool.draw(classes, n, ways, (shots, queries), g)
    return TaskBatch(xs, ys, xq, yq)


def episode_task(
    pool: ClassPool,
    classes: torch.Tensor,
    task_id: str,
    ways: int,
    sizes: tuple[int, int, int],
    seed: int,
) -> Task:
    """One fixed ``ways``-way task with ``sizes`` = (train, val, test) examples per class."""
    g = torch.Generator().manual_seed(seed)
    (xt, yt), (xv, yv), (xe, ye) = pool.draw(classes, 1, ways, sizes, g)
    return Task(
        task_id, xt[0], yt[0], xv[0], yv[0], xe[0], ye[0], kind="classification", output_dim=ways
    )


class EpisodicFamily(TaskFamily):
    """N-way K-shot classification over a ``ClassPool`` with per-meta-split class sets.

    Subclasses set ``pool``, ``classes`` (split -> class ids), ``ways``, ``shots``,
    ``queries``, ``task_shots``, ``val_size``, ``test_size`` and a distinct ``salt`` so that
    fixed tasks of different families never share seeds."""

    kind = "classification"
    salt: int
    pool: ClassPool
    classes: dict[str, torch.Tensor]
    ways: int
    shots: int
    queries: int
    task_shots: int
    val_size: int
    test_size: int
    rotations: bool

    def _set_episode_options(
        self,
        ways: int,
        shots: int,
        queries: int,
        task_shots: int | None,
        val_size: int,
        test_size: int,
        rotations: bool,
        **more_ints: int,
    ) -> None:
        """Validate and store the options every episodic family takes (one-line errors);
        ``more_ints`` are family-specific options that must also be integers >= 1."""
        task_shots = shots if task_shots is None else task_shots
        check_positive_ints(
            self.name,
            ways=ways,
            shots=shots,
            queries=queries,
            task_shots=task_shots,
            val_size=val_size,
            test_size=test_size,
            **more_ints,
        )
        if ways < 2:
            raise ConfigError(f"{self.name}: ways must be >= 2, got {ways}")
        if not isinstance(rotations, bool):
            raise ConfigError(f"{self.name}: rotations must be true or false, got {rotations!r}")
        self.ways, self.shots, self.queries = ways, shots, queries
        self.task_shots, self.val_size, self.test_size = task_shots, val_size, test_size
        self.rotations = rotations

    def episode_examples(self) -> int:
        return self.ways * (self.shots + self.queries)

    def sample(self, split: Split, n_tasks: int, generator: torch.Generator) -> TaskBatch:
        check_split(split)
        return sample_episodes(
            self.pool, self.classes[split], n_tasks, self.ways, self.shots, self.queries, generator
        )

    def global_classes(self, split: Split) -> int | None:
        """The split's classes (rotations included): its global labels are their positions."""
        return int(self.classes[check_split(split)].numel())

    def sample_labelled(
        self, split: Split, n: int, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` examples of ``split`` with global labels (``ClassPool.sample_labelled``)."""
        check_split(split)
        check_positive_ints(self.name, n=n)
        return self.pool.sample_labelled(self.classes[split], n, generator)

    def task(self, split: Split, index: int) -> Task:
        check_split(split)
        check_task_index(self.name, index)
        sizes = (self.task_shots, self.val_size, self.test_size)
        return episode_task(
            self.pool,
            self.classes[split],
            f"{self.name}:{split}:{index}",
            self.ways,
            sizes,
            task_seed(split, index, self.salt),
        )
