"""The ``geodata`` asset: the city (buildings, land, water, parks, roads) prepared for the bounds."""

import dagster as dg

from isonyc_dagster.defs.resources import ProjectResource


@dg.asset(group_name="inputs", compute_kind="python")
def geodata(context: dg.AssetExecutionContext, project: ProjectResource) -> dg.MaterializeResult:
    """Load every geodata source (or the synthetic offline city) for the bounds plus margins, and cache it.

    Large bounds (Manhattan, all of NYC) are loaded region by region while rendering; then this checks the sources
    on the first region and reports it.
    """
    p = project.get()
    city = p.city(rebuild=True)
    mode = "whole bounds" if p.whole_city else "per region of 16×16 quadrants (this: the first region)"
    estimated = sum(1 for b in city.buildings if b.height_estimated)
    context.log.info(
        "geodata: %d buildings (%d estimated heights), %d parks, %d roads%s",
        len(city.buildings),
        estimated,
        len(city.parks),
        len(city.roads),
        " — SYNTHETIC city" if city.synthetic else "",
    )
    return dg.MaterializeResult(
        metadata={
            "buildings": len(city.buildings),
            "estimated_heights": estimated,
            "parks": len(city.parks),
            "roads": len(city.roads),
            "max_height_m": float(city.max_height_m),
            "synthetic": city.synthetic,
            "sources": dg.MetadataValue.json(list(city.sources)),
            # Per source: counts (buildings, estimated / invalid / implausible heights, ...) and its warnings.
            "read_reports": dg.MetadataValue.json(list(city.reports)),
            "warnings": sum(len(r.get("warnings", [])) for r in city.reports),
            "attribution": city.attribution,
            "bounds": p.config.bounds,
            "quadrants": len(p.quadrants),
            "prepared": mode,
            **({"cache": dg.MetadataValue.path(str(p.city_cache_path))} if p.whole_city else {}),
        },
        data_version=dg.DataVersion(p.geodata_key),
    )
