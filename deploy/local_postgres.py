#!/usr/bin/env python3
"""A local PostgreSQL cluster for the Dagster instance: Debian's PostgreSQL binaries, started under the project.

    python deploy/local_postgres.py start [--dir .pg] [--dagster-home data/dagster_home]
    python deploy/local_postgres.py stop  [--dir .pg]
    python deploy/local_postgres.py status [--dir .pg]

``start`` (idempotent) runs ``initdb`` once, then ``pg_ctl start`` listening on 127.0.0.1 at a free port (kept in
``<dir>/port`` so restarts reuse it) and on a Unix socket in ``<dir>/run``; it creates the ``dagster`` database
and writes ``<dagster-home>/dagster.yaml`` with ``dagster_postgres`` storage over that socket. Local connections
are trusted (the socket directory is private to the cluster's owner, so only that user and root reach it); TCP on
127.0.0.1 needs a password (scram-sha-256): roles get one with ``ALTER ROLE … PASSWORD`` when a client needs TCP.

PostgreSQL refuses to run as root: as root, the cluster runs as the ``postgres`` OS user that Debian's package
creates (through ``runuser``), and its directory is owned by that user. No Python dependency beyond the standard
library: ``scripts/setup.sh postgres`` runs it, and the tests import it (``tests/pg_helpers.py``).
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

DB_NAME = "dagster"
SUPERUSER = "isonyc"
MARKER = "# Written by scripts/setup.sh postgres"


class PostgresError(RuntimeError):
    """The cluster could not be set up; the message names the problem and the fix."""


def find_bindir() -> Path | None:
    """The directory of initdb/pg_ctl/postgres: ``$PG_BINDIR``, else Debian's newest, else the PATH's."""
    env = os.environ.get("PG_BINDIR")
    if env:
        return Path(env) if (Path(env) / "initdb").exists() else None
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if debian:
        return Path(debian[-1]).parent
    initdb = shutil.which("initdb")
    return Path(os.path.realpath(initdb)).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    """One cluster directory: ``data/`` (PGDATA), ``run/`` (socket), ``port``, ``server.log``."""

    root: Path
    bindir: Path
    port: int

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the ``dagster`` database over the socket (no password: socket auth is trust)."""
        return f"postgresql+psycopg2://{SUPERUSER}@/{DB_NAME}?host={self.socket_dir}&port={self.port}"

    def _as_owner(self, args: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        cmd = [str(a) for a in args]
        if os.geteuid() == 0:  # PostgreSQL will not run as root: Debian's package made a postgres user
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, **kw)  # type: ignore[call-overload]

    def _check(self, what: str, res: subprocess.CompletedProcess[str]) -> None:
        if res.returncode != 0:
            tail = (res.stderr or res.stdout).strip().splitlines()[-5:]
            raise PostgresError(f"{what} failed ({res.returncode}): {' | '.join(tail)}; log: {self.log}")

    def running(self) -> bool:
        res = self._as_owner([self.bindir / "pg_ctl", "status", "-D", self.data])
        return res.returncode == 0

    def psql(self, sql: str, db: str = "postgres") -> str:
        res = self._as_owner(
            [self.bindir / "psql", "-X", "-q", "-At", "-h", self.socket_dir, "-p", self.port, "-U", SUPERUSER]
            + ["-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]
        )
        self._check(f"psql {sql[:40]!r}", res)
        return res.stdout.strip()

    def start(self) -> None:
        self._prepare_dirs()
        if not (self.data / "PG_VERSION").exists():
            self._check(
                "initdb",
                self._as_owner(
                    [self.bindir / "initdb", "-D", self.data, "-U", SUPERUSER, "-E", "UTF8", "--no-locale"]
                    + ["--auth-local=trust", "--auth-host=scram-sha-256"]
                ),
            )
        if not self.running():
            opts = (
                f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.socket_dir}"
                " -c max_connections=200 -c fsync=on"
            )
            res = self._as_owner(
                [
                    self.bindir / "pg_ctl",
                    "start",
                    "-w",
                    "-t",
                    "60",
                    "-D",
                    self.data,
                    "-l",
                    self.log,
                    "-o",
                    opts,
                ]
            )
            self._check("pg_ctl start", res)
        if self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}'") != "1":
            self.psql(f"CREATE DATABASE {DB_NAME}")

    def stop(self) -> None:
        if self.data.exists() and self.running():
            res = self._as_owner(
                [self.bindir / "pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", self.data]
            )
            self._check("pg_ctl stop", res)

    def _prepare_dirs(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.socket_dir.mkdir(exist_ok=True)
        (self.root / "port").write_text(f"{self.port}\n")
        if os.geteuid() == 0:
            pg = pwd.getpwnam("postgres")
            for p in (self.root, self.socket_dir, self.root / "port"):
                os.chown(p, pg.pw_uid, pg.pw_gid)
            probe = subprocess.run(["runuser", "-u", "postgres", "--", "test", "-w", str(self.root)])
            if probe.returncode != 0:
                raise PostgresError(
                    f"the postgres OS user cannot write {self.root} (a parent directory is private to root); "
                    "choose a --dir it can reach, e.g. under /var/tmp"
                )
        os.chmod(self.socket_dir, 0o700)


def open_cluster(root: Path, port: int | None = None) -> Cluster:
    """The cluster at ``root`` (its recorded port, else ``port``, else a free one). PostgresError without binaries."""
    bindir = find_bindir()
    if bindir is None:
        raise PostgresError(
            "PostgreSQL binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on PATH): "
            "apt-get install postgresql, or set PG_BINDIR"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresError(
                "running as root needs the 'postgres' OS user (apt-get install postgresql)"
            ) from None
    recorded = root / "port"
    if port is None and recorded.exists():
        port = int(recorded.read_text().strip())
    return Cluster(root=root.resolve(), bindir=bindir, port=port or free_port())


def dagster_yaml(cluster: Cluster) -> str:
    """An instance config on this cluster (run, event log and schedule storage), over the private socket."""
    return f"""{MARKER}: the Dagster instance on the project's local PostgreSQL
# (cluster in {cluster.root}; `python deploy/local_postgres.py stop` stops it). Telemetry off.
telemetry:
  enabled: false
storage:
  postgres:
    postgres_db:
      username: {SUPERUSER}
      hostname: ""
      port: {cluster.port}
      db_name: {DB_NAME}
      scheme: postgresql+psycopg2
      params:
        host: {cluster.socket_dir}
run_monitoring:
  enabled: true
  start_timeout_seconds: 180
  cancel_timeout_seconds: 180
  poll_interval_seconds: 30
"""


def write_dagster_yaml(cluster: Cluster, home: Path) -> Path:
    """Write ``home/dagster.yaml``; a dagster.yaml a person wrote (not ours nor the demo's) is kept and refused."""
    home.mkdir(parents=True, exist_ok=True)
    cfg = home / "dagster.yaml"
    if cfg.exists():
        head = cfg.read_text().split("\n", 1)[0]
        if not (head.startswith(MARKER) or head.startswith("# Written by `isonyc demo`")):
            raise PostgresError(f"{cfg} was written by hand: move it away or add the postgres storage to it")
    cfg.write_text(dagster_yaml(cluster))
    return cfg


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="local_postgres", description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=["start", "stop", "status"])
    ap.add_argument("--dir", default=".pg", help="cluster directory (default .pg in the working directory)")
    ap.add_argument("--dagster-home", default=None, help="write dagster.yaml here on start")
    args = ap.parse_args(argv)
    try:
        cluster = open_cluster(Path(args.dir))
        if args.command == "start":
            t = time.perf_counter()
            cluster.start()
            print(
                f"postgres: running on 127.0.0.1:{cluster.port} and {cluster.socket_dir} ({time.perf_counter() - t:.1f}s)"
            )
            if args.dagster_home:
                print(f"postgres: wrote {write_dagster_yaml(cluster, Path(args.dagster_home))}")
        elif args.command == "stop":
            cluster.stop()
            print("postgres: stopped")
        else:
            up = cluster.data.exists() and cluster.running()
            print(f"postgres: {'running' if up else 'stopped'} ({cluster.url})")
            return 0 if up else 3
    except PostgresError as e:
        print(f"local_postgres {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
