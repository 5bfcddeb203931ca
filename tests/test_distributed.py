"""Data-parallel RL (DD-PPO style) on 2 CPU ranks with gloo: one update equals a single-process update on the ranks'
rollouts concatenated (computed here from the PPO/A2C losses, independently of the algorithms' code), and
``torchrun -m fwm_rl train`` writes one run directory from rank 0 and resumes."""
from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from stable_baselines3.common.callbacks import BaseCallback

from fwm_rl.agents import ActorCriticStates, RecurrentA2C, RecurrentPPO
from fwm_rl.agents.distributed import DataParallel, rank_seed
from fwm_rl.envs import make_vec_env

N_ENVS, N_STEPS, SEED = 4, 8, 3
POLICY_KWARGS = dict(core="fwm", hidden_size=8, core_kwargs=dict(memory_size=4))
ALGOS = {
    # 2 minibatches of 2 envs per rank, 2 epochs, clipping and entropy on: 4 all-reduced gradient steps
    "ppo": (RecurrentPPO, dict(batch_size=2 * N_STEPS, n_epochs=2, ent_coef=0.01, max_grad_norm=0.5,
                               learning_rate=1e-3)),
    "a2c": (RecurrentA2C, dict(ent_coef=0.01, normalize_advantage=True, learning_rate=1e-3)),
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _RolloutRecorder(BaseCallback):
    """Keeps, when the rollout is complete, what the update reads: the buffer, the initial states, the parameters
    and the numpy RNG state the minibatch order is drawn from."""

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        buffer = self.model.rollout_buffer
        self.record = {
            "buffer": {name: getattr(buffer, name).copy() for name in
                       ("observations", "actions", "log_probs", "advantages", "returns", "episode_starts")},
            "initial_state": tuple(tuple(s.clone() for s in part) for part in buffer.initial_state),
            "parameters": {k: v.clone() for k, v in self.model.policy.state_dict().items()},
            "numpy_rng": np.random.get_state(),
        }


def _agent(algo: str, seed: int, n_envs: int = N_ENVS):
    cls, kwargs = ALGOS[algo]
    env = make_vec_env("FWM/GraphNav-v0", n_envs, seed=seed)
    return cls("MlpFwmPolicy", env, n_steps=N_STEPS, seed=seed, device="cpu", policy_kwargs=POLICY_KWARGS, **kwargs)


def _rank_worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    ranks = DataParallel.from_process_group()
    results = {}
    for algo in ALGOS:
        model = _agent(algo, rank_seed(SEED, N_ENVS, ranks))
        model.set_data_parallel(ranks)
        recorder = _RolloutRecorder()
        model.learn(total_timesteps=2 * N_ENVS * N_STEPS, callback=recorder)  # one rollout per rank, one update
        results[algo] = {**recorder.record, "num_timesteps": model.num_timesteps,
                         "updated": {k: v.clone() for k, v in model.policy.state_dict().items()}}
    stop_votes = ranks.any(rank == 1, False)  # a stop only rank 1 wants is taken by both
    results["stop_votes"] = stop_votes
    torch.save(results, f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{rank}.pt", weights_only=False) for rank in range(2)]


def _concatenated(records: list[dict], envs: list[np.ndarray]) -> dict:
    """The trajectories ``envs[r]`` of each rank ``r``, side by side on the batch axis ``[T, sum B_r]``."""
    def cat(name: str) -> torch.Tensor:
        return torch.as_tensor(np.concatenate([r["buffer"][name][:, e] for r, e in zip(records, envs)], axis=1))

    state = [tuple(torch.cat([r["initial_state"][part][i][torch.as_tensor(e)] for r, e in zip(records, envs)])
                   for i in range(len(records[0]["initial_state"][part]))) for part in range(2)]
    return {"observations": cat("observations"), "actions": cat("actions")[..., 0].long(),
            "old_log_prob": cat("log_probs"), "advantages": cat("advantages"), "returns": cat("returns"),
            "episode_starts": cat("episode_starts"), "state": ActorCriticStates(*state)}


def _reference_update(algo: str, records: list[dict]) -> dict[str, torch.Tensor]:
    """One single-process update, written out here: the PPO (clip) or A2C loss over minibatches that join the
    ranks' minibatches (each rank's env order drawn from its recorded numpy RNG state), advantages standardised
    over the joined minibatch, gradient clipping, the algorithm's optimizer."""
    _, kwargs = ALGOS[algo]
    model = _agent(algo, SEED, n_envs=2 * N_ENVS)  # the policy and optimizer classes only
    policy = model.policy
    policy.load_state_dict(records[0]["parameters"])
    epochs, per_batch = kwargs.get("n_epochs", 1), kwargs.get("batch_size", N_ENVS * N_STEPS) // N_STEPS
    rngs = [np.random.RandomState() for _ in records]
    for rng, record in zip(rngs, records):
        rng.set_state(record["numpy_rng"])
    for _ in range(epochs):
        orders = [rng.permutation(N_ENVS) for rng in rngs]
        for start in range(0, N_ENVS, per_batch):
            batch = _concatenated(records, [order[start : start + per_batch] for order in orders])
            values, log_prob, entropy = policy.evaluate_actions(batch["observations"], batch["actions"],
                                                                batch["state"], batch["episode_starts"])
            advantages = batch["advantages"]
            advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
            if algo == "ppo":
                ratio = torch.exp(log_prob - batch["old_log_prob"])
                policy_loss = -torch.min(advantages * ratio, advantages * ratio.clamp(0.8, 1.2)).mean()
            else:
                policy_loss = -(advantages * log_prob).mean()
            loss = (policy_loss + kwargs["ent_coef"] * -entropy.mean()
                    + model.vf_coef * ((batch["returns"] - values) ** 2).mean())
            policy.optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), model.max_grad_norm)
            policy.optimizer.step()
    return policy.state_dict()


@pytest.mark.parametrize("algo", list(ALGOS))
def test_one_data_parallel_update_equals_one_process_on_the_ranks_rollouts_concatenated(two_ranks, algo):
    records = [rank[algo] for rank in two_ranks]
    for key, value in records[0]["parameters"].items():  # broadcast from rank 0 before the first rollout
        assert torch.equal(value, records[1]["parameters"][key]), key
    assert not np.array_equal(records[0]["buffer"]["observations"], records[1]["buffer"]["observations"])
    assert [r["num_timesteps"] for r in records] == [2 * N_ENVS * N_STEPS] * 2  # every rank counts both ranks' steps
    reference = _reference_update(algo, records)
    for key, value in records[0]["updated"].items():
        assert torch.equal(value, records[1]["updated"][key]), key  # the ranks stay identical
        assert not torch.equal(value, records[0]["parameters"][key]) or "log_std" in key, f"{key} did not move"
        torch.testing.assert_close(value, reference[key], rtol=0, atol=1e-6, msg=key)


def test_a_stop_that_one_rank_wants_is_taken_by_every_rank(two_ranks):
    assert [rank["stop_votes"] for rank in two_ranks] == [(True, False)] * 2


# torchrun -m fwm_rl train ------------------------------------------------------------------------------------------

# 4 envs x 10 steps per rank and update: 80 env steps of the two ranks per update; a checkpoint at every update
TINY_RUN = dict(experiment="tiny", n_envs=4, n_steps=10, hidden_size=8, core_kwargs={"memory_size": 4},
                batch_size=20, n_epochs=2, total_timesteps=240, eval_episodes=8, eval_freq=80, checkpoint_freq=80,
                keep_checkpoints=10, threads=1)


def _torchrun(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "fwm_rl", "train", "--no-progress-bar", *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def _parameters(path: Path) -> dict[str, torch.Tensor]:
    return RecurrentPPO.load(path, device="cpu").policy.state_dict()


@pytest.fixture(scope="module")
def torchrun_run(tmp_path_factory) -> Path:
    """An uninterrupted 2-rank run of 3 updates, started the way users start one."""
    cwd = tmp_path_factory.mktemp("torchrun")
    (cwd / "tiny.yaml").write_text(yaml.safe_dump(TINY_RUN))
    result = _torchrun(cwd, "--config", "tiny.yaml", "--runs-dir", "runs")
    assert result.stdout.count("training tiny") == 1  # rank 0 speaks for the run
    return cwd


def test_torchrun_train_writes_one_run_directory_from_rank_0(torchrun_run):
    from fwm_rl.train.rundir import RunDir

    assert sorted(p.name for p in torchrun_run.iterdir()) == ["runs", "tiny.yaml"]
    run = RunDir(torchrun_run / "runs" / "tiny")
    assert [p.name for p in (torchrun_run / "runs").iterdir()] == ["tiny"]
    assert len(list((run.path / "tb").iterdir())) == 1  # one TensorBoard writer
    assert run.log_path.read_text().count("training tiny") == 1
    with (run.path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows if r["val/return"]] == [0, 80, 160, 240]  # steps of both ranks
    assert [int(r["step"]) for r in rows if r["time/iterations"]] == [80, 160, 240]  # one SB3 dump per update
    path, step, payload = run.read_newest_checkpoint()
    assert step == 240 and len(payload["ranks"]) == 2  # every rank's envs and RNGs, for --resume
    assert not any(key in payload for key in ("runtime", "env", "rng"))
    config = yaml.safe_load(run.config_path.read_text())
    assert config["seed"] == 0 and config["device"] == "cpu"


def test_torchrun_resume_from_a_checkpoint_reproduces_the_uninterrupted_run(torchrun_run, tmp_path):
    import shutil

    resumed = tmp_path / "resumed"
    shutil.copytree(torchrun_run / "runs" / "tiny", resumed)
    for checkpoint in sorted((resumed / "checkpoints").glob("*.ckpt"))[1:]:  # a "kill" after the first update
        checkpoint.unlink()
    (resumed / "model.zip").unlink()
    result = _torchrun(tmp_path, "--resume", str(resumed))
    assert f"resuming {resumed} at 80 steps" in result.stdout
    uninterrupted = _parameters(torchrun_run / "runs" / "tiny" / "model.zip")
    for key, value in _parameters(resumed / "model.zip").items():
        assert torch.equal(value, uninterrupted[key]), key


def test_resuming_a_2_process_run_with_1_process_is_a_one_line_error(torchrun_run, capsys):
    from fwm_rl.train.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--resume", str(torchrun_run / "runs" / "tiny"), "--no-progress-bar"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1
    assert "saved by 2 process(es) and this run has 1" in err[0]
