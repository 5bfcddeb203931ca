"""A run directory, for every trainer: its config file, checkpoints, metrics, log and the lock that keeps a second
writer out.

Layout::

    config.yaml         the resolved config (every value that ran) and its provenance (package version, git commit)
    checkpoints/        step_<step>.ckpt, written atomically; an unreadable one is kept as step_<step>.ckpt.corrupt
    metrics.csv/.jsonl  one row per logged step
    log.txt             messages
    .lock               an OS lock (flock) held by the process that writes the run; it holds that process's pid

Nothing here deletes a run's data before the new run has been validated: a trainer builds and checks everything
first, and only then ``open_new`` replaces an old run (under its lock).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

import cloudpickle

from fwm_rl.train.errors import UserError
from fwm_rl.train.io import MetricsLog, atomic_write, exclusive_lock
from fwm_rl.train.options import PROVENANCE_KEY, read_yaml, write_yaml

CONFIG_FILE = "config.yaml"
CHECKPOINT_DIR = "checkpoints"
LOG_FILE = "log.txt"
LOCK_FILE = ".lock"
CORRUPT_SUFFIX = ".corrupt"
CHECKPOINT_FORMAT = 2


def provenance() -> dict[str, Any]:
    """The package version, and the git commit of the source tree when it is a checkout (else null)."""
    import fwm_rl

    source = Path(fwm_rl.__file__).resolve().parent.parent
    commit, dirty = None, None
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10, check=True).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return {"fwm_rl_version": fwm_rl.__version__, "git_commit": commit, "git_dirty": dirty}


class RunDir:
    """The files of one run at ``path`` (see the module docstring)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # Files --------------------------------------------------------------------------------------------------------

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def checkpoint_dir(self) -> Path:
        return self.path / CHECKPOINT_DIR

    @property
    def log_path(self) -> Path:
        return self.path / LOG_FILE

    def metrics(self) -> MetricsLog:
        return MetricsLog(self.path)

    def holds_a_run(self) -> bool:
        return self.config_path.is_file()

    def is_empty(self) -> bool:
        return not self.path.exists() or not any(p.name != LOCK_FILE for p in self.path.iterdir())

    def write_config(self, values: dict[str, Any]) -> None:
        """``config.yaml``: the resolved config fields, then the provenance of the code that runs them."""
        write_yaml(self.config_path, {**values, PROVENANCE_KEY: provenance()})

    def read_config(self) -> dict[str, Any]:
        """The config fields of ``config.yaml`` (provenance left out)."""
        return read_yaml(self.config_path)

    def log(self, text: str) -> None:
        """Append a timestamped line to log.txt."""
        with self.log_path.open("a") as f:
            f.write(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {text}\n")

    # Lock ---------------------------------------------------------------------------------------------------------

    @contextmanager
    def locked(self) -> Iterator["RunDir"]:
        """Hold the run's OS lock for the block; a second writer gets ``run ... in use by pid N``. The OS drops the
        lock when its process dies however it dies, so a lock left by a dead pid is taken over."""
        self.path.mkdir(parents=True, exist_ok=True)
        busy = f"run {self.path} in use by pid {{}}; wait for it to finish or stop it first"
        with exclusive_lock(self.path / LOCK_FILE, busy.format):
            yield self

    def check_can_create(self, overwrite: bool) -> None:
        """Fail early, before anything is built, if a new run may not go here (nothing is changed on disk)."""
        if self.path.exists() and not self.path.is_dir():
            raise UserError(f"run directory {self.path} is a file")
        if self.is_empty():
            return
        if not overwrite:
            raise UserError(f"run directory {self.path} already exists; continue it with --resume {self.path}, or "
                            "pick another --experiment / --run-dir, or pass --overwrite")
        if not self.holds_a_run():
            raise UserError(f"refusing to overwrite {self.path}: it is not a run directory (no {CONFIG_FILE})")

    @contextmanager
    def open_new(self, overwrite: bool) -> Iterator["RunDir"]:
        """Take the lock, then (with ``overwrite``) empty the old run, for a new run that has been validated."""
        self.check_can_create(overwrite)
        with self.locked():
            for entry in self.path.iterdir():
                if entry.name == LOCK_FILE:
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            yield self

    # Checkpoints --------------------------------------------------------------------------------------------------

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoint_dir / f"step_{step:012d}.ckpt"

    def checkpoints(self) -> list[Path]:
        """Checkpoint files, oldest first."""
        return sorted(self.checkpoint_dir.glob("step_*.ckpt"))

    def write_checkpoint(self, step: int, payload: dict[str, Any], keep: Optional[int] = None) -> Path:
        """``payload`` (any picklable dict, tensors included) as ``step_<step>.ckpt``, atomically: a crash while
        writing leaves the previous checkpoints as they were. Then only the ``keep`` newest are kept."""
        data = cloudpickle.dumps({"format": CHECKPOINT_FORMAT, "step": int(step), "payload": payload})
        path = atomic_write(self.checkpoint_path(step), lambda tmp: tmp.write_bytes(data))
        if keep is not None:
            for old in self.checkpoints()[:-keep]:
                old.unlink()
        return path

    def read_newest_checkpoint(self) -> Optional[tuple[Path, int, dict[str, Any]]]:
        """The newest readable checkpoint as ``(path, step, payload)``, or None when there is none. Unreadable
        (e.g. truncated) newer ones are renamed to ``*.ckpt.corrupt`` (kept, never deleted) and reported in log.txt
        and on stderr."""
        for path in reversed(self.checkpoints()):
            try:
                box = cloudpickle.loads(path.read_bytes())
                if not isinstance(box, dict) or box.get("format") != CHECKPOINT_FORMAT:
                    raise ValueError(f"not a checkpoint of format {CHECKPOINT_FORMAT}")
            except Exception as e:  # a truncated or foreign file fails anywhere inside pickle
                kept = path.with_name(path.name + CORRUPT_SUFFIX)
                os.replace(path, kept)
                message = (f"checkpoint {path.name} is unreadable ({type(e).__name__}: {' '.join(str(e).split())}); "
                           f"kept it as {kept.name} and falling back to the previous checkpoint")
                print(f"fwm-rl: warning: {message}", file=sys.stderr)
                self.log(message)
                continue
            return path, box["step"], box["payload"]
        return None
