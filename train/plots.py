"""Learning curves of several runs in one PNG, read from each run's ``metrics.csv`` (RL or supervised), and the
per-visit curves (steps to goal for visit 1, 2, 3, ... of a lifetime) of ``fwm-rl evaluate --json-file`` reports."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional, Sequence

from fwm_rl.train.errors import UserError
from fwm_rl.train.io import atomic_write

DEFAULT_METRICS = ("return", "accuracy", "loss", "perplexity")
# Column prefixes: what the model trained on, and the held-out splits it was evaluated on.
TRAIN_PREFIX = "train"
LINESTYLES = {"train": ":", "val": "--"}  # any other held-out split ("test", OOD names) is drawn solid
REFERENCE_STYLES = {"random": "-.", "oracle": "-", "explorer": ":"}  # reference rows of an evaluation report, drawn grey
MIN_VISIT_SHARE = 0.1  # a visit is drawn while at least this share of a row's lifetimes completed it


def read_metrics(run_dir: Path) -> dict[str, list[float]]:
    """Columns of ``run_dir/metrics.csv`` as float lists (NaN where a row lacks the key)."""
    path = Path(run_dir) / "metrics.csv"
    if not path.exists():
        raise UserError(f"{run_dir} has no metrics.csv (is it a run directory?)")
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as e:
        reason = f"{e.reason} at byte {e.start}" if isinstance(e, UnicodeDecodeError) else str(e)
        raise UserError(f"{path} is not a readable metrics CSV ({reason}); is it a file written by fwm-rl?") from None
    if not rows:
        raise UserError(f"{path} has no rows yet")

    def number(text: Optional[str]) -> float:
        try:
            return float(text) if text not in (None, "") else math.nan
        except ValueError:
            return math.nan

    return {column: [number(row.get(column)) for row in rows] for column in rows[0]}


def curve_columns(columns: Sequence[str], metric: str) -> list[str]:
    """The ``<split>/<metric>`` columns of a run, training split first (or ``metric`` itself if it is a column)."""
    if metric in columns and metric != "step":
        return [metric]
    found = [column for column in columns if column.count("/") == 1 and column.split("/")[1] == metric]
    return sorted(found, key=lambda column: (column.split("/")[0] != TRAIN_PREFIX, column))


def pick_metric(all_columns: Sequence[Sequence[str]]) -> str:
    """The first of DEFAULT_METRICS that some run logs, preferring one with a held-out column."""
    for require_heldout in (True, False):
        for metric in DEFAULT_METRICS:
            for columns in all_columns:
                found = curve_columns(columns, metric)
                if found and (not require_heldout or any(not c.startswith(TRAIN_PREFIX + "/") for c in found)):
                    return metric
    raise UserError(f"no run logs any of {', '.join(DEFAULT_METRICS)}; choose a column with --metric")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: Path) -> Path:
    atomic_write(out, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    _pyplot().close(fig)
    return Path(out)


def read_report(path: Path) -> dict:
    """An evaluation report written by ``fwm-rl evaluate --json-file`` (or ``--json``)."""
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"cannot read evaluation report {path}: {e}") from None
    if not isinstance(report, dict) or not isinstance(report.get("rows"), dict):
        raise UserError(f"{path} is not an evaluation report of `fwm-rl evaluate --json-file` (no rows)")
    return report


def plot_visits(reports: Sequence[Path], out: Path, title: Optional[str] = None) -> Path:
    """Steps to goal against visit number (1 = the first goal of a lifetime) for every row of every evaluation
    report into one PNG at ``out``: agents in colour, the random and oracle references grey (from the first report
    that has them). A visit is drawn while at least MIN_VISIT_SHARE of the row's lifetimes completed it."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn, references_drawn, color_index, labels = 0, False, 0, set()
    for path in reports:
        report = read_report(path)
        for name, row in report["rows"].items():
            if "visit_steps" not in row:
                raise UserError(f"{path} has no per-visit curve (row {name!r}); evaluate again with this fwm-rl")
            reference = name in REFERENCE_STYLES
            if reference and references_drawn:
                continue
            keep = [k for k, count in enumerate(row["visit_count"]) if count >= MIN_VISIT_SHARE * row["episodes"]]
            if not keep:
                continue
            xs, ys = [k + 1 for k in keep], [row["visit_steps"][k] for k in keep]
            style = ({"color": "grey", "linestyle": REFERENCE_STYLES[name]} if reference else
                     {"color": f"C{color_index % 10}", "marker": "." if len(xs) < 30 else None})
            color_index += not reference
            label = name if reference or name not in labels else f"{Path(path).stem} · {name}"
            labels.add(name)
            ax.plot(xs, ys, label=label, **style)
            drawn += 1
        references_drawn = references_drawn or any(name in REFERENCE_STYLES for name in report["rows"])
    if not drawn:
        raise UserError("no row of the reports completed a goal visit in enough lifetimes to draw")
    ax.set_xlabel("goal visit in the lifetime (1 = first)")
    ax.set_ylabel("steps to the goal (mean over lifetimes that got there)")
    ax.set_title(title or "explore, then exploit: steps to goal per visit")
    ax.set_yscale("log")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)


def plot_runs(run_dirs: Sequence[Path], out: Path, metric: Optional[str] = None, title: Optional[str] = None) -> Path:
    """Plot ``metric`` (train and held-out columns) of every run against ``step`` into one PNG at ``out``.

    Dotted: training split; dashed: val; solid: test and other held-out splits. Grey lines mark the random and
    oracle references of a run's held-out split when it logs ``return``. Given evaluation reports (``.json``
    files of ``fwm-rl evaluate --json-file``) instead of run directories, it draws their per-visit curves
    (:func:`plot_visits`).
    """
    reports = [Path(p) for p in run_dirs if Path(p).suffix == ".json"]
    if reports:
        if len(reports) != len(run_dirs) or metric is not None:
            raise UserError("give either run directories (learning curves, --metric) or evaluation reports (.json "
                            "files: per-visit curves), not both")
        return plot_visits(reports, out, title)
    plt = _pyplot()
    runs = {Path(run_dir): read_metrics(Path(run_dir)) for run_dir in run_dirs}
    metric = metric or pick_metric([list(columns) for columns in runs.values()])
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn, references_drawn = 0, False
    for color_index, (run_dir, columns) in enumerate(runs.items()):
        color = f"C{color_index % 10}"
        for column in curve_columns(list(columns), metric):
            points = [(x, y) for x, y in zip(columns["step"], columns[column]) if not math.isnan(y)]
            if not points:
                continue
            split = column.split("/")[0] if "/" in column else column
            xs, ys = zip(*points)
            ax.plot(xs, ys, color=color, linestyle=LINESTYLES.get(split, "-"), marker="." if len(xs) < 30 else None,
                    label=f"{run_dir.name} · {split}")
            drawn += 1
        references_path = run_dir / "references.json"
        if metric == "return" and not references_drawn and references_path.exists():
            for name, row in json.loads(references_path.read_text()).items():
                ax.axhline(row["return_mean"], color="grey", linewidth=0.8, linestyle="-." if name == "random" else "-")
                ax.annotate(f"{name} {row['return_mean']:.1f}", (0, row["return_mean"]), xycoords=("axes fraction", "data"),
                            fontsize=8, color="grey", xytext=(2, 2), textcoords="offset points")
            references_drawn = True
    if not drawn:
        raise UserError(f"no run logs {metric!r} (columns like train/{metric}, test/{metric})")
    ax.set_xlabel("environment steps" if metric == "return" else "step")
    ax.set_ylabel(metric)
    ax.set_title(title or f"{metric}: train (dotted) and held-out")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, out)
