"""Map/project configuration: defaults, files, and clear errors naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from isonyc_dagster.geo.config import ConfigError, MapConfig, load_map_config, load_project_config


def test_production_defaults() -> None:
    c = MapConfig()
    assert (c.seed.lat, c.seed.lng) == (40.7484, -73.9857)
    assert (c.azimuth_deg, c.elevation_deg, c.tile_px, c.quadrant_px, c.view_height_m) == (
        -15,
        -45,
        1024,
        512,
        300,
    )
    assert c.meters_per_pixel == pytest.approx(0.29297, abs=1e-5)


def test_load_toml_and_json(tmp_path: Path) -> None:
    t = tmp_path / "map.toml"
    t.write_text('[map]\nname = "mini"\nview_height_m = 150\n[map.seed]\nlat = 40.7\nlng = -74.0\n')
    c = load_map_config(t)
    assert c.name == "mini" and c.view_height_m == 150 and c.seed.lat == 40.7
    j = tmp_path / "map.json"
    j.write_text('{"azimuth_deg": -20}')
    assert load_map_config(j).azimuth_deg == -20


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("elevation_deg = 10", "elevation_deg"),
        ("view_height_m = -1", "view_height_m"),
        ('view_height_m = "tall"', "view_height_m"),
        ("tile_px = 1000", "(root)"),
        ("bogus = 1", "bogus"),
        ("[seed]\nlat = 123\nlng = 0", "seed.lat"),
    ],
)
def test_invalid_values_name_the_field(tmp_path: Path, text: str, field: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError) as ei:
        load_map_config(p)
    msg = str(ei.value)
    assert f"field '{field}'" in msg and str(p) in msg
    assert msg.count("\n") == 0


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_map_config(tmp_path / "nope.toml")
    p = tmp_path / "x.toml"
    p.write_text("a = [")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_map_config(p)
    y = tmp_path / "x.yaml"
    y.write_text("a: 1")
    with pytest.raises(ConfigError, match="unsupported extension"):
        load_map_config(y)


def test_project_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "project.toml"
    p.parent.mkdir()
    p.write_text(
        'bounds = "area.geojson"\ngeodata = ["b.geojson", "parks:p.geojson", "socrata"]\nstore = "tiles"\n'
    )
    cfg = load_project_config(p)
    assert cfg.bounds == str(p.parent / "area.geojson")
    assert cfg.geodata == [str(p.parent / "b.geojson"), f"parks:{p.parent / 'p.geojson'}", "socrata"]
    assert cfg.store == str(p.parent / "tiles")
    assert load_project_config(None).bounds == "demo"
