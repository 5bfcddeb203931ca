"""train.io: atomic writes keep the old file on failure and give new files the mode open() would."""
import os
import stat

import pytest

from fwm_rl.train.io import atomic_write


def test_atomic_write_gives_the_file_the_umask_mode_not_mkstemps_0600(tmp_path):
    path = atomic_write(tmp_path / "config.yaml", lambda tmp: tmp.write_text("a: 1\n"))
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_atomic_write_that_fails_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("old\n")

    def fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(path, fail)
    assert path.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv"]
