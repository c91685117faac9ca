"""Photoreal renderer speed on a local 3D Tiles tileset of real Midtown East buildings (run on demand).

    .venv/bin/python benchmarks/bench_photoreal.py [--area 6] [--fresh 4] [--pages 2]

Builds the test fixture tileset (tests/photoreal_fixture.py) from the 643-building Midtown East file, serves it
from 127.0.0.1, then in one run:
1. renders an area×area block of quadrants with one long-lived browser and its page pool, through a fresh
   tile cache (quadrants/s, cache hit rate over the block);
2. renders ``--fresh`` of those quadrants the original's way: a new Chromium per quadrant, no cache;
and prints both rates, their ratio (goal ≥ 5×) and the pool's rate against the 1 quadrant/s goal.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isonyc_dagster.geo.config import MapConfig  # noqa: E402
from isonyc_dagster.geo.geometry import MapGeometry  # noqa: E402
from isonyc_dagster.geodata.load import load_city  # noqa: E402
from isonyc_dagster.photoreal import PhotorealRenderer, RenderSettings, TileCache, resolve_source  # noqa: E402
from tests.photoreal_fixture import TileServer, build_tileset  # noqa: E402

GEODATA = REPO.parent / "shared" / "geodata"
CITICORP = (40.7583, -73.9702)
GOAL_QPS = 1.0
GOAL_RATIO = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--area", type=int, default=6, help="block edge in quadrants (default 6)")
    ap.add_argument("--fresh", type=int, default=4, help="quadrants rendered with a fresh browser each")
    ap.add_argument("--pages", type=int, default=2, help="page pool size")
    args = ap.parse_args()
    geometry = MapGeometry(MapConfig())
    city = load_city(geometry, [GEODATA / "midtown_east_buildings_doitt.geojson"])
    q = geometry.locate(*CITICORP)["quadrant"]
    x0, y0 = q["x"] - args.area // 2, q["y"] - args.area // 2
    keys = [(x, y) for y in range(y0, y0 + args.area) for x in range(x0, x0 + args.area)]
    with tempfile.TemporaryDirectory() as tmp:
        build_tileset(city, geometry, Path(tmp) / "tiles", -31.3)
        server = TileServer(Path(tmp) / "tiles")
        source = resolve_source(server.url)
        settings = RenderSettings(pages=args.pages)
        cache = TileCache(Path(tmp) / "cache.sqlite", max_bytes=256 << 20)
        with PhotorealRenderer(geometry, source, settings, cache=cache) as r:
            r.render_quadrants(keys[:1])  # browser start and first page: reported apart
            t0 = time.perf_counter()
            r.render_quadrants(keys[1:])
            pool_s = time.perf_counter() - t0
        pool_qps = (len(keys) - 1) / pool_s
        print(
            f"pool ({args.pages} pages): {len(keys) - 1} quadrants in {pool_s:.1f} s = {pool_qps:.2f} quadrants/s"
        )
        print(f"tile cache over the {args.area}x{args.area} block: {cache.stats.as_dict()}")
        fetched = sum(server.requests.values())
        with PhotorealRenderer(
            geometry, source, settings, cache=cache
        ) as r:  # a new browser, warm disk cache
            r.render_quadrants(keys)
        print(
            f"same block again in a new browser: {cache.stats.as_dict()} (cumulative), "
            f"{sum(server.requests.values()) - fetched} requests reached the server"
        )
        with PhotorealRenderer(geometry, source, settings, fresh_browser=True) as r:
            t0 = time.perf_counter()
            for k in keys[1 : 1 + args.fresh]:
                r.render_quadrants([k])
            fresh_s = time.perf_counter() - t0
        fresh_qps = args.fresh / fresh_s
        print(
            f"fresh browser per quadrant: {args.fresh} quadrants in {fresh_s:.1f} s = {fresh_qps:.2f} quadrants/s"
        )
        ratio = pool_qps / fresh_qps
        print(
            f"pool / fresh: {ratio:.1f}x (goal >= {GOAL_RATIO:.0f}x: {'met' if ratio >= GOAL_RATIO else 'NOT met'})"
        )
        print(f"pool vs goal {GOAL_QPS} quadrant/s: {pool_qps / GOAL_QPS:.2f}x")
        server.close()
        cache.close()


if __name__ == "__main__":
    main()
