"""``fwm-rl demo`` (``make demo``): a few CPU minutes of FWM and of LSTM on GraphNav, both evaluated on the 600 test
graphs beside the random and oracle references, the table printed and the learning curves drawn."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

from fwm_rl.train import rl
from fwm_rl.train.config import find_config, load_config, make_config
from fwm_rl.train.evaluate import add_scores, evaluate, format_table
from fwm_rl.train.plots import plot_runs

DEFAULT_MINUTES = 5.0
# name -> (shipped config, share of the FWM agent's minutes)
DEMO_RUNS = {"fwm": ("graphnav-fwm", 1.0), "lstm": ("graphnav-lstm", 1 / 3)}
TEST_EPISODES = 600
# --quick: seconds of training on a few envs, to check that every stage runs (used by the tests).
QUICK_OVERRIDES: dict[str, Any] = {"n_envs": 8, "total_timesteps": 8 * 30 * 3, "eval_episodes": 16,
                                   "eval_freq": 8 * 30 * 2, "checkpoint_freq": 8 * 30 * 2, "batch_size": None,
                                   "time_budget": None}
QUICK_TEST_EPISODES = 16


def run_demo(out_dir: Path, quick: bool = False, minutes: Optional[float] = None, seed: int = 0) -> dict[str, Any]:
    """Train (both agents with ``seed``), evaluate and plot; return the evaluation rows and the paths written."""
    start = time.monotonic()
    minutes = DEFAULT_MINUTES if minutes is None else minutes
    print(f"== demo seed {seed}", flush=True)
    run_dirs, budgets = [], []
    for name, (config_name, share) in DEMO_RUNS.items():
        overrides = dict(QUICK_OVERRIDES) if quick else {"total_timesteps": 10**10, "time_budget": minutes * share}
        overrides["experiment"] = f"demo-{name}"
        overrides["seed"] = seed
        config = make_config(overrides, source="demo", base=load_config(find_config(config_name)))
        budget = "a few steps" if quick else f"{config.time_budget:.1f} min"
        print(f"== training {name} ({config_name}: {config.core} core, hidden {config.hidden_size}, seed "
              f"{config.seed}) for {budget}",
              flush=True)
        train_start = time.monotonic()
        result = rl.train(config, run_dir=out_dir / name, overwrite=True, progress_bar=not quick)
        run_dirs.append(result.run_dir)
        budgets.append((config.experiment, share, (time.monotonic() - train_start) / 60, result.step))

    episodes = QUICK_TEST_EPISODES if quick else TEST_EPISODES
    print(f"== evaluating on {episodes} test graphs", flush=True)
    rows: dict[str, dict] = {}
    for index, run_dir in enumerate(run_dirs):
        report = evaluate(run_dir, split="test", episodes=episodes, with_references=index == 0)
        rows.update(report["rows"])
    add_scores(rows, rows)
    curves = plot_runs(run_dirs, out_dir / "learning_curves.png", metric="return",
                       title="GraphNav: train (dotted) and val (dashed) return during training")
    print(format_table(rows))
    print(format_budgets(budgets))
    print(f"learning curves: {curves}")
    print(f"demo wall time: {(time.monotonic() - start) / 60:.1f} min")
    return {"rows": rows, "run_dirs": run_dirs, "curves": curves}


def format_budgets(budgets: list[tuple[str, float, float, int]]) -> str:
    """What each agent trained for, from (agent, share of the FWM's minutes, minutes, env steps): the agents do not
    get equal time, and the table says so."""
    lines = ["training budgets (the agents are not given equal time):"]
    for name, share, minutes, steps in budgets:
        share_note = "" if share == 1 else f" ({share:.2g} of the FWM's time)"
        lines.append(f"  {name:<10} {minutes:5.1f} min  {steps:>11,} env steps{share_note}")
    return "\n".join(lines)
