"""The README's main command: ``isonyc demo`` builds the default map offline, end to end, through Dagster."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import dagster as dg
import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow


def test_demo_builds_the_default_map(tmp_path: Path) -> None:
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("ISONYC_CONFIG", None)
    env.pop("DAGSTER_HOME", None)
    out = subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "rendered 36/36, steps 16/16, generated 36/36" in out.stdout
    assert "isonyc serve" in out.stdout and "dagster dev" in out.stdout

    map_dir = tmp_path / "data" / "map"
    dzi = ElementTree.parse(map_dir / "nyc.dzi").getroot()
    size = dzi.find("{*}Size")
    assert (int(size.get("Width")), int(size.get("Height"))) == (6 * 512, 6 * 512)
    side = json.loads((map_dir / "nyc.json").read_text())
    assert "synthetic" in side["attribution"].lower()
    assert (map_dir / "index.html").exists() and (map_dir / "nyc.pmtiles").stat().st_size > 0
    max_level = max(int(p.name) for p in (map_dir / "nyc_files").iterdir())
    tiles = sorted((map_dir / "nyc_files" / str(max_level)).glob("*.png"))
    assert len(tiles) == 36
    img = np.asarray(Image.open(tiles[14]).convert("RGB"))
    assert img.std() > 10  # generated pixel art, not a flat colour

    # The same runs are in the project-local Dagster instance that `dagster dev` shows.
    with dg.DagsterInstance.from_config(str(tmp_path / "data" / "dagster_home")) as instance:
        assert len(instance.get_materialized_partitions(dg.AssetKey("generation"))) == 36
        assert instance.get_latest_materialization_event(dg.AssetKey("dzi_pyramid")) is not None
