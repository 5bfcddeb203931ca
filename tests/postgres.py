"""A real, throwaway PostgreSQL server for tests: ``initdb`` and ``pg_ctl`` (Debian's ``postgresql`` package, which
``.ci/run`` installs when it is missing) in a temporary folder, listening on a free loopback port.

Use the ``postgres_url`` fixture (import it into the test module); it skips only when the server binaries are not
on this machine. As root (CI), the server runs as the ``postgres`` user (or ``nobody``), since PostgreSQL refuses
to run as root.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator, Optional

import pytest

USER = "fwm"  # the superuser initdb creates; trust authentication on loopback only


def server_binaries() -> Optional[Path]:
    """The folder holding initdb and pg_ctl: from PATH, else the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return Path(found).resolve().parent
    folders = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                     if Path(p).parent.name.isdigit() else 0)
    for folder in reversed(folders):
        if (Path(folder) / "initdb").is_file() and (Path(folder) / "pg_ctl").is_file():
            return Path(folder)
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_server_user() -> tuple[list[str], Optional[pwd.struct_passwd]]:
    """The command prefix that runs a server binary as a non-root user (nothing when we are not root)."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups", "--"], user
    raise RuntimeError("running as root and there is neither a postgres nor a nobody user to run PostgreSQL as")


class PostgresServer:
    """initdb + pg_ctl start in a fresh folder; ``url`` is the SQLAlchemy URL of its ``postgres`` database."""

    def __init__(self, binaries: Path) -> None:
        self.binaries = binaries
        self.folder = Path(tempfile.mkdtemp(prefix="fwm-postgres-"))
        self.data = self.folder / "data"
        self.prefix, user = _as_server_user()
        if user is not None:
            os.chown(self.folder, user.pw_uid, user.pw_gid)
        self.port = 0

    def _run(self, *command: str) -> None:
        result = subprocess.run([*self.prefix, *command], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}): {result.stderr.strip()[-2000:]}")

    def start(self) -> "PostgresServer":
        self._run(str(self.binaries / "initdb"), "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8",
                  "--no-sync")
        for attempt in range(3):  # a free port may be taken between free_port() and the server's bind
            self.port = free_port()
            options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.data} -c fsync=off "
                       "-c max_connections=50")
            try:
                self._run(str(self.binaries / "pg_ctl"), "-D", str(self.data), "-l", str(self.folder / "server.log"),
                          "-o", options, "-w", "-t", "60", "start")
                return self
            except RuntimeError:
                if attempt == 2:
                    log = self.folder / "server.log"
                    raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-2000:] if log.exists() else ''}")
        return self

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{USER}@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            subprocess.run([*self.prefix, str(self.binaries / "pg_ctl"), "-D", str(self.data), "-m", "immediate",
                            "-w", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(self.folder, ignore_errors=True)


@pytest.fixture(scope="module")
def postgres_url() -> Iterator[str]:
    """The URL of a PostgreSQL server started for this test module (and stopped and deleted after it)."""
    binaries = server_binaries()
    if binaries is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin; "
                    "install Debian's postgresql package (.ci/run does)")
    pytest.importorskip("psycopg2", reason="needs psycopg2 (the [tune] extra)")
    server = PostgresServer(binaries).start()
    try:
        yield server.url
    finally:
        server.stop()
