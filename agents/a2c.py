"""RecurrentA2C: synchronous advantage actor-critic for recurrent policies (sb3-contrib has none).

A2C is PPO with one epoch over one full batch and no clipping (the ratio is 1): this class reuses our
:class:`~fwm_rl.agents.RecurrentPPO`'s rollout collection and trajectory buffer and replaces only the update.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch as th
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from torch.nn import functional as F

from fwm_rl.agents.checks import check_in_range
from fwm_rl.agents.policies import CorePolicy
from fwm_rl.agents.ppo import RecurrentPPO



def paper_a2c_kwargs() -> dict[str, Any]:
    """Constructor kwargs for the FWM paper's meta-RL learner (docs/sources.md, "The paper's meta-RL learner"), for ``RecurrentA2C``.

    600 envs (pass a 600-env vec env) x 30 steps per update = one whole 30-step episode per env, full BPTT through it;
    Monte-Carlo returns (``gae_lambda=1``, no bootstrap at the 30-step truncation); gamma 0.9, value 0.1, entropy
    0.03; Adam lr 1e-3, eps 1e-4; no gradient clipping; one FWM core (hidden 32, d = 16) with linear policy and value
    heads, both losses training it (``critic="joint"``).
    """
    return dict(
        n_steps=30,
        gamma=0.9,
        gae_lambda=1.0,
        ent_coef=0.03,
        vf_coef=0.1,
        learning_rate=1e-3,
        max_grad_norm=float("inf"),
        normalize_advantage=False,
        timeout_bootstrap=False,
        policy_kwargs=dict(
            core="fwm",
            hidden_size=32,
            critic="joint",
            core_kwargs=dict(preset="rl", memory_size=16),
            net_arch=[],
            optimizer_class=th.optim.Adam,
            optimizer_kwargs=dict(eps=1e-4),
        ),
    )


class RecurrentA2C(RecurrentPPO):
    """Advantage actor-critic with a recurrent :class:`~fwm_rl.agents.CorePolicy`, on whole env-trajectories.

    Each update takes one gradient step on the whole rollout (``n_envs`` trajectories of ``n_steps`` steps, BPTT
    through all of them from the state stored at the rollout start): loss = ``-mean(A * log pi) + vf_coef *
    mean((R - V)^2) - ent_coef * mean(entropy)``, with GAE(``gae_lambda``) advantages (``gae_lambda=1``: Monte-Carlo
    returns, bootstrapped from V at the rollout end). Defaults are SB3 ``A2C``'s (RMSprop unless ``policy_kwargs``
    names an optimizer). :func:`paper_a2c_kwargs` reproduces the FWM paper's set-up, with two deliberate differences
    from the paper's code: the baseline is each env's own V(s_t) (the paper's ``R - V`` broadcast ``[B] - [B, 1]``
    to a ``B x B`` matrix, so its baseline was the batch mean of V at step t and its value loss regressed every V_i
    on every R_j), and the sampled actions are drawn from the exact softmax (the paper added 1e-8 to the
    probabilities).

    :param use_rms_prop: RMSprop (alpha 0.99, eps ``rms_prop_eps``) as in SB3's A2C, unless ``policy_kwargs`` sets
        ``optimizer_class``
    :param rms_prop_eps: RMSprop epsilon

    See :class:`~fwm_rl.agents.RecurrentPPO` for the other parameters.
    """

    default_log_interval = 100  # SB3's A2C

    def __init__(
        self,
        policy: Union[str, type[CorePolicy]],
        env: Union[GymEnv, str],
        learning_rate: Union[float, Schedule] = 7e-4,
        n_steps: int = 5,
        gamma: float = 0.99,
        gae_lambda: float = 1.0,
        ent_coef: float = 0.0,
        vf_coef: float = 0.5,
        max_grad_norm: float = 0.5,
        rms_prop_eps: float = 1e-5,
        use_rms_prop: bool = True,
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        normalize_advantage: bool = False,
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
        check_in_range(type(self).__name__, "rms_prop_eps", rms_prop_eps, 0.0, math.inf, low_open=True)
        super().__init__(
            policy,
            env,
            learning_rate=learning_rate,
            n_steps=n_steps,
            batch_size=None,
            n_epochs=1,
            gamma=gamma,
            gae_lambda=gae_lambda,
            normalize_advantage=normalize_advantage,
            ent_coef=ent_coef,
            vf_coef=vf_coef,
            max_grad_norm=max_grad_norm,
            use_sde=use_sde,
            sde_sample_freq=sde_sample_freq,
            timeout_bootstrap=timeout_bootstrap,
            next_obs_coef=next_obs_coef,
            oracle_coef=oracle_coef,
            imitation_coef=imitation_coef,
            stats_window_size=stats_window_size,
            tensorboard_log=tensorboard_log,
            policy_kwargs=policy_kwargs,
            verbose=verbose,
            seed=seed,
            device=device,
            _init_setup_model=False,
        )
        if use_rms_prop and "optimizer_class" not in self.policy_kwargs:
            self.policy_kwargs["optimizer_class"] = th.optim.RMSprop
            self.policy_kwargs["optimizer_kwargs"] = dict(alpha=0.99, eps=rms_prop_eps, weight_decay=0)
        if _init_setup_model:
            self._setup_model()

    def train(self) -> None:
        """One gradient step of the A2C loss on the whole rollout."""
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        for batch in self.rollout_buffer.get(None):
            values, log_prob, entropy_loss, aux_loss, aux = self._evaluate(batch)
            advantages = batch.advantages
            if self.normalize_advantage:
                advantages = self._normalized(advantages)
            policy_loss = -(advantages * log_prob).mean()
            value_loss = F.mse_loss(batch.returns, values)
            loss = policy_loss + self.ent_coef * entropy_loss + self.vf_coef * value_loss + aux_loss
            self._gradient_step(loss)
        self._n_updates += 1
        self._record_common()
        self.logger.record("train/entropy_loss", entropy_loss.item())
        self.logger.record("train/policy_loss", policy_loss.item())
        self.logger.record("train/value_loss", value_loss.item())
        self._record_aux([aux])
