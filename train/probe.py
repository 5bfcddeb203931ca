"""Linear probes of a trained GridMaze agent's memory: does its recurrent state hold the goal and the walls it has seen?

``fwm-rl probe RUN_DIR`` plays lifetimes of a held-out split (val by default: a probe is analysis, and the test split
stays for reporting), records the actor core's state after each observation (every ``every``-th step), and fits one
multinomial logistic regression per state tensor (``h``, ``c``, ``F`` for the FWM; ``h``, ``c`` for the LSTM) and
target. Probes are fitted on half the layouts, their L2 weight picked on a quarter and scored on the last quarter,
so that a probe cannot learn a layout by heart. Targets:

* ``position``: the agent's tile (a sanity check: the position is in the observation);
* ``goal (found)``: the goal's tile, at steps after the first visit of the lifetime, when a memory should hold it;
* ``goal (not found)``: the same before the first visit (the control: only where the goal is *not* can be known);
* ``walls (seen)``: wall or floor for each tile that varies between layouts (the doors of a cell maze), at tiles
  the agent's view has covered earlier in the lifetime;
* ``walls (unseen)``: the same at tiles it has not seen yet (the control).

Each row gives the probe's held-out accuracy beside the majority-class baseline on the same samples.
"""
from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor

from fwm_rl.train.errors import UserError
from fwm_rl.train.runs import find_model, heldout_env_kwargs, load_agent, make_env, seeded_rng

GRID_ENV_ID = "FWM/GridMaze-v0"
PENALTIES = (1e-3, 1e-2, 1e-1, 1.0)
MAX_ENVS = 100


@dataclass
class Recording:
    """What :func:`record` saw, one row per recorded step: ``features`` {state name: [N, D]}, ``position`` and
    ``goal`` [N] flat tiles of the grid (``width`` per row), ``found`` [N] (the goal was reached earlier in the
    lifetime), ``walls`` and ``seen`` [N, V] over the ``V`` flat ``tiles`` that vary between layouts, ``layout`` [N]
    ids. Rows are time-major: step t of env i of a round of lifetimes is row (round, t // every, i)."""

    features: dict[str, np.ndarray]
    position: np.ndarray
    goal: np.ndarray
    found: np.ndarray
    walls: np.ndarray
    seen: np.ndarray
    layout: np.ndarray
    tiles: np.ndarray
    n_tiles: int
    width: int


def record(run_dir: Path, split: str = "val", lifetimes: int = 200, every: int = 5, seed: int = 0,
           best: bool = False) -> Recording:
    """Play ``lifetimes`` lifetimes of ``split`` with the run's agent and record its state and the targets."""
    model_path, config = find_model(run_dir, best=best)
    if config is None or config.env_id != GRID_ENV_ID:
        raise UserError(f"fwm-rl probe needs a run trained on {GRID_ENV_ID}, got {model_path}")
    if lifetimes < 4 or every < 1:
        raise UserError(f"--lifetimes must be >= 4 and --every >= 1, got {lifetimes} and {every}")
    agent = load_agent(model_path, config.algo, device="cpu")
    names = [spec.name for spec in agent.policy.actor_core.state_spec]
    n_envs = min(lifetimes, MAX_ENVS)
    vec_env = make_env(config.env_id, n_envs, seed=seed, **heldout_env_kwargs(config.env_id, config.env_kwargs,
                                                                                split=split))
    dynamics = vec_env.venv.dynamics
    rows: dict[str, list[np.ndarray]] = {key: [] for key in ("position", "goal", "found", "walls", "seen", "layout")}
    features: dict[str, list[np.ndarray]] = {name: [] for name in names}
    try:
        with seeded_rng(seed):
            vec_env.seed(seed)
            obs = vec_env.reset()
            infos = vec_env.reset_infos
            height, width = dynamics.grid(0).shape
            state, starts = None, np.ones(n_envs, dtype=bool)
            seen = np.zeros((n_envs, height, width), dtype=bool)
            found = np.zeros(n_envs, dtype=bool)
            radius, played, step = dynamics.view_radius, 0, 0
            while played < lifetimes:
                actions, state = agent.predict(obs, state=state, episode_start=starts, deterministic=False)
                seen[starts], found[starts] = False, False
                positions = np.array([info["agent_pos"] for info in infos])
                for row, (r, c) in enumerate(positions):
                    seen[row, max(r - radius, 0):r + radius + 1, max(c - radius, 0):c + radius + 1] = True
                if step % every == 0:
                    grids = np.stack([dynamics.grid(row) for row in range(n_envs)])
                    goals = np.array([dynamics.goal_pos(row) for row in range(n_envs)])
                    rows["position"].append(positions[:, 0] * width + positions[:, 1])
                    rows["goal"].append(goals[:, 0] * width + goals[:, 1])
                    rows["found"].append(found.copy())
                    rows["walls"].append(grids.reshape(n_envs, -1))
                    rows["seen"].append(seen.reshape(n_envs, -1).copy())
                    rows["layout"].append(np.array([info["layout_id"] for info in infos]))
                    for name, value in zip(names, state):
                        features[name].append(value.reshape(n_envs, -1).astype(np.float32))
                obs, rewards, starts, infos = vec_env.step(actions)
                found |= rewards > 0
                played += int(starts.sum())
                step = 0 if starts.all() else step + 1
    finally:
        vec_env.close()
    walls = np.concatenate(rows["walls"])
    varying = np.flatnonzero(walls.min(0) != walls.max(0))
    return Recording({name: np.concatenate(value) for name, value in features.items()},
                     np.concatenate(rows["position"]), np.concatenate(rows["goal"]), np.concatenate(rows["found"]),
                     walls[:, varying], np.concatenate(rows["seen"])[:, varying], np.concatenate(rows["layout"]),
                     varying, height * width, width)


def ridge_probe(x_fit: Tensor, y_fit: Tensor, x_sel: Tensor, x_eval: Tensor, score: Any,
                penalties: tuple[float, ...] = PENALTIES) -> tuple[Tensor, float]:
    """Ridge regression from standardised features ``x_fit [N, D]`` to targets ``y_fit [N, K]`` (one-hot classes
    or 0/1 walls), minimising ``|X W - Y|² / N + λ |W|²`` with the λ of ``penalties`` that maximises
    ``score(predictions [M, K]) -> float`` on ``x_sel``; returns the predictions on ``x_eval`` and that λ."""
    mean, std = x_fit.mean(0), x_fit.std(0).clamp_min(1e-6)
    x_fit, x_sel, x_eval = ((x - mean) / std for x in (x_fit, x_sel, x_eval))
    y_mean = y_fit.mean(0)
    primal = x_fit.shape[1] <= x_fit.shape[0]  # the smaller Gram matrix: XᵀX [D, D] or XXᵀ [N, N]
    gram = x_fit.T @ x_fit if primal else x_fit @ x_fit.T
    eigenvalues, vectors = torch.linalg.eigh(gram)
    best: Optional[tuple[float, float, Tensor]] = None
    for penalty in penalties:
        inverse = vectors @ torch.diag(1.0 / (eigenvalues.clamp_min(0) + penalty * len(x_fit))) @ vectors.T
        # primal: W = (XᵀX + λ)⁻¹ Xᵀ Y; dual: W = Xᵀ (XXᵀ + λ)⁻¹ Y (the same W)
        weight = (inverse @ x_fit.T if primal else x_fit.T @ inverse) @ (y_fit - y_mean)
        selected = score(x_sel @ weight + y_mean)
        if best is None or selected > best[0]:
            best = (selected, penalty, weight)
    assert best is not None
    return x_eval @ best[2] + y_mean, best[1]


def folds(layout: np.ndarray) -> np.ndarray:
    """Fold per sample by layout: 0 fit (half the layouts), 1 select (a quarter), 2 evaluate (a quarter)."""
    _, rank = np.unique(layout, return_inverse=True)
    return np.array([0, 0, 1, 2])[rank % 4]


def run_probes(rec: Recording) -> list[dict[str, Any]]:
    """Every state tensor x target: held-out accuracy of the probe, the majority baseline, sample counts."""
    n_layouts = len(np.unique(rec.layout))
    if n_layouts < 4:
        raise UserError(f"probes split the lifetimes by layout and need >= 4 layouts; these hold {n_layouts} "
                        "(play more --lifetimes, or a split with more layouts)")
    everywhere = [np.flatnonzero(folds(rec.layout) == k) for k in range(3)]  # fit, select, evaluate
    classes = []  # (target, labels [N], its samples of each fold): the same for every state tensor
    for target, labels, keep in (("position", rec.position, None), ("goal (found)", rec.goal, rec.found),
                                 ("goal (not found)", rec.goal, ~rec.found)):
        part = everywhere if keep is None else [index[keep[index]] for index in everywhere]
        if min(map(len, part)):
            classes.append((target, labels, part, (labels[part[2]] == np.bincount(labels[part[0]]).argmax()).mean()))
    fit, sel, ev = everywhere
    walls = torch.as_tensor(rec.walls, dtype=torch.float64)
    prior_correct = rec.walls[ev] == (rec.walls[fit].mean(0) > 0.5)
    results = []
    for name, raw in rec.features.items():
        x = torch.as_tensor(raw, dtype=torch.float64)
        for target, labels, part, majority in classes:
            y = torch.nn.functional.one_hot(torch.as_tensor(labels[part[0]]), rec.n_tiles).double()
            sel_labels = torch.as_tensor(labels[part[1]])
            predicted, penalty = ridge_probe(x[part[0]], y, x[part[1]], x[part[2]],
                                             lambda p: (p.argmax(1) == sel_labels).double().mean().item())
            accuracy = (predicted.argmax(1).numpy() == labels[part[2]]).mean()
            results.append(_row(name, target, accuracy, majority, len(part[0]), len(part[2]), penalty))
        if rec.walls.shape[1] and rec.seen[sel].any():
            predicted, penalty = ridge_probe(x[fit], walls[fit], x[sel], x[ev],
                                             lambda p: ((p.numpy() > 0.5) == rec.walls[sel])[rec.seen[sel]].mean())
            correct = (predicted.numpy() > 0.5) == rec.walls[ev]
            for target, where in (("walls (seen)", rec.seen[ev]), ("walls (unseen)", ~rec.seen[ev])):
                if where.any():
                    results.append(_row(name, target, correct[where].mean(), prior_correct[where].mean(), len(fit),
                                        int(where.sum()), penalty))
    return results


def _row(state: str, target: str, accuracy: float, majority: float, n_fit: int, n_eval: int, penalty: float
         ) -> dict[str, Any]:
    return {"state": state, "target": target, "accuracy": float(accuracy), "majority": float(majority),
            "fit_samples": n_fit, "eval_samples": n_eval, "penalty": penalty}


def format_table(results: list[dict[str, Any]]) -> str:
    """Markdown table: one row per target; a probe column per state tensor, then the majority baseline."""
    states = list(dict.fromkeys(row["state"] for row in results))
    targets = list(dict.fromkeys(row["target"] for row in results))
    cell = {(row["state"], row["target"]): row for row in results}
    lines = ["| target | " + " | ".join(f"probe on {s} %" for s in states) + " | majority % | eval samples |",
             "|---|" + "---:|" * (len(states) + 2)]
    for target in targets:
        rows = [cell.get((s, target)) for s in states]
        first = next(row for row in rows if row is not None)
        values = " | ".join("–" if row is None else f"{100 * row['accuracy']:.1f}" for row in rows)
        lines.append(f"| {target} | {values} | {100 * first['majority']:.1f} | {first['eval_samples']:,} |")
    return "\n".join(lines)


def run_probe(args: argparse.Namespace) -> int:
    from fwm_rl.train.io import write_json

    rec = record(Path(args.run), split=args.split, lifetimes=args.lifetimes, every=args.every, seed=args.seed,
                 best=args.best)
    results = run_probes(rec)
    table = format_table(results)
    print(table)
    if args.json_file is not None:
        write_json(args.json_file, {"run": str(args.run), "split": args.split, "lifetimes": args.lifetimes,
                                    "every": args.every, "seed": args.seed, "best": args.best, "probes": results})
        print(f"wrote {args.json_file}")
    return 0


def add_parser(commands: Any, formatter_class: type = argparse.HelpFormatter) -> None:
    """The ``probe`` subcommand of ``fwm-rl``."""
    parser = commands.add_parser(
        "probe", help="linear probes of a GridMaze agent's memory: does its state hold the goal and the walls?",
        formatter_class=formatter_class,
        description=textwrap.fill(
            "Play lifetimes of a held-out split with a GridMaze agent, record its core's state (h, c and, for the "
            "FWM, the fast weights F) and fit ridge probes, split by layout, that read the agent's tile, the goal's "
            "tile (after and before its first visit) and the walls (seen and not yet seen) from each state tensor. "
            "Prints held-out probe accuracy beside the majority-class baseline.", width=100),
        epilog="examples:\n  fwm-rl probe runs/gridmaze-fwm\n"
               "  fwm-rl probe runs/gridmaze-lstm --lifetimes 400 --json-file probe-lstm.json")
    parser.add_argument("run", metavar="RUN_DIR", help="run directory of a GridMaze agent (fwm-rl train)")
    parser.add_argument("--split", default="val", help="held-out split to play [default: val; keep test for "
                                                       "reporting]")
    parser.add_argument("--lifetimes", type=int, default=200, help="lifetimes to play (>= 4) [default: 200]")
    parser.add_argument("--every", type=int, default=5, help="record every N-th step of a lifetime [default: 5]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the agent's sampling and the env [default: 0]")
    parser.add_argument("--best", action="store_true", help="probe best_model.zip instead of model.zip")
    parser.add_argument("--json-file", type=Path, metavar="FILE", help="also write the results as JSON (atomically)")
    parser.set_defaults(func=run_probe)
