"""``isonyc publish``: deploy a built map to a directory, the GCS emulator and an S3 server (moto) on 127.0.0.1.

A second publish after one quadrant changed uploads exactly that quadrant's tile on every level (plus the new
PMTiles archive and the sidecar naming it); a publish that dies mid-way continues where it stopped; the deployed
viewer, served from 127.0.0.1, shows the map in headless Chromium over the DZI tree and over PMTiles."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.cli.main import main
from isonyc_dagster.publish.build import build_pyramid, update_pyramid
from isonyc_dagster.publish.deploy import (
    ARCHIVE_KEY,
    IMMUTABLE,
    MANIFEST_KEY,
    DeployError,
    DirTarget,
    GcsTarget,
    deploy,
    open_target,
)
from isonyc_dagster.publish.serve import start_server
from isonyc_dagster.publish.viewer import write_viewer
from isonyc_dagster.store.local import LocalTileStore
from tests.test_pyramid import fill_store, quadrant_rgb
from tests.test_store_gcs import GcsEmulator
from tests.test_viewer_browser import CHROMIUM, osd_or_skip

GRID = (0, 0, 3, 2)  # 4 × 3 quadrants → 12 levels (0…11)
LEVELS = 12
KEYS = [(x, y) for y in range(3) for x in range(4)]
CHANGED = (2, 1)


def _site(root: Path) -> tuple[LocalTileStore, Path]:
    osd_or_skip()
    store = LocalTileStore(root / "store")
    fill_store(store, KEYS)
    out = root / "map"
    build_pyramid(store, out, grid=GRID, meta={"map": {"name": "nyc"}, "title": "Published"}, workers=1)
    write_viewer(out, "nyc")
    return store, out


def _change_one_quadrant(store: LocalTileStore, out: Path) -> None:
    from isonyc_dagster.images import png_bytes

    store.put_tile("generation", *CHANGED, png_bytes(255 - quadrant_rgb(*CHANGED)), {"test": "changed"})
    update_pyramid(store, out, [CHANGED])


@pytest.fixture
def site(tmp_path):
    store, out = _site(tmp_path)
    yield store, out
    store.close()


def _check_incremental(store, out, target) -> dict:
    """First publish uploads everything; after one quadrant changed, one tile per level goes up."""
    first_plan, first = deploy(out, target, name="nyc")
    assert first is not None
    tiles = sum(first.uploaded_tiles_per_level.values())
    assert tiles == len(list((out / "nyc_files").rglob("*.png")))
    assert first.uploaded_tiles_per_level[LEVELS - 1] == len(KEYS)
    assert target.get("index.html") is not None and target.get("pmtiles.html") is not None
    assert json.loads(target.get(MANIFEST_KEY))["files"] == first_plan.files

    _, again = deploy(out, target, name="nyc")
    assert again is not None and again.uploaded == 0 and again.deleted == 0

    _change_one_quadrant(store, out)
    dry, none = deploy(out, target, name="nyc", dry_run=True)
    assert none is None and dry.tiles_per_level() == dict.fromkeys(range(LEVELS), 1)
    plan, second = deploy(out, target, name="nyc")
    assert second is not None
    assert second.uploaded_tiles_per_level == dict.fromkeys(range(LEVELS), 1)
    others = sorted(k for k in second.keys if "_files/" not in k)
    archive = plan.files[ARCHIVE_KEY]
    assert others == sorted([archive, "nyc.json"])  # the new archive and the sidecar naming it; nothing else
    assert json.loads(target.get("nyc.json"))["pmtiles"] == archive
    first_archive = first_plan.files[ARCHIVE_KEY]
    assert second.deleted == 0 and target.get(first_archive) is not None  # viewers may still hold its name
    changed_tile = f"nyc_files/{LEVELS - 1}/{CHANGED[0]}_{CHANGED[1]}.png"
    assert changed_tile in second.keys and target.get(changed_tile) == (out / changed_tile).read_bytes()
    return {"first": first.uploaded, "second_per_level": second.uploaded_tiles_per_level, "others": others}


def test_publish_to_a_directory_uploads_only_what_changed(site, tmp_path):
    store, out = site
    dest = tmp_path / "site"
    counts = _check_incremental(store, out, DirTarget(dest))
    # The deployed directory is the map: every tile, the descriptors, both pages.
    for rel in (
        "nyc.dzi",
        "nyc.json",
        "index.html",
        "pmtiles.html",
        "pmtiles/pmtiles.js",
        "pmtiles-source.js",
    ):
        assert (dest / rel).is_file(), rel
    for p in (out / "nyc_files").rglob("*.png"):
        assert (dest / p.relative_to(out)).read_bytes() == p.read_bytes()
    assert not list(dest.glob(".*")), (
        "hidden pyramid files (manifest, lock, publish state) are never deployed"
    )
    print("publish counts (directory):", counts)


def test_publish_to_the_gcs_emulator_sets_types_and_cache_headers(site, monkeypatch):
    store, out = site
    emu = GcsEmulator()
    try:
        bucket = emu.new_bucket()
        # As in production: the client comes from the environment (here: the emulator, anonymous).
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", emu.endpoint)
        target = open_target(f"gs://{bucket}/maps/nyc")
        assert isinstance(target, GcsTarget)
        counts = _check_incremental(store, out, target)
        print("publish counts (GCS emulator):", counts)
        names = emu.object_names(bucket)
        assert all(n.startswith("maps/nyc/") for n in names)
        tile = target.headers("nyc_files/11/0_0.png")
        assert tile == {"Content-Type": "image/png", "Cache-Control": "public, max-age=3600"}
        archive = json.loads(target.get("nyc.json"))["pmtiles"]
        assert target.headers(archive)["Cache-Control"] == IMMUTABLE
        assert target.headers(archive)["Content-Type"] == "application/vnd.pmtiles"
        assert target.headers("nyc.dzi") == {
            "Content-Type": "application/xml",
            "Cache-Control": "public, max-age=60",
        }
        assert target.headers("index.html")["Content-Type"].startswith("text/html")
        assert target.headers(MANIFEST_KEY)["Cache-Control"] == "public, max-age=60"
    finally:
        emu.stop()


@pytest.fixture
def s3_server(monkeypatch):
    pytest.importorskip("boto3")
    moto_server = pytest.importorskip("moto.server")
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    # Credentials only from the environment, as in production (moto accepts any).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-do-not-log")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    yield f"http://{host}:{port}"
    server.stop()


def test_publish_to_s3_compatible_storage(site, s3_server, monkeypatch):
    import boto3

    store, out = site
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="maps")
    monkeypatch.setenv("ISONYC_S3_ENDPOINT_URL", s3_server)
    target = open_target("s3://maps/city")
    counts = _check_incremental(store, out, target)
    print("publish counts (S3/moto):", counts)
    assert target.headers("nyc_files/11/0_0.png")["Cache-Control"] == "public, max-age=3600"
    archive = json.loads(target.get("nyc.json"))["pmtiles"]
    assert target.headers(archive)["Cache-Control"] == IMMUTABLE


def test_a_killed_publish_continues_where_it_stopped(site, tmp_path):
    store, out = site
    dest = tmp_path / "site"
    done: list[str] = []

    class Killed(BaseException):  # like a KeyboardInterrupt: nothing catches it
        pass

    def die_after_ten(key: str) -> None:
        done.append(key)
        if len(done) == 10:
            raise Killed

    with pytest.raises(Killed):
        deploy(out, str(dest), name="nyc", workers=1, on_upload=die_after_ten)
    assert not (dest / MANIFEST_KEY).exists()  # the run died before its manifest
    plan, rest = deploy(out, str(dest), name="nyc")
    assert rest is not None
    assert set(rest.keys).isdisjoint(done) and len(rest.keys) + len(done) == len(plan.files) - 1
    for p in (out / "nyc_files").rglob("*.png"):
        assert (dest / p.relative_to(out)).read_bytes() == p.read_bytes()


def test_tiles_of_a_smaller_grid_are_deleted_after_the_pages_point_at_it(site, tmp_path):
    store, out = site
    dest = DirTarget(tmp_path / "site")
    deploy(out, dest, name="nyc")
    build_pyramid(
        store, out, grid=(0, 0, 1, 1), meta={"map": {"name": "nyc"}, "title": "Published"}, workers=1
    )
    plan, st = deploy(out, dest, name="nyc")
    assert st is not None and st.deleted > 0
    assert not (tmp_path / "site" / "nyc_files" / "11" / "3_2.png").exists()
    assert not (tmp_path / "site" / "nyc_files" / "11").exists() or not list(
        (tmp_path / "site" / "nyc_files" / "11").iterdir()
    )
    published = {
        p.relative_to(tmp_path / "site").as_posix() for p in (tmp_path / "site" / "nyc_files").rglob("*.png")
    }
    assert published == {p.relative_to(out).as_posix() for p in (out / "nyc_files").rglob("*.png")}


def test_errors_are_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default config's output_dir (data/map) is relative: an empty one here
    monkeypatch.delenv("ISONYC_CONFIG", raising=False)
    with pytest.raises(DeployError, match="unsupported scheme"):
        open_target("ftp://host/x")
    with pytest.raises(DeployError, match="nothing to publish"):
        deploy(tmp_path / "nomap", str(tmp_path / "dest"))
    assert main(["publish", "--to", str(tmp_path / "d"), "--no-build"]) == 2
    assert "isonyc publish: error: nothing to publish" in capsys.readouterr().err
    assert main(["publish", "--no-build"]) == 2
    assert "no destination" in capsys.readouterr().err


def test_cli_dry_run_lists_and_writes_nothing(site, tmp_path, capsys):
    _, out = site
    cfg = tmp_path / "p.toml"
    cfg.write_text(f'output_dir = "{out}"\n[publish]\nto = "{tmp_path / "dest"}"\n')
    assert main(["--config", str(cfg), "publish", "--dry-run", "--list"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["dry_run"] and report["tiles_per_level"][str(LEVELS - 1)] == len(KEYS)
    assert "index.html" in report["keys"] and not (tmp_path / "dest").exists()


# --- the deployed viewer in Chromium ----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--force-color-profile=srgb"])
        yield b
        b.close()


def _map_pixels(page) -> np.ndarray:
    page.evaluate(
        """async () => {
      const v = isonyc.viewer, item = v.world.getItemAt(0);
      await new Promise((done) => {
        const check = () => (item.getFullyLoaded() && !v.world.needsDraw() ? done() : setTimeout(check, 50));
        check();
      });
      await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    }"""
    )
    shot = page.locator("#map").screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))


def test_published_viewer_shows_the_map_over_dzi_and_over_pmtiles(site, tmp_path, browser):
    _, out = site
    dest = tmp_path / "site"
    deploy(out, str(dest), name="nyc")
    server = start_server(dest)
    shots = {}
    try:
        for page_name in ("index.html", "pmtiles.html"):
            page = browser.new_page(viewport={"width": 900, "height": 650}, device_scale_factor=1)
            requests: list[tuple[str, str | None]] = []
            page.on("request", lambda r, log=requests: log.append((r.url, r.headers.get("range"))))
            errors: list[str] = []
            page.on("pageerror", lambda e, log=errors: log.append(str(e)))
            page.goto(server.url + page_name)
            page.wait_for_selector("body[data-state=ready]", timeout=30_000)
            rgb = shots[page_name] = _map_pixels(page)
            notes = Path(os.environ.get("ISONYC_NOTES_DIR", "/tmp"))
            Image.fromarray(rgb).save(notes / f"published_{page_name}.png")
            assert not errors
            # The map is drawn: many distinct colours of the quadrants' checkers, not a blank canvas.
            assert rgb.std() > 20 and len(np.unique(rgb.reshape(-1, 3), axis=0)) > 50
            tile_requests = [u for u, _ in requests if "/nyc_files/" in u]
            if page_name == "pmtiles.html":
                ranged = [(u, r) for u, r in requests if u.endswith(".pmtiles")]
                assert ranged and all(r and r.startswith("bytes=") for _, r in ranged)
                assert not tile_requests  # every tile came out of the archive
            else:
                assert tile_requests
            page.close()
    finally:
        server.close()
    # Same picture either way (the archive's padded edge tiles are cropped back): outside the buttons and the
    # minimap, which OpenSeadragon draws from other levels, only 1-px tile seams may differ.
    a, b = shots["index.html"][150:, :700], shots["pmtiles.html"][150:, :700]
    assert (a == b).all(axis=2).mean() > 0.99


# --- the Dagster asset ------------------------------------------------------------------------------


def test_published_map_asset_deploys_downstream_of_the_pyramid(tmp_path):
    import dagster as dg

    from isonyc_dagster.defs.assets.publish import build_export_assets
    from isonyc_dagster.defs.resources import ProjectResource
    from tests.dagster_helpers import project_config

    osd_or_skip()
    site = tmp_path / "site"
    cfg = project_config(tmp_path, 0, 0, 1, 1, publish={"to": str(site)})
    store = LocalTileStore(cfg.store)
    fill_store(store, [(0, 0), (1, 0), (0, 1), (1, 1)])
    store.close()
    assets = build_export_assets()
    res = dg.materialize(
        assets,
        resources={"project": ProjectResource.for_config(cfg)},
        selection=["dzi_pyramid", "published_map"],
    )
    assert res.success
    mats = {m.asset_key.to_user_string(): m for m in res.get_asset_materialization_events()}
    meta = mats["published_map"].materialization.metadata
    assert meta["destination"].value == str(site) and meta["uploaded"].value > 0
    assert json.loads(meta["uploaded_tiles_per_level"].value)["10"] == 4
    assert (site / "index.html").is_file() and (site / "nyc_files" / "10" / "1_1.png").is_file()
    side = json.loads((site / "nyc.json").read_text())
    assert side["publish"]["clip"] is True and side["dagster"]["url"] is None  # no local UI links in public

    # No destination configured: the asset runs, deploys nothing and is not materialized.
    (tmp_path / "b").mkdir()
    cfg2 = project_config(tmp_path / "b", 0, 0, 1, 1)
    res2 = dg.materialize(
        assets, resources={"project": ProjectResource.for_config(cfg2)}, selection=["published_map"]
    )
    assert res2.success and not res2.get_asset_materialization_events()


def test_cli_builds_the_map_then_publishes_and_a_rerun_uploads_nothing(tmp_path, capsys):
    from tests.dagster_helpers import project_config

    osd_or_skip()
    cfg = project_config(tmp_path, 0, 0, 3, 2, publish={"to": str(tmp_path / "site")})
    store = LocalTileStore(cfg.store)
    fill_store(store, KEYS)
    store.close()
    path = tmp_path / "project.json"
    path.write_text(cfg.model_dump_json())
    assert main(["--config", str(path), "publish"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert (
        first["tiles_per_level"][str(LEVELS - 1)] == len(KEYS)
        and (tmp_path / "site" / "pmtiles.html").is_file()
    )
    assert main(["--config", str(path), "publish"]) == 0
    assert (
        json.loads(capsys.readouterr().out)["upload"] == 0
    )  # the map was current: not rebuilt, nothing sent


def test_layer_pyramids_beside_the_map_are_published_too(site, tmp_path):
    store, out = site
    fill_store(store, KEYS, layer="render")
    build_pyramid(store, out, grid=GRID, layer="render", meta={"map": {"name": "nyc"}}, name="nyc_render")
    plan, st = deploy(out, str(tmp_path / "site"), name="nyc")
    assert st is not None and plan.tiles_per_level("nyc_render")[LEVELS - 1] == len(KEYS)
    for rel in ("nyc_render.dzi", "nyc_render.json", "layers.js", f"nyc_render_files/{LEVELS - 1}/3_2.png"):
        assert (tmp_path / "site" / rel).is_file(), rel
    assert st.uploaded_tiles_per_level[LEVELS - 1] == len(KEYS)  # the map's own tiles, counted apart
