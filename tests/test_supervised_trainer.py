"""The supervised trainer end to end: learning ART, run-directory files, exact resume, CLI errors, data parallelism."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
from pathlib import Path

import pytest
import torch
import yaml
import torch.multiprocessing as mp

from fwm_rl import train as train_package
from fwm_rl.train.cli import main
from fwm_rl.train.rundir import RunDir
from fwm_rl.train.supervised import SupervisedConfig, load_config, train
from test_supervised_tasks import write_corpus


def run_main(argv: list[str], capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(["supervised", *argv])
    return exit_info.value.code, capsys.readouterr().err


SUPERVISED_CONFIGS = sorted((Path(train_package.__file__).parent / "configs" / "supervised").glob("*.yaml"))


@pytest.mark.parametrize("path", SUPERVISED_CONFIGS, ids=lambda path: path.stem)
def test_every_shipped_supervised_config_loads_with_each_of_its_fields(path):
    config = load_config(path)
    for key, value in yaml.safe_load(path.read_text()).items():
        assert getattr(config, key) == value, key


ART_SMALL = dict(task="art", pairs=2, train_size=20_000, val_size=1000, test_size=1000, threads=1)


def test_small_fw_lstm_learns_art_with_two_pairs(tmp_path):
    cfg = SupervisedConfig(**ART_SMALL, core="fwlstm", hidden_size=64, learning_rate=3e-3, batch_size=64, steps=300,
                           eval_freq=150, data_dir=str(tmp_path / "data"))
    results = train(cfg, run_dir=tmp_path / "run", progress_bar=False)
    assert results["test/best_acc"] > 0.9  # chance is ~0.1, the "guess a seen digit" plateau 0.5


@pytest.mark.parametrize(
    "args",
    [
        ["--task", "mart", "--pairs", "3", "--train-size", "2000", "--val-size", "200", "--test-size", "200"],
        ["--task", "catbabi", "--stories-per-task", "10", "--seq-len", "30", "--batch-size", "4", "--mode", "lm"],
        ["--task", "lm", "--tie-weights", "--bptt", "10", "--batch-size", "4", "--eval-batch-size", "2"],
    ],
    ids=["mart", "catbabi", "lm"],
)
def test_each_task_trains_from_the_command_line_and_writes_its_run_directory(tmp_path, args, capsys):
    task = args[1]
    write_corpus(tmp_path / "corpus")
    data = {"mart": ["--data-dir", str(tmp_path / "art")], "lm": ["--data-dir", str(tmp_path / "corpus")]}.get(task, [])
    run_dir = tmp_path / "run"
    argv = [*args, *data, "--hidden-size", "16", "--steps", "6", "--eval-freq", "3", "--run-dir", str(run_dir),
            "--threads", "1", "--eval-test-periodically", "--no-progress-bar"]
    assert run_main(argv, capsys)[0] == 0
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["steps"] == 6 and config["batch_size"] is not None and config["provenance"]["fwm_rl_version"]
    assert (run_dir / "best_model.pt").exists()
    assert [p.name for p in RunDir(run_dir).checkpoints()] == ["step_000000000003.ckpt", "step_000000000006.ckpt"]
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    assert [r["step"] for r in rows] == ["3", "6", "6"]
    assert all(k == "step" or k.split("/")[0] in ("train", "val", "test") for k in rows[0])
    results = json.loads((run_dir / "results.json").read_text())
    assert {"best_step", "val/loss", "test/best_loss", "parameters"} <= set(results)
    if task == "catbabi":
        assert "test/best_acc_task19" in results
    if task == "lm":
        assert results["test/best_ppl"] == pytest.approx(torch.tensor(results["test/best_loss"]).exp().item())


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_resume_continues_exactly_where_the_run_stopped(tmp_path, capsys):
    """Carried state, stream position and optimiser moments all survive: 3 + 3 steps equal 6 straight steps."""
    common = dict(task="catbabi", core="lstm", hidden_size=16, stories_per_task=10, seq_len=30, batch_size=4,
                  eval_freq=3, threads=1)
    straight = train(SupervisedConfig(**common, steps=6), run_dir=tmp_path / "a", progress_bar=False)
    train(SupervisedConfig(**common, steps=3), run_dir=tmp_path / "b", progress_bar=False)
    assert run_main(["--resume", str(tmp_path / "b"), "--steps", "6", "--no-progress-bar"], capsys)[0] == 0
    _, step, payload = RunDir(tmp_path / "b").read_newest_checkpoint()
    resumed = payload["model"]
    assert step == 6
    for name, value in straight["model"].state_dict().items():
        torch.testing.assert_close(resumed[name], value, rtol=0, atol=0)


ART_CURRICULUM = dict(task="art", core="lstm", hidden_size=16, pairs=3, train_size=2000, val_size=500,
                      test_size=200, batch_size=32, eval_freq=3, threads=1,
                      curriculum={"sizes": [2, 3], "promote": 0.0, "demote": -1.0})


def test_a_pairs_curriculum_trains_on_fewer_pairs_until_promoted_and_holds_out_the_target(tmp_path, monkeypatch):
    """promote 0 promotes at the first evaluation: steps 1-3 train on K = 2 (7 tokens), the rest on K = 3 (9
    tokens); the val and test splits hold K = 3 throughout, and the decision is logged."""
    from fwm_rl.train.tasks.art import ARTTask

    lengths, evaluated = [], []
    train_batch, eval_batches = ARTTask.train_batch, ARTTask.eval_batches
    monkeypatch.setattr(ARTTask, "train_batch", lambda self, step: lengths.append(
        (batch := train_batch(self, step)).tokens.shape[0]) or batch)
    monkeypatch.setattr(ARTTask, "eval_batches", lambda self, split: evaluated.append(
        (split, next(iter(eval_batches(self, split))).tokens.shape[0])) or eval_batches(self, split))
    cfg = SupervisedConfig(**ART_CURRICULUM, steps=6, data_dir=str(tmp_path / "data"))
    train(cfg, run_dir=tmp_path / "run", progress_bar=False)
    assert lengths == [7, 7, 7, 9, 9, 9]
    assert set(evaluated) == {("val", 9), ("test", 9), ("val_K2", 7)}  # K = 2 only to decide the promotion
    rows = list(csv.DictReader((tmp_path / "run" / "metrics.csv").open()))
    assert [(r["curriculum/pairs"], r["curriculum/level"]) for r in rows[:2]] == [("2", "1"), ("3", "1")]
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["art-K2-seed0-2000-100-0.npz",
                                                                     "art-K3-seed0-2000-500-200.npz"]


def test_a_resumed_curriculum_run_keeps_its_level_and_reaches_the_straight_run(tmp_path, capsys):
    cfg = dict(ART_CURRICULUM, data_dir=str(tmp_path / "data"))
    straight = train(SupervisedConfig(**cfg, steps=6), run_dir=tmp_path / "a", progress_bar=False)
    train(SupervisedConfig(**cfg, steps=3), run_dir=tmp_path / "b", progress_bar=False)
    assert run_main(["--resume", str(tmp_path / "b"), "--steps", "6", "--no-progress-bar"], capsys)[0] == 0
    _, _, payload = RunDir(tmp_path / "b").read_newest_checkpoint()
    assert payload["ranks"][0]["data"]["curriculum"]["level"] == 1
    for name, value in straight["model"].state_dict().items():
        torch.testing.assert_close(payload["model"][name], value, rtol=0, atol=0)


CATBABI_TINY = ["--task", "catbabi", "--core", "lstm", "--hidden-size", "16", "--stories-per-task", "10",
                "--seq-len", "30", "--batch-size", "4", "--eval-freq", "50", "--steps", "8", "--threads", "1",
                "--no-progress-bar"]


def test_time_budget_and_sigterm_save_mid_interval_and_resume_reaches_the_straight_run(tmp_path, capsys,
                                                                                       monkeypatch):
    """A time budget used up after the first step, then a SIGTERM during step 4 of the resumed run: each saves a
    checkpoint at once (between evaluations) and stops (exit 0, then 130); the time budget, not the SIGTERM, leaves
    the test score of the best model so far in results.json; a last resume ends on the weights of 8 straight steps
    and rewrites results.json."""
    from fwm_rl.train.tasks.babi import CatBAbITask

    assert run_main([*CATBABI_TINY, "--run-dir", str(tmp_path / "straight")], capsys)[0] == 0
    run = tmp_path / "stopped"
    code, err = run_main([*CATBABI_TINY, "--run-dir", str(run), "--time-budget", "1e-6"], capsys)
    assert code == 0 and "stopped (time budget) at step 1" in err
    assert RunDir(run).read_newest_checkpoint()[1] == 1
    results = json.loads((run / "results.json").read_text())
    assert (results["steps"], results["stopped"], results["best_step"]) == (1, "time budget", 1)
    assert 0 <= results["test/best_acc"] <= 1
    (run / "results.json").unlink()
    train_batch = CatBAbITask.train_batch

    def sigterm_at_step_3(self, step):
        if step == 3:
            signal.raise_signal(signal.SIGTERM)  # handled in this (main) thread: the run saves after this step
        return train_batch(self, step)

    monkeypatch.setattr(CatBAbITask, "train_batch", sigterm_at_step_3)
    code, err = run_main(["--resume", str(run), "--time-budget", "10", "--no-progress-bar"], capsys)
    assert code == 130 and "SIGTERM: saving" in err and "stopped (interrupted) at step 4" in err
    assert RunDir(run).read_newest_checkpoint()[1] == 4 and not (run / "results.json").exists()
    monkeypatch.setattr(CatBAbITask, "train_batch", train_batch)
    assert run_main(["--resume", str(run), "--no-progress-bar"], capsys)[0] == 0
    (_, step, resumed), (_, _, straight) = (RunDir(path).read_newest_checkpoint() for path in (run, tmp_path / "straight"))
    assert step == 8
    straight_results = json.loads((tmp_path / "straight" / "results.json").read_text())
    assert json.loads((run / "results.json").read_text()) == {**straight_results, "run_dir": str(run)}
    for name, value in straight["model"].items():
        torch.testing.assert_close(resumed["model"][name], value, rtol=0, atol=0)


@pytest.mark.parametrize("task", ["catbabi", "art"])
def test_skipping_the_fwm_reads_trains_like_reading_at_every_step(tmp_path, task):
    """catbAbI QM (reads at the answers only) and ART (at the last step only): the same losses, metrics and weights
    after a few steps, up to float32 rounding of the gradients."""
    common = dict(task=task, core="fwm", hidden_size=16, core_kwargs={"memory_size": 4}, steps=4, eval_freq=2,
                  threads=1, seed=3)
    if task == "catbabi":
        common.update(stories_per_task=10, seq_len=40, batch_size=4, mode="qm")
    else:
        common.update(ART_SMALL, train_size=256, val_size=64, test_size=64, batch_size=16,
                      data_dir=str(tmp_path / "data"))
    runs = {skip: train(SupervisedConfig(**common, skip_reads=skip), run_dir=tmp_path / f"skip-{skip}",
                        progress_bar=False, quiet=True) for skip in (True, False)}
    for key in ("val/loss", "val/acc", "test/best_loss", "test/best_acc"):
        assert runs[True][key] == pytest.approx(runs[False][key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(flat_parameters(runs[True]["model"]), flat_parameters(runs[False]["model"]),
                               rtol=1e-4, atol=1e-5)


def test_read_mask_covers_the_targets_and_scored_positions_or_the_last_step():
    from fwm_rl.train.supervised import read_mask
    from fwm_rl.train.tasks.base import IGNORE, Batch

    targets = torch.tensor([[IGNORE, 3], [5, IGNORE], [IGNORE, IGNORE]])
    scored = torch.tensor([[False, True], [True, False], [False, True]])
    batch = Batch(tokens=torch.zeros(3, 2, dtype=torch.long), targets=targets, scored=scored)
    assert read_mask(batch, "linear").tolist() == [[False, True], [True, False], [False, True]]
    assert read_mask(batch, "mlp_last").tolist() == [False, False, True]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--task", "lm"], "needs --data-dir"),
        (["--task", "lm", "--data-dir", "/no/such/dir"], "/no/such/dir does not exist"),
        (["--core", "transformer"], "unknown core 'transformer'"),
        (["--device", "cuda:0"], "CUDA"),
        (["--task", "art", "--pairs", "27"], "pairs must be in 1..26"),
        (["--task", "art", "--pairs", "4", "--curriculum", "sizes=[2,3]"],
         "numbers of pairs from 2 up to --pairs (4)"),
        (["--task", "art", "--pairs", "4", "--curriculum", "sizes=[3,2,4]"], "curriculum sizes must increase"),
        (["--task", "catbabi", "--curriculum", "sizes=[2,4]"], "option of the art and mart tasks, not of catbabi"),
        (["--resume", "/no/such/run"], "is it a run directory?"),
    ],
)
def test_user_errors_print_one_line_and_exit_non_zero(argv, message, capsys):
    if message == "CUDA" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, err = run_main(argv, capsys)
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("fwm-rl: error: ") and message in lines[0]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, cfg: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2",
                      LOCAL_RANK=str(rank))
    run_dir = cfg.pop("run_dir")
    results = train(SupervisedConfig(**cfg), run_dir=run_dir, progress_bar=False)
    torch.save(flat_parameters(results["model"]), f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_two_data_parallel_ranks_stay_identical_and_match_one_process_with_the_global_batch(tmp_path):
    cfg = dict(ART_SMALL, core="lstm", hidden_size=16, steps=5, eval_freq=5, train_size=2000, val_size=100,
               test_size=100, data_dir=str(tmp_path / "data"))
    ddp_cfg = {**cfg, "batch_size": 8, "run_dir": str(tmp_path / "ddp")}
    mp.spawn(_ddp_worker, args=(_free_port(), ddp_cfg, str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = torch.load(tmp_path / "rank0.pt"), torch.load(tmp_path / "rank1.pt")
    assert torch.equal(rank0, rank1)
    single = train(SupervisedConfig(**cfg, batch_size=16), run_dir=tmp_path / "single", progress_bar=False)
    # The all-reduced mean sums in another order; Adam's g / sqrt(v) magnifies that rounding where a gradient is
    # near 0 (5.8e-6 on one parameter of 16,689 on an AMD EPYC under AVX2).
    torch.testing.assert_close(flat_parameters(single["model"]), rank0, rtol=1e-5, atol=2e-5)


def test_a_loss_that_goes_non_finite_stops_with_one_line_and_finite_checkpoints(tmp_path, capsys):
    run_dir = tmp_path / "diverge"
    code, err = run_main(["--task", "art", "--pairs", "2", "--train-size", "2000", "--val-size", "100",
                          "--test-size", "100", "--data-dir", str(tmp_path / "data"), "--hidden-size", "8",
                          "--steps", "20", "--eval-freq", "1", "--learning-rate", "1e30", "--threads", "1",
                          "--run-dir", str(run_dir), "--no-progress-bar"], capsys)
    lines = [line for line in err.strip().splitlines() if line.startswith("fwm-rl: ")]
    checkpoints = RunDir(run_dir).checkpoints()
    assert code == 1 and len(lines) == 1 and lines[0].startswith("fwm-rl: error: training stopped: non-finite loss")
    assert f"last good checkpoint {checkpoints[-1]}" in lines[0] and "learning rate (1e+30)" in lines[0]
    path, _, payload = RunDir(run_dir).read_newest_checkpoint()
    assert path == checkpoints[-1] and all(bool(value.isfinite().all()) for value in payload["model"].values())
