"""The seam pilot as a Dagster job and as ``isonyc pilot``, offline with the pixel-art backend."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import numpy as np
from PIL import Image

from isonyc_dagster.defs.definitions import build_definitions
from isonyc_dagster.generate.seams import DEFAULT_THRESHOLD
from isonyc_dagster.geo.config import ProjectConfig
from tests.test_cli import isonyc


def test_seam_pilot_job_writes_the_report_and_seamless_tiles(tmp_path: Path) -> None:
    cfg = ProjectConfig(
        store=str(tmp_path / "store"), cache_dir=str(tmp_path / "cache"), output_dir=str(tmp_path / "map")
    )
    defs = build_definitions(cfg)
    out = tmp_path / "pilot"
    result = defs.resolve_job_def("seam_pilot_job").execute_in_process(
        run_config={
            "ops": {
                "seam_pilot": {"config": {"x0": -25, "y0": 19, "w": 2, "h": 2, "k": 2, "out_dir": str(out)}}
            }
        },
        instance=dg.DagsterInstance.ephemeral(),
    )
    assert result.success
    report = json.loads((out / "report.json").read_text())
    assert report["status"] == "done" and len(report["tiles"]) == 4
    assert all(len(t["candidates"]) == 2 for t in report["tiles"])
    mosaic = np.asarray(Image.open(out / "mosaic.png").convert("RGB"))
    assert mosaic.shape == (1024, 1024, 3) and mosaic.std() > 10
    assert (out / "seam_heatmap.png").exists()
    # World-aligned offline backend with the render buffers: every seam is at most a real edge.
    assert report["summary"]["mean_seam"] < DEFAULT_THRESHOLD


def test_pilot_cli_offline(tmp_path: Path) -> None:
    out = tmp_path / "p"
    res = isonyc(
        "pilot",
        "--x0",
        "-25",
        "--y0",
        "19",
        "--w",
        "2",
        "--h",
        "1",
        "--k",
        "1",
        "--out",
        str(out),
        cwd=tmp_path,
    )
    summary = json.loads(res.stdout)
    assert summary["backend"] == "pixelart" and summary["summary"]["tiles"] == 2
    assert sorted(p.name for p in (out / "tiles").iterdir()) == ["-24_19.png", "-25_19.png"]
