"""Run directories never lose data: validation before replacing, the run lock, resume without a checkpoint, edited
configs, truncated and half-written checkpoints, no stub directories, and one line when training goes non-finite.
Each test checks the message, the exit status and that the run directory's files are intact."""
from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fwm_rl.train import rl
from fwm_rl.train.agent_factory import algorithm_class
from fwm_rl.train.checkpoints import restore_agent
from fwm_rl.train.cli import main
from fwm_rl.train.config import TrainConfig
from fwm_rl.train.rundir import LOCK_FILE, RunDir
from test_cli_rl import TINY, assert_same_parameters, metrics_without_timing

SMALL = {**TINY, "total_timesteps": 160, "eval_freq": 80}  # checkpoints at 40, 80, 120, 160


def tiny_argv(config: dict) -> list[str]:
    argv = ["--no-progress-bar"]
    for key, value in config.items():
        pairs = [f"{k}={v}" for k, v in value.items()] if isinstance(value, dict) else [str(value)]
        argv += [f"--{key.replace('_', '-')}", *pairs]
    return argv


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


def error_line(err: str) -> str:
    """The one error line of a failed command (warnings may come before it)."""
    lines = [line for line in err.strip().splitlines() if not line.startswith("fwm-rl: warning: ")]
    assert len(lines) == 1 and lines[0].startswith("fwm-rl: error: "), err
    return lines[0]


def snapshot(run_dir: Path) -> dict[str, str]:
    """Every file of a run directory (but its lock) -> a hash of its bytes."""
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file() and p.name != LOCK_FILE}


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    rl.train(TrainConfig(**SMALL), run_dir=run_dir, progress_bar=False, quiet=True)
    return run_dir


@pytest.fixture
def run_copy(small_run, tmp_path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(small_run, copy)
    return copy


def test_overwrite_with_an_option_that_fails_late_keeps_the_old_run(run_copy, capsys):
    before = snapshot(run_copy)
    code, _, err = run_main(["train", "--run-dir", str(run_copy), "--overwrite", *tiny_argv(SMALL),
                             "--core-kwargs", "no_such_option=3"], capsys)
    assert code == 1 and "no_such_option" in error_line(err)
    assert snapshot(run_copy) == before


@pytest.mark.parametrize("option, message", [
    (["--core-kwargs", "no_such_option=3"], "no_such_option"),
    (["--learning-rate", "-1"], "learning_rate must be"),
    (["--gamma", "2"], "gamma must be"),
    (["--gamma", "1e30"], "gamma must be"),
    (["--env-id", "FWM/Nowhere-v0"], "unknown env id 'FWM/Nowhere-v0'"),
    (["--env-kwargs", "no_such_key=3"], "unknown FWM/GraphNav-v0 option 'no_such_key'; allowed: split, "),
    (["--core-kwargs", "memory_size=1000"], "GiB of recurrent state"),
    (["--device", "tpu"], "device 'tpu' is not a torch device; use auto, cpu, cuda, cuda:N or mps"),
], ids=["core-kwargs", "learning-rate", "gamma-2", "gamma-1e30", "env-id", "env-kwargs", "memory", "device"])
def test_a_start_that_fails_validation_leaves_no_run_directory(option, message, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "new"
    code, _, err = run_main(["train", "--run-dir", str(run_dir), *tiny_argv(SMALL), *option], capsys)
    assert code == 1 and message in error_line(err)
    assert not run_dir.exists() and not (tmp_path / "runs").exists()


def test_memory_estimate_names_the_gibibytes(tmp_path, capsys):
    code, _, err = run_main(["train", "--runs-dir", str(tmp_path), "--core-kwargs", "memory_size=1000"], capsys)
    line = error_line(err)
    from fwm_rl.train.agent_factory import default_critic

    # FWM state per env row: h, c (32 each) + F (1000^3) floats; 64 envs x 31 steps x 4 bytes, x 2 for a critic core
    expected = (2 * 32 + 1000**3) * 4 * 64 * 31 * (2 if default_critic("ppo") == "separate" else 1) / 2**30
    assert code == 1 and f"{expected:,.1f} GiB" in line and not any(tmp_path.iterdir())


HOLD_LOCK = """
import sys, time
from fwm_rl.train.rundir import RunDir
with RunDir(sys.argv[1]).locked():
    print("locked", flush=True)
    time.sleep(600)
"""


def hold_lock(run_dir: Path) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    return holder


@pytest.mark.parametrize("command", ["resume", "overwrite"])
def test_a_second_writer_is_told_the_pid_of_the_first_and_changes_nothing(command, run_copy, capsys):
    argv = (["train", "--resume", str(run_copy), "--total-timesteps", "200", "--no-progress-bar"]
            if command == "resume" else ["train", "--run-dir", str(run_copy), "--overwrite", *tiny_argv(SMALL)])
    holder = hold_lock(run_copy)
    try:
        before = snapshot(run_copy)
        code, _, err = run_main(argv, capsys)
        assert code == 1 and f"run {run_copy} in use by pid {holder.pid}" in error_line(err)
        assert snapshot(run_copy) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over(run_copy, capsys):
    holder = hold_lock(run_copy)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert (run_copy / LOCK_FILE).read_text().strip() == str(holder.pid)  # the dead writer's pid is still there
    code, _, err = run_main(["train", "--resume", str(run_copy), "--total-timesteps", "200", "--no-progress-bar"],
                            capsys)
    assert code == 0, err
    assert RunDir(run_copy).checkpoints()[-1].name == "step_000000000200.ckpt"


def test_resume_without_a_checkpoint_starts_over_and_logs_each_step_once(small_run, run_copy, capsys):
    shutil.rmtree(run_copy / "checkpoints")
    (run_copy / "model.zip").unlink()
    code, _, err = run_main(["train", "--resume", str(run_copy), "--no-progress-bar"], capsys)
    assert code == 0, err
    rows = metrics_without_timing(run_copy)
    assert len(rows) == len(metrics_without_timing(small_run))
    assert rows == metrics_without_timing(small_run)  # seeded: the same run again, each row once
    assert_same_parameters(small_run / "model.zip", run_copy / "model.zip")


def test_a_hand_edited_config_is_refused_on_resume_naming_the_changed_keys(run_copy, capsys):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config.update(learning_rate=0.1, gamma=0.5, total_timesteps=200)
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    before = snapshot(run_copy)
    code, _, err = run_main(["train", "--resume", str(run_copy), "--no-progress-bar"], capsys)
    line = error_line(err)
    assert code == 1 and "(learning_rate, gamma changed)" in line
    assert snapshot(run_copy) == before


def test_an_edit_of_a_resumable_field_is_taken_on_resume(run_copy, capsys):
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    config["total_timesteps"] = 200
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    code, _, err = run_main(["train", "--resume", str(run_copy), "--no-progress-bar"], capsys)
    assert code == 0, err
    assert RunDir(run_copy).checkpoints()[-1].name == "step_000000000200.ckpt"


def test_a_checkpoint_of_an_older_version_resumes_again_after_a_resume_wrote_the_new_fields(run_copy, capsys):
    """A version that added ``next_obs_coef``: the checkpoint and config.yaml lack it; the first resume writes its
    resolved value into config.yaml and stops before a checkpoint (here: nothing left to train), and a later resume
    must not read that as a hand edit."""
    run = RunDir(run_copy)
    _, step, payload = run.read_newest_checkpoint()
    del payload["config"]["next_obs_coef"]
    run.write_checkpoint(step, payload)
    config = yaml.safe_load((run_copy / "config.yaml").read_text())
    del config["next_obs_coef"]
    (run_copy / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for total in (step, step + 40):
        code, _, err = run_main(["train", "--resume", str(run_copy), "--total-timesteps", str(total),
                                 "--no-progress-bar"], capsys)
        assert code == 0, err
    assert yaml.safe_load((run_copy / "config.yaml").read_text())["next_obs_coef"] == 0.0
    assert run.checkpoints()[-1].name == f"step_{step + 40:012d}.ckpt"


def test_resume_after_a_truncated_checkpoint_falls_back_and_ends_as_the_uninterrupted_run(small_run, run_copy,
                                                                                         capsys):
    checkpoints = RunDir(run_copy).checkpoints()  # 40, 80, 120, 160: a "kill" while 120 was being written
    checkpoints[-1].unlink()
    (run_copy / "model.zip").unlink()
    truncated = checkpoints[-2]
    truncated.write_bytes(truncated.read_bytes()[:1000])
    code, _, err = run_main(["train", "--resume", str(run_copy), "--no-progress-bar"], capsys)
    assert code == 0, err
    assert (f"checkpoint {truncated.name} is unreadable" in err and "falling back to the previous checkpoint" in err)
    kept = truncated.with_name(truncated.name + ".corrupt")
    assert kept.stat().st_size == 1000  # kept as it was, beside the checkpoint rewritten at that step
    assert_same_parameters(small_run / "model.zip", run_copy / "model.zip")
    assert metrics_without_timing(run_copy) == metrics_without_timing(small_run)


WRITE_THEN_DIE = """
import os, pathlib, sys, time
from fwm_rl.train.rundir import RunDir
run = RunDir(sys.argv[1])
run.write_checkpoint(1, {"weights": list(range(1000))})

def half_then_hang(self, data):  # the second write stops half-way, until the process is killed
    with open(self, "wb") as f:
        f.write(data[: len(data) // 2])
        f.flush()
        os.fsync(f.fileno())
    print("writing", flush=True)
    time.sleep(600)

pathlib.Path.write_bytes = half_then_hang
run.write_checkpoint(2, {"weights": list(range(2000))})
"""


def test_kill_9_during_a_checkpoint_write_leaves_the_previous_checkpoint_loadable(tmp_path):
    writer = subprocess.Popen([sys.executable, "-c", WRITE_THEN_DIE, str(tmp_path / "run")], stdout=subprocess.PIPE,
                              text=True)
    assert writer.stdout.readline().strip() == "writing"
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait()
    run = RunDir(tmp_path / "run")
    leftovers = [p.name for p in run.checkpoint_dir.iterdir()]
    assert any(name.endswith(".tmp") for name in leftovers)  # the half-written file never took the checkpoint's name
    path, step, payload = run.read_newest_checkpoint()
    assert path.name == "step_000000000001.ckpt" and step == 1 and payload["weights"] == list(range(1000))
    assert [p.name for p in run.checkpoints()] == ["step_000000000001.ckpt"]


def test_training_that_goes_non_finite_stops_with_one_line_and_a_finite_last_checkpoint(tmp_path, capsys):
    run_dir = tmp_path / "diverge"
    code, _, err = run_main(["train", "--run-dir", str(run_dir), "--no-progress-bar", "--algo", "a2c", "--core", "mlp",
                             "--net-arch", "[]", "--optimizer", "rmsprop", "--learning-rate", "1e30",
                             "--max-grad-norm", "inf", "--n-envs", "8", "--eval-split", "none", "--checkpoint-freq",
                             "240", "--threads", "1"], capsys)
    line = error_line(err)
    checkpoints = RunDir(run_dir).checkpoints()
    assert code == 1 and "training stopped: non-finite loss at update 1" in line
    assert f"last good checkpoint {checkpoints[-1]}" in line and "lower --learning-rate" in line
    _, _, payload = RunDir(run_dir).read_newest_checkpoint()
    model = restore_agent(payload, algorithm_class("a2c"), "cpu")
    assert all(bool(p.isfinite().all()) for p in model.policy.parameters())


def test_no_checkpoint_is_written_with_non_finite_parameters(tmp_path):
    import torch

    from fwm_rl.agents import NonFiniteError
    from fwm_rl.train.runner import RunConfig, RunResult, Trainer

    class Tiny(Trainer):
        config_class, command = RunConfig, "tiny"

        def fit(self, run, start_step):
            return RunResult(run.path, 0)

    module = torch.nn.Linear(2, 2)
    run = RunDir(tmp_path / "run")
    Tiny(RunConfig()).save_checkpoint(run, 1, {"model": module.state_dict()}, module, update=0)
    with torch.no_grad():
        module.weight[0, 1] = float("nan")
    with pytest.raises(NonFiniteError) as info:
        Tiny(RunConfig()).save_checkpoint(run, 2, {"model": module.state_dict()}, module, update=1)
    assert info.value.quantity == "parameters (weight)" and info.value.update == 1
    assert [p.name for p in run.checkpoints()] == ["step_000000000001.ckpt"]
