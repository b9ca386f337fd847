"""A throwaway PostgreSQL server for tests and benchmarks: its own data directory, reachable only
through a Unix socket in a private directory (no TCP port), trust authentication scoped to that
socket, stopped and deleted afterwards.

PostgreSQL refuses to run as root: as root, the server runs as the ``postgres`` user (Debian's
package creates it), which owns the temporary directory.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path


def find_bindir() -> Path | None:
    """The directory of initdb and pg_ctl: on PATH, else Debian's /usr/lib/postgresql/<major>/bin."""
    initdb = shutil.which("initdb")
    if initdb:
        return Path(initdb).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class TempPostgres:
    """``with TempPostgres() as pg: pg.dsn`` — start() / stop() / restart for outage tests."""

    def __init__(self, bindir: Path | None = None, *, settings: dict[str, str] | None = None) -> None:
        self.bindir = bindir or find_bindir()
        if self.bindir is None:
            raise FileNotFoundError("PostgreSQL not found (initdb): apt-get install postgresql-15")
        self.user = "postgres" if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="facesdk-pg-"))
        self.data, self.socket = self.root / "data", self.root / "socket"
        self.socket.mkdir(mode=0o700)
        if self.user:
            try:
                entry = pwd.getpwnam(self.user)
            except KeyError:
                raise RuntimeError("PostgreSQL refuses to run as root, and there is no 'postgres' user to run it as") from None
            for path in (self.root, self.socket):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self.settings = {"listen_addresses": "''", "fsync": "off", "max_connections": "100", **(settings or {})}
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions")
        self.dsn = f"host={self.socket} dbname=postgres user=postgres"
        self.running = False

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        out = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{tool} failed ({out.returncode}): {out.stderr.strip() or out.stdout.strip()}")

    def start(self) -> TempPostgres:
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60",
                  "-o", f"-k {self.socket} {options}", "start")  # fmt: skip
        self.running = True
        return self

    def stop(self) -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-w", "-m", "fast", "stop")
            self.running = False

    def size_on_disk(self) -> int:
        return sum(p.stat().st_size for p in (self.data / "base").rglob("*") if p.is_file())

    def cleanup(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.cleanup()
