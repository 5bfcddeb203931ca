"""``python -m fwm_rl.zoo``: rl-zoo3's train/enjoy with our algorithms, and sb3-contrib's ppo_lstm with our policy."""
from __future__ import annotations

import importlib.util
import sys

import pytest
import torch as th
import yaml

from fwm_rl.agents import paper_a2c_kwargs
from fwm_rl.agents.zoo import HYPERPARAMS_DIR, ZOO_ALGOS, main, zoo_arguments

needs_zoo = pytest.mark.skipif(importlib.util.find_spec("rl_zoo3") is None, reason="needs rl_zoo3 (the [zoo] extra)")

FAST = ["-n", "120", "--eval-freq", "-1", "--seed", "0", "-params", "n_envs:2", "batch_size:60"]


def test_our_algorithms_get_the_shipped_hyperparameters_unless_a_config_is_given():
    args = zoo_arguments("train", ["--algo", "fwm_a2c", "--env", "FWM/GraphNav-v0"])
    assert args[-2:] == ["--conf-file", str(HYPERPARAMS_DIR / "fwm_a2c.yml")]
    with_config = ["--algo", "fwm_ppo", "-conf", "mine.yml"]
    assert zoo_arguments("train", with_config) == with_config
    assert zoo_arguments("train", ["--algo", "ppo_lstm"]) == ["--algo", "ppo_lstm"]
    assert zoo_arguments("enjoy", ["--algo=fwm_ppo"]) == ["--algo=fwm_ppo"]
    for algo in (*ZOO_ALGOS, "ppo_lstm"):
        assert (HYPERPARAMS_DIR / f"{algo}.yml").is_file()


@needs_zoo
def test_zoo_trains_and_enjoys_our_recurrent_ppo(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    main(["train", "--algo", "fwm_ppo", "--env", "FWM/GraphNav-v0", "-f", str(tmp_path), *FAST])
    saved = tmp_path / "fwm_ppo" / "FWM-GraphNav-v0_1" / "FWM-GraphNav-v0.zip"
    assert saved.is_file()
    main(["enjoy", "--algo", "fwm_ppo", "--env", "FWM/GraphNav-v0", "-f", str(tmp_path), "--exp-id", "1",
          "--no-render", "-n", "40"])


@needs_zoo
def test_zoo_trains_sb3_contrib_ppo_lstm_with_our_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    main(["train", "--algo", "ppo_lstm", "--env", "FWM/GraphNav-v0", "-f", str(tmp_path),
          "-conf", str(HYPERPARAMS_DIR / "ppo_lstm.yml"), *FAST])
    assert (tmp_path / "ppo_lstm" / "FWM-GraphNav-v0_1" / "FWM-GraphNav-v0.zip").is_file()


def test_zoo_a2c_hyperparameters_are_the_papers_from_paper_a2c_kwargs():
    """fwm_a2c.yml is paper_a2c_kwargs() as rl-zoo3 reads it (policy_kwargs is evaluated with th and nn in scope),
    plus the zoo's own n_envs, n_timesteps and policy."""
    (settings,) = yaml.safe_load((HYPERPARAMS_DIR / "fwm_a2c.yml").read_text()).values()
    settings = dict(settings)
    assert {settings.pop(key) for key in ("n_envs", "n_timesteps", "policy")} == {64, 2e6, "MlpFwmPolicy"}
    settings["policy_kwargs"] = eval(settings["policy_kwargs"], {"th": th, "nn": th.nn})
    assert settings == paper_a2c_kwargs()


def test_unknown_command_prints_usage():
    with pytest.raises(SystemExit, match="usage: python -m fwm_rl.zoo"):
        main(["fly"])


@needs_zoo
@pytest.mark.parametrize("algo", ["fwm_ppo", "fwm_a2c"])
def test_zoo_optimize_runs_and_reports_two_trials_of_our_algorithms(algo, tmp_path, monkeypatch, capsys):
    """rl-zoo3's -optimize draws from the fwm-rl tune search space (registered in HYPERPARAMS_SAMPLER), evaluates
    on the val split and writes its report."""
    optuna = pytest.importorskip("optuna", reason="needs Optuna (the [tune] extra)")
    pytest.importorskip("pandas", reason="rl-zoo3's report needs pandas (the [zoo] extra)")
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    main(["train", "--algo", algo, "--env", "FWM/GraphNav-v0", "-f", str(tmp_path), "-n", "60", "--seed", "0",
          "-params", "n_envs:2", "-optimize", "--n-trials", "2", "--n-evaluations", "1", "--eval-episodes", "1",
          "--sampler", "random", "--pruner", "none", "--storage", storage, "--study-name", algo, "--no-optim-plots"])
    out = capsys.readouterr().out
    assert "eval_env_kwargs={'split': 'val'}" in out and "Number of finished trials:  2" in out
    trials = optuna.load_study(study_name=algo, storage=storage).trials
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert {"learning_rate", "ent_coef", "gamma", "gae_lambda", "hidden_size", "core_kwargs.memory_size"} <= set(
        trials[0].params)
    assert ("n_epochs" in trials[0].params) == (algo == "fwm_ppo")
    (report,) = (tmp_path / algo).glob("report_FWM-GraphNav-v0_2-trials-60-random-none_*.csv")
    assert len(report.read_text().strip().splitlines()) == 3  # header + one row per trial


def test_zoo_samplers_put_core_sizes_into_policy_kwargs_and_minibatches_into_batch_size():
    optuna = pytest.importorskip("optuna", reason="needs Optuna (the [tune] extra)")
    from fwm_rl.agents.zoo import make_sampler, zoo_hyperparams

    settings = zoo_hyperparams(HYPERPARAMS_DIR / "fwm_ppo.yml", "FWM/GraphNav-v0")
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    kwargs = make_sampler("fwm_ppo", settings)(trial, 3, 8, {})
    policy = kwargs.pop("policy_kwargs")
    assert policy["hidden_size"] == trial.params["hidden_size"] and policy["core"] == "fwm"
    assert policy["core_kwargs"] == {"preset": "rl", "memory_size": trial.params["core_kwargs.memory_size"]}
    assert kwargs["batch_size"] == 8 // trial.params["minibatches"] * settings["n_steps"]
    assert {key: kwargs[key] for key in ("learning_rate", "n_epochs", "gamma")} == {
        key: trial.params[key] for key in ("learning_rate", "n_epochs", "gamma")}
