"""``FWM/GridMaze-v0``: procedural grid mazes with a hidden goal, fixed for the lifetime.

Each lifetime has one layout (a procedural maze of the chosen split, or one of the given layouts) and one hidden
goal tile. The agent moves up/right/down/left (actions 0-3; a move into a wall leaves it in place). Reaching the goal
gives +1 and teleports the agent to a uniformly random floor tile other than the goal, so after the first visit a
memory of the layout and the goal pays off on every later visit. Lifetimes are truncated after ``episode_steps``.

Observation (float32, one layout per mode whatever the maze size):

* ``obs="view"``: the (2 r + 1)^2 tiles around the agent, 1 for wall (off-grid counts as wall), row-major;
* ``obs="position"``: the agent's (row, col) divided by (H - 1, W - 1) of its grid, in [0, 1] (a step's size in
  this encoding depends on the grid), or with ``position_scale=k`` divided by k (one step is 1/k in every maze, so
  the encoding means the same at every size: for curricula and transfer across sizes); with
  ``position_features=k`` followed by sin and cos of the row and the column at wavelengths of 4, 8, ..., 2^(k+1)
  tiles ([row sines, col sines, row cosines, col cosines], 4 k values in [-1, 1], the same meaning at every size:
  features a memory can key on, as the Fourier features of NeRF);
* ``obs="both"``: view then position;

then always the previous action one-hot with a final "none" slot [5], the previous reward and steps / episode_steps.

Splits: "train" draws a fresh maze per lifetime, redrawn until its id is a train id (see
:mod:`fwm_rl.envs.layouts`); "val", "test" and the OOD splits ("test_large": size 11; "test_loopy": loops 0.5)
are frozen sets (:func:`fwm_rl.envs.mazes.split_layouts`); "test_handdrawn" is the fixed set of hand-drawn 15 x 15
layouts (:func:`fwm_rl.envs.mazes.handdrawn_layouts`; size and loops do not apply to it). ``layout=`` /
``layouts=`` replace the split by your own layouts (text, path, folder or list); a ``G`` fixes the goal and an
``S`` the start of every lifetime.

Lifetimes default to 10 size^2 steps, scaled to the maze. ``curriculum=`` (:mod:`fwm_rl.envs.curriculum`) makes a
train env move through a ladder of sizes; its held-out splits play the largest size.

``privileged_obs=True`` appends the privileged values of :mod:`fwm_rl.envs.dynamics` (training aids the actor never
sees); they end with the one-hot of the oracle's action, or with ``privileged_action="explorer"`` of the
memory-perfect explorer's (:mod:`fwm_rl.envs.explorer`), which, unlike the oracle's before the first goal, follows
from what the agent has seen.
"""
from __future__ import annotations

import numpy as np

from fwm_rl.envs.checks import check_choice, check_fraction, check_int
from fwm_rl.envs.curriculum import SizeCurriculum
from fwm_rl.envs.dynamics import BatchedDynamics
from fwm_rl.envs.env import TaskEnv, TaskVectorEnv
from fwm_rl.envs.explorer import MemoryExplorer
from fwm_rl.envs.layouts import Layout, SPLIT_BUCKETS, grid_distances, load_layouts
from fwm_rl.envs.mazes import HANDDRAWN_SPLIT, OOD_SPLITS, generate_split, handdrawn_layouts, split_layouts
from fwm_rl.envs.render import grid_ansi, grid_frame
from fwm_rl.envs.streams import draw_index

ENV_ID = "FWM/GridMaze-v0"
OBS_MODES = ("view", "position", "both")
PRIVILEGED_ACTIONS = ("oracle", "explorer")  # whose action the privileged values end with
GRID_SPLITS = tuple(SPLIT_BUCKETS) + tuple(OOD_SPLITS) + (HANDDRAWN_SPLIT,)
DEFAULT_SIZE = 7
MAX_SIZE = 25  # generating 256 mazes of 25 x 25 cells takes seconds; the cost grows as size^4
MAX_VIEW_RADIUS = 10
MAX_POSITION_SCALE = 1000
MAX_POSITION_FEATURES = 8  # wavelengths up to 2^9 tiles, beyond the largest maze (2 MAX_SIZE + 1 tiles)
GOAL_REWARD = 1.0
_FAR = np.iinfo(np.int32).max  # distance of walls and unreachable tiles


def default_episode_steps(height: int, width: int) -> int:
    """10 size^2 for a maze of size x size cells ((2 size + 1)^2 tiles)."""
    size = max(1, (max(height, width) - 1) // 2)
    return 10 * size * size


def maze_tiles(size: int) -> int:
    """Tiles per side of a maze of size x size cells."""
    return 2 * size + 1


class GridMazeDynamics(BatchedDynamics):
    """Batched GridMaze dynamics. Tiles are flat indices into each row's grid padded by ``view_radius`` walls:
    ``walls`` [B, N] bool, ``dist`` [B, N] steps to the goal, ``pos`` and ``goal`` [B]. ``next_tile`` [B, 4 N],
    filled when a lifetime starts, holds the tile after each (tile, action) (the same tile where a wall blocks)."""

    n_actions = 4
    reference_policies = ("random", "oracle", "explorer")
    explorer: MemoryExplorer | None = None  # the privileged action's teacher; None (the oracle) in older pickles

    def __init__(self, n_rows: int, size: int | None = None, loops: float | None = None, obs: str = "view",
                 split: str = "train", layout: str | None = None, layouts: str | list | None = None,
                 episode_steps: int | None = None, view_radius: int = 1, layout_order: str = "random",
                 position_scale: int | None = None, position_features: int = 0,
                 curriculum: dict | list | SizeCurriculum | None = None, privileged_obs: bool = False,
                 privileged_action: str = "oracle") -> None:
        check_choice("obs", obs, OBS_MODES)
        check_choice("privileged_action", privileged_action, PRIVILEGED_ACTIONS)
        if privileged_action != "oracle" and not privileged_obs:
            raise ValueError(f"privileged_action={privileged_action!r} sets a privileged value: it needs "
                             f"privileged_obs=True")
        check_choice("split", split, GRID_SPLITS)
        self.view_radius = check_int("view_radius", view_radius, 1, MAX_VIEW_RADIUS)
        self.position_scale = (None if position_scale is None
                               else check_int("position_scale", position_scale, 1, MAX_POSITION_SCALE))
        self.position_features = check_int("position_features", position_features, 0, MAX_POSITION_FEATURES)
        if self.position_features and obs == "view":
            raise ValueError(f"position_features={position_features} adds to the position: it needs obs='position' "
                             f"or 'both', got obs='view'")
        self._wavelengths = 2.0 ** np.arange(2, self.position_features + 2)  # [k] in tiles (2 would give sin 0)
        if layout is not None and layouts is not None:
            raise ValueError("pass layout= (one layout) or layouts= (several), not both")
        self.curriculum = None if curriculum is None else SizeCurriculum.from_option(curriculum)
        if self.curriculum is not None:
            if size is not None and size != self.curriculum.target:
                raise ValueError(f"curriculum sets the size (sizes {list(self.curriculum.sizes)}); drop size= or "
                                 f"set it to the largest, {self.curriculum.target}; got size={size}")
            size = self.curriculum.size if split == "train" else self.curriculum.target
        if split in OOD_SPLITS:
            for name, value in (("size", size), ("loops", loops)):
                if value is not None and value != OOD_SPLITS[split][name]:
                    raise ValueError(f"split {split!r} fixes {name}={OOD_SPLITS[split][name]}; got {name}={value}")
            size, loops = OOD_SPLITS[split]["size"], OOD_SPLITS[split]["loops"]
        self.size = check_int("size", DEFAULT_SIZE if size is None else size, 2, MAX_SIZE)
        self.loops = 0.0 if loops is None else check_fraction("loops", loops)
        self.obs_mode, self.split = obs, split
        custom = layout if layout is not None else layouts
        self.bank: tuple[Layout, ...] | None
        if custom is not None:
            self.bank = tuple(load_layouts(custom))
        elif split == "train":
            self.bank = None
        elif split == HANDDRAWN_SPLIT:
            self.bank = handdrawn_layouts()
        else:
            self.bank = split_layouts(split, self.size, self.loops)
        largest = self.size if self.curriculum is None or self.bank is not None else self.curriculum.target
        shapes = [(maze_tiles(largest),) * 2] if self.bank is None else [lay.walls.shape for lay in self.bank]
        self.height, self.width = max(s[0] for s in shapes), max(s[1] for s in shapes)
        self.fixed_episode_steps = episode_steps
        if episode_steps is None:
            episode_steps = default_episode_steps(*((maze_tiles(self.size),) * 2 if self.bank is None else
                                                    (self.height, self.width)))
        super().__init__(n_rows, episode_steps, None if self.bank is None else len(self.bank), layout_order,
                         privileged_obs)

        p = self.view_radius
        self.padded_width = self.width + 2 * p
        n_tiles = (self.height + 2 * p) * self.padded_width
        w = self.padded_width
        self._moves = np.array([-w, 1, w, -1])  # up, right, down, left
        dy, dx = np.mgrid[-p:p + 1, -p:p + 1]
        self._view = (dy * w + dx).ravel()  # [V] offsets of the view window
        if self.bank is not None:
            self.bank_walls = self._pad(np.stack([self._fit(lay.walls) for lay in self.bank]))
            self.bank_next = self._next_tiles(self.bank_walls)
            self.bank_goal = np.array([self._flat(lay.goal) for lay in self.bank])
            self.bank_start = np.array([self._flat(lay.start) for lay in self.bank])
            self.bank_ids = [lay.id for lay in self.bank]
            self.bank_dims = np.array([lay.walls.shape for lay in self.bank])
        self.walls = np.ones((n_rows, n_tiles), dtype=bool)
        self.next_tile = np.zeros((n_rows, 4 * n_tiles), dtype=np.int64)
        self.dist = np.zeros((n_rows, n_tiles), dtype=np.int64)
        self._link_views()
        self._tile_start = self.rows * n_tiles  # [B] offset of each row in the flat tile tables
        self._move_start = self.rows * (4 * n_tiles)
        self.floor_list = np.zeros((n_rows, n_tiles), dtype=np.int64)  # floor tiles first, ascending
        self.floor_rank = np.zeros((n_rows, n_tiles), dtype=np.int64)  # index of a floor tile in floor_list
        self.n_floor = np.full(n_rows, 2, dtype=np.int64)
        self.dims = np.tile([self.height, self.width], (n_rows, 1))  # [B, 2] unpadded grid shape per row
        self.goal = np.zeros(n_rows, dtype=np.int64)
        self.pos = np.zeros(n_rows, dtype=np.int64)
        self._tile_rc = np.stack(np.divmod(np.arange(n_tiles), self.padded_width), axis=1) - p  # [N, 2] (row, col)
        self._view_size = 0 if obs == "position" else self._view.size
        self._init_observation(self._view_size + (0 if obs == "view" else 2 + 4 * self.position_features), 0.0,
                               GOAL_REWARD)
        v = self._view_size
        if obs != "view" and self.position_scale is not None:
            self.obs_high[v:v + 2] = (np.array([self.height, self.width]) - 1) / self.position_scale
        self.obs_low[v + 2:v + 2 + 4 * self.position_features] = -1.0
        self.explorer = MemoryExplorer(self) if privileged_action == "explorer" else None

    # ------------------------------------------------------------------------------------------------ geometry
    def _link_views(self) -> None:
        super()._link_views()
        self._walls_flat, self._next_flat = self.walls.reshape(-1), self.next_tile.reshape(-1)
        self._dist_flat = self.dist.reshape(-1)

    def _fit(self, walls: np.ndarray) -> np.ndarray:
        """walls [h, w] -> [H, W] with walls filling the bottom/right remainder."""
        out = np.ones((self.height, self.width), dtype=bool)
        out[:walls.shape[0], :walls.shape[1]] = walls
        return out

    def _pad(self, walls: np.ndarray) -> np.ndarray:
        """walls [R, H, W] -> [R, N] flat with a border of view_radius walls."""
        p = self.view_radius
        return np.pad(walls, ((0, 0), (p, p), (p, p)), constant_values=True).reshape(len(walls), -1)

    def _next_tiles(self, walls: np.ndarray) -> np.ndarray:
        """Padded walls [R, N] -> next_tile [R, 4 N]: the tile after each (tile, action), or the tile itself."""
        tiles = np.arange(walls.shape[1])[:, None]
        target = np.clip(tiles + self._moves, 0, walls.shape[1] - 1)  # [N, 4]; clipping only touches border walls
        return np.where(walls[:, target], tiles, target).reshape(len(walls), -1)

    def _flat(self, tile: tuple[int, int] | None) -> int:
        return -1 if tile is None else (tile[0] + self.view_radius) * self.padded_width + tile[1] + self.view_radius

    def positions(self) -> np.ndarray:
        return self._tile_rc[self.pos]

    def grid(self, row: int) -> np.ndarray:
        """walls [h, w] of one row's layout, unpadded."""
        p = self.view_radius
        h, w = self.dims[row]
        return self.walls[row].reshape(-1, self.padded_width)[p:p + h, p:p + w]

    def goal_pos(self, row: int) -> tuple[int, int]:
        """(row, col) of one row's goal."""
        r, c = self._tile_rc[self.goal[row]].tolist()
        return r, c

    # ------------------------------------------------------------------------------------------------ dynamics
    def reset_rows(self, rows: np.ndarray) -> None:
        """Begin new lifetimes; a curriculum's new size applies when every row begins one (see
        :mod:`fwm_rl.envs.curriculum`)."""
        if self.curriculum is not None and self.bank is None and len(rows) == self.n_rows:
            self.size = self.curriculum.size
            if self.fixed_episode_steps is None:
                self.episode_steps = default_episode_steps(*(maze_tiles(self.size),) * 2)
        super().reset_rows(rows)

    def _start_lifetime(self, rows: np.ndarray, layout_index: np.ndarray | None) -> None:
        if layout_index is None:
            mazes = generate_split(self.streams.uniform, rows, self.size, self.loops, "train")
            walls = self._pad(np.stack([self._fit(m.walls) for m in mazes]))
            self.walls[rows] = walls
            self.next_tile[rows] = self._next_tiles(walls)
            fixed_goal = fixed_start = np.full(len(rows), -1)
            ids = [m.id for m in mazes]
            self.dims[rows] = maze_tiles(self.size)
        else:
            self.walls[rows] = self.bank_walls[layout_index]
            self.next_tile[rows] = self.bank_next[layout_index]
            fixed_goal, fixed_start = self.bank_goal[layout_index], self.bank_start[layout_index]
            ids = [self.bank_ids[i] for i in layout_index.tolist()]
            self.dims[rows] = self.bank_dims[layout_index]
        for row, layout in zip(rows.tolist(), ids):
            self.layout_ids[row] = layout
        floor = ~self.walls[rows]
        self.n_floor[rows] = floor.sum(1)
        self.floor_rank[rows] = np.cumsum(floor, axis=1) - 1
        self.floor_list[rows] = np.argsort(~floor, axis=1, kind="stable")
        u = self.streams.uniform(rows, 2)
        goal = self.floor_list[rows, draw_index(u[:, 0], self.n_floor[rows])]
        self.goal[rows] = np.where(fixed_goal >= 0, fixed_goal, goal)
        self._place_off_goal(rows, u[:, 1])
        self.pos[rows] = np.where(fixed_start >= 0, fixed_start, self.pos[rows])
        dist = grid_distances(self.walls[rows].reshape(len(rows), -1, self.padded_width), self.goal[rows])
        self.dist[rows] = np.where(dist < 0, _FAR, dist).reshape(len(rows), -1)
        if self.explorer is not None:
            self.explorer.forget(rows)
            self.explorer.observe()

    def _place_off_goal(self, rows: np.ndarray, u: np.ndarray) -> None:
        """Put the agent of each row on a uniform floor tile other than the goal."""
        k = draw_index(u, self.n_floor[rows] - 1)
        k += k >= self.floor_rank[rows, self.goal[rows]]
        self.pos[rows] = self.floor_list[rows, k]

    def _move(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        self.pos = self._next_flat[self._move_start + self.pos * 4 + actions]
        hit = self.pos == self.goal
        rows = hit.nonzero()[0]
        if rows.size:
            self._place_off_goal(rows, self.streams.uniform(rows)[:, 0])
        if self.explorer is not None:
            self.explorer.observe()
        return hit.astype(np.float32), hit, rows

    def shortest_path(self) -> np.ndarray:
        return self._dist_flat[self._tile_start + self.pos]

    def _observe_features(self, obs: np.ndarray, flat: np.ndarray) -> None:
        v = self._view_size
        if v:
            obs[:, :v] = self._walls_flat[(self._tile_start + self.pos)[:, None] + self._view]
        if self.obs_mode == "view":
            return
        positions = self.positions()  # [B, 2] (row, col) in tiles
        scale = self.dims - 1 if self.position_scale is None else self.position_scale
        np.divide(positions, scale, out=obs[:, v:v + 2])
        if self.position_features:
            k2 = 2 * self.position_features
            phase = (2 * np.pi) * positions[:, :, None] / self._wavelengths  # [B, 2, k]
            obs[:, v + 2:v + 2 + k2] = np.sin(phase).reshape(-1, k2)
            obs[:, v + 2 + k2:v + 2 + 2 * k2] = np.cos(phase).reshape(-1, k2)

    def oracle_actions(self) -> np.ndarray:
        return np.argmin(self.dist[self.rows[:, None], self.pos[:, None] + self._moves], axis=1)

    def privileged_actions(self) -> np.ndarray:
        return self.oracle_actions() if self.explorer is None else self.explorer.actions()


class GridMazeEnv(TaskEnv):
    """``FWM/GridMaze-v0`` (single env). Kwargs: size, loops, obs, split, layout, layouts, episode_steps,
    view_radius, layout_order, position_scale, position_features, curriculum, privileged_obs (see
    :class:`~fwm_rl.envs.dynamics.BatchedDynamics`), privileged_action (see the module docstring)."""

    env_id = ENV_ID
    dynamics_class = GridMazeDynamics

    @classmethod
    def heldout_kwargs(cls, train_kwargs: dict[str, Any], split: str) -> dict[str, Any]:
        """As :meth:`TaskEnv.heldout_kwargs`; the OOD splits and ``test_handdrawn`` fix their mazes, so the training
        size, loops and curriculum are dropped for them."""
        kwargs = super().heldout_kwargs(train_kwargs, split)
        if split in OOD_SPLITS or split == HANDDRAWN_SPLIT:
            for name in ("size", "loops", "curriculum"):
                kwargs.pop(name, None)
        return kwargs

    def draw(self, mode: str) -> str | np.ndarray:
        d = self.dynamics
        walls, goal, agent = d.grid(0), d.goal_pos(0), d.agent_pos(0)
        if mode == "rgb_array":
            return grid_frame(walls, goal, agent, self.trail)
        head = f"t={d.t[0]}/{d.episode_steps} goals={d.goals_reached[0]} layout={d.layout_ids[0]}"
        return head + "\n" + grid_ansi(walls, goal, agent, self.trail)


class GridMazeVectorEnv(TaskVectorEnv):
    """Native batched ``FWM/GridMaze-v0``: ``num_envs`` mazes stepped by one numpy call."""

    env_id = ENV_ID
    dynamics_class = GridMazeDynamics
