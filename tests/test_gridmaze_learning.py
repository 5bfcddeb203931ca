"""A tiny maze is learnt: a recurrent agent beats the memoryless baseline trained the same way, at a fixed seed.

The maze is a plus of four dead-end arms with a hidden goal per lifetime that teleports the agent away when
reached. Without memory an agent must search the arms again on every visit; with memory it walks back. A step
budget (not a time budget) and a margin, so the outcome does not hang on the machine's load, threads or CPU.
"""
from __future__ import annotations

from fwm_rl.agents import RecurrentPPO
from fwm_rl.envs import make_vec_env
from fwm_rl.train.evaluate import run_episodes, summarize

PLUS = "##.##\n##.##\n.....\n##.##\n##.##"
ENV_KWARGS = dict(layout=PLUS, obs="both", episode_steps=40)
N_ENVS, N_STEPS = 32, 40
CHUNK = 4 * N_ENVS * N_STEPS  # env steps between evaluations (4 updates)
MARGIN = 2.0  # goals per lifetime above the memoryless agent (random 1.2, oracle 16.5). Seed 0 in a 1-thread
# prototype: the GRU passes 7.3 after 31 k steps, the MLP is at 5.3 after 31 k steps and 5.55 after 41 k.

def train_and_score(core: str, max_chunks: int, target: float = float("inf")) -> tuple[float, int]:
    """Train a ``core`` agent for up to ``max_chunks`` chunks, stopping once its held-out return reaches ``target``
    -> (mean return over 64 evaluation lifetimes, env steps trained)."""
    env = make_vec_env("FWM/GridMaze-v0", N_ENVS, seed=0, **ENV_KWARGS)
    evaluation = make_vec_env("FWM/GridMaze-v0", 64, **ENV_KWARGS)
    model = RecurrentPPO("MlpFwmPolicy", env, n_steps=N_STEPS, batch_size=N_STEPS * 16, n_epochs=4,
                         learning_rate=3e-3, gamma=0.9, ent_coef=0.01, policy_kwargs=dict(core=core, hidden_size=32),
                         seed=0, device="cpu")
    for chunk in range(max_chunks):
        model.learn(CHUNK, reset_num_timesteps=False)
        if target < float("inf") or chunk == max_chunks - 1:  # without a target only the final model counts
            score = summarize(run_episodes(model, evaluation, 64, seed=1))["return_mean"]
            if score >= target:
                break
    return score, model.num_timesteps

def test_a_recurrent_agent_learns_a_tiny_maze_clearly_above_the_memoryless_baseline():
    memoryless, steps = train_and_score("mlp", max_chunks=6)
    recurrent, recurrent_steps = train_and_score("gru", max_chunks=12, target=memoryless + MARGIN)
    assert recurrent >= memoryless + MARGIN, (
        f"GRU {recurrent:.2f} goals per lifetime after {recurrent_steps} steps, memoryless MLP {memoryless:.2f} after "
        f"{steps} steps")
