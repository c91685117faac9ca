"""Model restyle of a layer through a real HTTP backend (the Modal client against a fake model server on 127.0.0.1),
in lattice order, with the already-restyled neighbours as context."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.backends.modal import ModalBackend
from isonyc_dagster.backends.pixelart import PixelArtBackend
from isonyc_dagster.generate.plan import LatticePlan
from isonyc_dagster.generate.restyle import restyle_step
from isonyc_dagster.generate.step import StepInputs, StepSettings, run_step
from isonyc_dagster.generate.template import ContextMissing
from isonyc_dagster.project import Project
from tests.dagster_helpers import project_config
from tests.fake_apis import FakeModal
from tests.test_backends_modal import FAST

LAYER = "layer_restyle"


@pytest.fixture(scope="module")
def base_map(tmp_path_factory) -> dict:
    """A 3×3-quadrant base map (block, two bridges, corner) generated offline in plan order."""
    tmp = tmp_path_factory.mktemp("restyle")
    project = Project(project_config(tmp, 0, 0, 2, 2))
    inputs = StepInputs(project.store, stored=set(), render=project.render_quadrant)
    plan = LatticePlan.from_quadrants(project.quadrants.keys)
    backend = PixelArtBackend()
    for step in plan.steps:  # sorted by wave
        run_step(
            project.store,
            backend,
            step,
            inputs,
            inputs.template(step),
            StepSettings(prompt="p", generator_key="base"),
            seed=1,
        )
    return {"project": project, "inputs": inputs, "plan": plan}


def _sent(rec) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(rec.json()["image_b64"]))) as im:
        return np.asarray(im.convert("RGB"))


def test_restyle_runs_the_lattice_with_restyled_neighbours_as_context(base_map):
    project, inputs, plan = base_map["project"], base_map["inputs"], base_map["plan"]
    store = project.store
    with FakeModal() as api:
        # 1024² templates on a loaded 2-core machine: a generous read timeout (retries stay fast).
        backend = ModalBackend(f"{api.url}/edit_b64", http=FAST.model_copy(update={"timeout_s": 30.0}))
        corner = next(s for s in plan.steps if s.kind.value == "corner")
        with pytest.raises(ContextMissing):  # out of order: fails before any model call
            restyle_step(store, backend, corner, inputs.render_aux, layer=LAYER, prompt="snowy night")
        assert api.api_requests("edit_b64") == []
        for step in plan.steps:
            restyle_step(store, backend, step, inputs.render_aux, layer=LAYER, prompt="snowy night", seed=5)
        sent = api.api_requests("edit_b64")
    assert len(sent) == len(plan.steps) == 4
    for step, rec in zip(plan.steps, sent, strict=True):
        versions = store.active_map(LAYER, step.quadrants)
        assert set(versions) == set(step.quadrants)
        prov = next(iter(versions.values())).provenance
        assert prov["step"] == step.key and prov["restyle_of"] == layers.GENERATION
        assert prov["source_sha256"] == {
            f"{x},{y}": store.active(layers.GENERATION, x, y).sha256 for (x, y) in step.quadrants
        }
        # The context shown to the model is the restyled layer's pixels of exactly the declared neighbours.
        assert sorted(map(tuple, prov["context"])) == sorted(step.context)
        template = _sent(rec)
        wx0, wy0 = step.window
        q = step.quadrant_px
        for x, y in step.context:
            cx, cy = x * q - wx0 * q, y * q - wy0 * q
            x0, y0 = max(cx, 0), max(cy, 0)
            x1, y1 = min(cx + q, 2 * q), min(cy + q, 2 * q)
            if x1 <= x0 or y1 <= y0:
                continue
            restyled = np.asarray(Image.open(io.BytesIO(store.get_tile(LAYER, x, y))).convert("RGB"))
            assert np.array_equal(template[y0:y1, x0:x1], restyled[y0 - cy : y1 - cy, x0 - cx : x1 - cx])
            assert prov["context_sha256"][f"{x},{y}"] == store.active(LAYER, x, y).sha256
    # Every quadrant of the map is restyled, and differs from the base map.
    for x, y in project.quadrants.keys:
        assert store.get_tile(LAYER, x, y) != store.get_tile(layers.GENERATION, x, y)


def test_restyle_assets_run_in_lattice_order_through_dagster(tmp_path):
    """The restyle step assets of a 3×3 map against the fake model server: a corner before its context fails
    before any model call; blocks → bridges → corner then restyle every quadrant, each with restyled context."""
    import json

    import dagster as dg

    from isonyc_dagster.defs.definitions import build_definitions
    from isonyc_dagster.defs.resources import GeneratorResource

    cfg = project_config(tmp_path, 0, 0, 2, 2).model_copy(update={"restyle": {"winter": "snowy night"}})
    offline = build_definitions(cfg)
    graph = {k.to_user_string() for k in offline.resolve_asset_graph().get_all_asset_keys()}
    assert {"restyle_winter_blocks", "restyle_winter_bridges_v", "restyle_winter_corners"} <= graph
    rng = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "2|2"}
    (tmp_path / "dh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance, FakeModal() as api:
        for job, kw in (
            ("geodata_job", {}),
            ("render_job", {"tags": rng}),
            ("blocks_job", {"partition_key": "0|0"}),
            ("bridges_v_job", {"partition_key": "0|0"}),
            ("bridges_h_job", {"partition_key": "0|0"}),
            ("corners_job", {"partition_key": "0|0"}),
            ("generation_job", {"tags": rng}),
        ):
            assert offline.resolve_job_def(job).execute_in_process(instance=instance, **kw).success, job
        settings = json.dumps({"url": f"{api.url}/edit_b64"})
        remote = build_definitions(cfg, generator=GeneratorResource(backend="modal", settings_json=settings))
        early = remote.resolve_job_def("restyle_winter_corners_job").execute_in_process(
            instance=instance, partition_key="0|0", raise_on_error=False
        )
        assert not early.success and api.api_requests("edit_b64") == []
        for kind in ("blocks", "bridges_v", "bridges_h", "corners"):
            job = remote.resolve_job_def(f"restyle_winter_{kind}_job")
            assert job.execute_in_process(instance=instance, partition_key="0|0").success, kind
        assert len(api.api_requests("edit_b64")) == 4
        store = Project(cfg).store
        corner = store.active("restyle_winter", 2, 2)
        assert corner is not None and corner.provenance["step"].startswith("corner")
        assert corner.provenance["context_sha256"] == {
            f"{x},{y}": store.active("restyle_winter", x, y).sha256
            for x, y in map(tuple, corner.provenance["context"])
        }
        assert all(store.active("restyle_winter", x, y) is not None for x in range(3) for y in range(3))
        # Published like the derived layers: its own pyramid beside the map, listed in the viewer's index.
        assert remote.resolve_job_def("layer_pyramids_job").execute_in_process(instance=instance).success
        out = Path(cfg.output_dir)
        assert (out / "nyc_restyle_winter.dzi").is_file()
        index = json.loads((out / "nyc_layers.json").read_text())
        assert "restyle_winter" in index["layers"] and "render" in index["layers"]
