"""Shared check for the agent tests: two models predict the same actions and states step by step."""
from __future__ import annotations

import numpy as np


def assert_same_predictions(model_a, model_b, env, steps: int = 12) -> tuple:
    """Both models, fed the same observations, state and episode starts, return the same actions and states.

    Returns ``model_b``'s state after the last step.
    """
    obs = env.reset()
    state_a = state_b = None
    starts = np.ones(env.num_envs, dtype=bool)
    for _ in range(steps):
        act_a, state_a = model_a.predict(obs, state=state_a, episode_start=starts, deterministic=True)
        act_b, state_b = model_b.predict(obs, state=state_b, episode_start=starts, deterministic=True)
        np.testing.assert_array_equal(act_a, act_b)
        for a, b in zip(state_a, state_b):
            np.testing.assert_array_equal(a, b)
        obs, _, starts, _ = env.step(act_a)
    return state_b
