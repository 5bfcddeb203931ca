"""Where an RL run writes: metrics.csv/.jsonl, TensorBoard scalars, and messages to the terminal and log.txt; and the
SB3 logger that feeds them through SB3's public output-format API."""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np
from stable_baselines3.common.logger import HumanOutputFormat, KVWriter, Logger

from fwm_rl.train.rundir import RunDir

TENSORBOARD_DIR = "tb"


class RunLog:
    """metrics (``RunDir.metrics``), TensorBoard scalars in ``tb/`` and messages (terminal and log.txt) of a run.

    ``resume_step``: drop the rows logged after it (the run continues from that checkpoint); -1 drops every row (it
    starts again from the beginning); None keeps them (a new run)."""

    def __init__(self, run: RunDir, resume_step: Optional[int] = None, quiet: bool = False) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.run = run
        self.metrics = run.metrics()
        if resume_step is not None:
            self.metrics.truncate(resume_step)
        purge_step = None if resume_step is None else resume_step + 1
        self.tensorboard = SummaryWriter(str(run.path / TENSORBOARD_DIR), purge_step=purge_step)
        self.text = run.log_path.open("a")
        self.quiet = quiet

    def write(self, step: int, metrics: dict[str, Any], tensorboard_skip: frozenset[str] = frozenset()) -> None:
        numbers = {key: float(value) for key, value in metrics.items()
                   if isinstance(value, (int, float, np.number)) and not isinstance(value, bool)}
        self.metrics.append(step, **numbers)
        for key, value in numbers.items():
            if key not in tensorboard_skip and math.isfinite(value):
                self.tensorboard.add_scalar(key, value, step)
        self.tensorboard.flush()

    def message(self, text: str) -> None:
        if not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(text)  # above a progress bar, if one is shown
        self.text.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")
        self.text.flush()

    def sb3_logger(self) -> "PendingLogger":
        """An SB3 logger whose dumps land in this log (metrics + TensorBoard) and as tables in log.txt."""
        return PendingLogger(folder=str(self.run.path), output_formats=[_MetricsWriter(self),
                                                                       HumanOutputFormat(self.text)])

    def close(self) -> None:
        self.tensorboard.close()
        self.text.close()


class PendingLogger(Logger):
    """SB3's Logger that also keeps, in order, the values recorded since the last dump, so that a checkpoint taken
    between an update (which records train/*) and the next dump can carry them over to the resumed run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: list[tuple[str, str, Any, Any]] = []

    def record(self, key: str, value: Any, exclude: Any = None) -> None:
        self.pending.append(("record", key, value, exclude))
        super().record(key, value, exclude)

    def record_mean(self, key: str, value: Any, exclude: Any = None) -> None:
        self.pending.append(("record_mean", key, value, exclude))
        super().record_mean(key, value, exclude)

    def dump(self, step: int = 0) -> None:
        self.pending = []
        super().dump(step)

    def replay(self, pending: list[tuple[str, str, Any, Any]]) -> None:
        """Record again what another logger had pending (``pending`` of a checkpoint)."""
        for method, key, value, exclude in pending:
            getattr(self, method)(key, value, exclude)


class _MetricsWriter(KVWriter):
    """SB3 output format that forwards every dump to a RunLog."""

    def __init__(self, run_log: RunLog) -> None:
        self.run_log = run_log

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, tuple[str, ...]], step: int = 0) -> None:
        skip = frozenset(key for key, formats in key_excluded.items() if formats and "tensorboard" in formats)
        self.run_log.write(step, key_values, tensorboard_skip=skip)

    def close(self) -> None:
        pass
