"""Seam scores: how visible is the boundary between two adjacent tiles?

A generated quadrant is only good if it continues its accepted neighbours without a visible edge.
:func:`seam_score` compares an ``overlap_px`` band on each side of the shared edge (``a``'s last
lines, ``b``'s first lines):

- **step** (colour continuity) — per line along the edge, the mean absolute colour difference
  *across* the boundary (``a``'s last pixel vs ``b``'s first) minus the *largest* difference between
  adjacent pixels *within* the two bands on that line; averaged along the edge. Texture, window grids
  and dithering are not seams (a cut through one continuous image has an across-jump no larger than
  its neighbouring jumps), while a hard edge, a structure that does not line up or a texture break
  makes the across-jump stand out.
- **tone** (gradient continuity) — the *signed* across-jump averaged over a 64 px window along the
  edge, minus the largest equally averaged signed gradient among the two lines on each side nearest
  the boundary. A brightness or tint shift gives a consistent sign that texture does not, so it shows
  even where texture hides it, and a strong line a few pixels inside a band cannot mask it.

``score = step + tone``, in 8-bit grey levels (mean over RGB). **0 = perfect.** Measured on the real
pixel-art references (``benchmarks/seam_calibration.py``, 256 px seams): true cuts through one image
score median 0.75, 95th percentile ≈ 9 (JPEG blocks and window grids that happen to lie on the cut);
a different image on the other side ≈ 43; a 4 px misalignment ≈ 6.6; a uniform +10 brightness shift
≈ 6.4. On the same cut the true continuation scores lower than a broken one in 86–98 % of cases, so
ranking K candidates works well. :data:`DEFAULT_THRESHOLD` = 6 flags 7 % of true cuts and catches
most foreign content and gross shifts; use it for QA warnings, not as a verdict.

Limit: a real edge that runs exactly along the boundary for a long stretch (a wall corner on the
quadrant line, a block grid aligned with it) is locally indistinguishable from a seam and scores
high; such tiles need a human look, which is what the QA flag asks for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np
from scipy.ndimage import uniform_filter1d

#: "lr": ``a`` is left of ``b`` (vertical boundary); "tb": ``a`` is above ``b`` (horizontal boundary).
Edge = Literal["lr", "tb"]
#: A scored boundary: ((x, y) of the left/top quadrant, (x, y) of the right/bottom quadrant).
EdgeKey = tuple[tuple[int, int], tuple[int, int]]

#: Scores above this are visible seams (calibrated on the style references; 0 = perfect).
DEFAULT_THRESHOLD = 6.0
#: Window along the edge (px) over which signed jumps are averaged for the tone term.
_TONE_WINDOW = 64
#: The tone term compares with this many gradient lines on each side, nearest the boundary first.
_TONE_NEAR = 2


def _as_rgb_float(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ValueError(f"{name} must be an (H, W, 3|4) or (H, W) image array, got shape {arr.shape}")
    return arr[..., :3].astype(np.float32)


def _bands(a: np.ndarray, b: np.ndarray, edge: Edge, overlap_px: int) -> tuple[np.ndarray, np.ndarray]:
    """Bands as (L, D, 3): L along the edge, D across it; ``A[:, -1]`` and ``B[:, 0]`` touch."""
    A = _as_rgb_float(a, "a")
    B = _as_rgb_float(b, "b")
    if edge == "lr":
        if A.shape[0] != B.shape[0]:
            raise ValueError(
                f"left/right images must have the same height, got {A.shape[0]} and {B.shape[0]}"
            )
        n = min(overlap_px, A.shape[1], B.shape[1])
        return A[:, A.shape[1] - n :], B[:, :n]
    if edge == "tb":
        if A.shape[1] != B.shape[1]:
            raise ValueError(f"top/bottom images must have the same width, got {A.shape[1]} and {B.shape[1]}")
        n = min(overlap_px, A.shape[0], B.shape[0])
        return A[A.shape[0] - n :].transpose(1, 0, 2), B[:n].transpose(1, 0, 2)
    raise ValueError(f"edge must be 'lr' (a left of b) or 'tb' (a above b), got {edge!r}")


def seam_components(
    a: np.ndarray,
    b: np.ndarray,
    edge: Edge,
    overlap_px: int = 8,
    mask: np.ndarray | None = None,
    *,
    robust: bool = False,
) -> dict[str, float]:
    """The parts of :func:`seam_score`: ``score``, ``step``, ``tone`` and the raw ``across``/``within`` means.

    ``robust`` replaces the windowed tone term by the median signed jump (what :func:`qa_seam_components` uses).

    ``mask`` (bool, one value per pixel along the edge) limits the averages to those positions, e.g. to where
    the render continues across the edge (:func:`continuity_mask`); no position left means nothing to judge: 0.
    """
    if overlap_px < 2:
        raise ValueError(f"overlap_px must be >= 2 (a band needs two lines), got {overlap_px}")
    A, B = _bands(a, b, edge, overlap_px)
    if A.shape[1] < 2 or B.shape[1] < 2:
        raise ValueError("images are too small for a seam band (need at least 2 pixels across the edge)")
    jump = B[:, 0] - A[:, -1]  # (L, 3) signed colour jump across the boundary
    grads = np.concatenate([np.diff(A, axis=1), np.diff(B, axis=1)], axis=1)  # (L, 2·(D-1), 3)

    if mask is None:
        mask = np.ones(A.shape[0], bool)
    mask = np.asarray(mask, bool)
    if mask.shape != (A.shape[0],):
        raise ValueError(
            f"mask must have one value per pixel along the edge ({A.shape[0]}), got {mask.shape}"
        )
    if not mask.any():
        return {"score": 0.0, "step": 0.0, "tone": 0.0, "across": 0.0, "within": 0.0}
    across_l = np.abs(jump).mean(-1)  # (L,)
    within_l = np.abs(grads).mean(-1)  # (L, n)
    step = float(np.maximum(0.0, across_l - within_l.max(axis=1))[mask].mean())

    # Tone: compare with the gradients right next to the boundary only. A strong line a few pixels
    # inside a band (a road edge, a wall) must not mask a brightness shift at the boundary itself.
    k = min(_TONE_NEAR, A.shape[1] - 1, B.shape[1] - 1)
    near = np.concatenate([np.diff(A, axis=1)[:, -k:], np.diff(B, axis=1)[:, :k]], axis=1)  # (L, 2k, 3)
    if robust:
        # The median signed jump against the median signed gradients beside it: a recolour of the whole quadrant
        # moves every position along the edge; one wall painted another colour moves a few, and is scenery.
        tone = float(
            np.maximum(
                0.0, np.abs(np.median(jump[mask], axis=0)) - np.abs(np.median(near[mask], axis=0)).max(axis=0)
            ).mean()
        )
    else:
        window = min(_TONE_WINDOW, A.shape[0])
        # Averages along the edge over the judged positions only, so scenery edges outside the mask do not bleed.
        w = mask.astype(np.float32)
        norm = np.maximum(uniform_filter1d(w, window, mode="nearest"), 1e-6)
        jump_s = uniform_filter1d(jump * w[:, None], window, axis=0, mode="nearest") / norm[:, None]  # (L, 3)
        near_s = (
            uniform_filter1d(near * w[:, None, None], window, axis=0, mode="nearest") / norm[:, None, None]
        )
        tone = float(np.maximum(0.0, np.abs(jump_s) - np.abs(near_s).max(axis=1)).mean(-1)[mask].mean())
    return {
        "score": step + tone,
        "step": step,
        "tone": tone,
        "across": float(across_l[mask].mean()),
        "within": float(within_l[mask].mean()),
    }


def seam_score(
    a: np.ndarray, b: np.ndarray, edge: Edge, overlap_px: int = 8, mask: np.ndarray | None = None
) -> float:
    """Visibility of the seam between adjacent images ``a`` and ``b`` (0 = perfect; see module doc).

    ``edge="lr"``: ``a`` is left of ``b``; ``edge="tb"``: ``a`` is above ``b``. Images are (H, W, 3)
    or (H, W, 4) (alpha ignored) or greyscale (H, W) arrays; the shared side must have equal length.
    ``mask`` limits the score to some positions along the edge (see :func:`seam_components`).
    """
    return seam_components(a, b, edge, overlap_px, mask)["score"]


#: Band depth (px) and search reach (px, both axes) of the render-alignment term of :func:`qa_seam_components`.
_ALIGN_DEPTH = 32
_ALIGN_REACH = 5
#: A band that matches its render nowhere is foreign content when the render has edges on this share of its pixels.
_ALIGN_FOREIGN_STRUCTURE = 0.02
#: Best correlations below this count as no match at all (a band drawn from other geometry).
_ALIGN_MIN_CORR = 0.15
#: Offsets (px, each axis) within which a band counts as in register with its render.
_ALIGN_TOLERANCE = 1
#: Grey levels per unit of relative correlation loss (the alignment term's scale in the QA score).
ALIGN_WEIGHT = 30.0
#: Scores above this fail the ``seams`` QA check (:func:`qa_seam_score`; ``benchmarks/seam_faults.py``).
QA_THRESHOLD = 5.0


def _edges(img: np.ndarray) -> np.ndarray:
    """Gradient magnitude of the grey image, capped so one hard outline does not outweigh the rest."""
    g = img.astype(np.float32).mean(-1)
    gx = np.abs(np.diff(g, axis=1, prepend=g[:, :1]))
    gy = np.abs(np.diff(g, axis=0, prepend=g[:1]))
    return np.minimum(gx + gy, 64.0)


def _registration_loss(gen: np.ndarray, render: np.ndarray) -> float | None:
    """How much better the generated band matches its render when shifted: 0 = in place, 1 = nothing of the render
    in it (foreign content); ``None`` when the render has too little structure to tell (open water, flat ground).
    Bands are (L, D, 3): L along the edge, D across it."""
    e_gen, e_ren = _edges(gen), _edges(render)
    r = _ALIGN_REACH
    L, D = e_gen.shape
    core = e_ren[r : L - r, r : D - r]
    structure = np.count_nonzero(core > 8.0) / core.size
    core = core - core.mean()
    cn = float(np.sqrt((core * core).sum()))
    if cn < 1e-6:
        return None
    corr = {}
    for s in range(-r, r + 1):
        for t in range(-r, r + 1):
            win = e_gen[r + s : L - r + s, r + t : D - r + t]
            win = win - win.mean()
            wn = float(np.sqrt((win * win).sum()))
            corr[(s, t)] = float((win * core).sum()) / (wn * cn) if wn > 1e-6 else 0.0
    best = max(corr.values())
    if best < _ALIGN_MIN_CORR:
        # No match anywhere: foreign content where the render has clear structure, else too little to tell.
        return 1.0 if structure >= _ALIGN_FOREIGN_STRUCTURE else None
    # Outlines drawn a pixel to one side of the render's edges are style, not misregistration: a band whose best
    # match lies within ``_ALIGN_TOLERANCE`` px of where it is counts as in place.
    s_best, t_best = max(corr, key=lambda k: corr[k])
    if max(abs(s_best), abs(t_best)) <= _ALIGN_TOLERANCE:
        return 0.0
    return float(np.clip(1.0 - corr[(0, 0)] / best, 0.0, 1.0))


def misalignment(
    a: np.ndarray,
    b: np.ndarray,
    render_a: np.ndarray,
    render_b: np.ndarray,
    edge: Edge,
    depth: int = _ALIGN_DEPTH,
) -> float:
    """How far ``b`` is out of register with its render compared with ``a``: a context band shifted by a few pixels
    (along or across the edge) moves every structure of one side off the geometry both sides were drawn from.
    0 when either side's render has too little structure to tell."""
    A, B = _bands(a, b, edge, depth)
    RA, RB = _bands(render_a, render_b, edge, depth)
    la, lb = _registration_loss(A, RA), _registration_loss(B, RB)
    if la is None or lb is None:
        return 0.0
    return max(0.0, lb - la, la - lb)


def qa_seam_components(
    a: np.ndarray,
    b: np.ndarray,
    edge: Edge,
    *,
    mask: np.ndarray | None = None,
    render_a: np.ndarray | None = None,
    render_b: np.ndarray | None = None,
    overlap_px: int = 8,
) -> dict[str, float]:
    """The ``seams`` QA score of one edge and its parts: ``step`` (hard edges), ``tone`` (median signed jump: a
    recolour), ``align`` (registration against the renders: a shifted context band, weighted by ``ALIGN_WEIGHT``).

    Calibrated on planted faults against an untouched map (``benchmarks/seam_faults.py``): unlike
    :func:`seam_score`, a long scenery edge on the quadrant line (one wall painted two colours) does not fail it.
    """
    base = seam_components(a, b, edge, overlap_px, mask, robust=True)
    align = 0.0
    if render_a is not None and render_b is not None:
        align = ALIGN_WEIGHT * misalignment(a, b, render_a, render_b, edge)
    return {
        "score": base["step"] + base["tone"] + align,
        "step": base["step"],
        "tone": base["tone"],
        "align": align,
    }


def qa_seam_score(
    a: np.ndarray,
    b: np.ndarray,
    edge: Edge,
    *,
    mask: np.ndarray | None = None,
    render_a: np.ndarray | None = None,
    render_b: np.ndarray | None = None,
) -> float:
    """The ``seams`` QA score of one edge (see :func:`qa_seam_components`); above ``QA_THRESHOLD`` fails."""
    return qa_seam_components(a, b, edge, mask=mask, render_a=render_a, render_b=render_b)["score"]


def continuity_mask(
    surface_a: np.ndarray,
    building_a: np.ndarray,
    surface_b: np.ndarray,
    building_b: np.ndarray,
    edge: Edge,
    depth: int = 8,
) -> np.ndarray:
    """Positions along the edge where the *render* continues across it: the same surface class and building on
    the ``depth`` pixels either side (the default matches the scoring band, ``overlap_px``). Only there is a colour jump a seam; elsewhere the scene itself has an edge
    (a wall corner, a roof line, a shoreline) lying on the quadrant line, which a scorer would otherwise flag.
    """
    if edge == "lr":
        sa, ba, sb, bb = (
            surface_a[:, -depth:],
            building_a[:, -depth:],
            surface_b[:, :depth],
            building_b[:, :depth],
        )
    elif edge == "tb":
        sa, ba = surface_a[-depth:].T, building_a[-depth:].T
        sb, bb = surface_b[:depth].T, building_b[:depth].T
    else:
        raise ValueError(f"edge must be 'lr' or 'tb', got {edge!r}")
    s = np.concatenate([sa, sb], axis=1)
    b = np.concatenate([ba, bb], axis=1)
    return (s == s[:, :1]).all(axis=1) & (b == b[:, :1]).all(axis=1)


def score_step_seams(
    images_by_quadrant: Mapping[tuple[int, int], np.ndarray],
    context_by_quadrant: Mapping[tuple[int, int], np.ndarray],
    overlap_px: int = 8,
    masks: Mapping[EdgeKey, np.ndarray] | None = None,
) -> dict[EdgeKey, float]:
    """Score every edge between a newly generated quadrant and an adjacent accepted context quadrant.

    Keys are ((x, y) left/top, (x, y) right/bottom) in quadrant coordinates (y grows down). Edges
    between two new quadrants are one model output and are not scored; quadrants present in both
    mappings count as new. ``masks`` (per edge key, see :func:`continuity_mask`) limits an edge's score to
    where the render continues across it.
    """
    scores: dict[EdgeKey, float] = {}
    for (x, y), img in images_by_quadrant.items():
        for dx, dy in ((-1, 0), (1, 0), (0, -1), (0, 1)):
            nb = (x + dx, y + dy)
            if nb in images_by_quadrant or nb not in context_by_quadrant:
                continue
            ctx = context_by_quadrant[nb]
            first, second = ((nb, ctx), ((x, y), img)) if dx + dy < 0 else (((x, y), img), (nb, ctx))
            key = (first[0], second[0])
            mask = None if masks is None else masks.get(key)
            scores[key] = seam_score(first[1], second[1], "lr" if dx else "tb", overlap_px, mask)
    return scores


def aggregate(scores: Mapping[EdgeKey, float] | Mapping[str, float]) -> float:
    """One number per candidate: the worst seam (a single bad edge is what a viewer notices)."""
    return max(scores.values(), default=0.0)
