"""``isonyc style {serve,data,train,validate,fit,explore}``: search the pixel-art backend's style parameters.

Everything lives under ``--dir`` (default ``<data>/style`` next to the config's cache directory): the fixed scene
(``scene.npz``, the most varied ``--size``² crop of a render of the bounds' middle tile, or of ``--quadrant``),
the pairs (``images/``, ``params/``), the inverse model (``model.pt``), the seed pool (``seed_pool.json``), fitted
styles (``fit/*.style.json``, ``style.json`` = the best) and one HTML report per phase (``report/*.html``). Use a
fitted style with ``style = "…/style.json"`` in the project config. Each command prints progress and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster.geo.config import ProjectConfig

_DEFAULT_SIZE = 256


def add_parser(sub: Any) -> None:
    """Register ``isonyc style …`` on the main parser's sub-command set."""
    s = sub.add_parser(
        "style", help="search the offline backend's style parameters (inverse CNN, CMA-ES, judge)"
    )
    ssub = s.add_subparsers(dest="style_command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--dir", default=None, help="working directory (default: <data>/style beside the cache)"
        )
        p.add_argument(
            "--size", type=int, default=_DEFAULT_SIZE, help="scene crop side in px when it is created"
        )
        p.add_argument("--quadrant", type=int, nargs=2, metavar=("X", "Y"), help="scene around this quadrant")
        p.set_defaults(func=cmd_style)

    p = ssub.add_parser("serve", help="serve POST /api/raster (flat parameters → PNG of the scene)")
    common(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)

    p = ssub.add_parser("data", help="phase 1: N stratified (image, parameters) pairs from the renderer API")
    common(p)
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2, help="concurrent API requests")
    p.add_argument("--url", default=None, help="use a running renderer API instead of starting one")

    p = ssub.add_parser("train", help="phase 2: train the inverse CNN (ResNet-18) on the pairs")
    common(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--width", type=int, default=12, help="ResNet-18 channel width (64 = standard)")
    p.add_argument(
        "--input-size", type=int, default=128, help="model input side (images are area-downsampled)"
    )
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--limit", type=int, default=None, help="train on the first N pairs only")
    p.add_argument("--threads", type=int, default=2)

    p = ssub.add_parser(
        "validate", help="phase 3: invert renders of known styles; SSIM and per-parameter errors"
    )
    common(p)
    p.add_argument("--n", type=int, default=20)
    p.add_argument(
        "--refine", type=int, default=2, help="also refine this many with CMA-ES from the CNN seed"
    )
    p.add_argument("--generations", type=int, default=25)

    p = ssub.add_parser("fit", help="phase 4: fit the style to reference images (CNN seed + CMA-ES)")
    common(p)
    p.add_argument("references", nargs="+", help="reference images (PNG/JPEG)")
    p.add_argument(
        "--scale", type=float, default=0.5, help="resize references by this to the map's pixel scale"
    )
    p.add_argument("--generations", type=int, default=30)
    p.add_argument("--popsize", type=int, default=10)
    p.add_argument("--no-model", action="store_true", help="start from the default style, not the CNN's")

    p = ssub.add_parser("explore", help="phase 5: judged exploration; ≥ threshold hits go to the seed pool")
    common(p)
    p.add_argument("--refs", nargs="+", required=True, help="style reference images for the judge")
    p.add_argument("--scale", type=float, default=0.5)
    p.add_argument("--judge", choices=["offline", "gemini", "vertex"], default="offline")
    p.add_argument("--judge-model", default="gemini-2.5-flash")
    p.add_argument("--vertex-project", default=os.environ.get("ISONYC_VERTEX_PROJECT"))
    p.add_argument("--vertex-location", default="global")
    p.add_argument("--generations", type=int, default=10)
    p.add_argument("--popsize", type=int, default=8)
    p.add_argument("--threshold", type=float, default=9.0)
    p.add_argument("--baseline", type=int, default=0, help="also run N unguided random styles for comparison")
    p.add_argument("--seed", type=int, default=0)


def _work_dir(args: argparse.Namespace, cfg: ProjectConfig) -> Path:
    from isonyc_dagster.stylesearch.data import default_dir

    return Path(args.dir) if args.dir else default_dir(cfg.cache_dir)


def _scene(args: argparse.Namespace, cfg: ProjectConfig, work: Path) -> Any:
    from isonyc_dagster.stylesearch.scene import Scene
    from isonyc_dagster.stylesearch.space import StyleSearchError

    path = work / "scene.npz"
    if path.exists():
        scene = Scene.load(path)
        if args.size != _DEFAULT_SIZE and scene.size != args.size:
            raise StyleSearchError(
                f"{path} is a {scene.size}² scene, not {args.size}²; use another --dir or delete the scene (and data)"
            )
        return scene
    from isonyc_dagster.project import Project

    project = Project(cfg)
    quadrant = (args.quadrant[0], args.quadrant[1]) if args.quadrant else None
    print("rendering the style scene ...", flush=True)

    def render_window(x: int, y: int, w: int, h: int) -> Any:
        qx, qy = quadrant or sorted(project.quadrants.keys)[len(project.quadrants.keys) // 2]
        return project.renderer_at(qx, qy).render_window(x, y, w, h)

    return Scene.load_or_build(
        path,
        render_window,
        list(project.quadrants.keys),
        size=args.size,
        map_config=cfg.map,
        quadrant=quadrant,
    )


def cmd_style(args: argparse.Namespace) -> int:
    from isonyc_dagster.cli.main import _project_config  # the one config lookup every command uses

    cfg = _project_config(args)
    work = _work_dir(args, cfg)
    scene = _scene(args, cfg, work)
    handler = {
        "serve": _serve,
        "data": _data,
        "train": _train,
        "validate": _validate,
        "fit": _fit,
        "explore": _explore,
    }[args.style_command]
    out = handler(args, scene, work)
    if out is not None:
        print(json.dumps(out, indent=2, default=str))
    return 0


def _serve(args: argparse.Namespace, scene: Any, work: Path) -> None:
    from isonyc_dagster.stylesearch.api import RasterServer

    server = RasterServer(scene, args.host, args.port, quiet=False)
    print(f"renderer API at {server.url}/api/raster (POST flat style parameters; Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _data(args: argparse.Namespace, scene: Any, work: Path) -> dict[str, Any]:
    from isonyc_dagster.stylesearch.api import start_raster_server
    from isonyc_dagster.stylesearch.data import generate_dataset

    server = None if args.url else start_raster_server(scene)
    url = args.url or (server.url if server else "")
    print(f"phase 1: {args.n} pairs from {url}/api/raster into {work}", flush=True)
    try:
        stats = generate_dataset(
            work, args.n, url, seed=args.seed, workers=args.workers, progress=lambda m: print(m, flush=True)
        )
    finally:
        if server is not None:
            server.close()
    return {k: v for k, v in stats.items() if k != "counts"} | {"balanced": _balanced(stats["counts"])}


def _balanced(counts: dict[str, dict[str, int]]) -> dict[str, str]:
    return {k: f"{min(v.values())}..{max(v.values())} per value" for k, v in counts.items()}


def _train(args: argparse.Namespace, scene: Any, work: Path) -> dict[str, Any]:
    from isonyc_dagster.stylesearch.data import load_dataset
    from isonyc_dagster.stylesearch.model import require_torch, train_inverse
    from isonyc_dagster.stylesearch.report import Report

    require_torch()
    images, targets = load_dataset(work, limit=args.limit)
    print(
        f"phase 2: training ResNet-18 (width {args.width}) on {len(images)} pairs, {args.epochs} epochs",
        flush=True,
    )
    meta = train_inverse(
        images,
        targets,
        work / "model.pt",
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        width=args.width,
        input_size=args.input_size,
        threads=args.threads,
        progress=lambda m: print(m, flush=True),
    )
    hist = meta["history"]
    rep = Report(work / "report", "train", "Inverse model training")
    rep.table(
        ["epoch", "train loss", "val loss", "categorical acc", "boolean acc", "continuous MAE", "s"],
        [
            [
                h["epoch"],
                h["train_loss"],
                h["val_loss"],
                h["cat_acc"],
                h["bool_acc"],
                h["cont_mae"],
                h["seconds"],
            ]
            for h in hist
        ],
    )
    rep.write()
    return {"model": str(work / "model.pt"), "pairs": len(images), "final": hist[-1], "first": hist[0]}


def _validate(args: argparse.Namespace, scene: Any, work: Path) -> dict[str, Any]:
    from isonyc_dagster.stylesearch.fit import fit, validate
    from isonyc_dagster.stylesearch.model import InverseModel
    from isonyc_dagster.stylesearch.report import Report

    model = InverseModel.load(work / "model.pt")
    print(f"phase 3: inverting {args.n} renders of known styles", flush=True)
    v = validate(model, scene, n=args.n)
    rep = Report(work / "report", "validate", "Validation on renders of known styles")
    rep.text(f"CNN only: mean SSIM {v['ssim_mean']:.4f} (median {v['ssim_median']:.4f}) over {v['n']} styles")
    rows = [[k, *(f"{x:.4f}" for x in d.values())] for k, d in v["per_param"].items()]
    rep.table(["parameter", "error (MAE, MAE/range) or accuracy"], [[r[0], " / ".join(r[1:])] for r in rows])
    refined = []
    for i, (truth, pred) in enumerate(v["examples"][: args.refine]):
        target = scene.render(truth)
        r = fit(
            target,
            scene,
            pred,
            generations=args.generations,
            style_weight=0.0,
            stop_ssim=0.97,
            progress=lambda m: print(m, flush=True),
        )
        refined.append({"cnn_ssim": r.start_ssim, "refined_ssim": r.best_ssim, "evaluations": r.evaluations})
        rep.images(
            [
                (f"known style {i}", target),
                (f"CNN ({r.start_ssim:.3f})", scene.render(pred)),
                (f"CNN + CMA-ES ({r.best_ssim:.3f})", scene.render(r.best)),
            ]
        )
    rep.write()
    return {
        k: v[k]
        for k in (
            "n",
            "ssim_mean",
            "ssim_median",
            "ssim_min",
            "cat_accuracy",
            "bool_accuracy",
            "cont_mae_of_range",
        )
    } | {"refined": refined}


def _fit(args: argparse.Namespace, scene: Any, work: Path) -> dict[str, Any]:
    from isonyc_dagster.backends.pixelart.params import StyleParams
    from isonyc_dagster.fileio import atomic_write
    from isonyc_dagster.stylesearch.fit import fit, load_reference, reference_ceiling
    from isonyc_dagster.stylesearch.metrics import ssim, style_distance
    from isonyc_dagster.stylesearch.report import Report

    model = None
    if not args.no_model:
        from isonyc_dagster.stylesearch.model import InverseModel

        model = InverseModel.load(work / "model.pt")
    rep = Report(work / "report", "fit", "Style fit to external references")
    rows, results = [], []
    best_overall: tuple[float, StyleParams] | None = None
    for ref in args.references:
        name = Path(ref).stem
        target = load_reference(ref, scene.size, args.scale)
        ceiling = reference_ceiling(ref, scene.size, args.scale)
        seed = model.predict(target[None])[0] if model is not None else StyleParams()
        seed_img = scene.render(seed)
        s0, d0 = ssim(seed_img, target), style_distance(seed_img, target)
        ceil_txt = "n/a" if ceiling is None else f"{ceiling:.4f}"
        print(f"phase 4: {name}: seed SSIM {s0:.4f}, style distance {d0:.4f}; ceiling {ceil_txt}", flush=True)
        r = fit(
            target,
            scene,
            seed,
            generations=args.generations,
            popsize=args.popsize,
            progress=lambda m: print(m, flush=True),
        )
        best_img = scene.render(r.best)
        out = work / "fit" / f"{name}.style.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(out, json.dumps(r.best.changed(), indent=1, sort_keys=True).encode())
        rows.append([name, s0, d0, r.best_ssim, r.best_style_distance, ceil_txt, r.evaluations])
        results.append(
            {
                "reference": name,
                "seed_ssim": s0,
                "seed_style_distance": d0,
                "ssim": r.best_ssim,
                "style_distance": r.best_style_distance,
                "ceiling_ssim": ceiling,
                "evaluations": r.evaluations,
                "style": str(out),
            }
        )
        rep.images(
            [
                (f"{name} (target)", target),
                (f"CNN seed ({s0:.3f})", seed_img),
                (f"best ({r.best_ssim:.3f})", best_img),
                ("default look", scene.render(StyleParams())),
            ]
        )
        if best_overall is None or r.best_loss < best_overall[0]:
            best_overall = (r.best_loss, r.best)
    rep.heading("Scores")
    rep.table(
        [
            "reference",
            "seed SSIM",
            "seed style dist.",
            "fit SSIM",
            "fit style dist.",
            "ceiling SSIM",
            "renders",
        ],
        rows,
    )
    rep.text(
        "Ceiling: SSIM between the reference crop and other crops of the same reference (same style, other "
        "buildings); the renderer draws this scene's buildings, so pixel SSIM cannot exceed it by much."
    )
    page = rep.write()
    if best_overall is not None:
        atomic_write(
            work / "style.json", json.dumps(best_overall[1].changed(), indent=1, sort_keys=True).encode()
        )
    return {"results": results, "style": str(work / "style.json"), "report": str(page)}


def _judge(args: argparse.Namespace, refs: list[np.ndarray]) -> Any:
    from isonyc_dagster.stylesearch.judge import ModelJudge, OfflineJudge

    if args.judge == "offline":
        return OfflineJudge(refs)
    if args.judge == "gemini":
        return ModelJudge(
            refs, kind="gemini", model=args.judge_model, api_key=os.environ.get("ISONYC_GEMINI_API_KEY")
        )
    from isonyc_dagster.backends.vertex import google_auth_token_provider

    return ModelJudge(
        refs,
        kind="vertex",
        model=args.judge_model,
        project=args.vertex_project,
        location=args.vertex_location,
        token_provider=google_auth_token_provider(),
    )


def _explore(args: argparse.Namespace, scene: Any, work: Path) -> dict[str, Any]:
    from isonyc_dagster.stylesearch.explore import SeedPool, explore, unguided
    from isonyc_dagster.stylesearch.fit import load_reference
    from isonyc_dagster.stylesearch.report import Report

    refs = [load_reference(r, scene.size, args.scale) for r in args.refs]
    judge = _judge(args, refs)
    inverse = None
    if (work / "model.pt").exists():
        from isonyc_dagster.stylesearch.model import InverseModel

        inverse = InverseModel.load(work / "model.pt")
    pool = SeedPool(work / "seed_pool.json")
    seeds = inverse.predict(np.stack(refs)) if inverse is not None else []
    print(
        f"phase 5: exploring with the {judge.name} judge from {'the seed pool' if pool.entries else 'the default'}",
        flush=True,
    )
    r = explore(
        scene,
        judge,
        pool,
        generations=args.generations,
        popsize=args.popsize,
        threshold=args.threshold,
        inverse=inverse,
        seeds=seeds,
        rng_seed=args.seed,
        progress=lambda m: print(m, flush=True),
    )
    out: dict[str, Any] = {
        "judge": judge.name,
        "best_score": r.best_score,
        "evaluations": r.evaluations,
        "first_hit": r.first_hit,
        "hits": r.hits,
        "pooled": r.pooled,
        "started_from_pool": r.started_from_pool,
        "pool_size": len(pool.entries),
    }
    rep = Report(work / "report", "explore", f"Judged exploration ({judge.name})")
    rep.images([("best", scene.render(r.best))] + [(f"reference {i}", x) for i, x in enumerate(refs)])
    if args.baseline:
        b = unguided(scene, judge, budget=args.baseline, threshold=args.threshold, rng_seed=args.seed)
        out["unguided"] = {
            "best_score": b.best_score,
            "evaluations": b.evaluations,
            "first_hit": b.first_hit,
            "hits": b.hits,
        }
    rep.table(
        ["run", "best score", "evaluations", "first ≥ threshold at", "hits"],
        [["guided (CMA-ES)", r.best_score, r.evaluations, r.first_hit, r.hits]]
        + (
            [
                [
                    "unguided",
                    out["unguided"]["best_score"],
                    out["unguided"]["evaluations"],
                    out["unguided"]["first_hit"],
                    out["unguided"]["hits"],
                ]
            ]
            if args.baseline
            else []
        ),
    )
    out["report"] = str(rep.write())
    return out
