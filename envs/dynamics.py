"""Batched numpy dynamics shared by every single env (B = 1) and its vector twin (B = n_envs).

:class:`BatchedDynamics` keeps the bookkeeping both tasks share: lifetime clock, goal counts, goal-visit segments and
their exploit ratios, layout choice (random or sequential over a fixed set), previous action and reward, the common
tail of the observation and the ``info`` dictionaries. A task subclass supplies the layouts, the moves and the
observation features. Since the single env and the vector env run this same code, they cannot drift apart; and
:meth:`BatchedDynamics.step_autoreset` is the one autoreset that the Gymnasium and the SB3 vector envs share.

Speed at B = 1 comes from the number of numpy calls, not their size: a step is a handful of 1-D gathers from flat
per-row tables filled when a lifetime starts (``row * stride + index``, never multi-array fancy indexing), and the
rare events (goal, timeout, buffer refill) live behind one cheap test.
"""
from __future__ import annotations

from typing import Any, Callable, TypeVar

import numpy as np

from fwm_rl.envs.checks import check_bool, check_choice, check_int
from fwm_rl.envs.streams import RowStreams, draw_index

LAYOUT_ORDERS = ("random", "sequential")
PRIVILEGED_DISTANCES = 8  # the privileged distance one-hot has slots 0 .. 8 ("8 or more")


def privileged_size(n_actions: int) -> int:
    """Values that ``privileged_obs`` appends: the distance one-hot [PRIVILEGED_DISTANCES + 1], the distance /
    episode_steps [1] and the oracle action one-hot [n_actions]."""
    return PRIVILEGED_DISTANCES + 2 + n_actions


Info = TypeVar("Info")


class BatchedDynamics:
    """B independent lifetimes stepped together. Subclasses set ``n_actions`` and ``layout_ids`` (one str per
    row), call :meth:`_init_observation` and implement the hooks below.

    :param n_rows: batch size B.
    :param episode_steps: lifetime length T; a row is truncated after its T-th step.
    :param n_layouts: size of the fixed layout set, or None for procedural layouts.
    :param layout_order: "random" (uniform over the set) or "sequential" (row i gets i, i+B, i+2B, ... mod N).
    :param privileged_obs: append :func:`privileged_size` privileged values to the observation (the shortest-path
        distance to the goal and the oracle's action, for an asymmetric critic or an auxiliary loss);
        ``CorePolicy(privileged_features=privileged_size(n_actions))`` hides them from the actor.
    """

    n_actions: int
    reference_policies: tuple[str, ...] = ("random", "oracle")  # the policies :func:`~fwm_rl.envs.run_reference` plays
    obs_low: np.ndarray
    obs_high: np.ndarray

    def __init__(self, n_rows: int, episode_steps: int, n_layouts: int | None, layout_order: str,
                 privileged_obs: bool = False) -> None:
        check_choice("layout_order", layout_order, LAYOUT_ORDERS)
        self.privileged_obs = check_bool("privileged_obs", privileged_obs)
        self.n_rows = n_rows
        self.episode_steps = check_int("episode_steps", episode_steps, 1)
        self.n_layouts = n_layouts
        self.layout_order = layout_order
        self.streams = RowStreams(n_rows)
        self.layout_ids = [""] * n_rows
        self.lifetimes_begun = np.zeros(n_rows, dtype=np.int64)  # [B] for the sequential order
        self._clocks = np.zeros((2, n_rows), dtype=np.int64)  # both clocks tick in one call
        self.goals_reached = np.zeros(n_rows, dtype=np.int64)
        self.visit_shortest = np.ones(n_rows, dtype=np.int64)  # shortest path when the visit began
        self.shortest = np.ones(n_rows, dtype=np.int64)  # shortest_path() after the last step or reset
        self.prev_action = np.zeros(n_rows, dtype=np.int64)  # n_actions means "none"
        self.prev_reward = np.zeros(n_rows, dtype=np.float32)
        self.hit = np.zeros(n_rows, dtype=bool)  # [B] last step reached a goal
        self.exploit = np.zeros(n_rows)  # [B] exploit ratio of the visit that ended on the last step
        self.rows = np.arange(n_rows)  # [B] row numbers, for per-row table offsets
        BatchedDynamics._link_views(self)

    def _link_views(self) -> None:
        """Create the attributes that are views of other arrays. Subclasses extend it for their flat tables.

        Pickling (checkpoints, subprocess vec envs) copies a view into an array of its own, so
        :meth:`__setstate__` calls this again to re-link them.
        """
        self.t = self._clocks[0]  # [B] steps taken this lifetime
        self.steps_since_goal = self._clocks[1]  # [B] steps in the current goal visit

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._link_views()

    def _init_observation(self, n_features: int, reward_low: float, reward_high: float) -> None:
        """Observation = task features [F] in [0, 1], previous action one-hot with a "none" slot [a + 1], previous
        reward in [reward_low, reward_high], steps taken / episode_steps; then, with ``privileged_obs``, the
        shortest-path distance d to the goal as a one-hot of min(d, PRIVILEGED_DISTANCES), min(d / episode_steps,
        1) and the one-hot of :meth:`oracle_actions` [privileged_size(n_actions)]."""
        self._time_col = n_features + self.n_actions + 2
        self.obs_size = self._time_col + 1 + (privileged_size(self.n_actions) if self.privileged_obs else 0)
        self.obs_low = np.zeros(self.obs_size, dtype=np.float32)
        self.obs_high = np.ones(self.obs_size, dtype=np.float32)
        self.obs_low[self._time_col - 1], self.obs_high[self._time_col - 1] = reward_low, reward_high
        self._obs_start = self.rows * self.obs_size  # [B] offset of each row in the flat observation
        self._action_slot = self._obs_start + n_features  # [B] flat index of each row's "action 0" slot

    # ----------------------------------------------------------------------------------------------- task hooks
    def _start_lifetime(self, rows: np.ndarray, layout_index: np.ndarray | None) -> None:
        """Load (or generate, when ``layout_index`` is None) each row's layout and place goal and agent."""
        raise NotImplementedError

    def _move(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Apply actions [B] -> (rewards [B] float32, goal hit [B] bool, rows [R] int beginning a new goal visit,
        every hit row among them)."""
        raise NotImplementedError

    def _observe_features(self, obs: np.ndarray, flat: np.ndarray) -> None:
        """Write the task features into ``obs[:, :F]`` (``flat`` is ``obs`` viewed as [B * D]); the rest is 0."""
        raise NotImplementedError

    def shortest_path(self) -> np.ndarray:
        """[B] int: length of a shortest path from each row's position to its goal."""
        raise NotImplementedError

    def oracle_actions(self) -> np.ndarray:
        """[B] actions of a full-knowledge agent walking a shortest path to the goal."""
        raise NotImplementedError

    def privileged_actions(self) -> np.ndarray:
        """[B] the actions whose one-hot ends the privileged values: :meth:`oracle_actions` unless a task offers
        another teacher."""
        return self.oracle_actions()

    def positions(self) -> np.ndarray:
        """[B] or [B, 2] int positions of all rows (privileged: for probes, never observed)."""
        raise NotImplementedError

    def agent_pos(self, row: int) -> int | tuple[int, int]:
        """Position of one row: an int node or a (row, col) tuple."""
        pos = self.positions()[row].tolist()
        return tuple(pos) if isinstance(pos, list) else pos

    # ------------------------------------------------------------------------------------------------- dynamics
    def seed_row(self, row: int, rng: np.random.Generator, restart_order: bool) -> None:
        """Row ``row`` draws from ``rng``; ``restart_order`` restarts its sequential layout order."""
        self.streams.set_rng(row, rng)
        if restart_order:
            self.lifetimes_begun[row] = 0

    def reset_rows(self, rows: np.ndarray) -> None:
        """Begin a new lifetime in each of ``rows``."""
        index = None
        if self.n_layouts is not None:
            if self.layout_order == "sequential":
                index = (rows + self.lifetimes_begun[rows] * self.n_rows) % self.n_layouts
            else:
                index = draw_index(self.streams.uniform(rows)[:, 0], self.n_layouts)
        self.lifetimes_begun[rows] += 1
        self._start_lifetime(rows, index)
        self._clocks[:, rows] = 0
        self.goals_reached[rows] = 0
        self.shortest = self.shortest_path()
        self.visit_shortest[rows] = self.shortest[rows]
        self.prev_action[rows] = self.n_actions
        self.prev_reward[rows] = 0.0
        self.hit[rows] = False

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Step every row with valid actions [B] int64 (kept, not copied) -> (fresh rewards [B] float32,
        truncated [B] bool). Truncated rows are not reset here (see :meth:`step_autoreset`)."""
        self.prev_action = actions
        rewards, hit, restart = self._move(actions)
        self._clocks += 1
        self.hit = hit
        self.shortest = self.shortest_path()
        if restart.size:
            self.exploit = self.steps_since_goal / np.maximum(self.visit_shortest, 1)  # read only where hit
            self.goals_reached += hit
            self.steps_since_goal[restart] = 0
            self.visit_shortest[restart] = self.shortest[restart]
        self.prev_reward = rewards
        return rewards.copy(), self.t >= self.episode_steps

    def step_autoreset(self, actions: np.ndarray, describe: Callable[[], Info]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Info, np.ndarray | None]:
        """:meth:`step`, then begin a new lifetime in every truncated row: the one autoreset of every vector env.

        -> (observations [B, D] (a truncated row's is its new lifetime's first), rewards [B], truncated [B],
        ``describe()`` taken before the resets (the finished lifetimes' last info), the observations before the
        resets [B, D] or None when no row was truncated).
        """
        rewards, truncated = self.step(actions)
        obs = self.observe()
        info = describe()
        done = truncated.nonzero()[0]
        if not done.size:
            return obs, rewards, truncated, info, None
        self.reset_rows(done)
        return self.observe(), rewards, truncated, info, obs

    def observe(self) -> np.ndarray:
        """[B, D] float32 fresh observations: task features, previous action one-hot, previous reward, time (and
        the privileged values: distance to the goal, oracle action)."""
        obs = np.zeros((self.n_rows, self.obs_size), dtype=np.float32)
        flat = obs.reshape(-1)
        flat[self._action_slot + self.prev_action] = 1.0
        obs[:, self._time_col - 1] = self.prev_reward
        np.divide(self.t, self.episode_steps, out=obs[:, self._time_col])
        self._observe_features(obs, flat)
        if self.privileged_obs:
            distance_slot = self._obs_start + (self._time_col + 1)
            flat[distance_slot + np.minimum(self.shortest, PRIVILEGED_DISTANCES)] = 1.0
            np.minimum(self.shortest / self.episode_steps, 1.0, out=obs[:, self._time_col + PRIVILEGED_DISTANCES + 2])
            flat[distance_slot + (PRIVILEGED_DISTANCES + 2) + self.privileged_actions()] = 1.0
        return obs

    # ----------------------------------------------------------------------------------------------------- info
    def row_infos(self) -> list[dict[str, Any]]:
        """One fresh info dict per row (keys of the contract; "exploit_ratio" and "goal_visit" only on a goal)."""
        pos = self.positions().tolist()
        shortest = self.shortest.tolist()
        goals = self.goals_reached.tolist()
        since = self.steps_since_goal.tolist()
        infos = [{"layout_id": layout, "goals_reached": g, "shortest_path": sp, "steps_since_goal": s,
                  "agent_pos": tuple(p) if isinstance(p, list) else p}
                 for layout, g, sp, s, p in zip(self.layout_ids, goals, shortest, since, pos)]
        for row in self.hit.nonzero()[0].tolist():
            infos[row]["exploit_ratio"] = float(self.exploit[row])
            infos[row]["goal_visit"] = goals[row]
        return infos

    def batch_info(self) -> dict[str, np.ndarray]:
        """Gymnasium vector-env info: ``{key: [B] array, "_key": [B] bool mask}`` for every key of :meth:`row_infos`."""
        everywhere = np.ones(self.n_rows, dtype=bool)
        info = {
            "layout_id": np.array(self.layout_ids, dtype=object),
            "goals_reached": self.goals_reached.copy(),
            "shortest_path": self.shortest.copy(),
            "steps_since_goal": self.steps_since_goal.copy(),
            "agent_pos": self.positions().copy(),
            "exploit_ratio": np.where(self.hit, self.exploit, 0.0),
            "goal_visit": np.where(self.hit, self.goals_reached, 0),
        }
        masks = {f"_{key}": everywhere.copy() for key in info}
        masks["_exploit_ratio"] = self.hit.copy()
        masks["_goal_visit"] = self.hit.copy()
        return info | masks
