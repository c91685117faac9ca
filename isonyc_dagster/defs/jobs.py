"""Op-based jobs: the seam pilot (a w×h patch, K candidates per tile, seam report) as a Dagster job."""

from pathlib import Path

import dagster as dg

from isonyc_dagster.defs.resources import GeneratorResource, ProjectResource
from isonyc_dagster.generate.pilot import PilotPatch
from isonyc_dagster.project import run_project_pilot


class PilotConfig(dg.Config):
    x0: int
    y0: int
    w: int = 3
    h: int = 3
    k: int = 3
    overlap_px: int = 8
    out_dir: str = ""  # default: <output_dir>/pilot_<x0>_<y0>_<w>x<h>


@dg.op(
    description="Seam pilot: raster order, K candidates per tile scored against the accepted left/top tiles."
)
def seam_pilot(
    context: dg.OpExecutionContext,
    config: PilotConfig,
    project: ProjectResource,
    generator: GeneratorResource,
) -> dg.Output[str]:
    p = project.get()
    patch = PilotPatch(config.x0, config.y0, config.w, config.h, config.k, config.overlap_px)
    out = Path(config.out_dir or Path(p.config.output_dir) / patch.name)
    backend = generator.build(p.config.map)
    try:
        report = run_project_pilot(p.config, backend, patch, out, overwrite=True)
    finally:
        backend.close()
    summary = report["summary"]
    context.log.info("pilot: %s", summary)
    return dg.Output(
        str(out / "report.json"),
        metadata={
            "out_dir": dg.MetadataValue.path(str(out)),
            "mosaic": dg.MetadataValue.path(str(out / "mosaic.png")),
            "heatmap": dg.MetadataValue.path(str(out / "seam_heatmap.png")),
            "mean_seam": float(summary["mean_seam"]),
            "max_seam": float(summary["max_seam"]),
            "edges_over_threshold": int(summary["edges_over_threshold"]),
            "model_calls": int(summary["model_calls"]),
        },
    )


@dg.job(
    description="Run the seam pilot over a patch; configure x0, y0, w, h, k and overlap_px in the launchpad."
)
def seam_pilot_job() -> None:
    seam_pilot()
