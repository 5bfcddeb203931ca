"""The per-visit curve of `fwm-rl evaluate` (steps to goal for visit 1, 2, 3, ... of a lifetime) against a
brute-force count, its JSON keys beside the old ones, `fwm-rl plot` drawing it from evaluation reports, and
`fwm-rl watch` making a GIF of a 7 x 7-cell lifetime."""
from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import fwm_rl.envs  # noqa: F401  (registers the envs)
from fwm_rl.train import rl
from fwm_rl.train.cli import main
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.evaluate import run_episodes, visit_curve
from fwm_rl.train.runs import make_env

SMALL = "#####\n#..G#\n#.#.#\n#...#\n#####"
STEPS = 80


class ScriptedAgent:
    """Plays the same open-loop action script in every env: action ``script[t]`` at step t of the lifetime."""

    def __init__(self, script: np.ndarray) -> None:
        self.script, self.t = script, 0

    def predict(self, obs, state=None, episode_start=None, deterministic=False):
        if episode_start is not None and episode_start.all():
            self.t = 0
        action = np.full(len(obs), self.script[self.t % len(self.script)])
        self.t += 1
        return action, state


def brute_force_visits(seeds: list[int], script: np.ndarray) -> list[list[int]]:
    """Per lifetime (one per seed, a single env replayed step by step): the steps each goal visit took."""
    lifetimes = []
    for seed in seeds:
        env = gym.make("FWM/GridMaze-v0", layout=SMALL, episode_steps=STEPS, layout_order="sequential")
        env.reset(seed=seed)
        durations, last = [], 0
        for t in range(1, STEPS + 1):
            _, reward, _, _, _ = env.step(int(script[t - 1]))
            if reward > 0:
                durations.append(t - last)
                last = t
        lifetimes.append(durations)
    return lifetimes


def test_visit_curve_equals_a_brute_force_count_on_scripted_lifetimes():
    script = np.random.default_rng(3).integers(4, size=STEPS)
    n_envs, seed = 12, 5
    vec_env = make_env("FWM/GridMaze-v0", n_envs, layout=SMALL, episode_steps=STEPS, layout_order="sequential")
    curve = visit_curve(run_episodes(ScriptedAgent(script), vec_env, n_envs, seed=seed))
    lifetimes = brute_force_visits([seed + i for i in range(n_envs)], script)
    longest = max(len(d) for d in lifetimes)
    assert longest >= 5  # the script reaches the goal several times per lifetime
    expected_count = [sum(len(d) > k for d in lifetimes) for k in range(longest)]
    expected_steps = [np.mean([d[k] for d in lifetimes if len(d) > k]) for k in range(longest)]
    assert curve["visit_count"] == expected_count
    np.testing.assert_allclose(curve["visit_steps"], expected_steps, rtol=1e-12)


@pytest.fixture(scope="module")
def maze_run(tmp_path_factory):
    """A tiny GridMaze run (3 x 3 cells, 80 steps of PPO)."""
    config = TrainConfig(experiment="maze", env_id="FWM/GridMaze-v0",
                         env_kwargs={"size": 3, "obs": "both", "split": "train"}, eval_split="val", eval_episodes=8,
                         eval_freq=80, core="lstm", hidden_size=8, n_envs=4, n_steps=10, batch_size=20, n_epochs=1,
                         total_timesteps=80, checkpoint_freq=80, threads=1)
    run_dir = tmp_path_factory.mktemp("runs") / "maze"
    rl.train(config, run_dir=run_dir, progress_bar=False, quiet=True)
    return run_dir


def test_evaluate_reports_per_visit_curves_beside_the_old_keys_and_plot_draws_them(maze_run, tmp_path, capsys):
    report_path = tmp_path / "test.json"
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(maze_run), "--episodes", "8", "--json-file", str(report_path), "--no-progress-bar"])
    assert exit_info.value.code == 0
    rows = json.loads(report_path.read_text())["rows"]
    assert set(rows) == {"random", "oracle", "explorer", "maze"}
    old_keys = {"episodes", "return_mean", "return_ci95", "goals", "steps_to_first_goal", "first_goal_rate",
                "exploit_ratio", "score"}
    for row in rows.values():
        assert old_keys | {"visit_steps", "visit_count"} <= set(row)
        assert len(row["visit_steps"]) == len(row["visit_count"]) and row["visit_count"] == sorted(
            row["visit_count"], reverse=True)
    oracle = rows["oracle"]
    assert oracle["visit_steps"][0] == pytest.approx(oracle["steps_to_first_goal"])
    assert sum(oracle["visit_count"]) == oracle["goals"] * oracle["episodes"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["plot", str(report_path), str(report_path), "--out", str(tmp_path / "visits.png")])
    assert exit_info.value.code == 0 and (tmp_path / "visits.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit):
        main(["plot", str(report_path), str(maze_run), "--out", str(tmp_path / "mixed.png")])
    assert "not both" in capsys.readouterr().err


def test_watch_makes_a_gif_of_a_whole_7x7_cell_lifetime_with_visit_captions(maze_run, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "lifetime.gif"
    with pytest.raises(SystemExit) as exit_info:
        main(["watch", str(maze_run), "--size", "7", "--out", str(out), "--fps", "20"])
    assert exit_info.value.code == 0
    assert "491 frames" in capsys.readouterr().out  # 10 x 7^2 = 490 steps, plus the first frame
    with Image.open(out) as gif:
        assert gif.n_frames == 491 and gif.size == (15 * 16, 15 * 16 + 18)  # 15 x 15 tiles of 16 px, a caption
