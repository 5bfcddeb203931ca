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
        neighbours = d.pos[:, None] + d._moves  # [B, A] the tile each action leads to
        steps = self._distances(target, believed_open, neighbours)
        return np.argmin(steps[d.rows[:, None], neighbours], axis=1)

    def _distances(self, target: np.ndarray, open_tiles: np.ndarray, watched: np.ndarray) -> np.ndarray:
        """target, open_tiles [B, N] bool, watched [B, W] tile ids -> [B, N] steps to the nearest target over open
        tiles (4-neighbour moves), exact on every watched tile that is nearest a target among its row's watched
        tiles, ``_inf`` on the rest of them: all an argmin over the watched tiles needs.

        The i-th relaxation makes every tile within i steps of a target exact and leaves the others at ``_inf``,
        so a row is relaxed only until one of its watched tiles is finite (or nothing changes: no target is
        reachable); each relaxation works on the rows still going."""
        n_rows = len(target)
        steps = np.where(target & open_tiles, 0, self._inf).reshape((n_rows,) + self._grid)
        closed = ~open_tiles.reshape(steps.shape)

        def settled(rows: np.ndarray) -> np.ndarray:
            return (steps.reshape(n_rows, -1)[rows[:, None], watched[rows]] < self._inf).any(axis=1)

        going = np.arange(n_rows)
        going = going[~settled(going)]
        while going.size:
            before = steps[going]
            relaxed = before.copy()
            for near, far in ((np.s_[:, 1:], np.s_[:, :-1]), (np.s_[:, :-1], np.s_[:, 1:]),
                              (np.s_[:, :, 1:], np.s_[:, :, :-1]), (np.s_[:, :, :-1], np.s_[:, :, 1:])):
                np.minimum(relaxed[near], before[far] + 1, out=relaxed[near])
            relaxed[closed[going]] = self._inf
            steps[going] = relaxed
            changed = (relaxed != before).reshape(len(going), -1).any(axis=1)
            going = going[changed & ~settled(going)]
        return steps.reshape(len(target), -1)
