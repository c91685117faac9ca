"""The ``isonyc`` command line, as a user runs it (a real subprocess)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.geo.surfaces import Surface, classes_from_rgb
from tests.conftest import geodata_file

REPO = Path(__file__).resolve().parents[1]


def isonyc(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("ISONYC_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check:
        assert out.returncode == 0, out.stdout + out.stderr
    return out


def test_locate_and_quadrant_round_trip() -> None:
    loc = json.loads(isonyc("locate", "40.7583", "-73.9702").stdout)
    x, y = loc["quadrant"]["x"], loc["quadrant"]["y"]
    info = json.loads(isonyc("quadrant", str(x), str(y)).stdout)
    corners = info["corners"]
    lats = [c["lat"] for c in corners.values()]
    lngs = [c["lng"] for c in corners.values()]
    assert min(lats) < 40.7583 < max(lats) and min(lngs) < -73.9702 < max(lngs)
    assert info["size_m"]["camera_right"] == pytest.approx(150.0)
    # The seed is the bottom-right corner of quadrant (0, 0): world pixel (512, 512).
    seed = json.loads(isonyc("locate", "40.7484", "-73.9857").stdout)
    assert seed["world_pixel"] == {"x": pytest.approx(512.0), "y": pytest.approx(512.0)}


def test_bounds_of_the_embedded_demo() -> None:
    out = json.loads(isonyc("bounds").stdout)
    assert out["bounds"] == "demo" and out["quadrants"] == 36
    assert out["bbox"] == {"x0": -27, "y0": 18, "x1": -22, "y1": 23}
    assert out["generation_steps"] == 16


def test_render_tile_of_real_buildings(tmp_path: Path) -> None:
    src = geodata_file("midtown_east_buildings_doitt.geojson")
    # The roof of the Citigroup Center (277.7 m) is drawn ~670 px above its footprint.
    loc = json.loads(isonyc("locate", "40.7583", "-73.9702", "--height", "277.7").stdout)["quadrant"]
    out = tmp_path / "tile.png"
    aux = tmp_path / "tile.npz"
    res = json.loads(
        isonyc(
            "render",
            str(loc["x"]),
            str(loc["y"]),
            "--tile",
            "-o",
            str(out),
            "--aux",
            str(aux),
            "--geodata",
            str(src),
        ).stdout
    )
    assert res["size"] == [1024, 1024] and res["synthetic"] is False
    rgb = np.asarray(Image.open(out).convert("RGB"))
    classes = classes_from_rgb(rgb)
    assert (classes != Surface.NONE).all()
    assert {Surface.ROOF, Surface.WALL_LEFT, Surface.WALL_RIGHT} <= set(np.unique(classes).tolist())
    with np.load(aux) as z:
        assert z["height"].max() == pytest.approx(277.67, abs=0.1)


def test_bad_input_gives_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "p.toml"
    bad.write_text("[map]\nelevation_deg = 30\n")
    out = isonyc("--config", str(bad), "bounds", check=False)
    assert out.returncode == 2
    assert "field 'map.elevation_deg'" in out.stderr and "Traceback" not in out.stderr
    out = isonyc(
        "render",
        "0",
        "0",
        "-o",
        str(tmp_path / "x.png"),
        "--geodata",
        str(tmp_path / "nope.geojson"),
        check=False,
    )
    assert out.returncode == 2 and "nope.geojson" in out.stderr and "Traceback" not in out.stderr
