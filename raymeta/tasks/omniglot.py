"""N-way K-shot Omniglot (1623 characters x 20 drawers) from local NumPy archives.

The data directory (option ``path``, else env ``RAYMETA_OMNIGLOT``) holds
``images_background.npz`` and ``images_evaluation.npz``, each with ``images``: bool
``[characters, 20, 105, 105]``, True = paper. Nothing is downloaded and nothing is written there.

Protocol (as in MAML / ProtoNets): images are inverted so strokes are 1, resized to 28x28 with an
antialiased bilinear filter (PIL's ``resize(BILINEAR)``, vectorised in torch), and each character
rotated by 0/90/180/270 degrees is its own class. The 1623 characters (background first, then
evaluation) are ordered by a fixed hash of their index (an alphabet-mixing shuffle that never
changes across library versions). The first 1200 are the usual meta-training characters: the
first 1100 of them are meta-train, the last 100 (``val_characters``) meta-val. The remaining 423
are meta-test. Rotations of a character stay in its character's meta-split.

Loading and resizing all 32,460 images takes a few seconds; the result is kept in memory (uint8,
~25 MB at 28x28) for the life of the process and shared by every family built on that path.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from raymeta.checks import check_fits
from raymeta.errors import ConfigError, DataError
from raymeta.tasks._episodic import ClassPool, EpisodicFamily

ENV_VAR = "RAYMETA_OMNIGLOT"
ARCHIVES = ("images_background.npz", "images_evaluation.npz")
N_CHARACTERS, N_DRAWERS, RAW_SIZE = 1623, 20, 105
N_TRAIN_CHARACTERS = 1200  # the standard split: 1200 meta-training characters, 423 meta-test
_SALT = 0x0A1C0D


def resolve_path(path: str | os.PathLike[str] | None) -> Path:
    """The data directory from the option or the env var; a one-line DataError if unusable."""
    raw = path if path not in (None, "") else os.environ.get(ENV_VAR)
    if not raw:
        raise DataError(f"omniglot: no data path given (pass path=DIR or set {ENV_VAR})")
    p = Path(raw).expanduser()
    if not p.is_dir():
        raise DataError(f"omniglot: data directory {p} does not exist")
    for name in ARCHIVES:
        if not (p / name).is_file():
            raise DataError(f"omniglot: {p / name} not found (expected {' and '.join(ARCHIVES)})")
    return p.resolve()


def _read_archive(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as z:
            images = z["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(
            f"omniglot: cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    if (
        images.dtype != np.bool_
        or images.ndim != 4
        or images.shape[1:] != (N_DRAWERS, RAW_SIZE, RAW_SIZE)
    ):
        raise DataError(
            f"omniglot: {path} 'images' must be bool [characters, 20, 105, 105], got {images.dtype} {images.shape}"
        )
    return images


def _resize(images: np.ndarray, size: int, chunk: int = 2048) -> torch.Tensor:
    """bool ``[C, 20, 105, 105]`` (True = paper) -> uint8 ``[C, 20, size, size]``, strokes high."""
    flat = images.reshape(-1, 1, RAW_SIZE, RAW_SIZE)
    out = torch.empty(flat.shape[0], size, size, dtype=torch.uint8)
    for start in range(0, flat.shape[0], chunk):
        # compare the raw bytes: these archives store True as 255, not the canonical 1
        ink = (torch.from_numpy(flat[start : start + chunk].view(np.uint8)) == 0).float()
        small = F.interpolate(ink, size=(size, size), mode="bilinear", antialias=True)
        out[start : start + chunk] = (small[:, 0] * 255.0).round_().to(torch.uint8)
    return out.view(images.shape[0], N_DRAWERS, size, size)


@lru_cache(maxsize=2)
def load_images(path: Path, size: int = 28) -> torch.Tensor:
    """All 1623 characters as uint8 ``[1623, 20, size, size]`` (background, then evaluation)."""
    parts = [_resize(_read_archive(path / name), size) for name in ARCHIVES]
    images = torch.cat(parts)
    if images.shape[0] != N_CHARACTERS:
        raise DataError(
            f"omniglot: expected {N_CHARACTERS} characters under {path}, found {images.shape[0]}"
        )
    return images


def character_order() -> torch.Tensor:
    """The fixed shuffle of character indices that defines the meta-splits."""
    keys = [
        hashlib.sha256(f"omniglot-character-{i}".encode()).digest() for i in range(N_CHARACTERS)
    ]
    return torch.tensor(sorted(range(N_CHARACTERS), key=keys.__getitem__), dtype=torch.int64)


class Omniglot(EpisodicFamily):
    name = "omniglot"
    kind = "classification"
    salt = _SALT

    def __init__(
        self,
        path: str | None = None,
        ways: int = 5,
        shots: int = 1,
        queries: int = 15,
        task_shots: int | None = None,
        val_size: int = 4,
        test_size: int = 10,
        rotations: bool = True,
        image_size: int = 28,
        val_characters: int = 100,
    ):
        self._set_episode_options(
            ways,
            shots,
            queries,
            task_shots,
            val_size,
            test_size,
            rotations,
            image_size=image_size,
            val_characters=val_characters,
        )
        if path is not None and not isinstance(path, str):
            raise ConfigError(f"omniglot: path must be a directory name, got {path!r}")
        # every character is kept resized in memory (uint8), plus a float chunk while resizing
        check_fits(
            f"omniglot: image_size={image_size}",
            image_size * image_size * (N_CHARACTERS * N_DRAWERS + 2048 * 8.0),
            "the usual size is 28",
        )
        if val_characters >= N_TRAIN_CHARACTERS:
            raise ConfigError(
                f"omniglot: val_characters must be < {N_TRAIN_CHARACTERS}, got {val_characters}"
            )
        self.image_size, self.val_characters = image_size, val_characters
        self.output_dim = ways
        self.input_shape = (1, image_size, image_size)
        # Cheap checks first so bad options fail before the few seconds of loading.
        n_tr = N_TRAIN_CHARACTERS - val_characters
        order = character_order()
        bases = {
            "train": order[:n_tr],
            "val": order[n_tr:N_TRAIN_CHARACTERS],
            "test": order[N_TRAIN_CHARACTERS:],
        }
        counts = torch.full((N_CHARACTERS,), N_DRAWERS, dtype=torch.int64)
        self.path = resolve_path(path)
        probe = ClassPool(torch.empty(N_CHARACTERS, 0, 1, 1), counts, rotations=self.rotations)
        self.classes = {s: probe.classes_of(b) for s, b in bases.items()}
        for s, cls in self.classes.items():
            probe.check("omniglot", s, cls, ways, shots + queries, "shots + queries")
            probe.check(
                "omniglot",
                s,
                cls,
                ways,
                self.task_shots + val_size + test_size,
                "task_shots + val_size + test_size",
            )
        self.pool = ClassPool(
            load_images(self.path, image_size), counts, rotations=self.rotations, scale=255.0
        )

    def options(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "ways": self.ways,
            "shots": self.shots,
            "queries": self.queries,
            "task_shots": self.task_shots,
            "val_size": self.val_size,
            "test_size": self.test_size,
            "rotations": self.rotations,
            "image_size": self.image_size,
            "val_characters": self.val_characters,
        }
