"""Trajectory rollout buffers: the recurrent state stored once per env, minibatches of whole env-trajectories.

A rollout is ``n_steps`` steps of ``n_envs`` envs, stored ``[n_steps, n_envs]`` as in SB3's ``RolloutBuffer`` (whose
``add`` and GAE are reused). Unlike sb3-contrib's buffer, the recurrent state is stored only at the start of the
rollout (F is d³ floats per env and step), and a minibatch is a set of envs with all their ``n_steps`` steps,
time-major ``[T, B_mb]``, with no padding: episode boundaries inside a trajectory are handled by the core through
``episode_starts``, so training replays exactly the recurrence seen while collecting.
"""
from __future__ import annotations

from collections.abc import Generator
from typing import NamedTuple, Optional

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import Tensor

from fwm_rl.agents.state import ActorCriticStates, select_rows


class TrajectoryBatch(NamedTuple):
    """Whole trajectories of ``B`` envs over the ``T = n_steps`` steps of a rollout (time-major)."""

    observations: PyTorchObs  # [T, B, *obs_shape] (or a dict of those)
    actions: Tensor  # [T, B] integer for Discrete, else [T, B, action_dim]
    old_values: Tensor  # [T, B]
    old_log_prob: Tensor  # [T, B]
    advantages: Tensor  # [T, B]
    returns: Tensor  # [T, B]
    episode_starts: Tensor  # [T, B]
    initial_state: ActorCriticStates  # native states before step 0, rows [B]


class _TrajectoryMixin:
    """``get`` / sampling shared by the array and the Dict-observation buffers."""

    initial_state: ActorCriticStates
    observations: np.ndarray | dict[str, np.ndarray]

    def get(  # type: ignore[override]
        self, envs_per_batch: Optional[int] = None
    ) -> Generator[TrajectoryBatch, None, None]:
        """Minibatches of ``envs_per_batch`` whole env-trajectories (all envs if None), envs in random order."""
        assert self.full, "the rollout buffer must be full before sampling from it"
        order = np.random.permutation(self.n_envs)
        size = self.n_envs if envs_per_batch is None else envs_per_batch
        for start in range(0, self.n_envs, size):
            yield self._trajectories(order[start : start + size])

    def _trajectories(self, envs: np.ndarray) -> TrajectoryBatch:
        if isinstance(self.observations, dict):
            observations = {key: self.to_torch(obs[:, envs]) for key, obs in self.observations.items()}
        else:
            observations = self.to_torch(self.observations[:, envs])
        actions = self.actions[:, envs]  # [T, B, action_dim]
        if isinstance(self.action_space, spaces.Discrete):
            actions = self.to_torch(actions[..., 0]).long()
        else:
            actions = self.to_torch(actions.astype(np.float32, copy=False))
        return TrajectoryBatch(
            observations=observations,
            actions=actions,
            old_values=self.to_torch(self.values[:, envs]),
            old_log_prob=self.to_torch(self.log_probs[:, envs]),
            advantages=self.to_torch(self.advantages[:, envs]),
            returns=self.to_torch(self.returns[:, envs]),
            episode_starts=self.to_torch(self.episode_starts[:, envs]),
            initial_state=select_rows(self.initial_state, self.to_torch(envs).long()),
        )


class TrajectoryRolloutBuffer(_TrajectoryMixin, RolloutBuffer):
    """Rollout buffer for array observations; set ``initial_state`` (native, rows ``[n_envs]``) at rollout start."""


class TrajectoryDictRolloutBuffer(_TrajectoryMixin, DictRolloutBuffer):
    """Rollout buffer for Dict observations; set ``initial_state`` (native, rows ``[n_envs]``) at rollout start."""
