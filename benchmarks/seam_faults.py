"""Seam check calibration on a generated map: planted faults against the untouched map.

For every edge between two generated quadrants of the map (``--config``, default the embedded demo in ./data), scores
the untouched edge (a score above the threshold is a false alarm) and the same edge with a fault planted in the
second quadrant (left/top is kept, right/bottom is changed, as a later step would be):

- ``shift±d``: the quadrant shifted by d = 2, 3, 4 px along the edge (its context band was misplaced);
- ``across+d``: shifted by d px across the edge (the infill started d px off);
- ``bright±8`` / ``tint±8``: recoloured by ±8 grey levels (all channels / the red and blue channels opposite);
- ``blind``: the quadrant replaced by another generated quadrant of the map (generated without this context).

Edges are judged only where the render continues across them (``StepInputs.edge_mask``, what the ``seams`` check
uses). Prints detection rate and false alarms for several thresholds, per fault kind at ``DEFAULT_THRESHOLD``, and
the demo's between-step edges that the previous score (``seam_components(..., robust=False)``) flagged.

    .venv/bin/python benchmarks/seam_faults.py [--config project.toml]

Nothing is written: the store is only read.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

import numpy as np

from isonyc_dagster.backends.base import GenerationRequest
from isonyc_dagster.backends.pixelart import PixelArtBackend, StyleParams
from isonyc_dagster.generate.seams import (
    DEFAULT_THRESHOLD,
    QA_THRESHOLD,
    Edge,
    qa_seam_components,
    seam_score,
)
from isonyc_dagster.geo.config import load_project_config
from isonyc_dagster.images import png_bytes
from isonyc_dagster.project import Project

Fault = Callable[[np.ndarray, Edge, np.ndarray], np.ndarray]


def _along(img: np.ndarray, edge: Edge, d: int) -> np.ndarray:
    return np.roll(img, d, axis=0 if edge == "lr" else 1)


def _across(img: np.ndarray, edge: Edge, d: int) -> np.ndarray:
    return np.roll(img, -d, axis=1 if edge == "lr" else 0)


def _recolour(img: np.ndarray, delta: tuple[int, int, int]) -> np.ndarray:
    return np.clip(img.astype(np.int16) + np.array(delta, np.int16), 0, 255).astype(np.uint8)


FAULTS: dict[str, Fault] = {
    **{f"shift{s * d:+d}": (lambda b, e, o, v=s * d: _along(b, e, v)) for d in (2, 3, 4) for s in (1, -1)},
    **{f"across+{d}": (lambda b, e, o, v=d: _across(b, e, v)) for d in (2, 3, 4)},
    "bright+8": lambda b, e, o: _recolour(b, (8, 8, 8)),
    "bright-8": lambda b, e, o: _recolour(b, (-8, -8, -8)),
    "tint+8": lambda b, e, o: _recolour(b, (8, 0, -8)),
    "tint-8": lambda b, e, o: _recolour(b, (-8, 0, 8)),
    "blind": lambda b, e, o: o,
}


def _blind_style(project: Project, inputs, q: tuple[int, int]) -> np.ndarray:
    """Quadrant ``q`` drawn again from its own render by the offline backend with another style seed, without any
    context: the same geometry in other materials and textures (what a model that did not see its context does)."""
    backend = PixelArtBackend(project.config.map, params=StyleParams.parse({"seed": 99}, source="benchmark"))
    aux = inputs.render_aux(*q)
    q_px = project.geometry.q
    request = GenerationRequest(
        template_png=png_bytes(inputs.render_rgb(*q)),
        infill_box=(0, 0, q_px, q_px),
        origin_px=(q[0] * q_px, q[1] * q_px),
        aux={k: aux[k] for k in ("surface", "building", "height") if k in aux},
    )
    return backend.generate_array(request)[0]


def _edges(project: Project, gen: dict) -> list[tuple[tuple[int, int], tuple[int, int], Edge, bool]]:
    plan = project.plan
    out = []
    for q, img in gen.items():
        if img is None:
            continue
        for dx, dy, edge in ((1, 0, "lr"), (0, 1, "tb")):
            nb = (q[0] + dx, q[1] + dy)
            if gen.get(nb) is not None:
                between = plan.step_for_quadrant(*q).key != plan.step_for_quadrant(*nb).key
                out.append((q, nb, edge, between))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=None)
    args = ap.parse_args()
    project = Project(load_project_config(args.config))
    inputs = project.step_inputs()
    gen = {q: inputs.generated_rgb(*q) for q in project.quadrants.keys}
    have = [q for q, v in gen.items() if v is not None]
    if len(have) < 4:
        print("fewer than 4 generated quadrants: generate the map first (isonyc demo)")
        return 1
    ren = {q: inputs.render_rgb(*q) for q in have}
    rng = np.random.default_rng(0)
    edges = _edges(project, gen)
    t0 = time.perf_counter()
    untouched: list[float] = []
    old_flagged: list[str] = []
    planted: dict[str, list[float]] = {k: [] for k in [*FAULTS, "blind-style"]}
    visible: dict[str, list[bool]] = {k: [] for k in planted}
    blind_style: dict[tuple[int, int], np.ndarray] = {}
    for a_q, b_q, edge, between in edges:
        a, b = gen[a_q], gen[b_q]
        assert a is not None and b is not None
        mask = inputs.edge_mask(a_q, b_q)

        def score(img: np.ndarray, a=a, a_q=a_q, b_q=b_q, edge=edge, mask=mask) -> float:
            comp = qa_seam_components(a, img, edge, mask=mask, render_a=ren[a_q], render_b=ren[b_q])
            return comp["score"]

        untouched.append(score(b))
        if untouched[-1] > QA_THRESHOLD / 2:
            print(f"  untouched {a_q}|{b_q} scores {untouched[-1]:.2f}")
        if between and seam_score(a, b, edge, mask=mask) > DEFAULT_THRESHOLD:
            old_flagged.append(f"{a_q}|{b_q}")
        others = [q for q in have if abs(q[0] - b_q[0]) + abs(q[1] - b_q[1]) > 2]
        other = gen[others[int(rng.integers(len(others)))]]
        assert other is not None
        structured = _structured(ren[a_q], ren[b_q], edge)
        if b_q not in blind_style:
            blind_style[b_q] = _blind_style(project, inputs, b_q)
        for name, fault in [*FAULTS.items(), ("blind-style", lambda b, e, o, q=b_q: blind_style[q])]:
            faulty = fault(b, edge, other)
            planted[name].append(score(faulty))
            visible[name].append(_visible(name, b, faulty, edge, structured))
    dt = time.perf_counter() - t0
    _report(edges, untouched, old_flagged, planted, dt)
    _report_visible(planted, visible)
    return 0


def _structured(render_a: np.ndarray, render_b: np.ndarray, edge: Edge, depth: int = 8) -> bool:
    """Whether the render has any structure within ``depth`` px of the edge (not one flat colour, e.g. open water):
    only there can a shifted context band show."""
    band = np.concatenate(
        [render_a[:, -depth:], render_b[:, :depth]]
        if edge == "lr"
        else [render_a[-depth:], render_b[:depth]],
        axis=1 if edge == "lr" else 0,
    )
    return len(np.unique(band.reshape(-1, 3), axis=0)) > 1


def _visible(
    name: str, b: np.ndarray, faulty: np.ndarray, edge: Edge, structured: bool, depth: int = 8
) -> bool:
    """Whether a planted fault changes what a person sees at the edge: a shift needs structure at the edge (a shifted
    open-water texture is the same water), and any fault must change the band beside the edge by >= 2 grey levels
    on average (a blind replacement of water by other water is no seam)."""
    if name.startswith(("shift", "across")) and not structured:
        return False
    band = (slice(None), slice(0, depth)) if edge == "lr" else (slice(0, depth), slice(None))
    return float(np.abs(faulty[band].astype(np.int16) - b[band].astype(np.int16)).mean()) >= 2.0


def _report_visible(planted: dict, visible: dict) -> None:
    thr = QA_THRESHOLD
    scores = np.array([s for k in planted for s, v in zip(planted[k], visible[k], strict=True) if v])
    print(f"visible faults (structure at the edge, band changed >= 2 levels): {scores.size}")
    for t in sorted({2.0, 3.0, 4.0, 5.0, QA_THRESHOLD, 8.0}):
        mark = "   <- QA_THRESHOLD" if t == thr else ""
        print(f"  threshold {t:4.1f}: detection of visible faults {np.mean(scores > t):6.1%}{mark}")
    for k in planted:
        arr = np.array([s for s, v in zip(planted[k], visible[k], strict=True) if v])
        if arr.size:
            print(
                f"  {k:>11}: {arr.size:3d} visible, detected {np.mean(arr > thr):6.1%}, min {arr.min():6.2f}"
            )


def _report(edges: list, untouched: list[float], old_flagged: list[str], planted: dict, dt: float) -> None:
    n_between = sum(1 for e in edges if e[3])
    u = np.array(untouched)
    allp = np.concatenate([np.array(v) for v in planted.values()])
    print(
        f"{len(edges)} untouched edges ({n_between} between steps), {allp.size} planted faults ({dt:.1f} s)"
    )
    print(
        f"previous score (seam_score > {DEFAULT_THRESHOLD:g}) flagged {len(old_flagged)} untouched between-step "
        f"edges: {old_flagged}"
    )
    for thr in sorted({2.0, 3.0, 4.0, 5.0, QA_THRESHOLD, 8.0}):
        mark = "   <- QA_THRESHOLD" if thr == QA_THRESHOLD else ""
        print(
            f"  threshold {thr:4.1f}: detection {np.mean(allp > thr):6.1%}  "
            f"false alarms {np.mean(u > thr):6.1%} ({int(np.sum(u > thr))} of {u.size}){mark}"
        )
    print(f"untouched: p50 {np.median(u):.2f}  p95 {np.percentile(u, 95):.2f}  max {u.max():.2f}")
    for name, v in planted.items():
        arr = np.array(v)
        print(
            f"  {name:>11}: detected {np.mean(arr > QA_THRESHOLD):6.1%}  p5 {np.percentile(arr, 5):6.2f}  "
            f"p50 {np.median(arr):6.2f}  min {arr.min():6.2f}"
        )


if __name__ == "__main__":
    sys.exit(main())
