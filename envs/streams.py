"""Per-row random streams: every batch row draws only from its own ``np.random.Generator``.

A batched env holds B rows; row b is seeded exactly as a single env reset with ``seed + b`` would be, and every
random decision of row b reads the next doubles of that row's Generator. Hence a batch of B rows and B single envs
seeded alike consume identical numbers and produce identical trajectories, whatever happens in the other rows.
Draws are served from a per-row buffer (one flat array, so a draw is a few 1-D numpy calls whatever B is) and the
Generators are only called to refill it, ``_BLOCK`` doubles at a time.
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
        self.buffer = np.empty(n_rows * _BLOCK)  # [B * K] drawn doubles, row b in [b K, (b + 1) K)
        self.next = np.full(n_rows, _BLOCK, dtype=np.int64)  # [B] index of the row's next unread double
        self._row_start = np.arange(n_rows) * _BLOCK  # [B] offset of each row in the buffer
        self._ranges = [np.arange(k) for k in range(_BLOCK + 1)]

    def set_rng(self, row: int, rng: np.random.Generator) -> None:
        """Make row ``row`` read from ``rng`` from now on (buffered draws of the old Generator are discarded)."""
        if rng is not self.rngs[row]:
            self.rngs[row] = rng
            self.next[row] = _BLOCK

    def uniform(self, rows: np.ndarray, k: int = 1) -> np.ndarray:
        """Next ``k`` doubles of each row in ``rows`` (int array) -> [len(rows), k]."""
        if k > _BLOCK:
            return np.concatenate([self.uniform(rows, min(_BLOCK, k - done)) for done in range(0, k, _BLOCK)], 1)
        start = self.next[rows]
        end = start + k
        short = (end > _BLOCK).nonzero()[0]
        if short.size:
            self._refill(rows[short])
            start = self.next[rows]
            end = start + k
        self.next[rows] = end
        return self.buffer[(self._row_start[rows] + start)[:, None] + self._ranges[k]]

    def _refill(self, rows: np.ndarray) -> None:
        """Move each row's unread doubles to the front of its block and fill the rest from its Generator."""
        for row in rows.tolist():
            block = self.buffer[row * _BLOCK:(row + 1) * _BLOCK]
            left = _BLOCK - int(self.next[row])
            block[:left] = block[_BLOCK - left:]
            block[left:] = self.rngs[row].random(_BLOCK - left)
            self.next[row] = 0


def draw_index(u: np.ndarray, high: np.ndarray | int) -> np.ndarray:
    """Uniform integer in [0, high) from a uniform double u (same shapes; integer high < 2**53).

    No clamp is needed: u <= 1 - 2**-53, so u * high rounds to a double below high."""
    return (u * high).astype(np.int64)


def draw_other(u: np.ndarray, high: int, exclude: np.ndarray) -> np.ndarray:
    """Uniform integer in [0, high) other than ``exclude``, from a uniform double u."""
    k = draw_index(u, high - 1)
    return k + (k >= exclude)
