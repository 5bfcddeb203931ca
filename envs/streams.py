"""Per-row random streams: every batch row draws only from its own ``np.random.Generator``.

A batched env holds B rows; row b is seeded exactly as a single env reset with ``seed + b`` would be, and every
random decision of row b reads the next doubles of that row's Generator. Hence a batch of B rows and B single envs
seeded alike consume identical numbers and produce identical trajectories, whatever happens in the other rows.
Draws are served from a per-row buffer so the common case (no Python loop over rows) stays vectorised.
"""
from __future__ import annotations

import numpy as np

_BLOCK = 64


class RowStreams:
    """Uniform [0, 1) draws for B rows, row b from ``rngs[b]`` in stream order.

    :param n_rows: number of rows B.
    """

    def __init__(self, n_rows: int) -> None:
        self.rngs: list[np.random.Generator | None] = [None] * n_rows
        self.buffer = np.empty((n_rows, _BLOCK))  # [B, K] drawn but unread doubles
        self.next = np.full(n_rows, _BLOCK, dtype=np.int64)  # [B] index of the next unread double

    def set_rng(self, row: int, rng: np.random.Generator) -> None:
        """Make row ``row`` read from ``rng`` from now on (buffered draws of the old Generator are discarded)."""
        if rng is not self.rngs[row]:
            self.rngs[row] = rng
            self.next[row] = _BLOCK

    def uniform(self, rows: np.ndarray, k: int = 1) -> np.ndarray:
        """Next ``k`` doubles of each row in ``rows`` -> [len(rows), k]."""
        if k > _BLOCK:
            return np.concatenate([self.uniform(rows, min(_BLOCK, k - done)) for done in range(0, k, _BLOCK)], 1)
        start = self.next[rows]
        short = start + k > _BLOCK
        if short.any():
            self._refill(rows[short], k)
            start = self.next[rows]
        values = self.buffer[rows[:, None], start[:, None] + np.arange(k)]
        self.next[rows] = start + k
        return values

    def _refill(self, rows: np.ndarray, k: int) -> None:
        for row in rows:
            left = _BLOCK - self.next[row]
            self.buffer[row, :left] = self.buffer[row, self.next[row]:]
            self.buffer[row, left:] = self.rngs[row].random(_BLOCK - left)
            self.next[row] = 0


def draw_index(u: np.ndarray, high: np.ndarray | int) -> np.ndarray:
    """Uniform integer in [0, high) from a uniform double u (same shapes)."""
    return np.minimum((u * high).astype(np.int64), np.asarray(high) - 1)


def draw_other(u: np.ndarray, high: int, exclude: np.ndarray) -> np.ndarray:
    """Uniform integer in [0, high) other than ``exclude``, from a uniform double u."""
    k = draw_index(u, high - 1)
    return k + (k >= exclude)
