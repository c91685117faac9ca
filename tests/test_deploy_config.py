"""``deploy/dagster.yaml`` is a valid Dagster instance config, loads on PostgreSQL from environment variables, and
``deploy/helm/values.yaml`` says the same (run queue limits, monitoring, GCS compute logs, K8s run launcher)."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml
from dagster._config import process_config, validate_config
from dagster._config.field_utils import convert_potential_field
from dagster._core.instance.config import dagster_instance_config_schema
from dagster._core.run_coordinator import QueuedRunCoordinator

from tests.pg_helpers import fresh_database

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "dagster.yaml"
VALUES = REPO / "deploy" / "helm" / "values.yaml"


def _deploy() -> dict[str, Any]:
    return yaml.safe_load(DEPLOY.read_text())


def _env(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for k, v in values.items():
        monkeypatch.setenv(k, v)


def test_deploy_yaml_matches_dagsters_instance_schema() -> None:
    result = validate_config(dagster_instance_config_schema(), _deploy())
    assert result.success, [e.message for e in result.errors or []]


def test_deploy_yaml_keeps_secrets_and_addresses_in_the_environment() -> None:
    cfg = _deploy()
    db = cfg["storage"]["postgres"]["postgres_db"]
    for key in ("hostname", "port", "username", "password", "db_name"):
        assert set(db[key]) == {"env"}, key
    assert set(cfg["compute_logs"]["config"]["bucket"]) == {"env"}

    # Anything named like a credential, anywhere in the file, is an environment reference.
    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                if re.search(r"(?i)password|token|credential", str(k)):
                    assert isinstance(v, dict) and set(v) == {"env"}, k
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(cfg)


def test_deploy_instance_loads_on_postgres_from_env(
    pg_cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The whole instance, on the test's PostgreSQL over TCP with a password from the environment. The run launcher
    and compute-log manager talk to Kubernetes and GCS when built: their sections are checked against their own
    classes' config schemas below, and replaced by the defaults here."""
    db = fresh_database(pg_cluster, "deploy")
    password = secrets.token_urlsafe(16)
    pg_cluster.psql(f"CREATE ROLE deployer LOGIN PASSWORD '{password}'")
    pg_cluster.psql(f"ALTER DATABASE {db} OWNER TO deployer")
    _env(
        monkeypatch,
        DAGSTER_PG_HOST="127.0.0.1",
        DAGSTER_PG_PORT=str(pg_cluster.port),
        DAGSTER_PG_USER="deployer",
        DAGSTER_PG_PASSWORD=password,
        DAGSTER_PG_DB=db,
    )
    cfg = _deploy()
    cfg.pop("compute_logs")
    cfg.pop("run_launcher")
    # Resuming a run whose worker died is the K8s launcher's ability; the default launcher has none.
    cfg["run_monitoring"]["max_resume_run_attempts"] = 0
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(cfg))
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        coordinator = instance.run_coordinator
        assert isinstance(coordinator, QueuedRunCoordinator)
        limits = coordinator.get_run_queue_config().tag_concurrency_limits
        assert {"key": "isonyc/asset", "value": "blocks", "limit": 2} in limits
        assert instance.run_monitoring_enabled
        assert instance.get_runs() == []
    assert password not in (home / "dagster.yaml").read_text()


def test_k8s_run_launcher_section_matches_its_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    k8s = pytest.importorskip("dagster_k8s", reason="dagster-k8s is not installed (the image installs it)")
    _env(
        monkeypatch,
        DAGSTER_RUN_IMAGE="registry/isonyc-dagster:1",
        DAGSTER_K8S_NAMESPACE="isonyc",
        DAGSTER_INSTANCE_CONFIG_MAP="dagster-instance",
        DAGSTER_PG_PASSWORD_SECRET="dagster-postgresql-secret",
    )
    section = _deploy()["run_launcher"]
    assert (section["module"], section["class"]) == ("dagster_k8s", "K8sRunLauncher")
    out = process_config(
        convert_potential_field(k8s.K8sRunLauncher.config_type()).config_type, section["config"]
    )
    assert out.success, [e.message for e in out.errors or []]
    assert out.value["job_image"] == "registry/isonyc-dagster:1"


#: ``GCSComputeLogManager.config_type()`` of dagster-gcp 0.29.27, for machines without dagster-gcp (it pins an
#: older pandas than this project's); with dagster-gcp installed the class's own schema is used instead.
_GCS_FIELDS = {
    "bucket": dg.StringSource,
    "local_dir": dg.Field(dg.StringSource, is_required=False),
    "prefix": dg.Field(dg.StringSource, is_required=False, default_value="dagster"),
    "json_credentials_envvar": dg.Field(dg.StringSource, is_required=False),
    "upload_interval": dg.Field(dg.Noneable(int), is_required=False, default_value=None),
    "show_url_only": dg.Field(bool, is_required=False, default_value=False),
}


def test_gcs_compute_log_section_matches_its_schema(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAGSTER_COMPUTE_LOG_BUCKET", "isonyc-logs")
    section = _deploy()["compute_logs"]
    assert (section["module"], section["class"]) == (
        "dagster_gcp.gcs.compute_log_manager",
        "GCSComputeLogManager",
    )
    try:
        from dagster_gcp.gcs.compute_log_manager import GCSComputeLogManager

        fields = GCSComputeLogManager.config_type()
    except ImportError:
        fields = _GCS_FIELDS
    out = process_config(convert_potential_field(fields).config_type, section["config"])
    assert out.success, [e.message for e in out.errors or []]
    assert out.value["bucket"] == "isonyc-logs"
    bad = process_config(
        convert_potential_field(fields).config_type, {**section["config"], "bucket_name": "x"}
    )
    assert not bad.success  # the schema does catch a misspelt key


def test_helm_values_say_what_deploy_yaml_says() -> None:
    values = yaml.safe_load(VALUES.read_text())
    cfg = _deploy()
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["tagConcurrencyLimits"] == cfg["run_coordinator"]["config"]["tag_concurrency_limits"]
    assert queued["maxConcurrentRuns"] == cfg["run_coordinator"]["config"]["max_concurrent_runs"]
    camel = {
        "".join(w if i == 0 else w.title() for i, w in enumerate(k.split("_"))): v
        for k, v in cfg["run_monitoring"].items()
    }
    assert values["dagsterDaemon"]["runMonitoring"] == camel
    assert values["runLauncher"]["type"] == cfg["run_launcher"]["class"] == "K8sRunLauncher"
    assert values["computeLogManager"]["type"] == cfg["compute_logs"]["class"]
    gcs = values["computeLogManager"]["config"]["gcsComputeLogManager"]
    assert gcs["prefix"] == cfg["compute_logs"]["config"]["prefix"]
    assert values["postgresql"]["enabled"] is False and "postgresqlPassword" not in values["postgresql"]
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert deployment["dagsterApiGrpcArgs"][-1] == "isonyc_dagster.defs.definitions"
    # The image the values name is the one deploy/Dockerfile builds: its code server serves the same module.
    assert "isonyc_dagster.defs.definitions" in (REPO / "deploy" / "Dockerfile").read_text()
