"""``python -m fwm_rl.zoo``: rl-zoo3's train/enjoy with our algorithms, and sb3-contrib's ppo_lstm with our policy."""
from __future__ import annotations

import sys

import pytest

pytest.importorskip("rl_zoo3")

from fwm_rl.agents.zoo import HYPERPARAMS_DIR, ZOO_ALGOS, main, zoo_arguments  # noqa: E402

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


def test_zoo_trains_and_enjoys_our_recurrent_ppo(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    main(["train", "--algo", "fwm_ppo", "--env", "FWM/GraphNav-v0", "-f", str(tmp_path), *FAST])
    saved = tmp_path / "fwm_ppo" / "FWM-GraphNav-v0_1" / "FWM-GraphNav-v0.zip"
    assert saved.is_file()
    main(["enjoy", "--algo", "fwm_ppo", "--env", "FWM/GraphNav-v0", "-f", str(tmp_path), "--exp-id", "1",
          "--no-render", "-n", "40"])


def test_zoo_trains_sb3_contrib_ppo_lstm_with_our_policy(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))
    main(["train", "--algo", "ppo_lstm", "--env", "FWM/GraphNav-v0", "-f", str(tmp_path),
          "-conf", str(HYPERPARAMS_DIR / "ppo_lstm.yml"), *FAST])
    assert (tmp_path / "ppo_lstm" / "FWM-GraphNav-v0_1" / "FWM-GraphNav-v0.zip").is_file()


def test_unknown_command_prints_usage():
    with pytest.raises(SystemExit, match="usage: python -m fwm_rl.zoo"):
        main(["fly"])
