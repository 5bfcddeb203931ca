"""Env-steps/s of ``fwm-rl train`` at 1 vs N data-parallel processes (torchrun, gloo on the CPU).

Each setting is the user's command, run in turn on the same machine, evaluation off, one torch thread per process
unless ``--threads`` says otherwise::

    python -m torch.distributed.run --standalone --nproc-per-node P -m fwm_rl train --config graphnav-fwm \\
        --eval-split none --total-timesteps STEPS --checkpoint-freq STEPS --threads 1 --n-envs ENVS \\
        --run-dir TMP/run --no-progress-bar

and its rate is the env steps of all ranks over the run's training time, from the start of ``learn`` to the final
checkpoint after the last update (the ``elapsed_s`` that checkpoint holds: start-up, imports and the kernel load are
not in it; SB3's ``time/fps`` is not used, since it is logged before each update's training and so leaves the last
update out, which flatters settings with fewer, larger updates). Settings: ``1x600`` (the shipped config, one
process), ``2x600`` (two ranks of 600 envs: twice the envs per update, as DD-PPO scales), ``2x300`` (two ranks of 300
envs: the same 600 envs per update as one process). The load average before and after each run is printed, since on
a shared machine it decides the numbers::

    python benchmarks/bench_distributed.py                      # 1x600, 2x600, 2x300 at 180,000 steps each
    python benchmarks/bench_distributed.py --settings 1x600 1x600t2 2x600 --steps 360000
    # "t2": 2 torch threads in that process
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fwm_rl.train.rundir import RunDir

SETTING = re.compile(r"^(?P<procs>\d+)x(?P<envs>\d+)(?:t(?P<threads>\d+))?$")


def run_setting(setting: str, steps: int, config: str, threads: int, folder: Path) -> dict[str, float]:
    """Train one setting ``PxE[tT]`` and return its env-steps/s, wall time and the load averages around it."""
    match = SETTING.match(setting)
    if match is None:
        raise SystemExit(f"bench_distributed: setting {setting!r} is not PROCSxENVS[tTHREADS], e.g. 2x600")
    procs, envs = int(match["procs"]), int(match["envs"])
    threads = int(match["threads"] or threads)
    run_dir = folder / setting
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(procs),
               "-m", "fwm_rl", "train", "--config", config, "--eval-split", "none", "--total-timesteps", str(steps),
               "--checkpoint-freq", str(steps), "--threads", str(threads), "--n-envs", str(envs),
               "--run-dir", str(run_dir), "--no-progress-bar"]
    load_before = os.getloadavg()[0]
    start = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    wall = time.monotonic() - start
    _, step, payload = RunDir(run_dir).read_newest_checkpoint()  # the final one, after the last update
    train_s = payload["run_state"]["schedule"]["elapsed_s"]
    return {"steps_per_s": step / train_s, "steps": step, "train_s": train_s, "wall_s": wall,
            "load_before": load_before, "load_after": os.getloadavg()[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["1x600", "2x600", "2x300"],
                        help="PROCSxENVS[tTHREADS] per run, in order [default: 1x600 2x600 2x300]")
    parser.add_argument("--steps", type=int, default=180_000, help="env steps per run, all ranks [default: 180000]")
    parser.add_argument("--config", default="graphnav-fwm", help="fwm-rl train config [default: graphnav-fwm]")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process [default: 1]")
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPUs; config {args.config}, {args.steps:,} env steps per run")
    print(f"{'setting':>10} {'env-steps/s':>12} {'vs first':>9} {'train s':>8} {'wall s':>8} "
          f"{'load before -> after':>22}")
    first = None
    with tempfile.TemporaryDirectory() as folder:
        for setting in args.settings:
            result = run_setting(setting, args.steps, args.config, args.threads, Path(folder))
            first = first or result["steps_per_s"]
            print(f"{setting:>10} {result['steps_per_s']:>12,.0f} {result['steps_per_s'] / first:>8.2f}x "
                  f"{result['train_s']:>8.1f} {result['wall_s']:>8.1f} "
                  f"{result['load_before']:>13.2f} -> {result['load_after']:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
