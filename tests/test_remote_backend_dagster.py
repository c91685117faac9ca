"""A remote backend through the Dagster layer: the step runs against a Modal-protocol server on 127.0.0.1 with
credentials from the environment (dg.EnvVar), and the secrets appear nowhere — not in the event log, metadata,
stored provenance or any file the pipeline wrote."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.geo.config import ProjectConfig
from isonyc_dagster.project import Project
from tests.dagster_helpers import project_config
from tests.fake_apis import FakeModal

KEY_ID = "wk-DAGSTER-TOKEN-ID-777"
KEY_SECRET = "ws-DAGSTER-TOKEN-SECRET-999"


def test_modal_backend_step_with_env_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with FakeModal(token_id=KEY_ID, token_secret=KEY_SECRET) as api:
        monkeypatch.setenv("ISONYC_MODAL_URL", f"{api.url}/edit_b64")
        monkeypatch.setenv("ISONYC_MODAL_KEY", KEY_ID)
        monkeypatch.setenv("ISONYC_MODAL_SECRET", KEY_SECRET)
        base = project_config(tmp_path, 0, 0, 2, 2)
        cfg: ProjectConfig = base.model_copy(update={"backend": "modal"})
        defs = build_definitions(cfg)
        (tmp_path / "dh").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
            r = defs.resolve_job_def("render_job").execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": "0|0",
                    "dagster/asset_partition_range_end": "1|1",
                },
            )
            assert r.success
            step = defs.resolve_job_def("blocks_job").execute_in_process(
                instance=instance, partition_key="0|0"
            )
            assert step.success
            assert len(api.api_requests("edit_b64")) == 1
            prov = Project(cfg).store.active("generation", 0, 0).provenance
            assert prov["backend"] == "modal" and prov["model_id"]
            logs = [str(e) for e in instance.all_logs(step.run_id)]

        texts = logs + [str(prov)]
        for path in tmp_path.rglob("*"):
            if path.is_file() and path.stat().st_size < 50_000_000:
                texts.append(path.read_bytes().decode("latin-1"))
        for t in texts:
            assert KEY_ID not in t and KEY_SECRET not in t


def test_failed_range_run_retries_without_paying_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two blocks in one run; the model fails on the second. Dagster's retry of the step reuses the block that was
    already committed (no second model call, still version 1) and generates only the missing one."""
    with FakeModal() as api:
        api.faults.extend(["", "500", "500"])  # call 1 ok; the second block fails both of its 2 attempts
        monkeypatch.setenv("ISONYC_MODAL_URL", f"{api.url}/edit_b64")
        monkeypatch.setenv("ISONYC_BACKEND_SETTINGS", '{"max_attempts": 2, "backoff_base_s": 0.01}')
        cfg = project_config(tmp_path, 0, 0, 5, 2).model_copy(update={"backend": "modal"})
        defs = build_definitions(cfg)
        store = Project(cfg).store
        (tmp_path / "dh").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
            tags = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "5|2"}
            assert defs.resolve_job_def("render_job").execute_in_process(instance=instance, tags=tags).success
            run = defs.resolve_job_def("blocks_job").execute_in_process(
                instance=instance,
                tags={
                    "dagster/asset_partition_range_start": "0|0",
                    "dagster/asset_partition_range_end": "1|0",
                },
            )
            assert run.success
            retries = [e for e in run.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
            assert len(retries) == 1
            assert len(api.api_requests("edit_b64")) == 4  # 1 ok + 2 failed + 1 ok on the retry
            first = store.versions("generation", 0, 0)
            second = store.versions("generation", 3, 0)
            assert [v.version for v in first] == [1] and [v.version for v in second] == [1]
            assert {k for k in instance.get_materialized_partitions(dg.AssetKey("blocks"))} == {"0|0", "1|0"}


def test_k_candidates_keep_the_best_seams_and_store_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """K = 3 on a bridge (context on both sides): three model calls with different seeds, every candidate stored
    with its seam scores, and the active generation is the candidate with the lowest worst-seam score."""
    from isonyc_dagster.defs.resources import GeneratorResource

    with FakeModal() as api:
        monkeypatch.setenv("ISONYC_MODAL_URL", f"{api.url}/edit_b64")
        cfg = project_config(tmp_path, 0, 0, 5, 2).model_copy(update={"backend": "modal"})
        defs = build_definitions(cfg)
        settings = f'{{"url": "{api.url}/edit_b64"}}'
        k3 = build_definitions(
            cfg, generator=GeneratorResource(backend="modal", settings_json=settings, candidates=3)
        )
        store = Project(cfg).store
        (tmp_path / "dh").mkdir()
        with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
            tags = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "5|2"}
            assert defs.resolve_job_def("render_job").execute_in_process(instance=instance, tags=tags).success
            tags = {"dagster/asset_partition_range_start": "0|0", "dagster/asset_partition_range_end": "1|0"}
            assert defs.resolve_job_def("blocks_job").execute_in_process(instance=instance, tags=tags).success
            calls = len(api.api_requests("edit_b64"))
            assert (
                k3.resolve_job_def("bridges_v_job")
                .execute_in_process(instance=instance, partition_key="0|0")
                .success
            )
        assert len(api.api_requests("edit_b64")) == calls + 3
        seeds = [r.json()["seed"] for r in api.api_requests("edit_b64")[-3:]]
        assert len(set(seeds)) == 3
        prov = store.active("generation", 2, 0).provenance
        cands = prov["candidates"]
        assert len(cands) == 3 and all(store.has_blob(c["output_sha256"]) for c in cands)
        best = min(cands, key=lambda c: c["score"])
        assert prov["output_sha256"] == best["output_sha256"] and prov["seam_score"] == best["score"]
        assert len({c["score"] for c in cands}) > 1  # the seeds really gave different seams
