"""The drop-in for the unmodified ``sb3_contrib.RecurrentPPO``: a :class:`~fwm_rl.agents.CorePolicy` behind
sb3-contrib's calling convention.

sb3-contrib assumes an ``nn.LSTM``. It sizes its buffers from ``policy.lstm_actor.num_layers`` and ``.hidden_size``,
stores every state as two tensors ``[n_layers=1, B, W]``, passes flat env-major batches (row ``b * T + t``), and
accepts only a ``RecurrentActorCriticPolicy``. This module is the only place that knows it:

* :class:`PackedStateLayout` flattens any core's state tuple into those two tensors (for "lstm" exactly ``(h, c)``);
* :class:`SB3ContribCorePolicy` converts layouts and calls :class:`~fwm_rl.agents.CorePolicy`'s methods of the same
  name, so both run the same code. It is built by ``CorePolicy``'s constructor and registered as a virtual subclass
  of ``RecurrentActorCriticPolicy`` (``ABCMeta.register``): that class's own constructor builds ``nn.LSTM`` modules,
  which a core replaces.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import numpy as np
import torch as th
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, CombinedExtractor
from stable_baselines3.common.type_aliases import PyTorchObs
from torch import Tensor

from fwm_rl import State, StateSpec
from fwm_rl.agents.policies import ACTOR_CORE_CRITICS, CorePolicy, map_obs
from fwm_rl.agents.state import ActorCriticStates

PackedState = tuple[Tensor, Tensor]


class PackedStateLayout:
    """A core state flattened per row and split across two ``[1, B, W]`` tensors, as sb3-contrib stores LSTM states.

    Row ``b`` of ``cat(s0[0], s1[0], dim=1)`` is the concatenation of every state tensor's row ``b`` flattened, in
    ``state_spec`` order, zero-padded to ``2 W``. It exposes what sb3-contrib reads from ``policy.lstm_actor`` to
    size its buffers: ``num_layers`` (1), ``hidden_size`` (W) and ``input_size``.

    :param state_spec: the core's ``state_spec``
    :param input_size: the core's input size
    """

    num_layers = 1

    def __init__(self, state_spec: tuple[StateSpec, ...], input_size: int) -> None:
        self.shapes = [tuple(spec.shape) for spec in state_spec]
        self.sizes = [math.prod(shape) for shape in self.shapes]
        self.input_size = input_size
        # W >= 1 even for a stateless core, so that sb3-contrib's buffers have something to hold.
        self.hidden_size = max(1, math.ceil(sum(self.sizes) / 2))
        self.padding = 2 * self.hidden_size - sum(self.sizes)

    def pack(self, state: State, batch_size: int, device: th.device) -> PackedState:
        """Native ``state`` (rows ``[batch_size, ...]``) -> ``(s0, s1)``, each ``[1, batch_size, W]``."""
        parts = [s.reshape(batch_size, -1) for s in state]
        dtype = parts[0].dtype if parts else th.float32
        parts.append(th.zeros(batch_size, self.padding, device=device, dtype=dtype))
        flat = th.cat(parts, dim=1)  # [B, 2W]
        return flat[:, : self.hidden_size].unsqueeze(0), flat[:, self.hidden_size :].unsqueeze(0)

    def unpack(self, packed: PackedState) -> State:
        """``(s0, s1)``, each ``[1, B, W]`` -> the native state tuple, rows ``[B, ...]``."""
        self.check(packed)
        flat = th.cat([packed[0][0], packed[1][0]], dim=1)  # [B, 2W]
        batch_size = flat.shape[0]
        parts = flat.split([*self.sizes, self.padding], dim=1)[: len(self.sizes)]
        return tuple(p.reshape(batch_size, *shape) for p, shape in zip(parts, self.shapes))

    def check(self, packed: Any) -> None:
        """``ValueError`` (one line) unless ``packed`` is two numeric tensors or arrays ``[1, B, W]`` of equal B."""
        pair = list(packed) if isinstance(packed, (tuple, list)) else []
        shapes = [tuple(np.shape(s)) if hasattr(s, "shape") else type(s).__name__ for s in pair]
        numeric = all(hasattr(s, "dtype") and (th.is_tensor(s) or np.issubdtype(s.dtype, np.number)) for s in pair)
        if len(pair) != 2 or not numeric or any(
            len(shape) != 3 or shape[0] != 1 or shape[2] != self.hidden_size for shape in shapes
        ) or shapes[0] != shapes[1]:
            got = shapes if pair else type(packed).__name__
            raise ValueError(f"packed state must be two arrays [1, B, {self.hidden_size}] (the state predict "
                             f"returned), got {got}")


def env_major_to_time_major(x: Tensor, n_seq: int) -> Tensor:
    """sb3-contrib's flat env-major batch ``[n_seq * T, ...]`` -> ``[T, n_seq, ...]``."""
    return x.reshape(n_seq, -1, *x.shape[1:]).transpose(0, 1)


def time_major_to_env_major(x: Tensor) -> Tensor:
    """``[T, n_seq, ...]`` -> sb3-contrib's flat env-major batch ``[n_seq * T, ...]``."""
    return x.transpose(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class SB3ContribCorePolicy(CorePolicy):
    """:class:`~fwm_rl.agents.CorePolicy` for the unmodified ``sb3_contrib.RecurrentPPO``, a drop-in for its
    ``MlpLstmPolicy``: ``sb3_contrib.RecurrentPPO(SB3ContribCorePolicy, env, policy_kwargs=dict(core="fwm", ...))``.

    Same constructor as ``CorePolicy``. ``predict`` returns, and takes back, the packed state ``(s0, s1)`` (numpy,
    each ``[1, n_envs, W]``), as sb3-contrib's policies do; :meth:`unpack_state` turns it into the core's tuple.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.packed_state = PackedStateLayout(self.actor_core.state_spec, self.actor_core.input_size)

    @property
    def lstm_actor(self) -> PackedStateLayout:
        """What sb3-contrib's ``RecurrentPPO`` reads to size its state buffers (``num_layers``, ``hidden_size``)."""
        return self.packed_state

    def pack_state(self, state: State, batch_size: int) -> PackedState:
        """A core state tuple (rows ``[batch_size]``) -> ``(s0, s1)``, each ``[1, batch_size, W]``."""
        return self.packed_state.pack(state, batch_size, self.device)

    def unpack_state(self, packed: Union[PackedState, tuple[np.ndarray, np.ndarray]]) -> State:
        """``(s0, s1)`` (e.g. the state returned by ``predict``) -> the core's state tuple."""
        self.packed_state.check(packed)
        return self.packed_state.unpack(tuple(th.as_tensor(s, device=self.device) for s in packed))

    def _unpack_states(self, packed: RNNStates) -> ActorCriticStates:
        """Packed ``(pi, vf)`` -> native. A critic without a core has no state."""
        critic = self.unpack_state(packed.vf) if self.critic_mode == "separate" else ()
        return ActorCriticStates(self.unpack_state(packed.pi), critic)

    def _pack_states(self, states: ActorCriticStates, batch_size: int) -> RNNStates:
        """Native -> packed ``(pi, vf)``; without a critic core the ``vf`` slot repeats the (detached) actor state."""
        pi = self.pack_state(states.actor, batch_size)
        vf = self.pack_state(states.critic, batch_size) if self.critic_mode == "separate" else tuple(
            s.detach() for s in pi
        )
        return RNNStates(pi, vf)

    def forward(  # type: ignore[override]
        self, obs: PyTorchObs, packed_states: RNNStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        """Flat env-major ``obs [n_seq * T, ...]`` and packed states -> actions, values ``[n_seq * T, 1]``,
        log-probs, packed states."""
        n_seq = packed_states.pi[0].shape[1]
        actions, values, log_prob, states = super().forward(
            map_obs(lambda x: env_major_to_time_major(x, n_seq), obs),
            self._unpack_states(packed_states),
            env_major_to_time_major(episode_starts, n_seq),
            deterministic,
        )
        return (
            time_major_to_env_major(actions),
            time_major_to_env_major(values).unsqueeze(-1),
            time_major_to_env_major(log_prob),
            self._pack_states(states, n_seq),
        )

    def get_distribution(  # type: ignore[override]
        self, obs: PyTorchObs, packed_actor_state: PackedState, episode_starts: Tensor
    ) -> tuple[Distribution, PackedState]:
        """The actor's distribution over env-major rows, and the packed actor state."""
        n_seq = packed_actor_state[0].shape[1]
        starts = env_major_to_time_major(episode_starts, n_seq)
        obs = map_obs(lambda x: env_major_to_time_major(x, n_seq), obs)
        latents = self._latents(obs, ActorCriticStates(self.unpack_state(packed_actor_state), ()), starts, critic=False)
        latent_pi = time_major_to_env_major(latents.pi.view(*starts.shape, -1))  # rows of the distribution: env-major
        return self._get_action_dist_from_latent(latent_pi), self.pack_state(latents.states.actor, n_seq)

    def predict_values(  # type: ignore[override]
        self, obs: PyTorchObs, packed_critic_state: PackedState, episode_starts: Tensor
    ) -> Tensor:
        """Values ``[n_seq * T, 1]`` from sb3-contrib's ``vf`` slot (the actor state when the critic reads the actor
        core)."""
        n_seq = packed_critic_state[0].shape[1]
        native = self.unpack_state(packed_critic_state) if self.critic_mode != "none" else ()
        states = ActorCriticStates(native, ()) if self.critic_mode in ACTOR_CORE_CRITICS else ActorCriticStates(
            (), native
        )
        values = super().predict_values(
            map_obs(lambda x: env_major_to_time_major(x, n_seq), obs), states,
            env_major_to_time_major(episode_starts, n_seq),
        )
        return time_major_to_env_major(values).unsqueeze(-1)

    def evaluate_actions(  # type: ignore[override]
        self, obs: PyTorchObs, actions: Tensor, packed_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Values ``[n_seq * T, 1]``, log-probs and entropies on a flat env-major (padded) minibatch."""
        n_seq = packed_states.pi[0].shape[1]
        values, log_prob, entropy = super().evaluate_actions(
            map_obs(lambda x: env_major_to_time_major(x, n_seq), obs),
            env_major_to_time_major(actions, n_seq),
            self._unpack_states(packed_states),
            env_major_to_time_major(episode_starts, n_seq),
        )
        entropy = None if entropy is None else time_major_to_env_major(entropy)
        return time_major_to_env_major(values).unsqueeze(-1), time_major_to_env_major(log_prob), entropy

    def predict(  # type: ignore[override]
        self,
        observation: Union[np.ndarray, dict[str, np.ndarray]],
        state: Optional[tuple[np.ndarray, np.ndarray]] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
        """:meth:`CorePolicy.predict` with the packed state ``(s0, s1)``, each ``[1, n_envs, W]``."""
        native = None if state is None else self.unpack_state(state)
        actions, native, n_envs = self._predict_with_state(observation, native, episode_start, deterministic)
        return actions, tuple(s.cpu().numpy() for s in self.pack_state(native, n_envs))


class MultiInputSB3ContribCorePolicy(SB3ContribCorePolicy):
    """:class:`SB3ContribCorePolicy` for Dict observations (``CombinedExtractor`` by default)."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


RecurrentActorCriticPolicy.register(SB3ContribCorePolicy)
