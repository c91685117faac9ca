"""The asset checks: per-quadrant QA of the ``generation`` asset (computed by ``generate.qa``)."""

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.generate.qa import MAX_RED_PX

GENERATION_CHECKS = [
    dg.AssetCheckSpec(
        "seams",
        asset=layers.GENERATION,
        description="seam score across every edge shared with a quadrant of another step",
    ),
    dg.AssetCheckSpec(
        "no_red_border",
        asset=layers.GENERATION,
        description=f"at most {MAX_RED_PX} pure-red template-border pixels left",
    ),
    dg.AssetCheckSpec("not_blank", asset=layers.GENERATION, description="not blank, not sky-coloured"),
]

#: Seams are judged by eye before a tile is redone (a warning); red borders and blank tiles are plain errors.
SEVERITY = {
    "seams": dg.AssetCheckSeverity.WARN,
    "no_red_border": dg.AssetCheckSeverity.ERROR,
    "not_blank": dg.AssetCheckSeverity.ERROR,
}


def generation_check_results(
    failing: dict[str, dict[str, list]], checked: int, worst_seam: float, seam_threshold: float
) -> list[dg.AssetCheckResult]:
    """One result per check, naming the failing quadrants and the figures that failed them."""
    return [
        dg.AssetCheckResult(
            check_name=spec.name,
            passed=not failing[spec.name],
            severity=SEVERITY[spec.name],
            metadata={
                "failing_quadrants": dg.MetadataValue.json(failing[spec.name]),
                "checked": checked,
                **(
                    {"worst_seam": round(worst_seam, 3), "threshold": seam_threshold}
                    if spec.name == "seams"
                    else {}
                ),
            },
        )
        for spec in GENERATION_CHECKS
    ]
