"""The map as a console, end to end: a real dagster-webserver on a non-default port, the console served by
``publish.serve`` + ``cli.console`` over a generated 3×3-quadrant map, and the page in headless Chromium.

One module-scoped setup (the map is generated once, through the real Dagster machinery); the tests run in order
and share its state: a bad tile is planted, found in the map, traced to Dagster, repaired, reverted, imported.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from pathlib import Path

import dagster as dg
import httpx
import numpy as np
import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

from isonyc_dagster import layers
from isonyc_dagster.cli.console import Console
from isonyc_dagster.cli.publish import build_map
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.defs.driver import drive
from isonyc_dagster.generate.plan import LatticePlan
from isonyc_dagster.generate.repair import stale_steps
from isonyc_dagster.geo.bounds import quadrants_for_bounds
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project
from isonyc_dagster.publish.build import pyramid_staleness
from isonyc_dagster.publish.serve import start_server
from tests.dagster_helpers import project_config
from tests.test_viewer_browser import CHROMIUM, osd_or_skip
from tests.test_webserver import _free_port, _post, start_webserver

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TOKEN = "test-console-token-0123456789"
BAD = (2, 1)  # owned by bridges_v 0|0 on the 3×3 map
SHOTS = Path(os.environ.get("ISONYC_CONSOLE_SHOTS", "/tmp/isonyc_console_shots"))
VIEW = {"width": 1280, "height": 900}


def _instance(home: Path) -> dg.DagsterInstance:
    return dg.DagsterInstance.from_config(str(home))


def _start_webserver(cfg_path: Path, home: Path, port: int) -> subprocess.Popen:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(home),
        "DAGSTER_DISABLE_TELEMETRY": "1",
        "ISONYC_CONFIG": str(cfg_path),
    }
    return start_webserver(env, port)


def _wait_for_job(base: str, job: str, proc: subprocess.Popen) -> None:
    q = "{ repositoriesOrError { ... on RepositoryConnection { nodes { jobs { name } } } } }"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, "dagster-webserver exited"
        try:
            nodes = _post(f"{base}/graphql", q)["data"]["repositoriesOrError"]["nodes"]
            if any(job in {j["name"] for j in n["jobs"]} for n in nodes):
                return
        except (OSError, KeyError, TypeError):
            pass
        time.sleep(1)
    raise AssertionError(f"webserver at {base} never showed {job}")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    osd_or_skip()
    if not CHROMIUM.exists():
        pytest.skip(f"Chromium not installed at {CHROMIUM}")
    tmp = tmp_path_factory.mktemp("console")
    home = tmp / "home"
    home.mkdir()
    # No daemon in the test: runs launched from the UI start at once (dagster dev queues them for its daemon).
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nrun_coordinator:\n  module: dagster._core.run_coordinator\n"
        "  class: DefaultRunCoordinator\n"
    )
    cfg = project_config(tmp, 0, 0, 2, 2)  # dagster_url: the default, port 3000, baked into the export
    cfg_path = tmp / "project.json"
    cfg_path.write_text(cfg.model_dump_json())
    project = Project(cfg)
    defs = build_definitions(cfg)
    port = _free_port()
    assert port != 3000
    base = f"http://127.0.0.1:{port}"
    proc = _start_webserver(cfg_path, home, port)  # loads its code location while the map is generated
    server = None
    try:
        with _instance(home) as instance:
            assert drive(defs, project, instance).complete
        out = build_map(cfg)
        console = Console(cfg, dagster_url=base, token=TOKEN, map_dir=out)
        server = start_server(out, api=console, dagster_url=base)
        _wait_for_job(base, "console_action_job", proc)
        yield {
            "cfg": cfg,
            "project": project,
            "defs": defs,
            "home": home,
            "dagster": base,
            "url": server.url,
            "out": out,
        }
    finally:
        if server is not None:
            server.close()
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def page(env):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=["--force-color-profile=srgb"])
        ctx = b.new_context(viewport=VIEW)
        pg = ctx.new_page()
        yield pg
        b.close()


def _open(page, env, hash_: str = "") -> None:
    page.goto(env["url"] + hash_)
    page.wait_for_selector("body[data-state='ready']", timeout=60_000)
    page.wait_for_selector("body[data-console-state='ready']", timeout=60_000)


def _click_quadrant(page, x: int, y: int) -> None:
    """A real mouse click on the centre of quadrant (x, y) as drawn on screen."""
    pos = page.evaluate(
        """([x, y]) => {
            const iso = window.isonyc, q = iso.side.quadrant_px, item = iso.viewer.world.getItemAt(0);
            const p = item.imageToViewerElementCoordinates(
                new OpenSeadragon.Point((x - iso.side.grid.x0 + 0.5) * q, (y - iso.side.grid.y0 + 0.5) * q));
            const r = iso.viewer.canvas.getBoundingClientRect();
            return [r.left + p.x, r.top + p.y];
        }""",
        [x, y],
    )
    page.mouse.click(pos[0], pos[1])


def _runs(base: str, action: str) -> list[dict]:
    q = """query($tags: [ExecutionTag!]) { runsOrError(filter: {tags: $tags}) { ... on Runs { results {
             runId status jobName tags { key value } } } } }"""
    r = httpx.post(
        f"{base}/graphql",
        json={"query": q, "variables": {"tags": [{"key": "isonyc/action", "value": action}]}},
        timeout=30,
    )
    return r.json()["data"]["runsOrError"]["results"]


def _wait_run(page, timeout_ms: int = 300_000) -> str:
    page.wait_for_function(
        "['SUCCESS','FAILURE','CANCELED','ERROR'].includes(document.body.dataset.consoleRun)",
        timeout=timeout_ms,
    )
    status = page.evaluate("document.body.dataset.consoleRun")
    page.evaluate("delete document.body.dataset.consoleRun")
    return status


def test_a_bad_tile_stays_failing_in_dagster_and_in_the_map_after_a_passing_run(env, page) -> None:
    project, store = env["project"], env["project"].store
    good = store.active(layers.GENERATION, *BAD)
    # A blank tile as if its step had produced it (same provenance), published in Dagster: not_blank fails.
    store.put_tile(
        layers.GENERATION, *BAD, png_bytes(np.full((512, 512, 3), 90, np.uint8)), dict(good.provenance)
    )
    defs = env["defs"]
    with _instance(env["home"]) as instance:
        job = defs.resolve_job_def("generation_job")
        assert job.execute_in_process(instance=instance, partition_key="2|1").success
        assert job.execute_in_process(
            instance=instance, partition_key="0|0"
        ).success  # passing, other partition
        key = dg.AssetCheckKey(dg.AssetKey(layers.GENERATION), "not_blank")
        rec = instance.event_log_storage.get_latest_asset_check_execution_by_key([key])[key]
        assert rec.status.value == "FAILED"
        assert list(rec.event.dagster_event.event_specific_data.metadata["failing_partitions"].value) == [
            "2|1"
        ]
    _open(page, env)
    failing = {e.get_attribute("data-key") for e in page.locator(".qa-overlay.qa-failing").all()}
    status = httpx.get(env["url"] + "api/status").json()
    # The blank tile fails not_blank, and the seams on both sides of its step edges (1|1 and 2|2) fail too.
    assert status["quadrants"]["2|1"]["checks"] == ["not_blank", "seams"]
    assert failing == {k for k, s in status["quadrants"].items() if s["checks"]} >= {"2|1"}
    assert status["counts"]["missing"] == 0
    assert project.quadrants.keys  # bounds unchanged


def test_two_clicks_from_the_bad_tile_to_its_producing_step_in_dagster_on_a_non_default_port(
    env, page
) -> None:
    base = env["dagster"]
    side_on_disk = json.loads((env["out"] / f"{env['cfg'].map.name}.json").read_text())
    assert side_on_disk["dagster"]["url"] == "http://127.0.0.1:3000"  # baked at export time
    _open(page, env)
    _click_quadrant(page, *BAD)  # click 1: the red quadrant
    page.wait_for_selector("#console-quadrant[data-key='2|1']")
    # The viewer's own link follows the serve-time URL, not the exported one.
    assert page.get_attribute("#selected-link", "href").startswith(f"{base}/assets/generation?")
    link = page.locator("a.producing-step")
    assert link.inner_text().startswith("producing step bridges_v 0|0")
    assert link.get_attribute("href") == f"{base}/assets/bridges_v?view=partitions&partition=0%7C0"
    ctx = sorted(a.inner_text() for a in page.locator("a.context-step").all())
    assert ctx == ["blocks 0|0 ↗"]  # a 1×2 bridge takes the block on its left as context
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "console_panel.png"))
    fails = sorted(e.inner_text().split(":")[0] for e in page.locator(".checks .fail").all())
    assert fails == ["not_blank", "seams"]
    with page.context.expect_page() as new:
        link.click()  # click 2: the producing step's partition page in Dagster
    dpage = new.value
    dpage.set_viewport_size(VIEW)
    dpage.wait_for_load_state("domcontentloaded")
    assert dpage.url.startswith(f"{base}/assets/bridges_v")
    dpage.wait_for_selector("text=bridges_v", timeout=60_000)
    dpage.wait_for_selector("text=0|0", timeout=60_000)
    with contextlib.suppress(PlaywrightTimeout):  # Dagster's first-visit newsletter dialog, shown once
        dpage.locator("button:has-text('Skip')").first.click(timeout=15_000)
    time.sleep(2)  # let the partition panel render its metadata
    dpage.screenshot(path=str(SHOTS / "dagster_step_partition.png"))
    ctx_row = dpage.locator("text=context_steps").first
    ctx_row.scroll_into_view_if_needed(timeout=30_000)  # the step's context, as links, in its own metadata
    dpage.screenshot(path=str(SHOTS / "dagster_step_context.png"))
    dpage.close()


def test_mutations_need_the_token(env) -> None:
    url = env["url"]
    body = {"x": 0, "y": 0, "flag": "starred", "value": True}
    assert httpx.post(url + "api/flag", json=body).status_code == 401
    bad = httpx.post(url + "api/flag", json=body, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "token" in bad.json()["error"]
    assert httpx.post(url + "api/action", json={"action": "repair", "quadrants": ["0|0"]}).status_code == 401
    assert httpx.post(url + "api/import?x=0&y=0", content=b"x").status_code == 401
    assert env["project"].store.flags(0, 0).starred is False
    ok = httpx.post(url + "api/flag", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert ok.status_code == 200 and ok.json()["flags"]["starred"] is True
    assert httpx.get(url + "api/status").status_code == 200  # reading needs no token


def test_repair_through_the_console_launches_a_tagged_run_and_leaves_neighbours_alone(env, page) -> None:
    store, project = env["project"].store, env["project"]
    before = {q: store.active(layers.GENERATION, *q).sha256 for q in project.quadrants.keys}
    _open(page, env, "#2,1")
    page.wait_for_selector("#console-quadrant[data-key='2|1']")
    page.fill("#console-token", TOKEN)
    page.dispatch_event("#console-token", "change")
    page.click("#console-repair")
    assert _wait_run(page) == "SUCCESS", page.inner_text("#console-message")
    runs = _runs(env["dagster"], "repair")
    assert len(runs) == 1 and runs[0]["status"] == "SUCCESS" and runs[0]["jobName"] == "console_action_job"
    assert {t["key"]: t["value"] for t in runs[0]["tags"]}["isonyc/quadrant"] == "2|1"
    v = store.active(layers.GENERATION, *BAD)
    assert v.provenance["kind"] == "repair" and v.version == 3 and v.sha256 != before[BAD]
    for q, sha in before.items():
        if q != BAD:
            assert store.active(layers.GENERATION, *q).sha256 == sha, q
    assert stale_steps(store, project.plan) == []
    # The map shows it: every map tile is the one the store's active tiles call for.
    spec = project.publish_spec
    assert (
        pyramid_staleness(
            store, env["out"], grid=project.quadrants.bbox, name=env["cfg"].map.name, publish=spec
        )
        is None
    )
    status = httpx.get(env["url"] + "api/status").json()["quadrants"]["2|1"]
    assert status["repaired"] and "not_blank" not in status["checks"]
    # The overlay shows the first that holds of failing, flagged (QA's flag stays until generation is published
    # again), stale, missing, repaired.
    shown = next(
        c
        for c, on in (
            ("failing", bool(status["checks"])),
            ("flagged", "flagged" in status["flags"]),
            ("stale", status["stale"]),
            ("repaired", status["repaired"]),
        )
        if on
    )
    page.wait_for_selector(f".qa-overlay.qa-{shown}[data-key='2|1']")
    page.wait_for_function("document.querySelectorAll('#console .versions li').length === 3")
    page.screenshot(path=str(SHOTS / "console_after_repair.png"))


def test_revert_through_the_console(env, page) -> None:
    store = env["project"].store
    v1 = store.versions(layers.GENERATION, *BAD)[0]
    page.click(".versions button.revert[data-version='1']")
    assert _wait_run(page) == "SUCCESS", page.inner_text("#console-message")
    v = store.active(layers.GENERATION, *BAD)
    assert (v.version, v.sha256, v.provenance["kind"]) == (4, v1.sha256, "revert")
    assert [r["status"] for r in _runs(env["dagster"], "revert")] == ["SUCCESS"]


def test_export_and_import_round_trip(env) -> None:
    url, store, auth = env["url"], env["project"].store, {"Authorization": f"Bearer {TOKEN}"}
    before = {q: store.active(layers.GENERATION, *q).sha256 for q in env["project"].quadrants.keys}
    png = httpx.get(url + "api/export?x=1&y=0").content
    img = decode_rgb(png)
    assert img.shape == (1024, 1024, 3)
    assert (img[512:, 512:] == decode_rgb(store.get_tile(layers.GENERATION, 2, 1))).all()
    edited = img.copy()
    edited[512 + 100 : 512 + 200, 512 + 100 : 512 + 200] = (255, 0, 255)  # paint inside quadrant 2|1 only
    res = httpx.post(url + "api/import?x=1&y=0&take=2|1", content=png_bytes(edited), headers=auth)
    assert res.status_code == 200, res.text
    v = store.active(layers.GENERATION, *BAD)
    assert v.provenance["kind"] == "import" and v.provenance["method"] == "manual"
    assert (decode_rgb(store.get_blob(v.sha256)) == edited[512:, 512:]).all()
    for q, sha in before.items():
        if q != BAD:
            assert store.active(layers.GENERATION, *q).sha256 == sha, q
    assert (decode_rgb(httpx.get(url + "api/export?x=1&y=0").content) == edited).all()  # the round trip

    # A neighbour painted too, or a resized image: refused with one line, nothing written.
    spill = edited.copy()
    spill[10, 10] = (0, 0, 0) if tuple(spill[10, 10]) != (0, 0, 0) else (1, 1, 1)
    res = httpx.post(url + "api/import?x=1&y=0&take=2|1", content=png_bytes(spill), headers=auth)
    assert res.status_code == 400 and res.json()["error"].startswith(
        "quadrant 1|0 was edited too (1 px differ"
    )
    res = httpx.post(url + "api/import?x=1&y=0", content=png_bytes(edited[:512]), headers=auth)
    assert res.status_code == 400 and "import the 2×2 export as it was (1024×1024)" in res.json()["error"]
    assert store.active(layers.GENERATION, *BAD).sha256 == v.sha256


def test_bounds_editor_counts_like_python_and_saves_checked_geojson(env, page) -> None:
    cfg, project = env["cfg"], env["project"]
    g = project.geometry
    ring = [[100.0, 150.0], [1300.0, 60.0], [1450.0, 1400.0], [500.0, 1480.0], [60.0, 800.0]]
    _open(page, env)
    js = page.evaluate(f"window.isonycBounds.count({json.dumps(ring)}, {g.q})")
    # The Python count of the same outline, through lng/lat as the saved GeoJSON holds it.
    import shapely
    from shapely.geometry import Polygon

    lnglat = shapely.transform(
        shapely.segmentize(Polygon(ring), 32.0),
        lambda c: np.column_stack(g.pixel_to_lnglat(c[:, 0], c[:, 1])),
    )
    qs = quadrants_for_bounds(g, lnglat)
    assert js["quadrants"] == len(qs) and sorted(map(tuple, js["keys"])) == sorted(qs.keys)
    assert js["steps"] == len(LatticePlan.from_quadrants(qs.keys))

    # Draw it in the editor with real clicks; the live count follows; save with the token.
    page.fill("#console-token", TOKEN)
    page.dispatch_event("#console-token", "change")
    page.click("#bounds-edit")
    page.wait_for_function("document.getElementById('bounds-count').dataset.quadrants === '9'")
    page.click("#bounds-clear")
    page.evaluate("for (const id of ['panel', 'console']) document.getElementById(id).style.display = 'none'")
    for px, py in ring:
        pos = page.evaluate(
            """([px, py]) => { const iso = window.isonyc, q = iso.side.quadrant_px;
                const p = iso.viewer.world.getItemAt(0).imageToViewerElementCoordinates(
                  new OpenSeadragon.Point(px - iso.side.grid.x0 * q, py - iso.side.grid.y0 * q));
                const r = iso.viewer.canvas.getBoundingClientRect(); return [r.left + p.x, r.top + p.y]; }""",
            [px, py],
        )
        page.mouse.click(pos[0], pos[1])
        time.sleep(0.3)  # not a double click
    drawn = page.evaluate("window.isonycBounds.ring")
    assert len(drawn) == len(ring)
    live = page.evaluate("document.getElementById('bounds-count').dataset")
    page.screenshot(path=str(SHOTS / "bounds_editor.png"))
    page.click("#bounds-save")
    page.wait_for_function("document.getElementById('bounds-error').textContent !== ''")
    msg = page.inner_text("#bounds-error")
    assert msg.startswith("saved: "), msg
    saved = Project(cfg)  # reads the bounds file the console wrote
    assert f"{len(saved.quadrants)} quadrants · {len(saved.plan)} steps" in msg
    assert int(live["quadrants"]) == len(saved.quadrants) and int(live["steps"]) == len(saved.plan)

    # A self-crossing outline: one clear line, the file untouched.
    text = Path(cfg.bounds).read_text()
    bow = [[0, 0], [1000, 1000], [1000, 0], [0, 1000]]
    res = httpx.post(
        env["url"] + "api/bounds", json={"polygon_px": bow}, headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert res.status_code == 400 and res.json()["error"].startswith(
        "the outline crosses itself (Self-intersection"
    )
    assert "\n" not in res.json()["error"] and Path(cfg.bounds).read_text() == text
