"""The TileStore contract, run over both backends (local disk + SQLite, GCS emulator), plus local specifics.

Everything is real: SQLite files, blob files, a gcp-storage-emulator HTTP server, threads and processes.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import signal
import sqlite3
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.store import open_store
from isonyc_dagster.store.base import QuadrantFlags, StoreError, TileStore, TileWrite, Water
from isonyc_dagster.store.gcs import GCSTileStore
from isonyc_dagster.store.index import MIGRATIONS, SCHEMA_VERSION
from isonyc_dagster.store.local import LocalTileStore
from tests.test_store_gcs import GcsEmulator, make_png

BACKENDS = ["local", "gcs"]


@pytest.fixture(params=BACKENDS)
def env(request, tmp_path):
    """(kind, location, GcsEmulator or None); a fresh directory / emulator and bucket per test."""
    if request.param == "local":
        yield "local", str(tmp_path / "store"), None
        return
    emu = GcsEmulator()
    try:
        yield "gcs", f"gs://{emu.new_bucket()}/maps/nyc", emu
    finally:
        emu.stop()


def open_env(env, cache: Path) -> TileStore:
    """A new store instance on ``env`` (for GCS: own client and replica cache, like another machine)."""
    kind, location, emu = env
    if kind == "local":
        return LocalTileStore(location)
    return GCSTileStore.from_uri(location, client=emu.client(), cache_dir=cache)


@pytest.fixture
def store(env, tmp_path):
    s = open_env(env, tmp_path / "cache-main")
    yield s
    s.close()


def decode(png: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(png))
    im.load()
    return im


def assert_consistent(s: TileStore, layer: str, keys) -> int:
    """Every tile: versions 1..n contiguous, exactly one active, every blob present and matching its sha."""
    total = 0
    for x, y in keys:
        vs = s.versions(layer, x, y)
        assert [v.version for v in vs] == list(range(1, len(vs) + 1)), (x, y, vs)
        if vs:
            assert sum(v.active for v in vs) == 1, (x, y, vs)
            act = s.active(layer, x, y)
            assert act is not None and act.active and act in vs
            for v in vs:
                data = s.get_blob(v.sha256)
                assert hashlib.sha256(data).hexdigest() == v.sha256
                assert decode(data).size == (512, 512)
        total += len(vs)
    return total


# --- roundtrip -------------------------------------------------------------------------------------
def test_roundtrip(store):
    png = make_png(1)
    t0 = time.time()
    v = store.put_tile("gen", 3, -2, png, {"backend": "pixelart", "seed": 7, "nested": {"a": [1, 2]}})
    assert (v.layer, v.x, v.y, v.version, v.active) == ("gen", 3, -2, 1, True)
    assert v.sha256 == hashlib.sha256(png).hexdigest()
    assert v.provenance == {"backend": "pixelart", "seed": 7, "nested": {"a": [1, 2]}}
    assert t0 - 1 <= v.created_at <= time.time() + 1
    assert store.get_tile("gen", 3, -2) == png
    assert store.active("gen", 3, -2) == v
    assert store.get_tile("gen", 3, -1) is None and store.active("other", 3, -2) is None
    assert store.has_blob(v.sha256) and store.get_blob(v.sha256) == png

    npz = b"PK\x03\x04 not really a zip, blobs are opaque bytes"
    sha = store.put_blob(npz, ext="npz")
    assert sha == hashlib.sha256(npz).hexdigest() and store.put_blob(npz, ext="npz") == sha
    assert store.has_blob(sha) and store.get_blob(sha) == npz
    assert not store.has_blob("0" * 64)
    with pytest.raises(StoreError, match="not found"):
        store.get_blob("0" * 64)
    with pytest.raises(StoreError, match="64 lowercase hex"):
        store.get_blob("../../etc/passwd")
    with pytest.raises(StoreError, match="not a PNG"):
        store.put_blob(b"garbage", ext="png")


def test_multi_tile_put_and_expect_size(store):
    writes = [
        TileWrite("tmpl", x, y, make_png(10 + x + 2 * y), {"step": "s1"}) for x in (0, 1) for y in (0, 1)
    ]
    out = store.put_tiles(writes)
    assert [(v.x, v.y, v.version) for v in out] == [(0, 0, 1), (0, 1, 1), (1, 0, 1), (1, 1, 1)]
    for w in writes:
        assert store.get_tile("tmpl", w.x, w.y) == w.png
    big = make_png(5, size=(1024, 1024))
    assert store.put_tile("window", 0, 0, big, expect_size=(1024, 1024)).version == 1
    assert store.put_tiles([]) == []
    with pytest.raises(StoreError, match="appears twice"):
        store.put_tiles([TileWrite("gen", 0, 0, make_png(1), {}), TileWrite("gen", 0, 0, make_png(2), {})])
    with pytest.raises(StoreError, match="not JSON-serialisable"):
        store.put_tile("gen", 0, 0, make_png(1), {"when": object()})
    with pytest.raises(StoreError, match="invalid layer"):
        store.put_tile("../gen", 0, 0, make_png(1))
    with pytest.raises(StoreError, match="must be an int"):
        store.put_tile("gen", 1.5, 0, make_png(1))
    with pytest.raises(StoreError, match="must be an int"):
        store.active("gen", True, 0)
    assert store.active("gen", 0, 0) is None
    # numpy integers (coordinates out of arrays) are plain ints to the store.
    v = store.put_tile("gen", np.int64(2), np.int32(-3), make_png(6))
    assert (v.x, v.y) == (2, -3) and type(v.x) is int
    assert store.active("gen", np.int64(2), -3) == v
    assert store.active_map("gen", [(np.int64(2), np.int64(-3))]) == {(2, -3): v}


# --- versions --------------------------------------------------------------------------------------
def test_versions_and_activate(store):
    pngs = [make_png(i) for i in (1, 2, 3)]
    for i, p in enumerate(pngs):
        assert store.put_tile("gen", 0, 0, p, {"try": i}).version == i + 1
    vs = store.versions("gen", 0, 0)
    assert [(v.version, v.active, v.provenance) for v in vs] == [
        (1, False, {"try": 0}),
        (2, False, {"try": 1}),
        (3, True, {"try": 2}),
    ]
    back = store.activate("gen", 0, 0, 1)
    assert (back.version, back.active, back.sha256) == (1, True, vs[0].sha256)
    assert store.get_tile("gen", 0, 0) == pngs[0]
    assert [v.active for v in store.versions("gen", 0, 0)] == [True, False, False]
    assert store.activate("gen", 0, 0, 1).version == 1  # already active: fine
    # Regenerating after a rollback adds version 4; nothing is ever deleted.
    assert store.put_tile("gen", 0, 0, make_png(4), {"try": 3}).version == 4
    assert [v.version for v in store.versions("gen", 0, 0)] == [1, 2, 3, 4]
    assert store.get_blob(vs[1].sha256) == pngs[1]
    with pytest.raises(StoreError, match=r"has no version 9; it has versions 1..4"):
        store.activate("gen", 0, 0, 9)
    with pytest.raises(StoreError, match="has no version 1; it has no versions"):
        store.activate("gen", 5, 5, 1)
    assert store.active("gen", 0, 0).version == 4


def test_idempotent_rerun(store):
    png = make_png(1)
    v1 = store.put_tile("gen", 1, 1, png, {"seed": 1, "model": "m"})
    # Same bytes + same provenance (key order is irrelevant) → the active version, no new one.
    again = store.put_tile("gen", 1, 1, png, {"model": "m", "seed": 1})
    assert again == v1
    assert store.put_tiles([TileWrite("gen", 1, 1, png, {"seed": 1, "model": "m"})]) == [v1]
    assert len(store.versions("gen", 1, 1)) == 1
    # Same bytes, different provenance is a new version (it records a different run).
    assert store.put_tile("gen", 1, 1, png, {"seed": 2, "model": "m"}).version == 2
    # After rolling back to v1, re-putting v2's content is a new version: only the active one counts.
    store.activate("gen", 1, 1, 1)
    assert store.put_tile("gen", 1, 1, png, {"seed": 2, "model": "m"}).version == 3


# --- refusing bad PNGs -------------------------------------------------------------------------------
def _corrupt(png: bytes) -> bytes:
    i = png.index(b"IDAT") + 40
    return png[:i] + bytes(b ^ 0xFF for b in png[i : i + 16]) + png[i + 16 :]


def _corrupt_keep_crc(png: bytes) -> bytes:
    """Damage the deflate stream but fix the chunk CRC: only a full decode can notice."""
    i = png.index(b"IDAT") - 4
    n = struct.unpack(">I", png[i : i + 4])[0]
    data = bytearray(png[i + 8 : i + 8 + n])
    for k in range(40, 56):
        data[k] ^= 0xFF
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + bytes(data)))
    return png[: i + 8] + bytes(data) + crc + png[i + 12 + n :]


BAD_PNGS = {
    "corrupt": (lambda: _corrupt(make_png(42)), "corrupt or truncated"),
    "corrupt, valid CRC": (lambda: _corrupt_keep_crc(make_png(42)), "corrupt or truncated"),
    "truncated": (lambda: make_png(42)[:-200], "corrupt or truncated"),
    "missing IEND": (lambda: make_png(42)[:-12], "corrupt or truncated"),
    "wrong size": (lambda: make_png(42, size=(512, 256)), "is 512x256 px but 512x512 px is expected"),
    "16-bit": (lambda: make_png(42, mode="I;16"), "mode 'I;16' is not supported"),
    "not a png": (lambda: b"\xff\xd8\xff\xe0 JFIF jpeg bytes", "not a PNG"),
    "empty": (lambda: b"", "empty"),
}


@pytest.mark.parametrize("case", list(BAD_PNGS))
def test_bad_png_refused_and_active_untouched(store, case):
    make_bad, message = BAD_PNGS[case]
    good = store.put_tile("gen", 7, 7, make_png(1), {"ok": True})
    with pytest.raises(StoreError, match=message) as err:
        store.put_tile("gen", 7, 7, make_bad(), {"ok": False})
    assert "tile gen (7,7)" in str(err.value)
    assert store.active("gen", 7, 7) == good
    assert store.get_tile("gen", 7, 7) == make_png(1)
    assert store.versions("gen", 7, 7) == [good]


def test_multi_tile_put_is_all_or_nothing(store):
    before = store.put_tile("gen", 0, 0, make_png(1))
    batch = [
        TileWrite("gen", 0, 0, make_png(2), {}),
        TileWrite("gen", 1, 0, make_png(3), {}),
        TileWrite("gen", 0, 1, make_png(4)[:-300], {}),  # truncated
    ]
    with pytest.raises(StoreError, match=r"tile gen \(0,1\): PNG is corrupt or truncated"):
        store.put_tiles(batch)
    assert store.versions("gen", 0, 0) == [before]
    assert store.active("gen", 1, 0) is None and store.active("gen", 0, 1) is None
    # Nothing of the batch was stored at all, not even the valid tiles' blobs.
    assert not store.has_blob(hashlib.sha256(make_png(2)).hexdigest())


def test_failure_after_blob_write_leaves_nothing_visible(store, monkeypatch):
    """An exception between the blob writes and the index commit (crash simulation) changes nothing."""
    before = store.put_tile("gen", 2, 2, make_png(1))
    if isinstance(store, LocalTileStore):
        target, name = store._index, "insert_version"
    else:
        target, name = store, "_create"
    real = getattr(target, name)
    calls = []

    def boom(*args, **kwargs):
        if isinstance(store, GCSTileStore):
            # Blob uploads go through; the one log upload that would commit the batch "crashes".
            if "/log/" in args[0]:
                raise OSError("simulated crash in the middle of the commit")
            return real(*args, **kwargs)
        calls.append(args)
        if len(calls) == 2:  # after the first tile's row, inside the open transaction
            raise OSError("simulated crash in the middle of the commit")
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, boom)
    with pytest.raises(OSError, match="simulated crash"):
        store.put_tiles([TileWrite("gen", 2, 2, make_png(2), {}), TileWrite("gen", 3, 2, make_png(3), {})])
    monkeypatch.undo()
    assert store.has_blob(hashlib.sha256(make_png(3)).hexdigest())  # the blobs did get written ...
    assert store.versions("gen", 2, 2) == [before]  # ... but no version references them
    assert store.active("gen", 3, 2) is None
    assert store.put_tile("gen", 3, 2, make_png(3)).version == 1  # and the store still works


# --- flags -----------------------------------------------------------------------------------------
def test_flags_tri_state_water(store):
    assert store.flags(4, 5) == QuadrantFlags(4, 5, Water.UNKNOWN, False, False, False)
    assert store.set_flags(4, 5, water=Water.ALL_LAND).water is Water.ALL_LAND  # 0 is not "unknown"
    assert store.flags(4, 5).water is Water.ALL_LAND
    store.set_flags(4, 5, water=Water.WATER_EDGE)
    f = store.set_flags(4, 5, starred=True)  # other flags untouched
    assert f == QuadrantFlags(4, 5, Water.WATER_EDGE, True, False, False)
    store.set_flags(6, 5, water=2, reference=True)  # plain ints are accepted
    store.set_flags(7, 5, flagged=True)
    store.set_flags(8, 5, water=Water.UNKNOWN)
    assert store.flags(6, 5).water is Water.ALL_WATER
    assert [(q.x, q.y) for q in store.list_flags()] == [(4, 5), (6, 5), (7, 5), (8, 5)]
    assert [(q.x, q.y) for q in store.list_flags(reference=True)] == [(6, 5)]
    assert [(q.x, q.y) for q in store.list_flags(starred=True)] == [(4, 5)]
    assert [(q.x, q.y) for q in store.list_flags(flagged=True, starred=False)] == [(7, 5)]
    assert store.set_flags(4, 5, starred=False).starred is False
    with pytest.raises(StoreError, match="water must be one of"):
        store.set_flags(1, 1, water=5)
    with pytest.raises(StoreError, match="starred must be True, False or None"):
        store.set_flags(1, 1, starred="yes")
    assert store.flags(1, 1) == QuadrantFlags(1, 1)


# --- queries ---------------------------------------------------------------------------------------
def test_list_active_bbox_and_active_map(store):
    writes = [TileWrite("gen", x, y, make_png(x * 10 + y), {}) for x in range(-1, 4) for y in range(0, 4)]
    store.put_tiles(writes)
    store.put_tile("render", 1, 1, make_png(999))
    store.put_tile("gen", 1, 1, make_png(1000))  # v2 of one tile
    assert len(store.list_active("gen")) == 20
    got = store.list_active("gen", bbox=(0, 1, 2, 2))
    assert sorted((v.x, v.y) for v in got) == [(x, y) for x in range(0, 3) for y in (1, 2)]
    assert {v.version for v in got if (v.x, v.y) == (1, 1)} == {2}
    assert store.list_active("gen", bbox=QuadRect(0, 1, 2, 2)) == got
    assert [(v.x, v.y) for v in store.list_active("render", bbox=(0, 0, 5, 5))] == [(1, 1)]
    assert store.list_active("gen", bbox=(10, 10, 20, 20)) == []
    with pytest.raises(StoreError, match="empty"):
        store.list_active("gen", bbox=(3, 0, 1, 1))
    with pytest.raises(StoreError, match=r"bbox must be \(x0, y0, x1, y1\) ints"):
        store.list_active("gen", bbox=(0, 0, 1))
    with pytest.raises(StoreError, match="pairs of ints"):
        store.active_map("gen", [(1, 2, 3)])
    dense = store.active_map("gen", [(x, y) for x in range(0, 3) for y in range(0, 3)] + [(50, 50)])
    assert sorted(dense) == [(x, y) for x in range(0, 3) for y in range(0, 3)]
    assert dense[(1, 1)].version == 2 and dense[(2, 0)].sha256 == hashlib.sha256(make_png(20)).hexdigest()
    sparse = store.active_map("gen", [(-1, 0), (3, 3), (1000, -1000), (-500, 700)])
    assert sorted(sparse) == [(-1, 0), (3, 3)]
    assert store.active_map("gen", []) == {}


def test_second_instance_sees_writes(env, store, tmp_path):
    store.put_tile("gen", 0, 0, make_png(1))
    other = open_env(env, tmp_path / "cache-other")
    assert other.get_tile("gen", 0, 0) == make_png(1)
    other.put_tile("gen", 0, 0, make_png(2))
    other.set_flags(0, 0, flagged=True)
    assert store.active("gen", 0, 0).version == 2 and store.flags(0, 0).flagged
    other.close()


# --- concurrency -----------------------------------------------------------------------------------
KEYS = [(x, y) for x in range(3) for y in range(2)]  # 6 tiles: writers collide on every one


def test_concurrent_threads(store):
    errors = []

    def work(t):
        try:
            for i in range(20):
                a, b = KEYS[(t + i) % 6], KEYS[(t + i + 1) % 6]
                store.put_tiles(
                    [
                        TileWrite("gen", *a, make_png(10_000 * t + 2 * i), {"t": t, "i": i}),
                        TileWrite("gen", *b, make_png(10_000 * t + 2 * i + 1), {"t": t, "i": i}),
                    ]
                )
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert assert_consistent(store, "gen", KEYS) == 4 * 20 * 2


def _mp():
    """A forkserver context: children fork from a clean, single-threaded server that has already imported
    this module (numpy, Pillow, google-cloud-storage), so starting 4 writers costs milliseconds, not the
    seconds a spawn start spends on imports, and no pytest threads or locks leak into them."""
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    return ctx


def _child_store(env, cache: str) -> TileStore:
    kind, location, endpoint = env
    if kind == "local":
        return LocalTileStore(location)
    # As in production: the client comes from the environment (emulator host → anonymous credentials).
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    return GCSTileStore.from_uri(location, cache_dir=Path(cache))


def _proc_writer(env, cache: str, worker: int, n: int, start) -> None:
    s = _child_store(env, cache)
    pngs = [make_png(100_000 * (worker + 1) + i) for i in range(n)]
    start.wait()
    for i in range(n):
        key = KEYS[(worker + i) % len(KEYS)]
        s.put_tile("gen", *key, pngs[i], {"w": worker, "i": i})
        if i % 10 == 0:
            s.set_flags(*key, water=Water(i % 3))
    s.close()


def _picklable(env) -> tuple[str, str, str | None]:
    kind, location, emu = env
    return kind, location, emu.endpoint if emu else None


# The GCS run is bound by the emulator (a single-threaded Python server, ~25 ms a request under load),
# so it is marked slow; test_store_gcs.py races separate store instances in-process on every run.
@pytest.mark.parametrize("env", ["local", pytest.param("gcs", marks=pytest.mark.slow)], indirect=True)
def test_concurrent_processes(env, tmp_path):
    """4 processes x 50 tiles; the GCS writers also share one replica cache, as processes on one host do."""
    ctx = _mp()
    start = ctx.Event()
    cache = str(tmp_path / "shared-cache")
    procs = [ctx.Process(target=_proc_writer, args=(_picklable(env), cache, w, 50, start)) for w in range(4)]
    for p in procs:
        p.start()
    start.set()
    for p in procs:
        p.join(240)
        assert p.exitcode == 0, f"writer process failed with exit code {p.exitcode}"
    fresh = open_env(env, tmp_path / "verify-cache")  # GCS: replays the whole log from scratch
    assert assert_consistent(fresh, "gen", KEYS) == 200
    assert {f.water for f in fresh.list_flags()} <= {Water.ALL_LAND, Water.WATER_EDGE, Water.ALL_WATER}


def _proc_forever(env, cache: str) -> None:
    s = _child_store(env, cache)
    i = 0
    while True:
        i += 1
        a, b = KEYS[i % 6], KEYS[(i + 3) % 6]
        s.put_tiles(
            [
                TileWrite("gen", *a, make_png(7_000 + 2 * i), {"i": i}),
                TileWrite("gen", *b, make_png(7_001 + 2 * i), {"i": i}),
            ]
        )


def test_killed_writer_leaves_no_half_tile(env, tmp_path):
    """SIGKILL a process in the middle of a stream of two-tile writes, then check and keep writing."""
    kind, location, _ = env
    p = _mp().Process(target=_proc_forever, args=(_picklable(env), str(tmp_path / "victim-cache")))
    p.start()
    try:
        watcher = open_env(env, tmp_path / "watch-cache")
        deadline = time.monotonic() + 120
        while len(watcher.list_active("gen")) < 6 or sum(len(watcher.versions("gen", *k)) for k in KEYS) < 30:
            assert time.monotonic() < deadline and p.is_alive(), "writer made no progress"
            time.sleep(0.05)
    finally:
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
    after = open_env(env, tmp_path / "after-cache")
    total = assert_consistent(after, "gen", KEYS)
    assert total % 2 == 0  # two-tile transactions: both tiles or neither
    v = after.put_tiles([TileWrite("gen", 0, 0, make_png(1), {}), TileWrite("gen", 9, 9, make_png(2), {})])
    assert [x.version for x in v] == [len(after.versions("gen", 0, 0)), 1]
    if kind == "local":
        # No blob file under a final name holds partial content; leftovers are only hidden temp files.
        for f in Path(location, "blobs").rglob("*.png"):
            assert hashlib.sha256(f.read_bytes()).hexdigest() == f.stem
        assert after.remove_stale_temp_files(older_than_s=0) >= 0
        assert not [f for f in Path(location, "blobs").rglob("*") if f.name.endswith(".tmp")]


# --- local specifics ---------------------------------------------------------------------------------
def test_local_layout_and_sqlite_settings(tmp_path):
    s = LocalTileStore(tmp_path / "st")
    v = s.put_tile("gen", 0, 0, make_png(1))
    p = s.path_for_blob(v.sha256)
    assert p == tmp_path / "st" / "blobs" / v.sha256[:2] / v.sha256[2:4] / f"{v.sha256}.png"
    assert p.read_bytes() == make_png(1) and oct(p.stat().st_mode & 0o777) == "0o644"
    assert s.root == (tmp_path / "st").resolve()
    assert not [f for f in s.blob_dir.rglob("*") if f.name.endswith(".tmp")]
    c = s._index.conn()
    assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert c.execute("PRAGMA busy_timeout").fetchone()[0] == 30000
    assert c.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
    plan = " ".join(
        r[3]
        for r in c.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM active_tiles a JOIN tile_versions v USING (layer, x, y, version) "
            "WHERE a.layer = 'gen' AND a.x BETWEEN 0 AND 9 AND a.y BETWEEN 0 AND 9"
        )
    )
    assert "SEARCH a USING PRIMARY KEY (layer=? AND x>? AND x<?)" in plan, plan
    assert isinstance(open_store(str(tmp_path / "st")), LocalTileStore)
    # Temp files of a crashed writer are invisible to lookups and swept only once old enough.
    stale, fresh = p.parent / f".{p.name}.dead.tmp", p.parent / f".{p.name}.live.tmp"
    stale.write_bytes(b"partial")
    fresh.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    assert s.remove_stale_temp_files(older_than_s=3600) == 1
    assert not stale.exists() and fresh.exists() and s.get_blob(v.sha256) == make_png(1)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        LocalTileStore(tmp_path / "file")


def test_store_error_bases_and_tile_size_check(tmp_path):
    assert issubclass(StoreError, IsonycError) and issubclass(StoreError, RuntimeError)
    with pytest.raises(StoreError, match=r"tile_size must be \(width, height\) in positive ints"):
        LocalTileStore(tmp_path / "st", tile_size=(512, 0))
    s = LocalTileStore(tmp_path / "st", tile_size=[256, 128])
    assert s.tile_size == (256, 128)
    assert s.put_tile("gen", 0, 0, make_png(1, size=(256, 128))).version == 1


def test_local_schema_migrations(tmp_path):
    s = LocalTileStore(tmp_path / "st")
    rows = (
        s._index.conn()
        .execute("SELECT version, description FROM schema_migrations ORDER BY version")
        .fetchall()
    )
    assert [r[0] for r in rows] == [m[0] for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
    s.close()

    # An index created by an older release (only migration 1) is upgraded in place, data kept.
    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "index.sqlite")
    db.execute(
        "CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
    )
    for sql in MIGRATIONS[0][2]:
        db.execute(sql)
    db.execute("INSERT INTO schema_migrations VALUES (1, 'tile versions and active pointers', 0)")
    sha = hashlib.sha256(make_png(3)).hexdigest()
    db.execute("INSERT INTO tile_versions VALUES ('gen', 1, 2, 1, ?, 5.0, '{\"old\":true}')", (sha,))
    db.execute("INSERT INTO active_tiles VALUES ('gen', 1, 2, 1)")
    db.commit()
    db.close()
    up = LocalTileStore(old)
    assert up.active("gen", 1, 2).provenance == {"old": True}
    assert up.set_flags(1, 2, reference=True).reference  # table from migration 2 exists now
    assert up._index.schema_version() == SCHEMA_VERSION
    up.close()

    # An index from a newer release is refused rather than misread.
    db = sqlite3.connect(old / "index.sqlite")
    db.execute("INSERT INTO schema_migrations VALUES (99, 'future', 0)")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="newer than this code understands"):
        LocalTileStore(old)


def test_local_reopen_and_fork_safety(tmp_path):
    s = LocalTileStore(tmp_path / "st")
    s.put_tile("gen", 0, 0, make_png(1))
    s.close()
    assert s.get_tile("gen", 0, 0) == make_png(1)  # reconnects lazily after close()
    if not hasattr(os, "fork"):
        return
    pid = os.fork()
    if pid == 0:  # child: inherited store object must open its own connection
        try:
            s.put_tile("gen", 0, 0, make_png(2))
            os._exit(0)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert s.active("gen", 0, 0).version == 2
