"""A run's CPU work (issue 12, throughput): both cores, one template per step, the same pixels on any thread count."""

from __future__ import annotations

import io
import threading
from pathlib import Path

import dagster as dg
import numpy as np
import pytest
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.generate.plan import StepKind
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project
from isonyc_dagster.workers import WORKERS_ENV, in_flight
from tests.dagster_helpers import full_range_tags, project_config

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def test_in_flight_runs_width_calls_at_once() -> None:
    """Without threads a run used one core; ``in_flight`` must really overlap ``width`` calls."""
    barrier = threading.Barrier(2, timeout=5)  # both calls must be inside at the same time, or it breaks

    def call(n: int) -> int:
        barrier.wait()
        return n

    assert sorted(r for _, r in in_flight(call, [1, 2], 2)) == [1, 2]
    with pytest.raises(threading.BrokenBarrierError):
        list(in_flight(call, [1, 2], 1))


def _generate(tmp: Path, workers: str, monkeypatch: pytest.MonkeyPatch) -> tuple[dict, int]:
    """Render and generate every step of a 6×6 map through Dagster; the active generation shas and how many
    templates the step runs built."""
    from isonyc_dagster.generate.step import StepInputs

    monkeypatch.setenv(WORKERS_ENV, workers)
    built = {"n": 0}
    original = StepInputs.template

    def counting(self: StepInputs, step):  # type: ignore[no-untyped-def]
        built["n"] += 1
        return original(self, step)

    monkeypatch.setattr(StepInputs, "template", counting)
    tmp.mkdir()
    cfg = project_config(tmp, 0, 0, 5, 5)
    defs, project = build_definitions(cfg), Project(cfg)
    with dg.DagsterInstance.ephemeral() as instance:
        assert (
            defs.resolve_job_def("geodata_job")
            .execute_in_process(instance=instance, run_config=QUIET)
            .success
        )
        tags = full_range_tags(project.order.quadrants)
        run = defs.resolve_job_def("render_job").execute_in_process(
            instance=instance, tags=tags, run_config=QUIET
        )
        assert run.success
        for kind, job in (
            (StepKind.BLOCK, "blocks_job"),
            (StepKind.BRIDGE_V, "bridges_v_job"),
            (StepKind.BRIDGE_H, "bridges_h_job"),
            (StepKind.CORNER, "corners_job"),
        ):
            tags = full_range_tags(project.order.steps[kind])
            assert (
                defs.resolve_job_def(job)
                .execute_in_process(instance=instance, tags=tags, run_config=QUIET)
                .success
            )
    shas = {
        q: v.sha256 for q, v in project.store.active_map(layers.GENERATION, project.quadrants.keys).items()
    }
    return shas, built["n"]


def test_two_threads_give_the_same_pixels_as_one_and_each_step_builds_one_template(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Steps of one kind run two at a time: the lattice guarantees they never read each other, so every tile is
    byte-identical to a one-thread run. A run checks readiness from the store's index and builds each template once
    (it built every template twice, once only to see whether it could)."""
    one, built_one = _generate(tmp_path / "one", "1", monkeypatch)
    two, built_two = _generate(tmp_path / "two", "2", monkeypatch)
    steps = len(Project(project_config(tmp_path / "one", 0, 0, 5, 5)).plan.steps)  # the lattice of that map
    assert len(one) == 36 and one == two
    assert built_one == built_two == steps


def test_palette_pngs_are_the_pixels_sorted_and_the_offline_outputs_use_them() -> None:
    rng = np.random.default_rng(3)
    colours = rng.integers(0, 256, (200, 3), dtype=np.uint8)
    rgb = colours[rng.integers(0, 200, (64, 96))]
    data = png_bytes(rgb, palette=True)
    with Image.open(io.BytesIO(data)) as im:
        assert im.mode == "P"
        pal = np.array(im.getpalette()[: 3 * len(np.unique(rgb.reshape(-1, 3), axis=0))]).reshape(-1, 3)
    packed = (pal[:, 0] << 16) | (pal[:, 1] << 8) | pal[:, 2]
    assert np.all(np.diff(packed) > 0)  # sorted: the same pixels always give the same bytes
    assert np.array_equal(decode_rgb(data), rgb)
    many = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)  # > 256 colours: RGB
    with Image.open(io.BytesIO(png_bytes(many, palette=True))) as im:
        assert im.mode == "RGB"


def test_the_offline_backend_writes_palette_outputs_that_steps_accept(tmp_path: Path) -> None:
    """Its raw outputs were 45 % of the store as RGB PNGs; a step validates a palette output like an RGB one."""
    from isonyc_dagster.backends.base import GenerationRequest
    from isonyc_dagster.backends.pixelart import PixelArtBackend
    from isonyc_dagster.generate.template import build_template, extract_quadrants

    cfg = project_config(tmp_path, 0, 0, 1, 1)
    project = Project(cfg)
    step = next(s for s in project.plan.steps if s.kind is StepKind.BLOCK)
    renders = {q: project.render_quadrant(*q) for q in step.window_quadrants()}
    template = build_template(
        step,
        render_rgb=lambda x, y: renders[(x, y)].rgb,
        generated_rgb=lambda x, y: None,
        render_aux=lambda x, y: renders[(x, y)].aux(),
    )
    backend = PixelArtBackend(cfg.map)
    request = GenerationRequest(
        template_png=template.png,
        infill_box=template.infill_box,
        origin_px=template.origin_px,
        aux=template.aux,
    )
    out = backend.generate(request)
    with Image.open(io.BytesIO(out.image_png)) as im:
        assert im.mode == "P"
    arr, _ = backend.generate_array(request)
    quads = extract_quadrants(step, template, out.image_png)
    q = step.quadrant_px
    wx0, wy0 = step.window
    for (x, y), rgb in quads.items():
        assert np.array_equal(rgb, arr[y * q - wy0 : (y + 1) * q - wy0, x * q - wx0 : (x + 1) * q - wx0])


def test_a_map_of_128_px_quadrants_renders_into_its_store(tmp_path: Path) -> None:
    """The project opened its store for 512 px tiles whatever the map said: every render of a 128 px map failed
    with "PNG is 128x128 px but 512x512 px is expected"."""
    from isonyc_dagster.geo.config import MapConfig

    cfg = project_config(tmp_path, 0, 0, 0, 0, map=MapConfig(quadrant_px=128, tile_px=256))
    project = Project(cfg)
    x, y = project.quadrants.keys[0]
    version, res = project.store_render(x, y)
    assert res.rgb.shape == (128, 128, 3) and decode_rgb(project.store.get_blob(version.sha256)).shape == (
        128,
        128,
        3,
    )
