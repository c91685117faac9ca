"""Check a store's tile blobs against its index, and repair what can be repaired (``isonyc store verify``).

Every checked tile version's blob is read once per distinct sha256 and classified:

- ``missing``: no stored copy;
- ``corrupt``: the copy's bytes hash to something else than its name (bit rot, a truncated or swapped file);
- ``undecodable``: the bytes match the name but are not a decodable PNG (written around the store's checks).

``repair`` then, in this order:

1. restores a blob whose copy is missing or corrupt from a corrupt copy of another blob that happens to hold
   exactly its bytes (two swapped files both come back);
2. deletes the remaining corrupt copies (their bytes are not what the name promises, so nothing may read them);
3. moves each tile whose active version is still broken back to its newest intact older version, or clears
   its active pointer when none is left, so the quadrant reads as missing and is generated again.

Every change goes through the store (journal and GCS log included) and is listed in the report. Repair while
writers run is safe in the usual cases (a blob a writer repaired is not deleted, a tile a writer changed is
not moved) but best run between pipeline runs.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from isonyc_dagster.store.base import StoreError, TileVersion
from isonyc_dagster.store.index import IndexedTileStore
from isonyc_dagster.store.validate import check_layer, sha256_hex, validate_png

PROBLEMS = ("missing", "corrupt", "undecodable")


@dataclass(frozen=True, slots=True)
class BlobState:
    """What reading one blob found: ``problem`` is ``None`` for an intact blob, else one of ``PROBLEMS``."""

    problem: str | None
    where: str | None = None
    found_sha256: str | None = None
    detail: str | None = None


def check_blob(store: IndexedTileStore, sha256: str) -> BlobState:
    """Read blob ``sha256`` as stored and classify it (see the module docstring)."""
    raw = store._read_blob_raw(sha256)
    if raw is None:
        return BlobState("missing")
    where, data = raw
    return _classify(sha256, where, data)


def _classify(sha256: str, where: str, data: bytes) -> BlobState:
    found = sha256_hex(data)
    if found != sha256:
        return BlobState("corrupt", where, found, f"{len(data)} bytes hashing to {found}")
    try:
        validate_png(data, expect_size=None, what=f"blob {where}")
    except StoreError as exc:
        return BlobState("undecodable", where, None, str(exc))
    return BlobState(None, where)


def verify_store(
    store: IndexedTileStore,
    *,
    repair: bool = False,
    all_versions: bool = False,
    layers: Sequence[str] | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Check the active tile versions (or every version) of ``layers`` (default: all); a JSON-ready report.

    Also checked: SQLite's ``quick_check`` of the index (``index``) and, for the local store, the whole commit
    journal against the index (``journal``): what the index would be rebuilt from.
    ``report["clean"]`` is whether nothing was found. With ``repair`` the report also has ``repair``:
    ``changes`` (each restored or deleted blob, each moved or cleared active pointer) and ``clean_after``.
    """
    if repair:
        store._require_writable("repair it")
    index = store._fresh_index()
    known = index.layers()
    wanted = list(layers) if layers else known
    for layer in wanted:
        check_layer(layer)
        if layer not in known:
            raise StoreError(f"layer {layer!r} has no tiles in {store.location}; its layers are {known}")
    pool = ThreadPoolExecutor(max(1, workers or min(8, os.cpu_count() or 1)))
    with pool:
        versions = _versions(store, wanted, all_versions)
        states = _check_all(store, pool, {v.sha256 for v in versions}, {})
        report: dict[str, Any] = {
            "store": store.location,
            "layers": wanted,
            "all_versions": all_versions,
            "checked": {"versions": len(versions), "blobs": len(states)},
            **_findings(versions, states),
            "index": _quick_check(store),
            "journal": store._check_history(),
        }
        healthy = report["index"] == "ok" and report["journal"] == "ok"
        report["clean"] = not report["affected"] and healthy
        if repair:
            changes = _restore_swapped(store, states) + _drop_corrupt(store, states)
            changes += _repoint(store, pool, versions, states)
            after_versions = _versions(store, wanted, all_versions)
            after = _findings(
                after_versions, _check_all(store, pool, {v.sha256 for v in after_versions}, states)
            )
            report["repair"] = {
                "changes": changes,
                "problems_after": after["problems"],
                "affected_after": after["affected"],
                "clean_after": not after["affected"] and healthy,
            }
    return report


def _versions(store: IndexedTileStore, layers: Iterable[str], all_versions: bool) -> list[TileVersion]:
    index = store._fresh_index()
    return [v for layer in layers for v in index.all_versions(layer, active_only=not all_versions)]


def _check_all(
    store: IndexedTileStore, pool: ThreadPoolExecutor, shas: set[str], known: dict[str, BlobState]
) -> dict[str, BlobState]:
    """States of ``shas``; intact entries of ``known`` are reused, everything else is read (in parallel)."""
    todo = sorted(s for s in shas if s not in known or known[s].problem is not None)
    out = {s: known[s] for s in shas.difference(todo)}
    out.update(zip(todo, pool.map(lambda s: check_blob(store, s), todo), strict=True))
    return out


def _findings(versions: list[TileVersion], states: dict[str, BlobState]) -> dict[str, Any]:
    affected = []
    for v in versions:
        st = states[v.sha256]
        if st.problem is None:
            continue
        entry: dict[str, Any] = {
            "layer": v.layer,
            "x": v.x,
            "y": v.y,
            "version": v.version,
            "active": v.active,
            "problem": st.problem,
            "sha256": v.sha256,
        }
        if st.where:
            entry["where"] = st.where
        if st.detail:
            entry["detail"] = st.detail
        affected.append(entry)
    counts = {p: sum(1 for a in affected if a["problem"] == p) for p in PROBLEMS}
    return {"problems": counts, "affected": affected}


def _quick_check(store: IndexedTileStore) -> str:
    rows = store._fresh_index().conn().execute("PRAGMA quick_check").fetchall()
    return "ok" if [r[0] for r in rows] == ["ok"] else "; ".join(str(r[0]) for r in rows[:10])


def _restore_swapped(store: IndexedTileStore, states: dict[str, BlobState]) -> list[dict[str, Any]]:
    """Step 1: a corrupt copy that holds exactly another broken blob's bytes restores that blob."""
    broken = {s for s, st in states.items() if st.problem in ("missing", "corrupt")}
    found: dict[str, tuple[str, bytes]] = {}
    for sha, st in sorted(states.items()):
        target = st.found_sha256
        if st.problem != "corrupt" or target not in broken or target in found or st.where is None:
            continue
        raw = store._read_blob_raw(sha)  # read every source before writing any target: swaps overlap
        if raw is not None and sha256_hex(raw[1]) == target:
            found[target] = raw
    changes = []
    for target, (source, data) in sorted(found.items()):
        store._write_blob(target, "png", data)
        states[target] = check_blob(store, target)
        changes.append({"action": "restored_blob", "sha256": target, "from": source})
    return changes


def _drop_corrupt(store: IndexedTileStore, states: dict[str, BlobState]) -> list[dict[str, Any]]:
    """Step 2: delete the copies that are still corrupt."""
    changes = []
    for sha, st in sorted(states.items()):
        if st.problem == "corrupt" and st.where is not None:
            now = check_blob(store, sha)
            if now.problem != "corrupt":  # a writer repaired it since the scan
                states[sha] = now
                continue
            store._drop_blob(st.where)
            states[sha] = BlobState("missing")
            changes.append(
                {"action": "deleted_corrupt_blob", "sha256": sha, "where": st.where, "held": st.found_sha256}
            )
    return changes


def _repoint(
    store: IndexedTileStore,
    pool: ThreadPoolExecutor,
    versions: list[TileVersion],
    states: dict[str, BlobState],
) -> list[dict[str, Any]]:
    """Step 3: every broken active version falls back to the newest intact older one, or is cleared."""
    changes: list[dict[str, Any]] = []
    index = store._fresh_index()
    for v in versions:
        if not v.active or states[v.sha256].problem is None:
            continue
        if index.active(v.layer, v.x, v.y) != v:
            continue  # a writer changed this tile since the scan: its new state is checked afterwards
        older = [o for o in index.versions(v.layer, v.x, v.y) if o.version < v.version]
        states.update(_check_all(store, pool, {o.sha256 for o in older}, states))
        intact = [o for o in older if states[o.sha256].problem is None]
        key = {"layer": v.layer, "x": v.x, "y": v.y, "from_version": v.version}
        if intact:
            store.activate(v.layer, v.x, v.y, intact[-1].version)
            changes.append({"action": "activated", **key, "to_version": intact[-1].version})
        else:
            store.deactivate(v.layer, v.x, v.y)
            changes.append({"action": "cleared", **key, "why": "no intact older version: generate it again"})
    return changes
