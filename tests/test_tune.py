"""fwm-rl tune: the search space and its YAML, the val objective and pruning, best.yaml, and workers sharing one
study through SQLite and a real PostgreSQL server, including a worker killed mid-trial."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

optuna = pytest.importorskip("optuna", reason="needs Optuna (the [tune] extra)")

from postgres import postgres_url  # noqa: E402,F401  (the fixture)

from fwm_rl.train import rl  # noqa: E402
from fwm_rl.train.cli import build_parser, config_from_args, main  # noqa: E402
from fwm_rl.train.config import TrainConfig  # noqa: E402
from fwm_rl.train.errors import UserError  # noqa: E402
from fwm_rl.train.tune import (BEST_FILE, Worker, build_space, open_storage, space_specs, trial_config,  # noqa: E402
                               write_best)

TINY = dict(experiment="tiny", n_envs=2, n_steps=10, hidden_size=8, core_kwargs={"memory_size": 4}, n_epochs=1,
            total_timesteps=80, eval_episodes=4, eval_freq=40, checkpoint_freq=40, threads=1)
SPACE = {"hidden_size": {"choices": [8, 12]}, "core_kwargs.memory_size": {"choices": [4, 6]}}


@pytest.fixture
def files(tmp_path) -> tuple[Path, Path]:
    config, space = tmp_path / "tiny.yaml", tmp_path / "space.yaml"
    config.write_text(yaml.safe_dump(TINY))
    space.write_text(yaml.safe_dump({"cores": {"fwm": SPACE}, "n_epochs": None, "minibatches": {"choices": [1, 2]}}))
    return config, space


def val_returns(run_dir: Path) -> list[tuple[int, float]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [(int(row["step"]), float(row["val/return"])) for row in csv.DictReader(f) if row.get("val/return")]


def load_study(storage_url: str, name: str):
    return optuna.load_study(study_name=name, storage=storage_url)


def settled(study) -> list:
    return [t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")]


# Search space ------------------------------------------------------------------------------------------------------

def test_the_shipped_space_covers_the_issues_parameters_and_a_user_file_overrides_it(tmp_path):
    ppo = space_specs("ppo", "fwm")
    assert {"learning_rate", "ent_coef", "n_epochs", "minibatches", "gamma", "gae_lambda", "hidden_size",
            "core_kwargs.memory_size"} <= set(ppo)
    assert "minibatches" not in space_specs("a2c", "fwm") and "core_kwargs.memory_size" not in space_specs("ppo", "lstm")
    override = tmp_path / "space.yaml"
    override.write_text("learning_rate: {low: 1.0e-3, high: 2.0e-3}\nn_epochs: null\ncores: {fwm: {hidden_size: null}}\n")
    merged = space_specs("ppo", "fwm", override)
    assert merged["learning_rate"] == {"low": 1e-3, "high": 2e-3}
    assert "n_epochs" not in merged and "hidden_size" not in merged and merged["gamma"] == ppo["gamma"]


def test_sampled_values_set_config_fields_dict_keys_and_minibatches():
    base = TrainConfig(**TINY)
    config = trial_config(base, {"learning_rate": 2e-3, "core_kwargs.memory_size": 6, "minibatches": 2}, "test")
    assert (config.learning_rate, config.core_kwargs, config.batch_size) == (2e-3, {"memory_size": 6}, 10)
    assert config.hidden_size == base.hidden_size


@pytest.mark.parametrize("spec, message", [
    ({"no_such_field": {"low": 1, "high": 2}}, "'no_such_field' is not a config field"),
    ({"gamma": {"low": 0.9}}, "needs both low and high"),
    ({"gamma": {"low": 0.9, "high": 0.5}}, "need low < high"),
    ({"learning_rate": {"low": 0, "high": 1, "log": True}}, "low > 0 on a log scale"),
    ({"n_epochs": {"choices": []}}, "non-empty list"),
    ({"minibatches": {"choices": [1, 3]}}, "minibatches must divide n_envs=2"),
    ({"n_epochs": {"choices": [0, 2]}}, "n_epochs must be >= 1"),
    ({"gamma": [0.9, 0.99]}, "must be {low: A, high: B"),
])
def test_a_bad_search_space_is_one_line_naming_the_parameter(spec, message):
    with pytest.raises(UserError, match=message.replace("{", r"\{").replace("[", r"\[")) as error:
        build_space(spec, TrainConfig(**TINY), "space.yaml")
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("argv, message", [
    (["--trials", "0"], "--trials must be >= 1"),
    (["--eval-split", "none"], "give --eval-split val"),
    (["--storage", "nosuchdb://x"], "--storage nosuchdb://x: cannot open it"),
    (["--space", "missing.yaml"], "config file not found: missing.yaml"),
])
def test_bad_tune_input_is_one_line_and_exit_1(files, tmp_path, capsys, argv, message):
    config, space = files
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--config", str(config), "--space", str(space), "--runs-dir", str(tmp_path / "runs"),
              "--no-progress-bar", *argv])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fwm-rl: error: ") and message in err[-1]


def test_help_explains_storage_space_and_objective(capsys):
    with pytest.raises(SystemExit):
        main(["tune", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for phrase in ("held-out eval_split (val; test is never played)", "--storage URL", "postgresql://", "--jobs",
                   "best.yaml", "--space FILE"):
        assert phrase in out


# One worker in this process ----------------------------------------------------------------------------------------

def _worker(tmp_path, pruner, n_trials=1) -> Worker:
    base = TrainConfig(**TINY)
    study = optuna.create_study(direction="maximize", pruner=pruner, sampler=optuna.samplers.RandomSampler(seed=0))
    return Worker(study, base, build_space(SPACE, base, "test"), tmp_path / "study", n_trials, progress_bar=False)


def test_a_trial_scores_its_final_val_return_and_best_yaml_trains_as_it_ran(tmp_path):
    worker = _worker(tmp_path, optuna.pruners.NopPruner())
    worker.run()
    (trial,) = worker.study.trials
    run_dir = Path(trial.user_attrs["run_dir"])
    returns = val_returns(run_dir)
    assert [step for step, _ in returns] == [0, 40, 80]  # every periodic evaluation and the final one, on val
    assert trial.state.name == "COMPLETE" and trial.value == pytest.approx(returns[-1][1])
    assert list(trial.intermediate_values.items()) == [(step, pytest.approx(value)) for step, value in returns]
    assert (run_dir / "model.zip").is_file() and (run_dir / "config.yaml").is_file()

    best = write_best(worker.study, tmp_path / BEST_FILE)
    assert best.number == trial.number
    args = build_parser().parse_args(["train", "--config", str(tmp_path / BEST_FILE)])
    config = config_from_args(args)
    ran = trial.user_attrs["config"]
    assert ran["experiment"] == run_dir.name and config.experiment == f"{worker.study.study_name}-best"
    assert config == TrainConfig(**{**ran, "experiment": config.experiment})
    assert (config.hidden_size, config.core_kwargs["memory_size"]) == (trial.params["hidden_size"],
                                                                        trial.params["core_kwargs.memory_size"])


def test_a_pruned_trial_stops_at_an_evaluation_and_leaves_a_resumable_run(tmp_path):
    worker = _worker(tmp_path, optuna.pruners.ThresholdPruner(lower=1e9, n_warmup_steps=1))
    worker.run()
    (trial,) = worker.study.trials
    assert trial.state.name == "PRUNED" and trial.user_attrs["pruned_at_step"] == 40
    run_dir = Path(trial.user_attrs["run_dir"])
    assert [step for step, _ in val_returns(run_dir)] == [0, 40]
    assert (run_dir / "checkpoints" / "step_000000000040.ckpt").is_file()
    result = rl.resume(run_dir, progress_bar=False, quiet=True)  # lock released, checkpoint readable
    assert result.step == TINY["total_timesteps"]


# Worker processes sharing a study ----------------------------------------------------------------------------------

def worker_process(config: Path, space: Path, runs_dir: Path, trials: int, *extra: str) -> subprocess.Popen:
    command = [sys.executable, "-m", "fwm_rl", "tune", "--config", str(config), "--space", str(space), "--runs-dir",
               str(runs_dir), "--study", "shared", "--trials", str(trials), "--heartbeat", "1", "--no-progress-bar",
               "--sampler", "random", *extra]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def finish(*processes: subprocess.Popen) -> None:
    for process in processes:
        out, _ = process.communicate(timeout=600)
        assert process.returncode == 0, out


def assert_shared_without_duplicates(study, runs_dir: Path, n_trials: int) -> None:
    trials = settled(study)
    assert len(trials) == n_trials and not [t for t in study.get_trials() if t.state.name not in ("COMPLETE", "PRUNED")]
    assert sorted(t.number for t in trials) == list(range(n_trials))
    run_dirs = [Path(t.user_attrs["run_dir"]) for t in trials]
    assert len(set(run_dirs)) == n_trials and all(d.parent == (runs_dir / "shared").resolve() for d in run_dirs)
    assert sorted(p.name for p in (runs_dir / "shared").glob("trial-*")) == sorted(d.name for d in run_dirs)
    for trial, run_dir in zip(trials, run_dirs):  # each run directory is that trial's own run
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["hidden_size"] == trial.params["hidden_size"]
    assert len({t.user_attrs["worker"] for t in trials}) == 2, "both workers ran trials"


def test_two_worker_processes_share_one_sqlite_study(files, tmp_path):
    config, space = files
    runs_dir = tmp_path / "runs"
    finish(*(worker_process(config, space, runs_dir, 4) for _ in range(2)))
    study = load_study(f"sqlite:///{runs_dir / 'shared' / 'study.db'}", "shared")
    assert_shared_without_duplicates(study, runs_dir, 4)
    best = yaml.safe_load((runs_dir / "shared" / BEST_FILE).read_text())
    assert best["hidden_size"] == study.best_trial.params["hidden_size"] and best["experiment"] == "shared-best"


def test_two_worker_processes_share_a_study_through_a_real_postgresql_server(files, tmp_path, postgres_url):
    config, space = files
    runs_dir = tmp_path / "runs"
    finish(*(worker_process(config, space, runs_dir, 4, "--storage", postgres_url) for _ in range(2)))
    assert_shared_without_duplicates(load_study(postgres_url, "shared"), runs_dir, 4)
    assert not (runs_dir / "shared" / "study.db").exists()


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_a_killed_workers_trial_is_failed_and_retried_from_its_checkpoint(files, tmp_path):
    config, space = files
    config.write_text(yaml.safe_dump({**TINY, "total_timesteps": 600, "eval_freq": 300}))
    runs_dir = tmp_path / "runs"
    storage = f"sqlite:///{runs_dir / 'shared' / 'study.db'}"
    doomed = worker_process(config, space, runs_dir, 1)
    checkpoints = runs_dir / "shared" / "trial-0000" / "checkpoints"
    deadline = time.monotonic() + 300
    while not list(checkpoints.glob("*.ckpt")):
        assert doomed.poll() is None and time.monotonic() < deadline, doomed.communicate()[0]
        time.sleep(0.2)
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    time.sleep(2.5)  # twice the heartbeat interval: the trial is stale
    finish(worker_process(config, space, runs_dir, 1))

    study = load_study(storage, "shared")
    killed, retried = study.get_trials()
    assert killed.state.name == "FAIL" and retried.state.name == "COMPLETE"
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retried) == killed.number
    assert retried.params == killed.params and retried.user_attrs["resumed"] is True
    run_dir = Path(retried.user_attrs["run_dir"])
    assert run_dir.name == "trial-0000" and val_returns(run_dir)[-1][0] == 600
    assert retried.value == pytest.approx(val_returns(run_dir)[-1][1])


def test_open_storage_retries_a_new_sqlite_database_whose_tables_another_worker_is_creating(tmp_path, monkeypatch):
    """Two workers opening a new SQLite file race to create its tables; the loser's "table ... already exists" is
    retried, and any other OperationalError is reported at once."""
    import optuna
    from sqlalchemy.exc import OperationalError

    real, calls = optuna.storages.RDBStorage, []

    def racing(url, **kwargs):
        calls.append(url)
        if len(calls) == 1:
            raise OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(url, **kwargs)

    monkeypatch.setattr("fwm_rl.train.tune.time.sleep", lambda _: None)
    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    assert isinstance(open_storage(url, heartbeat_s=60), real) and len(calls) == 2

    def locked(url, **kwargs):
        calls.append(url)
        raise OperationalError("SELECT", {}, Exception("database is locked"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", locked)
    calls.clear()
    with pytest.raises(UserError, match="cannot open it .*database is locked"):
        open_storage(url, heartbeat_s=60)
    assert len(calls) == 1


def test_open_storage_keeps_the_password_out_of_its_error():
    with pytest.raises(UserError) as error:
        open_storage("postgresql+psycopg2://user:secret@127.0.0.1:1/db", heartbeat_s=60)
    assert "secret" not in str(error.value) and "***" in str(error.value)
