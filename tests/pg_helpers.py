"""A throwaway PostgreSQL cluster for the tests, started exactly as ``scripts/setup.sh postgres`` starts one
(``deploy/local_postgres.py``): Debian's binaries, as the ``postgres`` OS user when the tests run as root."""

from __future__ import annotations

import importlib.util
import secrets
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def local_postgres() -> ModuleType:
    """``deploy/local_postgres.py`` (a script, not a package module) as a module."""
    name = "isonyc_local_postgres"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, REPO / "deploy" / "local_postgres.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[Any]:
    """A running cluster with the ``dagster`` database, removed after the session. Skips only without binaries."""
    lp = local_postgres()
    if lp.find_bindir() is None:
        pytest.skip("PostgreSQL binaries not found (apt-get install postgresql, or set PG_BINDIR)")
    # Under /tmp, not pytest's tmp dir: that one is private to root, which the postgres OS user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="isonyc-pg-"))
    root.chmod(0o711)  # mkdtemp's 0700 would keep the postgres OS user out; the cluster dir is its own
    cluster = lp.open_cluster(root / "pg")
    try:
        cluster.start()
        yield cluster
    finally:
        try:
            cluster.stop()
        finally:
            shutil.rmtree(root, ignore_errors=True)


def fresh_database(cluster: Any, prefix: str = "t") -> str:
    """A new empty database on ``cluster`` (one per test: Dagster's schema state never leaks between tests)."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    cluster.psql(f"CREATE DATABASE {name}")
    return name


def instance_yaml(cluster: Any, db: str) -> str:
    """``dagster.yaml`` of an instance on database ``db`` of ``cluster`` (the setup script's, another database)."""
    lp = local_postgres()
    return lp.dagster_yaml(cluster).replace(f"db_name: {lp.DB_NAME}", f"db_name: {db}")


def instance_home(cluster: Any, home: Path, prefix: str = "t") -> Path:
    """``home`` as a ``DAGSTER_HOME`` whose instance lives on a new database of ``cluster``."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "dagster.yaml").write_text(instance_yaml(cluster, fresh_database(cluster, prefix)))
    return home
