"""The asset checks on quadrant assets: each evaluation reports the current state of EVERY quadrant of the asset.

Why not partitioned checks: dagster 1.13.27 has them as a preview (``AssetCheckSpec(partitions_def=...)``), but an
evaluation gets a partition only when its run holds exactly one partition (``AssetCheckResult`` has no partition
field; Dagster takes the step's ``partition_key``), and this project runs quadrants in range runs. So a check is
asset-level and reads every quadrant's state from the store (``generate.qa_state``): a later passing run of other
quadrants never hides a failure that is still there. Failing quadrants are listed as partition keys (``x|y``) with
links to their partition pages.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from urllib.parse import quote

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.generate.qa import MAX_RED_PX
from isonyc_dagster.generate.qa_state import MapQA

GENERATION_CHECKS = [
    dg.AssetCheckSpec(
        "seams",
        asset=layers.GENERATION,
        description="every generated quadrant: seam score across each edge shared with a quadrant of another step",
    ),
    dg.AssetCheckSpec(
        "no_red_border",
        asset=layers.GENERATION,
        description=f"every generated quadrant: at most {MAX_RED_PX} pure-red template-border pixels left",
    ),
    dg.AssetCheckSpec(
        "not_blank",
        asset=layers.GENERATION,
        description="every generated quadrant: not blank, not sky-coloured",
    ),
]

#: Seams are judged by eye before a tile is redone (a warning); red borders and blank tiles are plain errors.
SEVERITY = {
    "seams": dg.AssetCheckSeverity.WARN,
    "no_red_border": dg.AssetCheckSeverity.ERROR,
    "not_blank": dg.AssetCheckSeverity.ERROR,
}

#: Failing partitions linked one by one in a check's metadata (all of them are in ``failing_partitions``).
LINKED_FAILURES = 10


def partition_url(dagster_url: str, asset: str, partition_key: str) -> str:
    """The partition page of ``asset`` in the Dagster UI (the same URL as the map viewer's link)."""
    return (
        f"{dagster_url.rstrip('/')}/assets/{asset}?view=partitions&partition={quote(partition_key, safe='')}"
    )


def map_check_result(
    name: str,
    asset: str,
    failing: Mapping[str, Sequence[float | int]],
    *,
    checked: int,
    not_generated: int,
    dagster_url: str,
    severity: dg.AssetCheckSeverity,
    extra: Mapping[str, dg.RawMetadataValue] | None = None,
) -> dg.AssetCheckResult:
    """One check's result over the whole asset: counts, every failing partition key with its figures, links."""
    keys = list(failing)
    meta: dict[str, dg.RawMetadataValue] = {
        "checked": checked,
        "passing": checked - len(keys),
        "failing": len(keys),
        "not_generated": not_generated,
        "severity": severity.value,
        "failing_partitions": dg.MetadataValue.json({k: list(v) for k, v in failing.items()}),
        **(extra or {}),
    }
    if keys:
        rows = "\n".join(
            f"| [{k}]({partition_url(dagster_url, asset, k)}) | {', '.join(str(f) for f in failing[k])} |"
            for k in keys[:200]
        )
        more = f"\n\n… and {len(keys) - 200} more (see failing_partitions)" if len(keys) > 200 else ""
        meta["failing_links"] = dg.MetadataValue.md(f"| partition | figures |\n|---|---|\n{rows}{more}")
        for k in keys[:LINKED_FAILURES]:
            meta[f"failing {k}"] = dg.MetadataValue.url(partition_url(dagster_url, asset, k))
    shown = ", ".join(keys[:8]) + (" …" if len(keys) > 8 else "")
    return dg.AssetCheckResult(
        check_name=name,
        asset_key=asset,
        passed=not keys,
        severity=severity,
        metadata=meta,
        description=(
            f"{len(keys)} of {checked} quadrants fail now: {shown}"
            if keys
            else f"all {checked} quadrants pass"
        ),
    )


def generation_check_results(
    state: MapQA,
    *,
    seam_threshold: float,
    dagster_url: str,
    run_keys: Sequence[str] = (),
) -> list[dg.AssetCheckResult]:
    """One result per QA check, over every generated quadrant of the map (not only this run's)."""
    out = []
    in_run = set(run_keys)
    for spec in GENERATION_CHECKS:
        failing = {key2(*q): f for q, f in state.failing(spec.name, seam_threshold).items()}
        extra: dict[str, dg.RawMetadataValue] = {
            "failing_in_this_run": dg.MetadataValue.json([k for k in failing if k in in_run])
        }
        if spec.name == "seams":
            extra.update({"worst_seam": round(state.worst_seam(), 3), "threshold": seam_threshold})
        out.append(
            map_check_result(
                spec.name,
                layers.GENERATION,
                failing,
                checked=len(state.quadrants),
                not_generated=len(state.not_generated),
                dagster_url=dagster_url,
                severity=SEVERITY[spec.name],
                extra=extra,
            )
        )
    return out
