"""Pyramid export speed and memory: ``build_pyramid`` against libvips ``dzsave`` on the same map, same run.

    .venv/bin/python benchmarks/bench_pyramid.py                  # 64×64 quadrants (32,768² px)
    .venv/bin/python benchmarks/bench_pyramid.py --n 32 --store /tmp/pyr-store   # reuse a generated store

1. Generates n×n distinct pixel-art-like 512² quadrant PNGs into a LocalTileStore in a temp dir.
2. Full build with ``build_pyramid`` (PNG, nearest) and, as the baseline, pyvips ``dzsave`` of the
   ``arrayjoin`` mosaic of the same PNG files (tile 512, overlap 0, depth onepixel, PNG, region_shrink
   nearest: the same pyramid, checked pixel for pixel on a sample). Each runs in its own child process so
   its peak RSS is its own; both use every core (libvips' thread pool; our thread pool).
3. Memory bound: our peak RSS for a quarter-size map (n/2 × n/2) next to the full one.
4. Incremental: one quadrant regenerated → ``update_pyramid`` time against the full build; and a no-op
   rebuild (every tile's inputs unchanged) time.
Goals: full build ≤ 1.5× dzsave's time, bounded memory, one-quadrant update < 1 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isonyc_dagster.store.base import TileWrite  # noqa: E402
from isonyc_dagster.store.local import LocalTileStore  # noqa: E402

Q = 512


def quadrant(x: int, y: int, bases: list[np.ndarray]) -> bytes:
    """A base texture plus a unique 1-px stamp of (x, y): distinct pixels per quadrant."""
    import pyvips

    img = bases[(x * 7 + y * 13) % len(bases)].copy()
    bits = np.array([(v >> i) & 1 for v in (x, y) for i in range(12)], bool).reshape(4, 6)
    img[8:12, 8:14][bits] = (255, 255, 255)
    return pyvips.Image.new_from_array(img).write_to_buffer(".png", compression=6)


def make_bases(k: int = 32, seed: int = 0) -> list[np.ndarray]:
    """Pixel-art-like textures: 4-px blocks from a 40-colour palette, 1-px dark outlines, a street grid."""
    rng = np.random.default_rng(seed)
    palette = rng.integers(30, 230, (40, 3), dtype=np.uint8)
    out = []
    for _ in range(k):
        idx = rng.integers(0, 40, (Q // 4, Q // 4))
        idx = np.where(rng.random((Q // 4, Q // 4)) < 0.6, np.roll(idx, 1, axis=1), idx)  # runs of colour
        img = palette[np.repeat(np.repeat(idx, 4, 0), 4, 1)]
        yy, xx = np.mgrid[:Q, :Q]
        img[(xx + 2 * yy) % 97 == 0] = (40, 40, 48)
        img[((xx - 2 * yy) % 128) < 6] = (110, 110, 118)
        out.append(np.ascontiguousarray(img))
    return out


def fill(root: Path, n: int) -> LocalTileStore:
    store = LocalTileStore(root)
    if len(store.list_active("generation", bbox=(0, 0, n - 1, n - 1))) == n * n:
        return store
    bases = make_bases()
    keys = [(x, y) for y in range(n) for x in range(n)]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        for i in range(0, len(keys), 256):
            chunk = keys[i : i + 256]
            pngs = list(pool.map(lambda k: quadrant(*k, bases), chunk))
            store.put_tiles(
                [
                    TileWrite("generation", x, y, p, {"bench": True})
                    for (x, y), p in zip(chunk, pngs, strict=True)
                ]
            )
    print(f"generated {n}×{n} quadrants into {root} in {time.perf_counter() - t0:.1f} s", flush=True)
    return store


# --- child processes (each reports its own peak RSS) ---------------------------------------------


def child_ours(store_root: str, out: str, n: int) -> dict:
    from isonyc_dagster.publish.build import build_pyramid

    store = LocalTileStore(store_root)
    t0 = time.perf_counter()
    info = build_pyramid(store, out, grid=(0, 0, n - 1, n - 1), meta={"map": {"name": "bench"}})
    return {"wall": time.perf_counter() - t0, "tiles": info.stats.tiles_written}


def child_dzsave(store_root: str, out: str, n: int) -> dict:
    import pyvips

    store = LocalTileStore(store_root)
    t0 = time.perf_counter()
    act = {(v.x, v.y): v.sha256 for v in store.list_active("generation", bbox=(0, 0, n - 1, n - 1))}
    tiles = [
        pyvips.Image.new_from_file(str(store.path_for_blob(act[(x, y)]))) for y in range(n) for x in range(n)
    ]
    mosaic = pyvips.Image.arrayjoin(tiles, across=n)
    mosaic.dzsave(
        str(Path(out) / "bench"),
        tile_size=Q,
        overlap=0,
        depth="onepixel",
        suffix=".png",
        region_shrink="nearest",
        background=[0, 0, 0],
    )
    wall = time.perf_counter() - t0
    count = sum(1 for _ in (Path(out) / "bench_files").rglob("*.png"))
    return {"wall": wall, "tiles": count}


def run_child(kind: str, store_root: Path, out: Path, n: int) -> dict:
    code = (
        f"import json, resource, sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); "
        f"import bench_pyramid as b; r = b.child_{kind}({str(store_root)!r}, {str(out)!r}, {n}); "
        "r['rss_mb'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024; print(json.dumps(r))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{kind} child failed:\n{res.stderr}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def same_pixels(a: Path, b: Path, sample: int = 40) -> bool:
    from PIL import Image

    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    top = [p for p in files if int(p.parts[0]) < 12]
    pick = top + random.Random(0).sample(files, min(sample, len(files)))
    for rel in pick:
        with Image.open(a / rel) as x, Image.open(b / rel) as y:
            if not np.array_equal(np.asarray(x.convert("RGBA")), np.asarray(y.convert("RGBA"))):
                print(f"  differs: {rel}")
                return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64, help="quadrants per side (default 64 → 32,768² px)")
    ap.add_argument("--store", type=Path, help="store directory to create or reuse (default: a temp dir)")
    args = ap.parse_args()
    n = args.n
    tmp = Path(tempfile.mkdtemp(prefix="bench_pyramid_"))
    store_root = args.store or tmp / "store"
    store = fill(store_root, n)
    print(f"map: {n}×{n} quadrants = {n * Q:,}² px; cores: {os.cpu_count()}", flush=True)

    ours = run_child("ours", store_root, tmp / "ours", n)
    base = run_child("dzsave", store_root, tmp / "dzsave", n)
    small = run_child("ours", store_root, tmp / "ours_small", n // 2)
    identical = same_pixels(tmp / "ours" / "bench_files", tmp / "dzsave" / "bench_files")

    print()
    print(f"{'full build':<28}{'wall s':>9}{'peak RSS MB':>13}{'tiles':>8}{'tiles/s':>9}")
    for label, r in [
        ("vips dzsave (baseline)", base),
        ("build_pyramid", ours),
        (f"build_pyramid {n // 2}×{n // 2}", small),
    ]:
        print(
            f"{label:<28}{r['wall']:>9.2f}{r['rss_mb']:>13.0f}{r['tiles']:>8}{r['tiles'] / r['wall']:>9.0f}"
        )
    print(f"time ratio build_pyramid / dzsave: {ours['wall'] / base['wall']:.2f}  (goal ≤ 1.5)")
    print(f"RSS ratio  build_pyramid / dzsave: {ours['rss_mb'] / base['rss_mb']:.2f}")
    print(
        f"RSS {n}×{n} vs {n // 2}×{n // 2} map (4× the pixels): {ours['rss_mb']:.0f} MB vs {small['rss_mb']:.0f} MB "
        f"(mosaic would be {n * n * Q * Q * 4 / 2**20:,.0f} MB RGBA)"
    )
    print(f"pixels identical to dzsave on a sample of tiles (all of levels 0-11 + 40 random): {identical}")

    # Incremental: regenerate one quadrant, update; then a no-op rebuild.
    from PIL import Image

    from isonyc_dagster.publish.build import build_pyramid, update_pyramid

    x, y = n // 3, n // 2
    rng = np.random.default_rng(time.time_ns())  # a new image every run, also with a reused --store
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (Q, Q, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    store.put_tile("generation", x, y, buf.getvalue(), {"bench": "regenerated"})
    t0 = time.perf_counter()
    st = update_pyramid(store, tmp / "ours", [(x, y)])
    upd = time.perf_counter() - t0
    t0 = time.perf_counter()
    noop = build_pyramid(store, tmp / "ours", grid=(0, 0, n - 1, n - 1), meta={"map": {"name": "bench"}})
    rebuild = time.perf_counter() - t0
    print()
    print(
        f"update_pyramid, 1 quadrant: {upd * 1000:.0f} ms, {st.tiles_written} tiles rewritten "
        f"(goal < 1 s; {ours['wall'] / upd:.0f}× faster than the full build)"
    )
    print(f"no-op rebuild (all {noop.stats.tiles_skipped} tiles unchanged): {rebuild * 1000:.0f} ms")
    print(f"(outputs left in {tmp})")


if __name__ == "__main__":
    main()
