"""Shared test fixtures. Real NYC data is read in place from ../shared/geodata (never copied)."""

from __future__ import annotations

from pathlib import Path

import pytest

from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.geo.geometry import MapGeometry
from tests.pg_helpers import pg_cluster  # noqa: F401 - session fixture: a throwaway PostgreSQL cluster

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
GEODATA = SHARED / "geodata"
STYLE = SHARED / "reference" / "style"


def geodata_file(name: str) -> Path:
    """Path of a file in ../shared/geodata; skips the test when the shared data is absent."""
    p = GEODATA / name
    if not p.exists():
        pytest.skip(f"shared geodata {p} not available")
    return p


@pytest.fixture(scope="session")
def geometry() -> MapGeometry:
    """The production map geometry (isometric.nyc camera and seed)."""
    return MapGeometry(MapConfig())
