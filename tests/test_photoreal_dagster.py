"""The photoreal layer through Dagster: the asset renders real Midtown East quadrants from a local tileset into
the store's ``photoreal`` layer (previews, provenance without secrets); a failing render stores nothing; a step
whose quadrants lack the photoreal layer fails fast; the default project has no photoreal asset at all."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pytest

from isonyc_dagster import layers
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.images import decode_rgb
from isonyc_dagster.project import Project
from tests.conftest import geodata_file
from tests.dagster_helpers import project_config
from tests.photoreal_fixture import TileServer, build_tileset
from tests.test_photoreal import building_mask_photoreal, building_mask_whitebox

CITICORP = (40.7583, -73.9702)


@pytest.fixture
def instance(tmp_path: Path):
    with dg.instance_for_test(temp_dir=str(tmp_path)) as inst:
        yield inst


@pytest.fixture(scope="module")
def server(geometry, tmp_path_factory):
    from tests.test_photoreal import _skip_without_browser

    _skip_without_browser()
    from isonyc_dagster.geodata.load import load_city

    city = load_city(geometry, [geodata_file("midtown_east_buildings_doitt.geojson")])
    root = tmp_path_factory.mktemp("tiles")
    build_tileset(city, geometry, root, -31.3)
    srv = TileServer(root)
    yield srv
    srv.close()


def _config(tmp_path: Path, geometry, server: TileServer, **kw):
    q = geometry.locate(*CITICORP)["quadrant"]
    x, y = q["x"] - 1, q["y"] - 1
    cfg = project_config(
        tmp_path,
        x,
        y,
        x + 1,
        y + 1,
        geodata=[str(geodata_file("midtown_east_buildings_doitt.geojson"))],
        render_layer="photoreal",
        photoreal={"tileset": server.url, "timeout_s": 20, "retries": 1, **kw},
    )
    return cfg, (x, y)


def _range(x: int, y: int) -> dict[str, str]:
    return {
        "dagster/asset_partition_range_start": f"{x}|{y}",
        "dagster/asset_partition_range_end": f"{x + 1}|{y + 1}",
    }


def test_photoreal_asset_stores_aligned_quadrants_with_provenance(tmp_path, geometry, server, instance):
    cfg, (x, y) = _config(tmp_path, geometry, server)
    defs = build_definitions(cfg)
    res = defs.resolve_job_def("photoreal_job").execute_in_process(instance=instance, tags=_range(x, y))
    assert res.success
    project = Project(cfg)
    keys = [(x, y), (x + 1, y), (x, y + 1), (x + 1, y + 1)]
    for qx, qy in keys:
        v = project.store.active(layers.PHOTOREAL, qx, qy)
        assert v is not None
        prov = v.provenance
        assert prov["renderer"] == "photoreal" and prov["source"]["url"] == server.url
        assert prov["tiles"]["failed"] == 0 and prov["attempts"] == 1 and "NYC OTI" in prov["attribution"]
        pr = building_mask_photoreal(decode_rgb(project.store.get_tile(layers.PHOTOREAL, qx, qy)))
        wb = building_mask_whitebox(project.render_quadrant(qx, qy).surface)
        assert (pr & wb).sum() / max((pr | wb).sum(), 1) >= 0.97
    mat = (
        instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey(layers.PHOTOREAL), asset_partitions=[f"{x}|{y}"]),
            limit=1,
        )
        .records[0]
        .asset_materialization
    )
    assert mat.metadata["preview"].value.startswith(f"![photoreal {x},{y}](data:image/png;base64,")
    assert mat.metadata["attempts"].value == 1


def test_failed_photoreal_render_stores_nothing_and_records_retries(tmp_path, geometry, server, instance):
    cfg, (x, y) = _config(tmp_path, geometry, server)
    server.missing.update({f"detail_{i}.glb" for i in range(4)})
    try:
        res = (
            build_definitions(cfg)
            .resolve_job_def("photoreal_job")
            .execute_in_process(instance=instance, tags=_range(x, y), raise_on_error=False)
        )
    finally:
        server.missing.clear()
    assert not res.success
    failure = next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE")
    text = str(failure.step_failure_data.error)
    assert "failed after 2 attempt(s)" in text and "404" in text
    assert Project(cfg).store.list_active(layers.PHOTOREAL) == []


def test_step_without_photoreal_fails_fast(tmp_path, geometry, server, instance):
    cfg, (x, y) = _config(tmp_path, geometry, server)
    defs = build_definitions(cfg)
    assert defs.resolve_job_def("render_job").execute_in_process(instance=instance, tags=_range(x, y)).success
    project = Project(cfg)
    step = next(s for s in project.plan.steps if s.kind == StepKind.BLOCK)
    res = defs.resolve_job_def("blocks_job").execute_in_process(
        instance=instance, partition_key=f"{step.cell[0]}|{step.cell[1]}", raise_on_error=False
    )
    assert not res.success
    text = str(
        next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error
    )
    assert "no render for quadrant(s)" in text
    assert project.store.list_active(layers.GENERATION) == []


def test_default_project_has_no_photoreal_and_google_needs_its_key(tmp_path, monkeypatch):
    defs = build_definitions(project_config(tmp_path, 0, 0, 1, 1))
    assert dg.AssetKey(layers.PHOTOREAL) not in {k for a in defs.assets for k in a.keys}
    monkeypatch.delenv("ISONYC_GOOGLE_MAPS_API_KEY", raising=False)
    cfg = project_config(tmp_path, 0, 0, 1, 1, render_layer="photoreal")
    defs = build_definitions(cfg)
    res = defs.resolve_job_def("photoreal_job").execute_in_process(partition_key="0|0", raise_on_error=False)
    assert not res.success
    text = str(
        next(e for e in res.all_events if e.event_type_value == "STEP_FAILURE").step_failure_data.error
    )
    assert "needs a Google Maps Platform key" in text and "ISONYC_GOOGLE_MAPS_API_KEY" in text
    assert Project(cfg).store.list_active(layers.PHOTOREAL) == []
    # With the key set it is bound as an EnvVar: the definitions never hold its value.
    monkeypatch.setenv("ISONYC_GOOGLE_MAPS_API_KEY", "NOT-A-REAL-KEY-42")
    defs = build_definitions(cfg)
    assert "NOT-A-REAL-KEY-42" not in repr(defs.resources)


def test_render_layer_decides_the_infill_and_the_colour_reference(tmp_path, geometry, server, instance):
    from isonyc_dagster.backends.base import GenerationRequest
    from isonyc_dagster.backends.gemini import ContentOptions
    from isonyc_dagster.generate.template import RenderMissing, build_template
    from isonyc_dagster.images import png_bytes

    cfg, (x, y) = _config(tmp_path, geometry, server)
    project = Project(cfg)
    step = next(s for s in project.plan.steps if s.kind == StepKind.BLOCK)
    both = Project(cfg.model_copy(update={"render_layer": "both"}))
    with pytest.raises(RenderMissing):  # no photoreal stored yet: fail fast, before any model call
        both.step_inputs().color_reference(step)
    assert (
        build_definitions(cfg)
        .resolve_job_def("photoreal_job")
        .execute_in_process(instance=instance, tags=_range(x, y))
        .success
    )
    stored = decode_rgb(project.store.get_tile(layers.PHOTOREAL, *step.quadrants[0]))
    # photoreal: the template's infill pixels are the stored photoreal quadrant's
    inputs = project.step_inputs()
    assert np.array_equal(inputs.render_rgb(*step.quadrants[0]), stored)
    # both: whitebox infill, the photoreal window as the colour reference Gemini/Vertex receive
    _, wb_res = project.store_render(*step.quadrants[0])
    wb = wb_res.rgb
    inputs = both.step_inputs()
    assert np.array_equal(inputs.render_rgb(*step.quadrants[0]), wb)
    ref = inputs.color_reference(step)
    expect = build_template(
        step,
        render_rgb=lambda qx, qy: (
            decode_rgb(project.store.get_tile(layers.PHOTOREAL, qx, qy))
            if (qx, qy) in project.quadrants
            else None
        ),
        generated_rgb=lambda qx, qy: None,
        allow_missing_context=True,
    ).png
    assert decode_rgb(ref).shape == decode_rgb(expect).shape and np.array_equal(
        decode_rgb(ref), decode_rgb(expect)
    )
    req = GenerationRequest(template_png=png_bytes(wb), color_ref=ref)
    body = ContentOptions(None, 2, False, ("png",)).body(
        req, prompt="p", style_refs=(), seed=1, size=(512, 512), backend="gemini"
    )
    texts = [p.get("text", "") for p in body["contents"][0]["parts"]]
    assert any(t.startswith("COLOR REFERENCE") for t in texts)
    assert len([p for p in body["contents"][0]["parts"] if "inline_data" in p]) == 2


def test_published_attribution_credits_the_3d_tiles_only_when_they_were_used(tmp_path):
    geodata = [str(geodata_file("midtown_east_buildings_doitt.geojson"))]
    plain = Project(project_config(tmp_path, 0, 0, 1, 1, geodata=geodata)).attribution() or ""
    assert "NYC OTI" in plain and "3D tiles" not in plain
    google = Project(project_config(tmp_path, 0, 0, 1, 1, geodata=geodata, render_layer="both")).attribution()
    assert google == f"{plain} 3D tiles: Google"
    url = "http://127.0.0.1:8123/tileset.json"
    cfg = project_config(
        tmp_path, 0, 0, 1, 1, geodata=geodata, render_layer="photoreal", photoreal={"tileset": url}
    )
    assert Project(cfg).attribution().endswith("3D tiles: 127.0.0.1:8123")


def test_the_wave_scheduler_renders_photoreal_before_the_steps_that_use_it(
    tmp_path: Path, geometry, server: TileServer, instance: dg.DagsterInstance
) -> None:
    """With render_layer = photoreal the scheduler requests the photoreal layer and holds back every step whose
    quadrants lack it (they would fail fast); once it is there, the steps are requested."""
    from isonyc_dagster.defs.sensors import ASSET_TAG, plan_waves

    cfg, _ = _config(tmp_path, geometry, server)
    defs = build_definitions(cfg)
    project = Project(cfg)

    def planned() -> set[str]:
        return {(r.tags or {}).get(ASSET_TAG, "") for r in plan_waves(project, instance).requests}

    assert defs.resolve_job_def("geodata_job").execute_in_process(instance=instance).success
    rng = {"dagster/asset_partition_range_start": "", "dagster/asset_partition_range_end": ""}
    keys = sorted(project.quadrants.keys)
    rng = {k: f"{x}|{y}" for k, (x, y) in zip(rng, (keys[0], keys[-1]), strict=True)}
    assert defs.resolve_job_def("render_job").execute_in_process(instance=instance, tags=rng).success
    first = planned()
    assert layers.PHOTOREAL in first and "blocks" not in first, first
    assert defs.resolve_job_def("photoreal_job").execute_in_process(instance=instance, tags=rng).success
    second = planned()
    assert "blocks" in second and layers.PHOTOREAL not in second, second
