"""`fwm-rl sweep` and `fwm-rl report`: a real 2 configs x 2 seeds sweep of tiny runs through the command line, killed
mid-run and resumed, then aggregated; the statistics against independent computations."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy.stats import bootstrap

from fwm_rl.train.cli import main
from fwm_rl.train.report import iqm, probability_of_improvement, write_report
from fwm_rl.train.sweep import runs_to_do, selection_warning
from test_cli_rundir import run_main as cli  # fwm-rl ARGV in this process: (exit code, stdout, stderr)

CONFIGS = ["gridmaze-mlp", "gridmaze-lstm"]
RUNS = [f"{config}-seed{seed}" for config in CONFIGS for seed in (0, 1)]
# One update of 4 envs x 8 steps per 32 steps, evaluated on 2 val mazes after each update and checkpointed, for a
# wall-clock budget of 1.8 s: long enough to be killed in the middle, short enough for the suite.
TINY = ["--set", "n_envs=4", "--set", "n_steps=8", "--set", "batch_size=32", "--set", "n_epochs=1",
        "--set", "hidden_size=8", "--set", "total_timesteps=1e9", "--set", "eval_freq=32", "--set", "eval_episodes=2",
        "--set", "checkpoint_freq=32", "--time-budget", "0.03", "--eval-episodes", "3", "--no-progress-bar"]
REPS = 2000


def sweep_args(runs_dir: Path, jobs: int) -> list[str]:
    return ["sweep", "--config", *CONFIGS, "--seeds", "2", "--jobs", str(jobs), "--runs-dir", str(runs_dir),
            "--name", "tiny", *TINY]


def manifest(folder: Path) -> dict:
    return json.loads((folder / "sweep.json").read_text())


def file_stamps(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.stat().st_size)
            for path in sorted(folder.rglob("*")) if path.is_file()}


def test_gru_configs_are_the_lstm_configs_with_a_gru_core():
    configs = Path(__file__).parents[1] / "train" / "configs"
    for env in ("graphnav", "gridmaze"):
        lstm = yaml.safe_load((configs / f"{env}-lstm.yaml").read_text())
        gru = yaml.safe_load((configs / f"{env}-gru.yaml").read_text())
        assert (gru["experiment"], gru["core"], gru["eval_split"]) == (f"{env}-gru", "gru", "val")
        differ = {key for key in lstm.keys() | gru.keys() if lstm.get(key) != gru.get(key)}
        assert differ <= {"experiment", "core", "eval_split"}, f"{env}-gru drifted from {env}-lstm in {differ}"


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory):
    """A sweep killed (SIGKILL, the sweep and its runs) once a run has finished while another trains past its first
    checkpoint, then rerun with the same command. Returns the folder, the manifest at the kill, the runs whose
    directory had its config at the kill, and the file stamps of the runs finished by then."""
    runs_dir = tmp_path_factory.mktemp("sweeps")
    folder = runs_dir / "tiny"
    sweep = subprocess.Popen([sys.executable, "-m", "fwm_rl", *sweep_args(runs_dir, jobs=2)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 120
    try:
        while True:
            assert sweep.poll() is None, f"the sweep ended before it could be killed: {sweep.stderr.read()}"
            assert time.monotonic() < deadline, "the sweep made no progress in 120 s"
            runs = manifest(folder)["runs"] if (folder / "sweep.json").exists() else {}
            if (any(run["state"] == "done" for run in runs.values())
                    and any(run["state"] == "training" and any((folder / name / "checkpoints").glob("*.ckpt"))
                            for name, run in runs.items())):
                break
            time.sleep(0.1)
        os.kill(sweep.pid, signal.SIGKILL)
        at_kill = manifest(folder)
        with_config = {name for name in at_kill["runs"] if (folder / name / "config.yaml").exists()}
        for run in at_kill["runs"].values():
            if run["state"] == "training" and run.get("pid"):
                try:
                    os.kill(run["pid"], signal.SIGKILL)
                except ProcessLookupError:  # it ended with its parent
                    pass
    finally:
        sweep.kill()
        sweep.wait()
        sweep.stderr.close()
    stamps = {name: file_stamps(folder / name) for name, run in at_kill["runs"].items() if run["state"] == "done"}
    with pytest.raises(SystemExit) as rerun:
        main(sweep_args(runs_dir, jobs=2))
    assert rerun.value.code == 0
    return folder, at_kill, with_config, stamps


def test_killed_sweep_redoes_only_unfinished_runs(killed_and_resumed):
    folder, at_kill, with_config, stamps = killed_and_resumed
    runs = manifest(folder)["runs"]
    assert sorted(runs) == sorted(RUNS)
    assert all(run["state"] == "done" and set(run["evaluations"]) == {"test"} for run in runs.values())
    states = {name: run["state"] for name, run in at_kill["runs"].items()}
    killed = [name for name, state in states.items() if state == "training"]
    assert stamps and killed
    # Runs finished before the kill are untouched, file by file, and were trained once.
    for name, before in stamps.items():
        assert file_stamps(folder / name) == before and runs[name]["attempts"] == 1
    # Killed runs were trained again, continuing their run directory where it had its config.
    for name in killed:
        commands = [line for line in (folder / "logs" / f"{name}.log").read_text().splitlines()
                    if line.startswith("$") and " train " in line]
        assert len(commands) == runs[name]["attempts"] == 2 and "--resume" not in commands[0]
        assert ("--resume" in commands[1]) == (name in with_config)
    assert any("resuming" in (folder / name / "log.txt").read_text() for name in killed)
    for name in set(RUNS) - set(stamps) - set(killed):  # not started at the kill
        assert runs[name]["attempts"] == 1
    # Each run's final evaluation played the test split with the requested episodes, on the final model.
    for name in RUNS:
        report = json.loads((folder / runs[name]["evaluations"]["test"]).read_text())
        assert report["env_kwargs"]["split"] == "test" and report["rows"][name]["episodes"] == 3
        assert report["model"].endswith(f"{name}/model.zip")


def test_unfinished_runs_go_seed_by_seed_so_a_stopped_sweep_holds_every_agent():
    states = {("a", 0): "done", ("a", 1): "pending", ("a", 2): "training", ("b", 0): "failed", ("b", 1): "pending",
              ("b", 2): "pending", ("c", 0): "interrupted", ("c", 1): "done", ("c", 2): "pending"}
    runs = {f"{agent}-seed{seed}": {"agent": agent, "seed": seed, "state": state}
            for (agent, seed), state in sorted(states.items())}  # the manifest file's (alphabetical) order
    assert runs_to_do(runs) == ["b-seed0", "c-seed0", "a-seed1", "b-seed1", "a-seed2", "b-seed2", "c-seed2"]


def test_rerun_of_a_finished_sweep_runs_nothing_and_other_settings_are_refused(killed_and_resumed, capsys):
    folder = killed_and_resumed[0]
    runs_and_evaluations = [folder / name for name in RUNS] + [folder / "evaluations"]
    before, before_manifest = [file_stamps(path) for path in runs_and_evaluations], manifest(folder)
    code, _, err = cli(sweep_args(folder.parent, jobs=2), capsys)
    assert code == 0 and "4 runs, 4 done, 0 to run" in err
    assert [file_stamps(path) for path in runs_and_evaluations] == before and manifest(folder) == before_manifest
    code, _, err = cli(["sweep", "--resume", str(folder), "--no-progress-bar"], capsys)
    assert code == 0 and "2 at a time" in err and manifest(folder)["jobs"] == 2  # --jobs is remembered
    code, _, err = cli([*sweep_args(folder.parent, jobs=2), "--eval-splits", "test", "val"], capsys)
    assert code == 1 and err.count("\n") == 1 and "eval_splits" in err and "--resume" in err


def test_second_sweep_writer_is_refused(killed_and_resumed, capsys):
    from fwm_rl.train.io import exclusive_lock

    folder = killed_and_resumed[0]
    with exclusive_lock(folder / ".sweep.lock", str):
        code, _, err = cli(["sweep", "--resume", str(folder)], capsys)
    assert code == 1 and err.count("\n") == 1 and "another `fwm-rl sweep` is writing" in err


@pytest.mark.parametrize("argv, message", [
    (["--config", "gridmaze-nope", "--seeds", "2"], "unknown config 'gridmaze-nope'"),
    (["--config", "gridmaze-mlp", "--seeds", "0"], "--seeds must be >= 1"),
    (["--config", "gridmaze-mlp", "--seeds", "2", "--set", "seed=3"], "the sweep sets seed itself"),
    (["--config", "gridmaze-mlp", "--seeds", "2", "--set", "n_envs"], "--set expects KEY=VALUE"),
    (["--config", "gridmaze-mlp", "--seeds", "2", "--jobs", "0"], "--jobs must be >= 1"),
    (["--config", "gridmaze-mlp", "--seeds", "2", "--command", "supervised"], "config file not found: gridmaze-mlp"),
    (["--config", "a.yaml", "--seeds", "2", "--command", "supervised", "--time-budget", "5"],
     "only `train` runs take --time-budget"),
    (["--resume", "somewhere", "--seeds", "3"], "--resume continues a sweep with its own settings; drop --seeds"),
])
def test_sweep_rejects_bad_input_with_one_line(tmp_path, capsys, argv, message):
    code, _, err = cli(["sweep", "--runs-dir", str(tmp_path), *argv], capsys)
    assert code == 1 and err.count("\n") == 1 and message in err
    assert not (tmp_path / "sweep").exists()


def test_report_matches_a_bootstrap_computed_here(killed_and_resumed, tmp_path, capsys):
    folder = killed_and_resumed[0]
    code, out, _ = cli(["report", str(folder), "--out", str(tmp_path), "--reps", str(REPS), "--seed", "7"], capsys)
    assert code == 0 and "| gridmaze-mlp | 2 |" in out
    report = json.loads((tmp_path / "report.json").read_text())
    test_table = next(table for table in report["tables"] if table["split"] == "test")
    finals = {}
    for name in RUNS:
        rows = json.loads((folder / "evaluations" / name / "test.json").read_text())["rows"]
        finals.setdefault(name.rsplit("-seed", 1)[0], []).append(rows[name]["return_mean"])
    for agent, values in finals.items():
        x = np.array(values)
        row = test_table["agents"][agent]
        k = int(0.25 * len(x))
        assert row["iqm"]["value"] == pytest.approx(np.sort(x)[k:len(x) - k].mean())
        assert row["mean"]["value"] == pytest.approx(x.mean())
        here = bootstrap((x,), lambda s, axis: np.mean(s, axis=axis), n_resamples=REPS, method="percentile",
                         rng=np.random.default_rng(7)).confidence_interval
        assert (row["mean"]["low"], row["mean"]["high"]) == pytest.approx((here.low, here.high))
        # With two runs the resampled means are min, midpoint or max (1/4, 1/2, 1/4): the 95% interval is [min, max].
        assert (row["iqm"]["low"], row["iqm"]["high"]) == pytest.approx((x.min(), x.max()))
    beats = test_table["probability_of_improvement"]
    assert beats["gridmaze-mlp"]["gridmaze-lstm"]["value"] + beats["gridmaze-lstm"]["gridmaze-mlp"]["value"] == 1
    # Val was evaluated during training only: its scores are the runs' last logged val/return, with curves.
    val_table = next(table for table in report["tables"] if table["split"] == "val")
    assert val_table["source"].startswith("last logged val/return")
    assert (tmp_path / "curves_val.png").stat().st_size > 1000 and "![val return](curves_val.png)" in out


def test_report_refuses_a_sweep_with_no_finished_runs(killed_and_resumed, tmp_path, capsys):
    data = manifest(killed_and_resumed[0])
    for run in data["runs"].values():
        run["state"] = "pending"
    (tmp_path / "sweep.json").write_text(json.dumps(data))
    code, _, err = cli(["report", str(tmp_path)], capsys)
    assert code == 1 and err.count("\n") == 1 and "has no finished runs yet (0 of 4)" in err
    code, _, err = cli(["report", str(tmp_path / "nowhere")], capsys)
    assert code == 1 and err.count("\n") == 1 and "is not a sweep folder" in err


def test_report_names_runs_whose_final_score_is_undefined(killed_and_resumed, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(killed_and_resumed[0], folder, ignore=shutil.ignore_patterns("checkpoints", "tb", "*.zip"))
    path = folder / "evaluations" / "gridmaze-lstm-seed1" / "test.json"
    report = json.loads(path.read_text())
    report["rows"]["gridmaze-lstm-seed1"]["return_mean"] = None  # how `evaluate --json` writes a NaN
    path.write_text(json.dumps(report))
    result = write_report(folder, tmp_path / "report", splits=["test"], reps=100)
    (table,) = result["tables"]
    assert table["undefined"] == ["gridmaze-lstm-seed1"] and table["agents"]["gridmaze-lstm"]["runs"] == 1
    assert "Left out, return undefined (NaN): gridmaze-lstm-seed1." in result["markdown"]


def test_statistics_against_brute_force_and_a_numpy_bootstrap():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 1.0, size=7), np.array([0.5, 1.5, 1.5, 2.0, -1.0])
    assert iqm(x) == pytest.approx(np.sort(x)[1:6].mean())  # 7 runs: trim int(1.75) = 1 from each end
    pairs = [(a > b) + 0.5 * (a == b) for a in np.append(x, 1.5) for b in y]
    assert probability_of_improvement(np.append(x, 1.5), y) == pytest.approx(np.mean(pairs))
    # The report's interval against a plain bootstrap written here (independent draws: loose tolerance).
    scores = {"a": dict(zip("abcdefg", x)), "b": dict(zip("abcde", y))}
    from fwm_rl.train.report import FinalScores, aggregate

    table = aggregate(FinalScores("test", "final evaluation", scores, {}, []), reps=20_000, seed=0)
    draws = x[np.random.default_rng(1).integers(0, len(x), size=(20_000, len(x)))]
    low, high = np.percentile(np.sort(draws, axis=1)[:, 1:6].mean(axis=1), [2.5, 97.5])
    interval = table["agents"]["a"]["iqm"]
    assert interval.low == pytest.approx(low, abs=0.05 * np.ptp(x)) and interval.high == pytest.approx(high, abs=0.05 * np.ptp(x))


SUPERVISED_CONFIG = """task: art
core: lstm
hidden_size: 8
steps: 20
batch_size: 8
eval_freq: 10
eval_batch_size: 16
train_size: 64
val_size: 32
test_size: 32
data_dir: {data_dir}
"""


def _first_step_at_or_below(metrics_csv: Path, column: str, threshold: float) -> float:
    """Written here from the CSV: the first step whose ``column`` is set and <= threshold (NaN if none)."""
    import csv

    with metrics_csv.open(newline="") as f:
        for row in csv.DictReader(f):
            if row.get(column) not in (None, "") and float(row[column]) <= threshold:
                return float(row["step"])
    return float("nan")


@pytest.mark.parametrize("selected_on, eval_splits, warned", [
    ("val", ["val", "test"], False),  # val exists for selection; the final model is not chosen on it
    ("test", ["test"], True),
    ("test", ["val"], False),
    ("test_large", ["test", "test_large"], True),
    (None, ["test"], False),
])
def test_a_split_played_during_training_and_reported_at_the_end_is_warned_about_unless_it_is_val(
        selected_on, eval_splits, warned):
    warning = selection_warning("run-seed0", selected_on, eval_splits)
    assert (warning is not None) == warned
    if warned:
        assert f"run-seed0 was evaluated on {selected_on} during training" in warning
        assert f"keep {selected_on} for the final evaluation" in warning and "\n" not in warning


def test_supervised_sweep_of_configs_x_seeds_reports_final_error_steps_to_threshold_and_curves(tmp_path, capsys):
    """Two configs x two seeds of tiny ART runs with a periodic test evaluation: the report's final test error is
    each run's last logged test/error, its steps-to-threshold the first step at or below it (read here from the
    CSV), and the test-error curves are drawn."""
    for core in ("lstm", "gru"):
        (tmp_path / f"art-{core}.yaml").write_text(
            SUPERVISED_CONFIG.format(data_dir=tmp_path / "data").replace("core: lstm", f"core: {core}")
            .replace("eval_freq: 10", "eval_freq: 5") + "eval_test_periodically: true\nlearning_rate: 0.01\n")
    code, _, err = cli(["sweep", "--command", "supervised", "--config", str(tmp_path / "art-lstm.yaml"),
                        str(tmp_path / "art-gru.yaml"), "--seeds", "2", "--jobs", "2", "--runs-dir", str(tmp_path),
                        "--name", "art", "--no-progress-bar"], capsys)
    assert code == 0, err
    folder = tmp_path / "art"
    runs = [f"art-{core}-seed{seed}" for core in ("lstm", "gru") for seed in (0, 1)]
    finals = {}
    for name in runs:
        rows = [line.split(",") for line in (folder / name / "metrics.csv").read_text().splitlines()]
        column = rows[0].index("test/error")
        finals[name] = [float(row[column]) for row in rows[1:] if row[column] != ""][-1]
    threshold = float(np.median(list(finals.values())))  # some runs reach it, maybe not all
    code, out, _ = cli(["report", str(folder), "--metric", "error", "--lower-is-better", "--splits", "test",
                        "--threshold", str(threshold), "--reps", "200", "--out", str(tmp_path / "report")], capsys)
    assert code == 0
    (table,) = json.loads((tmp_path / "report" / "report.json").read_text())["tables"]
    for core in ("lstm", "gru"):
        agent = f"art-{core}"
        names = [name for name in runs if name.startswith(agent + "-")]
        assert table["agents"][agent]["scores"] == pytest.approx({name: finals[name] for name in names})
        steps_to = table["steps_to"][agent]
        expected = {name: _first_step_at_or_below(folder / name / "metrics.csv", "test/error", threshold)
                    for name in names}
        assert steps_to["steps"] == pytest.approx({k: (None if np.isnan(v) else v) for k, v in expected.items()})
        reached = [v for v in expected.values() if not np.isnan(v)]
        assert steps_to["reached"] == len(reached) and steps_to["runs"] == 2
        if reached:
            assert steps_to["mean"]["value"] == pytest.approx(np.mean(reached))
    assert sum(hit["reached"] for hit in table["steps_to"].values()) >= 2  # the median is reached by half the runs
    assert (tmp_path / "report" / "curves_test.png").stat().st_size > 0
    assert f"reached error <= {threshold:g}" in out and "| art-gru | 2 |" in out
    # --metric best_error: the test error of each run's best-on-val checkpoint, as its results.json has it.
    code, _, _ = cli(["report", str(folder), "--metric", "best_error", "--lower-is-better", "--reps", "200",
                      "--out", str(tmp_path / "best")], capsys)
    assert code == 0
    (table,) = json.loads((tmp_path / "best" / "report.json").read_text())["tables"]
    assert table["split"] == "test" and table["source"] == "last logged test/best_error in metrics.csv"
    best = {name: json.loads((folder / name / "results.json").read_text())["test/best_error"] for name in runs[:2]}
    assert table["agents"]["art-lstm"]["scores"] == pytest.approx(best)


def test_steps_to_threshold_is_the_first_logged_step_that_reaches_it():
    from fwm_rl.train.report import steps_to_threshold

    steps, errors = [10, 20, 30, 40], [0.5, float("nan"), 0.009, 0.02]
    assert steps_to_threshold(steps, errors, 0.01, lower_is_better=True) == 30
    assert steps_to_threshold(steps, errors, 0.5, lower_is_better=True) == 10
    assert np.isnan(steps_to_threshold(steps, errors, 0.001, lower_is_better=True))
    assert steps_to_threshold(steps, [0.1, 0.95, float("nan"), 0.99], 0.99, lower_is_better=False) == 40


@pytest.mark.parametrize("stop_signal, sigint_ignored_at_start", [
    (signal.SIGINT, False), (signal.SIGTERM, False), (signal.SIGINT, True)], ids=["sigint", "sigterm", "background"])
def test_ctrl_c_or_sigterm_as_a_run_starts_marks_it_interrupted_and_resume_finishes_it(
        tmp_path, stop_signal, sigint_ignored_at_start):
    """Ctrl-C (or SIGTERM, which the sweep takes as a Ctrl-C) right after the run's process starts reaches the run
    while it still imports (killed by SIGINT) or once it trains (it saves and exits 130): either way the run is
    "interrupted", not "failed", and a resume finishes it. A sweep started as a background job (SIGINT ignored, as
    `cmd &` in a script does) takes SIGINT all the same, as a run does."""
    args = ["sweep", "--config", CONFIGS[0], "--seeds", "1", "--runs-dir", str(tmp_path), "--name", "tiny", *TINY]
    sigint_at_start = signal.SIG_IGN if sigint_ignored_at_start else signal.SIG_DFL
    sweep = subprocess.Popen([sys.executable, "-m", "fwm_rl", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, start_new_session=True,
                             preexec_fn=lambda: signal.signal(signal.SIGINT, sigint_at_start))
    folder, deadline = tmp_path / "tiny", time.monotonic() + 120
    try:
        while not ((folder / "sweep.json").exists() and manifest(folder)["runs"][RUNS[0]].get("pid")):
            assert sweep.poll() is None and time.monotonic() < deadline, "the run never started"
            time.sleep(0.01)
        os.kill(sweep.pid, stop_signal)
        code = sweep.wait(timeout=120)
        err = sweep.stderr.read().decode(errors="replace")
    finally:
        sweep.kill()
        sweep.stderr.close()
    log = (folder / "logs" / f"{RUNS[0]}.log").read_text(errors="replace")
    assert code == 130, f"sweep exited {code}: {err}\nrun log:\n{log}"
    assert manifest(folder)["runs"][RUNS[0]]["state"] == "interrupted", log
    with pytest.raises(SystemExit) as resumed:
        main(["sweep", "--resume", str(folder)])
    assert resumed.value.code == 0 and manifest(folder)["runs"][RUNS[0]]["state"] == "done"
