"""The algorithms refuse bad hyperparameters at construction and stop, before the optimizer step, on a non-finite
loss or gradient norm."""
from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env as sb3_make_vec_env

from fwm_rl.agents import NonFiniteError, RecurrentA2C, RecurrentPPO
from fwm_rl.envs import make_vec_env

SMALL_FWM = dict(core="fwm", hidden_size=16, core_kwargs=dict(memory_size=4, preset="rl"), net_arch=[16])


def graph_env(n_envs: int = 2):
    return make_vec_env("FWM/GraphNav-v0", n_envs, seed=0, n_nodes=3, n_actions=3, episode_steps=12)


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("gamma", 2.0, r"gamma must be a number in \[0.0, 1.0\]"),
        ("gamma", -0.1, r"gamma must be a number in \[0.0, 1.0\]"),
        ("gamma", 1e30, r"gamma must be a number in \[0.0, 1.0\]"),
        ("gamma", float("nan"), r"gamma must be a number in \[0.0, 1.0\]"),
        ("gae_lambda", 1.5, r"gae_lambda must be a number in \[0.0, 1.0\]"),
        ("learning_rate", -1.0, "learning_rate must be a finite number > 0 or a schedule"),
        ("learning_rate", 0.0, "learning_rate must be a finite number > 0 or a schedule"),
        ("learning_rate", float("inf"), "learning_rate must be a finite number > 0 or a schedule"),
        ("learning_rate", "fast", "learning_rate must be a finite number > 0 or a schedule"),
        ("n_steps", 0, "n_steps must be an integer >= 1"),
        ("n_steps", 2.5, "n_steps must be an integer >= 1"),
        ("ent_coef", -0.01, r"ent_coef must be a number in \[0.0, inf\)"),
        ("ent_coef", float("inf"), r"ent_coef must be a number in \[0.0, inf\)"),
        ("vf_coef", -1.0, r"vf_coef must be a number in \[0.0, inf\)"),
        ("vf_coef", float("nan"), r"vf_coef must be a number in \[0.0, inf\)"),
        ("max_grad_norm", 0.0, r"max_grad_norm must be a number in \(0.0, inf\]"),
        ("max_grad_norm", -0.5, r"max_grad_norm must be a number in \(0.0, inf\]"),
    ],
)
@pytest.mark.parametrize("algo", [RecurrentPPO, RecurrentA2C])
def test_bad_hyperparameters_raise_one_line_value_error_naming_them(algo, name, value, allowed):
    with pytest.raises(ValueError, match=f"^{algo.__name__}: {allowed}, got ") as error:
        algo("MlpFwmPolicy", graph_env(), policy_kwargs=SMALL_FWM, device="cpu", **{name: value})
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    "name, value, allowed",
    [
        ("batch_size", 0, "batch_size must be an integer >= 1 or None"),
        ("n_epochs", 0, "n_epochs must be an integer >= 1"),
        ("clip_range", 0.0, "clip_range must be a finite number > 0 or a schedule"),
        ("clip_range", -0.2, "clip_range must be a finite number > 0 or a schedule"),
        ("clip_range_vf", -1.0, r"clip_range_vf must be a finite number > 0 or a schedule \(or None\)"),
        ("target_kl", 0.0, r"target_kl must be a finite number > 0 or a schedule \(or None\)"),
    ],
)
def test_bad_ppo_hyperparameters_raise_one_line_value_error(name, value, allowed):
    with pytest.raises(ValueError, match=f"^RecurrentPPO: {allowed}, got "):
        RecurrentPPO("MlpFwmPolicy", graph_env(), policy_kwargs=SMALL_FWM, device="cpu", **{name: value})


def test_bad_rms_prop_eps_raises():
    with pytest.raises(ValueError, match=r"^RecurrentA2C: rms_prop_eps must be a number in \(0.0, inf\]"):
        RecurrentA2C("MlpFwmPolicy", graph_env(), rms_prop_eps=0.0, policy_kwargs=SMALL_FWM, device="cpu")


def test_edge_values_and_schedules_are_accepted():
    model = RecurrentPPO("MlpFwmPolicy", graph_env(), n_steps=1, gamma=1.0, gae_lambda=0.0, ent_coef=0.0,
                         vf_coef=0.0, max_grad_norm=float("inf"), learning_rate=lambda progress: 1e-3 * progress,
                         clip_range=lambda progress: 0.2, policy_kwargs=SMALL_FWM, device="cpu")
    assert model.gamma == 1.0 and model.max_grad_norm == float("inf")


class ConstantRewardEnv(gym.Env):
    """Every step pays ``reward``; episodes last 5 steps; two actions, a 3-float observation."""

    observation_space = spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, reward: float) -> None:
        self.reward = reward

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), {}

    def step(self, action):
        self.t += 1
        return self.np_random.uniform(-1, 1, 3).astype(np.float32), self.reward, self.t == 5, False, {}


@pytest.mark.parametrize(
    "reward, vf_coef, quantity",
    [
        (1e30, 0.5, "loss"),  # returns^2 overflows float32: the value loss is inf
        (1e14, 1e6, "grad_norm"),  # loss ~1e35 is finite, the gradient norm's square (~1e41) overflows
    ],
)
@pytest.mark.parametrize("algo", [RecurrentPPO, RecurrentA2C])
def test_non_finite_update_raises_before_the_step_and_parameters_stay_finite(algo, reward, vf_coef, quantity):
    env = sb3_make_vec_env(lambda: ConstantRewardEnv(reward), n_envs=4, seed=0)
    model = algo("MlpFwmPolicy", env, n_steps=10, gamma=1.0, vf_coef=vf_coef, max_grad_norm=float("inf"),
                 policy_kwargs=SMALL_FWM, seed=0, device="cpu")
    before = model.policy.parameters_to_vector().copy()
    with pytest.raises(NonFiniteError) as error:
        model.learn(40)
    assert (error.value.quantity, error.value.update, error.value.num_timesteps) == (quantity, 0, 40)
    assert isinstance(error.value, RuntimeError)
    assert str(error.value).startswith(f"non-finite {quantity} at update 0 (after 40 env steps)")
    after = model.policy.parameters_to_vector()
    assert np.isfinite(after).all()
    np.testing.assert_array_equal(before, after)
    restored = pickle.loads(pickle.dumps(error.value))
    assert (restored.quantity, restored.update, str(restored)) == (quantity, 0, str(error.value))
