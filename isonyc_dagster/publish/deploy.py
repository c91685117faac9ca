"""Deploy a built map to a directory, a GCS bucket or an S3-compatible bucket: only what changed, resumably.

    isonyc publish --to DEST [--dry-run]      DEST: a directory, gs://bucket/prefix or s3://bucket/prefix

What goes up (keys relative to DEST):

    <name>_files/<level>/<col>_<row>.<fmt>   DZI tiles; changed when their pyramid-manifest input hash changed
    <name>.<sha16>.pmtiles                    the PMTiles archive, named by its content (immutable)
    <name>.dzi, <name>.json                   descriptor and sidecar (configured for DEST: no local Dagster links)
    index.html, pmtiles.html, viewer files    the OpenSeadragon page over the DZI tree, and over the PMTiles archive
    publish-manifest.json                     key → change token of everything above: the remote publish state

A tile is uploaded when its token (the input hash recorded in the pyramid manifest: a Merkle hash of the quadrants
under it) differs from the one recorded for DEST, so after one quadrant changed only the tiles above it go up.
Every finished upload is recorded at once in a local state file beside the pyramid (``.<name>.publish-<id>.sqlite``),
so a publish killed mid-way continues where it stopped; the remote manifest, written last, lets another machine
continue from the remote state. Descriptors go up after the tiles and the page last, so a viewer never points at
something missing. Credentials come from the environment only (ADC / ``STORAGE_EMULATOR_HOST`` for GCS, the AWS
variables for S3) and are never logged or recorded.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import mimetypes
import os
import re
import sqlite3
import tempfile
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.publish.clip import PublishError
from isonyc_dagster.publish.layout import PyramidError, layers_index_path
from isonyc_dagster.publish.manifest import TileManifest, read_sidecar
from isonyc_dagster.publish.pmtiles import export_pmtiles
from isonyc_dagster.publish.viewer import VIEWER_FILES, ViewerError, find_openseadragon

__all__ = ["DeployPlan", "DeployStats", "Target", "deploy", "open_target", "plan_deploy"]

MANIFEST_KEY = "publish-manifest.json"
ARCHIVE_KEY = "#archive"  # a manifest entry, not an object: the archive the published sidecar names
S3_ENDPOINT_ENV = "ISONYC_S3_ENDPOINT_URL"
PMTILES_ENV = "ISONYC_PMTILES_JS"
_PMTILES_JS = Path("node_modules/pmtiles/dist/pmtiles.js")
_HERE = Path(__file__).resolve().parent
_REPO = _HERE.parents[1]
_TILE_RE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)_files/(?P<level>\d+)/\d+_\d+\.(png|webp)$")
IMMUTABLE = "public, max-age=31536000, immutable"
_TYPES = {
    ".png": "image/png",
    ".webp": "image/webp",
    ".dzi": "application/xml",
    ".json": "application/json",
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".pmtiles": "application/vnd.pmtiles",
    ".txt": "text/plain; charset=utf-8",
}


class DeployError(PublishError):
    """The map cannot be deployed (no pyramid, bad destination, the destination refused a write)."""


def content_type(key: str) -> str:
    ext = os.path.splitext(key)[1].lower()
    return _TYPES.get(ext) or mimetypes.guess_type(key)[0] or "application/octet-stream"


# --------------------------------------------------------------------------------------------------
# destinations


class Target(Protocol):
    """Where a map is deployed: put, get and delete objects by key."""

    url: str

    def put(self, key: str, data: bytes, content_type: str, cache_control: str) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def delete(self, key: str) -> None: ...
    def headers(self, key: str) -> dict[str, str] | None: ...


class DirTarget:
    """A local directory (to serve with any static server); files written atomically."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise DeployError(f"publish destination {self.root} is a file; give a directory")

    def _path(self, key: str) -> Path:
        return self.root / key

    def put(self, key: str, data: bytes, content_type: str, cache_control: str) -> None:
        atomic_write(self._path(key), data, fsync=False)

    def get(self, key: str) -> bytes | None:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def headers(self, key: str) -> dict[str, str] | None:
        return {"Content-Type": content_type(key)} if self._path(key).is_file() else None


class GcsTarget:
    """A GCS bucket prefix (credentials: Application Default Credentials, or ``STORAGE_EMULATOR_HOST``)."""

    def __init__(self, uri: str, client: Any = None) -> None:
        bucket, _, prefix = uri[len("gs://") :].partition("/")
        if not bucket:
            raise DeployError(f"publish destination {uri!r} has no bucket; use gs://bucket/prefix")
        self.url, self.prefix = uri.rstrip("/"), prefix.strip("/")
        if client is None:
            from google.cloud import storage

            try:
                client = storage.Client()
            except Exception as e:  # google.auth raises several unrelated types for "no credentials"
                raise DeployError(
                    f"cannot create a GCS client for {uri} ({type(e).__name__}); configure Application Default "
                    "Credentials (GOOGLE_APPLICATION_CREDENTIALS or gcloud auth) or STORAGE_EMULATOR_HOST"
                ) from None
        self._bucket = client.bucket(bucket)

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str, cache_control: str) -> None:
        blob = self._bucket.blob(self._name(key))
        blob.cache_control = cache_control
        blob.upload_from_string(data, content_type=content_type)

    def get(self, key: str) -> bytes | None:
        from google.api_core import exceptions as gexc

        try:
            data: bytes = self._bucket.blob(self._name(key)).download_as_bytes()
            return data
        except gexc.NotFound:
            return None

    def delete(self, key: str) -> None:
        from google.api_core import exceptions as gexc

        with contextlib.suppress(gexc.NotFound):
            self._bucket.blob(self._name(key)).delete()

    def headers(self, key: str) -> dict[str, str] | None:
        blob = self._bucket.get_blob(self._name(key))
        if blob is None:
            return None
        return {"Content-Type": blob.content_type or "", "Cache-Control": blob.cache_control or ""}


class S3Target:
    """An S3-compatible bucket prefix (credentials: the AWS environment variables or profile; endpoint from
    ``publish.s3_endpoint_url`` or ``$ISONYC_S3_ENDPOINT_URL``)."""

    def __init__(self, uri: str, client: Any = None, endpoint_url: str | None = None) -> None:
        bucket, _, prefix = uri[len("s3://") :].partition("/")
        if not bucket:
            raise DeployError(f"publish destination {uri!r} has no bucket; use s3://bucket/prefix")
        self.url, self.bucket, self.prefix = uri.rstrip("/"), bucket, prefix.strip("/")
        if client is None:
            try:
                import boto3
            except ImportError:
                raise DeployError(
                    "publishing to s3:// needs boto3: pip install 'isonyc-dagster[s3]'"
                ) from None
            client = boto3.client("s3", endpoint_url=endpoint_url or os.environ.get(S3_ENDPOINT_ENV) or None)
        self._s3 = client

    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str, cache_control: str) -> None:
        self._s3.put_object(
            Bucket=self.bucket,
            Key=self._name(key),
            Body=data,
            ContentType=content_type,
            CacheControl=cache_control,
        )

    def _missing(self, e: Exception) -> bool:
        code = str(getattr(e, "response", {}).get("Error", {}).get("Code", ""))
        return code in ("NoSuchKey", "404", "NotFound")

    def get(self, key: str) -> bytes | None:
        try:
            obj = self._s3.get_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as e:  # botocore.exceptions.ClientError; botocore is optional
            if self._missing(e):
                return None
            raise
        data: bytes = obj["Body"].read()
        return data

    def delete(self, key: str) -> None:
        self._s3.delete_object(Bucket=self.bucket, Key=self._name(key))

    def headers(self, key: str) -> dict[str, str] | None:
        try:
            h = self._s3.head_object(Bucket=self.bucket, Key=self._name(key))
        except Exception as e:
            if self._missing(e):
                return None
            raise
        return {"Content-Type": h.get("ContentType", ""), "Cache-Control": h.get("CacheControl", "")}


def open_target(
    dest: str, *, gcs_client: Any = None, s3_client: Any = None, s3_endpoint_url: str | None = None
) -> Target:
    """The destination of ``dest``: ``gs://…``, ``s3://…`` or a directory path."""
    if not isinstance(dest, str) or not dest.strip():
        raise DeployError(
            "publish destination is empty; give a directory, gs://bucket/prefix or s3://bucket/prefix"
        )
    if dest.startswith("gs://"):
        return GcsTarget(dest, gcs_client)
    if dest.startswith("s3://"):
        return S3Target(dest, s3_client, s3_endpoint_url)
    if "://" in dest:
        raise DeployError(
            f"publish destination {dest!r}: unsupported scheme; use a directory, gs:// or s3://"
        )
    return DirTarget(dest)


# --------------------------------------------------------------------------------------------------
# what to upload


@dataclass(frozen=True, slots=True)
class Item:
    """One object to deploy: its key, change token, how to read its bytes, and its headers."""

    key: str
    token: str
    read: Callable[[], bytes]
    cache_control: str

    @property
    def tile_level(self) -> int | None:
        m = _TILE_RE.match(self.key)
        return int(m["level"]) if m else None


@dataclass
class DeployPlan:
    """What a publish would do: uploads in order, and stale keys to delete afterwards."""

    target: str
    uploads: list[Item]
    deletes: list[str]
    files: dict[str, str]  # the full new remote manifest: key → token
    skipped: int
    name: str = ""  # the map; its layer pyramids' tiles are counted apart

    @property
    def publish_id(self) -> str:
        """Identifies the published state: the hash of every key and token."""
        return _sha(json.dumps(self.files, sort_keys=True).encode())[:32]

    def tiles_per_level(self, pyramid: str | None = None) -> dict[int, int]:
        """Tiles to upload per level of the map (or of the layer pyramid ``pyramid``)."""
        want = pyramid or self.name
        out: dict[int, int] = {}
        for it in self.uploads:
            m = _TILE_RE.match(it.key)
            if m and (not want or m["name"] == want):
                lv = int(m["level"])
                out[lv] = out.get(lv, 0) + 1
        return dict(sorted(out.items()))

    def summary(self) -> str:
        tiles = sum(it.tile_level is not None for it in self.uploads)
        return (
            f"{len(self.uploads)} to upload ({tiles} tiles, {len(self.uploads) - tiles} other files), "
            f"{self.skipped} unchanged, {len(self.deletes)} to delete"
        )


@dataclass(frozen=True)
class DeployStats:
    """What a publish did."""

    target: str
    uploaded: int
    uploaded_tiles_per_level: dict[int, int]
    skipped: int
    deleted: int
    bytes: int
    seconds: float
    keys: list[str] = field(default_factory=list)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _bytes_token(data: bytes) -> tuple[str, Callable[[], bytes]]:
    """(token, reader) of bytes already in memory."""
    return _sha(data), lambda: data


def _layer_pyramids(src: Path, name: str) -> list[str]:
    """The layer pyramids built beside map ``name`` (``<name>_<layer>.dzi`` with a sidecar and a manifest)."""
    return sorted(
        p.stem
        for p in src.glob(f"{name}_*.dzi")
        if (src / f"{p.stem}.json").is_file() and (src / f".{p.stem}.manifest.sqlite").is_file()
    )


def find_pmtiles_js() -> Path:
    """The browser build of the ``pmtiles`` npm package (``npm ci`` installs it), or ``$ISONYC_PMTILES_JS``."""
    tried = [Path(os.environ[PMTILES_ENV])] if os.environ.get(PMTILES_ENV) else []
    tried += [_REPO / _PMTILES_JS, Path.cwd() / _PMTILES_JS]
    for p in tried:
        if p.is_file():
            return p
    raise ViewerError(
        "pmtiles.js not found (looked in " + ", ".join(map(str, tried)) + f"); run `npm ci` in {_REPO}"
    )


def _deployed_sidecar(side: dict[str, Any], archive: str | None, dagster_url: str | None) -> bytes:
    """The sidecar as the deployed viewer needs it: lineage links only to a Dagster UI the public can reach."""
    out = dict(side)
    out["dagster"] = {**side.get("dagster", {}), "url": dagster_url}
    out["pmtiles"] = archive
    return json.dumps(out, indent=2).encode()


def _pmtiles_page(index: str) -> str:
    """index.html switched to the PMTiles archive (read with HTTP range requests by pmtiles.js)."""
    page = index.replace(' data-state="loading"', ' data-state="loading" data-source="pmtiles"', 1)
    scripts = '<script src="pmtiles/pmtiles.js"></script>\n  <script src="pmtiles-source.js"></script>\n  '
    return page.replace('<script src="viewer.js">', scripts + '<script src="viewer.js">', 1)


def _viewer_items(src: Path, short: str) -> list[Item]:
    """The viewer pages and their assets (the pyramid directory's installed viewer, plus the PMTiles page)."""
    missing = [f for f in VIEWER_FILES if not (src / f).is_file()]
    if missing:
        raise DeployError(
            f"the map in {src} has no viewer ({', '.join(missing)} missing); build it with `isonyc publish` (without --no-build) or the Dagster export_job"
        )
    find_openseadragon()  # the same OpenSeadragon the page was written with must exist for the PMTiles page
    items: list[Item] = []

    def file_item(key: str, path: Path) -> Item:
        data = path.read_bytes()
        return Item(key, _sha(data), lambda: data, short)

    for p in sorted((src / "openseadragon").rglob("*")):
        if p.is_file():
            items.append(file_item(p.relative_to(src).as_posix(), p))
    for f in VIEWER_FILES:  # the page's scripts and styles (index.html goes up last, below)
        if f != "index.html" and not f.startswith("openseadragon/"):
            items.append(file_item(f, src / f))
    items.append(file_item("pmtiles/pmtiles.js", find_pmtiles_js()))
    items.append(file_item("pmtiles-source.js", _HERE / "viewer" / "pmtiles-source.js"))
    index = (src / "index.html").read_bytes()
    pm = _pmtiles_page(index.decode()).encode()
    items.append(Item("pmtiles.html", _sha(pm), lambda: pm, short))
    items.append(Item("index.html", _sha(index), lambda: index, short))
    return items


def _tile_items(src: Path, name: str, fmt: str, tile_cache: str) -> Iterator[Item]:
    """Every pyramid tile, with the input hash the pyramid manifest recorded for the file on disk."""
    manifest = TileManifest.of(src, name)
    try:
        manifest.preload()
        keys = sorted(manifest.all_keys())
        for key in keys:
            rec = manifest.get(key)
            assert rec is not None
            lv, c, r = key
            rel = f"{name}_files/{lv}/{c}_{r}.{fmt}"
            path = src / rel
            try:
                st = os.stat(path)
            except FileNotFoundError:
                raise DeployError(
                    f"pyramid tile {path} is missing; rebuild the map (`isonyc publish` without --no-build, or the Dagster export_job)"
                ) from None
            if (st.st_mtime_ns, st.st_size, st.st_ino) != rec[1:]:
                raise DeployError(
                    f"pyramid tile {path} is not the one its manifest records (a build is running or died); "
                    "rebuild the map (`isonyc publish` builds it, or the Dagster export_job) and publish again"
                )
            yield Item(rel, rec[0], path.read_bytes, tile_cache)
    finally:
        manifest.close()


# --------------------------------------------------------------------------------------------------
# publish state: local (resumable) and remote (shared)


class _State:
    """key → token of what is known to be at the destination, committed after every upload."""

    def __init__(self, path: Path) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS files (key TEXT PRIMARY KEY, token TEXT NOT NULL)")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        self._lock = threading.Lock()

    def files(self) -> dict[str, str]:
        with self._lock:
            return dict(self._db.execute("SELECT key, token FROM files"))

    def meta(self, k: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT v FROM meta WHERE k=?", (k,)).fetchone()
            return row[0] if row else None

    def reset(self, files: dict[str, str], remote_id: str | None) -> None:
        with self._lock:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM files")
            self._db.executemany("INSERT INTO files VALUES (?, ?)", files.items())
            self._db.execute("INSERT OR REPLACE INTO meta VALUES ('remote_id', ?)", (remote_id or "",))
            self._db.execute("COMMIT")

    def set(self, key: str, token: str | None) -> None:
        with self._lock:
            if token is None:
                self._db.execute("DELETE FROM files WHERE key=?", (key,))
            else:
                self._db.execute("INSERT OR REPLACE INTO files VALUES (?, ?)", (key, token))

    def set_meta(self, k: str, v: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (k, v))

    def close(self) -> None:
        self._db.close()


def _state_path(src: Path, name: str, target: Target) -> Path:
    tid = hashlib.blake2b(target.url.encode(), digest_size=6).hexdigest()
    return src / f".{name}.publish-{tid}.sqlite"


def _known(target: Target, state: _State) -> dict[str, str]:
    """What the destination holds: the local record when it continues the remote manifest (it may be ahead of
    it after a killed publish), else the remote manifest (another machine published since)."""
    raw = target.get(MANIFEST_KEY)
    remote: dict[str, Any] = {}
    if raw is not None:
        try:
            remote = json.loads(raw)
        except json.JSONDecodeError:
            remote = {}  # unreadable: republish everything
    rid = remote.get("publish_id")
    if rid and state.meta("remote_id") == rid:
        return state.files()
    if rid is None and state.meta("remote_id") == "" and state.files():
        return state.files()  # a first publish that was killed before its manifest went up
    files = {str(k): str(v) for k, v in (remote.get("files") or {}).items()}
    state.reset(files, rid)
    return files


# --------------------------------------------------------------------------------------------------
# plan and run


def _pmtiles_item(src: Path, name: str, scratch: Path) -> Item:
    """The PMTiles archive of the pyramid, named by its content."""
    tmp = scratch / f"{name}.pmtiles"
    export_pmtiles(src, tmp, name=name)
    data = tmp.read_bytes()
    digest = _sha(data)
    return Item(f"{name}.{digest[:16]}.pmtiles", digest, lambda: data, IMMUTABLE)


def plan_deploy(
    src_dir: str | os.PathLike[str],
    target: Target,
    *,
    name: str | None = None,
    dagster_url: str | None = None,
    max_age_s: int = 60,
    tile_max_age_s: int = 3600,
    scratch: Path | None = None,
    state: _State | None = None,
) -> DeployPlan:
    """What publishing the map in ``src_dir`` to ``target`` would upload and delete (nothing is written remotely)."""
    src = Path(src_dir)
    try:
        side = read_sidecar(src, name)
    except PyramidError as e:
        raise DeployError(f"nothing to publish: {e}") from None
    name, fmt = side["name"], side["format"]
    short = f"public, max-age={max_age_s}"
    own_state = state is None
    st = state or _State(_state_path(src, name, target))
    try:
        known = _known(target, st)
    finally:
        if own_state:
            st.close()
    with tempfile.TemporaryDirectory(dir=src, prefix=".publish-") as tmp:
        pm = _pmtiles_item(src, name, scratch or Path(tmp))
    tile_cache = f"public, max-age={tile_max_age_s}"
    items = [*_tile_items(src, name, fmt, tile_cache), pm]
    sidecars = [Item(f"{name}.json", *_bytes_token(_deployed_sidecar(side, pm.key, dagster_url)), short)]
    for layer in _layer_pyramids(src, name):  # <map>_<layer>.dzi beside the map: the viewer's layer switcher
        lside = read_sidecar(src, layer)
        items.extend(_tile_items(src, layer, lside["format"], tile_cache))
        items.append(Item(f"{layer}.dzi", *_bytes_token((src / f"{layer}.dzi").read_bytes()), short))
        sidecars.append(
            Item(f"{layer}.json", *_bytes_token(_deployed_sidecar(lside, None, dagster_url)), short)
        )
    index = layers_index_path(src, name)  # which layer pyramids the viewer offers (written with them)
    if index.is_file():
        sidecars.append(Item(index.name, *_bytes_token(index.read_bytes()), short))
    items.append(Item(f"{name}.dzi", *_bytes_token((src / f"{name}.dzi").read_bytes()), short))
    viewer = _viewer_items(src, short)
    # The sidecars go up just before the pages: they name the archive and the grids the pages will open.
    items += [*viewer[:-2], *sidecars, *viewer[-2:]]
    files = {it.key: it.token for it in items}
    uploads = [it for it in items if known.get(it.key) != it.token]
    # Stale keys: tiles of an old grid, old archives. The archive the remote manifest named last stays (viewers
    # may still hold its name for max_age) and stays listed, so that the next publish deletes it.
    prev = known.get(ARCHIVE_KEY)
    deletes = sorted(k for k in known if k not in files and k not in (MANIFEST_KEY, ARCHIVE_KEY, prev))
    if prev and prev != pm.key and prev in known:
        files[prev] = known[prev]
    files[ARCHIVE_KEY] = pm.key  # which archive the published sidecar names
    return DeployPlan(target.url, uploads, deletes, files, len(items) - len(uploads), name)


def deploy(
    src_dir: str | os.PathLike[str],
    dest: str | Target,
    *,
    name: str | None = None,
    dry_run: bool = False,
    dagster_url: str | None = None,
    max_age_s: int = 60,
    tile_max_age_s: int = 3600,
    workers: int = 8,
    s3_endpoint_url: str | None = None,
    on_upload: Callable[[str], None] | None = None,
) -> tuple[DeployPlan, DeployStats | None]:
    """Publish the built map in ``src_dir`` to ``dest``; with ``dry_run`` only plan. Returns the plan and what
    was done. ``on_upload(key)`` is called after each recorded upload (progress; tests kill a publish there)."""
    import time

    t0 = time.perf_counter()
    target = dest if not isinstance(dest, str) else open_target(dest, s3_endpoint_url=s3_endpoint_url)
    src = Path(src_dir)
    try:
        side_name = read_sidecar(src, name)["name"]
    except PyramidError as e:
        raise DeployError(f"nothing to publish: {e}") from None
    state_path = _state_path(src, side_name, target)
    lock = open(state_path.with_suffix(".lock"), "a+b")  # noqa: SIM115 - held for the whole publish
    fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # one publish per destination at a time
    state = _State(state_path)
    try:
        plan = plan_deploy(
            src,
            target,
            name=name,
            dagster_url=dagster_url,
            max_age_s=max_age_s,
            tile_max_age_s=tile_max_age_s,
            state=state,
        )
        if dry_run:
            return plan, None
        sent = _upload_all(plan, target, state, workers, on_upload)
        manifest = _remote_manifest(plan)
        target.put(MANIFEST_KEY, manifest, "application/json", f"public, max-age={max_age_s}")
        state.set(ARCHIVE_KEY, plan.files[ARCHIVE_KEY])
        state.set_meta("remote_id", json.loads(manifest)["publish_id"])
        for key in plan.deletes:
            target.delete(key)
            state.set(key, None)
    except IsonycError:
        raise
    except Exception as e:  # a destination's client error: one line naming the destination, never credentials
        raise DeployError(f"publish to {target.url} failed: {type(e).__name__}: {_one_line(e)}") from e
    finally:
        state.close()
        lock.close()  # releases the lock
    stats = DeployStats(
        target.url,
        len(plan.uploads),
        plan.tiles_per_level(),
        plan.skipped,
        len(plan.deletes),
        sent,
        time.perf_counter() - t0,
        [it.key for it in plan.uploads],
    )
    return plan, stats


def _one_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0][:300] if str(e).strip() else "no message"


def _remote_manifest(plan: DeployPlan) -> bytes:
    return json.dumps(
        {"version": 1, "publish_id": plan.publish_id, "files": plan.files}, sort_keys=True, indent=0
    ).encode()


def _upload_all(
    plan: DeployPlan, target: Target, state: _State, workers: int, on_upload: Callable[[str], None] | None
) -> int:
    """Tiles in parallel (any order), then the rest in order; each upload recorded as soon as it is done."""
    sent = 0
    lock = threading.Lock()

    def one(it: Item) -> None:
        nonlocal sent
        data = it.read()
        target.put(it.key, data, content_type(it.key), it.cache_control)
        state.set(it.key, it.token)
        with lock:
            sent += len(data)
        if on_upload is not None:
            on_upload(it.key)

    tiles = [it for it in plan.uploads if it.tile_level is not None]
    rest = [it for it in plan.uploads if it.tile_level is None]
    if tiles:
        with ThreadPoolExecutor(max(1, workers), thread_name_prefix="publish") as pool:
            for f in [pool.submit(one, it) for it in tiles]:
                f.result()
    for it in rest:
        one(it)
    return sent
