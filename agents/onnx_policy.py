"""One step of a :class:`~fwm_rl.agents.CorePolicy` as a pure tensor function, the graph that ONNX export traces.

``SingleStepPolicy(obs..., episode_start, *state) -> (action_logits, action, value, *next_state)`` for ``B`` rows:

* ``obs`` ``[B, *obs_shape]`` in the observation space's dtype (one input per key, sorted, for a Dict space);
* ``episode_start`` ``[B]`` bool: those rows are reset to the zero state *inside* the step, by a select
  (``torch.where``), before the observation is consumed (SB3's convention, as the cores do it);
* ``state``: the actor core's tensors, then the critic core's (only with ``critic="separate"``), each
  ``[B, *spec.shape]`` float32, named ``actor_<name>`` / ``critic_<name>`` after the core's ``state_spec``;
* ``action_logits`` ``[B, n_actions]`` (the unnormalised output of ``action_net``), ``action`` ``[B]`` int64 (its
  argmax: the deterministic action), ``value`` ``[B]``.

The step runs the policy's own modules on a ``T = 1`` sequence: the FWM core through its reference recurrence (one
step needs no fused kernel) and every core with no reset left to do, so the graph has no data-dependent branch.
"""
from __future__ import annotations

import copy
from typing import NamedTuple

import torch
from gymnasium import spaces
from torch import Tensor, nn

from fwm_rl.agents.policies import CorePolicy
from fwm_rl.agents.state import ActorCriticStates
from fwm_rl.core import reset_state

OUTPUT_NAMES = ("action_logits", "action", "value")
NEXT_PREFIX = "next_"


class TensorSpec(NamedTuple):
    """One graph input or output: its name, its shape (``"batch"`` for the batch dim) and its numpy dtype name."""

    name: str
    shape: tuple
    dtype: str


def exportable_reason(policy: object) -> str | None:
    """Why ``policy`` cannot be exported as one step (None if it can)."""
    if not isinstance(policy, CorePolicy):
        return f"the policy is a {type(policy).__name__}, not an fwm_rl CorePolicy"
    if not isinstance(policy.action_space, spaces.Discrete):
        return f"the action space is {policy.action_space}; export supports Discrete actions"
    obs_spaces = policy.observation_space.spaces.values() if isinstance(policy.observation_space, spaces.Dict) \
        else [policy.observation_space]
    for space in obs_spaces:
        if not isinstance(space, spaces.Box):
            return f"the observation space holds {space}; export supports Box observations (or a Dict of them)"
    return None


class SingleStepPolicy(nn.Module):
    """A CPU float32 copy of ``policy`` (left unchanged) whose ``forward`` is one step; see the module docstring."""

    def __init__(self, policy: CorePolicy) -> None:
        super().__init__()
        reason = exportable_reason(policy)
        if reason is not None:
            raise ValueError(f"cannot export this policy: {reason}")
        self.policy = copy.deepcopy(policy).to(device="cpu", dtype=torch.float32)
        self.policy.set_training_mode(False)
        for core in (self.policy.actor_core, self.policy.critic_core):
            if core is not None and hasattr(core, "recurrence"):
                core.recurrence = "reference"  # the PyTorch loop: traceable, and one step needs no fused kernel
        space = self.policy.observation_space
        self.obs_keys = sorted(space.spaces) if isinstance(space, spaces.Dict) else None
        self.obs_spaces = [space[key] for key in self.obs_keys] if self.obs_keys else [space]
        cores = [("actor", self.policy.actor_core), ("critic", self.policy.critic_core)]
        self.state_specs = {role: core.state_spec for role, core in cores if core is not None}

    # ------------------------------------------------------------------ layout of the graph

    @property
    def obs_names(self) -> list[str]:
        return [f"obs_{key}" for key in self.obs_keys] if self.obs_keys else ["obs"]

    def state_layout(self) -> list[TensorSpec]:
        """The state inputs in graph order (the outputs are the same, named ``next_<name>``)."""
        return [TensorSpec(f"{role}_{spec.name}", ("batch", *spec.shape), "float32")
                for role, specs in self.state_specs.items() for spec in specs]

    def input_layout(self) -> list[TensorSpec]:
        obs = [TensorSpec(name, ("batch", *space.shape), space.dtype.name)
               for name, space in zip(self.obs_names, self.obs_spaces)]
        return [*obs, TensorSpec("episode_start", ("batch",), "bool"), *self.state_layout()]

    def output_layout(self) -> list[TensorSpec]:
        n_actions = int(self.policy.action_space.n)
        heads = [TensorSpec("action_logits", ("batch", n_actions), "float32"),
                 TensorSpec("action", ("batch",), "int64"), TensorSpec("value", ("batch",), "float32")]
        return [*heads, *(spec._replace(name=NEXT_PREFIX + spec.name) for spec in self.state_layout())]

    def example_inputs(self, batch_size: int, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """Inputs for ``batch_size`` rows: observations drawn inside the spaces' bounds (within ±1 where a bound is
        infinite), every second row starting an episode, random states of moderate size."""
        obs = []
        for space in self.obs_spaces:
            low = torch.as_tensor(space.low, dtype=torch.float64).clamp(min=-1.0)
            high = torch.as_tensor(space.high, dtype=torch.float64).clamp(max=1.0).maximum(low)
            u = torch.rand(batch_size, *space.shape, generator=generator, dtype=torch.float64)
            obs.append((low + u * (high - low)).to(getattr(torch, space.dtype.name)))
        starts = torch.arange(batch_size) % 2 == 0
        states = [0.5 * torch.randn(batch_size, *spec.shape[1:], generator=generator) for spec in self.state_layout()]
        return (*obs, starts, *states)

    # ------------------------------------------------------------------ the step

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        """``(obs..., episode_start [B], *state)`` -> ``(action_logits [B, A], action [B], value [B], *next_state)``."""
        n_obs = len(self.obs_spaces)
        obs_inputs, episode_start, flat_state = inputs[:n_obs], inputs[n_obs], inputs[n_obs + 1:]
        obs = dict(zip(self.obs_keys, obs_inputs)) if self.obs_keys else obs_inputs[0]
        obs = {key: value.unsqueeze(0) for key, value in obs.items()} if self.obs_keys else obs.unsqueeze(0)
        states, offset = {}, 0
        for role, specs in self.state_specs.items():
            states[role] = reset_state(tuple(flat_state[offset:offset + len(specs)]), episode_start)
            offset += len(specs)
        no_resets = torch.zeros_like(episode_start).unsqueeze(0)  # [1, B]: the resets are done above
        latents = self.policy._latents(obs, ActorCriticStates(states["actor"], states.get("critic", ())), no_resets)
        logits = self.policy.action_net(latents.pi)  # [B, A]
        value = self.policy.value_net(latents.vf).squeeze(-1)  # [B]
        return (logits, logits.argmax(dim=-1), value, *latents.states.actor, *latents.states.critic)
