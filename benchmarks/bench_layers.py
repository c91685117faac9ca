"""Time each offline derived layer adds per quadrant, against the base generation step measured in the same run.

A 2×2-quadrant area of the real Midtown East data (East River at 45th St: every surface class) is rendered, generated
by the offline pixel-art backend (one block step, the baseline), and each derived layer is computed per quadrant:
the transform alone, and ``derive_quadrant`` end to end (read source tile and buffers, transform, PNG, store).

    .venv/bin/python benchmarks/bench_layers.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isonyc_dagster import layers  # noqa: E402
from isonyc_dagster.backends.base import GenerationRequest  # noqa: E402
from isonyc_dagster.backends.pixelart import PixelArtBackend  # noqa: E402
from isonyc_dagster.derive import TRANSFORMS, Source, derive_quadrant  # noqa: E402
from isonyc_dagster.geo.config import MapConfig  # noqa: E402
from isonyc_dagster.geo.geometry import MapGeometry  # noqa: E402
from isonyc_dagster.geodata.load import load_city  # noqa: E402
from isonyc_dagster.images import decode_rgb, png_bytes  # noqa: E402
from isonyc_dagster.render import Renderer  # noqa: E402
from isonyc_dagster.store import open_store  # noqa: E402

GEODATA = Path(__file__).resolve().parents[2] / "shared" / "geodata"
EAST_RIVER = (40.755, -73.963)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    g = MapGeometry(MapConfig())
    files = [
        str(GEODATA / f"midtown_east_{n}.geojson") for n in ("buildings_doitt", "parks_nycparks", "roads_osm")
    ]
    city = load_city(g, files, land=GEODATA / "midtown_east_land_nybb.geojson")
    renderer = Renderer(city, g)
    q = g.locate(*EAST_RIVER)["quadrant"]
    qx, qy = q["x"] - 1, q["y"] - 1
    quads = [(qx + i, qy + j) for j in (0, 1) for i in (0, 1)]
    renders = {k: renderer.render_quadrant(*k) for k in quads}
    whole = renderer.render_window(qx * 512, qy * 512, 1024, 1024)
    backend = PixelArtBackend()
    request = GenerationRequest(
        template_png=png_bytes(whole.rgb),
        infill_box=(0, 0, 1024, 1024),
        origin_px=whole.origin_px,
        aux=whole.aux(),
        prompt="isometric nyc pixel art",
    )
    base_s = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        out = backend.generate(request)
        base_s.append((time.perf_counter() - t0) / 4)
    base = decode_rgb(out.image_png)
    base_q = statistics.median(base_s)
    print(f"base generation (pixelart block step, 4 quadrants): {base_q:.3f} s/quadrant")

    with tempfile.TemporaryDirectory() as tmp:
        store = open_store(str(Path(tmp) / "store"))
        for x, y in quads:
            i, j = x - qx, y - qy
            store.put_tile(
                layers.GENERATION, x, y, png_bytes(base[j * 512 : (j + 1) * 512, i * 512 : (i + 1) * 512])
            )
        print(f"{'layer':<8}{'transform s/q':>15}{'end-to-end s/q':>16}{'vs base':>9}")
        for name, t in TRANSFORMS.items():
            sources = []
            for x, y in quads:
                i, j = x - qx, y - qy
                r = renders[(x, y)]
                sources.append(
                    Source(
                        base[j * 512 : (j + 1) * 512, i * 512 : (i + 1) * 512],
                        r.surface,
                        r.building,
                        r.height,
                        r.origin_px,
                    )
                )
            tf = []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                for s in sources:
                    t.fn(s)
                tf.append((time.perf_counter() - t0) / len(sources))
            t0 = time.perf_counter()
            for x, y in quads:
                derive_quadrant(store, name, x, y, lambda a, b: renders[(a, b)].aux())
            e2e = (time.perf_counter() - t0) / len(quads)
            print(f"{name:<8}{statistics.median(tf):>15.3f}{e2e:>16.3f}{e2e / base_q:>8.2f}×")


if __name__ == "__main__":
    main()
