"""Derived layers as assets: ``layer_night``, ``layer_snow``, ``layer_dark`` (per quadrant, from ``generation``), with
their checks, and ``layer_pyramids``, the Deep Zoom pyramid of each (``<map>_<layer>.dzi`` next to the base map).

A derived quadrant depends on its own ``generation`` quadrant only (identity mapping): the offline transforms are
per pixel on world coordinates, so they never read a neighbour, and a new version of one generated quadrant makes
exactly that quadrant's derived tiles stale.
"""

import dataclasses
import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.defs.assets._common import PartitionRun, thumbnail_md
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.derive import DeriveError, derive_quadrant, get_transform, layer_of
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.generate.seams import DEFAULT_THRESHOLD, seam_score
from isonyc_dagster.generate.step import StepInputs
from isonyc_dagster.images import decode_rgb
from isonyc_dagster.publish.clip import PublishSpec
from isonyc_dagster.publish.layout import layers_index_path
from isonyc_dagster.store.base import TileStore

#: A derived quadrant is blank when its pixels vary less than this (std over all channels). Lower than the base's
#: bound: night and dark legitimately compress the range (open water at night).
DERIVED_BLANK_STD = 1.0

#: Extra pyramids the viewer can switch to, built beside the derived ones when their tiles exist.
AUX_PYRAMIDS = {"render": layers.RENDER, "water": layers.WATER_MASK}


def pyramid_name(map_name: str, layer: str) -> str:
    """The published name of a layer's pyramid: ``<map>_<layer>`` (``nyc_night.dzi``)."""
    return f"{map_name}_{layer}"


def _checks(asset: str) -> list[dg.AssetCheckSpec]:
    return [
        dg.AssetCheckSpec(
            "seams", asset=asset, description="seam score across every edge shared with a derived neighbour"
        ),
        dg.AssetCheckSpec("not_blank", asset=asset, description="not a flat colour"),
    ]


def _edge_scores(
    store: TileStore, layer: str, inputs: StepInputs, x: int, y: int, rgb: np.ndarray
) -> list[float]:
    """Seam scores of quadrant (x, y) with its left and upper derived neighbours (each edge is judged once)."""
    scores = []
    for dx, dy, edge in ((-1, 0, "lr"), (0, -1, "tb")):
        png = store.get_tile(layer, x + dx, y + dy)
        if png is None:
            continue
        mask = inputs.edge_mask((x + dx, y + dy), (x, y))
        scores.append(float(seam_score(decode_rgb(png), rgb, edge, mask=mask)))  # type: ignore[arg-type]
    return scores


def build_derived_asset(name: str, partitions_def: dg.PartitionsDefinition) -> dg.AssetsDefinition:
    """The quadrant-partitioned asset of derived layer ``name`` (a key of ``layers.DERIVED_LAYERS``)."""
    transform = get_transform(name)
    asset = layer_of(name)

    @dg.asset(
        name=asset,
        partitions_def=partitions_def,
        deps=[dg.AssetDep(layers.GENERATION, partition_mapping=dg.IdentityPartitionMapping())],
        group_name="layers",
        compute_kind="numpy",
        code_version=f"{name}-v{transform.version}",
        check_specs=_checks(asset),
        backfill_policy=dg.BackfillPolicy.single_run(),
        description=f"Derived layer '{name}': {transform.description}.",
    )
    def _derived(
        context: dg.AssetExecutionContext, project: ProjectResource
    ) -> Iterator[dg.MaterializeResult | dg.AssetMaterialization]:
        p = project.get()
        inputs = p.step_inputs()
        run = PartitionRun(context, map_quadrants=len(p.quadrants))
        failing: dict[str, dict[str, Any]] = {"seams": {}, "not_blank": {}}
        reused, worst = 0, 0.0
        for key, (x, y) in run:
            try:
                tile = derive_quadrant(p.store, name, x, y, inputs.render_aux)
            except DeriveError as e:
                raise dg.Failure(description=str(e), allow_retries=False) from e
            reused += tile.reused
            png = p.store.get_blob(tile.version.sha256)
            rgb = decode_rgb(png)
            std = float(rgb.std())
            if std < DERIVED_BLANK_STD:
                failing["not_blank"][f"{x}|{y}"] = round(std, 3)
            seams = _edge_scores(p.store, asset, inputs, x, y, rgb)
            worst = max([worst, *seams])
            if any(s > DEFAULT_THRESHOLD for s in seams):
                failing["seams"][f"{x}|{y}"] = [round(s, 3) for s in seams]
            meta: dict[str, Any] = {
                "quadrant": f"{x},{y}",
                "sha256": tile.version.sha256,
                "version": tile.version.version,
                "source_sha256": str(tile.version.provenance.get("source_sha256")),
                "reused": tile.reused,
            }
            if run.thumbnails:
                meta["preview"] = thumbnail_md(png, title=f"{name} {x},{y}")
            run.record(key, tile.version.sha256, meta)
        checks = [
            dg.AssetCheckResult(
                check_name="seams",
                passed=not failing["seams"],
                severity=dg.AssetCheckSeverity.WARN,
                metadata={
                    "failing_quadrants": dg.MetadataValue.json(failing["seams"]),
                    "worst_seam": round(worst, 3),
                    "threshold": DEFAULT_THRESHOLD,
                },
            ),
            dg.AssetCheckResult(
                check_name="not_blank",
                passed=not failing["not_blank"],
                severity=dg.AssetCheckSeverity.ERROR,
                metadata={"failing_quadrants": dg.MetadataValue.json(failing["not_blank"])},
            ),
        ]
        yield from run.outputs(
            {"quadrants": len(run.shas), "reused": reused, "transform_version": transform.version},
            check_results=checks,
        )

    return _derived


def build_layer_pyramids_asset(upstream: list[str]) -> dg.AssetsDefinition:
    """One asset that brings every derived and restyled layer's pyramid (plus render and water, when stored) up to
    date; ``upstream`` are the assets it follows."""

    @dg.asset(
        name=layers.LAYER_PYRAMIDS,
        deps=upstream,
        group_name="map",
        compute_kind="pyvips",
        description="Deep Zoom pyramids of the derived layers (and the render and water mask) for the viewer.",
    )
    def layer_pyramids(project: ProjectResource) -> dg.MaterializeResult:
        p = project.get()
        built = publish_layer_pyramids(p, list(p.config.derived_layers))
        return dg.MaterializeResult(
            metadata={
                "pyramids": dg.MetadataValue.json({k: v for k, v in built.items()}),
                "output_dir": dg.MetadataValue.path(str(Path(p.config.output_dir))),
            }
        )

    return layer_pyramids


def _pyramids_to_build(p: Any, names: Iterable[str]) -> dict[str, str]:
    """Label → store layer of every layer pyramid: the derived layers, then the restyled layers, the render and the
    water mask where the store holds them."""
    todo = {n: layer_of(n) for n in names}
    stored = {f"{layers.RESTYLE_PREFIX}{r}": f"{layers.RESTYLE_PREFIX}{r}" for r in p.config.restyle}
    for label, layer in {**stored, **AUX_PYRAMIDS}.items():
        if p.store.list_active(layer, bbox=p.quadrants.bbox):
            todo[label] = layer
    return todo


def _layer_spec(p: Any) -> PublishSpec:
    # The base map's clip, so that switching layers shows the same edges; placeholders are the base's own.
    return dataclasses.replace(p.publish_spec, placeholders=False)


def layer_pyramids_staleness(p: Any) -> str | None:
    """Why a layer pyramid does not show its layer's active tiles (``None`` when all do): the scheduler's test."""
    from isonyc_dagster.publish.build import pyramid_staleness

    out = Path(p.config.output_dir)
    for label, layer in _pyramids_to_build(p, p.config.derived_layers).items():
        name = pyramid_name(p.config.map.name, label)
        reason = pyramid_staleness(
            p.store, out, grid=p.quadrants.bbox, name=name, layer=layer, publish=_layer_spec(p)
        )
        if reason:
            return f"{name}: {reason}"
    return None


def publish_layer_pyramids(p: Any, names: list[str]) -> dict[str, dict[str, Any]]:
    """Build (or update) ``<map>_<layer>.dzi`` for each derived layer and for the stored render and water mask."""
    from isonyc_dagster.publish.build import build_pyramid

    out = Path(p.config.output_dir)
    meta = {"map": p.config.map.model_dump(mode="json")}
    built: dict[str, dict[str, Any]] = {}
    for label, layer in _pyramids_to_build(p, names).items():
        info = build_pyramid(
            p.store,
            out,
            grid=p.quadrants.bbox,
            layer=layer,
            meta=meta,
            name=pyramid_name(p.config.map.name, label),
            publish=_layer_spec(p),
        )
        built[label] = {
            "dzi": str(info.dzi_path.name),
            "tiles_written": info.stats.tiles_written,
            "seconds": round(info.stats.seconds, 3),
        }
    index = {"layers": list(built)}
    atomic_write(layers_index_path(out, p.config.map.name), json.dumps(index, indent=1).encode())
    return built


def build_derived_defs(
    names: list[str], partitions_def: dg.PartitionsDefinition, restyled: Sequence[dg.AssetsDefinition] = ()
) -> tuple[list[dg.AssetsDefinition], list[Any]]:
    """The assets and jobs of the configured derived layers, and the pyramids asset over them and the ``restyled``
    layers' step assets (none when there are neither)."""
    if not names and not restyled:
        return [], []
    assets = [build_derived_asset(n, partitions_def) for n in names]
    upstream = [layer_of(n) for n in names] + [a.key.to_user_string() for a in restyled]
    assets.append(build_layer_pyramids_asset(upstream))
    jobs = [dg.define_asset_job(f"{layer_of(n)}_job", selection=[layer_of(n)]) for n in names]
    jobs.append(dg.define_asset_job(f"{layers.LAYER_PYRAMIDS}_job", selection=[layers.LAYER_PYRAMIDS]))
    return assets, jobs


#: Quadrants per derived-layer run (a key range; the transforms take ~0.1 s per quadrant).
DERIVED_PER_RUN = 128


def materialize_derived(
    defs: dg.Definitions, project: Any, instance: dg.DagsterInstance, names: list[str]
) -> list[tuple[str, bool]]:
    """Materialize every quadrant of each derived layer (range runs along the key order), then their pyramids.

    The demo runs this once the base map is complete; each run lands in ``instance`` like the scheduler's runs.
    Returns (run label, success) per run.
    """
    from isonyc_dagster.defs.partitions import key2

    order = project.order.quadrants
    log: list[tuple[str, bool]] = []
    for n in names:
        job = defs.resolve_job_def(f"{layer_of(n)}_job")
        for first, last in order.spans(set(order.keys), max_wanted=DERIVED_PER_RUN):
            (a0, b0), (a1, b1) = first, last
            tags = {
                "dagster/asset_partition_range_start": key2(a0, b0),
                "dagster/asset_partition_range_end": key2(a1, b1),
            }
            res = job.execute_in_process(
                instance=instance,
                tags=tags,
                raise_on_error=False,
                run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
            )
            log.append((f"{layer_of(n)}[{key2(a0, b0)}…{key2(a1, b1)}]", res.success))
    res = defs.resolve_job_def(f"{layers.LAYER_PYRAMIDS}_job").execute_in_process(
        instance=instance,
        raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}},
    )
    log.append((layers.LAYER_PYRAMIDS, res.success))
    return log
