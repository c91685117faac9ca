"""The Socrata reader against a real HTTP server on 127.0.0.1 serving the real Socrata response file."""

from __future__ import annotations

import json
import logging
import time

import httpx
import numpy as np
import pyarrow.parquet as pq
import pytest
import shapely

from isonyc_dagster.geodata.socrata import (
    SocrataClient,
    SocrataError,
    SocrataQuery,
    fetch_table,
    read_socrata_buildings,
)
from tests.conftest import geodata_file
from tests.socrata_server import SocrataTestServer

RAW = "midtown_east_buildings_socrata_raw.geojson"
TOKEN = "test-app-token-9f3b2c"


@pytest.fixture
def window(geometry):
    """Ground window around all 643 footprints (their bbox is -73.9736..-73.9643, 40.7543..40.7615)."""
    e, n = geometry.lnglat_to_ground(np.array([-73.9740, -73.9638]), np.array([40.7540, 40.7618]))
    return shapely.box(e.min(), n.min(), e.max(), n.max())


def _raw_features() -> list[dict]:
    return json.loads(geodata_file(RAW).read_text())["features"]


def test_pages_retries_and_cache(geometry, window, tmp_path, caplog):
    feats = _raw_features()
    server = SocrataTestServer(geodata_file(RAW), failures={2: (429, {"Retry-After": "1"}), 4: (500, {})})
    with server, caplog.at_level(logging.INFO):
        t0 = time.monotonic()
        with SocrataClient(server.url, app_token=TOKEN, page_size=200, backoff_base_s=0.05) as client:
            fs = read_socrata_buildings(geometry, window, client=client, cache_dir=tmp_path)
        elapsed = time.monotonic() - t0
    reqs = server.requests
    # 643 rows in pages of 200 → offsets 0, 200, 400, 600 and an empty page at 643; one 429 and one 500
    # were retried at the same offset.
    assert [(r.status, r.params["$offset"], r.returned) for r in reqs] == [
        (200, "0", 200),
        (429, "200", 0),
        (200, "200", 200),
        (500, "400", 0),
        (200, "400", 200),
        (200, "600", 43),
        (200, "643", 0),
    ]
    assert all(r.params["$order"] == ":id" and r.params["$limit"] == "200" for r in reqs)
    assert all(r.params["$where"].startswith("within_box(the_geom, 40.76") for r in reqs)
    assert elapsed >= 1.0  # Retry-After: 1 was honoured
    assert all(r.app_token == TOKEN for r in reqs)
    assert TOKEN not in caplog.text  # the token is sent, never logged

    # every building arrived exactly once: 643 rows fetched, the placeholder skipped, heights in metres
    report = fs.reports[0]
    assert report.features_read == 643 and report.skipped_placeholders == 1
    assert len(fs.buildings) == 642
    src = {f["properties"]["doitt_id"]: f["properties"] for f in feats}
    assert sorted(b.id for b in fs.buildings) == sorted(
        k for k, p in src.items() if p["feature_code"] != "1003"
    )
    for b in fs.buildings:
        assert b.height_m == pytest.approx(float(src[b.id]["height_roof"]) * 0.3048, abs=1e-3)
    citi = next(b for b in fs.buildings if b.name == "Citigroup Center")
    assert citi.height_m == pytest.approx(277.67, abs=0.01)
    assert fs.attribution == ["Building footprints: NYC OTI (NYC Open Data)"]

    # the cache is GeoParquet: WKB geometry + geo metadata, string columns as Socrata sent them
    files = list(tmp_path.glob("5zhs-2jue-*.parquet"))
    assert len(files) == 1
    pf = pq.read_table(files[0])
    geo = json.loads(pf.schema.metadata[b"geo"])
    assert geo["primary_column"] == "geometry" and geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["geometry_types"] == ["MultiPolygon"]
    assert pf.num_rows == 643 and str(pf.schema.field("height_roof").type) == "string"
    assert not list(tmp_path.glob("*.tmp"))

    # server stopped: the second call is served from the cache, same result, no request
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/resource/5zhs-2jue.geojson", timeout=2)
    with SocrataClient(server.url, app_token=TOKEN, max_attempts=1) as client:
        again = read_socrata_buildings(geometry, window, client=client, cache_dir=tmp_path)
        assert client.requests == 0
    assert [(b.id, b.height_m) for b in again.buildings] == [(b.id, b.height_m) for b in fs.buildings]


def test_server_capping_limit_still_yields_every_row(geometry, window, tmp_path):
    """Paging advances by rows received, so a server that serves fewer rows than asked loses nothing."""
    server = SocrataTestServer(geodata_file(RAW), max_limit=150)
    with server, SocrataClient(server.url, page_size=1000) as client:
        fs = read_socrata_buildings(geometry, window, client=client, cache_dir=tmp_path)
    assert [r.returned for r in server.requests] == [150, 150, 150, 150, 43, 0]
    assert fs.reports[0].features_read == 643


def test_small_window_queries_only_its_box(geometry, tmp_path):
    e, n = geometry.lnglat_to_ground(-73.9690, 40.7580)
    window = shapely.box(float(e) - 60, float(n) - 60, float(e) + 60, float(n) + 60)
    with SocrataTestServer(geodata_file(RAW)) as server, SocrataClient(server.url) as client:
        fs = read_socrata_buildings(geometry, window, client=client, cache_dir=tmp_path)
    served = sum(r.returned for r in server.requests)
    assert 0 < served < 643
    # the exact window is applied after the lon/lat box query
    assert 0 < len(fs.buildings) <= served
    assert all(b.footprint.intersects(window) for b in fs.buildings)
    r = fs.reports[0]
    assert r.features_read == served
    assert r.outside_window + r.skipped_placeholders + len(fs.buildings) == served
    assert r.outside_window > 0


def test_persistent_failure_and_refusals_are_clear_errors(tmp_path):
    query = SocrataQuery(bbox=(-73.974, 40.754, -73.964, 40.762))
    always_503 = {i: (503, {}) for i in range(1, 10)}
    server = SocrataTestServer(geodata_file(RAW), failures=always_503)
    with (
        server,
        SocrataClient(server.url, max_attempts=3, backoff_base_s=0.01, backoff_max_s=0.02) as client,
        pytest.raises(SocrataError, match="kept failing.*after all retries"),
    ):
        fetch_table(query, client=client, cache_dir=tmp_path)
    assert len(server.requests) == 3
    assert not list(tmp_path.iterdir())  # nothing half-written

    server = SocrataTestServer(geodata_file(RAW), failures={1: (403, {})})
    with (
        server,
        SocrataClient(server.url, app_token=TOKEN) as client,
        pytest.raises(SocrataError, match=r"HTTP 403.*SOCRATA_APP_TOKEN") as exc,
    ):
        fetch_table(query, client=client, cache_dir=tmp_path)
    assert TOKEN not in str(exc.value)

    server = SocrataTestServer(geodata_file(RAW), dataset="other-id")
    with (
        server,
        SocrataClient(server.url) as client,
        pytest.raises(SocrataError, match="no dataset.*HTTP 404"),
    ):
        fetch_table(query, client=client, cache_dir=tmp_path)

    bad_order = SocrataQuery(bbox=query.bbox, order="no_such_field")
    server = SocrataTestServer(geodata_file(RAW))
    with (
        server,
        SocrataClient(server.url) as client,
        pytest.raises(SocrataError, match="HTTP 400.*No such column: no_such_field"),
    ):
        fetch_table(bad_order, client=client, cache_dir=tmp_path)


def test_token_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SOCRATA_APP_TOKEN", TOKEN)
    query = SocrataQuery(bbox=(-73.9700, 40.7570, -73.9690, 40.7580))
    with SocrataTestServer(geodata_file(RAW)) as server, SocrataClient(server.url) as client:
        assert TOKEN not in repr(client)
        fetch_table(query, client=client, cache_dir=tmp_path)
    assert {r.app_token for r in server.requests} == {TOKEN}


def test_bad_base_url():
    with pytest.raises(SocrataError, match="must start with http"):
        SocrataClient("data.cityofnewyork.us")
