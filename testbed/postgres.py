"""A throwaway PostgreSQL server on a free loopback port, in a temporary directory.

Uses Debian's ``postgresql`` binaries (``/usr/lib/postgresql/<v>/bin``). initdb
refuses to run as root, so as root the server runs as the ``postgres`` user.
"""

from __future__ import annotations

import getpass
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from testbed.cluster import BIND_ATTEMPTS, bind_failed, free_port


def pg_bin() -> Path:
    root = Path("/usr/lib/postgresql")
    versions = sorted(
        (p for p in root.glob("*/bin") if (p / "initdb").exists()), key=lambda p: int(p.parent.name)
    )
    if not versions:
        raise FileNotFoundError("PostgreSQL server binaries not found; install Debian's postgresql package")
    return versions[-1]


def _as_user(argv: list[str], user: str | None) -> list[str]:
    return ["runuser", "-u", user, "--", *argv] if user else argv


@dataclass
class Postgres:
    datadir: Path
    port: int
    user: str
    bindir: Path
    run_as: str | None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres?sslmode=disable"

    def start(self) -> None:
        subprocess.run(
            _as_user(
                [
                    str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-w", "-t", "60",
                    "-l", str(self.datadir.parent / "pg.log"),
                    "-o", f"-p {self.port} -k {self.datadir.parent} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
                    "start",
                ],
                self.run_as,
            ),
            check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip

    def stop(self) -> None:
        """Immediate shutdown: open connections are cut, as when the server crashes."""
        subprocess.run(
            _as_user([str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", "immediate", "-w", "stop"], self.run_as),
            check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip


@contextmanager
def postgres_server() -> Iterator[Postgres]:
    bindir = pg_bin()
    run_as = "postgres" if os.geteuid() == 0 else None
    user = run_as or getpass.getuser()
    tmp = Path(tempfile.mkdtemp(prefix="k8s-watcher-pg-"))
    datadir = tmp / "data"
    if run_as:
        pw = pwd.getpwnam(run_as)
        os.chown(tmp, pw.pw_uid, pw.pw_gid)
    subprocess.run(
        _as_user([str(bindir / "initdb"), "-D", str(datadir), "-U", user, "-A", "trust", "--no-sync", "-E", "UTF8"], run_as),
        check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    server = Postgres(datadir=datadir, port=free_port(), user=user, bindir=bindir, run_as=run_as)
    for attempt in range(BIND_ATTEMPTS):
        try:
            server.start()
            break
        except subprocess.CalledProcessError:
            # The port was taken before PostgreSQL could bind it: another one.
            log = tmp / "pg.log"
            if attempt == BIND_ATTEMPTS - 1 or not bind_failed(log.read_text(errors="replace")):
                raise
            log.unlink()
            server.port = free_port()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
