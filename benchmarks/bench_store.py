"""Tile-store throughput: writes, reads and index queries, against plain file I/O in the same process.

    .venv/bin/python benchmarks/bench_store.py                 # local store, 2,000 tiles
    .venv/bin/python benchmarks/bench_store.py --tiles 500 --gcs   # also the GCS store on an in-process emulator

Tiles are real-looking 512x512 PNGs (pixel-art-like blocks + noise), encoded once; distinct copies get a
distinct tEXt chunk, so every write is a new blob that the store must fully decode and validate, without
paying PNG encoding inside the timed loop. Baselines: plain ``write_bytes`` (no fsync) and write + fsync of
the same bytes, plain ``read_bytes``. The store's extra work per write is PNG validation (full decode),
sha256, temp + fsync + rename + directory fsync, a SQLite transaction and the commit journal's append + fsync
(local store); per read, the sha256 check of the blob, measured against the same read without it.

The emulator numbers (``--gcs``) measure this code's overhead over HTTP on localhost with a single-threaded
Python server; they say nothing about real GCS latency.
"""

from __future__ import annotations

import argparse
import io
import os
import random
import struct
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from isonyc_dagster.store.base import TileStore, TileWrite  # noqa: E402
from isonyc_dagster.store.index import IndexedTileStore  # noqa: E402
from isonyc_dagster.store.local import LocalTileStore  # noqa: E402

SIZE = 512


def base_pngs(n: int, seed: int = 0) -> list[bytes]:
    """``n`` 512² RGB PNGs: 8-px colour blocks (pixel-art scale) with noise and a diagonal street grid."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        blocks = rng.integers(40, 220, (SIZE // 8, SIZE // 8, 3), dtype=np.uint8)
        img = np.repeat(np.repeat(blocks, 8, 0), 8, 1).astype(np.int16)
        img += rng.integers(-12, 13, img.shape, dtype=np.int16)
        yy, xx = np.mgrid[0:SIZE, 0:SIZE]
        img[((xx + 2 * yy) % 64) < 3] = (90, 90, 95)
        buf = io.BytesIO()
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def with_text_chunk(png: bytes, text: str) -> bytes:
    """Insert a tEXt chunk after IHDR: new bytes (new sha256), same pixels, still a valid PNG."""
    data = b"Comment\x00" + text.encode()
    chunk = struct.pack(">I", len(data)) + b"tEXt" + data + struct.pack(">I", zlib.crc32(b"tEXt" + data))
    ihdr_end = 8 + 8 + 13 + 4
    return png[:ihdr_end] + chunk + png[ihdr_end:]


def timed(fn: Callable[[], object], repeat: int = 1) -> float:
    """Best of ``repeat`` runs (reads and queries are repeatable; writes are timed once)."""
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def in_threads(n_threads: int, items: list, fn: Callable[[object], object]) -> None:
    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(fn, items))


def key(i: int) -> tuple[int, int]:
    return i % 50, i // 50


def report(label: str, n: int, nbytes: int, secs: float, base: dict[str, float] | None = None) -> float:
    rate = n / secs
    line = f"  {label:<38} {rate:9.1f} tiles/s {nbytes / secs / 1e6:8.1f} MB/s"
    for name, b in (base or {}).items():
        line += f"   {rate / b:6.2f}x {name}"
    print(line)
    return rate


def bench_store(name: str, make: Callable[[], TileStore], tiles: list[bytes], base: dict[str, float]) -> None:
    n, nbytes = len(tiles), sum(map(len, tiles))
    print(f"\n{name}")
    s = make()
    secs = timed(lambda: [s.put_tile("gen", *key(i), p, {"i": i}) for i, p in enumerate(tiles)])
    report("put_tile, 1 thread", n, nbytes, secs, {"write": base["write"], "write+fsync": base["fsync"]})
    secs = timed(lambda: [s.put_tile("gen", *key(i), p, {"i": i}) for i, p in enumerate(tiles)])
    report("idempotent re-put, 1 thread", n, nbytes, secs, {"write": base["write"]})
    # Reads check every blob's sha256. "before" is the same read without the check (active() + the raw
    # blob read, what get_tile did before); both run here, interleaved, on the same store and page cache.
    assert isinstance(s, IndexedTileStore)

    def unchecked(i: int) -> bytes | None:
        v = s.active("gen", *key(i))
        raw = None if v is None else s._read_blob_raw(v.sha256)
        return None if raw is None else raw[1]

    def reads(threads: int, fn: Callable[[int], object]) -> Callable[[], None]:
        return lambda: in_threads(threads, list(range(n)), fn)

    for threads in (1, 4):
        before = after = float("inf")
        for _ in range(3):
            before = min(before, timed(reads(threads, unchecked)))
            after = min(after, timed(reads(threads, lambda i: s.get_tile("gen", *key(i)))))
        label = f"{threads} thread{'s' if threads > 1 else ''}"
        report(f"get_tile, {label}, no sha256 check (before)", n, nbytes, before, {"read": base["read"]})
        report(f"get_tile, {label}, sha256 checked", n, nbytes, after, {"read": base["read"]})
        print(
            f"  {'  cost of the check':<38} {(after - before) / n * 1e6:9.1f} µs/tile {after / before - 1:+8.1%}"
        )
    # For scale: every reader decodes the PNG it read (steps, water, QA) or writes it out (the pyramid).
    sample = range(min(n, 200))
    decode = timed(lambda: [Image.open(io.BytesIO(tiles[i])).load() for i in sample], 3) / len(sample)
    print(f"  {'PNG decode of one tile (for scale)':<38} {decode * 1e6:9.1f} µs/tile")
    keys = [key(i) for i in range(min(n, 500))]
    per_key = timed(lambda: TileStore.active_map(s, "gen", keys), 3)  # the ABC's default: one active() a key
    one = timed(lambda: s.active_map("gen", keys), 3)
    print(
        f"  {f'active_map, {len(keys)} keys':<38} {one * 1e3:9.1f} ms   {per_key / one:6.1f}x the per-key default"
    )
    s.close()

    s = make()
    batches = [list(range(i, min(i + 4, n))) for i in range(0, n, 4)]
    secs = timed(
        lambda: [s.put_tiles([TileWrite("gen", *key(i), tiles[i], {"i": i}) for i in b]) for b in batches]
    )
    report(
        "put_tiles (4 per call), 1 thread",
        n,
        nbytes,
        secs,
        {"write": base["write"], "write+fsync": base["fsync"]},
    )
    s.close()

    s = make()
    secs = timed(
        lambda: in_threads(4, list(range(n)), lambda i: s.put_tile("gen", *key(i), tiles[i], {"i": i}))
    )
    report("put_tile, 4 threads", n, nbytes, secs, {"write": base["write"], "write+fsync": base["fsync"]})
    s.close()


def bench_queries(make: Callable[[], TileStore], n_keys: int) -> None:
    """active_map / list_active over ``n_keys`` active tiles (small PNGs: the index is what is measured)."""
    print(f"\nindex queries over {n_keys} active tiles (local store)")
    s = make()
    side = int(n_keys**0.5)
    flat = Image.new("RGB", (SIZE, SIZE), (80, 120, 160))
    buf = io.BytesIO()
    flat.save(buf, format="PNG")
    png = buf.getvalue()
    keys = [(x, y) for x in range(side) for y in range(side)]
    t = timed(
        lambda: [
            s.put_tiles([TileWrite("gen", x, y, png, {}) for x, y in keys[i : i + 500]])
            for i in range(0, len(keys), 500)
        ]
    )
    print(f"  filled {len(keys)} tiles in {t:.1f} s (put_tiles, 500 per call)")

    def per_key() -> dict:
        return {k: v for k in keys if (v := s.active("gen", *k)) is not None}

    base = timed(per_key, 3)
    print(f"  {'baseline: active() per key':<38} {base * 1e3:9.1f} ms")
    dense = timed(lambda: s.active_map("gen", keys), 3)
    print(f"  {'active_map, dense (bbox scan)':<38} {dense * 1e3:9.1f} ms   {base / dense:6.1f}x faster")
    rng = random.Random(1)
    sparse_keys = [(rng.randrange(-5 * side, 5 * side), rng.randrange(-5 * side, 5 * side)) for _ in keys]
    got: dict = {}
    sparse = timed(lambda: got.update(s.active_map("gen", sparse_keys)), 3)
    base_sparse = timed(lambda: [s.active("gen", *k) for k in sparse_keys], 3)
    print(
        f"  {'active_map, sparse (chunked IN)':<38} {sparse * 1e3:9.1f} ms   {base_sparse / sparse:6.1f}x faster "
        f"({len(got)} of {len(sparse_keys)} keys present)"
    )
    bb = timed(lambda: s.list_active("gen", bbox=(10, 10, 29, 29)), 3)
    print(f"  {'list_active, 20x20 bbox':<38} {bb * 1e3:9.2f} ms")
    whole = timed(lambda: s.list_active("gen"), 3)
    print(f"  {'list_active, whole layer':<38} {whole * 1e3:9.1f} ms")
    s.close()


def start_emulator():
    from gcp_storage_emulator.server import create_server

    server = create_server("127.0.0.1", 0, in_memory=True, default_bucket="bench")
    server.start()
    port = server._api._httpd.server_address[1]
    return server, f"http://127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiles", type=int, default=2000)
    ap.add_argument("--keys", type=int, default=10_000, help="active tiles for the index-query benchmark")
    ap.add_argument(
        "--gcs", action="store_true", help="also run the GCS store against an in-process emulator"
    )
    ap.add_argument("--gcs-tiles", type=int, default=200, help="tiles for the emulator run (it is slow)")
    args = ap.parse_args()

    t = time.perf_counter()
    bases = base_pngs(16)
    tiles = [with_text_chunk(bases[i % len(bases)], f"tile {i}") for i in range(args.tiles)]
    n, nbytes = len(tiles), sum(map(len, tiles))
    print(
        f"{n} tiles of {SIZE}x{SIZE}, mean {nbytes / n / 1e3:.0f} kB ({time.perf_counter() - t:.1f} s to build)"
    )
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")

    with tempfile.TemporaryDirectory(prefix="bench-store-") as td:
        root = Path(td)
        print("\nbaseline: plain files")
        plain = root / "plain"
        plain.mkdir()
        base: dict[str, float] = {}
        base["write"] = report(
            "write_bytes",
            n,
            nbytes,
            timed(lambda: [(plain / f"{i}.png").write_bytes(p) for i, p in enumerate(tiles)]),
        )

        def write_fsync(i: int, p: bytes) -> None:
            with open(plain / f"f{i}.png", "wb") as f:
                f.write(p)
                f.flush()
                os.fsync(f.fileno())

        base["fsync"] = report(
            "write + fsync", n, nbytes, timed(lambda: [write_fsync(i, p) for i, p in enumerate(tiles)])
        )
        base["read"] = report(
            "read_bytes", n, nbytes, timed(lambda: [(plain / f"{i}.png").read_bytes() for i in range(n)], 3)
        )

        counter = iter(range(1_000_000))
        lock = threading.Lock()

        def fresh_local() -> TileStore:
            with lock:
                return LocalTileStore(root / f"local{next(counter)}")

        bench_store("LocalTileStore (blob files + SQLite index)", fresh_local, tiles, base)
        bench_queries(fresh_local, args.keys)

        if args.gcs:
            from google.auth.credentials import AnonymousCredentials
            from google.cloud import storage

            from isonyc_dagster.store.gcs import GCSTileStore

            server, endpoint = start_emulator()
            try:

                def fresh_gcs() -> TileStore:
                    with lock:
                        i = next(counter)
                    client = storage.Client(
                        project="bench",
                        credentials=AnonymousCredentials(),
                        client_options={"api_endpoint": endpoint},
                    )
                    return GCSTileStore("bench", f"run{i}", client=client, cache_dir=root / f"gcs-cache{i}")

                bench_store(
                    "GCSTileStore on a localhost emulator (not real GCS latency)",
                    fresh_gcs,
                    tiles[: args.gcs_tiles],
                    base,
                )
            finally:
                server.stop()
    print(f"\nload average at the end: {os.getloadavg()[0]:.1f} (other processes share these CPUs)")


if __name__ == "__main__":
    main()
