"""Files of a run: atomic writes (nothing is half-written if the process dies) and an append-only metrics log."""
from __future__ import annotations

import csv
import fcntl
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Union

from fwm_rl.train.errors import UserError

PathLike = Union[str, os.PathLike]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it over ``path`` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600; a run's files get the mode open() would give them
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path



@contextmanager
def exclusive_lock(path: PathLike, busy: Callable[[str], str]) -> Iterator[None]:
    """Hold an OS lock (flock) on ``path`` for the block, with this process's pid written in the file. If another
    process holds it, raise ``UserError(busy(its_pid))`` at once. The OS drops the lock when its process dies, however
    it dies, so a lock left by a dead process is simply taken over."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
        os.close(fd)
        raise UserError(busy(holder)) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield
    finally:
        os.close(fd)  # releases the flock

def write_json(path: PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON, atomically."""
    return atomic_write(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


class MetricsLog:
    """Rows of metrics in ``metrics.csv`` (one column per key, ``step`` first) and ``metrics.jsonl``.

    Rows may carry different keys; the CSV is rewritten atomically with the union of the columns on every append,
    so it is always complete and readable by ``fwm-rl plot``. Re-opening a run continues its log.
    """

    def __init__(self, run_dir: PathLike) -> None:
        self.csv_path = Path(run_dir) / "metrics.csv"
        self.jsonl_path = Path(run_dir) / "metrics.jsonl"
        self.rows: list[dict[str, Any]] = []
        if self.jsonl_path.exists():
            self.rows = [json.loads(line) for line in self.jsonl_path.read_text().splitlines() if line.strip()]

    def append(self, step: int, **metrics: Any) -> None:
        row = {"step": int(step), **metrics}
        self.rows.append(row)
        self.jsonl_path.parent.mkdir(parents=True, exist_ok=True)
        with self.jsonl_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        atomic_write(self.csv_path, self._write_csv)

    def truncate(self, max_step: int) -> None:
        """Drop rows after ``max_step`` (used when a run resumes from an earlier checkpoint)."""
        self.rows = [row for row in self.rows if row["step"] <= max_step]
        atomic_write(self.jsonl_path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in self.rows)))
        atomic_write(self.csv_path, self._write_csv)

    def _write_csv(self, tmp: Path) -> None:
        columns = ["step"] + sorted({key for row in self.rows for key in row} - {"step"})
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)
