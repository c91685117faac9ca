"""Links from a step partition to the partitions a person follows: its context steps, its quadrants' ``generation``
and ``render`` partitions (names exactly as Dagster's asset and partition keys)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import dagster as dg

from isonyc_dagster import layers
from isonyc_dagster.defs.checks import partition_url
from isonyc_dagster.defs.partitions import key2
from isonyc_dagster.generate.plan import LatticePlan, Step


def _md(dagster_url: str, targets: Iterable[tuple[str, str]]) -> dg.MetadataValue:
    lines = [f"- [{a}[{k}]]({partition_url(dagster_url, a, k)})" for a, k in targets]
    return dg.MetadataValue.md("\n".join(lines) or "(none)")


def step_links(plan: LatticePlan, dagster_url: str, step: Step, context: Iterable[Any]) -> dict[str, Any]:
    """``context_steps``, ``quadrant_links`` (generation) and ``render_links`` of one step partition."""
    own = (layers.STEP_ASSETS[step.kind.value], key2(*step.cell))
    ctx = {
        (layers.STEP_ASSETS[s.kind.value], key2(*s.cell))
        for s in (plan.step_for_quadrant(int(x), int(y)) for x, y in context)
    } - {own}
    return {
        "context_steps": _md(dagster_url, sorted(ctx)),
        "quadrant_links": _md(dagster_url, [(layers.GENERATION, key2(*q)) for q in step.quadrants]),
        "render_links": _md(dagster_url, [(layers.RENDER, key2(*q)) for q in step.quadrants]),
    }
