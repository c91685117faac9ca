"""Speed and sample efficiency of the style search (run on demand, not in CI).

    .venv/bin/python benchmarks/bench_style.py --dir data/style [--pairs 60] [--targets 4]

``--dir`` is an ``isonyc style`` working directory (``scene.npz``; ``model.pt`` for the last two parts). Prints:

1. Pairs per second from ``POST /api/raster`` (1 and 2 client workers), against the same renders drawn in-process
   without HTTP (baseline: the API's overhead is the ratio).
2. Inverse-model inference time per image at 128² on the CPU (target ≤ 10 ms): the standard ResNet-18 (width 64,
   random weights: timing needs no training) at 1 and 2 threads, and the trained model of ``--dir``.
3. CMA-ES generations to reach SSIM 0.85 on renders of known styles, from the CNN's seed vs from a random seed,
   in the same run (same targets, same CMA-ES settings; ``--generations`` is the cap).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from isonyc_dagster.backends.pixelart.params import StyleParams  # noqa: E402
from isonyc_dagster.stylesearch.api import start_raster_server  # noqa: E402
from isonyc_dagster.stylesearch.data import generate_dataset  # noqa: E402
from isonyc_dagster.stylesearch.fit import fit  # noqa: E402
from isonyc_dagster.stylesearch.metrics import ssim  # noqa: E402
from isonyc_dagster.stylesearch.scene import Scene  # noqa: E402
from isonyc_dagster.stylesearch.space import stratified_params  # noqa: E402


def bench_api(scene: Scene, n: int) -> None:
    styles = stratified_params(n, seed=42)
    t0 = time.perf_counter()
    for p in styles:
        scene.render(p)
    direct = n / (time.perf_counter() - t0)
    print(f"in-process renders (baseline): {direct:.1f} /s  ({scene.size}² crop)")
    with start_raster_server(scene) as server:
        for workers in (1, 2):
            with tempfile.TemporaryDirectory() as tmp:
                stats = generate_dataset(tmp, n, server.url, seed=42, workers=workers)
            rate = stats["pairs_per_s"]
            print(f"API pairs/s, {workers} worker(s): {rate:.1f} /s  (ratio to baseline {rate / direct:.2f})")


def bench_inference(work: Path) -> None:
    import torch

    from isonyc_dagster.stylesearch.model import InverseModel, _build

    x = torch.zeros(1, 3, 128, 128)
    for threads in (1, 2):
        torch.set_num_threads(threads)
        net = _build(64).eval()
        with torch.inference_mode():
            for _ in range(3):
                net(x)
            times = []
            for _ in range(20):
                t0 = time.perf_counter()
                net(x)
                times.append(time.perf_counter() - t0)
        print(
            f"ResNet-18 (width 64) 128² inference, {threads} thread(s): median {statistics.median(times) * 1e3:.2f} ms"
            f" (target ≤ 10 ms)"
        )
    if (work / "model.pt").exists():
        model = InverseModel.load(work / "model.pt")
        img = np.zeros((1, model.size, model.size, 3), np.uint8)
        for _ in range(3):
            model.raw(img)
        raw, times = [], []
        for _ in range(30):
            t0 = time.perf_counter()
            model.raw(img)
            raw.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            model.predict(img)
            times.append(time.perf_counter() - t0)
        print(f"trained model forward only: median {statistics.median(raw) * 1e3:.2f} ms")
        print(
            f"trained model (width {model.meta['width']}, {model.size}² → {model.input_size}²) image → params: "
            f"median {statistics.median(times) * 1e3:.2f} ms"
        )


def bench_cma(scene: Scene, work: Path, targets: int, generations: int) -> None:
    from isonyc_dagster.stylesearch.model import InverseModel

    if not (work / "model.pt").exists():
        print("no model.pt: skipping the CNN-seed vs random-seed comparison")
        return
    model = InverseModel.load(work / "model.pt")
    known = stratified_params(targets, seed=2024)
    randoms = stratified_params(targets, seed=7)
    rows = []
    for k, (truth, rnd) in enumerate(zip(known, randoms, strict=True)):
        target = scene.render(truth)
        cnn = model.predict(target[None])[0]
        res = {}
        for name, seed in (("cnn", cnn), ("random", rnd)):
            s0 = ssim(scene.render(seed), target)
            if s0 >= 0.85:
                res[name] = (0, s0, s0)
                continue
            r = fit(
                target,
                scene,
                seed,
                generations=generations,
                popsize=10,
                style_weight=0.0,
                sweep=False,
                polish=0,
                stop_ssim=0.85,
                rng_seed=k,
            )
            res[name] = (r.generations_to(0.85), s0, r.best_ssim)
        rows.append(res)
        print(
            f"target {k}: CNN seed SSIM {res['cnn'][1]:.3f} → {res['cnn'][2]:.3f} in {res['cnn'][0]} generations; "
            f"random seed {res['random'][1]:.3f} → {res['random'][2]:.3f} in {res['random'][0]} generations"
        )

    def summary(name: str) -> str:
        gens = [r[name][0] for r in rows]
        hit = [g for g in gens if g is not None]
        med = statistics.median([g if g is not None else generations + 1 for g in gens])
        return f"{name}: reached 0.85 in {len(hit)}/{len(gens)}, median generations {med} (cap {generations})"

    print(summary("cnn"))
    print(summary("random"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", default="data/style")
    ap.add_argument("--pairs", type=int, default=60)
    ap.add_argument("--targets", type=int, default=4)
    ap.add_argument("--generations", type=int, default=25)
    args = ap.parse_args()
    work = Path(args.dir)
    scene = Scene.load(work / "scene.npz")
    print(
        f"scene: {scene.size}² at world px {scene.origin}; default render SSIM to itself "
        f"{ssim(scene.render(StyleParams()), scene.render(StyleParams())):.3f}"
    )
    bench_api(scene, args.pairs)
    bench_inference(work)
    bench_cma(scene, work, args.targets, args.generations)


if __name__ == "__main__":
    main()
