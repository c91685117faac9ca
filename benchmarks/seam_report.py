"""Seam statistics of a generated map: every edge between quadrants of two different generation steps.

Usage: ``python benchmarks/seam_report.py [--config project.toml]`` (default: the embedded demo in ./data).
Prints the count, mean, median, 95th percentile and maximum seam score, and how many edges exceed the QA threshold,
next to the same statistics for edges *inside* steps (one model output: the baseline a seam can at best reach) and
for edges between steps judged only where the render continues across them (what the ``seams`` check reports).
"""

from __future__ import annotations

import argparse
import io

import numpy as np
from PIL import Image

from isonyc_dagster.defs.assets.steps import StepInputs
from isonyc_dagster.generate.seams import DEFAULT_THRESHOLD, seam_score
from isonyc_dagster.geo.config import load_project_config
from isonyc_dagster.project import Project


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    project = Project(load_project_config(args.config))
    store, plan = project.store, project.plan
    cache: dict[tuple[int, int], np.ndarray | None] = {}

    def rgb(q: tuple[int, int]) -> np.ndarray | None:
        if q not in cache:
            png = store.get_tile("generation", *q)
            cache[q] = None if png is None else np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
        return cache[q]

    inputs = StepInputs(project)
    between, within, masked = [], [], []
    for q in project.quadrants.keys:
        for dx, dy, edge in ((1, 0, "lr"), (0, 1, "tb")):
            nb = (q[0] + dx, q[1] + dy)
            if nb not in project.quadrants or rgb(q) is None or rgb(nb) is None:
                continue
            same = plan.step_for_quadrant(*q).key == plan.step_for_quadrant(*nb).key
            (within if same else between).append(seam_score(rgb(q), rgb(nb), edge))
            if not same:
                masked.append(seam_score(rgb(q), rgb(nb), edge, mask=inputs.edge_mask(q, nb)))
    for name, scores in (("between steps", between), ("within a step", within), ("between, masked", masked)):
        if not scores:
            print(f"{name}: no edges")
            continue
        a = np.array(scores)
        print(
            f"{name:>14}: {len(a):5d} edges  mean {a.mean():5.2f}  median {np.median(a):5.2f}  "
            f"p95 {np.percentile(a, 95):5.2f}  max {a.max():5.2f}  > {DEFAULT_THRESHOLD:g}: {(a > DEFAULT_THRESHOLD).sum()}"
        )


if __name__ == "__main__":
    main()
