"""Gymnasium wrappers around a :class:`~fwm_rl.envs.core.BatchedCore`: a single env (B = 1) and a native numpy
``VectorEnv`` (B = num_envs, same-step autoreset). Both run the same core code, so with identical seeds and actions
they give identical trajectories.
"""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv

from fwm_rl.envs.core import BatchedCore

RENDER_MODES = ["ansi", "rgb_array"]


def check_actions(actions: np.ndarray, n_actions: int) -> np.ndarray:
    """Return a fresh int64 copy of ``actions``, or raise ``ValueError`` if any lies outside Discrete(n_actions)."""
    out = np.asarray(actions).astype(np.int64)
    if out.size and (out.min() < 0 or out.max() >= n_actions or not np.array_equal(out, actions)):
        raise ValueError(f"actions must be integers in [0, {n_actions - 1}], got {actions!r}")
    return out


def _observation_space(core: BatchedCore) -> spaces.Box:
    return spaces.Box(core.obs_low, core.obs_high, dtype=np.float32)


class CoreEnv(gym.Env):
    """A single env: the task's :class:`BatchedCore` with one row. Subclasses set ``core_class`` and ``draw``.

    Lifetimes end with ``truncated=True`` after ``episode_steps`` steps; reaching a goal never terminates.
    """

    metadata = {"render_modes": RENDER_MODES, "render_fps": 4}
    core_class: type[BatchedCore]

    def __init__(self, render_mode: str | None = None, **task_kwargs: Any) -> None:
        if render_mode is not None and render_mode not in RENDER_MODES:
            raise ValueError(f"unknown render_mode {render_mode!r}; allowed: None, {', '.join(RENDER_MODES)}")
        self.render_mode = render_mode
        self.core = self.core_class(1, **task_kwargs)
        self.observation_space = _observation_space(self.core)
        self.action_space = spaces.Discrete(self.core.n_actions)
        self.trail: list[Any] = []  # positions visited this lifetime, for rendering
        self._row = np.zeros(1, dtype=np.int64)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self.core.seed_row(0, self.np_random, restart_order=seed is not None)
        self.core.reset_rows(self._row)
        self.trail = [self.core.agent_pos(0)]
        return self.core.observe()[0], self.core.row_infos()[0]

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if isinstance(action, (int, np.integer)) and 0 <= action < self.core.n_actions:  # fast path for ints
            actions = np.array([action], dtype=np.int64)
        else:
            actions = check_actions(np.array([action]), self.core.n_actions)
        rewards, truncated = self.core.step(actions)
        info = self.core.row_infos()[0]
        self.trail.append(info["agent_pos"])
        return self.core.observe()[0], rewards.item(), False, truncated.item(), info

    def render(self) -> str | np.ndarray | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='ansi' or 'rgb_array'")
            return None
        return self.draw(self.render_mode)

    def draw(self, mode: str) -> str | np.ndarray:
        raise NotImplementedError


class CoreVectorEnv(VectorEnv):
    """``num_envs`` copies stepped by one numpy call. Same-step autoreset: when a lifetime ends the returned
    observation is the next lifetime's first, with ``info["final_obs"]`` / ``info["final_info"]`` holding the last.
    Env i is seeded with ``seed + i``, exactly like a single env reset with that seed.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}
    core_class: type[BatchedCore]

    def __init__(self, num_envs: int, **task_kwargs: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        self.num_envs = int(num_envs)
        self.core = self.core_class(self.num_envs, **task_kwargs)
        self.single_observation_space = _observation_space(self.core)
        self.single_action_space = spaces.Discrete(self.core.n_actions)
        self.observation_space = spaces.Box(
            np.tile(self.core.obs_low, (self.num_envs, 1)), np.tile(self.core.obs_high, (self.num_envs, 1)),
            dtype=np.float32)
        self.action_space = spaces.MultiDiscrete(np.full(self.num_envs, self.core.n_actions))
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
                self.core.seed_row(row, seeding.np_random(row_seed)[0], restart_order=row_seed is not None)
        self._rngs_seeded = True
        self.core.reset_rows(self._all_rows)
        return self.core.observe(), self.core.batch_info()

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
        """Step all envs with actions [num_envs] -> (obs [N, D], rewards [N], terminated [N], truncated [N], info)."""
        rewards, truncated = self.core.step(check_actions(actions, self.core.n_actions))
        obs = self.core.observe()
        info = self.core.batch_info()
        done = np.flatnonzero(truncated)
        if done.size:
            final = {"final_obs": obs, "final_info": info, "_final_obs": truncated.copy(),
                     "_final_info": truncated.copy()}
            self.core.reset_rows(done)
            obs = self.core.observe()
            info = self.core.batch_info() | final
        return obs, rewards, np.zeros(self.num_envs, dtype=bool), truncated, info
