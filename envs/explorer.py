"""A GridMaze reference between the random policy and the oracle: an agent with perfect memory of its lifetime.

The oracle knows the layout and the goal before the first step; a memory agent can know only what its view has
shown and where it has stood. :class:`MemoryExplorer` plays that knowledge perfectly: it is what "explore, memorise,
exploit" comes to when the memory forgets nothing, so the gap between an agent and the explorer is the part of the
oracle gap that memory can close.
"""
from __future__ import annotations

import numpy as np


class MemoryExplorer:
    """Plays every row of a :class:`~fwm_rl.envs.grid_maze.GridMazeDynamics` with perfect memory of the lifetime.

    It remembers each tile its view has shown (``seen`` [B, N], wall or floor) and each tile it has stood on
    (``visited`` [B, N]), and it knows the extent of the layout (tiles outside it are walls). Until the lifetime's
    first goal it walks to the nearest tile that may hide the goal (not stood on yet, and floor or not seen yet);
    afterwards it walks to the goal, which it then knows. Paths are shortest over the tiles it believes open: the
    floor it has seen and every tile it has not seen (planning under the free-space assumption, replanned every
    step). Ties go to the lower action. The first visit is a greedy search, not an optimal one, so the explorer is
    a strong reference rather than a bound.

    Call :meth:`observe` after every reset or step, and :meth:`forget` for the rows whose lifetime ended first.
    """

    def __init__(self, dynamics) -> None:
        if dynamics.obs_mode == "position":
            raise ValueError("the explorer remembers what the view shows; it needs obs='view' or 'both', "
                             "got obs='position'")
        self.dynamics = dynamics
        n_rows, n_tiles = dynamics.walls.shape
        self.seen = np.zeros((n_rows, n_tiles), dtype=bool)
        self.visited = np.zeros((n_rows, n_tiles), dtype=bool)
        self._grid = (n_tiles // dynamics.padded_width, dynamics.padded_width)  # padded (rows, cols)
        self._inf = n_tiles + 1

    def forget(self, rows: np.ndarray) -> None:
        """Clear the memory of ``rows`` [R] (their lifetime ended)."""
        self.seen[rows] = False
        self.visited[rows] = False

    def observe(self) -> None:
        """Remember the view and the tile of every row's current position."""
        d = self.dynamics
        self.seen[d.rows[:, None], d.pos[:, None] + d._view] = True
        self.visited[d.rows, d.pos] = True

    def actions(self) -> np.ndarray:
        """[B] the explorer's actions for the current positions."""
        d = self.dynamics
        rc = d._tile_rc  # [N, 2] unpadded (row, col) of every tile
        inside = ((rc >= 0) & (rc < d.dims[:, None, :])).all(axis=2)  # [B, N] within the row's layout
        believed_open = inside & (~self.seen | ~d.walls)
        found = d.goals_reached > 0
        goal = np.zeros_like(believed_open)
        goal[d.rows, d.goal] = True
        target = np.where(found[:, None], goal, ~self.visited & believed_open)
        steps = self._distances(target, believed_open)
        return np.argmin(steps[d.rows[:, None], d.pos[:, None] + d._moves], axis=1)

    def _distances(self, target: np.ndarray, open_tiles: np.ndarray) -> np.ndarray:
        """target, open_tiles [B, N] bool -> [B, N] steps from each open tile to the nearest target over open
        tiles (4-neighbour moves; ``_inf`` where none is reachable or the tile is not open)."""
        shape = (len(target),) + self._grid
        steps = np.where(target & open_tiles, 0, self._inf).reshape(shape)
        closed = ~open_tiles.reshape(shape)
        while True:
            relaxed = steps.copy()
            for near, far in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[:, :-1], np.s_[:, 1:]),
                              (np.s_[:, :, 1:], np.s_[:, :, :-1]), (np.s_[:, :, :-1], np.s_[:, :, 1:])):
                np.minimum(relaxed[near], steps[far] + 1, out=relaxed[near])
            relaxed[closed] = self._inf
            if np.array_equal(relaxed, steps):
                return steps.reshape(len(target), -1)
            steps = relaxed
