"""Phases 3 and 4: validate the inverse model on known styles, and fit styles to target images with CMA-ES.

``validate`` renders styles with known parameters, inverts them with the CNN, renders the prediction and reports
SSIM and per-parameter errors. ``fit`` refines a seed style against a target image: CMA-ES (``cma``) over the
continuous knobs (the normalised, group-prefixed vector of ``SPACE``), between two sweeps over every categorical and
boolean value (CMA-ES needs a continuous space; the discrete knobs are few, so trying each value is cheaper and
exact). The loss is ``1 - SSIM`` plus the RMS colour error (pixels), plus the style distance (colour/texture statistics) when the target is
not a render of this scene: SSIM alone then rewards washing the structure out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from isonyc_dagster.backends.pixelart.params import StyleParams
from isonyc_dagster.stylesearch.metrics import ssim, style_distance, style_stats
from isonyc_dagster.stylesearch.scene import Scene
from isonyc_dagster.stylesearch.space import SPACE, StyleSearchError, stratified_params

if TYPE_CHECKING:
    from isonyc_dagster.stylesearch.model import InverseModel

__all__ = ["FitResult", "fit", "load_reference", "reference_ceiling", "sensitivity_stds", "validate"]


def _scaled(path: str | Path, scale: float) -> np.ndarray:
    p = Path(path)
    try:
        with Image.open(p) as src:
            im = src.convert("RGB")
    except FileNotFoundError:
        raise StyleSearchError(f"reference image {p} does not exist") from None
    except OSError as e:
        raise StyleSearchError(f"reference {p} is not a readable image ({e})") from None
    if scale != 1.0:
        size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
        im = im.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(im)


def load_reference(path: str | Path, size: int, scale: float = 0.5) -> np.ndarray:
    """A ``size``² RGB crop of a reference image, resized by ``scale`` first (to the map's pixel scale).

    The isometric.nyc references draw ~1.5-2× larger than this map's 0.29 m/px camera, so they are halved before
    the centre crop; ``scale`` = 1 keeps a mock-up already at map scale.
    """
    arr = _scaled(path, scale)
    h, w = arr.shape[:2]
    if h < size or w < size:
        raise StyleSearchError(
            f"reference {path} is {w}×{h} after scaling by {scale}; need at least {size}×{size}"
        )
    y0, x0 = (h - size) // 2, (w - size) // 2
    return np.ascontiguousarray(arr[y0 : y0 + size, x0 : x0 + size])


def reference_ceiling(path: str | Path, size: int, scale: float = 0.5) -> float | None:
    """SSIM of the reference crop against the reference's other crops: same style, other buildings.

    The renderer draws this scene's buildings, not the reference's, so pixel SSIM against the reference is bounded
    by what two crops of one image in one style reach when their content differs; this is that bound (the mean of
    the best few of up to 16 other crops), the ceiling the fit can be judged against.
    """
    target = load_reference(path, size, scale)
    arr = _scaled(path, scale)
    h, w = arr.shape[:2]
    cy, cx = (h - size) // 2, (w - size) // 2
    scores = []
    for y in np.linspace(0, h - size, 4).astype(int):
        for x in np.linspace(0, w - size, 4).astype(int):
            if abs(y - cy) < size // 2 and abs(x - cx) < size // 2:
                continue  # overlaps the target crop: same content
            scores.append(ssim(target, arr[y : y + size, x : x + size]))
    if not scores:  # a reference no larger than the scene: no other content to compare with
        return None
    return float(np.mean(sorted(scores)[-3:]))


def validate(model: InverseModel, scene: Scene, n: int = 20, seed: int = 12345) -> dict[str, Any]:
    """Invert ``n`` renders of known (stratified, unseen) styles; SSIM of the re-render and per-parameter errors."""
    styles = stratified_params(n, seed=seed)
    images = np.stack([scene.render(p) for p in styles])
    preds = model.predict(images)
    ssims = [ssim(im, scene.render(p)) for im, p in zip(images, preds, strict=True)]
    per: dict[str, Any] = {}
    for i, name in enumerate(SPACE.cont):
        lo, hi = SPACE.lo[i], SPACE.hi[i]
        err = [
            abs(float(getattr(a, name)) - float(getattr(b, name))) for a, b in zip(styles, preds, strict=True)
        ]
        per[name] = {"mae": float(np.mean(err)), "mae_of_range": float(np.mean(err) / (hi - lo))}
    for name in SPACE.cats + SPACE.bools:
        acc = np.mean([getattr(a, name) == getattr(b, name) for a, b in zip(styles, preds, strict=True)])
        per[name] = {"accuracy": float(acc)}
    return {
        "n": n,
        "ssim_mean": float(np.mean(ssims)),
        "ssim_median": float(np.median(ssims)),
        "ssim_min": float(np.min(ssims)),
        "ssim": ssims,
        "cat_accuracy": float(np.mean([per[c]["accuracy"] for c in SPACE.cats])),
        "bool_accuracy": float(np.mean([per[c]["accuracy"] for c in SPACE.bools])),
        "cont_mae_of_range": float(np.mean([per[c]["mae_of_range"] for c in SPACE.cont])),
        "per_param": per,
        "examples": [(styles[i], preds[i]) for i in range(min(4, n))],
    }


def sensitivity_stds(loss: Callable[[np.ndarray], float], x0: np.ndarray, h: float = 0.08) -> list[float]:
    """Per-knob CMA-ES step multipliers from a finite-difference probe (2 renders per knob).

    Structural knobs (floor height, window spacing) change the loss ~100× more per unit than colour knobs; with one
    step size every sample breaks the structure and the colour knobs get no signal. Steps scale with
    1/sqrt(sensitivity), relative to the median knob; knobs this scene does not show get the widest step.
    """
    base = loss(x0)
    deltas = []
    for i in range(len(x0)):
        d = 0.0
        for sgn in (1.0, -1.0):
            x = x0.copy()
            x[i] = float(np.clip(x[i] + sgn * h, 0.0, 1.0))
            d = max(d, abs(loss(x) - base))
        deltas.append(d)
    arr = np.array(deltas)
    ref = float(np.median(arr[arr > 0])) if (arr > 0).any() else 1.0
    return [float(np.clip(np.sqrt(ref / d), 0.2, 3.0)) if d > 0 else 3.0 for d in arr]


def _polish(
    score: Callable[[StyleParams], tuple[float, float, float]],
    best: StyleParams,
    current: tuple[float, float, float],
) -> tuple[StyleParams, tuple[float, float, float]]:
    """One pass of coordinate search over the continuous knobs (steps of 0.01-0.2 of each range)."""
    for i in range(len(SPACE.cont)):
        x = SPACE.encode(best).cont.astype(np.float64)
        for step in (-0.2, -0.08, -0.03, -0.01, 0.01, 0.03, 0.08, 0.2):
            y = x.copy()
            y[i] = float(np.clip(x[i] + step, 0.0, 1.0))
            cand = SPACE.with_cont(best, y)
            sc = score(cand)
            if sc[0] < current[0]:
                best, current = cand, sc
    return best, current


def _sweep(
    score: Callable[[StyleParams], tuple[float, float, float]],
    best: StyleParams,
    current: tuple[float, float, float],
) -> tuple[StyleParams, tuple[float, float, float]]:
    """Try every value of every categorical and boolean knob in turn; keep each improvement."""
    for name in SPACE.cats + SPACE.bools:
        for v in SPACE.choices.get(name, [False, True]):
            cand = best.model_copy(update={name: v})
            sc = score(cand)
            if sc[0] < current[0]:
                best, current = cand, sc
    return best, current


@dataclass
class FitResult:
    best: StyleParams
    best_loss: float
    best_ssim: float
    best_style_distance: float
    start_ssim: float
    evaluations: int
    seconds: float
    #: best SSIM so far after each CMA-ES generation (for "generations to reach SSIM x").
    ssim_by_generation: list[float] = field(default_factory=list)

    def generations_to(self, target: float) -> int | None:
        for g, s in enumerate(self.ssim_by_generation, start=1):
            if s >= target:
                return g
        return None


def fit(
    target: np.ndarray,
    scene: Scene,
    seed_params: StyleParams,
    *,
    generations: int = 30,
    popsize: int = 10,
    sigma0: float = 0.2,
    style_weight: float = 1.0,
    rms_weight: float = 1.0,
    sweep: bool = True,
    polish: int = 1,
    stop_ssim: float | None = None,
    rng_seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> FitResult:
    """CMA-ES from ``seed_params`` (continuous knobs), then a sweep over the discrete knobs; the best style found."""
    try:
        import cma
    except ImportError:
        raise StyleSearchError(
            "CMA-ES needs the cma package: install the ml extra (`pip install -e '.[ml]'`)"
        ) from None
    if target.shape[:2] != (scene.size, scene.size):
        raise StyleSearchError(
            f"target is {target.shape[1]}×{target.shape[0]}, the scene {scene.size}×{scene.size}"
        )
    t0 = time.perf_counter()
    tstats = style_stats(target)
    cache: dict[str, tuple[float, float, float]] = {}

    def score(p: StyleParams) -> tuple[float, float, float]:
        key = p.model_dump_json()
        if key not in cache:
            img = scene.render(p)
            s = ssim(img, target)
            d = style_distance(img, None, sb=tstats) if style_weight else 0.0
            # The RMS colour error makes palette shifts (which SSIM barely sees) steer the search.
            rms = float(np.sqrt(np.mean((img.astype(np.float64) - target) ** 2))) / 255.0
            cache[key] = ((1.0 - s) + rms_weight * rms + style_weight * d, s, d)
        return cache[key]

    best = seed_params
    best_loss, best_s, best_d = score(best)
    start_s = best_s
    by_gen: list[float] = []
    if sweep:  # a wrong window pattern or outline mode hides every continuous improvement: fix those first
        best, (best_loss, best_s, best_d) = _sweep(score, best, (best_loss, best_s, best_d))
    x0 = np.clip(SPACE.encode(best).cont.astype(np.float64), 0.0, 1.0)
    stds = sensitivity_stds(lambda x: score(SPACE.with_cont(best, x))[0], x0)
    es = cma.CMAEvolutionStrategy(
        x0,
        sigma0,
        {
            "bounds": [0.0, 1.0],
            "popsize": popsize,
            "seed": rng_seed + 1,  # cma draws a random seed for 0
            "verbose": -9,
            "maxiter": generations,
            "CMA_stds": stds,
        },
    )
    for gen in range(generations):
        xs = es.ask()
        # Discrete knobs: the current best's (the sweep below moves them).
        cands = [SPACE.with_cont(best, x) for x in xs]
        scores = [score(c) for c in cands]
        es.tell(xs, [s[0] for s in scores])
        i = int(np.argmin([s[0] for s in scores]))
        if scores[i][0] < best_loss:
            best, (best_loss, best_s, best_d) = cands[i], scores[i]
        by_gen.append(best_s)
        if progress and (gen % 5 == 4 or gen == generations - 1):
            progress(
                f"  generation {gen + 1}/{generations}: loss {best_loss:.4f}, SSIM {best_s:.4f}, style distance {best_d:.4f}"
            )
        if stop_ssim is not None and best_s >= stop_ssim:
            break
    for _ in range(polish):
        best, (best_loss, best_s, best_d) = _polish(score, best, (best_loss, best_s, best_d))
        if progress:
            progress(
                f"  coordinate polish: loss {best_loss:.4f}, SSIM {best_s:.4f}, style distance {best_d:.4f}"
            )
    if sweep:
        best, (best_loss, best_s, best_d) = _sweep(score, best, (best_loss, best_s, best_d))
        if progress:
            progress(
                f"  discrete sweep: loss {best_loss:.4f}, SSIM {best_s:.4f}, style distance {best_d:.4f}"
            )
    return FitResult(
        best=StyleParams.model_validate(best.model_dump()),
        best_loss=best_loss,
        best_ssim=best_s,
        best_style_distance=best_d,
        start_ssim=start_s,
        evaluations=len(cache),
        seconds=time.perf_counter() - t0,
        ssim_by_generation=by_gen,
    )
