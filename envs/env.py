"""Gymnasium wrappers around a task's :class:`~fwm_rl.envs.dynamics.BatchedDynamics`: a single env (B = 1) and a
native numpy ``VectorEnv`` (B = num_envs, same-step autoreset). Both run the same dynamics code, so with identical
seeds and actions they give identical trajectories.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from fwm_rl.envs.checks import check_action, check_actions, check_int, check_options
from fwm_rl.envs.dynamics import BatchedDynamics

RENDER_MODES = ["ansi", "rgb_array"]


def _observation_space(dynamics: BatchedDynamics) -> spaces.Box:
    return spaces.Box(dynamics.obs_low, dynamics.obs_high, dtype=np.float32)


class TaskEnv(gym.Env):
    """A single env: the task's dynamics with one row. Subclasses set ``env_id``, ``dynamics_class`` and ``draw``.

    Lifetimes end with ``truncated=True`` after ``episode_steps`` steps; reaching a goal never terminates.
    ``dynamics`` (public) holds the task state, e.g. for probes of the privileged layout.
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 4}
    env_id: str
    dynamics_class: type[BatchedDynamics]

    @classmethod
    def heldout_kwargs(cls, train_kwargs: dict[str, Any], split: str) -> dict[str, Any]:
        """The kwargs that play the held-out ``split`` with the rest of a training env's ``train_kwargs`` (a split
        that fixes a setting of its own drops the training value)."""
        return {**train_kwargs, "split": split}

    def __init__(self, render_mode: str | None = None, **task_kwargs: Any) -> None:
        check_options(self.env_id, task_kwargs, self.dynamics_class, extra=("render_mode",))
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"unknown render_mode {render_mode!r}; allowed: None, {', '.join(RENDER_MODES)}")
        self.render_mode = render_mode
        self.dynamics = self.dynamics_class(1, **task_kwargs)
        self.observation_space = _observation_space(self.dynamics)
        self.action_space = spaces.Discrete(self.dynamics.n_actions)
        self.trail: list[Any] = []  # positions visited this lifetime, for rendering
        self._row = np.zeros(1, dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.dynamics.seed_row(0, self.np_random, restart_order=seed is not None)
        self.dynamics.reset_rows(self._row)
        self.trail = [self.dynamics.agent_pos(0)]
        return self.dynamics.observe()[0], self.dynamics.row_infos()[0]

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        """Step with one action of ``action_space``; an invalid action raises ``ValueError`` and changes nothing."""
        actions = np.array([check_action(action, self.dynamics.n_actions)], dtype=np.int64)
        rewards, truncated = self.dynamics.step(actions)
        info = self.dynamics.row_infos()[0]
        self.trail.append(info["agent_pos"])
        return self.dynamics.observe()[0], rewards.item(), False, truncated.item(), info

    def oracle_action(self) -> int:
        """The action of a full-knowledge agent walking a shortest path to the goal (a reference, not a cheat)."""
        return int(self.dynamics.oracle_actions()[0])

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        return self.draw(self.render_mode)

    def draw(self, mode: str) -> str | np.ndarray:
        raise NotImplementedError


class TaskVectorEnv(VectorEnv):
    """``num_envs`` copies stepped by one numpy call. Same-step autoreset: when a lifetime ends the returned
    observation is the next lifetime's first, with ``info["final_obs"]`` / ``info["final_info"]`` holding the last.
    Env i is seeded with ``seed + i``, exactly like a single env reset with that seed.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    env_id: str
    dynamics_class: type[BatchedDynamics]

    def __init__(self, num_envs: int, **task_kwargs: Any) -> None:
        check_options(self.env_id, task_kwargs, self.dynamics_class)
        self.num_envs = check_int("num_envs", num_envs, 1)
        self.dynamics = self.dynamics_class(self.num_envs, **task_kwargs)
        self.single_observation_space = _observation_space(self.dynamics)
        self.single_action_space = spaces.Discrete(self.dynamics.n_actions)
        self.observation_space = spaces.Box(
            np.tile(self.dynamics.obs_low, (self.num_envs, 1)), np.tile(self.dynamics.obs_high, (self.num_envs, 1)),
            dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(self.num_envs, self.dynamics.n_actions))
        self.render_mode = None
        self._all_rows = np.arange(self.num_envs)
        self._rngs_seeded = False

    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        """Begin a new lifetime in every env. ``seed``: an int (env i gets seed + i), per-env seeds, or None."""
        seeds = seed if isinstance(seed, (list, tuple)) else [
            None if seed is None else seed + i for i in range(self.num_envs)]
        if len(seeds) != self.num_envs:
            raise ValueError(f"need {self.num_envs} seeds, got {len(seeds)}")
        if seed is not None:
            super().reset(seed=seeds[0])
        for row, row_seed in enumerate(seeds):
            if row_seed is not None or not self._rngs_seeded:
                self.dynamics.seed_row(row, seeding.np_random(row_seed)[0], restart_order=row_seed is not None)
        self._rngs_seeded = True
        self.dynamics.reset_rows(self._all_rows)
        return self.dynamics.observe(), self.dynamics.batch_info()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step all envs with actions [num_envs] -> (obs [N, D], rewards [N], terminated [N], truncated [N], info).
        Invalid actions raise ``ValueError`` and change nothing."""
        obs, rewards, truncated, info, final_obs = self.dynamics.step_autoreset(
            self._checked(actions), self.dynamics.batch_info)
        if final_obs is not None:
            info = self.dynamics.batch_info() | {"final_obs": final_obs, "final_info": info,
                                                 "_final_obs": truncated.copy(), "_final_info": truncated.copy()}
        return obs, rewards, np.zeros(self.num_envs, dtype=bool), truncated, info

    def step_per_env(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict],
                                                          np.ndarray | None]:
        """:meth:`step` in the per-env form SB3 wants -> (obs [N, D], rewards [N], truncated [N], one info dict per
        env (a truncated env's is its finished lifetime's last), the final observations [N, D] or None if no env
        was truncated)."""
        return self.dynamics.step_autoreset(self._checked(actions), self.dynamics.row_infos)

    def infos_per_env(self) -> list[dict]:
        """One fresh info dict per env for the current step (what :meth:`reset` returns, per env)."""
        return self.dynamics.row_infos()

    def oracle_actions(self) -> np.ndarray:
        """[num_envs] actions of a full-knowledge agent walking shortest paths to the goals (a reference)."""
        return self.dynamics.oracle_actions()

    def _checked(self, actions: Any) -> np.ndarray:
        return check_actions(actions, self.num_envs, self.dynamics.n_actions)
