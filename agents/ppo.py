"""RecurrentPPO with whole-trajectory minibatches: sb3-contrib's API, without its per-timestep training loop.

sb3-contrib's ``RecurrentPPO`` stores the LSTM state at every step and trains on padded sequence chunks, looping over
time in Python whenever an episode starts inside a chunk. This ``OnPolicyAlgorithm`` keeps its public API
(constructor, ``learn``, ``predict``, ``save``/``load``, logged keys) and changes the data path: a
:class:`~fwm_rl.agents.CorePolicy` and its cores' own states, a
:class:`~fwm_rl.agents.buffers.TrajectoryRolloutBuffer` that stores them once per rollout, minibatches of whole
env-trajectories ``[n_steps, B_mb]`` run through the core in one call, and a batched timeout bootstrap.
"""
from __future__ import annotations

import copy
import math
from typing import Any, ClassVar, NamedTuple, Optional, TypeVar, Union

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.on_policy_algorithm import OnPolicyAlgorithm
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, Schedule
from stable_baselines3.common.utils import FloatSchedule, explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor
from torch.nn import functional as F

from fwm_rl.agents.buffers import TrajectoryBatch, TrajectoryDictRolloutBuffer, TrajectoryRolloutBuffer
from fwm_rl.agents.checks import check_finite, check_in_range, check_on_policy_hyperparameters
from fwm_rl.agents.distributed import SINGLE_PROCESS, DataParallel
from fwm_rl.agents.policies import CorePolicy, LSTMPolicy, MultiInputCorePolicy, MultiInputLSTMPolicy
from fwm_rl.agents.sb3_contrib_adapter import SB3ContribCorePolicy
from fwm_rl.agents.state import ActorCriticStates, select_rows

# get_runtime_state() key -> attribute read by learn() / collect_rollouts()
RUNTIME_STATE = {
    "last_obs": "_last_obs",
    "last_original_obs": "_last_original_obs",
    "last_episode_starts": "_last_episode_starts",
    "last_states": "_last_core_states",
    "ep_info_buffer": "ep_info_buffer",
    "ep_success_buffer": "ep_success_buffer",
    "num_timesteps": "num_timesteps",
    "n_updates": "_n_updates",
    "episode_num": "_episode_num",
    "current_progress_remaining": "_current_progress_remaining",
}

class EnvStep(NamedTuple):
    """What the vec env returned on the latest step of a rollout (``RecurrentPPO.last_env_step``): the env's own
    rewards, before any timeout bootstrap is added."""

    observations: Union[np.ndarray, dict[str, np.ndarray]]  # [n_envs, ...], after autoreset
    rewards: np.ndarray  # [n_envs]
    dones: np.ndarray  # [n_envs]
    infos: list[dict[str, Any]]


SelfRecurrentPPO = TypeVar("SelfRecurrentPPO", bound="RecurrentPPO")
# Each auxiliary loss of CorePolicy.evaluate_trajectories -> (the algorithm's weight for it, the policy flag that
# turns it on, building its head where it has one).
AUX_LOSSES = {"next_obs": ("next_obs_coef", "predict_next_obs"),
              "oracle_action": ("oracle_coef", "predict_oracle_action"),
              "imitation": ("imitation_coef", "imitate_privileged_action")}


class RecurrentPPO(OnPolicyAlgorithm):
    """PPO (clip) for recurrent policies with any ``fwm_rl`` core, trained on whole env-trajectories.

    Same arguments as ``sb3_contrib.RecurrentPPO`` plus ``timeout_bootstrap``, ``next_obs_coef``, ``oracle_coef`` and
    ``imitation_coef``, with these differences:

    * ``batch_size`` counts transitions as in SB3, but a minibatch holds whole env-trajectories, so it must be a
      multiple of ``n_steps`` (``batch_size / n_steps`` envs per minibatch); the default, ``None``, puts all envs in
      one minibatch;
    * training starts each trajectory from the state stored at the rollout start and replays the rollout's episode
      resets inside the core (full BPTT over ``n_steps``), so on the first epoch the recomputed log-probs equal the
      collected ones;
    * the policy must be a :class:`~fwm_rl.agents.CorePolicy` (aliases "MlpFwmPolicy", "MultiInputFwmPolicy",
      "MlpLstmPolicy", "MultiInputLstmPolicy"); ``predict`` returns the actor core's state tuple (``(h, c, F)``).

    :param timeout_bootstrap: on truncation (``TimeLimit.truncated``) add ``gamma * V(terminal observation)`` to the
        reward, as SB3 does; False treats truncation as termination (the FWM paper's Monte-Carlo returns)
    :param next_obs_coef: weight of the policy's next-observation loss (:meth:`CorePolicy.next_obs_loss`) in the
        PPO loss; above 0 the policy is built with ``predict_next_obs=True``. 0 (the default) is plain PPO
    :param oracle_coef: weight of the policy's oracle-action loss (:meth:`CorePolicy.oracle_action_loss`); above 0
        the policy is built with ``predict_oracle_action=True``, which needs an env with ``privileged_obs`` and
        ``privileged_features`` in ``policy_kwargs``. 0 (the default) is plain PPO
    :param imitation_coef: weight of the policy's imitation loss (:meth:`CorePolicy.imitation_loss`: the policy's
        cross-entropy against the env's privileged action, the oracle's or the explorer's); above 0 the policy is
        built with ``imitate_privileged_action=True``, with the same needs as ``oracle_coef``. 0 (the default) is
        plain PPO

    See ``sb3_contrib.RecurrentPPO`` for the other parameters.
    """

    default_log_interval: ClassVar[int] = 1  # rollouts between log dumps (sb3-contrib's RecurrentPPO: 1)
    policy: CorePolicy
    rollout_buffer: Union[TrajectoryRolloutBuffer, TrajectoryDictRolloutBuffer]
    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        "MlpFwmPolicy": CorePolicy,
        "MultiInputFwmPolicy": MultiInputCorePolicy,
        "MlpLstmPolicy": LSTMPolicy,
        "MultiInputLstmPolicy": MultiInputLSTMPolicy,
    }

    def __init__(
        self,
        policy: Union[str, type[CorePolicy]],
        env: Union[GymEnv, str],
        learning_rate: Union[float, Schedule] = 3e-4,
        n_steps: int = 128,
        batch_size: Optional[int] = None,
        n_epochs: int = 10,
        gamma: float = 0.99,
        gae_lambda: float = 0.95,
        clip_range: Union[float, Schedule] = 0.2,
        clip_range_vf: Union[None, float, Schedule] = None,
        normalize_advantage: bool = True,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        target_kl: Optional[float] = None,
        timeout_bootstrap: bool = True,
        next_obs_coef: float = 0.0,
        oracle_coef: float = 0.0,
        imitation_coef: float = 0.0,
        stats_window_size: int = 100,
        tensorboard_log: Optional[str] = None,
        policy_kwargs: Optional[dict[str, Any]] = None,
        verbose: int = 0,
        seed: Optional[int] = None,
        device: Union[th.device, str] = "auto",
        _init_setup_model: bool = True,
    ) -> None:
        check_on_policy_hyperparameters(
            type(self).__name__, learning_rate=learning_rate, n_steps=n_steps, gamma=gamma, gae_lambda=gae_lambda,
            ent_coef=ent_coef, vf_coef=vf_coef, max_grad_norm=max_grad_norm, batch_size=batch_size,
            n_epochs=n_epochs, clip_range=clip_range, clip_range_vf=clip_range_vf, target_kl=target_kl,
        )
        for (coef_name, head), coef in zip(AUX_LOSSES.values(), (next_obs_coef, oracle_coef, imitation_coef)):
            check_in_range(type(self).__name__, coef_name, coef, 0.0, math.inf, high_open=True)
            if coef > 0:
                if (policy_kwargs or {}).get(head) is False:
                    raise ValueError(f"{type(self).__name__}: {coef_name}={coef} needs the policy's {head} head; "
                                     f"drop {head}=False from policy_kwargs")
                policy_kwargs = {**(policy_kwargs or {}), head: True}
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            gamma=gamma,
            gae_lambda=gae_lambda,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
            supported_action_spaces=(spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary),
        )
        self.batch_size = batch_size
        self.n_epochs = n_epochs
        self.clip_range = clip_range
        self.clip_range_vf = clip_range_vf
        self.normalize_advantage = normalize_advantage
        self.target_kl = target_kl
        self.timeout_bootstrap = timeout_bootstrap
        self.next_obs_coef = next_obs_coef
        self.oracle_coef = oracle_coef
        self.imitation_coef = imitation_coef
        self._last_core_states: Optional[ActorCriticStates] = None
        self.last_env_step: Optional[EnvStep] = None  # for callbacks: read it in on_step, instead of self.locals
        self.data_parallel: DataParallel = SINGLE_PROCESS
        if _init_setup_model:
            self._setup_model()

    def _envs_per_batch(self) -> Optional[int]:
        """Envs per minibatch from ``batch_size`` (None: all); ``ValueError`` unless a multiple of n_steps."""
        if self.batch_size is None:
            return None
        if self.batch_size % self.n_steps != 0:
            raise ValueError(
                f"{type(self).__name__}: batch_size={self.batch_size} must be a multiple of n_steps={self.n_steps}: a "
                f"minibatch holds whole env-trajectories of n_steps steps (or pass batch_size=None for one minibatch)"
            )
        return min(self.batch_size // self.n_steps, self.n_envs)

    def _setup_model(self) -> None:
        self._setup_lr_schedule()
        self.set_random_seed(self.seed)
        is_class = isinstance(self.policy_class, type)
        if is_class and issubclass(self.policy_class, SB3ContribCorePolicy):
            raise ValueError(
                f"{type(self).__name__} takes a CorePolicy (or one of {sorted(self.policy_aliases)}); "
                f"{self.policy_class.__name__} is the adapter for sb3_contrib.RecurrentPPO"
            )
        if not (is_class and issubclass(self.policy_class, CorePolicy)):
            raise ValueError(
                f"{type(self).__name__} needs a CorePolicy (or one of {sorted(self.policy_aliases)}), got "
                f"{self.policy_class!r}; sb3-contrib's own policies run with sb3_contrib.RecurrentPPO"
            )
        self._envs_per_batch()
        self.policy = self.policy_class(  # type: ignore[assignment]
            self.observation_space, self.action_space, self.lr_schedule, use_sde=self.use_sde, **self.policy_kwargs
        )
        self.policy = self.policy.to(self.device)
        buffer_class = (
            TrajectoryDictRolloutBuffer if isinstance(self.observation_space, spaces.Dict) else TrajectoryRolloutBuffer
        )
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            device=self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )
        self._last_core_states = self.policy.initial_state(self.n_envs)
        self.clip_range = FloatSchedule(self.clip_range)
        if self.clip_range_vf is not None:
            self.clip_range_vf = FloatSchedule(self.clip_range_vf)

    def _obs_to_time_major(self, obs: Union[np.ndarray, dict[str, np.ndarray]]) -> Any:
        """A vec-env observation ``[B, ...]`` -> a tensor ``[1, B, ...]`` (or a dict of those)."""
        tensor = obs_as_tensor(obs, self.device)
        return {k: v.unsqueeze(0) for k, v in tensor.items()} if isinstance(tensor, dict) else tensor.unsqueeze(0)

    def _truncation_values(self, infos: list[dict[str, Any]], dones: np.ndarray, states: Any) -> np.ndarray:
        """``gamma * V(terminal observation)`` for envs truncated on this step (0 elsewhere), in one batched call."""
        bonus = np.zeros(len(dones), dtype=np.float32)
        envs = [
            i
            for i, done in enumerate(dones)
            if done and infos[i].get("terminal_observation") is not None and infos[i].get("TimeLimit.truncated", False)
        ]
        if not envs:
            return bonus
        terminal = [infos[i]["terminal_observation"] for i in envs]
        if isinstance(terminal[0], dict):
            stacked: Any = {key: np.stack([o[key] for o in terminal]) for key in terminal[0]}
        else:
            stacked = np.stack(terminal)
        with th.no_grad():
            values = self.policy.predict_values(
                self._obs_to_time_major(stacked),
                select_rows(states, th.as_tensor(envs, device=self.device)),
                th.zeros(1, len(envs), device=self.device),
            )  # [1, len(envs)]
        bonus[envs] = self.gamma * values[0].cpu().numpy()
        return bonus

    def collect_rollouts(
        self, env: VecEnv, callback: BaseCallback, rollout_buffer: RolloutBuffer, n_rollout_steps: int
    ) -> bool:
        """Fill ``rollout_buffer`` with ``n_rollout_steps`` steps per env; the state is stored once, at the start."""
        assert isinstance(rollout_buffer, (TrajectoryRolloutBuffer, TrajectoryDictRolloutBuffer))
        assert self._last_obs is not None, "No previous observation was provided"
        self.policy.set_training_mode(False)
        n_steps = 0
        rollout_buffer.reset()
        rollout_buffer.initial_state = self._last_core_states
        if self.use_sde:
            self.policy.reset_noise(env.num_envs)
        callback.on_rollout_start()
        states = self._last_core_states
        while n_steps < n_rollout_steps:
            if self.use_sde and self.sde_sample_freq > 0 and n_steps % self.sde_sample_freq == 0:
                self.policy.reset_noise(env.num_envs)
            with th.no_grad():
                obs_tensor = self._obs_to_time_major(self._last_obs)
                episode_starts = th.as_tensor(self._last_episode_starts, dtype=th.float32, device=self.device)
                actions, values, log_probs, states = self.policy.forward(
                    obs_tensor, states, episode_starts.unsqueeze(0)
                )
            actions = actions[0].cpu().numpy()
            clipped_actions = actions
            if isinstance(self.action_space, spaces.Box):
                clipped_actions = np.clip(actions, self.action_space.low, self.action_space.high)
            new_obs, rewards, dones, infos = env.step(clipped_actions)
            self.num_timesteps += env.num_envs * self.data_parallel.world_size
            self.last_env_step = EnvStep(new_obs, rewards, dones, infos)
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if isinstance(self.action_space, spaces.Discrete):
                actions = actions.reshape(-1, 1)
            if self.timeout_bootstrap:
                rewards = rewards + self._truncation_values(infos, dones, states)
            rollout_buffer.add(
                self._last_obs, actions, rewards, self._last_episode_starts, values[0], log_probs[0]  # type: ignore
            )
            self._last_obs = new_obs  # type: ignore[assignment]
            self._last_episode_starts = dones
            self._last_core_states = states
        with th.no_grad():
            episode_starts = th.as_tensor(dones, dtype=th.float32, device=self.device)
            last_values = self.policy.predict_values(
                self._obs_to_time_major(new_obs), states, episode_starts.unsqueeze(0)
            )[0]
        rollout_buffer.compute_returns_and_advantage(last_values=last_values, dones=dones)
        callback.update_locals(locals())
        callback.on_rollout_end()
        return True

    @property
    def aux_coefs(self) -> dict[str, float]:
        """Auxiliary loss name -> its weight in the loss."""
        return {name: getattr(self, coef_name) for name, (coef_name, _) in AUX_LOSSES.items()}

    def _evaluate(self, batch: TrajectoryBatch) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, float]]:
        """Values, log-probs ``[T, B]``, the entropy loss, the weighted sum of the auxiliary losses (0 without any)
        and each auxiliary loss's value, for the log, of ``batch`` under the current policy."""
        values, log_prob, entropy, aux_losses = self.policy.evaluate_trajectories(
            batch.observations, batch.actions, batch.initial_state, batch.episode_starts
        )
        # Without an analytical entropy, -log_prob estimates it.
        entropy_loss = th.mean(log_prob) if entropy is None else -th.mean(entropy)
        coefs = self.aux_coefs
        used = {name: loss for name, loss in aux_losses.items() if coefs[name] > 0}
        aux_loss = (th.stack([coefs[name] * loss for name, loss in used.items()]).sum() if used
                    else th.zeros((), device=values.device))
        return values, log_prob, entropy_loss, aux_loss, {name: loss.item() for name, loss in used.items()}

    def _record_aux(self, aux_values: list[dict[str, float]]) -> None:
        """Log ``train/<name>_loss``, the mean over minibatches of each auxiliary loss in use."""
        for name in aux_values[0] if aux_values else ():
            self.logger.record(f"train/{name}_loss", np.mean([values[name] for values in aux_values]))

    def set_data_parallel(self, ranks: DataParallel) -> None:
        """Train as one rank of ``ranks`` (see :mod:`fwm_rl.agents.distributed`): rank 0's parameters are copied to
        every rank now, and from here on every gradient is averaged over the ranks and ``num_timesteps`` counts all
        ranks' env steps. Give each rank its own seed (:func:`~fwm_rl.agents.distributed.rank_seed`) and the same
        hyperparameters and ``n_envs``."""
        self.data_parallel = ranks
        ranks.broadcast_module(self.policy)

    def _normalized(self, advantages: Tensor) -> Tensor:
        """``advantages`` standardised with the mean and (unbiased) std of the minibatch, over all ranks' shares."""
        if not self.data_parallel.distributed:
            return (advantages - advantages.mean()) / (advantages.std() + 1e-8)
        count, total = self.data_parallel.sum(th.stack([th.tensor(float(advantages.numel()), device=advantages.device),
                                                        advantages.sum()]))
        mean = total / count
        squares = self.data_parallel.sum((advantages - mean).square().sum())
        return (advantages - mean) / (th.sqrt(squares / (count - 1)) + 1e-8)

    def _gradient_step(self, loss: Tensor) -> None:
        """One optimizer step on ``loss``; :class:`NonFiniteError` (before the step) if the loss or the gradient norm
        is not finite, so the parameters stay those of the last good step. Data-parallel, the gradient is the mean
        over the ranks and the checks see every rank's loss, so all ranks step or raise together."""
        if self.data_parallel.distributed:
            self.policy.optimizer.zero_grad()
            loss.backward()
            loss = self.data_parallel.average_gradients(self.policy.parameters(), extra=loss)
        check_finite("loss", loss.detach(), self._n_updates, self.num_timesteps)
        if not self.data_parallel.distributed:
            self.policy.optimizer.zero_grad()
            loss.backward()
        grad_norm = th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
        check_finite("grad_norm", grad_norm, self._n_updates, self.num_timesteps)
        self.policy.optimizer.step()

    def learn(
        self: SelfRecurrentPPO,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: Optional[int] = None,
        tb_log_name: Optional[str] = None,
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfRecurrentPPO:
        """SB3's ``learn``; ``log_interval`` defaults to the class's ``default_log_interval`` and ``tb_log_name``
        to the class name."""
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=self.default_log_interval if log_interval is None else log_interval,
            tb_log_name=type(self).__name__ if tb_log_name is None else tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )

    def _excluded_save_params(self) -> list[str]:
        # _last_core_states, last_env_step: see get_runtime_state; data_parallel: a loaded model runs alone until told
        return [*super()._excluded_save_params(), "_last_core_states", "last_env_step", "data_parallel"]

    def get_runtime_state(self) -> dict[str, Any]:
        """What the next ``learn(..., reset_num_timesteps=False)`` reads beyond what ``save()`` stores: the last
        observation, episode starts and recurrent states, the episode-info buffers and the counters (a picklable
        copy; pair it with the env, whose state is the env's own)."""
        return copy.deepcopy({name: getattr(self, attribute) for name, attribute in RUNTIME_STATE.items()})

    def set_runtime_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`get_runtime_state` returned (after ``load``), so that ``learn(...,
        reset_num_timesteps=False)`` continues exactly where the saved run stopped."""
        missing, unknown = sorted(set(RUNTIME_STATE) - set(state)), sorted(set(state) - set(RUNTIME_STATE))
        if missing or unknown:
            raise ValueError(f"{type(self).__name__}: runtime state lacks {missing} and has unknown keys {unknown}; "
                             f"expected the keys {sorted(RUNTIME_STATE)} of get_runtime_state()")
        state = copy.deepcopy(state)
        states = state["last_states"]
        if states is not None:
            state["last_states"] = ActorCriticStates(*(tuple(s.to(self.device) for s in part) for part in states))
        for name, attribute in RUNTIME_STATE.items():
            setattr(self, attribute, state[name])

    def _record_common(self) -> None:
        """Log the keys every on-policy algorithm logs after an update."""
        buffer = self.rollout_buffer
        explained_var = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        self.logger.record("train/explained_variance", explained_var)
        if hasattr(self.policy, "log_std"):
            self.logger.record("train/std", th.exp(self.policy.log_std).mean().item())
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")

    def train(self) -> None:
        """``n_epochs`` passes of clipped PPO over minibatches of whole env-trajectories."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        clip_range = self.clip_range(self._current_progress_remaining)  # type: ignore[operator]
        clip_range_vf = (
            None if self.clip_range_vf is None else self.clip_range_vf(self._current_progress_remaining)  # type: ignore
        )
        entropy_losses, pg_losses, value_losses, clip_fractions, approx_kl_divs = [], [], [], [], []
        aux_values = []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for batch in self.rollout_buffer.get(self._envs_per_batch()):
                values, log_prob, entropy_loss, aux_loss, aux = self._evaluate(batch)
                aux_values.append(aux)
                advantages = batch.advantages
                if self.normalize_advantage and advantages.numel() > 1:
                    advantages = self._normalized(advantages)
                ratio = th.exp(log_prob - batch.old_log_prob)
                clipped_ratio = th.clamp(ratio, 1 - clip_range, 1 + clip_range)
                policy_loss = -th.min(advantages * ratio, advantages * clipped_ratio).mean()
                if clip_range_vf is None:
                    values_pred = values
                else:
                    values_pred = batch.old_values + th.clamp(values - batch.old_values, -clip_range_vf, clip_range_vf)
                value_loss = F.mse_loss(batch.returns, values_pred)
                loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss + aux_loss

                pg_losses.append(policy_loss.item())
                value_losses.append(value_loss.item())
                entropy_losses.append(entropy_loss.item())
                clip_fractions.append(th.mean((th.abs(ratio - 1) > clip_range).float()).item())
                with th.no_grad():
                    log_ratio = log_prob - batch.old_log_prob
                    approx_kl_div = th.mean((th.exp(log_ratio) - 1) - log_ratio).item()
                approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and self.data_parallel.mean(approx_kl_div) > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break
                self._gradient_step(loss)
            self._n_updates += 1
            if not continue_training:
                break

        self._record_common()
        self.logger.record("train/entropy_loss", np.mean(entropy_losses))
        self.logger.record("train/policy_gradient_loss", np.mean(pg_losses))
        self.logger.record("train/value_loss", np.mean(value_losses))
        self._record_aux(aux_values)
        self.logger.record("train/approx_kl", np.mean(approx_kl_divs))
        self.logger.record("train/clip_fraction", np.mean(clip_fractions))
        self.logger.record("train/loss", loss.item())
        self.logger.record("train/clip_range", clip_range)
        if clip_range_vf is not None:
            self.logger.record("train/clip_range_vf", clip_range_vf)
