"""Storage integrity: verified reads, self-repairing writes, ``isonyc store verify|rebuild-index``, the commit
journal (a lost or stale index is never silent), read-only stores, stale temp files, WAL checkpoints.

Everything is real: blob files and GCS emulator objects are damaged in place, the CLI runs as a subprocess,
crashes are real processes that die between the journal append and the index commit.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from isonyc_dagster.publish.build import build_pyramid
from isonyc_dagster.store import open_store, rebuild_index
from isonyc_dagster.store.base import CorruptBlobError, ReadOnlyStoreError, StoreError, TileWrite, Water
from isonyc_dagster.store.gcs import GCSTileStore
from isonyc_dagster.store.index import IndexedTileStore
from isonyc_dagster.store.journal import Journal, position
from isonyc_dagster.store.local import SWEEP_EVERY_S, LocalTileStore, rebuild_local_index
from isonyc_dagster.store.validate import PreparedWrite
from isonyc_dagster.store.verify import verify_store
from tests.test_cli import REPO, isonyc
from tests.test_store_gcs import GcsEmulator, make_png
from tests.test_store_local import _mp, _proc_forever, env, open_env, store  # noqa: F401 - env, store: fixtures


# --- helpers ---------------------------------------------------------------------------------------
def damage(s: IndexedTileStore, env_, sha: str, fn) -> None:
    """Replace blob ``sha``'s stored bytes by ``fn(bytes)`` (``None``: delete it), behind the store's back."""
    kind, _, emu = env_
    if kind == "local":
        p = s.path_for_blob(sha)
        new = fn(p.read_bytes())
        if new is None:
            p.unlink()
        else:
            p.write_bytes(new)
        return
    assert isinstance(s, GCSTileStore)
    obj = emu.client().bucket(s.bucket_name).blob(s._blob_name(sha, "png"))
    new = fn(obj.download_as_bytes())
    if new is None:
        obj.delete()
    else:
        obj.upload_from_string(new)  # no precondition: an overwrite, as a buggy writer would do


def flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0x40]) + data[i + 1 :]


def state(s: IndexedTileStore) -> tuple[list, list, list]:
    """Everything the index knows (flags without their update time)."""
    c = s._index.conn()
    return (
        c.execute(
            "SELECT layer, x, y, version, sha256, created_at, provenance FROM tile_versions ORDER BY 1, 2, 3, 4"
        ).fetchall(),
        c.execute("SELECT layer, x, y, version FROM active_tiles ORDER BY 1, 2, 3").fetchall(),
        c.execute(
            "SELECT x, y, water, starred, flagged, reference FROM quadrant_flags ORDER BY 1, 2"
        ).fetchall(),
    )


def history(s: IndexedTileStore) -> None:
    """A bit of everything the journal must record: multi-tile puts, rollbacks, clears, flags."""
    s.put_tiles(
        [
            TileWrite("generation", x, y, make_png(10 * x + y), {"step": f"s{x}{y}"})
            for x in range(3)
            for y in range(2)
        ]
    )
    s.put_tile("generation", 0, 0, make_png(500), {"repair": "fill_water", "from_version": 1})
    s.put_tile("render", 0, 0, make_png(600), {"aux_sha256": "0" * 64})
    s.activate("generation", 0, 0, 1)
    s.deactivate("generation", 2, 1)
    s.set_flags(0, 0, water=Water.WATER_EDGE, starred=True)
    s.set_flags(1, 1, flagged=True)
    s.set_flags(2, 2, water=Water.UNKNOWN)  # a row with default values is state too
    s.put_tile("generation", 1, 0, make_png(700), {"step": "again"})


# --- 1. reads verify content -------------------------------------------------------------------------
def test_corrupt_or_missing_blob_is_never_returned(env, store):  # noqa: F811
    v = store.put_tile("generation", 3, 4, make_png(1), {"step": "s"})
    other = store.put_tile("generation", 5, 4, make_png(2), {})
    damage(store, env, v.sha256, flip)
    with pytest.raises(
        CorruptBlobError, match=r"tile generation \(3,4\) version 1 \(active\) is corrupt"
    ) as err:
        store.get_tile("generation", 3, 4)
    assert v.sha256 in str(err.value) and "isonyc store verify --repair" in str(err.value)
    assert err.value.found_sha256 == hashlib.sha256(flip(make_png(1))).hexdigest()
    # Through the blob API (active + get_blob, as the pyramid builder reads): the error names the tile too.
    act = store.active("generation", 3, 4)
    with pytest.raises(
        CorruptBlobError,
        match=rf"blob {v.sha256} is corrupt: .*it is tile generation \(3,4\) version 1 \(active\)",
    ):
        store.get_blob(act.sha256)
    assert store.get_tile("generation", 5, 4) == make_png(2)  # others still read
    damage(store, env, other.sha256, lambda b: None)
    with pytest.raises(
        StoreError, match=r"tile generation \(5,4\) version 1 \(active\): its blob .* is not found"
    ):
        store.get_tile("generation", 5, 4)
    sha = store.put_blob(b"npz bytes", ext="npz")
    if env[0] == "local":
        store._find_blob(sha).write_bytes(b"npz bytez")
        with pytest.raises(CorruptBlobError, match="no tile version is stored in it"):
            store.get_blob(sha)


def test_pyramid_refuses_a_corrupt_quadrant(tmp_path):
    s = LocalTileStore(tmp_path / "st")
    vs = s.put_tiles([TileWrite("generation", x, 0, make_png(x), {}) for x in range(2)])
    s.path_for_blob(vs[1].sha256).write_bytes(flip(make_png(1)))
    with pytest.raises(CorruptBlobError, match=r"tile generation \(1,0\) version 1 \(active\)"):
        build_pyramid(s, tmp_path / "map", grid=(0, 0, 1, 0), meta={"map": {"name": "t"}}, workers=1)
    assert not (tmp_path / "map" / "t.dzi").exists()
    copied = list((tmp_path / "map").rglob("*.png"))
    assert all(p.read_bytes() != flip(make_png(1)) for p in copied)


# --- 2. writing over a damaged blob repairs it ----------------------------------------------------------
@pytest.mark.parametrize("how", ["flipped", "truncated", "swapped"])
def test_writing_a_damaged_blob_repairs_it(env, store, how):  # noqa: F811
    v = store.put_tile("generation", 0, 0, make_png(1), {"k": 1})
    bad = {"flipped": flip, "truncated": lambda b: b[: len(b) // 2], "swapped": lambda b: make_png(2)}[how]
    damage(store, env, v.sha256, bad)
    # The same tile again (a rerun): no new version, but the stored bytes are checked and rewritten.
    assert store.put_tile("generation", 0, 0, make_png(1), {"k": 1}) == v
    assert store.get_tile("generation", 0, 0) == make_png(1)
    # Another tile with the same content, and put_blob, repair it as well.
    damage(store, env, v.sha256, bad)
    assert store.put_tile("generation", 9, 9, make_png(1), {}).sha256 == v.sha256
    assert store.get_blob(v.sha256) == make_png(1)
    damage(store, env, v.sha256, bad)
    assert store.put_blob(make_png(1)) == v.sha256
    assert store.get_tile("generation", 0, 0) == make_png(1)


# --- 3. verify and repair ------------------------------------------------------------------------------
def _damaged_store(s: IndexedTileStore, env_) -> dict[str, object]:
    """One tile per kind of damage (see the test); returns what the test checks against."""
    g = "generation"
    s.put_tile(g, 0, 0, make_png(1), {"v": 1})
    a2 = s.put_tile(g, 0, 0, make_png(2), {"v": 2})  # corrupt → back to v1
    b = s.put_tile(g, 1, 0, make_png(3), {})  # swapped with c → both restored
    c = s.put_tile(g, 2, 0, make_png(4), {})
    s.put_tile(g, 3, 0, make_png(5), {"v": 1})
    d2 = s.put_tile(g, 3, 0, make_png(6), {"v": 2})  # deleted → back to v1
    e = s.put_tile(g, 4, 0, make_png(7), {})  # truncated, no older version → cleared
    f1 = s.put_tile(g, 5, 0, make_png(8), {"v": 1})  # an old version's blob deleted: --all-versions only
    s.put_tile(g, 5, 0, make_png(9), {"v": 2})
    s.put_tile("render", 0, 0, make_png(10), {})
    # A tile whose bytes match their name but are no PNG (written around the store's checks).
    junk = b"not a png at all"
    s._put_prepared([PreparedWrite(g, 6, 0, junk, hashlib.sha256(junk).hexdigest(), {}, "{}")])
    damage(s, env_, a2.sha256, flip)
    damage(s, env_, b.sha256, lambda _: make_png(4))
    damage(s, env_, c.sha256, lambda _: make_png(3))
    damage(s, env_, d2.sha256, lambda _: None)
    damage(s, env_, e.sha256, lambda data: data[:100])
    damage(s, env_, f1.sha256, lambda _: None)
    return {"b": b, "c": c}


EXPECTED = {
    (0, 0, 2): "corrupt",
    (1, 0, 1): "corrupt",
    (2, 0, 1): "corrupt",
    (3, 0, 2): "missing",
    (4, 0, 1): "corrupt",
    (6, 0, 1): "undecodable",
}


def _found(report) -> dict[tuple[int, int, int], str]:
    return {(a["x"], a["y"], a["version"]): a["problem"] for a in report["affected"]}


def _all_active_intact(s: IndexedTileStore) -> None:
    for layer in ("generation", "render"):
        for v in s.list_active(layer):
            assert hashlib.sha256(s.get_tile(layer, v.x, v.y)).hexdigest() == v.sha256


def test_verify_finds_each_problem_and_repair_leaves_a_clean_store(env, store, tmp_path):  # noqa: F811
    kept = _damaged_store(store, env)
    report = verify_store(store)
    assert not report["clean"] and _found(report) == EXPECTED
    assert report["problems"] == {"missing": 1, "corrupt": 4, "undecodable": 1}
    assert report["checked"] == {"versions": 8, "blobs": 8} and report["index"] == "ok"
    swapped = {a["x"]: a for a in report["affected"] if a["x"] in (1, 2)}
    assert swapped[1]["detail"].endswith(kept["c"].sha256)  # the file of b holds c's bytes
    full = verify_store(store, all_versions=True)
    assert _found(full) == {**EXPECTED, (5, 0, 1): "missing"}
    assert _found(verify_store(store, layers=["render"])) == {}
    with pytest.raises(
        StoreError, match=r"layer 'gen' has no tiles in .*; its layers are \['generation', 'render'\]"
    ):
        verify_store(store, layers=["gen"])

    fixed = verify_store(store, repair=True)
    changes = {(c["action"], c.get("x"), c.get("sha256")) for c in fixed["repair"]["changes"]}
    assert ("restored_blob", None, kept["b"].sha256) in changes and (
        "restored_blob",
        None,
        kept["c"].sha256,
    ) in changes
    moves = {(c["x"], c["action"], c.get("to_version")) for c in fixed["repair"]["changes"] if "x" in c}
    assert moves == {(0, "activated", 1), (3, "activated", 1), (4, "cleared", None), (6, "cleared", None)}
    assert sum(c["action"] == "deleted_corrupt_blob" for c in fixed["repair"]["changes"]) == 2  # a2 and e
    assert fixed["repair"]["clean_after"] and fixed["repair"]["problems_after"] == {
        "missing": 0,
        "corrupt": 0,
        "undecodable": 0,
    }
    again = verify_store(store)
    assert again["clean"] and again["affected"] == []
    _all_active_intact(store)
    assert store.get_tile("generation", 1, 0) == make_png(3) and store.get_tile(
        "generation", 2, 0
    ) == make_png(4)
    assert store.active("generation", 4, 0) is None and store.active("generation", 6, 0) is None
    assert [v.version for v in store.versions("generation", 4, 0)] == [1]  # cleared, never deleted
    # Old versions that lost their blob stay listed (nothing is rewritten), but no active tile is affected.
    assert all(not a["active"] for a in verify_store(store, all_versions=True)["affected"])
    # The repairs went through the store's history: a second instance (another machine) sees them.
    other = open_env(env, tmp_path / "other-cache")
    assert other.active("generation", 0, 0).version == 1 and other.active("generation", 4, 0) is None
    other.close()


def test_verify_cli(tmp_path):
    root = tmp_path / "st"
    s = LocalTileStore(root)
    kept = _damaged_store(s, ("local", str(root), None))
    s.close()
    out = isonyc("store", "verify", "--store", str(root), check=False)
    assert out.returncode == 1, out.stderr
    report = json.loads(out.stdout)
    assert _found(report) == EXPECTED and report["problems"]["corrupt"] == 4
    out = isonyc("store", "verify", "--store", str(root), "--repair", check=False)
    assert out.returncode == 1, out.stderr
    assert len(json.loads(out.stdout)["repair"]["changes"]) == 8
    out = isonyc("store", "verify", "--store", str(root), check=False)
    assert out.returncode == 0 and json.loads(out.stdout)["clean"], out.stdout + out.stderr
    s = LocalTileStore(root)
    _all_active_intact(s)
    assert s.get_tile("generation", 1, 0) == make_png(3) and kept
    s.close()
    assert json.loads(isonyc("store", "checkpoint", "--store", str(root)).stdout)["busy"] == 0
    out = isonyc("store", "verify", "--store", str(tmp_path / "nothing-here"), check=False)
    assert out.returncode == 2 and re.match(r"isonyc store( verify)?: error: no tile store at ", out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1


# --- 4. the commit journal ---------------------------------------------------------------------------
def _remove_index(root: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{root / 'index.sqlite'}{suffix}").unlink(missing_ok=True)


def test_lost_index_is_an_error_and_rebuild_restores_every_version(tmp_path):
    root = tmp_path / "st"
    s = LocalTileStore(root)
    history(s)
    want = state(s)
    s.close()
    lines = (root / "journal.jsonl").read_text().splitlines()
    puts = [json.loads(x) for x in lines[1:] if '"op":"put"' in x]
    assert len(puts) == 9 and puts[0]["provenance"] == {"step": "s00"}  # every version, with its provenance

    _remove_index(root)
    with pytest.raises(
        StoreError,
        match=r"index.sqlite is missing, but .* holds the commit journal .*isonyc store rebuild-index --store",
    ):
        LocalTileStore(root)
    with pytest.raises(StoreError, match="is missing"):
        LocalTileStore(root, read_only=True)
    assert not (root / "index.sqlite").exists()  # no empty index was started behind the error
    (root / "index.sqlite").write_bytes(b"")
    with pytest.raises(StoreError, match=r"index.sqlite is empty \(0 bytes\), but"):
        LocalTileStore(root)

    out = json.loads(isonyc("store", "rebuild-index", "--store", str(root)).stdout)
    assert out["transactions"] == 9 and out["versions"] == 9 and out["active_tiles"] == 6
    assert "index.sqlite.replaced-" in out["previous_index"]  # the empty file, moved aside
    s = LocalTileStore(root)
    assert state(s) == want
    s.put_tile("generation", 7, 7, make_png(7))  # and it keeps working, journal included
    want = state(s)
    s.close()
    rebuild_local_index(root)
    s = LocalTileStore(root)
    assert state(s) == want
    s.close()


def test_index_without_blobs_of_a_lost_journal_store(tmp_path):
    """Blobs but neither index nor journal (e.g. a pre-journal store that lost its index): still an error."""
    root = tmp_path / "st"
    LocalTileStore(root).put_blob(make_png(1))
    (root / "journal.jsonl").unlink()
    _remove_index(root)
    with pytest.raises(
        StoreError, match=r"is missing, but .* holds blobs but no commit journal.*from a backup"
    ):
        LocalTileStore(root)


def _fork(fn) -> int:
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            fn()
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_crash_between_journal_append_and_index_commit_is_rolled_forward(tmp_path, caplog):
    root = tmp_path / "st"
    s = LocalTileStore(root)
    s.put_tile("generation", 0, 0, make_png(1), {"v": 1})

    def child() -> None:
        real = s.journal.append

        def append_then_die(*args, **kwargs):
            real(*args, **kwargs)
            os._exit(0)  # killed after the journal is durable, before the index commits

        s.journal.append = append_then_die
        s.put_tiles(
            [
                TileWrite("generation", 0, 0, make_png(2), {"v": 2}),
                TileWrite("generation", 1, 0, make_png(3), {}),
            ]
        )

    assert _fork(child) == 0
    assert s.active("generation", 0, 0).version == 1  # the index never saw the commit
    pos = position(s._index)
    assert len(Journal(root / "journal.jsonl").scan(pos.bytes, pos.txn + 1).txns) == 1  # journal ahead by one
    s.close()
    with caplog.at_level(logging.WARNING):
        s = LocalTileStore(root)
    assert "rolled forward transaction" in caplog.text
    assert s.active("generation", 0, 0).version == 2 and s.get_tile("generation", 1, 0) == make_png(3)
    want = state(s)
    s.close()
    rebuild_local_index(root)
    assert state(LocalTileStore(root)) == want


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_index_behind_the_journal_is_an_error(tmp_path):
    """A deleted -wal loses commits the journal has: refused with the way out, then rebuilt exactly."""
    root = tmp_path / "st"
    s = LocalTileStore(root)
    s.put_tile("generation", 0, 0, make_png(1))
    s.close()

    def child() -> None:
        w = LocalTileStore(root)
        w._index.conn().execute("PRAGMA wal_autocheckpoint = 0")  # the commits stay in the -wal
        w.put_tile("generation", 1, 0, make_png(2))
        w.set_flags(1, 0, flagged=True)
        w.put_tile("generation", 0, 0, make_png(3))
        os._exit(0)  # no close(): nothing is checkpointed

    assert _fork(child) == 0
    assert (root / "index.sqlite-wal").stat().st_size > 0
    Path(f"{root / 'index.sqlite'}-wal").unlink()
    Path(f"{root / 'index.sqlite'}-shm").unlink(missing_ok=True)
    msg = r"index.sqlite is behind the commit journal .*: the index ends at transaction 1, the journal at 4, so the index lost 3 commits.*rebuild-index --store"
    with pytest.raises(StoreError, match=msg):
        LocalTileStore(root)
    with pytest.raises(StoreError, match=msg):
        LocalTileStore(root, read_only=True)
    rebuild_index(str(root))
    s = LocalTileStore(root)
    assert s.active("generation", 0, 0).version == 2 and s.flags(1, 0).flagged
    assert s.get_tile("generation", 1, 0) == make_png(2)


def test_torn_journal_tail_is_dropped_and_damage_is_refused(tmp_path, caplog):
    root = tmp_path / "st"
    s = LocalTileStore(root)
    s.put_tile("generation", 0, 0, make_png(1))
    s.close()
    journal = root / "journal.jsonl"
    good = journal.stat().st_size
    # An append cut short: the first of two lines of transaction 2 complete, the second cut in half.
    line = {"txn": 2, "i": 0, "n": 2, "at": 1.0, "op": "flags", "x": 0, "y": 0, "water": 2}
    with open(journal, "ab") as f:
        f.write((json.dumps(line) + "\n").encode() + b'{"txn": 2, "i": 1, "n": 2, "at"')
    with caplog.at_level(logging.WARNING):
        s = LocalTileStore(root)
    assert "interrupted append" in caplog.text and journal.stat().st_size == good
    assert s.flags(0, 0).water is Water.UNKNOWN  # never committed, never applied
    s.put_tile("generation", 1, 0, make_png(2))
    want = state(s)
    s.close()
    rebuild_local_index(root)
    assert state(LocalTileStore(root)) == want
    # A damaged line in the middle is not a torn tail: refused, never skipped.
    data = journal.read_bytes().splitlines(keepends=True)
    data[1] = b"#" * (len(data[1]) - 1) + b"\n"
    journal.write_bytes(b"".join(data))
    with pytest.raises(StoreError, match=r"journal .* is damaged at byte \d+"):
        rebuild_local_index(root)
    report = verify_store(LocalTileStore(root, read_only=True))  # the blobs are fine, the history is not
    assert not report["clean"] and report["affected"] == [] and "is damaged at byte" in report["journal"]


def test_pre_journal_store_and_lost_or_foreign_journal(tmp_path, caplog):
    root = tmp_path / "st"
    s = LocalTileStore(root)
    history(s)
    want = state(s)
    s.close()
    # A store written before journals: no journal, no journal position in the index.
    (root / "journal.jsonl").unlink()
    with sqlite3.connect(root / "index.sqlite") as db:
        db.execute("DELETE FROM meta WHERE key LIKE 'journal.%'")
    db.close()
    with caplog.at_level(logging.WARNING):
        LocalTileStore(root).close()
    assert "writing the commit journal from the existing index" in caplog.text
    _remove_index(root)
    rebuild_local_index(root)
    s = LocalTileStore(root)
    assert state(s) == want
    s.close()
    # A journal deleted under a healthy index is written again from the index.
    (root / "journal.jsonl").unlink()
    LocalTileStore(root).close()
    _remove_index(root)
    rebuild_local_index(root)
    assert state(LocalTileStore(root)) == want
    # Another store's journal is refused: which of the two is right is the operator's call.
    other = LocalTileStore(tmp_path / "other")
    other.put_tile("generation", 0, 0, make_png(1))
    other.close()
    shutil.copy(tmp_path / "other" / "journal.jsonl", root / "journal.jsonl")
    with pytest.raises(StoreError, match="is not the journal of the index next to it"):
        LocalTileStore(root)


def test_killed_writers_leave_a_journal_that_rebuilds_the_same_index(tmp_path):
    """SIGKILL a writer three times at random moments; each time the reopened index equals its rebuild."""
    env_ = ("local", str(tmp_path / "st"), None)
    journal = tmp_path / "st" / "journal.jsonl"
    rng = random.Random(10)
    for _ in range(3):
        start = journal.stat().st_size if journal.exists() else 0
        p = _mp().Process(target=_proc_forever, args=(env_, ""))
        p.start()
        deadline = time.monotonic() + 60
        while not journal.exists() or journal.stat().st_size <= start:  # it is writing
            assert time.monotonic() < deadline and p.is_alive(), "the writer made no progress"
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)
        s = LocalTileStore(env_[1])
        want = state(s)
        s.close()
        rebuild_local_index(env_[1])
        s = LocalTileStore(env_[1])
        assert state(s) == want
        assert verify_store(s, all_versions=True)["clean"]
        s.close()


def test_gcs_rebuild_index_and_unreadable_replica(tmp_path):
    emu = GcsEmulator()
    try:
        uri = f"gs://{emu.new_bucket()}/maps/nyc"
        s = GCSTileStore.from_uri(uri, client=emu.client(), cache_dir=tmp_path / "c")
        history(s)
        want = state(s)
        summary = s.rebuild_index()
        assert summary["log_seq"] == 9 and summary["versions"] == 9 and state(s) == want
        s.close()
        (tmp_path / "c" / "index.sqlite").write_bytes(b"this is not a SQLite file" * 100)
        Path(f"{tmp_path / 'c' / 'index.sqlite'}-wal").unlink(missing_ok=True)
        again = GCSTileStore.from_uri(uri, client=emu.client(), cache_dir=tmp_path / "c")
        again.refresh()
        assert state(again) == want  # the replica is only a cache: rebuilt from the bucket
        again.close()
    finally:
        emu.stop()


# --- 5. read-only stores -------------------------------------------------------------------------------
def test_read_only_store_reads_and_refuses_writes(env, tmp_path):  # noqa: F811
    kind, location, emu = env
    w = open_env(env, tmp_path / "writer-cache")
    v = w.put_tile("generation", 0, 0, make_png(1), {"a": 1})
    w.set_flags(0, 0, starred=True)
    w.close()
    if kind == "local":
        ro = open_store(location, read_only=True)
    else:
        ro = GCSTileStore.from_uri(
            location, client=emu.client(), cache_dir=tmp_path / "ro-cache", read_only=True
        )
    assert ro.read_only and ro.get_tile("generation", 0, 0) == make_png(1) and ro.flags(0, 0).starred
    assert ro.active("generation", 0, 0) == v and verify_store(ro)["clean"]
    writes = {
        "write tiles": lambda: ro.put_tile("generation", 1, 0, make_png(2)),
        "store a blob": lambda: ro.put_blob(make_png(2)),
        "activate a version": lambda: ro.activate("generation", 0, 0, 1),
        "deactivate a tile": lambda: ro.deactivate("generation", 0, 0),
        "set flags": lambda: ro.set_flags(0, 0, starred=False),
        "repair it": lambda: verify_store(ro, repair=True),
    }
    for what, fn in writes.items():
        msg = f"the tile store at {location} is open read-only (opened with read_only=True); cannot {what}: "
        with pytest.raises(ReadOnlyStoreError, match=re.escape(msg)):
            fn()
    if kind == "local":
        with pytest.raises(sqlite3.OperationalError, match="readonly"):  # SQLite itself is read-only
            ro._index.conn().execute("DELETE FROM tile_versions")
    ro.close()
    with pytest.raises(StoreError, match=r"no tile store at .*nothing was ever written there"):
        LocalTileStore(tmp_path / "never-written", read_only=True)


_RO_CHILD = """
import json, sys
from isonyc_dagster.store import open_store, StoreError
s = open_store(sys.argv[1])
out = {"read_only": s.read_only, "tile": s.get_tile("generation", 0, 0).hex(), "flags": s.flags(0, 0).starred}
try:
    s.put_tile("generation", 1, 1, s.get_tile("generation", 0, 0))
except StoreError as e:
    out["error"] = str(e)
print(json.dumps(out))
"""


def test_store_in_a_directory_this_user_cannot_write(tmp_path):
    """Opened read-only automatically (SQLite immutable: it cannot create -shm there); writes refused."""
    root = tmp_path / "st"
    s = LocalTileStore(root)
    s.put_tile("generation", 0, 0, make_png(1))
    s.set_flags(0, 0, starred=True)
    s.close()
    assert not Path(f"{root / 'index.sqlite'}-wal").exists()  # close() checkpointed
    cmd = [sys.executable, "-c", _RO_CHILD, str(root)]
    if os.geteuid() == 0:  # root ignores permissions: drop the capabilities that let it
        if not shutil.which("setpriv"):
            pytest.skip("running as root without setpriv: cannot make a directory unwritable")
        cmd = ["setpriv", "--bounding-set=-all", "--inh-caps=-all", *cmd]
    for d in (root, root / "blobs"):
        d.chmod(0o555)
    try:
        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        for d in (root, root / "blobs"):
            d.chmod(0o755)
    if out.returncode != 0 and "setpriv" in out.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {out.stderr.strip()}")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["read_only"] and bytes.fromhex(res["tile"]) == make_png(1) and res["flags"]
    assert res["error"] == (
        f"the tile store at {root.resolve()} is open read-only ({root.resolve()} is not writable by this user); "
        "cannot write tiles: open it with read_only=False, as a user who can write there"
    )


# --- 6. stale temp files, checkpoints ---------------------------------------------------------------------
def test_stale_temp_files_are_swept_on_open(tmp_path):
    root = tmp_path / "st"
    s = LocalTileStore(root)
    v = s.put_tile("generation", 0, 0, make_png(1))
    s.close()
    d = s.path_for_blob(v.sha256).parent
    stale, fresh = d / f".{v.sha256}.png.dead.tmp", d / f".{v.sha256}.png.live.tmp"
    rebuild_left = root / ".index.sqlite.rebuild-dead.tmp-wal"  # an index rebuild killed halfway
    for f in (stale, fresh, rebuild_left):
        f.write_bytes(b"partial")
    old = time.time() - 2 * 3600
    for f in (stale, rebuild_left):
        os.utime(f, (old, old))
    marker = root / ".temp-sweep"
    os.utime(marker, (time.time() - SWEEP_EVERY_S - 1,) * 2)  # the last sweep is due again
    LocalTileStore(root, read_only=True).close()
    assert stale.exists()  # read-only opens never delete
    LocalTileStore(root).close()
    assert not stale.exists() and not rebuild_left.exists()
    assert fresh.exists()  # a live writer's file (younger than an hour) is kept
    stale.write_bytes(b"partial")
    os.utime(stale, (old, old))
    LocalTileStore(root).close()
    assert stale.exists()  # swept at most hourly: walking a city's blob tree costs seconds


def test_checkpoint_folds_the_wal_into_the_index(tmp_path):
    root = tmp_path / "st"
    s = LocalTileStore(root)
    s.put_tiles([TileWrite("generation", x, 0, make_png(x), {}) for x in range(3)])
    wal = Path(f"{root / 'index.sqlite'}-wal")
    assert wal.stat().st_size > 0
    assert s.checkpoint()["busy"] == 0
    assert wal.stat().st_size == 0
    # The index file alone now holds every commit.
    alone = tmp_path / "copy.sqlite"
    shutil.copy(root / "index.sqlite", alone)
    with sqlite3.connect(alone) as db:
        assert db.execute("SELECT count(*) FROM tile_versions").fetchone()[0] == 3
    db.close()
    s.put_tile("generation", 5, 0, make_png(5))
    s.close()
    assert not wal.exists() or wal.stat().st_size == 0
