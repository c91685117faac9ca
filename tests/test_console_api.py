"""The console without a Dagster run: ``isonyc serve`` (token, serve-time Dagster URL, 127.0.0.1), token checks,
one-line refusals, and the bounds editor's JavaScript counts against the Python ``quadrants_for_bounds``/plan."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import shapely
from shapely.geometry import Polygon

from isonyc_dagster.cli.console import Console
from isonyc_dagster.generate.plan import LatticePlan
from isonyc_dagster.geo.bounds import BoundsError, quadrants_for_bounds
from isonyc_dagster.geo.config import MapConfig
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.publish.serve import start_server
from tests.dagster_helpers import project_config
from tests.test_viewer_browser import CHROMIUM
from tests.test_webserver import _free_port

REPO = Path(__file__).resolve().parents[1]
BOUNDS_JS = REPO / "isonyc_dagster" / "publish" / "viewer" / "bounds.js"
TOKEN = "unit-test-token"


@pytest.fixture
def project(tmp_path: Path):
    cfg = project_config(tmp_path, 0, 0, 2, 2)
    (tmp_path / "map").mkdir()
    # A sidecar as an export writes it, with the Dagster URL of export time.
    (tmp_path / "map" / "nyc.json").write_text(
        json.dumps({"name": "nyc", "dagster": {"url": "http://x:3000"}})
    )
    return cfg


def test_isonyc_serve_prints_a_token_uses_the_serve_time_dagster_url_and_guards_mutations(
    project, tmp_path: Path
) -> None:
    cfg_path = tmp_path / "project.json"
    cfg_path.write_text(project.model_dump_json())
    port, dport = _free_port(), _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "isonyc_dagster.cli", "--config", str(cfg_path), "serve"]
        + ["--port", str(port), "--dagster-url", f"http://127.0.0.1:{dport}"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "ISONYC_CONFIG"},
    )
    try:
        lines = [proc.stdout.readline() for _ in range(3)]
        assert lines[0].startswith("Serving ") and f"http://127.0.0.1:{port}/" in lines[0]
        token = re.search(r"Console token .*: (\S+)$", lines[1].strip()).group(1)
        assert len(token) >= 30 and lines[2].strip() == f"Dagster: http://127.0.0.1:{dport}"
        base = f"http://127.0.0.1:{port}/"
        for _ in range(50):
            try:
                side = httpx.get(base + "nyc.json").json()
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        assert side["dagster"]["url"] == f"http://127.0.0.1:{dport}"  # not the export's port 3000
        assert httpx.get(base + "api/info").json()["dagster_url"] == f"http://127.0.0.1:{dport}"
        flag = {"x": 1, "y": 1, "flag": "reference", "value": True}
        assert httpx.post(base + "api/flag", json=flag).status_code == 401
        assert (
            httpx.post(
                base + "api/flag", json=flag, headers={"Authorization": f"Bearer {token}x"}
            ).status_code
            == 401
        )
        ok = httpx.post(base + "api/flag", json=flag, headers={"Authorization": f"Bearer {token}"})
        assert ok.status_code == 200 and ok.json()["flags"]["reference"] is True
    finally:
        proc.terminate()
        _out, err = proc.communicate(timeout=30)
    assert token not in err  # the request log never shows the token


def test_refusals_are_one_line(project) -> None:
    console = Console(project, dagster_url="http://127.0.0.1:9", token=TOKEN)  # nothing listens on port 9
    with start_server(Path(project.output_dir), api=console) as server:
        url, auth = server.url, {"Authorization": f"Bearer {TOKEN}"}

        def post(path: str, **kw) -> tuple[int, str]:
            r = httpx.post(url + path, headers=auth, **kw)
            return r.status_code, r.json()["error"]

        assert post("api/action", json={"action": "explode"}) == (
            400,
            "action must be one of repair, revert, regenerate",
        )
        assert post("api/action", json={"action": "revert", "quadrants": ["1|1"]}) == (
            400,
            "revert takes one quadrant and the version to bring back",
        )
        assert post("api/action", json={"action": "repair", "quadrants": ["9|9"]}) == (
            400,
            "quadrant 9|9 is outside the bounds; pick a quadrant of the map",
        )
        assert post("api/action", json={"action": "repair", "quadrants": ["1,1"]})[1].startswith(
            "quadrant '1,1' is not a partition key X|Y"
        )
        status, msg = post("api/action", json={"action": "repair", "quadrants": ["1|1"]})
        assert status == 502 and msg.startswith("Dagster at http://127.0.0.1:9 did not answer")
        assert post("api/flag", content=b"[1]") == (400, "the request body must be a JSON object")
        assert post("api/import?x=0&y=0", content=b"not a png")[1].startswith("the upload is not a PNG")
        assert post("api/bounds", json={"polygon_px": [[0, 0], [1, 1]]})[1].startswith("polygon_px must be")
        r = httpx.get(url + "api/blob/xyz")
        assert r.status_code == 400 and r.json()["error"].startswith("a blob id is 64")
        assert httpx.get(url + "api/nothing").status_code == 404


def _python_count(g: MapGeometry, ring: list[list[float]]) -> tuple[list[tuple[int, int]], int]:
    lnglat = shapely.transform(
        shapely.segmentize(Polygon(ring), 32.0),
        lambda c: np.column_stack(g.pixel_to_lnglat(c[:, 0], c[:, 1])),
    )
    try:
        qs = quadrants_for_bounds(g, lnglat)
    except BoundsError:
        return [], 0
    return sorted(qs.keys), len(LatticePlan.from_quadrants(qs.keys))


def test_bounds_editor_counts_like_the_python_for_many_outlines() -> None:
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}")
    from playwright.sync_api import sync_playwright

    g = MapGeometry(MapConfig())
    rng = np.random.default_rng(7)
    rings = []
    for _ in range(12):  # star-shaped (never self-crossing) outlines of 3-9 vertices around random centres
        n = int(rng.integers(3, 10))
        cx, cy = rng.uniform(-3000, 3000, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = rng.uniform(200, 2500, n)
        rings.append(
            [
                [float(cx + r * np.cos(a)), float(cy + r * np.sin(a))]
                for a, r in zip(angles, radii, strict=True)
            ]
        )
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM))
        page = b.new_page()
        page.set_content("<html><body></body></html>")
        page.add_script_tag(content=BOUNDS_JS.read_text())
        compared = 0
        for ring in rings:
            if not Polygon(ring).is_valid:
                continue
            js = page.evaluate(f"window.isonycBounds.count({json.dumps(ring)}, {g.q})")
            keys, steps = _python_count(g, ring)
            compared += len(keys) > 0
            assert sorted(map(tuple, js["keys"])) == keys, ring
            assert js["steps"] == steps and js["quadrants"] == len(keys)
        b.close()
    assert compared >= 10  # outlines of 1-100 quadrants, not empty ones
