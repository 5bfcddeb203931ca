"""The ``fwm-rl`` command line (also ``python -m fwm_rl``): train, supervised, evaluate, watch, plot, demo, export.

The error boundary: every handler validates the user's input (and builds what it names) before it writes
anything, raising ``UserError`` for what the user can fix; ``main`` prints that as one line and exits 1. Any other
exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from fwm_rl.train.errors import UserError

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's examples as written."""


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--best", action="store_true",
                        help="use best_model.zip (best held-out return during training) instead of model.zip")
    parser.add_argument("--seed", type=int, default=0, help="seed of the episodes and of action sampling [default: 0]")
    parser.add_argument("--deterministic", action="store_true",
                        help="take the most likely action instead of sampling one")
    parser.add_argument("--device", default="auto", help="torch device [default: auto]")
    parser.add_argument("--size", type=int, help="GridMaze: mazes of SIZE x SIZE cells [default: the run's; a "
                                                 "curriculum run's largest]")


def config_from_args(args: argparse.Namespace):
    """The TrainConfig of ``fwm-rl train`` options: defaults, then the --config file, then the options given."""
    from fwm_rl.train.rl import RLTrainer
    from fwm_rl.train.runner import config_from_args

    return config_from_args(args, RLTrainer)


def _exit_status(result) -> int:
    return EXIT_INTERRUPTED if result.stopped == "interrupted" else 0


def _run_trainer(args: argparse.Namespace, trainer_class) -> int:
    """Start or resume a run of ``trainer_class``; leave the process group torchrun's ranks joined."""
    import torch.distributed

    from fwm_rl.train.runner import run_from_args

    try:
        return _exit_status(run_from_args(args, trainer_class))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _train(args: argparse.Namespace) -> int:
    from fwm_rl.train.rl import RLTrainer

    return _run_trainer(args, RLTrainer)


def _supervised(args: argparse.Namespace) -> int:
    from fwm_rl.train.supervised import SupervisedTrainer

    return _run_trainer(args, SupervisedTrainer)


def _evaluate(args: argparse.Namespace) -> int:
    from fwm_rl.train.evaluate import evaluate, print_report
    from fwm_rl.train.io import write_json

    report = evaluate(args.run, split=args.split, episodes=args.episodes, layouts=args.layouts, n_envs=args.n_envs,
                      seed=args.seed, deterministic=args.deterministic, best=args.best,
                      with_references=not args.no_references, device=args.device, progress=args.progress_bar,
                      size=args.size)
    if args.json_file is not None:
        write_json(args.json_file, _json_safe(report))
    if args.json:
        print(json.dumps(_json_safe(report), indent=2))
    else:
        print_report(report)
    return 0


def _json_safe(value):
    """NaN (an undefined statistic) -> null, so the output is strict JSON."""
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_safe(item) for item in value]
    return None if isinstance(value, float) and math.isnan(value) else value


def _watch(args: argparse.Namespace) -> int:
    from fwm_rl.train.watch import watch

    result = watch(args.model, args.out, layout=args.layout, split=args.split, seed=args.seed,
                   deterministic=args.deterministic, fps=args.fps, best=args.best, device=args.device, size=args.size)
    print(f"wrote {result['out']}: {result['frames']} frames; {result['caption']}")
    return 0


def _plot(args: argparse.Namespace) -> int:
    from fwm_rl.train.plots import plot_runs

    out = plot_runs([Path(run) for run in args.runs], Path(args.out), metric=args.metric, title=args.title)
    print(f"wrote {out}")
    return 0


def _demo(args: argparse.Namespace) -> int:
    from fwm_rl.train.demo import run_demo

    run_demo(Path(args.out), quick=args.quick, minutes=args.minutes, seed=args.seed)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from fwm_rl.train import export, probe, report, sweep, tune
    from fwm_rl.train.config import shipped_configs
    from fwm_rl.train.rl import RLTrainer
    from fwm_rl.train.runner import add_trainer_arguments
    from fwm_rl.train.supervised import SupervisedTrainer

    parser = argparse.ArgumentParser(prog="fwm-rl", description="Fast Weight Memory agents for meta-RL: train, "
                                     "evaluate, watch and plot recurrent agents on POMDP navigation tasks.")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")

    train = commands.add_parser(
        "train", help="train an agent (named config or options); resume a stopped run",
        formatter_class=_HelpFormatter,
        description="Train a recurrent agent. A run directory RUNS_DIR/EXPERIMENT gets config.yaml, model.zip, "
                    "best_model.zip, checkpoints/, metrics.csv, references.json, tb/ and log.txt. Ctrl-C saves a "
                    "checkpoint at the next update and exits; --resume continues exactly where it stopped.",
        epilog="examples:\n  fwm-rl train --config graphnav-fwm --time-budget 60\n"
               "  fwm-rl train --core lstm --hidden-size 128 --experiment my-lstm --total-timesteps 2e6\n"
               "  fwm-rl train --resume runs/graphnav-fwm")
    add_trainer_arguments(train, RLTrainer, config_help=f"YAML config: a shipped experiment "
                          f"({', '.join(shipped_configs())}) or a file; options below override its fields")
    train.set_defaults(func=_train)

    evaluate = commands.add_parser(
        "evaluate", help="score a trained agent on held-out layouts beside random and oracle",
        description="Play N episodes of a held-out split (or of layout files) and print mean return with its 95% "
                    "t-interval, the normalised score (random = 0, oracle = 1, both played on the same layouts), "
                    "goals per episode, steps to the first goal and the exploit ratio on later goals.")
    evaluate.add_argument("run", metavar="RUN_DIR_OR_MODEL", help="run directory, or a model .zip inside one")
    evaluate.add_argument("--split", default="test", help="held-out split (test, val, ...) [default: test]")
    evaluate.add_argument("--episodes", type=int, help="episodes, one per layout in order [default: the run's "
                                                       "eval_episodes]")
    evaluate.add_argument("--layouts", nargs="+", metavar="FILE_OR_DIR",
                          help="evaluate on these layout files (or a folder of them) instead of a split")
    evaluate.add_argument("--n-envs", type=int, help="parallel envs [default: min(episodes, 1000)]")
    evaluate.add_argument("--no-references", action="store_true", help="skip the random and oracle references")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate.add_argument("--json-file", type=Path, metavar="FILE",
                          help="also write the report as JSON to FILE (atomically; NaN as null)")
    evaluate.add_argument("--progress-bar", action=argparse.BooleanOptionalAction, default=True,
                          help="show a progress bar of the agent's episodes on stderr [default: on]")
    _add_model_arguments(evaluate)
    evaluate.set_defaults(func=_evaluate)

    watch = commands.add_parser("watch", help="render one episode of a trained agent to a GIF",
                                description="Play one episode and write it as a GIF: the env draws the layout and "
                                            "the trajectory so far; a caption shows step, action, reward, return.")
    watch.add_argument("model", metavar="RUN_DIR_OR_MODEL", help="run directory, or a model .zip inside one")
    watch.add_argument("--layout", metavar="FILE", help="a layout file (text format) to play on")
    watch.add_argument("--split", help="held-out split to draw the layout from [default: the run's eval_split]")
    watch.add_argument("--out", default="episode.gif", help="GIF to write [default: episode.gif]")
    watch.add_argument("--fps", type=float, default=4.0, help="frames per second [default: 4]")
    _add_model_arguments(watch)
    watch.set_defaults(func=_watch)

    plot = commands.add_parser("plot", help="learning curves of several runs in one PNG",
                               description="Plot train (dotted) and held-out (dashed: val, solid: test) curves of "
                                           "each run's metrics.csv, RL or supervised, into one PNG; given "
                                           "evaluation reports (fwm-rl evaluate --json-file) instead, the per-visit "
                                           "curves: steps to goal for visit 1, 2, 3, ... of a lifetime.")
    plot.add_argument("runs", nargs="+", metavar="RUN_DIR_OR_REPORT",
                      help="run directories, or evaluation reports (.json)")
    plot.add_argument("--metric", help="metric to plot: a name logged as <split>/NAME (return, accuracy, loss, ...) "
                                       "or a column [default: the first of return, accuracy, loss, perplexity]")
    plot.add_argument("--out", default="curves.png", help="PNG to write [default: curves.png]")
    plot.add_argument("--title", help="figure title")
    plot.set_defaults(func=_plot)

    demo = commands.add_parser("demo", help="train FWM and LSTM on GraphNav for a few minutes, evaluate, plot",
                               description="Train an FWM agent (and a short LSTM run) on GraphNav on the CPU, "
                                           "evaluate both on the 600 test graphs beside the random and oracle "
                                           "references, print the table and write learning_curves.png.")
    demo.add_argument("--out", default="runs/demo", help="folder for the demo's runs and plot [default: runs/demo]")
    demo.add_argument("--minutes", type=float, help="training minutes of the FWM agent (the LSTM gets a third) "
                                                    "[default: 5]")
    demo.add_argument("--seed", type=int, default=0, help="seed of both agents' runs (printed) [default: 0]")
    demo.add_argument("--quick", action="store_true", help="a few seconds of training on small settings (for tests)")
    demo.set_defaults(func=_demo)

    supervised = commands.add_parser(
        "supervised", help="train a memory core on ART, mART, catbAbI or word-level language modelling",
        formatter_class=_HelpFormatter,
        description="Train a memory core on a supervised sequence task (runs under torchrun too). A run directory "
                    "RUNS_DIR/EXPERIMENT gets config.yaml, checkpoints/, metrics.csv, best_model.pt, results.json "
                    "and log.txt; --resume continues exactly where it stopped. Options share their names with "
                    "`fwm-rl train` (old spellings --core-options, --lr, --grad-clip, --eval-every still work, "
                    "with a warning).",
        epilog="examples:\n  fwm-rl supervised --task art --core fwlstm --pairs 8\n"
               "  fwm-rl supervised --task catbabi --core fwm --core-kwargs memory_size=16 --steps 2000\n"
               "  fwm-rl supervised --resume runs/art-fwlstm --steps 10000")
    add_trainer_arguments(supervised, SupervisedTrainer, config_help="YAML config file (a run's config.yaml, or an "
                          "old config.json); options below override its fields")
    supervised.set_defaults(func=_supervised)
    sweep.add_parser(commands, formatter_class=_HelpFormatter)
    report.add_parser(commands, formatter_class=_HelpFormatter)
    export.add_parser(commands, formatter_class=_HelpFormatter)
    tune.add_parser(commands, formatter_class=_HelpFormatter)
    probe.add_parser(commands, formatter_class=_HelpFormatter)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "func"):
        parser.print_help()
        sys.exit(EXIT_USER_ERROR)
    try:
        code = args.func(args)
    except UserError as e:
        print(f"fwm-rl: error: {e}", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        print("fwm-rl: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:  # output piped into a program that stopped reading (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(EXIT_USER_ERROR)
    sys.exit(code or 0)


if __name__ == "__main__":
    main()
