"""``fwm-rl report``: the statistics of a sweep, per agent (config) and split, over its seeds (rliable's protocol,
Agarwal et al. 2021): mean and interquartile mean (IQM) of each run's final score with 95% stratified-bootstrap
intervals, the probability that one agent beats another, learning curves as mean +/- 95% CI over seeds, and a
markdown table.

Each run's final score on a split comes from the sweep's final evaluation (``evaluations/<run>/<split>.json``) or,
for a split evaluated only during training (val), from the last value of ``<split>/<metric>`` in its metrics.csv.
The bootstrap resamples the runs of each agent independently (one stratum per agent and task, so with one task per
agent it resamples seeds) with ``scipy.stats.bootstrap``'s percentile method, as rliable does; rliable itself does not
import under our pins (its ``arch`` dependency fails against pandas 3).

Supervised sweeps (``fwm-rl sweep --command supervised``) are read from metrics.csv alone: ``--metric error
--lower-is-better --splits test`` gives each run's final test error (its last periodic test evaluation, so the runs
need ``eval_test_periodically``; ``--metric best_error``: the best-on-val checkpoint's) and the test-error curves, and
``--threshold 0.01`` adds the steps each run took to reach 1% test error.
"""
from __future__ import annotations

import argparse
import json
import math
import textwrap
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np

from fwm_rl.train.errors import UserError
from fwm_rl.train.io import atomic_write, write_json
from fwm_rl.train.plots import read_metrics
from fwm_rl.train.sweep import DONE, read_manifest

CONFIDENCE = 0.95
REFERENCE_ROWS = ("random", "oracle", "explorer")
NOT_HELDOUT = ("train", "rollout", "time")  # metrics.csv prefixes that are not a held-out split


@dataclass
class Interval:
    """A point estimate and its bootstrap interval (NaN bounds where there are too few runs)."""

    value: float
    low: float
    high: float

    def markdown(self, digits: int) -> str:
        if math.isnan(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


# Statistics, vectorised over leading axes: x [..., runs] -------------------------------------------------------

def mean(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis)


def iqm(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end, as rliable's aggregate_iqm)."""
    from scipy.stats import trim_mean

    return trim_mean(x, proportiontocut=0.25, axis=axis)


def probability_of_improvement(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """P(X > Y) for a run X of one agent and a run Y of another, ties counting half: x [..., n], y [..., m]."""
    x, y = np.moveaxis(x, axis, -1)[..., :, None], np.moveaxis(y, axis, -1)[..., None, :]
    return (x > y).mean(axis=(-2, -1)) + 0.5 * (x == y).mean(axis=(-2, -1))


def bootstrap_interval(samples: Sequence[np.ndarray], statistic: Callable[..., np.ndarray], reps: int,
                       seed: int) -> Interval:
    """``statistic(*samples)`` with its 95% percentile-bootstrap interval, each sample resampled on its own
    (``scipy.stats.bootstrap`` with ``rng=np.random.default_rng(seed)``). Samples: [runs] each."""
    from scipy.stats import bootstrap

    samples = tuple(np.asarray(sample, dtype=np.float64) for sample in samples)
    value = float(statistic(*samples))
    if min(len(sample) for sample in samples) < 2:
        return Interval(value, math.nan, math.nan)
    result = bootstrap(samples, statistic, n_resamples=reps, vectorized=True, paired=False, axis=-1,
                       confidence_level=CONFIDENCE, method="percentile", rng=np.random.default_rng(seed))
    return Interval(value, float(result.confidence_interval.low), float(result.confidence_interval.high))


def mean_band(values: np.ndarray, reps: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean over runs and its 95% percentile-bootstrap band at every point: values [points, runs] -> 3 x [points]."""
    from scipy.stats import bootstrap

    center = values.mean(axis=-1)
    if values.shape[-1] < 2:
        return center, np.full_like(center, np.nan), np.full_like(center, np.nan)
    result = bootstrap((values,), mean, n_resamples=reps, vectorized=True, axis=-1, confidence_level=CONFIDENCE,
                       method="percentile", rng=np.random.default_rng(seed))
    return center, result.confidence_interval.low, result.confidence_interval.high


# What a sweep folder holds --------------------------------------------------------------------------------------

@dataclass
class FinalScores:
    """The final score of every finished run on one split: agent -> {run name: value}."""

    split: str
    source: str
    by_agent: dict[str, dict[str, float]]
    references: dict[str, float]  # random / oracle on the same episodes, where every evaluation has them
    undefined: list[str]  # finished runs whose score is NaN (e.g. steps to a goal never reached): left out, named


def _row_value(row: dict[str, Any], metric: str) -> Optional[float]:
    """``metric`` (or ``metric_mean``) of an evaluation row; None if absent, NaN if null (undefined)."""
    for key in (metric, f"{metric}_mean"):
        if key in row:
            return math.nan if row[key] is None else float(row[key])
    return None


def _evaluated_score(path: Path, name: str, metric: str) -> tuple[Optional[float], dict[str, float], str]:
    """(score, reference scores, "model.zip, 600 episodes") of one final evaluation file."""
    report = json.loads(path.read_text())
    rows = report.get("rows", {})
    agent_rows = [row for key, row in rows.items() if key not in REFERENCE_ROWS]
    row = rows.get(name, agent_rows[0] if len(agent_rows) == 1 else {})
    references = {key: _row_value(rows[key], metric) for key in REFERENCE_ROWS if key in rows}
    played = f"{Path(report.get('model', '?')).name}, {row.get('episodes', '?')} episodes"
    finite = {key: value for key, value in references.items() if value is not None and math.isfinite(value)}
    return _row_value(row, metric), finite, played


def _logged_score(columns: dict[str, list[float]], split: str, metric: str) -> Optional[float]:
    values = [value for value in columns.get(f"{split}/{metric}", []) if not math.isnan(value)]
    return values[-1] if values else None


def final_scores(sweep_dir: Path, metric: str, splits: Optional[Sequence[str]] = None) -> list[FinalScores]:
    """Final scores of the finished runs of a sweep, one FinalScores per split (the splits of the final evaluation
    first, then held-out splits logged in metrics.csv); UserError when no run has finished."""
    manifest = read_manifest(sweep_dir)
    finished = {name: run for name, run in manifest["runs"].items() if run["state"] == DONE}
    if not finished:
        raise UserError(f"{sweep_dir} has no finished runs yet (0 of {len(manifest['runs'])}); run or continue the "
                        f"sweep first: fwm-rl sweep --resume {sweep_dir}")
    columns = {name: read_metrics(Path(sweep_dir) / name) for name in finished}
    evaluated = list(dict.fromkeys(split for run in finished.values() for split in run.get("evaluations", {})))
    logged = sorted({column.split("/")[0] for run_columns in columns.values() for column in run_columns
                     if column.endswith(f"/{metric}") and column.split("/")[0] not in NOT_HELDOUT} - set(evaluated))
    result = []
    for split in (splits if splits else evaluated + logged):
        by_agent: dict[str, dict[str, float]] = {}
        reference_values: dict[str, list[float]] = {key: [] for key in REFERENCE_ROWS}
        played, undefined = set(), []
        for name, run in finished.items():
            if split in run.get("evaluations", {}):
                value, references, how = _evaluated_score(Path(sweep_dir) / run["evaluations"][split], name, metric)
                played.add(how)
                for key, reference in references.items():
                    reference_values[key].append(reference)
            else:
                value = _logged_score(columns[name], split, metric)
            if value is not None and not math.isfinite(value):
                undefined.append(name)
            elif value is not None:
                by_agent.setdefault(run["agent"], {})[name] = value
        if not by_agent:
            if splits:
                raise UserError(f"no finished run of {sweep_dir} has {metric!r} on split {split!r}")
            continue
        source = (f"final evaluation: {'; '.join(sorted(played))}" if split in evaluated
                  else f"last logged {split}/{metric} in metrics.csv")
        references = {key: float(np.mean(values)) for key, values in reference_values.items()
                      if values and len(values) == sum(map(len, by_agent.values()))}
        result.append(FinalScores(split, source, by_agent, references, undefined))
    if not result:
        raise UserError(f"no finished run of {sweep_dir} has a {metric!r} score (pick another --metric)")
    return result


# Aggregates -----------------------------------------------------------------------------------------------------

def aggregate(scores: FinalScores, reps: int, seed: int, lower_is_better: bool = False) -> dict[str, Any]:
    """Mean and IQM with intervals per agent, and P(row agent beats column agent) for every ordered pair."""
    values = {agent: np.array(list(runs.values())) for agent, runs in scores.by_agent.items()}
    agents = {agent: {"runs": len(x), "mean": bootstrap_interval((x,), mean, reps, seed),
                      "iqm": bootstrap_interval((x,), iqm, reps, seed), "median": float(np.median(x)),
                      "min": float(x.min()), "max": float(x.max()), "scores": scores.by_agent[agent]}
              for agent, x in values.items()}
    sign = -1.0 if lower_is_better else 1.0
    beats = {a: {b: bootstrap_interval((sign * values[a], sign * values[b]), probability_of_improvement, reps, seed)
                 for b in values if b != a} for a in values}
    return {"split": scores.split, "source": scores.source, "references": scores.references, "agents": agents,
            "probability_of_improvement": beats, "undefined": scores.undefined}


def learning_curves(sweep_dir: Path, runs_by_agent: dict[str, list[str]], split: str, metric: str, reps: int,
                    seed: int) -> dict[str, dict[str, np.ndarray]]:
    """Per agent, ``split/metric`` of its runs on the steps they all reached (each run linearly interpolated onto
    the union of their logged steps): {"step", "mean", "low", "high": [points]} and the run count."""
    curves = {}
    for agent, names in runs_by_agent.items():
        runs = []
        for name in names:
            columns = read_metrics(Path(sweep_dir) / name)
            points = {step: value for step, value in zip(columns["step"], columns.get(f"{split}/{metric}", []))
                      if not math.isnan(value)}  # a step logged twice keeps its last value
            if points:
                runs.append((np.array(list(points)), np.array(list(points.values()))))
        if not runs:
            continue
        first, last = max(steps.min() for steps, _ in runs), min(steps.max() for steps, _ in runs)
        grid = np.unique(np.concatenate([steps for steps, _ in runs]))
        grid = grid[(grid >= first) & (grid <= last)]
        values = np.stack([np.interp(grid, steps, ys) for steps, ys in runs], axis=-1)  # [points, runs]
        center, low, high = mean_band(values, reps, seed)
        curves[agent] = {"step": grid, "mean": center, "low": low, "high": high, "runs": len(runs)}
    return curves


def steps_to_threshold(steps: Sequence[float], values: Sequence[float], threshold: float, lower_is_better: bool
                       ) -> float:
    """The first logged step whose value reaches ``threshold`` (``<=`` it when lower is better, else ``>=``); NaN
    if no logged value does (NaN values are skipped)."""
    for step, value in zip(steps, values):
        if not math.isnan(value) and (value <= threshold if lower_is_better else value >= threshold):
            return float(step)
    return math.nan


def threshold_table(sweep_dir: Path, by_agent: dict[str, dict[str, float]], split: str, metric: str,
                    threshold: float, lower_is_better: bool, reps: int, seed: int) -> dict[str, dict[str, Any]]:
    """Per agent, the steps its runs took to reach ``threshold`` on ``split/metric`` (metrics.csv): how many
    runs reached it, the mean [95% CI] and median steps of those that did, and each run's steps (NaN: never)."""
    table = {}
    for agent, runs in by_agent.items():
        per_run = {}
        for name in runs:
            columns = read_metrics(Path(sweep_dir) / name)
            per_run[name] = steps_to_threshold(columns["step"], columns.get(f"{split}/{metric}", []), threshold,
                                               lower_is_better)
        reached = np.array([steps for steps in per_run.values() if not math.isnan(steps)])
        table[agent] = {"threshold": threshold, "runs": len(per_run), "reached": len(reached),
                        "mean": bootstrap_interval((reached,), mean, reps, seed) if len(reached) else None,
                        "median": float(np.median(reached)) if len(reached) else math.nan, "steps": per_run}
    return table


def plot_curves(curves: dict[str, dict[str, np.ndarray]], split: str, metric: str, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for index, (agent, curve) in enumerate(curves.items()):
        color = f"C{index % 10}"
        ax.plot(curve["step"], curve["mean"], color=color, label=f"{agent} (n = {curve['runs']})",
                marker="." if len(curve["step"]) < 30 else None)
        if not np.isnan(curve["low"]).all():
            ax.fill_between(curve["step"], curve["low"], curve["high"], color=color, alpha=0.2, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{split} {metric}")
    ax.set_title(f"{split} {metric}: mean and 95% bootstrap CI over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)
    return out


# Markdown -------------------------------------------------------------------------------------------------------

def markdown(sweep_dir: Path, tables: list[dict[str, Any]], metric: str, curve_files: dict[str, str], finished: int,
             total: int, reps: int, seed: int, digits: int = 2) -> str:
    lines = [f"# Sweep report: {Path(sweep_dir).name}", "",
             f"{finished} of {total} runs finished. Metric: {metric}. Brackets: 95% percentile-bootstrap CI over the "
             f"runs of each agent (scipy.stats.bootstrap, {reps:,} resamples, seed {seed}); IQM: mean of the middle "
             "50% of runs (25% trimmed from each end, none with fewer than 4 runs).", ""]
    for table in tables:
        steps_to = table.get("steps_to", {})
        threshold = next(iter(steps_to.values()))["threshold"] if steps_to else None
        reach = "<=" if table.get("lower_is_better") else ">="
        extra = (f" reached {metric} {reach} {threshold:g} | steps to it: mean [95% CI] | median |"
                 if steps_to else "")
        lines += [f"## {table['split']} ({table['source']})", "",
                  f"| agent | runs | final mean [95% CI] | IQM [95% CI] | median | min | max |{extra}",
                  "|---|---|---|---|---|---|---|" + ("---|---|---|" if steps_to else "")]
        for agent, row in table["agents"].items():
            cells = ""
            if agent in steps_to:
                hit = steps_to[agent]
                interval = "-" if hit["mean"] is None else hit["mean"].markdown(0)
                median = "-" if math.isnan(hit["median"]) else f"{hit['median']:.0f}"
                cells = f" {hit['reached']} of {hit['runs']} | {interval} | {median} |"
            lines.append(f"| {agent} | {row['runs']} | {row['mean'].markdown(digits)} | {row['iqm'].markdown(digits)} "
                         f"| {row['median']:.{digits}f} | {row['min']:.{digits}f} | {row['max']:.{digits}f} |{cells}")
        if steps_to:
            lines += ["", f"Steps to {metric} {reach} {threshold:g}: the first logged step at which a run's "
                          f"{table['split']}/{metric} reached it; the mean and median are over the runs that did."]
        if table["undefined"]:
            lines += ["", f"Left out, {metric} undefined (NaN): {', '.join(table['undefined'])}."]
        if table["references"]:
            lines += ["", "References on the same episodes: " + ", ".join(
                f"{key} {value:.{digits}f}" for key, value in table["references"].items()) + "."]
        agents = list(table["agents"])
        if len(agents) > 1:
            lines += ["", "Probability that the row agent beats the column agent (ties count half) [95% CI]:", "",
                      "| | " + " | ".join(agents) + " |", "|---" * (len(agents) + 1) + "|"]
            for a in agents:
                cells = ["-" if a == b else table["probability_of_improvement"][a][b].markdown(2) for b in agents]
                lines.append(f"| {a} | " + " | ".join(cells) + " |")
        if table["split"] in curve_files:
            lines += ["", f"![{table['split']} {metric}]({curve_files[table['split']]})"]
        lines.append("")
    return "\n".join(lines)


def _json_ready(value: Any) -> Any:
    if isinstance(value, Interval):
        value = asdict(value)
    if isinstance(value, dict):
        return {key: _json_ready(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_ready(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def write_report(sweep_dir: Path, out: Optional[Path] = None, metric: str = "return",
                 splits: Optional[Sequence[str]] = None, lower_is_better: bool = False, reps: int = 10_000,
                 seed: int = 0, threshold: Optional[float] = None) -> dict[str, Any]:
    """Aggregate a sweep into OUT (default SWEEP_DIR/report): report.md, report.json and curves_<split>.png per split
    with curves; with ``threshold``, also the steps each agent's runs took to reach it (:func:`threshold_table`).
    Returns {"markdown", "tables", "files"}."""
    sweep_dir = Path(sweep_dir)
    if reps < 1:
        raise UserError(f"--reps must be >= 1, got {reps}")
    out = Path(out) if out is not None else sweep_dir / "report"
    all_scores = final_scores(sweep_dir, metric, splits)
    manifest = read_manifest(sweep_dir)
    finished = [name for name, run in manifest["runs"].items() if run["state"] == DONE]
    tables = [aggregate(scores, reps, seed, lower_is_better) for scores in all_scores]
    for table, scores in zip(tables, all_scores):
        table["lower_is_better"] = lower_is_better
        if threshold is not None:
            table["steps_to"] = threshold_table(sweep_dir, scores.by_agent, scores.split, metric, threshold,
                                                lower_is_better, reps, seed)
    runs_by_agent: dict[str, list[str]] = {}
    for name in finished:
        runs_by_agent.setdefault(manifest["runs"][name]["agent"], []).append(name)
    curve_files, files = {}, []
    for scores in all_scores:
        curves = learning_curves(sweep_dir, runs_by_agent, scores.split, metric, reps, seed)
        if any(len(curve["step"]) > 1 for curve in curves.values()):
            path = plot_curves(curves, scores.split, metric, out / f"curves_{scores.split}.png")
            curve_files[scores.split] = path.name
            files.append(path)
    text = markdown(sweep_dir, tables, metric, curve_files, len(finished), len(manifest["runs"]), reps, seed)
    files.append(atomic_write(out / "report.md", lambda tmp: tmp.write_text(text)))
    files.append(write_json(out / "report.json", _json_ready({"metric": metric, "reps": reps, "seed": seed,
                                                              "lower_is_better": lower_is_better, "tables": tables})))
    return {"markdown": text, "tables": tables, "files": files}


def run_report(args: argparse.Namespace) -> int:
    result = write_report(Path(args.sweep_dir), args.out, metric=args.metric, splits=args.splits,
                          lower_is_better=args.lower_is_better, reps=args.reps, seed=args.seed,
                          threshold=args.threshold)
    print(result["markdown"])
    print("wrote " + ", ".join(str(path) for path in result["files"]))
    return 0


def add_parser(commands: Any, formatter_class: type = argparse.HelpFormatter) -> None:
    """The ``report`` subcommand of ``fwm-rl``."""
    parser = commands.add_parser(
        "report", help="aggregate a sweep over seeds: mean, IQM, bootstrap CIs, P(improvement), curves",
        formatter_class=formatter_class,
        description=textwrap.fill(
            "Aggregate the finished runs of a `fwm-rl sweep` folder per agent (config) and split: mean and IQM of the "
            "final score with 95% stratified-bootstrap CIs, the probability that one agent beats another, learning "
            "curves as mean ± 95% CI over seeds (PNG) and a markdown table (report.md, report.json).", width=100),
        epilog="examples:\n  fwm-rl report runs/sweep\n  fwm-rl report runs/sweep --splits test val --out docs/results/sweep"
               "\n  fwm-rl report runs/art --metric error --lower-is-better --splits test --threshold 0.01")
    parser.add_argument("sweep_dir", metavar="SWEEP_DIR", help="folder made by `fwm-rl sweep`")
    parser.add_argument("--out", type=Path, help="folder for report.md, report.json and the PNGs [default: "
                                                 "SWEEP_DIR/report]")
    parser.add_argument("--metric", default="return",
                        help="score to aggregate: a key of the final evaluation (return, goals, score, ...) or a "
                             "name logged as <split>/NAME in metrics.csv (accuracy, error, ...) [default: return]")
    parser.add_argument("--splits", nargs="+", metavar="SPLIT", help="splits to report [default: those of the final "
                                                                     "evaluation, then held-out splits in metrics.csv]")
    parser.add_argument("--lower-is-better", action="store_true", help="a lower score wins (error, loss)")
    parser.add_argument("--threshold", type=float,
                        help="also report the steps each run took to reach this score on the logged curve (<= it "
                             "with --lower-is-better, else >=), e.g. --metric error --lower-is-better --threshold "
                             "0.01 for steps to < 1%% error")
    parser.add_argument("--reps", type=int, default=10_000, help="bootstrap resamples [default: 10000]")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap [default: 0]")
    parser.set_defaults(func=run_report)
