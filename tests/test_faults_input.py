"""Bad input gets one clear error, never a traceback, a hang or a silent wrong answer (issue 10).

Bounds, geometry, config, geodata heights, the ``isonyc`` command (as a real subprocess) and ``isonyc serve`` (real
sockets on 127.0.0.1).
"""

from __future__ import annotations

import json
import logging
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Polygon, box, mapping

from isonyc_dagster.geo.bounds import (
    CITY_RADIUS_M,
    MAX_QUADRANTS,
    BoundsError,
    bbox_quadrant_count,
    load_bounds,
    preset_polygon,
    quadrants_for_bounds,
)
from isonyc_dagster.geo.config import ConfigError, ProjectConfig, load_project_config
from isonyc_dagster.geo.geometry import GeometryError, MapGeometry
from isonyc_dagster.geodata._common import MAX_PLAUSIBLE_HEIGHT_M
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.geodata.model import DEFAULT_UNKNOWN_HEIGHT_M
from isonyc_dagster.geodata.osm import read_osm
from isonyc_dagster.geodata.vector import read_vector
from isonyc_dagster.project import Project
from isonyc_dagster.publish.serve import LISTEN_BACKLOG, MapServer, path_problem
from tests.conftest import geodata_file
from tests.test_geodata_osm import _osm_xml, _sq
from tests.test_geodata_vector import _write

REPO = Path(__file__).resolve().parents[1]


def write_geojson(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj))
    return path


# --- bounds ---------------------------------------------------------------------------------------------------------

NORTH_AMERICA = box(-168, 15, -52, 72)
THREE_DEGREES = box(-75.5, 39.5, -72.5, 42.5)  # around NYC
PARIS = box(2.29, 48.85, 2.36, 48.88)
SYDNEY = box(151.19, -33.88, 151.22, -33.85)
SWAPPED_BATTERY = box(40.700, -74.020, 40.710, -74.010)  # (lat, lng) given as (lng, lat)
PHILADELPHIA = box(-75.17, 39.95, -75.16, 39.96)  # 133 km away: inside the map's domain


def test_bounds_size_cap_is_checked_from_the_outline_before_any_allocation(geometry: MapGeometry) -> None:
    with pytest.raises(BoundsError, match=r"too large: they span 116\.00° of longitude") as ei:
        quadrants_for_bounds(geometry, NORTH_AMERICA)
    assert "at most 200,000 quadrants" in str(ei.value)
    t0 = time.perf_counter()
    with pytest.raises(BoundsError, match=r"their window \(3\.00° .*\) holds 4,\d{3},\d{3} quadrants"):
        quadrants_for_bounds(geometry, THREE_DEGREES)
    assert time.perf_counter() - t0 < 5  # it used to run for minutes
    # The estimate is what quadrants_for_bounds allocates: the exact bbox of the nyc preset.
    nyc = preset_polygon("nyc")
    x0, y0, x1, y1 = quadrants_for_bounds(geometry, nyc).bbox
    assert bbox_quadrant_count(geometry, nyc) == pytest.approx((x1 - x0 + 1) * (y1 - y0 + 1), rel=0.01)
    assert bbox_quadrant_count(geometry, nyc) < MAX_QUADRANTS


@pytest.mark.parametrize(
    ("poly", "hint"),
    [
        (PARIS, "check that the file is for this map's city"),
        (SYDNEY, "check that the file is for this map's city"),
        (SWAPPED_BATTERY, "latitude and longitude look swapped"),
        (PHILADELPHIA, "check that the file is for this map's city"),
    ],
)
def test_bounds_far_from_the_city_are_refused_and_say_how_far(
    geometry: MapGeometry, poly: Polygon, hint: str
) -> None:
    with pytest.raises(BoundsError) as ei:
        quadrants_for_bounds(geometry, poly)
    msg = str(ei.value)
    assert "km from the map seed (40.7484, -73.9857)" in msg and hint in msg
    assert "--force" in msg and "force_bounds = true" in msg and "\n" not in msg


def test_forced_bounds_are_built_within_the_maps_domain_only(geometry: MapGeometry) -> None:
    assert len(quadrants_for_bounds(geometry, PHILADELPHIA, force=True)) > 4
    with pytest.raises(
        BoundsError, match=r"5,8\d\d km from the map seed .* outside this map's domain .*\[map\.seed\]"
    ):
        quadrants_for_bounds(geometry, PARIS, force=True)
    # A polygon that reaches into the city is fine however far its other end goes.
    reach = box(-74.0, 40.70, -73.0, 40.72)
    assert len(quadrants_for_bounds(geometry, reach)) > 100
    assert CITY_RADIUS_M >= 36_000  # every point of NYC is within 36 km of the default seed


def test_config_force_bounds_reaches_the_project(tmp_path: Path) -> None:
    b = write_geojson(tmp_path / "philly.geojson", mapping(PHILADELPHIA))
    (tmp_path / "p.toml").write_text(f'bounds = "{b.name}"\n')
    with pytest.raises(BoundsError, match="force_bounds"):
        _ = Project(load_project_config(tmp_path / "p.toml")).quadrants
    (tmp_path / "p.toml").write_text(f'bounds = "{b.name}"\nforce_bounds = true\n')
    assert len(Project(load_project_config(tmp_path / "p.toml")).quadrants) > 4
    assert ProjectConfig().force_bounds is False


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            "[1, 2]",
            "expected a GeoJSON object (Polygon, MultiPolygon, Feature or FeatureCollection), found a JSON array",
        ),
        ('"Polygon"', "found a JSON string"),
        ("3", "found a JSON number"),
        ("null", "found a JSON null"),
        (
            '{"type": "FeatureCollection", "features": [1]}',
            "expected Polygon or MultiPolygon geometries, found a JSON number",
        ),
        ('{"type": "FeatureCollection", "features": {}}', "a FeatureCollection needs a 'features' list"),
        ('{"type": "FeatureCollection", "features": []}', "contains no polygon"),
        ('{"type": "Polygon", "coordinates": [[1, 2]]}', "a Polygon has malformed coordinates"),
        ('{"type": "Polygon", "coordinates": "x"}', "a Polygon has malformed coordinates"),
        (
            '{"type": "Polygon", "coordinates": [[[NaN, 40.7], [-73.9, 40.7], [-73.9, 40.8], [NaN, 40.7]]]}',
            "is not valid GeoJSON: NaN is not a coordinate",
        ),
        (
            '{"type": "Polygon", "coordinates": [[[-74, 40.7], [Infinity, 40.7], [-73.9, 40.8], [-74, 40.7]]]}',
            "is not valid GeoJSON: Infinity is not a coordinate",
        ),
        (
            '{"type": "Polygon", "coordinates": [[[-74, 40.7], [1e999, 40.7], [-73.9, 40.8], [-74, 40.7]]]}',
            "a coordinate is not a finite number (NaN or Infinity)",
        ),
    ],
)
def test_malformed_bounds_geojson_gets_one_clear_line(tmp_path: Path, content: str, message: str) -> None:
    p = tmp_path / "b.geojson"
    p.write_text(content)
    with pytest.raises(BoundsError) as ei:
        load_bounds(str(p))
    assert message in str(ei.value) and str(p) in str(ei.value) and "\n" not in str(ei.value)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_bounds_given_in_code_are_refused(geometry: MapGeometry) -> None:
    with pytest.raises(BoundsError, match="not a finite number"):
        quadrants_for_bounds(geometry, Polygon([(-74.0, 40.7), (np.nan, 40.7), (-73.9, 40.8)]))


def test_bounds_directory_and_unknown_presets(tmp_path: Path) -> None:
    with pytest.raises(BoundsError, match="is a directory"):
        load_bounds(str(tmp_path))
    with pytest.raises(BoundsError) as ei:
        load_bounds("brooklyn")
    assert "'brooklyn' is not a preset" in str(ei.value) and "demo, manhattan, nyc" in str(ei.value)
    with pytest.raises(BoundsError, match=r"did you mean 'manhattan'\?.*demo, manhattan, nyc"):
        load_bounds(str(tmp_path / "Manhattan"))
    with pytest.raises(BoundsError, match="unknown bounds preset 'NYC' \\(did you mean 'nyc'\\?\\)"):
        preset_polygon("NYC")


# --- geometry -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((float("nan"), -73.98), "latitude nan is not a finite number; give degrees in -90…90"),
        ((40.7, float("inf")), "longitude inf is not a finite number; give degrees in -180…180"),
        ((91.0, 0.0), "latitude 91 is out of range; give degrees in -90…90"),
        ((40.7, -181.0), "longitude -181 is out of range"),
        ((40.7, -73.98, float("nan")), "height nan is not a finite number"),
        ((40.7, -73.98, 1e6), "height 1e+06 is out of range"),
        ((48.8566, 2.3522), "lies 5,8"),
        ((-73.9857, 40.7484), "km around it: latitude and longitude look swapped (give LAT first, then LNG)"),
    ],
)
def test_locate_refuses_what_it_cannot_place(geometry: MapGeometry, args: tuple, message: str) -> None:
    with pytest.raises(GeometryError) as ei:
        geometry.locate(*args)
    assert message in str(ei.value)


def test_quadrant_info_refuses_keys_outside_the_map(geometry: MapGeometry) -> None:
    with pytest.raises(GeometryError, match=r"quadrant \(5000, 0\) lies 750 km from the map seed"):
        geometry.quadrant_info(5000, 0)
    with pytest.raises(GeometryError, match="lies far outside the map"):
        geometry.quadrant_info(10**20, 0)
    with pytest.raises(GeometryError, match="not an integer"):
        geometry.quadrant_info(1.5, 0)  # type: ignore[arg-type]
    assert (
        geometry.quadrant_info(3000, 0)["center"]["lng"] > -69
    )  # 450 km east: the edge of the domain still works


# --- config ---------------------------------------------------------------------------------------------------------


def test_config_that_is_a_directory_not_utf8_or_not_a_table_names_the_file(tmp_path: Path) -> None:
    d = tmp_path / "conf.toml"
    d.mkdir()
    with pytest.raises(ConfigError, match=f"config file {d} is a directory"):
        load_project_config(d)
    b = tmp_path / "latin1.toml"
    b.write_bytes('bounds = "Bahía"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=f"config file {b} is not UTF-8 text .*save it as UTF-8"):
        load_project_config(b)
    j = tmp_path / "list.json"
    j.write_text("[1]")
    with pytest.raises(ConfigError, match=f"config file {j}: expected a JSON object"):
        load_project_config(j)


@pytest.mark.parametrize(
    ("name", "text", "field"),
    [
        ("a.toml", "[map]\nazimuth_deg = nan\n", "map.azimuth_deg"),
        ("b.toml", "[map]\nview_height_m = inf\n", "map.view_height_m"),
        ("c.json", '{"map": {"seed": {"lat": NaN, "lng": -73.9}}}', "map.seed.lat"),
    ],
)
def test_nan_and_infinity_in_config_are_refused(tmp_path: Path, name: str, text: str, field: str) -> None:
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(ConfigError, match=f"field '{field}': Input should be a finite number"):
        load_project_config(p)


# --- geodata: heights -----------------------------------------------------------------------------------------------


def _squares(geometry: MapGeometry, n: int) -> list[Polygon]:
    """n 20 m squares in Midtown East, in lng/lat."""
    e0, n0 = geometry.lnglat_to_ground(-73.97, 40.757)
    out = []
    for i in range(n):
        ring = _sq(float(e0) + 40 * i, float(n0), 20)
        lng, lat = geometry.ground_to_lnglat(*np.array(ring).T)
        out.append(Polygon(zip(lng, lat, strict=True)))
    return out


def test_bad_and_implausible_heights_are_flagged_per_file_not_silently_12m(
    geometry: MapGeometry, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    values = [30, "abc", -5, 9999, 0, None, "45 m", "2500 ft"]
    ids = ["ok", "text", "negative", "huge", "zero", "missing", "metres", "feet"]
    squares = _squares(geometry, len(values))
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"id": i, "height": v}, "geometry": mapping(g)}
            for i, v, g in zip(ids, values, squares, strict=True)
        ],
    }
    path = write_geojson(tmp_path / "buildings.geojson", fc)
    with caplog.at_level(logging.WARNING, logger="isonyc_dagster.geodata"):
        fs = read_vector(path, geometry)
    by_id = {b.id: b for b in fs.buildings}
    assert set(by_id) == set(ids)  # nothing dropped
    assert by_id["ok"].height_m == 30 and by_id["metres"].height_m == 45
    for bad in ("text", "negative", "huge", "feet"):
        assert by_id[bad].height_estimated and by_id[bad].height_m == DEFAULT_UNKNOWN_HEIGHT_M
    assert max(b.height_m for b in fs.buildings) <= MAX_PLAUSIBLE_HEIGHT_M
    r = fs.reports[0]
    assert (r.heights_invalid, r.heights_implausible, r.heights_estimated) == (2, 2, 6)
    d = r.as_dict()
    assert (d["heights_invalid"], d["heights_implausible"]) == (2, 2)
    invalid = next(w for w in r.warnings if "not usable numbers" in w)
    assert invalid.startswith("2 building height(s)") and "text (height='abc')" in invalid
    assert "negative (height='-5')" in invalid
    tall = next(w for w in r.warnings if "above 600 m" in w)
    assert "huge (height='9999')" in tall and "feet (height='2500 ft')" in tall
    assert "zero" not in invalid + tall and "missing" not in invalid + tall  # 0 and null mean "unknown"
    assert any(
        str(path) in rec.getMessage() and "not usable numbers" in rec.getMessage() for rec in caplog.records
    )


def test_geodata_asset_metadata_carries_the_read_reports(geometry: MapGeometry, tmp_path: Path) -> None:
    import dagster as dg

    from isonyc_dagster.defs.definitions import build_definitions
    from tests.dagster_helpers import project_config

    squares = _squares(geometry, 3)
    fc = {
        "type": "FeatureCollection",
        "features": [
            {"type": "Feature", "properties": {"id": i, "height": v}, "geometry": mapping(g)}
            for i, v, g in zip(("a", "b", "c"), (25, "n/a", 4000), squares, strict=True)
        ],
    }
    src = write_geojson(tmp_path / "buildings.geojson", fc)
    q = geometry.locate(40.757, -73.97)["quadrant"]
    cfg = project_config(tmp_path, q["x"] - 1, q["y"] - 1, q["x"] + 1, q["y"] + 1, geodata=[str(src)])
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster")) as instance:
        result = build_definitions(cfg).resolve_job_def("geodata_job").execute_in_process(instance=instance)
    assert result.success
    (mat,) = result.asset_materializations_for_node("geodata")
    (report,) = mat.metadata["read_reports"].value  # type: ignore[union-attr]
    assert report["source"] == str(src) and (report["heights_invalid"], report["heights_implausible"]) == (
        1,
        1,
    )
    assert mat.metadata["warnings"].value == len(report["warnings"]) >= 2  # type: ignore[union-attr]


def test_numeric_nan_negative_and_huge_heights_in_a_typed_column(
    geometry: MapGeometry, tmp_path: Path
) -> None:
    values = [20.0, float("nan"), -3.0, float("inf"), 1500.0, 0.0, None]
    path = tmp_path / "b.fgb"  # FlatGeobuf keeps NaN (SQLite, and so GeoPackage, stores it as NULL)
    ids = [str(i) for i in range(len(values))]
    _write(
        path,
        {"bin": ids, "height_m": values},
        _squares(geometry, len(values)),
        crs="EPSG:4326",
        driver="FlatGeobuf",
    )
    fs = read_vector(path, geometry)
    r = fs.reports[0]
    assert len(fs.buildings) == len(values)
    assert (r.heights_invalid, r.heights_implausible) == (3, 1)
    assert all(b.height_m <= MAX_PLAUSIBLE_HEIGHT_M for b in fs.buildings)


def test_implausible_levels_and_osm_text_heights_are_flagged(geometry: MapGeometry, tmp_path: Path) -> None:
    ways = [
        ("1", _sq(0, 0, 20), {"building": "yes", "height": "tall"}),
        ("2", _sq(40, 0, 20), {"building": "yes", "building:levels": "500"}),
        ("3", _sq(80, 0, 20), {"building": "yes", "height": "20", "building:levels": "500"}),
        ("4", _sq(120, 0, 20), {"building": "yes", "height": "-12"}),
    ]
    f = tmp_path / "t.osm"
    f.write_text(_osm_xml(geometry, ways, []), encoding="utf-8")
    fs = read_osm(f, geometry)
    by_id = {b.id: b for b in fs.buildings}
    r = fs.reports[0]
    assert (r.heights_invalid, r.heights_implausible) == (2, 1)
    assert by_id["w2"].height_m == DEFAULT_UNKNOWN_HEIGHT_M and by_id["w3"].height_m == 20
    assert any("w2 (levels='500')" in w for w in r.warnings)


# --- geodata: no buildings over land --------------------------------------------------------------------------------


def _window(geometry: MapGeometry, lat: float, lng: float, half: float = 300.0) -> Polygon:
    e, n = geometry.lnglat_to_ground(lng, lat)
    return box(float(e) - half, float(n) - half, float(e) + half, float(n) + half)


def test_a_buildings_file_with_nothing_over_land_is_warned_about(
    geometry: MapGeometry, caplog: pytest.LogCaptureFixture
) -> None:
    src = geodata_file("midtown_east_buildings_doitt.geojson")
    battery = _window(geometry, 40.7075, -74.0110)  # the Financial District: land, not in the file
    with caplog.at_level(logging.WARNING, logger="isonyc_dagster.geodata"):
        city = load_city(geometry, [src], window=battery)
    assert city.buildings == []
    (report,) = city.reports
    warning = next(w for w in report["warnings"] if "yields no building" in w)
    assert (
        warning.startswith(f"{src.name} yields no building in the window although")
        and "km² of it is land" in warning
    )
    assert any(
        str(src) in rec.getMessage() and "yields no building" in rec.getMessage() for rec in caplog.records
    )
    # Where the file has buildings, or the window is open water, or the file is not a buildings file: no warning.
    midtown = load_city(geometry, [src], window=_window(geometry, 40.7583, -73.9702))
    assert midtown.buildings and not any("yields no building" in w for w in midtown.reports[0]["warnings"])
    bay = _window(geometry, 40.670, -74.045, half=200)  # Upper New York Bay
    water = load_city(geometry, [src], window=bay)
    assert water.land is None or water.land.area < 10_000
    assert not any("yields no building" in w for w in water.reports[0]["warnings"])
    parks = load_city(geometry, [geodata_file("midtown_east_parks_nycparks.geojson")], window=battery)
    assert not any("yields no building" in w for w in parks.reports[0]["warnings"])


# --- the isonyc command ---------------------------------------------------------------------------------------------


def _limit_memory() -> None:
    # 3 GiB of address space: without the size cap, "all of North America" asked for 43 GiB.
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))


def isonyc(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("ISONYC_CONFIG", None)
    return subprocess.run(
        [sys.executable, "-m", "isonyc_dagster.cli", *args],
        cwd=cwd or REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        preexec_fn=_limit_memory,
    )


def one_line_error(out: subprocess.CompletedProcess, prefix: str) -> str:
    """The single error line of a failed command (exit code 2, nothing on stdout, no traceback)."""
    assert out.returncode == 2, out.stdout + out.stderr
    assert "Traceback" not in out.stderr and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{prefix}: error: "), out.stderr
    return lines[0]


def strict_json(text: str) -> object:
    def refuse(token: str) -> None:
        raise AssertionError(f"{token} in JSON output")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("locate", "nan", "-73.9"), "latitude nan is not a finite number"),
        (("locate", "40.7", "inf"), "longitude inf is not a finite number"),
        (("locate", "40.7", "-73.9", "--height", "nan"), "height nan is not a finite number"),
        (("locate", "91", "0"), "latitude 91 is out of range"),
        (("locate", "40", "100"), "lies 11,041 km from the map seed"),
        (("quadrant", "100000000000000000000", "0"), "lies far outside the map"),
        (("quadrant", "0", "-3000"), "lies 637 km from the map seed"),
        (("render", "9999", "0", "-o", "/tmp/never.png"), "quadrant (9999, 0) lies 1,500 km"),
    ],
)
def test_cli_refuses_nan_and_out_of_range_coordinates(args: tuple[str, ...], message: str) -> None:
    line = one_line_error(isonyc(*args), f"isonyc {args[0]}")
    assert message in line


def test_cli_json_is_always_strict_json() -> None:
    loc = strict_json(isonyc("locate", "40.7583", "-73.9702", "--height", "277.7").stdout)
    assert isinstance(loc, dict) and loc["quadrant"]
    info = strict_json(isonyc("quadrant", "-27", "18").stdout)
    assert isinstance(info, dict) and info["center"]


@pytest.mark.timeout(120)
def test_cli_bounds_too_large_far_or_malformed(tmp_path: Path) -> None:
    cases = {
        "na": (mapping(NORTH_AMERICA), "too large: they span 116.00° of longitude"),
        "three": (mapping(THREE_DEGREES), "holds 4,"),
        "paris": (mapping(PARIS), "km from the map seed"),
        "swapped": (mapping(SWAPPED_BATTERY), "latitude and longitude look swapped"),
        "array": ([1, 2], "found a JSON array"),
    }
    for name, (obj, message) in cases.items():
        write_geojson(tmp_path / f"{name}.geojson", obj)
        (tmp_path / f"{name}.toml").write_text(f'bounds = "{name}.geojson"\n')
        t0 = time.perf_counter()
        line = one_line_error(isonyc("--config", str(tmp_path / f"{name}.toml"), "bounds"), "isonyc bounds")
        assert message in line and time.perf_counter() - t0 < 60, (name, line)
    (tmp_path / "bk.toml").write_text('bounds = "brooklyn"\n')
    line = one_line_error(isonyc("--config", str(tmp_path / "bk.toml"), "bounds"), "isonyc bounds")
    assert "is not a preset" in line and "demo, manhattan, nyc" in line
    write_geojson(tmp_path / "philly.geojson", mapping(PHILADELPHIA))
    (tmp_path / "philly.toml").write_text('bounds = "philly.geojson"\n')
    assert isonyc("--config", str(tmp_path / "philly.toml"), "bounds").returncode == 2
    forced = isonyc("--config", str(tmp_path / "philly.toml"), "bounds", "--force")
    assert forced.returncode == 0 and strict_json(forced.stdout)["quadrants"] > 4  # type: ignore[index]


def test_cli_ports_config_files_water_rectangles_and_debug(tmp_path: Path) -> None:
    for port in ("0", "70000", "abc"):
        out = isonyc("serve", str(tmp_path), "--port", port)
        assert out.returncode == 2 and "1-65535" in out.stderr and "Traceback" not in out.stderr
    assert "1-65535" in isonyc("demo", "--port", "-1").stderr
    d = tmp_path / "dir.toml"
    d.mkdir()
    assert f"config file {d} is a directory" in one_line_error(
        isonyc("--config", str(d), "bounds"), "isonyc bounds"
    )
    b = tmp_path / "latin1.toml"
    b.write_bytes(b'bounds = "\xe9"\n')
    assert f"config file {b} is not UTF-8" in one_line_error(
        isonyc("--config", str(b), "bounds"), "isonyc bounds"
    )
    # water fill checks the rectangle before it opens the store
    cfg = tmp_path / "w.toml"
    cfg.write_text('store = "store"\n')
    line = one_line_error(
        isonyc("--config", str(cfg), "water", "fill", "0", "0", "--to", "1000", "1000"), "isonyc water fill"
    )
    assert "holds 1,002,001 quadrants" in line and "at most 10,000" in line
    assert not (tmp_path / "store").exists()
    # an OSError (nothing can listen on a TEST-NET address) is one line too; --debug shows the traceback instead
    line = one_line_error(isonyc("serve", str(tmp_path), "--host", "203.0.113.1"), "isonyc serve")
    assert "cannot listen on 203.0.113.1:8000" in line
    dbg = isonyc("--debug", "--config", str(d), "bounds")
    assert dbg.returncode == 2 and "Traceback" in dbg.stderr and "ConfigError" in dbg.stderr


# --- isonyc serve ---------------------------------------------------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path):
    root = tmp_path / "map"
    (root / "tiles").mkdir(parents=True)
    (root / "index.html").write_text("<html>map</html>")
    (root / "tiles" / "0_0.png").write_bytes(b"\x89PNG tile")
    (root / ".demo.manifest.sqlite").write_bytes(b"secret manifest")
    (tmp_path / "outside.txt").write_text("outside the map")
    (root / "passwd").symlink_to("/etc/passwd")
    (root / "up").symlink_to(tmp_path)  # a directory link out of the map
    (root / "inside.png").symlink_to(root / "tiles" / "0_0.png")  # a link that stays inside is fine
    (root / "manifest").symlink_to(root / ".demo.manifest.sqlite")  # ... unless it reaches a hidden file
    with MapServer(root, port=0, idle_timeout_s=0.5).start() as server:
        yield server


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def raw_request(server: MapServer, target: bytes) -> bytes:
    host, port = server.server_address[:2]
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(b"GET " + target + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_serve_never_follows_a_symlink_out_of_the_map(served: MapServer) -> None:
    url = served.url
    assert get(url + "tiles/0_0.png") == (200, b"\x89PNG tile")
    assert get(url + "inside.png") == (200, b"\x89PNG tile")
    status, body = get(url + "passwd")
    assert status == 404 and b"root:" not in body
    assert get(url + "up/outside.txt")[0] == 404
    assert get(url + "manifest")[0] == 404
    assert get(url + "tiles/..%2f..%2foutside.txt")[0] == 404


def test_serve_lists_no_directories(served: MapServer) -> None:
    assert get(served.url) == (200, b"<html>map</html>")  # index.html still serves the map
    status, body = get(served.url + "tiles/")
    assert status == 404 and b"0_0.png" not in body


@pytest.mark.parametrize(
    "target",
    [b"/%00", b"/tiles/0_0.png%00.html", b"/a%zz", b"/%ff%fe", b"/%0a", b"relative.png", b"/tiles/\x01"],
)
def test_serve_answers_malformed_paths_with_400(
    served: MapServer, target: bytes, capfd: pytest.CaptureFixture[str]
) -> None:
    reply = raw_request(served, target)
    assert reply.startswith(b"HTTP/1.1 400") or reply.startswith(b"HTTP/1.0 400"), reply[:80]
    assert get(served.url + "tiles/0_0.png")[0] == 200  # and keeps serving
    assert "Traceback" not in capfd.readouterr().err


def test_path_problem() -> None:
    assert path_problem("/demo_files/10/0_0.png?v=1") is None
    assert path_problem("/%E2%82%AC.png") is None  # UTF-8 percent-encoding is fine
    assert path_problem("/%00") == "NUL or another control character in the path"
    assert path_problem("/%G0") == "malformed percent-encoding in the path"


def test_serve_closes_idle_connections(served: MapServer) -> None:
    host, port = served.server_address[:2]
    with socket.create_connection((host, port), timeout=10) as s:
        t0 = time.perf_counter()
        assert s.recv(1) == b""  # closed by the server, not by our 10 s timeout
        assert time.perf_counter() - t0 < 5
    # a keep-alive connection is closed once it idles after a request
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(b"GET /tiles/0_0.png HTTP/1.1\r\nHost: x\r\n\r\n")
        time.sleep(0.2)
        first = s.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        t0 = time.perf_counter()
        while s.recv(65536):
            pass
        assert time.perf_counter() - t0 < 5


def test_serve_listen_backlog_holds_a_burst_of_connections(tmp_path: Path) -> None:
    # Not accepting on purpose: every connection must wait in the kernel's queue. With a backlog of 5 the 7th
    # SYN was dropped and the client waited for a retransmit (1 s, then 3 s: the 4–5 s p99 at 50 connections).
    burst = 100
    assert burst <= LISTEN_BACKLOG
    with MapServer(tmp_path, port=0) as server:
        socks = []
        try:
            for _ in range(burst):
                s = socket.socket()
                s.settimeout(0.5)
                s.connect(server.server_address[:2])
                socks.append(s)
        finally:
            for s in socks:
                s.close()
    assert len(socks) == burst


def test_serve_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="out of range; give 1-65535"):
        MapServer(tmp_path, port=70000)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        MapServer(tmp_path, port=0, idle_timeout_s=0)
