"""Recurrent actor-critic policies that own a memory core from :func:`fwm_rl.build_core`.

One class serves two callers:

* our :class:`~fwm_rl.agents.RecurrentPPO` / :class:`~fwm_rl.agents.RecurrentA2C`, through the *native* API
  (:meth:`FWMPolicy.initial_state`, :meth:`FWMPolicy.forward_sequences`, :meth:`FWMPolicy.evaluate_sequences`,
  :meth:`FWMPolicy.predict_values_sequences`): time-major ``[T, B]`` tensors and the cores' own state tuples;
* the unmodified ``sb3_contrib.RecurrentPPO``, through the methods it calls (``forward``, ``get_distribution``,
  ``predict_values``, ``evaluate_actions``, and ``predict`` for users): flat env-major batches (row ``b * T + t``)
  and states packed into two ``[1, B, W]`` tensors by :class:`~fwm_rl.agents.state.PackedStateLayout`.

The second set only converts layouts and calls the first, so both run the same code. ``predict`` returns the packed
state, as sb3-contrib's policies do; :meth:`FWMPolicy.unpack_state` turns it into the core's tuple.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

import torch as th
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, BaseModel
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    MlpExtractor,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import Tensor, nn

from fwm_rl import CORE_CLASSES, State, build_core
from fwm_rl.agents.state import PackedState, PackedStateLayout

CRITIC_MODES = ("separate", "shared", "joint", "none")
ACTOR_CORE_CRITICS = ("shared", "joint")  # critics that read the actor core's output


def map_obs(fn: Callable[[Tensor], Tensor], obs: PyTorchObs) -> PyTorchObs:
    """Apply ``fn`` to an observation tensor, or to every entry of a dict observation."""
    return {key: fn(value) for key, value in obs.items()} if isinstance(obs, dict) else fn(obs)


def flatten_time(x: Tensor) -> Tensor:
    """``[T, B, ...] -> [T * B, ...]`` (time-major rows)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def env_major_to_time_major(x: Tensor, n_seq: int) -> Tensor:
    """sb3-contrib's flat env-major batch ``[n_seq * T, ...]`` -> ``[T, n_seq, ...]``."""
    return x.reshape(n_seq, -1, *x.shape[1:]).transpose(0, 1)


def time_major_to_env_major(x: Tensor) -> Tensor:
    """``[T, n_seq, ...]`` -> sb3-contrib's flat env-major batch ``[n_seq * T, ...]``."""
    return x.transpose(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


class FWMPolicy(RecurrentActorCriticPolicy):
    """Actor-critic whose memory is any ``fwm_rl`` core (FWM by default): features -> core -> MLP heads.

    Drop-in for sb3-contrib's ``MlpLstmPolicy``: ``sb3_contrib.RecurrentPPO(FWMPolicy, env, policy_kwargs=...)``; the
    policy of our ``RecurrentPPO("MlpFwmPolicy", ...)`` and ``RecurrentA2C``.

    :param observation_space: observation space
    :param action_space: action space
    :param lr_schedule: learning-rate schedule (``lr_schedule(1)`` is the initial rate)
    :param core: core kind, one of ``fwm_rl.CORE_CLASSES`` ("fwm", "fwlstm", "fwrnn", "lnlstm", "lstm", or "mlp" for
        a memoryless baseline)
    :param hidden_size: the core's hidden size
    :param core_kwargs: further core options, e.g. ``dict(memory_size=16, preset="rl")`` for "fwm"
    :param critic: "separate" (the critic has its own core, the default), "shared" (the critic reads the actor core's
        output detached, so only the actor loss trains the core: sb3-contrib's ``shared_lstm``), "joint" (one core,
        two heads, both losses train it: the FWM paper's agent) or "none" (the critic is feed-forward)
    :param net_arch: MLP layers after the core, as in SB3 (default ``dict(pi=[64, 64], vf=[64, 64])``; ``[]`` puts
        linear heads directly on the core, as in the FWM paper)
    :param activation_fn: activation of those MLP layers
    :param ortho_init: orthogonal init of features extractor, MLP and heads (the core keeps its own init)
    :param use_sde: state-dependent exploration
    :param log_std_init: initial log std (Box actions)
    :param full_std: gSDE option
    :param use_expln: gSDE option
    :param squash_output: gSDE option
    :param features_extractor_class: features extractor (FlattenExtractor; CombinedExtractor for Dict observations)
    :param features_extractor_kwargs: its kwargs
    :param share_features_extractor: one features extractor for actor and critic
    :param normalize_images: divide image observations by 255
    :param optimizer_class: optimizer (Adam)
    :param optimizer_kwargs: its kwargs, excluding the learning rate
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        core: str = "fwm",
        hidden_size: int = 32,
        core_kwargs: Optional[dict[str, Any]] = None,
        critic: str = "separate",
        net_arch: Optional[Union[list[int], dict[str, list[int]]]] = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: Optional[dict[str, Any]] = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: Optional[dict[str, Any]] = None,
    ) -> None:
        name = type(self).__name__
        if core not in CORE_CLASSES:
            raise ValueError(f"{name}: unknown core {core!r}; expected one of {sorted(CORE_CLASSES)}")
        if critic not in CRITIC_MODES:
            raise ValueError(f"{name}: unknown critic {critic!r}; expected one of {CRITIC_MODES}")
        if critic in ACTOR_CORE_CRITICS and not share_features_extractor:
            raise ValueError(f"{name}: critic={critic!r} needs share_features_extractor=True")
        self.core_kind = core
        self.hidden_size = hidden_size
        self.core_kwargs = dict(core_kwargs or {})
        self.critic_mode = critic
        # RecurrentActorCriticPolicy.__init__ would build nn.LSTMs; its parent builds everything we need, and calls
        # our _build_mlp_extractor, which builds the cores.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch=net_arch,
            activation_fn=activation_fn,
            ortho_init=ortho_init,
            use_sde=use_sde,
            log_std_init=log_std_init,
            full_std=full_std,
            use_expln=use_expln,
            squash_output=squash_output,
            features_extractor_class=features_extractor_class,
            features_extractor_kwargs=features_extractor_kwargs,
            share_features_extractor=share_features_extractor,
            normalize_images=normalize_images,
            optimizer_class=optimizer_class,
            optimizer_kwargs=optimizer_kwargs,
        )
        self.packed_state = PackedStateLayout(self.actor_core.state_spec, self.actor_core.input_size)

    def _build_mlp_extractor(self) -> None:
        """Build the core(s) on ``features_dim``, then the MLP extractor on the core's output."""
        self.actor_core = build_core(self.core_kind, self.features_dim, self.hidden_size, **self.core_kwargs)
        self.critic_core = (
            build_core(self.core_kind, self.features_dim, self.hidden_size, **self.core_kwargs)
            if self.critic_mode == "separate"
            else None
        )
        self.critic_encoder = (
            nn.Linear(self.features_dim, self.actor_core.output_size) if self.critic_mode == "none" else None
        )
        self.mlp_extractor = MlpExtractor(
            self.actor_core.output_size, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            core=self.core_kind,
            hidden_size=self.hidden_size,
            core_kwargs=self.core_kwargs,
            critic=self.critic_mode,
            share_features_extractor=self.share_features_extractor,
        )
        return data

    # ---------------------------------------------------------------- native API (time-major, core state tuples)

    def initial_state(self, n_envs: int) -> RNNStates:
        """Zero states for ``n_envs`` rows: ``pi`` of the actor core, ``vf`` of the critic core (``()`` without)."""
        pi = self.actor_core.initial_state(n_envs, device=self.device)
        vf = self.critic_core.initial_state(n_envs, device=self.device) if self.critic_core is not None else ()
        return RNNStates(pi, vf)

    def _run_core(
        self, core: nn.Module, features: Tensor, state: State, episode_starts: Tensor
    ) -> tuple[Tensor, State]:
        """``features [T * B, D]`` (time-major rows), ``episode_starts [T, B]`` -> ``[T * B, out]`` and the state."""
        T, B = episode_starts.shape
        y, state = core(features.reshape(T, B, -1), state, episode_starts)  # y [T, B, out]
        return y.reshape(T * B, -1), state

    def _actor_latent(self, obs: PyTorchObs, state_pi: State, episode_starts: Tensor) -> tuple[Tensor, Tensor, State]:
        """``obs [T * B, ...]`` -> (latent ``[T * B, L]`` after the MLP, core output ``[T * B, H]``, new state)."""
        features = BaseModel.extract_features(self, obs, self.pi_features_extractor)
        latent, state_pi = self._run_core(self.actor_core, features, state_pi, episode_starts)
        return self.mlp_extractor.forward_actor(latent), latent, state_pi

    def _critic_latent(
        self,
        obs: PyTorchObs,
        states: RNNStates,
        episode_starts: Tensor,
        actor_output: Optional[Tensor] = None,
    ) -> tuple[Tensor, State]:
        """``obs [T * B, ...]`` -> (critic latent ``[T * B, L]`` after the MLP, new critic state).

        ``actor_output`` (the actor core's output on the same steps) saves a second actor-core pass when the critic
        reads the actor core.
        """
        if self.critic_mode in ACTOR_CORE_CRITICS:
            if actor_output is None:
                _, actor_output, _ = self._actor_latent(obs, states.pi, episode_starts)
            latent = actor_output.detach() if self.critic_mode == "shared" else actor_output
            state_vf = ()
        else:
            features = BaseModel.extract_features(self, obs, self.vf_features_extractor)
            if self.critic_mode == "separate":
                latent, state_vf = self._run_core(self.critic_core, features, states.vf, episode_starts)
            else:
                latent, state_vf = self.critic_encoder(features), ()
        return self.mlp_extractor.forward_critic(latent), state_vf

    def forward_sequences(
        self, obs: PyTorchObs, states: RNNStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        """Act on ``T`` steps of ``B`` envs.

        :param obs: ``[T, B, *obs_shape]`` (or a dict of those)
        :param states: native states, rows ``[B]``
        :param episode_starts: ``[T, B]``; row ``b`` is reset before step ``t`` where set
        :param deterministic: take the mode of the action distribution
        :return: actions ``[T, B, *action_shape]``, values ``[T, B]``, log-probs ``[T, B]``, states after step T
        """
        T, B = episode_starts.shape
        flat_obs = map_obs(flatten_time, obs)
        latent_pi, actor_output, state_pi = self._actor_latent(flat_obs, states.pi, episode_starts)
        latent_vf, state_vf = self._critic_latent(flat_obs, states, episode_starts, actor_output)
        distribution = self._get_action_dist_from_latent(latent_pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        values = self.value_net(latent_vf)
        actions = actions.reshape(T, B, *self.action_space.shape)
        return actions, values.view(T, B), log_prob.view(T, B), RNNStates(state_pi, state_vf)

    def evaluate_sequences(
        self, obs: PyTorchObs, actions: Tensor, states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Values, log-probs and entropies ``[T, B]`` of ``actions`` along whole trajectories.

        :param obs: ``[T, B, *obs_shape]`` (or a dict of those)
        :param actions: ``[T, B]`` (Discrete, integer) or ``[T, B, action_dim]``
        :param states: native states before step 0, rows ``[B]``
        :param episode_starts: ``[T, B]``
        """
        T, B = episode_starts.shape
        flat_obs = map_obs(flatten_time, obs)
        latent_pi, actor_output, _ = self._actor_latent(flat_obs, states.pi, episode_starts)
        latent_vf, _ = self._critic_latent(flat_obs, states, episode_starts, actor_output)
        distribution = self._get_action_dist_from_latent(latent_pi)
        log_prob = distribution.log_prob(flatten_time(actions)).view(T, B)
        entropy = distribution.entropy()
        values = self.value_net(latent_vf).view(T, B)
        return values, log_prob, None if entropy is None else entropy.view(T, B)

    def predict_values_sequences(self, obs: PyTorchObs, states: RNNStates, episode_starts: Tensor) -> Tensor:
        """Values ``[T, B]`` of ``obs [T, B, ...]`` (the actor core runs only if the critic reads it)."""
        T, B = episode_starts.shape
        latent_vf, _ = self._critic_latent(map_obs(flatten_time, obs), states, episode_starts)
        return self.value_net(latent_vf).view(T, B)

    # ---------------------------------------------------------------- sb3-contrib API (env-major, packed states)

    @property
    def lstm_actor(self) -> PackedStateLayout:
        """What sb3-contrib's ``RecurrentPPO`` reads to size its state buffers (``num_layers``, ``hidden_size``)."""
        return self.packed_state

    @property
    def lstm_hidden_state_shape(self) -> tuple[int, int, int]:
        """Shape of one env's packed state, used by ``predict`` to start from zeros."""
        return (1, 1, self.packed_state.hidden_size)

    def pack_state(self, state: State, batch_size: int) -> PackedState:
        """A core state tuple (rows ``[batch_size]``) -> sb3-contrib's ``(s0, s1)``, each ``[1, batch_size, W]``."""
        return self.packed_state.pack(state, batch_size, self.device)

    def unpack_state(self, packed: PackedState) -> State:
        """sb3-contrib's ``(s0, s1)`` (e.g. the state returned by ``predict``) -> the core's state tuple."""
        return self.packed_state.unpack(tuple(th.as_tensor(s, device=self.device) for s in packed))

    def _unpack_states(self, packed: RNNStates) -> RNNStates:
        """Packed ``(pi, vf)`` -> native. A critic without a core has no ``vf`` state."""
        pi = self.unpack_state(packed.pi)
        vf = self.unpack_state(packed.vf) if self.critic_mode == "separate" else ()
        return RNNStates(pi, vf)

    def _pack_states(self, states: RNNStates, batch_size: int) -> RNNStates:
        """Native ``(pi, vf)`` -> packed; without a critic core the ``vf`` slot repeats the (detached) actor state."""
        pi = self.pack_state(states.pi, batch_size)
        vf = self.pack_state(states.vf, batch_size) if self.critic_mode == "separate" else tuple(s.detach() for s in pi)
        return RNNStates(pi, vf)

    def forward(
        self, obs: PyTorchObs, lstm_states: RNNStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        """sb3-contrib's forward: flat env-major ``obs [n_seq * T, ...]``, packed states -> actions, values,
        log-probs, packed states."""
        n_seq = lstm_states.pi[0].shape[1]
        actions, values, log_prob, states = self.forward_sequences(
            map_obs(lambda x: env_major_to_time_major(x, n_seq), obs),
            self._unpack_states(lstm_states),
            env_major_to_time_major(episode_starts, n_seq),
            deterministic,
        )
        return (
            time_major_to_env_major(actions),
            time_major_to_env_major(values).unsqueeze(-1),
            time_major_to_env_major(log_prob),
            self._pack_states(states, n_seq),
        )

    def get_distribution(
        self, obs: PyTorchObs, lstm_states: PackedState, episode_starts: Tensor
    ) -> tuple[Distribution, PackedState]:
        """sb3-contrib's get_distribution (used by ``predict``): the actor's distribution and packed actor state."""
        n_seq = lstm_states[0].shape[1]
        starts = env_major_to_time_major(episode_starts, n_seq)
        flat_obs = map_obs(lambda x: flatten_time(env_major_to_time_major(x, n_seq)), obs)
        latent_pi, _, state_pi = self._actor_latent(flat_obs, self.unpack_state(lstm_states), starts)
        latent_pi = time_major_to_env_major(latent_pi.view(*starts.shape, -1))
        return self._get_action_dist_from_latent(latent_pi), self.pack_state(state_pi, n_seq)

    def predict_values(self, obs: PyTorchObs, lstm_states: PackedState, episode_starts: Tensor) -> Tensor:
        """sb3-contrib's predict_values: values ``[n_seq * T, 1]`` from the packed ``vf`` state."""
        n_seq = lstm_states[0].shape[1]
        native = self.unpack_state(lstm_states) if self.critic_mode != "none" else ()
        # sb3-contrib passes its vf slot, which holds the actor state when the critic reads the actor core.
        states = RNNStates(native, ()) if self.critic_mode in ACTOR_CORE_CRITICS else RNNStates((), native)
        values = self.predict_values_sequences(
            map_obs(lambda x: env_major_to_time_major(x, n_seq), obs),
            states,
            env_major_to_time_major(episode_starts, n_seq),
        )
        return time_major_to_env_major(values).unsqueeze(-1)

    def evaluate_actions(
        self, obs: PyTorchObs, actions: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """sb3-contrib's evaluate_actions on a flat env-major (padded) minibatch: values, log-probs, entropies."""
        n_seq = lstm_states.pi[0].shape[1]
        values, log_prob, entropy = self.evaluate_sequences(
            map_obs(lambda x: env_major_to_time_major(x, n_seq), obs),
            env_major_to_time_major(actions, n_seq),
            self._unpack_states(lstm_states),
            env_major_to_time_major(episode_starts, n_seq),
        )
        entropy = None if entropy is None else time_major_to_env_major(entropy)
        return time_major_to_env_major(values).unsqueeze(-1), time_major_to_env_major(log_prob), entropy


class MultiInputFWMPolicy(FWMPolicy):
    """:class:`FWMPolicy` for Dict observations (``CombinedExtractor`` by default)."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class LSTMPolicy(FWMPolicy):
    """:class:`FWMPolicy` with the "lstm" core and sb3-contrib's default size (256) by default."""

    def __init__(self, *args: Any, core: str = "lstm", hidden_size: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, core=core, hidden_size=hidden_size, **kwargs)


class MultiInputLSTMPolicy(MultiInputFWMPolicy):
    """:class:`MultiInputFWMPolicy` with the "lstm" core and size 256 by default."""

    def __init__(self, *args: Any, core: str = "lstm", hidden_size: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, core=core, hidden_size=hidden_size, **kwargs)
