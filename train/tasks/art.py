"""Associative retrieval (ART, Ba et al. 2016) and its modified form (mART, keys first, then values).

ART:  ``k1 v1 k2 v2 ... kK vK ? ? q``  ->  the value ``v_j`` with ``k_j = q``.
mART: ``k1 k2 ... kK v1 v2 ... vK ? ? q`` -> the same; the key-value binding is by position, K steps apart.
Keys are distinct letters a-z, values digits 0-9 drawn with replacement, the query is uniform over the K keys.
Sequences have ``T = 2K + 3`` tokens over a vocabulary of 37 (26 letters, 10 digits, "?"); the label is the vocab
id of the answer digit. Train/val/test splits (default 100k/10k/20k) are drawn once from a seed with no sequence in
two splits, saved to an ``.npz`` file and reused by every later run with the same settings.
"""
from __future__ import annotations

import math
import string
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from fwm_rl.envs.curriculum import SizeCurriculum
from fwm_rl.train.errors import UserError
from fwm_rl.train.io import atomic_write
from fwm_rl.train.tasks.base import Batch, Task

VOCAB = tuple(string.ascii_lowercase) + tuple(string.digits) + ("?",)
DIGIT0 = 26  # vocab id of "0"
QUERY = 36  # vocab id of "?"
SPLITS = ("train", "val", "test")


def decode(tokens: np.ndarray) -> str:
    """``tokens [T]`` as text, e.g. ``"c9k8j3f1??c"``."""
    return "".join(VOCAB[int(t)] for t in tokens)


def generate(n: int, num_pairs: int, modified: bool, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``n`` sequences ``[n, 2K+3]`` (uint8 vocab ids) and their labels ``[n]`` (vocab id of the answer digit)."""
    if not 1 <= num_pairs <= 26:
        raise ValueError(f"num_pairs must be in 1..26 (keys are distinct letters), got {num_pairs}")
    keys = rng.random((n, 26)).argsort(axis=1)[:, :num_pairs]  # [n, K] distinct letters
    values = DIGIT0 + rng.integers(0, 10, size=(n, num_pairs))  # [n, K]
    which = rng.integers(0, num_pairs, size=n)  # [n] index of the queried pair
    if modified:
        body = np.concatenate([keys, values], axis=1)  # [n, 2K]
    else:
        body = np.stack([keys, values], axis=2).reshape(n, 2 * num_pairs)  # [n, 2K] interleaved
    rows = np.arange(n)
    tail = np.stack([np.full(n, QUERY), np.full(n, QUERY), keys[rows, which]], axis=1)  # [n, 3]
    return np.concatenate([body, tail], axis=1).astype(np.uint8), values[rows, which].astype(np.int64)


def num_distinct(num_pairs: int) -> int:
    """How many different ART (or mART) sequences exist for ``num_pairs`` pairs."""
    return math.perm(26, num_pairs) * 10**num_pairs * num_pairs


def make_splits(
    num_pairs: int, modified: bool, seed: int, sizes: dict[str, int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Splits ``{name: (inputs [n, 2K+3], labels [n])}`` with no sequence repeated within or across splits."""
    total = sum(sizes.values())
    if total > num_distinct(num_pairs) // 2:
        raise ValueError(
            f"{total} distinct sequences requested but only {num_distinct(num_pairs)} exist for K={num_pairs}; "
            f"use smaller splits or more pairs"
        )
    rng = np.random.default_rng(seed)
    inputs, labels, seen = [], [], set()
    count = 0
    while count < total:
        x, y = generate(max(1024, total - count), num_pairs, modified, rng)
        for row, label in zip(x, y):
            key = row.tobytes()
            if key not in seen and count < total:
                seen.add(key)
                inputs.append(row)
                labels.append(label)
                count += 1
    x, y = np.stack(inputs), np.asarray(labels)
    edges = np.cumsum([0, *sizes.values()])
    return {name: (x[a:b], y[a:b]) for name, a, b in zip(sizes, edges[:-1], edges[1:])}


def load_or_make_splits(
    data_dir: Path, num_pairs: int, modified: bool, seed: int, sizes: dict[str, int]
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The splits saved in ``data_dir`` for these settings, made and saved (atomically) on first use."""
    name = "mart" if modified else "art"
    sizes_tag = "-".join(str(sizes[s]) for s in SPLITS)
    path = Path(data_dir) / f"{name}-K{num_pairs}-seed{seed}-{sizes_tag}.npz"
    if path.exists():
        try:
            with np.load(path) as saved:
                splits = {s: (saved[f"{s}_inputs"], saved[f"{s}_labels"]) for s in SPLITS}
        except (OSError, ValueError, KeyError) as e:
            raise UserError(f"{path}: not a readable {name} split file ({e}); delete it to regenerate") from None
        for split, (x, y) in splits.items():
            if x.shape != (sizes[split], 2 * num_pairs + 3) or y.shape != (sizes[split],):
                raise UserError(f"{path}: {split} split has shape {x.shape}, expected ({sizes[split]}, "
                                f"{2 * num_pairs + 3}); delete it to regenerate")
        return splits
    splits = make_splits(num_pairs, modified, seed, sizes)
    arrays = {f"{s}_{part}": a for s, (x, y) in splits.items() for part, a in (("inputs", x), ("labels", y))}

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)

    atomic_write(path, write)
    return splits


def curriculum_sizes(num_pairs: int, train_size: int, val_size: int) -> dict[str, int]:
    """Split sizes of a curriculum level with ``num_pairs`` pairs: a fifth of ``val_size`` for its val split, no
    test, and as much of ``train_size`` as the distinct sequences allow (at most half of them in all)."""
    val = max(1, val_size // 5)
    return {"train": min(train_size, num_distinct(num_pairs) // 2 - val), "val": val, "test": 0}


class ARTTask(Task):
    """ART or mART as a ``Task``: shuffled minibatches each epoch, the loss on the last step only.

    With a ``curriculum`` (:class:`fwm_rl.envs.curriculum.SizeCurriculum` over numbers of pairs, the last one the
    target's), ``levels`` holds ``{K: {"train": (x, y), "val": (x, y)}}`` for its smaller K: training draws from the
    current level's train split, and :meth:`curriculum_split` names the val split that decides promotion. The
    ``val`` and ``test`` splits, which select and report the model, always hold the target's K.
    """

    vocab_size = len(VOCAB)
    head = "mlp_last"
    carries_state = False
    best_metric = "val/error"

    def __init__(
        self,
        splits: dict[str, tuple[np.ndarray, np.ndarray]],
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        curriculum: Optional[SizeCurriculum] = None,
        levels: Optional[dict[int, dict[str, tuple[np.ndarray, np.ndarray]]]] = None,
    ) -> None:
        arrays = dict(splits)
        for pairs, level in (levels or {}).items():
            arrays.update({f"{split}_K{pairs}": level[split] for split in ("train", "val")})
        self.splits = {s: (torch.from_numpy(x.astype(np.int64)), torch.from_numpy(y)) for s, (x, y) in arrays.items()}
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.curriculum = curriculum
        for pairs in (curriculum.sizes if curriculum else (None,)):
            n_train = len(self.splits[self._level_split("train", pairs)][1])
            if n_train < batch_size * world_size:
                raise ValueError(f"train split ({n_train}) is smaller than one global batch "
                                 f"({batch_size}x{world_size})")

    def _level_split(self, split: str, pairs: Optional[int]) -> str:
        """The name of ``split`` ("train" or "val") at ``pairs`` pairs (None or the target: the split itself)."""
        return split if pairs is None or pairs == self.curriculum.target else f"{split}_K{pairs}"

    def curriculum_split(self) -> str:
        """The val split of the curriculum's current level ("val" at the target's K)."""
        return self._level_split("val", self.curriculum.size)

    def train_batch(self, step: int) -> Batch:
        split = self._level_split("train", self.curriculum.size if self.curriculum else None)
        n_train = len(self.splits[split][1])
        epoch, i = divmod(step, n_train // (self.batch_size * self.world_size))
        order = torch.from_numpy(np.random.default_rng([self.seed, epoch]).permutation(n_train))
        start = (i * self.world_size + self.rank) * self.batch_size  # ranks take interleaved slices of one order
        return self._batch(split, order[start : start + self.batch_size])

    def state_dict(self) -> dict[str, Any]:
        if self.curriculum is None:
            return {}
        c = self.curriculum
        return {"curriculum": {"level": c.level, "low_streak": c.low_streak, "history": list(c.history)}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.curriculum is not None:
            saved = state["curriculum"]
            self.curriculum.level, self.curriculum.low_streak = saved["level"], saved["low_streak"]
            self.curriculum.history = [tuple(entry) for entry in saved["history"]]

    def eval_batches(self, split: str) -> Iterator[Batch]:
        rows = torch.arange(self.rank, len(self.splits[split][1]), self.world_size)
        for start in range(0, len(rows), self.eval_batch_size):
            yield self._batch(split, rows[start : start + self.eval_batch_size])

    def _batch(self, split: str, rows: torch.Tensor) -> Batch:
        x, y = self.splits[split]
        labels = y[rows]  # [B]
        return Batch(tokens=x[rows].T.contiguous(), targets=labels, scored=torch.ones_like(labels, dtype=torch.bool))
