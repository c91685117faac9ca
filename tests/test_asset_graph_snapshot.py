"""The asset graph (keys, groups, partitions, partition mappings, checks) equals the recorded snapshot.

Lineage is the product's contract with the UI and the scheduler: an accidental change to a partition mapping
or a dependency fails here. After an intended change, regenerate the snapshot with
``python -m tests.test_asset_graph_snapshot > tests/snapshots/asset_graph.json`` and review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dagster as dg

from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.geo.config import ProjectConfig

SNAPSHOT = Path(__file__).parent / "snapshots" / "asset_graph.json"


def _partitions(pd: dg.PartitionsDefinition | None) -> Any:
    if pd is None:
        return None
    if isinstance(pd, dg.MultiPartitionsDefinition):
        return {"multi": {d.name: _partitions(d.partitions_def) for d in pd.partitions_defs}}
    if isinstance(pd, dg.StaticPartitionsDefinition):
        return {"static": pd.get_partition_keys()}
    return {type(pd).__name__: repr(pd)}


def _mapping(pm: dg.PartitionMapping | None) -> Any:
    if pm is None:
        return None
    if isinstance(pm, dg.MultiPartitionMapping):
        return {
            "multi": {
                up: {"dim": m.dimension_name, "mapping": _mapping(m.partition_mapping)}
                for up, m in sorted(pm.downstream_mappings_by_upstream_dimension.items())
            }
        }
    if isinstance(pm, dg.StaticPartitionMapping):
        return {"static": {k: sorted(v) for k, v in sorted(pm._mapping.items())}}
    return {type(pm).__name__: None}


def asset_graph_snapshot(defs: dg.Definitions) -> dict[str, Any]:
    """Every asset's group, partitions, dependencies with their partition mappings, and checks."""
    graph = defs.resolve_asset_graph()
    out: dict[str, Any] = {}
    for key in sorted(graph.get_all_asset_keys(), key=lambda k: k.to_user_string()):
        node = graph.get(key)
        deps = {
            parent.to_user_string(): _mapping(graph.get_partition_mapping(key, parent))
            if node.partitions_def
            else None
            for parent in sorted(node.parent_keys, key=lambda k: k.to_user_string())
        }
        out[key.to_user_string()] = {
            "group": node.group_name,
            "partitions": _partitions(node.partitions_def),
            "deps": deps,
            "checks": sorted(c.name for c in node.check_keys),
        }
    return out


def test_asset_graph_equals_the_snapshot() -> None:
    current = asset_graph_snapshot(build_definitions(ProjectConfig()))
    recorded = json.loads(SNAPSHOT.read_text())
    assert current.keys() == recorded.keys(), "asset keys changed"
    for name in recorded:
        assert current[name] == recorded[name], (
            f"asset {name!r} differs from tests/snapshots/asset_graph.json"
        )


def test_snapshot_sees_a_changed_mapping() -> None:
    """The snapshot is sensitive to one partition edge: drop one block → bridge_v context edge and compare."""
    snap = asset_graph_snapshot(build_definitions(ProjectConfig()))
    mapping = snap["bridges_v"]["deps"]["blocks"]["static"]
    first = next(k for k, v in mapping.items() if v)
    mapping[first] = mapping[first][1:]
    assert snap != json.loads(SNAPSHOT.read_text())


if __name__ == "__main__":
    print(json.dumps(asset_graph_snapshot(build_definitions(ProjectConfig())), indent=1, sort_keys=True))
