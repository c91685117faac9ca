"""Deep Zoom (DZI) pyramid of the active generations: streaming, lossless, pixel-crisp, incremental.

Layout (standard DZI, ``depth=onepixel`` numbering, what OpenSeadragon and every DZI viewer expect)::

    <out>/<name>.dzi                          XML: TileSize = quadrant_px, Overlap 0, Format png|webp
    <out>/<name>_files/<level>/<col>_<row>.<fmt>
    <out>/<name>.json                         sidecar: grid origin, map config, attribution, Dagster links
    <out>/.<name>.manifest.sqlite             input hash of every tile (for resume and incremental updates)

Level ``L`` of an image W×H is ``ceil(W / 2^(maxL-L)) × ceil(H / 2^(maxL-L))`` with
``maxL = ceil(log2(max(W, H)))``, down to 1×1 at level 0.

Why not ``pyvips.dzsave`` on an ``arrayjoin`` mosaic (what the original did, W7c/W7e)? The tiles are
aligned to quadrants (TileSize == quadrant_px, no overlap), so
- a full-resolution tile *is* one stored quadrant PNG: we copy its bytes (lossless by construction, no
  decode/encode at all), where dzsave decodes and re-encodes every one;
- a tile at level L is exactly the 2×2 tiles of level L+1 subsampled by 2 (top-left pixel of each 2×2
  block, the same pixel libvips' ``region_shrink="nearest"`` picks, so the output is pixel-identical to
  ``dzsave(depth="onepixel", region_shrink="nearest")``). A depth-first walk holds one canvas per level
  and so needs O(depth) memory however large the map grows, and a changed quadrant touches exactly one
  tile per level above it, which makes incremental updates cheap. dzsave can do neither.
Per-tile codecs: pyvips (libspng + zlib, the same encoder and defaults as dzsave, ~2× faster than Pillow
at the same compression level) encodes; Pillow decodes (a single small PNG costs ~1 ms in Pillow versus
~3 ms of libvips pipeline set-up). Both release the GIL, so subtrees are built on a thread pool.

Each tile carries a Merkle hash of its inputs (quadrant sha256 at the base, children's hashes above,
plus its size and the format). A tile is rewritten only when its hash changed or its file is missing;
every write is atomic (temp file + ``os.replace``) and its manifest row is committed only after the file
is in place, so a crashed build resumes where it stopped and a viewer never sees a half-written tile.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyvips
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.store.base import TileStore

__all__ = [
    "DEFAULT_ATTRIBUTION",
    "BuildStats",
    "LevelInfo",
    "PyramidError",
    "PyramidInfo",
    "PyramidLayout",
    "PyramidMeta",
    "build_pyramid",
    "find_pyramid",
    "layout_from_sidecar",
    "read_sidecar",
    "update_pyramid",
]

Format = Literal["png", "webp"]
SIDECAR_VERSION = 1
# Bump when the pixels produced for the same inputs change (codec settings, shrink rule): forces rewrites.
_ALGO = "isonyc-dzi-v1"
_PNG_COMPRESSION = 6  # libvips' and dzsave's default zlib level
_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")

DEFAULT_ATTRIBUTION = (
    "Building footprints: NYC OTI (NYC Open Data). Borough boundaries: NYC DCP. Parks: NYC Parks. "
    "Roads and lower-Manhattan buildings: © OpenStreetMap contributors (ODbL)."
)


class PyramidError(ValueError):
    """Bad input to the pyramid export, or an output directory that is not a pyramid we can update."""


class PyramidMeta(BaseModel):
    """What the sidecar tells the viewer besides the grid. Passed to ``build_pyramid(meta=...)`` as a dict."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    map: MapConfig = MapConfig()
    title: str | None = Field(default=None, description="page title; default: the map name")
    attribution: str = DEFAULT_ATTRIBUTION
    dagster_url: str | None = Field(
        default=None, description="Dagster UI base URL, e.g. http://127.0.0.1:3000"
    )
    dagster_asset: str | None = Field(
        default=None, description="asset key path for lineage links; default: the layer"
    )
    partition_key_template: str = Field(
        default="{x}|{y}", description="quadrant partition key, {x} and {y} filled in"
    )

    @field_validator("dagster_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError("dagster_url must start with http:// or https:// (the Dagster UI base URL)")
        return v

    @field_validator("partition_key_template")
    @classmethod
    def _has_xy(cls, v: str) -> str:
        if "{x}" not in v or "{y}" not in v:
            raise ValueError("partition_key_template must contain both {x} and {y}, e.g. '{x}|{y}'")
        return v


# --------------------------------------------------------------------------------------------------
# geometry of the pyramid


@dataclass(frozen=True, slots=True)
class LevelInfo:
    level: int
    width: int
    height: int
    cols: int
    rows: int

    @property
    def tiles(self) -> int:
        return self.cols * self.rows


@dataclass(frozen=True)
class PyramidLayout:
    """The DZI pyramid over an inclusive quadrant bbox; tile (maxL, c, r) is quadrant (x0 + c, y0 + r)."""

    x0: int
    y0: int
    x1: int
    y1: int
    tile: int = 512

    def __post_init__(self) -> None:
        for k in ("x0", "y0", "x1", "y1", "tile"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise PyramidError(f"grid value {k}={v!r} must be an integer (quadrant keys are integers)")
        if self.x1 < self.x0 or self.y1 < self.y0:
            raise PyramidError(
                f"grid ({self.x0}, {self.y0}, {self.x1}, {self.y1}) is empty: it is an inclusive bbox "
                "(x0, y0, x1, y1) and needs x1 >= x0 and y1 >= y0"
            )
        if self.tile < 16:
            raise PyramidError(f"tile size {self.tile} is too small (quadrant_px must be >= 16)")

    @property
    def nx(self) -> int:
        return self.x1 - self.x0 + 1

    @property
    def ny(self) -> int:
        return self.y1 - self.y0 + 1

    @property
    def width(self) -> int:
        return self.nx * self.tile

    @property
    def height(self) -> int:
        return self.ny * self.tile

    @cached_property
    def max_level(self) -> int:
        return math.ceil(math.log2(max(self.width, self.height)))

    @cached_property
    def _levels(self) -> tuple[LevelInfo, ...]:
        out = []
        for lv in range(self.max_level + 1):
            s = 1 << (self.max_level - lv)
            w, h = -(-self.width // s), -(-self.height // s)
            out.append(LevelInfo(lv, w, h, -(-w // self.tile), -(-h // self.tile)))
        return tuple(out)

    def level(self, level: int) -> LevelInfo:
        return self._levels[level]

    def levels(self) -> list[LevelInfo]:
        return list(self._levels)

    def tile_size(self, level: int, col: int, row: int) -> tuple[int, int]:
        info = self.level(level)
        return min(self.tile, info.width - col * self.tile), min(self.tile, info.height - row * self.tile)

    def contains(self, level: int, col: int, row: int) -> bool:
        if not 0 <= level <= self.max_level:
            return False
        info = self._levels[level]
        return 0 <= col < info.cols and 0 <= row < info.rows

    def quadrant_of(self, col: int, row: int) -> tuple[int, int]:
        return self.x0 + col, self.y0 + row


@dataclass(frozen=True, slots=True)
class BuildStats:
    tiles_written: int
    tiles_skipped: int
    written_per_level: dict[int, int]
    seconds: float
    quadrants_ignored: int = 0  # changed quadrants outside the pyramid's grid


@dataclass(frozen=True)
class PyramidInfo:
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
        return self.out_dir / f"{self.name}_files"


# --------------------------------------------------------------------------------------------------
# small IO helpers


def _atomic_write(path: Path, data: bytes, *, fsync: bool = False) -> None:
    """Write via a temp file in the same directory + rename, so readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _decode(data: bytes, what: str) -> np.ndarray:
    """PNG/WebP bytes → H×W×4 uint8 RGBA."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "RGBA":
                im = im.convert("RGBA")
            return np.asarray(im)
    except Exception as e:  # Pillow raises many types for corrupt data
        raise PyramidError(f"{what} is not a decodable image ({e}); re-generate or re-activate it") from e


def _encode(rgba: np.ndarray, fmt: Format) -> bytes:
    """Lossless encode; opaque tiles drop the alpha band (smaller files, same pixels)."""
    if rgba[..., 3].min() == 255:
        rgba = rgba[..., :3]
    arr = np.ascontiguousarray(rgba)
    h, w, bands = arr.shape
    img = pyvips.Image.new_from_memory(arr.data, w, h, bands, "uchar")
    if fmt == "png":
        return img.write_to_buffer(".png", compression=_PNG_COMPRESSION)
    return img.write_to_buffer(".webp", lossless=True)


def _h(*parts: object) -> str:
    return hashlib.blake2b("|".join(map(str, parts)).encode(), digest_size=16).hexdigest()


def _dzi_xml(layout: PyramidLayout, fmt: str) -> str:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="{fmt}" Overlap="0" '
        f'TileSize="{layout.tile}">\n'
        f'  <Size Width="{layout.width}" Height="{layout.height}"/>\n'
        "</Image>\n"
    )


@contextlib.contextmanager
def _locked(out_dir: Path, name: str) -> Iterator[None]:
    """One writer per pyramid at a time (two Dagster runs may export concurrently)."""
    with open(out_dir / f".{name}.lock", "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_Rec = tuple[str, int, int, int]  # input hash, and the file's mtime_ns, size and inode when it was written


class _Manifest:
    """SQLite table of the input hash each tile file was written from, and that file's identity.

    The file identity (mtime_ns, size, inode: os.replace gives every write a new inode) makes a row
    prove what is on disk: a tile rewritten by a build that died before recording it no longer matches
    its row, so it is rebuilt instead of trusted. A hash alone could not tell."""

    _SCHEMA = 2

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != self._SCHEMA:
            self._db.execute("DROP TABLE IF EXISTS tiles")  # older layout: forget it, tiles get rebuilt
            self._db.execute(f"PRAGMA user_version={self._SCHEMA}")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS tiles (level INTEGER, col INTEGER, row INTEGER, hash TEXT NOT NULL,"
            " mtime_ns INTEGER, size INTEGER, inode INTEGER, PRIMARY KEY (level, col, row)) WITHOUT ROWID"
        )
        self._lock = threading.Lock()
        self._cache: dict[tuple[int, int, int], _Rec | None] = {}
        self._complete = False

    def preload(self) -> None:
        with self._lock:
            self._cache = {
                (lv, c, r): (h, m, sz, ino)
                for lv, c, r, h, m, sz, ino in self._db.execute("SELECT * FROM tiles")
            }
            self._complete = True

    def get(self, key: tuple[int, int, int]) -> _Rec | None:
        with self._lock:
            if key in self._cache or self._complete:
                return self._cache.get(key)
            row = self._db.execute(
                "SELECT hash, mtime_ns, size, inode FROM tiles WHERE level=? AND col=? AND row=?", key
            ).fetchone()
            self._cache[key] = tuple(row) if row else None  # type: ignore[assignment]
            return self._cache[key]

    def put_many(self, rows: list[tuple[int, int, int, str, int, int, int]]) -> None:
        if not rows:
            return
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("INSERT OR REPLACE INTO tiles VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            self._db.execute("COMMIT")
            for lv, c, r, h, m, sz, ino in rows:
                self._cache[(lv, c, r)] = (h, m, sz, ino)

    def all_keys(self) -> list[tuple[int, int, int]]:
        with self._lock:
            return list(self._db.execute("SELECT level, col, row FROM tiles"))

    def delete_many(self, keys: list[tuple[int, int, int]]) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.executemany("DELETE FROM tiles WHERE level=? AND col=? AND row=?", keys)
            self._db.execute("COMMIT")
            for k in keys:
                self._cache.pop(k, None)

    def close(self) -> None:
        self._db.close()


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
        manifest: _Manifest,
        sha_of: Callable[[int, int], str | None],
        visit: Callable[[int, int, int], bool],
    ) -> None:
        self.store, self.layout, self.fmt, self.layer = store, layout, fmt, layer
        self.files = out_dir / f"{name}_files"
        self.manifest, self.sha_of, self.visit = manifest, sha_of, visit
        self.params = f"{_ALGO}|{fmt}|{layout.tile}"
        self._blank: dict[tuple[int, int], bytes] = {}
        self._lock = threading.Lock()
        self.pending: list[tuple[int, int, int, str, int, int, int]] = []
        self._results: dict[tuple[int, int, int], _Node] = {}
        self._flushed = time.monotonic()
        self.written: dict[int, int] = {}
        self.skipped = 0

    # -- helpers
    def path(self, level: int, col: int, row: int) -> Path:
        return self.files / str(level) / f"{col}_{row}.{self.fmt}"

    def blank(self, w: int, h: int) -> bytes:
        b = self._blank.get((w, h))
        if b is None:
            b = self._blank[(w, h)] = _encode(np.zeros((h, w, 4), np.uint8), self.fmt)
        return b

    def _write(self, level: int, col: int, row: int, data: bytes, h: str) -> None:
        path = self.path(level, col, row)
        _atomic_write(path, data)
        st = os.stat(path)
        with self._lock:
            self.pending.append((level, col, row, h, st.st_mtime_ns, st.st_size, st.st_ino))
            self.written[level] = self.written.get(level, 0) + 1
            due = len(self.pending) >= 32 or time.monotonic() - self._flushed > 0.5
        if due:  # bound the work a killed build loses
            self.flush()

    def _read_half(self, level: int, col: int, row: int) -> np.ndarray | None:
        p = self.path(level, col, row)
        arr = _decode(p.read_bytes(), f"pyramid tile {p}")
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
        h = _h(self.params, "q", t, t, sha or "-")
        if self._clean(h, old):
            with self._lock:
                self.skipped += 1
            return _Node(h, old, False)
        if sha is None:  # missing quadrant: transparent
            self._write(lv, col, row, self.blank(t, t), h)
            return _Node(h, old, True, lambda: None)
        data = self.store.get_blob(sha)
        what = f"quadrant ({x}, {y}) of layer {self.layer!r} (blob {sha[:12]})"
        full: np.ndarray | None = None
        if self.fmt == "png" and data[:8] == b"\x89PNG\r\n\x1a\n":
            out = data  # the stored PNG already is the lossless tile: copy the bytes, no re-encode
        else:
            full = _decode(data, what)
            self._check_size(full, what)
            out = _encode(full, self.fmt)
        self._write(lv, col, row, out, h)

        def half() -> np.ndarray:
            arr = full if full is not None else _decode(data, what)
            self._check_size(arr, what)
            return arr[::2, ::2]

        return _Node(h, old, True, half)

    def _check_size(self, arr: np.ndarray, what: str) -> None:
        t = self.layout.tile
        if arr.shape[:2] != (t, t):
            raise PyramidError(
                f"{what} is {arr.shape[1]}×{arr.shape[0]} px, expected {t}×{t} (quadrant_px of the map config)"
            )

    def _upper(self, level: int, col: int, row: int, old: str | None, kids: list[_Node | None]) -> _Node:
        w, hgt = self.layout.tile_size(level, col, row)
        h = _h(self.params, level, w, hgt, *(k.hash if k else "-" for k in kids))
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
                arr = _decode(p.read_bytes(), f"pyramid tile {p}")
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
        self._write(level, col, row, _encode(canvas, self.fmt), h)
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


def _sidecar(
    name: str,
    layout: PyramidLayout,
    fmt: Format,
    layer: str,
    meta: PyramidMeta,
    built_at: str,
    updated_at: str,
) -> dict[str, Any]:
    return {
        "version": SIDECAR_VERSION,
        "name": name,
        "title": meta.title or meta.map.name,
        "dzi": f"{name}.dzi",
        "tiles": f"{name}_files",
        "format": fmt,
        "tile_size": layout.tile,
        "overlap": 0,
        "quadrant_px": layout.tile,
        "layer": layer,
        "grid": {
            "x0": layout.x0,
            "y0": layout.y0,
            "x1": layout.x1,
            "y1": layout.y1,
            "width": layout.nx,
            "height": layout.ny,
        },
        "image": {"width": layout.width, "height": layout.height},
        "max_level": layout.max_level,
        "levels": [
            {
                "level": li.level,
                "width": li.width,
                "height": li.height,
                "cols": li.cols,
                "rows": li.rows,
                "tiles": li.tiles,
            }
            for li in layout.levels()
        ],
        "map": meta.map.model_dump(mode="json"),
        "attribution": meta.attribution,
        "dagster": {
            "url": meta.dagster_url,
            "asset": meta.dagster_asset or layer,
            "partition_key_template": meta.partition_key_template,
        },
        "built_at": built_at,
        "updated_at": updated_at,
    }


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _parse_meta(meta: dict[str, Any] | PyramidMeta | None) -> PyramidMeta:
    if isinstance(meta, PyramidMeta):
        return meta
    try:
        return PyramidMeta.model_validate(meta or {})
    except ValidationError as e:
        msgs = "; ".join(f"meta.{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise PyramidError(f"invalid pyramid meta: {msgs}") from None


def build_pyramid(
    store: TileStore,
    out_dir: str | os.PathLike[str],
    *,
    grid: tuple[int, int, int, int],
    layer: str = "generation",
    fmt: Format = "png",
    meta: dict[str, Any] | PyramidMeta | None = None,
    name: str | None = None,
    workers: int | None = None,
) -> PyramidInfo:
    """Build (or bring up to date) the DZI pyramid of ``layer``'s active tiles over the inclusive quadrant
    bbox ``grid = (x0, y0, x1, y1)``. Tiles whose inputs did not change since the last build are skipped,
    so re-running after a crash resumes. ``name`` defaults to the map name from ``meta["map"]``."""
    t0 = time.perf_counter()
    if fmt not in ("png", "webp"):
        raise PyramidError(f"fmt must be 'png' or 'webp' (both lossless), got {fmt!r}")
    m = _parse_meta(meta)
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
    files = out / f"{name}_files"
    with _locked(out, name):
        _ensure_dirs(files, layout)
        _remove_leftovers(files, fmt)
        shas = {(v.x, v.y): v.sha256 for v in store.list_active(layer, bbox=(x0, y0, x1, y1))}
        manifest = _Manifest(out / f".{name}.manifest.sqlite")
        try:
            manifest.preload()
            b = _Builder(
                store, out, name, layout, fmt, layer, manifest, lambda x, y: shas.get((x, y)), lambda *_: True
            )
            b.run(_workers(workers))
            _prune(manifest, files, layout, fmt)
        finally:
            manifest.close()
        now = _now()
        _atomic_write(out / f"{name}.dzi", _dzi_xml(layout, fmt).encode(), fsync=True)
        side = _sidecar(name, layout, fmt, layer, m, now, now)
        _atomic_write(out / f"{name}.json", json.dumps(side, indent=2).encode(), fsync=True)
    stats = BuildStats(
        sum(b.written.values()), b.skipped, dict(sorted(b.written.items())), time.perf_counter() - t0
    )
    return PyramidInfo(
        out, name, fmt, layout, out / f"{name}.dzi", out / f"{name}.json", stats, layout.levels()
    )


def _prune(manifest: _Manifest, files: Path, layout: PyramidLayout, fmt: str) -> None:
    """Drop tiles left over from a previous build over a different grid (never requested by viewers)."""
    stale = [k for k in manifest.all_keys() if not layout.contains(*k)]
    for lv, c, r in stale:
        with contextlib.suppress(FileNotFoundError):
            (files / str(lv) / f"{c}_{r}.{fmt}").unlink()
    manifest.delete_many(stale)
    for lvdir in files.iterdir():
        if lvdir.is_dir() and lvdir.name.isdigit() and int(lvdir.name) > layout.max_level:
            with contextlib.suppress(OSError):  # only when empty: never delete files we did not write
                lvdir.rmdir()


def find_pyramid(out_dir: str | os.PathLike[str], name: str | None = None) -> str:
    """The pyramid name in ``out_dir`` (the one ``<name>.dzi`` with a sidecar), or ``PyramidError``."""
    out = Path(out_dir)
    if name is not None:
        if not (out / f"{name}.json").exists():
            raise PyramidError(f"no pyramid {name!r} in {out} ({name}.json missing); run build_pyramid first")
        return name
    names = sorted(p.stem for p in out.glob("*.dzi") if (out / f"{p.stem}.json").exists())
    if not names:
        raise PyramidError(
            f"{out} holds no DZI pyramid (no <name>.dzi + <name>.json); run build_pyramid first"
        )
    if len(names) > 1:
        raise PyramidError(f"{out} holds several pyramids {names}; pass name=")
    return names[0]


def read_sidecar(out_dir: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
    """The JSON sidecar of a built pyramid."""
    name = find_pyramid(out_dir, name)
    path = Path(out_dir) / f"{name}.json"
    try:
        side = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise PyramidError(f"sidecar {path} is not valid JSON ({e}); rebuild the pyramid") from e
    if side.get("version") != SIDECAR_VERSION:
        raise PyramidError(
            f"sidecar {path} has version {side.get('version')!r}, expected {SIDECAR_VERSION}; rebuild"
        )
    return side


def layout_from_sidecar(side: dict[str, Any]) -> PyramidLayout:
    g = side["grid"]
    return PyramidLayout(g["x0"], g["y0"], g["x1"], g["y1"], tile=side["tile_size"])


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
        if layout.x0 <= x <= layout.x1 and layout.y0 <= y <= layout.y1:
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
    files = out / f"{name}_files"
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

            manifest = _Manifest(out / f".{name}.manifest.sqlite")
            try:
                b = _Builder(store, out, name, layout, fmt, layer, manifest, sha_of, lambda *k: k in marked)
                b.run(1 if len(inside) < 16 else _workers(workers))
            finally:
                manifest.close()
            side["updated_at"] = _now()
            _atomic_write(out / f"{name}.json", json.dumps(side, indent=2).encode(), fsync=True)
            written, skipped = dict(sorted(b.written.items())), b.skipped
    return BuildStats(sum(written.values()), skipped, written, time.perf_counter() - t0, ignored)
