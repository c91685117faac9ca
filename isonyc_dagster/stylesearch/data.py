"""Phase 1: synthetic (image, parameters) pairs from the renderer API.

``generate_dataset`` posts stratified styles (``space.stratified_params``) to ``POST /api/raster`` and writes
``images/NNNNNN.png`` and ``params/NNNNNN.json`` (flat keys) under the data directory, plus ``dataset.json``
(count, seed, scene, per-value counts of every categorical). Pairs already on disk are kept (a rerun resumes);
each file is written atomically, so an interrupted run never leaves a torn pair.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.images import decode_rgb
from isonyc_dagster.stylesearch.api import RasterClient
from isonyc_dagster.stylesearch.space import (
    SPACE,
    Encoded,
    StyleSearchError,
    stratified_params,
    to_style_params_flat,
)

__all__ = ["default_dir", "generate_dataset", "load_dataset"]


def default_dir(cache_dir: str | Path) -> Path:
    """The style search's working directory of a project: ``style/`` beside its cache directory."""
    return Path(cache_dir).parent / "style"


def _name(i: int) -> str:
    return f"{i:06d}"


def generate_dataset(
    out_dir: str | Path,
    n: int,
    url: str,
    *,
    seed: int = 0,
    workers: int = 2,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``n`` pairs rendered by the API at ``url``; returns stats (pairs, seconds, pairs/s, counts)."""
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "params").mkdir(parents=True, exist_ok=True)
    styles = stratified_params(n, seed=seed)
    todo = [
        i
        for i in range(n)
        if not (
            (out / "images" / f"{_name(i)}.png").exists() and (out / "params" / f"{_name(i)}.json").exists()
        )
    ]
    t0 = time.perf_counter()
    done = 0
    clients = [RasterClient(url) for _ in range(max(1, workers))]

    def one(k: int) -> None:
        i = todo[k]
        flat = styles[i].as_dict()
        png = clients[k % len(clients)].raster(flat)
        atomic_write(out / "images" / f"{_name(i)}.png", png, fsync=False)
        atomic_write(
            out / "params" / f"{_name(i)}.json", json.dumps(flat, sort_keys=True).encode(), fsync=False
        )

    try:
        with ThreadPoolExecutor(max(1, workers)) as ex:
            for _ in ex.map(one, range(len(todo))):
                done += 1
                if progress and (done % 100 == 0 or done == len(todo)):
                    rate = done / max(time.perf_counter() - t0, 1e-9)
                    progress(f"  {done}/{len(todo)} pairs ({rate:.1f} pairs/s)")
    finally:
        for c in clients:
            c.close()
    dt = time.perf_counter() - t0
    counts = {c: dict(Counter(getattr(s, c) for s in styles)) for c in SPACE.cats + SPACE.bools}
    stats = {
        "pairs": n,
        "new_pairs": len(todo),
        "seconds": round(dt, 3),
        "pairs_per_s": round(len(todo) / dt, 2) if todo and dt > 0 else None,
        "seed": seed,
        "counts": {c: {str(k): v for k, v in cnt.items()} for c, cnt in counts.items()},
    }
    atomic_write(out / "dataset.json", json.dumps(stats, indent=1, sort_keys=True).encode())
    return stats


def load_dataset(data_dir: str | Path, limit: int | None = None) -> tuple[np.ndarray, list[Encoded]]:
    """Images (N, H, W, 3) uint8 and their encoded parameters, in file order."""
    d = Path(data_dir)
    names = sorted(p.stem for p in (d / "params").glob("*.json")) if (d / "params").is_dir() else []
    names = [n for n in names if (d / "images" / f"{n}.png").exists()]
    if not names:
        raise StyleSearchError(
            f"no pairs in {d} (images/*.png + params/*.json); run `isonyc style data` first"
        )
    names = names[:limit] if limit else names
    imgs, encs = [], []
    for n in names:
        params = to_style_params_flat(
            json.loads((d / "params" / f"{n}.json").read_text()), source=f"{d}/params/{n}.json"
        )
        imgs.append(decode_rgb((d / "images" / f"{n}.png").read_bytes()))
        encs.append(SPACE.encode(params))
    shapes = {im.shape for im in imgs}
    if len(shapes) != 1:
        raise StyleSearchError(
            f"images in {d} differ in size {sorted(shapes)}; regenerate the data for one scene"
        )
    return np.stack(imgs), encs
