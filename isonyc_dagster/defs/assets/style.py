"""The ``style_pairs`` asset: phase 1 of the style search (synthetic image/parameter pairs), as in ``isonyc style data``.

Not partitioned: one data set per project, in ``style/`` beside the cache directory. It depends on ``geodata``
(the scene is a render of the project's city), so new geodata marks it stale; the pairs already on disk for the
same scene are kept (``generate_dataset`` resumes), delete ``style/`` to start over. (No ``from __future__ import
annotations`` here: Dagster reads the config class from the real annotation.)
"""

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.resources import ProjectResource
from isonyc_dagster.render import RenderResult
from isonyc_dagster.stylesearch.api import start_raster_server
from isonyc_dagster.stylesearch.data import default_dir, generate_dataset
from isonyc_dagster.stylesearch.scene import Scene


class StylePairsConfig(dg.Config):
    n: int = 2000
    size: int = 256
    seed: int = 0


@dg.asset(
    name="style_pairs",
    deps=[layers.GEODATA],
    group_name="style",
    compute_kind="numpy",
    description="Stratified (image, style parameters) pairs from the renderer API for the inverse model "
    "(`isonyc style data`).",
)
def style_pairs(
    context: dg.AssetExecutionContext, config: StylePairsConfig, project: ProjectResource
) -> dg.MaterializeResult:
    p = project.get()
    work = default_dir(p.config.cache_dir)
    keys = list(p.quadrants.keys)

    def render_window(x: int, y: int, w: int, h: int) -> RenderResult:
        qx, qy = sorted(keys)[len(keys) // 2]
        return p.renderer_at(qx, qy).render_window(x, y, w, h)

    scene = Scene.load_or_build(
        work / "scene.npz", render_window, keys, size=config.size, map_config=p.config.map
    )
    with start_raster_server(scene) as server:
        stats = generate_dataset(work, config.n, server.url, seed=config.seed, progress=context.log.info)
    balanced = {k: f"{min(v.values())}..{max(v.values())}" for k, v in stats["counts"].items()}
    return dg.MaterializeResult(
        metadata={
            "pairs": stats["pairs"],
            "new_pairs": stats["new_pairs"],
            "pairs_per_s": dg.MetadataValue.float(float(stats["pairs_per_s"] or 0.0)),
            "scene_px": scene.size,
            "per_value_counts": dg.MetadataValue.json(balanced),
            "dir": dg.MetadataValue.path(str(work)),
        }
    )
