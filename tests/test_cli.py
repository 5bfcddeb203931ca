"""The fwm-rl command line without training: configs and --help, user errors, statistics, plots."""
from __future__ import annotations

import math
import subprocess
import sys

import pytest
import yaml

from fwm_rl.envs import EpisodeStats
from fwm_rl.train.cli import build_parser, config_from_args, main
from fwm_rl.train.config import TrainConfig, load_config, shipped_configs
from fwm_rl.train.evaluate import episode_quotas, normalised_score, summarize, t_critical_95
from fwm_rl.train.io import MetricsLog
from fwm_rl.train.options import field_docs
from fwm_rl.train.plots import pick_metric, plot_runs

SUBCOMMANDS = ("train", "evaluate", "watch", "plot", "demo")


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def test_train_help_shows_every_config_field_with_its_docstring_and_default(capsys):
    code, out, _ = run_main(["train", "--help"], capsys)
    flat = " ".join(out.split())
    assert code == 0
    defaults = TrainConfig().to_dict()
    for name, doc in field_docs(TrainConfig).items():
        assert f"--{name.replace('_', '-')}" in flat
        assert " ".join(doc.split()[:4]) in flat, name
        assert f"[default: {defaults[name]}]" in flat, name
    assert "--time-budget" in flat and "--resume" in flat and "graphnav-fwm" in flat


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_command_explains_its_options(command, capsys):
    code, out, _ = run_main([command, "--help"], capsys)
    assert code == 0 and "usage: fwm-rl " + command in out and "--" in out


def test_shipped_configs_load_and_are_named_after_their_file():
    configs = shipped_configs()
    assert {"graphnav-fwm", "graphnav-lstm", "graphnav-mlp", "gridmaze-fwm", "gridmaze-lstm", "gridmaze-mlp"} <= set(configs)
    for name, path in configs.items():
        config = load_config(path)
        assert config.experiment == name
        assert set(yaml.safe_load(path.read_text())) <= set(TrainConfig().to_dict())



def test_the_paper_configs_hold_the_learner_of_paper_a2c_kwargs():
    """paper_a2c_kwargs() is the one home of the paper's A2C settings; the *-paper configs spell them for the CLI."""
    import torch

    from fwm_rl.agents import paper_a2c_kwargs

    paper = paper_a2c_kwargs()
    policy = paper.pop("policy_kwargs")
    optimizers = {"adam": torch.optim.Adam, "rmsprop": torch.optim.RMSprop}
    for name in ("graphnav-fwm-paper", "graphnav-lstm-paper", "graphnav-mlp-paper"):
        config = load_config(shipped_configs()[name])
        assert config.algo == "a2c" and config.n_envs == 600, name
        assert {key: getattr(config, key) for key in paper} == paper, name
        assert (config.critic, config.net_arch) == (policy["critic"], policy["net_arch"]), name
        assert optimizers[config.optimizer] is policy["optimizer_class"], name
        assert config.optimizer_kwargs == policy["optimizer_kwargs"], name
    fwm = load_config(shipped_configs()["graphnav-fwm-paper"])
    assert (fwm.core, fwm.hidden_size, fwm.core_kwargs) == ("fwm", policy["hidden_size"], policy["core_kwargs"])

def test_options_override_the_config_file_and_merge_into_its_dicts():
    args = build_parser().parse_args(["train", "--config", "graphnav-fwm", "--n-envs", "8", "--learning-rate", "3e-4",
                                      "--core-kwargs", "memory_size=8", "--time-budget", "60", "--eval-split", "none"])
    config = config_from_args(args)
    shipped = load_config(shipped_configs()["graphnav-fwm"])
    assert config.n_envs == 8 and config.learning_rate == 3e-4 and config.time_budget == 60.0
    assert config.eval_split is None
    assert config.core_kwargs == {**shipped.core_kwargs, "memory_size": 8}
    assert config.hidden_size == shipped.hidden_size and config.core == "fwm"


def test_a_config_file_replaces_the_default_dicts(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("experiment: mine\nenv_kwargs: {split: procedural}\ntotal_timesteps: 1e6\n")
    config = load_config(path)
    assert config.env_kwargs == {"split": "procedural"} and config.total_timesteps == 1_000_000


@pytest.mark.parametrize("argv, message", [
    (["train", "--config", "no-such-config"], "unknown config 'no-such-config'"),
    (["train", "--config", "missing.yaml"], "config file not found: missing.yaml"),
    (["train", "--algo", "dqn"], "algo must be one of ppo, a2c"),
    (["train", "--n-envs", "0"], "n_envs must be >= 1"),
    (["train", "--env-kwargs", "split"], "expected KEY=VALUE"),
    (["train", "--resume", "nowhere"], "no config.yaml"),
    (["evaluate", "nowhere"], "no such run directory or model file"),
    (["watch", "nowhere", "--out", "x.png"], "--out must end in .gif"),
    (["plot", "nowhere"], "no metrics.csv"),
    (["train", "--config", "."], "--config . is a directory"),
    (["train", "--eval-split", "test"], "eval_split test would pick best_model.zip on the test set; use val"),
    (["train", "--device", "tpu"], "device 'tpu' is not a torch device; use auto, cpu, cuda, cuda:N or mps"),
    (["supervised", "--device", "tpu"], "device 'tpu' is not a torch device; use auto, cpu, cuda, cuda:N or mps"),
    (["train", "--core", "transformer"], "unknown core 'transformer'; choose from "),
])
def test_user_errors_are_one_line_and_a_nonzero_exit(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(argv, capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("fwm-rl: error: ") and message in err


@pytest.mark.parametrize("command", ["train", "supervised"])
def test_device_cuda_without_a_gpu_is_refused(command, capsys, tmp_path, monkeypatch):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main([command, "--device", "cuda"], capsys)
    assert code == 1 and err.count("\n") == 1 and "asked for CUDA, which this machine does not have" in err
    assert not any(tmp_path.iterdir())


def test_core_choices_come_from_the_core_registry(capsys):
    from fwm_rl import CORE_CLASSES

    for command in ("train", "supervised"):
        flat = " ".join(run_main([command, "--help"], capsys)[1].split())
        assert f"Choices: {', '.join(sorted(CORE_CLASSES))}." in flat


def test_train_and_supervised_share_the_names_of_shared_options(capsys):
    shared = ["--config", "--resume", "--runs-dir", "--run-dir", "--overwrite", "--progress-bar", "--experiment",
              "--seed", "--device", "--threads", "--core", "--hidden-size", "--core-kwargs", "--learning-rate",
              "--max-grad-norm", "--batch-size", "--eval-freq", "--keep-checkpoints"]
    for command in ("train", "supervised"):
        out = run_main([command, "--help"], capsys)[1]
        assert all(f"{flag} " in out or f"{flag}," in out for flag in shared), command


def test_key_value_options_are_read_as_yaml_by_both_trainers():
    from fwm_rl.train.options import values_from_args
    from fwm_rl.train.supervised import SupervisedConfig

    argv = ["--core-kwargs", "tanh_query=True", "memory_size=16", "eps=1e-4", "preset=rl"]
    expected = {"tanh_query": True, "memory_size": 16, "eps": 1e-4, "preset": "rl"}
    assert config_from_args(build_parser().parse_args(["train", *argv])).core_kwargs == expected
    supervised = values_from_args(build_parser().parse_args(["supervised", *argv]), SupervisedConfig)
    assert supervised["core_kwargs"] == expected


def test_old_supervised_spellings_still_work_with_a_deprecation_warning(capsys):
    from fwm_rl.train.options import values_from_args
    from fwm_rl.train.supervised import SupervisedConfig

    args = build_parser().parse_args(["supervised", "--core-options", "memory_size=8", "--lr", "3e-4",
                                      "--grad-clip", "0.25", "--eval-every", "100"])
    err = capsys.readouterr().err
    assert values_from_args(args, SupervisedConfig) == {"core_kwargs": {"memory_size": 8}, "learning_rate": 3e-4,
                                                        "max_grad_norm": 0.25, "eval_freq": 100}
    for old, new in [("--core-options", "--core-kwargs"), ("--lr", "--learning-rate"),
                     ("--grad-clip", "--max-grad-norm"), ("--eval-every", "--eval-freq")]:
        assert f"fwm-rl: warning: {old} is deprecated and will be removed in the next release; use {new}" in err


def test_an_old_supervised_config_json_loads_with_its_old_keys(tmp_path, capsys):
    from fwm_rl.train.supervised import load_config

    path = tmp_path / "config.json"
    path.write_text('{"task": "mart", "lr": 0.01, "core_options": {"memory_size": 8}, "run_dir": "runs/x", '
                    '"eval_every": 50}')
    config = load_config(path)
    assert (config.task, config.learning_rate, config.core_kwargs, config.eval_freq) == ("mart", 0.01,
                                                                                          {"memory_size": 8}, 50)
    assert capsys.readouterr().err.count("deprecated") == 4


def test_plot_of_a_binary_metrics_file_is_one_line(tmp_path, capsys):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    code, _, err = run_main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "x.png")], capsys)
    assert code == 1 and err.count("\n") == 1 and "is not a readable metrics CSV" in err
    assert not (tmp_path / "x.png").exists()


def test_unknown_config_key_names_the_key_and_the_file(tmp_path, capsys):
    path = tmp_path / "typo.yaml"
    path.write_text("experiment: typo\nlearnig_rate: 0.1\n")
    code, _, err = run_main(["train", "--config", str(path)], capsys)
    assert code == 1 and "'learnig_rate'" in err and str(path) in err


def test_python_m_fwm_rl_reports_an_unknown_env_id_without_a_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "fwm_rl", "train", "--env-id", "FWM/GraphNaw-v0",
                             "--runs-dir", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        "fwm-rl: error: unknown env id 'FWM/GraphNaw-v0'; did you mean FWM/GraphNav-v0? "
        "(fwm-rl environments: FWM/GraphNav-v0, FWM/GridMaze-v0)"]


@pytest.mark.parametrize("df, table", [(1, 12.7062), (2, 4.3027), (3, 3.1824), (5, 2.5706), (10, 2.2281),
                                       (30, 2.0423), (100, 1.9840), (1000, 1.9623)])
def test_t_critical_value_matches_the_student_t_table(df, table):
    assert t_critical_95(df) == pytest.approx(table, abs=1e-3)


def test_summary_statistics_match_a_hand_computation():
    episodes = [EpisodeStats(10.0, 2, 4, [1.0]), EpisodeStats(20.0, 3, 2, [2.0, 3.0]), EpisodeStats(-0.5, 0, None, [])]
    summary = summarize(episodes)
    returns = [10.0, 20.0, -0.5]
    mean = sum(returns) / 3
    sd = math.sqrt(sum((r - mean) ** 2 for r in returns) / 2)
    assert summary["return_mean"] == pytest.approx(mean)
    assert summary["return_ci95"] == pytest.approx(4.302652730 * sd / math.sqrt(3))
    assert summary["goals"] == pytest.approx(5 / 3)
    assert summary["steps_to_first_goal"] == pytest.approx(3.0) and summary["first_goal_rate"] == pytest.approx(2 / 3)
    assert summary["exploit_ratio"] == pytest.approx(2.0)  # pooled over goal visits, not averaged per episode
    assert math.isnan(summarize([EpisodeStats(1.0, 0, None, [])])["exploit_ratio"])


def test_normalised_score_is_zero_for_random_and_one_for_oracle():
    assert normalised_score(45.0, 45.0, 167.0) == 0.0
    assert normalised_score(167.0, 45.0, 167.0) == 1.0
    assert normalised_score(106.0, 45.0, 167.0) == pytest.approx(0.5)


def test_episode_quotas_play_layouts_i_i_plus_n_up_to_the_total():
    quotas = episode_quotas(10, 4)
    layouts = sorted(i + k * 4 for i in range(4) for k in range(quotas[i]))
    assert quotas.tolist() == [3, 3, 2, 2] and layouts == list(range(10))


def test_plot_draws_rl_and_supervised_runs_in_one_png(tmp_path):
    rl_run, supervised_run = tmp_path / "rl", tmp_path / "sup"
    rl_log, supervised_log = MetricsLog(rl_run), MetricsLog(supervised_run)
    for step in range(0, 500, 100):
        rl_log.append(step, **{"train/return": 40 + step / 10, "time/fps": 100})
        rl_log.append(step, **{"test/return": 41 + step / 20})
        supervised_log.append(step, **{"train/accuracy": step / 500})
        supervised_log.append(step, **{"val/accuracy": step / 600})
    out = plot_runs([rl_run, supervised_run], tmp_path / "curves.png", metric="accuracy")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000
    assert pick_metric([["step", "train/return", "test/return"], ["step", "val/accuracy"]]) == "return"
    assert pick_metric([["step", "train/loss", "val/accuracy"]]) == "accuracy"


def test_plot_names_the_missing_metric(tmp_path, capsys):
    MetricsLog(tmp_path / "run").append(0, **{"train/return": 1.0})
    code, _, err = run_main(["plot", str(tmp_path / "run"), "--metric", "accuracy", "--out",
                             str(tmp_path / "x.png")], capsys)
    assert code == 1 and "no run logs 'accuracy'" in err


def test_the_worked_example_in_docs_runs(tmp_path, capsys, monkeypatch):
    """docs/adding-a-trainer.md: a third trainer from one config dataclass and one training loop, started and
    resumed through the run layer (the document's two Python blocks, executed as written)."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "docs" / "adding-a-trainer.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 2
    (tmp_path / "recall_example.py").write_text(blocks[0])  # a module file: --help reads the field docstrings
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    namespace = {**vars(importlib.import_module("recall_example")), "RUNS": str(tmp_path)}
    exec(compile(blocks[1], "adding-a-trainer.md", "exec"), namespace)
    run_dir = tmp_path / "recall"
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["steps"] == 150 and config["provenance"]["fwm_rl_version"]
    rows = [line.split(",")[0] for line in (run_dir / "metrics.csv").read_text().splitlines()[1:]]
    assert rows == ["50", "100", "150"]
    assert namespace["resumed"].summary["train/accuracy"] > 0.5
    # the same steps straight through give the same final parameters: the resume is exact
    straight = namespace["main"](["--runs-dir", str(tmp_path / "straight"), "--steps", "150", "--threads", "1",
                                  "--no-progress-bar"])
    from fwm_rl.train.rundir import RunDir

    a = RunDir(run_dir).read_newest_checkpoint()[2]["model"]
    b = RunDir(straight.run_dir).read_newest_checkpoint()[2]["model"]
    assert all(torch_equal(a[key], b[key]) for key in a)
    code, out, _ = run_main_callable(namespace["main"], ["--help"], capsys)
    assert code == 0 and "Bits to remember." in " ".join(out.split()) and "--resume" in out


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def run_main_callable(function, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        function(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err
