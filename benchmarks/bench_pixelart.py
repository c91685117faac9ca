"""Speed of the offline pixel-art backend on real NYC renders (run on demand, not in CI).

    .venv/bin/python benchmarks/bench_pixelart.py [--repeat 3]

For three 1024² steps — a block in dense Midtown East (Citigroup Center), a block on the lower-Manhattan
waterfront (The Battery: parks, water, roads) and a 1×2 bridge there (infill 512×1024 + 256 px context
each side) — it times ``PixelArtBackend.generate`` (decode, stylize, PNG encode) and, in the same process,
two baselines: the whitebox render of the same window (the stage before it) and a bare PNG
decode + encode of the template (the I/O floor every backend pays). Goal: well under 1 s per 1024² step
on one core. Wall time is reported next to process CPU time: on a shared machine the wall clock mostly
measures the neighbours, the CPU time is what one step costs.
Data is read in place from ../shared/geodata.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isonyc_dagster.backends.base import GenerationRequest  # noqa: E402
from isonyc_dagster.backends.pixelart import PixelArtBackend  # noqa: E402
from isonyc_dagster.backends.pixelart.style import stylize  # noqa: E402
from isonyc_dagster.geo.config import MapConfig  # noqa: E402
from isonyc_dagster.geo.geometry import MapGeometry  # noqa: E402
from isonyc_dagster.geodata.load import load_city  # noqa: E402
from isonyc_dagster.images import decode_rgb, png_bytes  # noqa: E402
from isonyc_dagster.render import Renderer  # noqa: E402

GEODATA = REPO.parent / "shared" / "geodata"


def best_of(n: int, fn: Callable[[], object], clock: Callable[[], float] = time.perf_counter) -> float:
    times = []
    for _ in range(n):
        t = clock()
        fn()
        times.append(clock() - t)
    return min(times)


def png_roundtrip(data: bytes) -> None:
    png_bytes(decode_rgb(data))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    if not GEODATA.exists():
        print(f"shared geodata not found at {GEODATA}", file=sys.stderr)
        return 2
    geom = MapGeometry(MapConfig())
    midtown = load_city(
        geom,
        [
            f"buildings:{GEODATA / 'midtown_east_buildings_doitt.geojson'}",
            f"parks:{GEODATA / 'midtown_east_parks_nycparks.geojson'}",
            f"roads:{GEODATA / 'midtown_east_roads_osm.geojson'}",
            f"land:{GEODATA / 'midtown_east_land_nybb.geojson'}",
        ],
        land=None,
    )
    lower = load_city(
        geom, [str(GEODATA / "lower_manhattan.osm.pbf")], land=str(GEODATA / "manhattan_land_nybb.geojson")
    )
    backend = PixelArtBackend()

    def window(lat: float, lng: float) -> tuple[int, int]:
        loc = geom.locate(lat, lng)
        return (loc["quadrant"]["x"] - 1) * 512, (loc["quadrant"]["y"] - 1) * 512

    cases = [
        ("block, Midtown East", Renderer(midtown, geom), window(40.7585, -73.9702), (0, 0, 1024, 1024)),
        ("block, The Battery", Renderer(lower, geom), window(40.7040, -74.0160), (0, 0, 1024, 1024)),
        ("1×2 bridge, The Battery", Renderer(lower, geom), window(40.7040, -74.0160), (256, 0, 768, 1024)),
    ]
    print(
        f"{'case':<26}{'render s':>10}{'png i/o s':>11}{'stylize s':>11}{'generate s':>12}"
        f"{'gen cpu s':>11}{'÷ render':>10}{'÷ png i/o':>11}"
    )
    worst = 0.0
    for name, renderer, (x0, y0), infill in cases:
        renderer.render_window(x0, y0, 1024, 1024)  # warm caches / JIT
        t_render = best_of(args.repeat, lambda r=renderer, x=x0, y=y0: r.render_window(x, y, 1024, 1024))
        res = renderer.render_window(x0, y0, 1024, 1024)
        tmpl = png_bytes(res.rgb)
        req = GenerationRequest(
            template_png=tmpl,
            infill_box=infill,
            origin_px=(x0, y0),
            aux={"surface": res.surface, "building": res.building, "height": res.height},
        )
        t_io = best_of(args.repeat, lambda d=tmpl: png_roundtrip(d))
        t_sty = best_of(
            args.repeat,
            lambda r=res, x=x0, y=y0: stylize(
                r.surface, r.building, r.height, x, y, backend.camera, backend.params
            ),
        )
        backend.generate(req)
        t_gen = best_of(args.repeat, lambda q=req: backend.generate(q))
        t_cpu = best_of(args.repeat, lambda q=req: backend.generate(q), time.process_time)
        worst = max(worst, t_cpu)
        print(
            f"{name:<26}{t_render:>10.3f}{t_io:>11.3f}{t_sty:>11.3f}{t_gen:>12.3f}{t_cpu:>11.3f}"
            f"{t_gen / t_render:>10.2f}{t_gen / t_io:>11.2f}"
        )
    print(
        f"worst generate CPU time per 1024² step: {worst:.3f} s (goal < 1 s): {'OK' if worst < 1.0 else 'SLOW'}"
    )
    load = " ".join(f"{v:.1f}" for v in os.getloadavg())
    print(f"load average: {load} (wall times are inflated when it exceeds the core count)")
    lat = [backend.generate(req).provenance["latency_s"] for _ in range(args.repeat)]
    print(f"provenance latency_s of the last case: median {statistics.median(lat):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
