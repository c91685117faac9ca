"""Large bounds load the city region by region; the renders must not depend on which region drew them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import isonyc_dagster.project as project_mod
from isonyc_dagster.geo.bounds import preset_polygon, quadrants_for_bounds
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.project import Project, ground_window
from tests.conftest import geodata_file
from tests.dagster_helpers import project_config


@pytest.mark.parametrize("real", [False, True], ids=["synthetic", "midtown-east"])
def test_region_renders_equal_whole_city_renders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, geometry, real: bool
) -> None:
    if real:
        src = geodata_file("midtown_east_buildings_doitt.geojson")
        loc = geometry.locate(40.7583, -73.9702)["quadrant"]
        x0, y0 = loc["x"] - 3, loc["y"] - 3
        cfg = project_config(tmp_path, x0, y0, x0 + 5, y0 + 5, geodata=[str(src)])
    else:
        cfg = project_config(tmp_path, -27, 18, -22, 23)  # the Battery: shoreline, parks, many equal heights
    whole = Project(cfg)
    assert whole.whole_city
    monkeypatch.setattr(project_mod, "WHOLE_CITY_MAX_M2", 0.0)
    monkeypatch.setattr(project_mod, "REGION_QUADRANTS", 3)  # regions cut through the area in both directions
    regions = Project(cfg)
    assert not regions.whole_city
    used = set()
    for x, y in whole.quadrants.keys:
        a = whole.renderer.render_quadrant(x, y)
        b = regions.renderer_at(x, y).render_quadrant(x, y)
        used.add(regions.region_of(x, y))
        for name in ("rgb", "surface", "building", "height"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), (x, y, name)
    assert len(used) >= 4


def test_large_presets_need_no_whole_city(tmp_path: Path, geometry) -> None:
    """Manhattan's ground window is ~300 km²: it is rendered region by region, never loaded whole."""
    cfg = ProjectConfig(bounds="manhattan", store=str(tmp_path / "s"), cache_dir=str(tmp_path / "c"))
    p = Project(cfg)
    assert not p.whole_city
    assert (
        ground_window(geometry, quadrants_for_bounds(geometry, preset_polygon("manhattan")).bbox).area > 100e6
    )
    x, y = geometry.locate(40.7484, -73.9857)["quadrant"].values()  # the Empire State Building's quadrant
    res = p.renderer_at(x, y).render_quadrant(x, y)
    assert res.stats["buildings_drawn"] > 5 and p.region_city(*p.region_of(x, y)).synthetic
