"""The maze-size curriculum: its promote/demote rule, the env option that plays it, and a run that follows it."""
from __future__ import annotations

import csv
import math

import gymnasium as gym
import numpy as np
import pytest
import torch

import fwm_rl.envs  # noqa: F401  (registers the envs)
from fwm_rl.envs.curriculum import SizeCurriculum
from fwm_rl.train import rl
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.runs import load_agent


def test_promotes_at_the_promote_score_and_demotes_after_patience_scores_below_demote():
    c = SizeCurriculum.from_option({"sizes": [3, 5, 7], "promote": 0.6, "demote": 0.2, "patience": 2})
    steps = []
    for score in [0.1, 0.5, 0.6,        # low, middling, promote: 3 -> 5
                  0.1, 0.3, 0.1, 0.1,   # low, middling (resets the streak), two lows: demote 5 -> 3
                  0.7, 0.9, 0.95,       # promote 3 -> 5 -> 7, then at the top: stay
                  math.nan, 0.0, 0.0,   # undefined: stay; two lows: demote 7 -> 5
                  0.0, 0.0, 0.0, 0.0]:  # 5 -> 3, then at the bottom nothing below: stay
        steps.append((c.update(len(steps), score), c.size))
    assert steps == [("stay", 3), ("stay", 3), ("promote", 5),
                     ("stay", 5), ("stay", 5), ("stay", 5), ("demote", 3),
                     ("promote", 5), ("promote", 7), ("stay", 7),
                     ("stay", 7), ("stay", 7), ("demote", 5),
                     ("stay", 5), ("demote", 3), ("stay", 3), ("stay", 3)]
    assert [h[1] for h in c.history][:4] == [3, 3, 3, 5]  # the size each score was measured at


@pytest.mark.parametrize("option, message", [
    ({"sizes": [5, 3]}, "sizes must increase"),
    ({"sizes": []}, "non-empty list"),
    ({"promote": 0.2, "demote": 0.2}, "demote (0.2) must be below promote (0.2)"),
    ({"patience": 0}, "patience must be an integer >= 1"),
    ({"speed": 1}, "unknown curriculum key speed; allowed: sizes, promote, demote, patience"),
    ("fast", "curriculum must be a dict"),
])
def test_bad_curriculum_options_are_one_line_errors_naming_what_is_allowed(option, message):
    with pytest.raises(ValueError) as err:
        gym.make("FWM/GridMaze-v0", curriculum=option)
    assert message in str(err.value)


def test_a_curriculum_env_switches_size_at_the_next_lifetime_and_scales_the_lifetime():
    venv = gym.make_vec("FWM/GridMaze-v0", num_envs=3, vectorization_mode="vector_entry_point", obs="both",
                        position_scale=16, curriculum={"sizes": [3, 5]})
    dynamics = venv.unwrapped.dynamics
    obs, info = venv.reset(seed=0)
    assert obs.shape == (3, 18) and dynamics.size == 3 and dynamics.episode_steps == 90
    assert all(max(pos) <= 5 for pos in info["agent_pos"])
    dynamics.curriculum.update(0, 0.9)  # promote: the lifetimes in progress finish at size 3
    for t in range(90):
        obs, _, _, truncated, info = venv.step(np.zeros(3, dtype=np.int64))
        assert dynamics.size == (3 if t < 89 else 5)
    assert truncated.all() and dynamics.episode_steps == 250
    assert {dynamics.grid(row).shape for row in range(3)} == {(11, 11)}
    np.testing.assert_allclose(obs[:, 9:11], np.stack(info["agent_pos"]) / 16, rtol=1e-6)  # one step = 1/16
    held_out = gym.make("FWM/GridMaze-v0", split="val", curriculum={"sizes": [3, 5]}).unwrapped.dynamics
    assert held_out.size == 5 and held_out.episode_steps == 250
    with pytest.raises(ValueError, match="curriculum sets the size"):
        gym.make("FWM/GridMaze-v0", size=3, curriculum={"sizes": [3, 5]})


def curriculum_rows(run_dir) -> list[tuple[int, float, float]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [(int(r["step"]), float(r["curriculum/size"]), float(r["curriculum/level"]))
                for r in csv.DictReader(f) if r.get("curriculum/size")]


def test_training_follows_the_curriculum_logs_each_decision_and_resumes_it_exactly(tmp_path):
    # promote at any score above -10 and never demote: the first decision (after 80 steps) moves 3 -> 4 cells.
    config = dict(experiment="cur", env_id="FWM/GridMaze-v0", core="gru", hidden_size=8, n_envs=4, n_steps=10,
                  batch_size=20, n_epochs=1, total_timesteps=240, eval_episodes=4, eval_freq=80, checkpoint_freq=80,
                  threads=1, env_kwargs={"obs": "both", "position_scale": 16, "split": "train",
                                         "curriculum": {"sizes": [3, 4], "promote": -10.0, "demote": -20.0}})
    assert rl.train(TrainConfig(**config), run_dir=tmp_path / "whole", progress_bar=False, quiet=True).step == 240
    assert curriculum_rows(tmp_path / "whole") == [(80, 3, 1), (160, 4, 1)]
    assert "step 80: curriculum val score" in (tmp_path / "whole" / "log.txt").read_text()
    assert "at size 3 -> promote to size 4" in (tmp_path / "whole" / "log.txt").read_text()
    # stopped at 160 (the checkpoint holds the env, hence the curriculum) and resumed: the same run
    rl.train(TrainConfig(**{**config, "total_timesteps": 160}), run_dir=tmp_path / "parts", progress_bar=False,
             quiet=True)
    rl.resume(tmp_path / "parts", {"total_timesteps": 240}, progress_bar=False, quiet=True)
    assert curriculum_rows(tmp_path / "parts") == curriculum_rows(tmp_path / "whole")
    whole = load_agent(tmp_path / "whole" / "model.zip", "ppo").policy.state_dict()
    parts = load_agent(tmp_path / "parts" / "model.zip", "ppo").policy.state_dict()
    assert all(torch.equal(whole[key], parts[key]) for key in whole)
