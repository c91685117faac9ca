"""The incremental builder of the Deep Zoom pyramid of the active generations: streaming, lossless, pixel-crisp.

Why not ``pyvips.dzsave`` on an ``arrayjoin`` mosaic (what the original did, W7c/W7e)? The tiles are
aligned to quadrants (see ``layout``), so
- a full-resolution tile *is* one stored quadrant PNG: we copy its bytes (lossless by construction, no
  decode/encode at all), where dzsave decodes and re-encodes every one;
- a tile at level L is exactly the 2×2 tiles of level L+1 subsampled by 2 (top-left pixel of each 2×2
  block, the same pixel libvips' ``region_shrink="nearest"`` picks, so the output is pixel-identical to
  ``dzsave(depth="onepixel", region_shrink="nearest")``). A depth-first walk holds one canvas per level
  and so needs O(depth) memory however large the map grows, and a changed quadrant touches exactly one
  tile per level above it, which makes incremental updates cheap. dzsave can do neither.
The per-tile codecs release the GIL, so subtrees are built on a thread pool.

Each tile carries a Merkle hash of its inputs (quadrant sha256 at the base, children's hashes above,
plus its size and the format). A tile is rewritten only when its hash changed or its file is missing;
every write is atomic (``fileio.atomic_write``) and its manifest row is committed only after the file
is in place, so a crashed build resumes where it stopped and a viewer never sees a half-written tile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.geo.boxes import QuadRect
from isonyc_dagster.publish._codec import decode_rgba, encode_rgba
from isonyc_dagster.publish.clip import BaseTile, BaseTiles, PublishSpec, placeholder_keys
from isonyc_dagster.publish.layout import (
    Format,
    LevelInfo,
    PyramidError,
    PyramidLayout,
    dzi_xml,
    tile_path,
    tiles_dirname,
)
from isonyc_dagster.publish.manifest import (
    PyramidMeta,
    TileManifest,
    TileRow,
    layout_from_sidecar,
    make_sidecar,
    parse_meta,
    read_sidecar,
    write_sidecar,
)
from isonyc_dagster.store.base import TileStore

__all__ = ["BuildStats", "PyramidInfo", "build_pyramid", "update_pyramid"]

# Bump when the pixels produced for the same inputs change (codec settings, shrink rule): forces rewrites.
_ALGO = "isonyc-dzi-v1"
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True, slots=True)
class BuildStats:
    """What a build or update did."""

    tiles_written: int
    tiles_skipped: int
    written_per_level: dict[int, int]
    seconds: float
    quadrants_ignored: int = 0  # changed quadrants outside the pyramid's grid


@dataclass(frozen=True)
class PyramidInfo:
    """A built pyramid: where it is, its geometry, and what the build did."""

    out_dir: Path
    name: str
    fmt: Format
    layout: PyramidLayout
    dzi_path: Path
    sidecar_path: Path
    stats: BuildStats
    levels: list[LevelInfo] = field(default_factory=list)

    @property
    def tiles_dir(self) -> Path:
        return self.out_dir / tiles_dirname(self.name)


def _h(*parts: object) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()


@contextlib.contextmanager
def _locked(out_dir: Path, name: str) -> Iterator[None]:
    """One writer per pyramid at a time (two Dagster runs may export concurrently)."""
    with open(out_dir / f".{name}.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------------
# the builder

HalfFn = Callable[[], "np.ndarray | None"]


@dataclass(slots=True)
class _Node:
    hash: str
    old: str | None  # manifest hash before this run
    rebuilt: bool
    half: HalfFn | None = None  # for rebuilt tiles: pixels subsampled by 2 (None result = fully transparent)


class _Builder:
    def __init__(
        self,
        store: TileStore,
        out_dir: Path,
        name: str,
        layout: PyramidLayout,
        fmt: Format,
        layer: str,
        manifest: TileManifest,
        sha_of: Callable[[int, int], str | None],
        visit: Callable[[int, int, int], bool],
        tiles: BaseTiles | None = None,
    ) -> None:
        self.store, self.layout, self.fmt, self.layer = store, layout, fmt, layer
        self.tiles = None if tiles is None or tiles.spec.plain else tiles  # clip and placeholders
        self.files = out_dir / tiles_dirname(name)
        self.manifest, self.sha_of, self.visit = manifest, sha_of, visit
        self.params = f"{_ALGO}|{fmt}|{layout.tile}"
        self._blank: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()
        self.pending: list[TileRow] = []
        self._results: dict[tuple[int, int, int], _Node] = {}
        self._flushed = time.monotonic()
        self.written: dict[int, int] = {}
        self.skipped = 0

    # -- helpers
    def base_plan(self, x: int, y: int, sha: str | None) -> BaseTile | None:
        """How the published tile of quadrant (x, y) is made (``None``: the stored tile as is)."""
        return None if self.tiles is None else self.tiles.plan(x, y, sha)

    def base_hash(self, x: int, y: int, sha: str | None, plan: BaseTile | None = None) -> str:
        """Input hash of a full-resolution tile: the quadrant's active sha (or its absence), and where clipping
        or a placeholder makes the tile, what it is made from (a tile they leave alone hashes as without)."""
        t = self.layout.tile
        plan = plan or self.base_plan(x, y, sha)
        return _h(self.params, "q", t, t, *(plan.key if plan else (sha or "-",)))

    def upper_hash(self, level: int, col: int, row: int, kids: Iterable[str | None]) -> str:
        """Input hash of a lower-resolution tile: its size and its (up to four) children's hashes."""
        w, hgt = self.layout.tile_size(level, col, row)
        return _h(self.params, level, w, hgt, *(k or "-" for k in kids))

    def path(self, level: int, col: int, row: int) -> Path:
        return tile_path(self.files, level, col, row, self.fmt)

    def blank(self, w: int, h: int) -> bytes:
        b = self._blank.get((w, h))
        if b is None:
            b = self._blank[(w, h)] = encode_rgba(np.zeros((h, w, 4), np.uint8), self.fmt)
        return b

    def _write(self, level: int, col: int, row: int, data: bytes, h: str) -> None:
        path = self.path(level, col, row)
        atomic_write(path, data, fsync=False)  # a crashed build rewrites unrecorded tiles anyway
        st = os.stat(path)
        with self._lock:
            self.pending.append((level, col, row, h, st.st_mtime_ns, st.st_size, st.st_ino))
            self.written[level] = self.written.get(level, 0) + 1
            due = len(self.pending) >= 32 or time.monotonic() - self._flushed > 0.5
        if due:  # bound the work a killed build loses
            self.flush()

    def _read_half(self, level: int, col: int, row: int) -> np.ndarray | None:
        p = self.path(level, col, row)
        arr = decode_rgba(p.read_bytes(), f"pyramid tile {p}")
        return arr[::2, ::2]

    def _recorded(self, key: tuple[int, int, int]) -> str | None:
        """The input hash of the tile file on disk, or None when there is no file or it is not the one
        the manifest describes."""
        rec = self.manifest.get(key)
        if rec is None:
            return None
        try:
            st = os.stat(self.path(*key))
        except FileNotFoundError:
            return None
        return rec[0] if (st.st_mtime_ns, st.st_size, st.st_ino) == rec[1:] else None

    def _clean(self, h: str, old: str | None) -> bool:
        return old == h

    # -- the walk
    def node(self, level: int, col: int, row: int) -> _Node:
        """Bring tile (level, col, row) up to date, depth-first; returns its hash and, if rebuilt, its pixels."""
        key = (level, col, row)
        done = self._results.pop(key, None)  # subtree already built on the thread pool
        if done is not None:
            return done
        old = self._recorded(key)
        if old is not None and not self.visit(level, col, row):
            return _Node(old, old, False)
        if level == self.layout.max_level:
            return self._base(col, row, old)
        return self._upper(
            level, col, row, old, [self.child(level, col, row, dx, dy) for dy in (0, 1) for dx in (0, 1)]
        )

    def child(self, level: int, col: int, row: int, dx: int, dy: int) -> _Node | None:
        c, r = 2 * col + dx, 2 * row + dy
        if not self.layout.contains(level + 1, c, r):
            return None
        return self.node(level + 1, c, r)

    def _base(self, col: int, row: int, old: str | None) -> _Node:
        lv = self.layout.max_level
        x, y = self.layout.quadrant_of(col, row)
        sha = self.sha_of(x, y)
        t = self.layout.tile
        plan = self.base_plan(x, y, sha)
        h = self.base_hash(x, y, sha, plan)
        if self._clean(h, old):
            with self._lock:
                self.skipped += 1
            return _Node(h, old, False)
        if plan is not None and (plan.kind in ("outside", "placeholder") or plan.where == "edge"):
            drawn = self._drawn(col, row, plan, h, old)
            if drawn is not None:
                return drawn
        if sha is None:  # missing quadrant: transparent
            self._write(lv, col, row, self.blank(t, t), h)
            return _Node(h, old, True, lambda: None)
        data = self.store.get_blob(sha)
        what = f"quadrant ({x}, {y}) of layer {self.layer!r} (blob {sha[:12]})"
        full: np.ndarray | None = None
        if self.fmt == "png" and data[:8] == b"\x89PNG\r\n\x1a\n":
            out = data  # the stored PNG already is the lossless tile: copy the bytes, no re-encode
        else:
            full = decode_rgba(data, what)
            self._check_size(full, what)
            out = encode_rgba(full, self.fmt)
        self._write(lv, col, row, out, h)

        def half() -> np.ndarray:
            arr = full if full is not None else decode_rgba(data, what)
            self._check_size(arr, what)
            return arr[::2, ::2]

        return _Node(h, old, True, half)

    def _drawn(self, col: int, row: int, plan: BaseTile, h: str, old: str | None) -> _Node | None:
        """Write a clipped or placeholder base tile; ``None`` when the stored tile is published unchanged."""
        assert self.tiles is not None
        what = f"quadrant ({plan.x}, {plan.y}) of layer {self.layer!r} ({plan.kind})"
        data = self.store.get_blob(plan.sha) if plan.sha else None
        if data is None and plan.kind != "outside":
            return None  # missing and not outside: the transparent tile of the plain path
        arr = self.tiles.pixels(plan, data, lambda d: decode_rgba(d, what))
        if arr is None:
            return None
        self._check_size(arr, what)
        lv, t = self.layout.max_level, self.layout.tile
        if not arr[..., 3].any():
            self._write(lv, col, row, self.blank(t, t), h)
            return _Node(h, old, True, lambda: None)
        self._write(lv, col, row, encode_rgba(arr, self.fmt), h)
        half = np.ascontiguousarray(arr[::2, ::2])
        return _Node(h, old, True, lambda: half)

    def _check_size(self, arr: np.ndarray, what: str) -> None:
        t = self.layout.tile
        if arr.shape[:2] != (t, t):
            raise PyramidError(
                f"{what} is {arr.shape[1]}×{arr.shape[0]} px, expected {t}×{t} (quadrant_px of the map config)"
            )

    def _upper(self, level: int, col: int, row: int, old: str | None, kids: list[_Node | None]) -> _Node:
        w, hgt = self.layout.tile_size(level, col, row)
        h = self.upper_hash(level, col, row, (k.hash if k else None for k in kids))
        if self._clean(h, old):
            with self._lock:
                self.skipped += 1
            return _Node(h, old, False)

        # Patch the existing file when it was built from the same inputs as the children that did not
        # change: one decode instead of up to four (the incremental-update fast path).
        canvas: np.ndarray | None = None
        if old is not None and any(k and k.rebuilt for k in kids):
            was = _h(
                self.params,
                level,
                w,
                hgt,
                *((k.old or "?") if k and k.rebuilt else (k.hash if k else "-") for k in kids),
            )
            if was == old:
                p = self.path(level, col, row)
                arr = decode_rgba(p.read_bytes(), f"pyramid tile {p}")
                if arr.shape == (hgt, w, 4):
                    canvas = arr.copy()
        patching = canvas is not None
        if canvas is None:
            canvas = np.zeros((hgt, w, 4), np.uint8)
        half_t = self.layout.tile // 2
        for i, k in enumerate(kids):
            if k is None or (patching and not k.rebuilt):
                continue
            dx, dy = i % 2, i // 2
            c2, r2 = 2 * col + dx, 2 * row + dy
            half = k.half() if (k.rebuilt and k.half) else self._read_half(level + 1, c2, r2)
            cw, ch = self.layout.tile_size(level + 1, c2, r2)
            ox, oy, sw, sh = dx * half_t, dy * half_t, -(-cw // 2), -(-ch // 2)
            if half is None:
                canvas[oy : oy + sh, ox : ox + sw] = 0
            else:
                canvas[oy : oy + sh, ox : ox + sw] = half
        if not canvas[..., 3].any():
            self._write(level, col, row, self.blank(w, hgt), h)
            return _Node(h, old, True, lambda: None)
        self._write(level, col, row, encode_rgba(canvas, self.fmt), h)
        half_img = np.ascontiguousarray(canvas[::2, ::2])
        return _Node(h, old, True, lambda: half_img)

    # -- parallel driver
    def run(self, workers: int) -> None:
        """Walk the whole pyramid: subtrees below a split level on a thread pool, the top in this thread."""
        lay = self.layout
        split = next(
            (lv for lv in range(lay.max_level + 1) if lay.level(lv).tiles >= 4 * workers), lay.max_level
        )
        if workers <= 1:
            split = 0
        info = lay.level(split)
        keys = [(split, c, r) for r in range(info.rows) for c in range(info.cols)]
        if split > 0:
            with ThreadPoolExecutor(workers, thread_name_prefix="pyramid") as pool:
                futs: dict[Future[_Node], tuple[int, int, int]] = {}
                todo = iter(keys)
                # Bounded submission keeps memory O(workers) even when the split level is wide.
                for k in todo:
                    futs[pool.submit(self.node, *k)] = k
                    if len(futs) >= 2 * workers:
                        break
                while futs:
                    done, _ = wait(futs, return_when=FIRST_COMPLETED)
                    for f in done:
                        self._results[futs.pop(f)] = f.result()
                    self.flush()
                    for k in todo:
                        futs[pool.submit(self.node, *k)] = k
                        if len(futs) >= 2 * workers:
                            break
        self.node(0, 0, 0)
        self.flush()

    def flush(self) -> None:
        with self._lock:
            rows, self.pending = self.pending, []
            self._flushed = time.monotonic()
        self.manifest.put_many(rows)


# --------------------------------------------------------------------------------------------------
# public API


def _workers(workers: int | None) -> int:
    return max(1, min(8, os.cpu_count() or 1)) if workers is None else max(1, int(workers))


def _ensure_dirs(files: Path, layout: PyramidLayout) -> None:
    for lv in range(layout.max_level + 1):
        (files / str(lv)).mkdir(parents=True, exist_ok=True)


def _remove_leftovers(files: Path, fmt: str) -> None:
    """Temp files of a killed build (we hold the pyramid lock, so no writer owns them) and tiles of the
    other format from an earlier build into the same directory."""
    other = re.compile(r"^\d+_\d+\.(png|webp)$")
    for lvdir in files.iterdir():
        if lvdir.is_dir():
            for e in os.scandir(lvdir):
                stale_tmp = e.name.startswith(".") and e.name.endswith(".tmp")
                if stale_tmp or (other.match(e.name) and not e.name.endswith("." + fmt)):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(e.path)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _publish_path(out: Path, name: str) -> Path:
    return out / f".{name}.publish.json"


def _save_spec(out: Path, name: str, spec: PublishSpec | None) -> None:
    """Record the publish spec so that ``update_pyramid`` draws the same tiles (hidden: never served)."""
    path = _publish_path(out, name)
    if spec is None or spec.plain:
        path.unlink(missing_ok=True)
    else:
        atomic_write(path, json.dumps(spec.to_json()).encode(), fsync=True)


def _load_spec(out: Path, name: str) -> PublishSpec | None:
    path = _publish_path(out, name)
    if not path.is_file():
        return None
    try:
        return PublishSpec.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, KeyError, TypeError) as e:
        raise PyramidError(f"{path} is unreadable ({e}); rebuild the pyramid (build_pyramid)") from None


def _base_tiles(store: TileStore, spec: PublishSpec | None, bbox: QuadRect | None) -> BaseTiles | None:
    """Clip and placeholder tiles of ``spec`` (renders preloaded over ``bbox``, else read per quadrant)."""
    if spec is None or spec.plain:
        return None
    layer = spec.placeholder_layer
    if bbox is None:
        return BaseTiles(store, spec, lambda x, y: store.active(layer, x, y))
    renders = {(v.x, v.y): v for v in store.list_active(layer, bbox=bbox)}
    return BaseTiles(store, spec, lambda x, y: renders.get((x, y)))


def _publish_info(store: TileStore, spec: PublishSpec | None, grid: QuadRect, layer: str) -> dict[str, Any]:
    """The sidecar's ``publish`` entry: whether the map is clipped and which quadrants are placeholders."""
    if spec is None or spec.plain:
        return {"identity": None, "clip": False, "placeholders": []}
    gens = {(v.x, v.y) for v in store.list_active(layer, bbox=grid)}
    rendered = (
        {(v.x, v.y) for v in store.list_active(spec.placeholder_layer, bbox=grid)}
        if spec.placeholders
        else set()
    )
    return {
        "identity": spec.identity,
        "clip": spec.clip is not None,
        "placeholders": placeholder_keys(spec, gens, rendered),
    }


def build_pyramid(
    store: TileStore,
    out_dir: str | os.PathLike[str],
    *,
    grid: tuple[int, int, int, int],
    layer: str = layers.GENERATION,
    fmt: Format = "png",
    meta: dict[str, Any] | PyramidMeta | None = None,
    name: str | None = None,
    workers: int | None = None,
    publish: PublishSpec | None = None,
) -> PyramidInfo:
    """Build (or bring up to date) the DZI pyramid of ``layer``'s active tiles over the inclusive quadrant
    bbox ``grid = (x0, y0, x1, y1)``. Tiles whose inputs did not change since the last build are skipped,
    so re-running after a crash resumes. ``name`` defaults to the map name from ``meta["map"]``.
    ``publish`` clips the map's edges and fills missing quadrants with placeholders (``publish.clip``)."""
    t0 = time.perf_counter()
    if fmt not in ("png", "webp"):
        raise PyramidError(f"fmt must be 'png' or 'webp' (both lossless), got {fmt!r}")
    m = parse_meta(meta)
    name = name or m.map.name
    if not _NAME_RE.match(name):
        raise PyramidError(f"pyramid name {name!r} may only contain letters, digits, '_', '.', '-'")
    try:
        x0, y0, x1, y1 = grid
    except (TypeError, ValueError):
        raise PyramidError(
            f"grid must be an inclusive quadrant bbox (x0, y0, x1, y1), got {grid!r}"
        ) from None
    layout = PyramidLayout(x0, y0, x1, y1, tile=m.map.quadrant_px)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = out / tiles_dirname(name)
    with _locked(out, name):
        _ensure_dirs(files, layout)
        _remove_leftovers(files, fmt)
        shas = {(v.x, v.y): v.sha256 for v in store.list_active(layer, bbox=(x0, y0, x1, y1))}
        manifest = TileManifest.of(out, name)
        try:
            manifest.preload()
            _save_spec(out, name, publish)
            b = _Builder(
                store,
                out,
                name,
                layout,
                fmt,
                layer,
                manifest,
                lambda x, y: shas.get((x, y)),
                lambda *_: True,
                _base_tiles(store, publish, layout.grid),
            )
            b.run(_workers(workers))
            _prune(manifest, files, layout, fmt)
        finally:
            manifest.close()
        now = _now()
        atomic_write(out / f"{name}.dzi", dzi_xml(layout, fmt).encode(), fsync=True)
        side = make_sidecar(name, layout, fmt, layer, m, now, now)
        side["publish"] = _publish_info(store, publish, layout.grid, layer)
        sidecar_path = write_sidecar(out, side)
    stats = BuildStats(
        sum(b.written.values()), b.skipped, dict(sorted(b.written.items())), time.perf_counter() - t0
    )
    return PyramidInfo(out, name, fmt, layout, out / f"{name}.dzi", sidecar_path, stats, layout.levels())


def _prune(manifest: TileManifest, files: Path, layout: PyramidLayout, fmt: str) -> None:
    """Drop tiles left over from a previous build over a different grid (never requested by viewers)."""
    stale = [k for k in manifest.all_keys() if not layout.contains(*k)]
    for lv, c, r in stale:
        with contextlib.suppress(FileNotFoundError):
            tile_path(files, lv, c, r, fmt).unlink()
    manifest.delete_many(stale)
    for lvdir in files.iterdir():
        if lvdir.is_dir() and lvdir.name.isdigit() and int(lvdir.name) > layout.max_level:
            with contextlib.suppress(OSError):  # only when empty: never delete files we did not write
                lvdir.rmdir()


def update_pyramid(
    store: TileStore,
    out_dir: str | os.PathLike[str],
    changed: Iterable[tuple[int, int]],
    *,
    name: str | None = None,
    workers: int | None = None,
) -> BuildStats:
    """Rewrite only the tiles above the ``changed`` quadrants (at most one per level per changed region).

    Idempotent: a quadrant whose active version did not change rewrites nothing. Quadrants outside the
    pyramid's grid are counted in ``quadrants_ignored`` (grow the grid with ``build_pyramid``)."""
    t0 = time.perf_counter()
    out = Path(out_dir)
    side = read_sidecar(out, name)
    name, fmt, layer = side["name"], side["format"], side["layer"]
    layout = layout_from_sidecar(side)
    inside: set[tuple[int, int]] = set()
    ignored = 0
    for key in changed:
        try:
            x, y = (int(v) for v in key)
        except (TypeError, ValueError):
            raise PyramidError(f"changed quadrant {key!r} must be an (x, y) pair of integers") from None
        if (x, y) in layout.grid:
            inside.add((x, y))
        else:
            ignored += 1
    # Every ancestor of a changed quadrant, per level: the only tiles the walk descends into.
    marked: set[tuple[int, int, int]] = set()
    for x, y in inside:
        c, r = x - layout.x0, y - layout.y0
        for lv in range(layout.max_level, -1, -1):
            marked.add((lv, c, r))
            c, r = c // 2, r // 2
    files = out / tiles_dirname(name)
    written: dict[int, int] = {}
    skipped = 0
    if inside:
        with _locked(out, name):
            _ensure_dirs(files, layout)
            shas = {k: v.sha256 for k, v in store.active_map(layer, inside).items()}

            def sha_of(x: int, y: int) -> str | None:
                # A tile outside the changed set is only visited when its file or manifest row is missing.
                if (x, y) in inside:
                    return shas.get((x, y))
                v = store.active(layer, x, y)
                return None if v is None else v.sha256

            manifest = TileManifest.of(out, name)
            spec = _load_spec(out, name)
            try:
                b = _Builder(
                    store,
                    out,
                    name,
                    layout,
                    fmt,
                    layer,
                    manifest,
                    sha_of,
                    lambda *k: k in marked,
                    _base_tiles(store, spec, None),
                )
                b.run(1 if len(inside) < 16 else _workers(workers))
            finally:
                manifest.close()
            side["updated_at"] = _now()
            side["publish"] = _publish_info(store, spec, layout.grid, layer)
            write_sidecar(out, side)
            written, skipped = dict(sorted(b.written.items())), b.skipped
    return BuildStats(sum(written.values()), skipped, written, time.perf_counter() - t0, ignored)


def pyramid_staleness(
    store: TileStore,
    out_dir: str | os.PathLike[str],
    *,
    grid: QuadRect | tuple[int, int, int, int],
    name: str,
    layer: str = layers.GENERATION,
    publish: PublishSpec | None = None,
) -> str | None:
    """Why the pyramid in ``out_dir`` does not show the store's active ``layer`` tiles over ``grid``; ``None``
    when every tile file on disk is the one its inputs call for (drawn with ``publish``'s clip and placeholders).

    Judged from the store and the tile manifest alone (never from timestamps): a crash during a build, a new
    output directory, deleted files or a repaired tile all read as stale, and an unchanged store as current.
    """
    out = Path(out_dir)
    if not (out / f"{name}.dzi").is_file():
        return f"no Deep Zoom map at {out / (name + '.dzi')}"
    try:
        side = read_sidecar(out, name)
    except PyramidError as e:
        return f"the map's sidecar is unreadable ({e})"
    layout = layout_from_sidecar(side)
    if tuple(layout.grid) != tuple(grid) or side.get("layer") != layer:
        return f"the map covers {tuple(layout.grid)} of layer {side.get('layer')!r}, the bounds need {tuple(grid)}"
    grid = QuadRect(*grid)
    shas = {(v.x, v.y): v.sha256 for v in store.list_active(layer, bbox=grid)}
    manifest = TileManifest.of(out, name)
    try:
        manifest.preload()
        b = _Builder(
            store,
            out,
            name,
            layout,
            side["format"],
            layer,
            manifest,
            lambda x, y: shas.get((x, y)),
            lambda *_: True,
            _base_tiles(store, publish, grid),
        )
        expected: dict[tuple[int, int, int], str] = {}

        def expect(level: int, col: int, row: int) -> str:
            if level == layout.max_level:
                qx, qy = layout.quadrant_of(col, row)
                h = b.base_hash(qx, qy, shas.get((qx, qy)))
            else:
                kids = [
                    expect(level + 1, 2 * col + dx, 2 * row + dy)
                    if layout.contains(level + 1, 2 * col + dx, 2 * row + dy)
                    else None
                    for dy in (0, 1)
                    for dx in (0, 1)
                ]
                h = b.upper_hash(level, col, row, kids)
            expected[(level, col, row)] = h
            return h

        expect(0, 0, 0)
        stale = sum(b._recorded(key) != h for key, h in expected.items())
    finally:
        manifest.close()
    if stale:
        return f"{stale} of {len(expected)} map tiles are missing or older than the store's active tiles"
    return None
