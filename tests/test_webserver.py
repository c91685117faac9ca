"""``dagster-webserver -w workspace.yaml`` (what ``dagster dev`` serves) loads the code location: assets, jobs,
the wave scheduler and the in-bounds quadrant partitions are visible through the UI's own GraphQL API."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.project import Project
from tests.dagster_helpers import ASSET_NAMES

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]

QUERY = """
{
  assetNodes { assetKey { path } groupName partitionDefinition { type dimensionTypes { name } }
               partitionKeysByDimension { partitionKeys } dependencyKeys { path } }
  repositoriesOrError { ... on RepositoryConnection { nodes { name jobs { name } sensors { name } } } }
}
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_webserver(env: dict[str, str], port: int) -> subprocess.Popen:
    """``dagster-webserver`` on 127.0.0.1:``port`` over the repository's workspace, in ``env``."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dagster_webserver",
            "-w",
            "workspace.yaml",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _post(url: str, query: str) -> dict:
    req = urllib.request.Request(
        url, data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def test_webserver_shows_the_pipeline(tmp_path: Path) -> None:
    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path), "DAGSTER_DISABLE_TELEMETRY": "1"}
    env.pop("ISONYC_CONFIG", None)
    port = _free_port()
    proc = start_webserver(env, port)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        data = None
        while time.monotonic() < deadline:
            try:
                data = _post(f"{base}/graphql", QUERY)["data"]
                if data["assetNodes"]:
                    break
            except (OSError, KeyError, TypeError):
                pass
            time.sleep(1)
        assert data and data["assetNodes"], "webserver did not come up with the code location"
        nodes = {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}
        assert set(nodes) >= ASSET_NAMES
        # The UI lists exactly the quadrants inside the bounds, in the key order (a range is a compact region).
        assert nodes["render"]["partitionDefinition"]["type"] == "STATIC"
        project = Project(ProjectConfig())
        (keys,) = [d["partitionKeys"] for d in nodes["render"]["partitionKeysByDimension"]]
        assert keys == [f"{x}|{y}" for x, y in project.order.quadrants.keys] and len(keys) == len(
            project.quadrants
        )
        deps = {"/".join(d["path"]) for d in nodes["corners"]["dependencyKeys"]}
        assert deps == {"render", "blocks", "bridges_v", "bridges_h"}
        repo = data["repositoriesOrError"]["nodes"][0]
        assert "wave_scheduler" in {s["name"] for s in repo["sensors"]}
        assert {"blocks_job", "seam_pilot_job", "export_job"} <= {j["name"] for j in repo["jobs"]}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
