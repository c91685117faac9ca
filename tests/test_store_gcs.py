"""GCSTileStore against a real gcp-storage-emulator HTTP server on 127.0.0.1 (no internet).

The backend-independent contract (roundtrip, versions, bad PNGs, atomicity, concurrency, crashes) runs
over both stores in test_store_local.py; this module holds the emulator harness and GCS-only behaviour.

gcp-storage-emulator ignores ``ifGenerationMatch``; real GCS answers 412 when the precondition fails.
The harness adds exactly that check in front of the emulator's upload handler (the emulator serves one
request at a time, so check-then-write is atomic, as on GCS). ``test_emulator_enforces_preconditions``
proves the check is live, so the concurrency tests exercise real 412 races.
"""

from __future__ import annotations

import http.server
import io
import json
import threading
import uuid
from functools import partial
from http import HTTPStatus
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import numpy as np
import pytest
from gcp_storage_emulator import server as emu_server
from gcp_storage_emulator.exceptions import NotFound as EmuNotFound
from gcp_storage_emulator.handlers import buckets as emu_buckets
from gcp_storage_emulator.storage import Storage as EmuStorage
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from PIL import Image

from isonyc_dagster.store import open_store
from isonyc_dagster.store.base import StoreError, TileWrite, Water
from isonyc_dagster.store.gcs import GCSTileStore, parse_gs_uri


def make_png(value: int, size: tuple[int, int] = (512, 512), mode: str = "RGB") -> bytes:
    """A small, fast-to-encode PNG whose pixels (and so sha256) are unique per ``value``."""
    w, h = size
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = value % 251
    a[..., 1] = (value // 251) % 251
    a[: h // 4, : w // 4, 2] = 200  # a pattern, so images are not flat
    a[h // 2, :, :] = (value * 7) % 256
    buf = io.BytesIO()
    Image.fromarray(a).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


class _PreconditionHandler(emu_server.RequestHandler):
    """The emulator's handler plus GCS's ``ifGenerationMatch`` check on object uploads."""

    def do_POST(self) -> None:  # noqa: N802 - http.server naming
        url = urlparse(self.path)
        query = parse_qs(url.query)
        if (
            url.path.startswith("/upload/storage/v1/b/")
            and "ifGenerationMatch" in query
            and "upload_id" not in query
        ):
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            self.rfile = io.BytesIO(raw)  # replayed to the emulator below
            bucket = url.path.split("/")[5]
            name = self._object_name(query, raw)
            want = int(query["ifGenerationMatch"][0])
            try:
                have = int(self.storage.get_file_obj(bucket, name)["generation"])
            except EmuNotFound:
                have = 0
            if have != want:
                body = json.dumps(
                    {
                        "error": {
                            "code": 412,
                            "message": "At least one of the pre-conditions you specified did not hold.",
                            "errors": [{"reason": "conditionNotMet", "message": "Precondition Failed"}],
                        }
                    }
                ).encode()
                self.send_response(HTTPStatus.PRECONDITION_FAILED)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                self.rfile = io.BytesIO(raw)
                return
            self.rfile = io.BytesIO(raw)
        super().do_POST()

    def _object_name(self, query: dict[str, list[str]], raw: bytes) -> str:
        if "name" in query:
            return query["name"][0]
        shim = type("Shim", (), {"headers": self.headers, "rfile": io.BytesIO(raw)})()
        data = emu_server._read_data(shim, query)
        return data["meta"]["name"] if "meta" in data else data["name"]


class _Server(http.server.HTTPServer):
    request_queue_size = 256  # concurrent clients queue instead of having SYNs dropped


class GcsEmulator:
    """A gcp-storage-emulator on a free 127.0.0.1 port, in a thread, in memory."""

    def __init__(self) -> None:
        self.storage = EmuStorage(use_memory_fs=True)
        self.httpd = _Server(("127.0.0.1", 0), partial(_PreconditionHandler, self.storage))
        self.endpoint = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="gcs-emulator", daemon=True
        )
        self.thread.start()

    def new_bucket(self) -> str:
        name = f"tiles-{uuid.uuid4().hex[:12]}"
        emu_buckets.create_bucket(name, self.storage)
        return name

    def client(self) -> storage.Client:
        return storage.Client(
            project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": self.endpoint}
        )

    def object_names(self, bucket: str, prefix: str = "") -> list[str]:
        return sorted(n for n in self.storage.objects.get(bucket, {}) if n.startswith(prefix))

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def gcs_emulator():
    emu = GcsEmulator()
    yield emu
    emu.stop()


def make_gcs_store(emu: GcsEmulator, cache_dir: Path, bucket: str | None = None, **kw) -> GCSTileStore:
    return GCSTileStore(
        bucket or emu.new_bucket(), "maps/nyc", client=emu.client(), cache_dir=cache_dir, **kw
    )


# --- harness ---------------------------------------------------------------------------------------
def test_emulator_enforces_preconditions(gcs_emulator):
    b = gcs_emulator.client().bucket(gcs_emulator.new_bucket())
    b.blob("a/b.json").upload_from_string(b"1", if_generation_match=0)
    with pytest.raises(gexc.PreconditionFailed):
        b.blob("a/b.json").upload_from_string(b"2", if_generation_match=0)
    assert b.blob("a/b.json").download_as_bytes() == b"1"
    gen = b.get_blob("a/b.json").generation
    b.blob("a/b.json").upload_from_string(b"3", if_generation_match=gen)
    assert b.blob("a/b.json").download_as_bytes() == b"3"


# --- GCS-specific behaviour --------------------------------------------------------------------------
def test_layout_and_independent_reader(gcs_emulator, tmp_path):
    s = make_gcs_store(gcs_emulator, tmp_path / "a")
    v = s.put_tiles(
        [TileWrite("gen", 0, 0, make_png(1), {"seed": 1}), TileWrite("gen", 1, 0, make_png(2), {})]
    )
    s.set_flags(0, 0, water=Water.ALL_WATER)
    names = gcs_emulator.object_names(s.bucket_name)
    sha = v[0].sha256
    assert f"maps/nyc/blobs/{sha[:2]}/{sha[2:4]}/{sha}.png" in names
    # One log object per transaction: the two-tile put is ONE entry, the flags another.
    assert [n for n in names if "/log/" in n] == [
        "maps/nyc/log/000000000001.json",
        "maps/nyc/log/000000000002.json",
    ]
    assert s.uri_for_blob(sha) == f"gs://{s.bucket_name}/maps/nyc/blobs/{sha[:2]}/{sha[2:4]}/{sha}.png"

    # A second machine (own client, empty cache) sees exactly the same index by replaying the log.
    r = make_gcs_store(gcs_emulator, tmp_path / "b", bucket=s.bucket_name)
    assert r.active("gen", 0, 0) == v[0]
    assert r.get_tile("gen", 1, 0) == make_png(2)
    assert r.flags(0, 0).water is Water.ALL_WATER
    # ... and sees later writes by the first one on its next read (no staleness by default).
    s.put_tile("gen", 0, 0, make_png(3), {"seed": 2})
    assert r.active("gen", 0, 0).version == 2


def test_from_uri_with_emulator_env(gcs_emulator, tmp_path, monkeypatch):
    bucket = gcs_emulator.new_bucket()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator.endpoint)
    s = GCSTileStore.from_uri(f"gs://{bucket}/run1/", cache_dir=tmp_path / "c")
    assert (s.bucket_name, s.prefix, s.uri) == (bucket, "run1/", f"gs://{bucket}/run1")
    s.put_tile("render", 2, 3, make_png(5))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    via_open = open_store(f"gs://{bucket}/run1")  # default cache dir under $XDG_CACHE_HOME
    assert isinstance(via_open, GCSTileStore)
    assert via_open.get_tile("render", 2, 3) == make_png(5)
    assert str(via_open.cache_dir).startswith(str(tmp_path / "xdg"))


def test_bad_locations(gcs_emulator, tmp_path):
    for uri in ("s3://bucket/x", "gs://", "gs://UPPER/x", "gs://b/x"):
        with pytest.raises(StoreError):
            GCSTileStore.from_uri(uri, client=gcs_emulator.client(), cache_dir=tmp_path / "x")
    assert parse_gs_uri("gs://bkt/a/b") == ("bkt", "a/b")
    s = GCSTileStore("no-such-bucket", "p", client=gcs_emulator.client(), cache_dir=tmp_path / "nb")
    with pytest.raises(StoreError, match="does the bucket exist"):
        s.put_tile("gen", 0, 0, make_png(1))
    make_gcs_store(gcs_emulator, tmp_path / "shared")
    with pytest.raises(StoreError, match="separate cache_dir"):
        make_gcs_store(gcs_emulator, tmp_path / "shared")  # another bucket, same replica dir


def test_racing_instances_lose_and_retry(gcs_emulator, tmp_path):
    """Three "machines" (own client, own replica) write the same tiles at once: real 412 races, no loss."""
    bucket = gcs_emulator.new_bucket()
    stores = [make_gcs_store(gcs_emulator, tmp_path / f"m{i}", bucket=bucket) for i in range(3)]
    lost = []
    for s in stores:
        real = s._create

        def create(name, data, content_type, _real=real):
            ok = _real(name, data, content_type)
            if "/log/" in name and not ok:
                lost.append(name)
            return ok

        s._create = create
    keys = [(0, 0), (1, 0)]

    def work(m: int) -> None:
        for i in range(12):
            stores[m].put_tiles(
                [TileWrite("gen", x, y, make_png(1000 * m + 10 * i + x), {"m": m}) for x, y in keys]
            )

    threads = [threading.Thread(target=work, args=(m,)) for m in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert lost, "no writer ever lost a race: the test did not exercise the 412 path"
    assert gcs_emulator.object_names(bucket, "maps/nyc/log/")[-1] == "maps/nyc/log/000000000036.json"
    for x, y in keys:
        vs = stores[0].versions("gen", x, y)
        assert [v.version for v in vs] == list(range(1, 37)) and sum(v.active for v in vs) == 1
        assert {v.provenance["m"] for v in vs} == {0, 1, 2}
        # Every instance converges on the same history.
        assert stores[1].versions("gen", x, y) == vs == stores[2].versions("gen", x, y)


def test_lost_response_on_commit_is_not_a_double_commit(gcs_emulator, tmp_path):
    """The log upload lands but the client reports 412 (its retry hit our own object): no second entry."""
    s = make_gcs_store(gcs_emulator, tmp_path / "c")
    real_create = s._create
    fired = []

    def create(name, data, content_type):
        ok = real_create(name, data, content_type)
        if "/log/" in name and not fired:
            fired.append(name)
            return False
        return ok

    s._create = create
    v = s.put_tile("gen", 4, 4, make_png(9), {"k": 1})
    assert v.version == 1 and fired
    assert s.versions("gen", 4, 4) == [v]
    assert gcs_emulator.object_names(s.bucket_name, "maps/nyc/log/") == ["maps/nyc/log/000000000001.json"]


def test_checkpoint_lets_a_new_machine_skip_pruned_log(gcs_emulator, tmp_path):
    s = make_gcs_store(gcs_emulator, tmp_path / "w", checkpoint_every=5, keep_checkpoints=2)
    for i in range(12):
        s.put_tile("gen", i % 3, 0, make_png(100 + i), {"i": i})
    s.set_flags(1, 1, starred=True)  # seq 13
    ckpts = gcs_emulator.object_names(s.bucket_name, "maps/nyc/checkpoints/")
    assert ckpts == [
        "maps/nyc/checkpoints/000000000005.sqlite.gz",
        "maps/nyc/checkpoints/000000000010.sqlite.gz",
    ]
    # Compact the log: entries covered by the newest checkpoint may go. A reader must then use it.
    bucket = gcs_emulator.client().bucket(s.bucket_name)
    for seq in range(1, 11):
        bucket.blob(f"maps/nyc/log/{seq:012d}.json").delete()
    r = make_gcs_store(gcs_emulator, tmp_path / "r", bucket=s.bucket_name, checkpoint_every=5)
    for x in range(3):
        assert r.versions("gen", x, 0) == s.versions("gen", x, 0)
    assert r.flags(1, 1).starred
    assert r.refresh() == 13


def test_stale_replica_of_a_recreated_bucket_is_rebuilt(gcs_emulator, tmp_path):
    s = make_gcs_store(gcs_emulator, tmp_path / "c")
    bucket = s.bucket_name
    s.put_tile("gen", 0, 0, make_png(1))
    s.put_tile("gen", 0, 0, make_png(2))
    s.close()
    # The bucket is emptied and someone else writes a different history.
    b = gcs_emulator.client().bucket(bucket)
    for name in gcs_emulator.object_names(bucket):
        b.blob(name).delete()
    other = make_gcs_store(gcs_emulator, tmp_path / "other", bucket=bucket)
    other.put_tile("gen", 0, 0, make_png(7))
    other.put_tile("gen", 5, 5, make_png(8))
    again = make_gcs_store(gcs_emulator, tmp_path / "c", bucket=bucket)  # old cache dir
    assert [v.sha256 for v in again.versions("gen", 0, 0)] == [other.active("gen", 0, 0).sha256]
    assert again.get_tile("gen", 5, 5) == make_png(8)
