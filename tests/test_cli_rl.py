"""fwm-rl train / evaluate / watch / demo on tiny real runs: exact resume, Ctrl-C, time budget, references."""
from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
import yaml

import fwm_rl

from fwm_rl.envs import run_reference
from fwm_rl.train import rl
from fwm_rl.train.cli import main
from fwm_rl.train.config import TrainConfig
from fwm_rl.envs import privileged_size
from fwm_rl.train.demo import run_demo
from fwm_rl.train.errors import UserError
from fwm_rl.train.evaluate import evaluate, run_episodes
from fwm_rl.train.runs import heldout_env_kwargs, load_agent, make_env
from fwm_rl.train.watch import watch

# 4 envs x 10 steps per update: episodes (30 steps) cross update boundaries, so checkpoints fall mid-episode and a
# resume must restore the recurrent state, the env and the episodes in progress.
TINY = dict(experiment="tiny", n_envs=4, n_steps=10, hidden_size=8, core_kwargs={"memory_size": 4}, batch_size=20,
            n_epochs=2, total_timesteps=400, eval_episodes=8, eval_freq=80, checkpoint_freq=40, keep_checkpoints=20,
            threads=1)


def parameters(model_path: Path) -> dict[str, torch.Tensor]:
    return load_agent(model_path, "ppo").policy.state_dict()


def assert_same_parameters(path_a: Path, path_b: Path) -> None:
    a, b = parameters(path_a), parameters(path_b)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metrics_without_timing(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if not k.startswith("time/")} for row in csv.DictReader(f)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """An uninterrupted tiny run, every checkpoint kept."""
    run_dir = tmp_path_factory.mktemp("runs") / "tiny"
    result = rl.train(TrainConfig(**TINY), run_dir=run_dir, progress_bar=False, quiet=True)
    assert result.stopped is None and result.step == 400
    return run_dir


def test_a_run_directory_holds_config_models_checkpoints_metrics_and_logs(tiny_run):
    for name in ("config.yaml", "model.zip", "best_model.zip", "metrics.csv", "metrics.jsonl", "references.json",
                 "log.txt"):
        assert (tiny_run / name).is_file(), name
    assert any((tiny_run / "tb").iterdir())
    assert [p.name for p in sorted((tiny_run / "checkpoints").glob("*.ckpt"))][-1] == "step_000000000400.ckpt"
    rows = metrics_without_timing(tiny_run)
    assert [int(r["step"]) for r in rows if r["val/return"]] == [0, 80, 160, 240, 320, 400]
    assert not any(key.startswith("test/") for key in rows[0])  # selection on val: test is never played
    assert [int(r["step"]) for r in rows if r["train/return"]] == [120, 240, 360]  # 30-step episodes end there


def test_resuming_from_a_mid_episode_checkpoint_reproduces_the_uninterrupted_run(tiny_run, tmp_path):
    resumed = tmp_path / "resumed"
    shutil.copytree(tiny_run, resumed)
    for checkpoint in sorted((resumed / "checkpoints").glob("*.ckpt"))[3:]:  # keep 40, 80, 120: a "kill" at 120+
        checkpoint.unlink()
    (resumed / "model.zip").unlink()
    result = rl.resume(resumed, progress_bar=False, quiet=True)
    assert result.step == 400
    assert_same_parameters(tiny_run / "model.zip", resumed / "model.zip")
    assert metrics_without_timing(resumed) == metrics_without_timing(tiny_run)


@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_saves_then_resume_reaches_the_uninterrupted_result(tiny_run, tmp_path, stop_signal):
    run_dir = tmp_path / "interrupted"
    argv = [sys.executable, "-m", "fwm_rl", "train", "--run-dir", str(run_dir), "--no-progress-bar"]
    for key, value in TINY.items():
        pairs = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else [str(value)]
        argv += [f"--{key.replace('_', '-')}", *pairs]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    while not list((run_dir / "checkpoints").glob("*.ckpt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(stop_signal)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert f"Continue with: fwm-rl train --resume {run_dir}" in out
    stopped_at = int(sorted((run_dir / "checkpoints").glob("*.ckpt"))[-1].stem.split("_")[1])
    assert stopped_at < 400 and (run_dir / "model.zip").exists()
    rl.resume(run_dir, progress_bar=False, quiet=True)
    assert_same_parameters(tiny_run / "model.zip", run_dir / "model.zip")


@pytest.mark.parametrize("env_id, env_kwargs", [("FWM/GraphNav-v0", {"split": "train"}),
                                                ("FWM/GridMaze-v0", {"size": 3, "split": "train"})])
def test_vector_env_state_survives_the_checkpoint_pickle(env_id, env_kwargs):
    """Checkpoints pickle the whole training env; the copy must step exactly like the original (no state lost,
    e.g. arrays that are views of one another must stay views), across lifetime ends."""
    import cloudpickle
    import numpy as np

    original = make_env(env_id, 4, seed=0, **env_kwargs)
    original.reset()
    actions = np.random.default_rng(0).integers(original.action_space.n, size=(120, 4))
    for step_actions in actions[:17]:
        original.step(step_actions)
    copy = cloudpickle.loads(cloudpickle.dumps(original))
    for step_actions in actions[17:]:
        obs_a, rewards_a, dones_a, _ = original.step(step_actions)
        obs_b, rewards_b, dones_b, _ = copy.step(step_actions)
        np.testing.assert_array_equal(obs_a, obs_b)
        np.testing.assert_array_equal(rewards_a, rewards_b)
        np.testing.assert_array_equal(dones_a, dones_b)


def test_time_budget_stops_at_an_update_boundary_with_model_and_checkpoint(tmp_path):
    config = TrainConfig(**{**TINY, "time_budget": 1e-6, "eval_split": None})
    result = rl.train(config, run_dir=tmp_path / "budget", progress_bar=False, quiet=True)
    assert result.stopped == "time budget" and result.step % 40 == 0 and result.step < 400
    assert (tmp_path / "budget" / "model.zip").exists()
    assert (tmp_path / "budget" / "checkpoints" / f"step_{result.step:012d}.ckpt").exists()


def test_a_privileged_run_hides_the_privileged_values_from_the_actor_and_evaluates_on_them(tmp_path):
    """env_kwargs privileged_obs builds a policy whose actor skips the privileged tail; the oracle loss is logged
    and the evaluation (agent and references) plays the same privileged env."""
    config = TrainConfig(**{**TINY, "env_kwargs": {"split": "train", "privileged_obs": True}, "oracle_coef": 0.5,
                            "eval_split": None, "total_timesteps": 80})
    rl.train(config, run_dir=tmp_path / "priv", progress_bar=False, quiet=True)
    policy = load_agent(tmp_path / "priv" / "model.zip", "ppo").policy
    assert policy.privileged_features == privileged_size(3) and policy.oracle_net is not None
    assert policy.actor_core.input_size == 16
    assert all(np.isfinite(float(row["train/oracle_action_loss"])) for row in metrics_without_timing(tmp_path / "priv")
               if row.get("train/oracle_action_loss"))
    rows = evaluate(tmp_path / "priv", episodes=8)["rows"]
    assert rows["oracle"]["return_mean"] > rows["random"]["return_mean"] and np.isfinite(rows["tiny"]["return_mean"])


def test_resume_keeps_the_config_except_budget_fields(tiny_run):
    with pytest.raises(UserError, match="only total_timesteps, time_budget, device, threads may change"):
        rl.resume(tiny_run, overrides={"learning_rate": 0.1}, progress_bar=False, quiet=True)


def test_existing_run_directory_is_not_overwritten_by_accident(tiny_run):
    with pytest.raises(UserError, match="already exists"):
        rl.train(TrainConfig(**TINY), run_dir=tiny_run, progress_bar=False, quiet=True)


def test_evaluation_plays_the_same_layouts_as_the_references(tiny_run):
    env_kwargs = heldout_env_kwargs("FWM/GraphNav-v0", {"split": "train"}, split="test")
    agent = load_agent(tiny_run / "model.zip", "ppo")
    played = run_episodes(agent, make_env("FWM/GraphNav-v0", 4, seed=0, **env_kwargs), n_episodes=10, seed=0)
    oracle = run_reference("FWM/GraphNav-v0", "oracle", n_episodes=10, seed=0, n_envs=4, **env_kwargs)
    assert [e.layout_id for e in played] == [e.layout_id for e in oracle]
    assert len(set(e.layout_id for e in played)) == 10


def test_evaluate_json_scores_the_agent_between_random_and_oracle(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_run), "--episodes", "12", "--json"])
    assert exit_info.value.code == 0
    report = json.loads(capsys.readouterr().out)
    rows = report["rows"]
    assert list(rows) == ["random", "oracle", "tiny"]
    assert rows["oracle"]["return_mean"] > rows["random"]["return_mean"]
    random_mean, oracle_mean = rows["random"]["return_mean"], rows["oracle"]["return_mean"]
    assert rows["tiny"]["score"] == pytest.approx((rows["tiny"]["return_mean"] - random_mean) / (oracle_mean - random_mean))
    assert report["env_kwargs"] == {"split": "test", "layout_order": "sequential"}
    again = evaluate(tiny_run, episodes=12, with_references=False)["rows"]["tiny"]
    assert again["return_mean"] == rows["tiny"]["return_mean"]  # seeded: the same episodes and actions


def test_watch_writes_one_gif_frame_per_step(tiny_run, tmp_path):
    from PIL import Image

    result = watch(tiny_run, tmp_path / "episode.gif")
    with Image.open(tmp_path / "episode.gif") as gif:
        assert gif.n_frames == result["frames"] == 31  # the start and 30 steps
    assert result["caption"].startswith("step 30")


def test_gridmaze_run_evaluates_on_user_drawn_layouts(tmp_path, capsys):
    layouts = tmp_path / "mine.txt"
    layouts.write_text("; two hand-drawn mazes\n#######\n#.....#\n#.###.#\n#...#G#\n#######\n\n"
                       "#####\n#S..#\n#.#.#\n#...#\n#####\n")
    config = TrainConfig(**{**TINY, "experiment": "maze", "env_id": "FWM/GridMaze-v0",
                            "env_kwargs": {"size": 3, "obs": "both", "split": "train"}, "eval_split": "val",
                            "total_timesteps": 80, "eval_freq": 80})
    rl.train(config, run_dir=tmp_path / "maze", progress_bar=False, quiet=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tmp_path / "maze"), "--layouts", str(layouts), "--episodes", "4", "--json"])
    assert exit_info.value.code == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows["random"]["episodes"] == rows["oracle"]["episodes"] == rows["maze"]["episodes"] == 4
    assert rows["oracle"]["exploit_ratio"] == 1.0
    assert rows["explorer"]["episodes"] == 4 and 0 < rows["explorer"]["score"] <= 1  # GridMaze's third reference


def test_a_curriculum_run_evaluates_at_the_size_asked_for(tmp_path, capsys, tiny_run):
    config = TrainConfig(**{**TINY, "experiment": "maze", "env_id": "FWM/GridMaze-v0", "eval_split": "val",
                            "env_kwargs": {"obs": "both", "split": "train", "curriculum": {"sizes": [3, 4]}},
                            "total_timesteps": 40, "eval_freq": 40, "eval_episodes": 2})
    rl.train(config, run_dir=tmp_path / "maze", progress_bar=False, quiet=True)
    played = {}
    for size in (None, 6):
        argv = ["evaluate", str(tmp_path / "maze"), "--split", "test", "--episodes", "2", "--json",
                "--no-progress-bar"] + ([] if size is None else ["--size", str(size)])
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 0
        played[size] = json.loads(capsys.readouterr().out)["env_kwargs"]
    assert played[None]["curriculum"] == {"sizes": [3, 4]} and "size" not in played[None]  # the curriculum's largest
    assert played[6]["size"] == 6 and "curriculum" not in played[6] and played[6]["split"] == "test"
    assert gym.make("FWM/GridMaze-v0", **played[6]).unwrapped.dynamics.size == 6
    with pytest.raises(SystemExit) as exit_info:  # GraphNav has no size: one line, no traceback
        main(["evaluate", str(tiny_run), "--size", "5", "--episodes", "2", "--no-progress-bar"])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.startswith("fwm-rl: error: cannot make FWM/GraphNav-v0")


def test_demo_quick_trains_fwm_and_lstm_evaluates_and_plots(tmp_path, capsys):
    result = run_demo(tmp_path / "demo", quick=True, seed=3)
    assert list(result["rows"]) == ["random", "oracle", "demo-fwm", "demo-lstm"]
    assert result["curves"].read_bytes()[:4] == b"\x89PNG"
    out = capsys.readouterr().out
    assert "demo wall time" in out and "oracle" in out and "== demo seed 3" in out
    assert "training budgets" in out and "0.33 of the FWM's time" in out and out.count(" 720 env steps") == 2
    assert all(yaml.safe_load((run_dir / "config.yaml").read_text())["seed"] == 3 for run_dir in result["run_dirs"])


def test_train_without_eval_split_selects_on_val_and_never_plays_test(tmp_path, monkeypatch):
    """Every env of a run (training, evaluation, the random/oracle references) is made through gymnasium; none of
    them may be a test env, and best_model.zip comes from val evaluations."""
    import gymnasium

    splits = []
    for name in ("make", "make_vec"):
        real = getattr(gymnasium, name)

        def spy(*args, _real=real, **kwargs):
            splits.append(kwargs.get("split", "train"))
            return _real(*args, **kwargs)

        monkeypatch.setattr(gymnasium, name, spy)
    config = {key: value for key, value in TINY.items() if key != "eval_split"}
    result = rl.train(TrainConfig(**{**config, "total_timesteps": 80}), run_dir=tmp_path / "run", progress_bar=False,
                      quiet=True)
    assert result.step == 80 and (tmp_path / "run" / "best_model.zip").exists()
    assert "test" not in splits and {"train", "val"} <= set(splits)
    assert [key for key in metrics_without_timing(tmp_path / "run")[0] if key.startswith("val/")]


@pytest.mark.parametrize("option, message", [(["--episodes", "0"], "--episodes must be >= 1, got 0"),
                                             (["--n-envs", "0"], "--n-envs must be >= 1, got 0"),
                                             (["--device", "tpu"], "--device: device 'tpu' is not a torch device")])
def test_evaluate_refuses_zero_counts_and_unknown_devices(tiny_run, option, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_run), *option])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1 and message in err[0]


def test_evaluate_shows_a_progress_bar_of_episodes_and_env_steps(tiny_run, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_run), "--episodes", "4", "--no-references"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 0 and "evaluating: 100%" in err and "4/4" in err and "env steps" in err


def test_evaluate_writes_its_report_to_a_json_file(tiny_run, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(tiny_run), "--episodes", "4", "--no-references", "--no-progress-bar", "--json-file",
              str(tmp_path / "report.json")])
    assert exit_info.value.code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["env_kwargs"]["split"] == "test" and report["rows"]["tiny"]["episodes"] == 4


def test_config_yaml_records_every_value_that_ran_and_its_provenance(tiny_run):
    from fwm_rl.train.agent_factory import ALGO_FIELDS

    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    for name in (*ALGO_FIELDS, "critic", "net_arch", "optimizer", "threads"):
        assert config[name] is not None, name
    agent = load_agent(tiny_run / "model.zip", "ppo")
    assert config["gamma"] == agent.gamma and config["learning_rate"] == agent.learning_rate
    assert config["ent_coef"] == agent.ent_coef and config["max_grad_norm"] == agent.max_grad_norm
    from fwm_rl.train.agent_factory import default_critic

    assert config["device"] == "cpu" and config["optimizer"] == "adam" and config["critic"] == default_critic("ppo")
    provenance = config["provenance"]
    assert provenance["fwm_rl_version"] == fwm_rl.__version__
    assert len(provenance["git_commit"]) == 40 and isinstance(provenance["git_dirty"], bool)


def test_anneal_lr_decays_the_learning_rate_linearly_to_zero_over_total_timesteps(tmp_path):
    """Three updates of 40 steps out of 120: SB3 sets each update's rate from the progress left after its rollout
    (metrics.csv logs an update's values at the next rollout, so the last one is read from the saved optimizer)."""
    config = TrainConfig(**{**TINY, "total_timesteps": 120, "eval_split": None, "learning_rate": 3e-3,
                            "anneal_lr": True})
    rl.train(config, run_dir=tmp_path / "run", progress_bar=False, quiet=True)
    rows = [r for r in csv.DictReader((tmp_path / "run" / "metrics.csv").open()) if r.get("train/learning_rate")]
    assert [float(r["train/learning_rate"]) for r in rows] == pytest.approx([2e-3, 1e-3], abs=1e-12)
    assert load_agent(tmp_path / "run" / "model.zip", "ppo").policy.optimizer.param_groups[0]["lr"] == 0.0
    assert yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())["learning_rate"] == 3e-3


def test_a2c_resolves_its_own_defaults_and_leaves_the_ppo_only_fields_none():
    from fwm_rl.train.rl import RLTrainer

    trainer = RLTrainer(TrainConfig(algo="a2c", core="mlp", n_envs=2, n_steps=5, eval_split=None, threads=1))
    resolved = trainer.resolved_config()
    assert resolved.batch_size is None and resolved.n_epochs is None
    assert (resolved.learning_rate, resolved.gamma, resolved.optimizer) == (7e-4, 0.99, "rmsprop")
    assert {key: resolved.optimizer_kwargs[key] for key in ("alpha", "eps", "weight_decay")} == {
        "alpha": 0.99, "eps": 1e-5, "weight_decay": 0}


@pytest.mark.parametrize("split, size", [("val", 5), ("test_large", 11), ("test_handdrawn", 7)])
def test_a_curriculum_config_plays_every_held_out_grid_split_at_its_own_size(split, size):
    train_kwargs = {"split": "train", "obs": "both", "curriculum": {"sizes": [3, 5]}}
    env_kwargs = heldout_env_kwargs("FWM/GridMaze-v0", train_kwargs, split=split)
    assert env_kwargs["split"] == split and env_kwargs["obs"] == "both"
    env = gym.make("FWM/GridMaze-v0", **env_kwargs)
    assert env.unwrapped.dynamics.size == size
    with pytest.raises(ValueError, match="fixes size=11"):  # a direct contradiction still raises
        gym.make("FWM/GridMaze-v0", split="test_large", size=5)
