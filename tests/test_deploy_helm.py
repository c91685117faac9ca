"""``deploy/helm/values.yaml`` validates against the JSON schema of Dagster's Helm chart.

The schema is the chart's own ``values.schema.json``, copied into ``deploy/helm/`` (source, commit and checksum in
``deploy/helm/SCHEMA_SOURCE.md``) because neither helm nor the chart repository can be reached here. Two
adaptations, both because this file is an override file rather than the full values Helm checks:

- Helm validates the user's values *merged over the chart's defaults*, which supply every key the schema marks
  required; so structural ``required`` lists are dropped. The conditional ones stay (``type: GCSComputeLogManager``
  needs ``config.gcsComputeLogManager``): the defaults cannot supply the config of a type the user picked.
- The schema points Kubernetes objects (resources, probes, affinity, env sources) at kubernetesjsonschema.dev;
  offline they resolve to an empty schema, so those objects are checked as JSON objects only.

Everything else applies as Helm applies it: unknown keys where the chart forbids them, types, enums, and the
tag-concurrency-limit shapes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

REPO = Path(__file__).resolve().parents[1]
HELM = REPO / "deploy" / "helm"
SCHEMA = HELM / "values.schema.json"
VALUES = HELM / "values.yaml"
K8S_DEFS = "https://kubernetesjsonschema.dev/v1.18.0/_definitions.json"


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        own = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return own + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def _kubernetes_resource(schema: dict[str, Any]) -> Resource:
    """An offline stand-in for kubernetesjsonschema.dev: every definition the schema points at, as ``{}``."""
    doc: dict[str, Any] = {}
    for ref in _refs(schema):
        if not ref.startswith(K8S_DEFS + "#/"):
            continue
        node = doc
        for part in ref.split("#/", 1)[1].split("/"):
            node = node.setdefault(part, {})
    return Resource.from_contents(doc, default_specification=DRAFT202012)


def _override_schema(node: Any, conditional: bool = False) -> Any:
    """The schema less its structural ``required`` lists (the chart's defaults fill those); ``then`` ones stay."""
    if isinstance(node, dict):
        return {
            k: _override_schema(v, conditional or k == "then")
            for k, v in node.items()
            if not (k == "required" and isinstance(v, list) and not conditional)
        }
    if isinstance(node, list):
        return [_override_schema(v, conditional) for v in node]
    return node


def _validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA.read_text())
    k8s = _kubernetes_resource(schema)

    def retrieve(uri: str) -> Resource:
        if uri != K8S_DEFS:  # nothing else is ever fetched: the tests stay offline
            raise LookupError(f"unexpected remote schema {uri}")
        return k8s

    return Draft202012Validator(_override_schema(schema), registry=Registry(retrieve=retrieve))  # type: ignore[call-arg]


def _leaves(error: ValidationError) -> list[ValidationError]:
    """The innermost errors: an ``anyOf`` (an optional section) says why each of its branches failed."""
    if not error.context:
        return [error]
    # Skip the "or null" branch of optional sections: it only says the section is present.
    return [leaf for sub in error.context if sub.validator_value != "null" for leaf in _leaves(sub)]


def _errors(values: Any) -> list[str]:
    return sorted(
        f"{'.'.join(str(p) for p in leaf.absolute_path) or '<root>'}: {leaf.message}"
        for e in _validator().iter_errors(values)
        for leaf in _leaves(e)
    )


def test_schema_copy_is_the_one_recorded() -> None:
    """The checked-in schema is byte-for-byte the file SCHEMA_SOURCE.md names (no silent local edits)."""
    recorded = re.search(r"sha256 `([0-9a-f]{64})`", (HELM / "SCHEMA_SOURCE.md").read_text())
    assert recorded, "deploy/helm/SCHEMA_SOURCE.md must record the schema's sha256"
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == recorded.group(1)
    assert json.loads(SCHEMA.read_text())["title"] == "DagsterHelmValues"


def test_values_validate_against_the_charts_schema() -> None:
    assert _errors(yaml.safe_load(VALUES.read_text())) == []


def test_full_schema_without_adaptation_names_only_keys_the_chart_defaults_supply() -> None:
    """Against the unmodified schema the only complaints are missing required keys, never a wrong one."""
    schema = json.loads(SCHEMA.read_text())
    k8s = _kubernetes_resource(schema)
    strict = Draft202012Validator(schema, registry=Registry(retrieve=lambda uri: k8s))  # type: ignore[call-arg]
    errors = list(strict.iter_errors(yaml.safe_load(VALUES.read_text())))
    assert errors, "the full schema needs the chart's defaults merged in"
    assert all(_only_missing_keys(e) for e in errors), [
        e.message for e in errors if not _only_missing_keys(e)
    ]


def _only_missing_keys(error: ValidationError) -> bool:
    """``error`` is a missing required key, or an ``anyOf`` with a branch that fails only for missing keys."""
    if error.validator == "required":
        return True
    if error.validator != "anyOf":
        return False
    branches: dict[Any, list[ValidationError]] = {}
    for sub in error.context or []:
        branches.setdefault(sub.relative_schema_path[0], []).append(sub)
    return any(all(_only_missing_keys(s) for s in subs) for subs in branches.values())


#: Deliberate breakages of the real file (old text, new text, what the schema must say about it).
BROKEN = {
    "misspelt queue key": ("maxConcurrentRuns: 24", "maxConcurentRuns: 24", "Additional properties"),
    "limit not an integer": ("limit: 1\n", "limit: one\n", "'one' is not of type 'integer'"),
    "unknown run launcher": ("type: K8sRunLauncher", "type: KubernetesRunLauncher", "is not one of"),
    "per-value limit misspelt": (
        "applyLimitPerUniqueValue",
        "applyLimitPerValue",
        "'applyLimitPerValue' was unexpected",
    ),
    "GCS logs without their config": (
        "gcsComputeLogManager:",
        "s3ComputeLogManager:",
        "gcsComputeLogManager",
    ),
    "pull policy typo": ("imagePullPolicy: IfNotPresent", "imagePullPolicy: IfMissing", "is not one of"),
    "telemetry as a string": (
        "telemetry:\n  enabled: false",
        "telemetry:\n  enabled: 'no'",
        "is not of type",
    ),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_broken_copy_fails(case: str, tmp_path: Path) -> None:
    old, new, expected = BROKEN[case]
    text = VALUES.read_text()
    assert old in text, f"{case}: the values file no longer contains {old!r}"
    broken = tmp_path / "values.yaml"
    broken.write_text(text.replace(old, new, 1))
    errors = _errors(yaml.safe_load(broken.read_text()))
    assert any(expected in e for e in errors), errors


def test_the_processes_that_create_runs_log_one_planned_event_per_asset() -> None:
    """The daemon (sensor runs) and the webserver (UI launches) create runs: both get Dagster's switch."""
    from isonyc_dagster.defs.runs import PLANNED_EVENTS_ENV

    values = yaml.safe_load(VALUES.read_text())
    for process in ("dagsterDaemon", "dagsterWebserver"):
        assert values[process]["env"][PLANNED_EVENTS_ENV] == "1", process
