"""CorePolicy: an SB3 ``ActorCriticPolicy`` whose memory is a core from :func:`fwm_rl.build_core`.

Data path: observation -> features extractor -> core (``[T, B, D] -> [T, B, H]``, state, ``episode_starts``) -> MLP
extractor -> action / value heads. SB3's method names keep their meaning, on whole sequences: ``forward``,
``evaluate_actions``, ``predict_values`` and ``get_distribution`` take time-major ``[T, B]`` inputs and the cores'
states (:class:`~fwm_rl.agents.state.ActorCriticStates`), and ``predict`` takes and returns the actor core's own
state tuple (``(h, c, F)`` for "fwm") as numpy arrays. Our :class:`~fwm_rl.agents.RecurrentPPO` and
:class:`~fwm_rl.agents.RecurrentA2C` drive it directly; :mod:`fwm_rl.agents.sb3_contrib_adapter` wraps it for the
unmodified ``sb3_contrib.RecurrentPPO``.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, NamedTuple, Optional, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_flattened_obs_dim, preprocess_obs
from stable_baselines3.common.torch_layers import (
    BaseFeaturesExtractor,
    CombinedExtractor,
    FlattenExtractor,
    MlpExtractor,
)
from stable_baselines3.common.type_aliases import PyTorchObs, Schedule
from torch import Tensor, nn

from fwm_rl import CORE_CLASSES, State, build_core
from fwm_rl.agents.state import ActorCriticStates

CRITIC_MODES = ("separate", "shared", "joint", "none")
ACTOR_CORE_CRITICS = ("shared", "joint")  # critics that read the actor core's output
AUX_UNITS = 64  # hidden units of the auxiliary heads (next observation, oracle action)


class Latents(NamedTuple):
    """What :meth:`CorePolicy._latents` computes from ``[T, B]`` inputs; rows are time-major ``T * B``."""

    pi: Optional[Tensor]  # [T * B, L_pi] actor latent after the MLP
    vf: Optional[Tensor]  # [T * B, L_vf] critic latent after the MLP
    states: ActorCriticStates  # after step T
    actor_output: Optional[Tensor]  # [T * B, H] the actor core's output (None when the actor core did not run)


class TrajectoryEvaluation(NamedTuple):
    """:meth:`CorePolicy.evaluate_trajectories` of the actions taken along whole trajectories."""

    values: Tensor  # [T, B]
    log_prob: Tensor  # [T, B]
    entropy: Optional[Tensor]  # [T, B]; None without an analytical entropy
    aux_losses: dict[str, Tensor]  # scalar losses of the auxiliary heads the policy has: "next_obs", "oracle_action"


def map_obs(fn: Callable[[Tensor], Tensor], obs: PyTorchObs) -> PyTorchObs:
    """Apply ``fn`` to an observation tensor, or to every entry of a dict observation."""
    return {key: fn(value) for key, value in obs.items()} if isinstance(obs, dict) else fn(obs)


def flatten_time(x: Tensor) -> Tensor:
    """``[T, B, ...] -> [T * B, ...]`` (time-major rows)."""
    return x.reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def _check_privileged(name: str, privileged_features: Any, observation_space: spaces.Space,
                      features_extractor_class: type) -> int:
    """``privileged_features`` checked against a flat observation that has room for them."""
    if isinstance(privileged_features, bool) or not isinstance(privileged_features, (int, np.integer)):
        raise ValueError(f"{name}: privileged_features must be an int, got {privileged_features!r}")
    if privileged_features == 0:
        return 0
    if not isinstance(observation_space, spaces.Box) or len(observation_space.shape) != 1 or \
            features_extractor_class is not FlattenExtractor:
        raise ValueError(f"{name}: privileged_features needs a 1-D Box observation and the FlattenExtractor, got "
                         f"{observation_space} and {features_extractor_class.__name__}")
    if not 0 < privileged_features < observation_space.shape[0]:
        raise ValueError(f"{name}: privileged_features must be in [0, {observation_space.shape[0]}) for this "
                         f"{observation_space.shape[0]}-value observation, got {privileged_features}")
    return int(privileged_features)


def _shapes(state: Any) -> str:
    """A short description of what a user passed as a state, for error messages."""
    if isinstance(state, (tuple, list)):
        return "[" + ", ".join(str(tuple(np.shape(s))) if hasattr(s, "shape") else type(s).__name__ for s in state) + "]"
    return type(state).__name__


class CorePolicy(ActorCriticPolicy):
    """Actor-critic whose memory is any ``fwm_rl`` core (FWM by default): features -> core -> MLP heads.

    The policy of our ``RecurrentPPO("MlpFwmPolicy", ...)`` and ``RecurrentA2C``.

    :param observation_space: observation space
    :param action_space: action space
    :param lr_schedule: learning-rate schedule (``lr_schedule(1)`` is the initial rate)
    :param core: core kind, a key of ``fwm_rl.CORE_CLASSES`` (e.g. "fwm", "lstm", or "mlp" for a memoryless
        baseline)
    :param hidden_size: the core's hidden size
    :param core_kwargs: further core options, e.g. ``dict(memory_size=16, preset="rl")`` for "fwm"
    :param critic: "shared" (the default: the critic reads the actor core's output detached, so only the actor loss
        trains the core, as sb3-contrib's ``shared_lstm``; one core pass serves both), "separate" (the critic has its
        own core: sb3-contrib's default, twice the core compute), "joint" (one core, two heads, both losses train it:
        the FWM paper's agent) or "none" (the critic is feed-forward)
    :param net_arch: MLP layers after the core, as in SB3 (default ``dict(pi=[64, 64], vf=[64, 64])``; ``[]`` puts
        linear heads directly on the core, as in the FWM paper)
    :param predict_next_obs: add a head that predicts the next step's features from the actor core's output and the
        action taken (:meth:`next_obs_loss`; RecurrentPPO's ``next_obs_coef`` weights it): a dense, supervised
        signal that trains the memory to hold what the agent has seen, such as the edges of a graph
    :param predict_oracle_action: add a head that predicts, from the actor core's output, the action of an oracle
        that knows the layout (:meth:`oracle_action_loss`; ``oracle_coef`` weights it), read from the last
        ``action_space.n`` privileged values (an env's ``privileged_obs``): a dense, supervised signal that trains
        the memory to hold the layout and plan on it. Only training reads it; acting never does
    :param imitate_privileged_action: compute :meth:`imitation_loss`, the cross-entropy of the policy itself
        against the same privileged action (``imitation_coef`` weights it): behaviour cloning of a teacher on the
        states the agent visits (DAgger's data). With an env's ``privileged_action="explorer"`` the teacher is a
        memory-perfect explorer, whose every action follows from the history the agent has seen
    :param privileged_features: the last this many values of a flat observation are privileged (an env's
        ``privileged_obs``, e.g. the distance to the goal): only the critic reads them, so the actor, ``predict``
        and exports never depend on them (an asymmetric critic). A core critic reads them with the rest of the
        observation; the shared and joint critics add a linear encoding of them to the actor core's output

    The other parameters are ``ActorCriticPolicy``'s (activation, ``ortho_init`` of extractor, MLP and heads (the
    core keeps its own init), gSDE options, features extractor, optimizer). An optimizer that has a fused
    implementation (Adam, AdamW, SGD, ...) gets ``fused=True`` unless ``optimizer_kwargs`` sets ``fused`` or
    ``foreach``: one kernel for all parameters instead of a dozen small ops per parameter tensor.
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        core: str = "fwm",
        hidden_size: int = 32,
        core_kwargs: Optional[dict[str, Any]] = None,
        critic: str = "shared",
        net_arch: Optional[Union[list[int], dict[str, list[int]]]] = None,
        predict_next_obs: bool = False,
        predict_oracle_action: bool = False,
        imitate_privileged_action: bool = False,
        privileged_features: int = 0,
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
        self.predict_next_obs = predict_next_obs
        self.privileged_features = _check_privileged(name, privileged_features, observation_space,
                                                     features_extractor_class)
        self.predict_oracle_action = predict_oracle_action
        self.imitate_privileged_action = imitate_privileged_action
        for flag in ("predict_oracle_action", "imitate_privileged_action"):
            if getattr(self, flag) and not (isinstance(action_space, spaces.Discrete) and
                                            self.privileged_features >= action_space.n):
                raise ValueError(f"{name}: {flag} needs a Discrete action space and the oracle's action one-hot "
                                 f"among the privileged features (an env's privileged_obs), got {action_space} and "
                                 f"privileged_features={self.privileged_features}")
        optimizer_kwargs = dict(optimizer_kwargs or {})
        if not {"fused", "foreach"} & set(optimizer_kwargs) and "fused" in inspect.signature(optimizer_class).parameters:
            optimizer_kwargs["fused"] = True
        super().__init__(  # builds the features extractor, then calls our _build_mlp_extractor, heads, optimizer
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

    def _build_mlp_extractor(self) -> None:
        """Build the core(s) on ``features_dim`` (the actor's without the privileged features), then the MLP
        extractor on the core's output."""
        actor_dim = self.features_dim - self.privileged_features
        self.actor_core = build_core(self.core_kind, actor_dim, self.hidden_size, **self.core_kwargs)
        self.critic_core = (
            build_core(self.core_kind, self.features_dim, self.hidden_size, **self.core_kwargs)
            if self.critic_mode == "separate"
            else None
        )
        self.critic_encoder = (
            nn.Linear(self.features_dim, self.actor_core.output_size) if self.critic_mode == "none" else None
        )
        self.privileged_encoder = (
            nn.Linear(self.privileged_features, self.actor_core.output_size)
            if self.privileged_features and self.critic_mode in ACTOR_CORE_CRITICS
            else None
        )
        self.mlp_extractor = MlpExtractor(
            self.actor_core.output_size, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device
        )
        self.next_obs_net = (
            nn.Sequential(
                nn.Linear(self.actor_core.output_size + get_flattened_obs_dim(self.action_space), AUX_UNITS),
                self.activation_fn(),
                nn.Linear(AUX_UNITS, actor_dim),
            )
            if self.predict_next_obs
            else None
        )
        self.oracle_net = (
            nn.Sequential(
                nn.Linear(self.actor_core.output_size, AUX_UNITS),
                self.activation_fn(),
                nn.Linear(AUX_UNITS, int(self.action_space.n)),
            )
            if self.predict_oracle_action
            else None
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            core=self.core_kind,
            hidden_size=self.hidden_size,
            core_kwargs=self.core_kwargs,
            critic=self.critic_mode,
            predict_next_obs=self.predict_next_obs,
            predict_oracle_action=self.predict_oracle_action,
            imitate_privileged_action=self.imitate_privileged_action,
            privileged_features=self.privileged_features,
            share_features_extractor=self.share_features_extractor,
        )
        return data

    # ---------------------------------------------------------------- sequences: [T, B] inputs, core states

    def initial_state(self, n_envs: int) -> ActorCriticStates:
        """Zero states for ``n_envs`` rows (``critic`` is ``()`` without a critic core)."""
        actor = self.actor_core.initial_state(n_envs, device=self.device)
        critic = self.critic_core.initial_state(n_envs, device=self.device) if self.critic_core is not None else ()
        return ActorCriticStates(actor, critic)

    def _features(self, obs: PyTorchObs) -> tuple[Tensor, Tensor]:
        """``obs [T * B, ...]`` -> (actor features ``[T * B, features_dim - privileged_features]``, critic features
        ``[T * B, features_dim]``)."""
        features = self.extract_features(obs)
        pi_features, vf_features = (features, features) if self.share_features_extractor else features
        return pi_features[:, : pi_features.shape[1] - self.privileged_features], vf_features

    @staticmethod
    def _run_core(core: nn.Module, features: Tensor, state: State, episode_starts: Tensor) -> tuple[Tensor, State]:
        """``features [T * B, D]`` (time-major rows), ``episode_starts [T, B]`` -> ``[T * B, out]`` and the state."""
        T, B = episode_starts.shape
        y, state = core(features.reshape(T, B, -1), state, episode_starts)  # y [T, B, out]
        return y.reshape(T * B, -1), state

    def _latents(
        self, obs: PyTorchObs, states: ActorCriticStates, episode_starts: Tensor, actor: bool = True,
        critic: bool = True,
    ) -> Latents:
        """``obs [T, B, ...]`` -> the actor and critic latents ``[T * B, L]`` after the MLP (None where not asked
        for), the states after step T and the actor core's output. The actor core runs once, also when the critic
        reads it."""
        pi_features, vf_features = self._features(map_obs(flatten_time, obs))
        actor_state, critic_state = states
        latent_pi = latent_vf = actor_output = None
        if actor or self.critic_mode in ACTOR_CORE_CRITICS:
            actor_output, actor_state = self._run_core(self.actor_core, pi_features, actor_state, episode_starts)
        if actor:
            latent_pi = self.mlp_extractor.forward_actor(actor_output)
        if critic:
            if self.critic_mode == "separate":
                critic_output, critic_state = self._run_core(self.critic_core, vf_features, critic_state,
                                                             episode_starts)
            elif self.critic_mode == "none":
                critic_output = self.critic_encoder(vf_features)
            else:
                critic_output = actor_output.detach() if self.critic_mode == "shared" else actor_output
                if self.privileged_encoder is not None:
                    critic_output = critic_output + self.privileged_encoder(
                        vf_features[:, vf_features.shape[1] - self.privileged_features:])
            latent_vf = self.mlp_extractor.forward_critic(critic_output)
        return Latents(latent_pi, latent_vf, ActorCriticStates(actor_state, critic_state), actor_output)

    def forward(  # type: ignore[override]
        self, obs: PyTorchObs, states: ActorCriticStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, ActorCriticStates]:
        """Act on ``T`` steps of ``B`` envs.

        :param obs: ``[T, B, *obs_shape]`` (or a dict of those)
        :param states: states before step 0, rows ``[B]``
        :param episode_starts: ``[T, B]``; row ``b`` is reset before step ``t`` where set
        :param deterministic: take the mode of the action distribution
        :return: actions ``[T, B, *action_shape]``, values ``[T, B]``, log-probs ``[T, B]``, states after step T
        """
        T, B = episode_starts.shape
        latents = self._latents(obs, states, episode_starts)
        distribution = self._get_action_dist_from_latent(latents.pi)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        values = self.value_net(latents.vf)
        return (actions.reshape(T, B, *self.action_space.shape), values.view(T, B), log_prob.view(T, B),
                latents.states)

    def evaluate_actions(  # type: ignore[override]
        self, obs: PyTorchObs, actions: Tensor, states: ActorCriticStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Optional[Tensor]]:
        """Values, log-probs and entropies ``[T, B]`` of ``actions`` (``[T, B]`` for Discrete, else
        ``[T, B, action_dim]``) along whole trajectories from ``states``."""
        return self.evaluate_trajectories(obs, actions, states, episode_starts)[:3]

    def evaluate_trajectories(
        self, obs: PyTorchObs, actions: Tensor, states: ActorCriticStates, episode_starts: Tensor
    ) -> TrajectoryEvaluation:
        """:meth:`evaluate_actions` and the auxiliary losses the policy has (:meth:`next_obs_loss`,
        :meth:`oracle_action_loss`, :meth:`imitation_loss`), from one core pass."""
        T, B = episode_starts.shape
        latents = self._latents(obs, states, episode_starts)
        distribution = self._get_action_dist_from_latent(latents.pi)
        log_prob = distribution.log_prob(flatten_time(actions)).view(T, B)
        entropy = distribution.entropy()
        values = self.value_net(latents.vf).view(T, B)
        actor_output = latents.actor_output.view(T, B, -1)
        aux_losses = {}
        if self.next_obs_net is not None:
            aux_losses["next_obs"] = self.next_obs_loss(obs, actions, actor_output, episode_starts)
        if self.oracle_net is not None:
            aux_losses["oracle_action"] = self.oracle_action_loss(obs, actor_output)
        if self.imitate_privileged_action:
            aux_losses["imitation"] = self.imitation_loss(obs, distribution)
        return TrajectoryEvaluation(values, log_prob, None if entropy is None else entropy.view(T, B), aux_losses)

    def next_obs_loss(self, obs: PyTorchObs, actions: Tensor, actor_output: Tensor, episode_starts: Tensor) -> Tensor:
        """Mean squared error of the head's prediction of step t+1's features from step t's actor core output
        ``[T, B, H]`` and action, over the pairs (t, t+1) of ``obs [T, B, ...]`` inside one episode (0 if none).
        A feature whose variance over the batch exceeds 1 (a reward of 10 in the observation) has its error
        measured in units of that variance, so that no feature's scale drowns the others."""
        T, B = episode_starts.shape
        with th.no_grad():
            targets = self._features(map_obs(flatten_time, obs))[0].view(T, B, -1)[1:]  # [T-1, B, D]
        taken = preprocess_obs(flatten_time(actions), self.action_space).view(T, B, -1)  # [T, B, A] (one-hot)
        predictions = self.next_obs_net(th.cat([actor_output[:-1], taken[:-1]], dim=-1))  # [T-1, B, D]
        same_episode = 1.0 - episode_starts[1:]  # [T-1, B]
        scale = targets.flatten(0, 1).var(dim=0, correction=0).clamp(min=1.0)  # [D]
        errors = ((predictions - targets).square() / scale).mean(dim=-1)  # [T-1, B]
        return (errors * same_episode).sum() / same_episode.sum().clamp(min=1.0)

    def oracle_action_loss(self, obs: Tensor, actor_output: Tensor) -> Tensor:
        """Mean cross-entropy of the oracle head's logits, from the actor core's output ``[T, B, H]``, against the
        privileged action of ``obs [T, B, D]`` (:meth:`privileged_actions`)."""
        logits = self.oracle_net(actor_output)  # [T, B, A]
        return nn.functional.cross_entropy(logits.flatten(0, 1), self.privileged_actions(obs).flatten())

    def imitation_loss(self, obs: Tensor, distribution: Distribution) -> Tensor:
        """Mean of ``-log pi(a*)`` over the ``T * B`` time-major rows of ``distribution``, where ``a*`` is the
        privileged action of ``obs [T, B, D]`` (:meth:`privileged_actions`)."""
        return -distribution.log_prob(self.privileged_actions(obs).flatten()).mean()

    def privileged_actions(self, obs: Tensor) -> Tensor:
        """The privileged action ``[T, B]`` (the oracle's or the explorer's): the one-hot in the last
        ``action_space.n`` values of ``obs [T, B, D]``."""
        return obs[..., -int(self.action_space.n):].argmax(dim=-1)

    def predict_values(  # type: ignore[override]
        self, obs: PyTorchObs, states: ActorCriticStates, episode_starts: Tensor
    ) -> Tensor:
        """Values ``[T, B]`` of ``obs [T, B, ...]`` (the actor core runs only if the critic reads it)."""
        return self.value_net(self._latents(obs, states, episode_starts, actor=False).vf).view(*episode_starts.shape)

    def get_distribution(  # type: ignore[override]
        self, obs: PyTorchObs, actor_state: State, episode_starts: Tensor
    ) -> tuple[Distribution, State]:
        """The action distribution over the ``T * B`` time-major rows of ``obs [T, B, ...]``, and the actor state."""
        return self._action_distribution(obs, actor_state, episode_starts)

    def _action_distribution(
        self, obs: PyTorchObs, actor_state: State, episode_starts: Tensor
    ) -> tuple[Distribution, State]:
        latents = self._latents(obs, ActorCriticStates(actor_state, ()), episode_starts, critic=False)
        return self._get_action_dist_from_latent(latents.pi), latents.states.actor

    # ---------------------------------------------------------------- predict: the SB3 user API

    def _check_predict_state(self, state: Any, n_envs: int) -> State:
        """The actor state for ``n_envs`` observations from what a user passed (None: zeros)."""
        if state is None:
            return self.actor_core.initial_state(n_envs, device=self.device)
        spec = self.actor_core.state_spec
        expected = [(n_envs, *s.shape) for s in spec]
        names = ", ".join(s.name for s in spec)
        where = f"{type(self).__name__}.predict: state"
        arrays = [s if th.is_tensor(s) else np.asarray(s) for s in state] if isinstance(state, (tuple, list)) else []
        shapes = [tuple(a.shape) for a in arrays]
        numeric = all(th.is_tensor(a) or np.issubdtype(a.dtype, np.number) for a in arrays)
        if len(arrays) != len(spec) or not numeric or (
            [shape[1:] for shape in shapes] != [e[1:] for e in expected]
        ):
            raise ValueError(f"{where} must be the ({names}) tuple that predict returned, shapes {expected} for "
                             f"{n_envs} observation(s); got {_shapes(state)} (pass state=None to start from zeros)")
        rows = {shape[0] for shape in shapes}
        if rows and rows != {n_envs}:  # a memoryless core's state () fits any number of envs
            raise ValueError(f"{where} holds {sorted(rows)} env row(s) but the observation holds {n_envs}: pass the "
                             f"state predict returned for these {n_envs} envs, or state=None to start from zeros")
        return tuple(th.as_tensor(a, dtype=self.value_net.weight.dtype, device=self.device) for a in arrays)

    def _check_predict_starts(self, episode_start: Any, n_envs: int) -> Tensor:
        """``episode_start`` as a ``[1, n_envs]`` float tensor (None: no resets)."""
        if episode_start is None:
            return th.zeros(1, n_envs, device=self.device)
        starts = np.asarray(episode_start)
        if starts.shape != (n_envs,) or not (starts.dtype == bool or np.issubdtype(starts.dtype, np.number)):
            raise ValueError(f"{type(self).__name__}.predict: episode_start must hold one flag per observation, "
                             f"shape ({n_envs},), got {starts.dtype} of shape {starts.shape}")
        return th.as_tensor(starts, dtype=th.float32, device=self.device).view(1, n_envs)

    def _check_finite_obs(self, obs: PyTorchObs) -> None:
        for key, value in (obs.items() if isinstance(obs, dict) else [("", obs)]):
            if value.is_floating_point() and th.isnan(value).any():
                rows = th.isnan(value.reshape(value.shape[0], -1)).any(dim=1).nonzero().flatten().tolist()
                entry = f"observation[{key!r}]" if key else "observation"
                raise ValueError(f"{type(self).__name__}.predict: the {entry} holds NaN (rows {rows}); "
                                 "check the environment or the preprocessing that produced it")

    def _predict_with_state(
        self, observation: Union[np.ndarray, dict[str, np.ndarray]], state: Any, episode_start: Any,
        deterministic: bool,
    ) -> tuple[np.ndarray, State, int]:
        """:meth:`predict` with the actor state left as tensors; also returns the number of observations."""
        self.set_training_mode(False)
        obs_tensor, vectorized_env = self.obs_to_tensor(observation)
        first = next(iter(obs_tensor.values())) if isinstance(obs_tensor, dict) else obs_tensor
        n_envs = first.shape[0]
        actor_state = self._check_predict_state(state, n_envs)
        starts = self._check_predict_starts(episode_start, n_envs)
        self._check_finite_obs(obs_tensor)
        with th.no_grad():
            distribution, actor_state = self._action_distribution(
                map_obs(lambda x: x.unsqueeze(0), obs_tensor), actor_state, starts
            )
            actions = distribution.get_actions(deterministic=deterministic)
        actions = actions.cpu().numpy().reshape((-1, *self.action_space.shape))
        if isinstance(self.action_space, spaces.Box):
            actions = (self.unscale_action(actions) if self.squash_output
                       else np.clip(actions, self.action_space.low, self.action_space.high))
        if not vectorized_env:
            actions = actions.squeeze(axis=0)
        return actions, actor_state, n_envs

    def predict(  # type: ignore[override]
        self,
        observation: Union[np.ndarray, dict[str, np.ndarray]],
        state: Optional[tuple[np.ndarray, ...]] = None,
        episode_start: Optional[np.ndarray] = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """Actions for ``observation [n_envs, ...]`` and the actor core's state after them.

        :param observation: one observation per env (or a single observation)
        :param state: the state this method returned at the previous step (the core's tuple, rows ``[n_envs]``), or
            None for zeros
        :param episode_start: ``[n_envs]`` flags (the previous step's ``dones``): those rows are reset first
        :param deterministic: take the mode of the action distribution
        :return: actions ``[n_envs, *action_shape]`` (no batch dim for a single observation) and the state
        """
        actions, actor_state, _ = self._predict_with_state(observation, state, episode_start, deterministic)
        return actions, tuple(s.cpu().numpy() for s in actor_state)


class MultiInputCorePolicy(CorePolicy):
    """:class:`CorePolicy` for Dict observations (``CombinedExtractor`` by default)."""

    def __init__(self, *args: Any, features_extractor_class: type[BaseFeaturesExtractor] = CombinedExtractor,
                 **kwargs: Any) -> None:
        super().__init__(*args, features_extractor_class=features_extractor_class, **kwargs)


class LSTMPolicy(CorePolicy):
    """:class:`CorePolicy` with the "lstm" core and sb3-contrib's default size (256) by default."""

    def __init__(self, *args: Any, core: str = "lstm", hidden_size: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, core=core, hidden_size=hidden_size, **kwargs)


class MultiInputLSTMPolicy(MultiInputCorePolicy):
    """:class:`MultiInputCorePolicy` with the "lstm" core and size 256 by default."""

    def __init__(self, *args: Any, core: str = "lstm", hidden_size: int = 256, **kwargs: Any) -> None:
        super().__init__(*args, core=core, hidden_size=hidden_size, **kwargs)
