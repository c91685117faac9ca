"""Training pairs: a render and the accepted generation of one 2×2 tile, with provenance.

A pair belongs to a quadrant (x, y) and shows the 2×2 tile whose top-left is that quadrant (the original's
``export_starred_from_db.py`` tile), stitched from the store's active tiles: the input is the whitebox ``render``
(and, as a second pair, the ``photoreal`` render where the store has all four of its tiles), the target the active
``generation``. Quadrants come from the store's ``starred`` and ``reference`` flags (optionally also every
generated quadrant whose QA checks pass). A quadrant whose 2×2 tile is incomplete is skipped with the reason.

Fresh pairs (:func:`fresh_pairs`) are how the original got its first 40: a render sent whole (a full-window
template, the project's template code) to a strong general model with the style references (Gemini / Vertex,
``generate.references``); its validated answer is the target, with ``source: model`` provenance.

Pair sets are written as versions under ``<training dir>/pairs/<set>/v<N>/`` (``pairs.json`` last, images
content-addressed under ``images/``); set ``store`` holds the store's pairs, ``model-<backend>`` fresh ones.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster import layers
from isonyc_dagster.backends.base import BackendError, GenerationRequest, ImageBackend
from isonyc_dagster.fileio import atomic_write
from isonyc_dagster.generate.plan import Quadrant, Step, StepKind
from isonyc_dagster.generate.qa_state import MapQA
from isonyc_dagster.generate.references import ReferenceSelector, block_2x2, stitch
from isonyc_dagster.generate.rules import STOCK_PROMPT
from isonyc_dagster.generate.template import TemplateError, build_template, extract_quadrants
from isonyc_dagster.geo.boxes import PixelBox
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.store.base import TileStore, TileVersion
from isonyc_dagster.training import _versioned
from isonyc_dagster.training.dataset import DatasetError
from isonyc_dagster.training.preview import grid_png

PAIRS_MANIFEST = "pairs.json"
PREVIEW_NAME = "preview.png"
PREVIEW_PAIRS = 8
#: The pair set the store's marked quadrants go to; fresh pairs go to ``model-<backend>``.
STORE_SET = "store"
#: Render layers a pair's input may come from, in order.
RENDER_LAYERS: tuple[str, ...] = (layers.RENDER, layers.PHOTOREAL)


class NoTrainingQuadrants(DatasetError):
    """The store has no quadrant marked for training."""

    def __init__(self) -> None:
        super().__init__(
            "no quadrant is marked for training: star accepted quadrants with `isonyc dataset star X Y` or mark "
            "them as references with `isonyc reference add X Y` (each pair is the 2×2 tile with it at top-left)"
        )


@dataclass(frozen=True)
class Pair:
    """One render/generation pair of a 2×2 tile whose top-left quadrant is (x, y)."""

    x: int
    y: int
    render_layer: str
    render_png: bytes
    target_png: bytes
    provenance: dict[str, Any]

    @property
    def id(self) -> str:
        model = self.provenance.get("model")
        return f"x{self.x}_y{self.y}_{self.render_layer}" + (f"_{_slug(model)}" if model else "")

    @property
    def render_sha256(self) -> str:
        return hashlib.sha256(self.render_png).hexdigest()

    @property
    def target_sha256(self) -> str:
        return hashlib.sha256(self.target_png).hexdigest()

    def render_rgb(self) -> np.ndarray:
        return decode_rgb(self.render_png)

    def target_rgb(self) -> np.ndarray:
        return decode_rgb(self.target_png)


@dataclass
class PairsReport:
    """Pairs made, and the quadrants skipped with why (``{"quadrant": [x, y], "render_layer", "reason"}``)."""

    pairs: list[Pair] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def skip(self, q: Quadrant, layer: str, reason: str) -> None:
        self.skipped.append({"quadrant": list(q), "render_layer": layer, "reason": reason})


@dataclass(frozen=True)
class WrittenPairs:
    path: Path
    version: int
    pairs: int
    reused: bool
    fingerprint: str


def _slug(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "-" for c in s)


def _key(q: Quadrant) -> str:
    return f"{q[0]},{q[1]}"


def marked_quadrants(store: TileStore) -> dict[Quadrant, list[str]]:
    """Quadrants flagged ``starred`` or ``reference``, with which flags, sorted by (y, x)."""
    out: dict[Quadrant, list[str]] = {}
    for name in ("starred", "reference"):
        for f in store.list_flags(**{name: True}):
            out.setdefault((f.x, f.y), []).append(name)
    return dict(sorted(out.items(), key=lambda kv: (kv[0][1], kv[0][0])))


def passing_quadrants(state: MapQA, seam_threshold: float) -> list[Quadrant]:
    """Generated quadrants whose QA checks (seams, red border, blank) all pass."""
    return sorted(
        (q for q, qa in state.quadrants.items() if not qa.failures(seam_threshold)),
        key=lambda q: (q[1], q[0]),
    )


def training_quadrants(store: TileStore, passed: Iterable[Quadrant] = ()) -> dict[Quadrant, list[str]]:
    """The quadrants to pair (marked, plus ``passed``) with their reasons; ``NoTrainingQuadrants`` if none."""
    out = marked_quadrants(store)
    for q in passed:
        out.setdefault((int(q[0]), int(q[1])), []).append("passed")
    if not out:
        raise NoTrainingQuadrants()
    return dict(sorted(out.items(), key=lambda kv: (kv[0][1], kv[0][0])))


def _tile_images(
    store: TileStore, versions: dict[Quadrant, TileVersion], tile: tuple[Quadrant, ...]
) -> bytes:
    imgs = {q: decode_rgb(store.get_blob(versions[q].sha256)) for q in tile}
    sizes = {img.shape for img in imgs.values()}
    if len(sizes) != 1:
        raise DatasetError(
            f"tiles of {list(tile)} differ in size {sorted(sizes)}; a 2×2 tile needs equal quadrants"
        )
    return png_bytes(stitch(imgs, tile))


def collect_pairs(
    store: TileStore,
    quadrants: dict[Quadrant, list[str]] | Iterable[Quadrant],
    *,
    render_layers: Sequence[str] = RENDER_LAYERS,
) -> PairsReport:
    """A pair per quadrant and render layer whose 2×2 tile (quadrant at top-left) is complete in the store."""
    report = PairsReport()
    reasons = quadrants if isinstance(quadrants, dict) else {tuple(q): [] for q in quadrants}
    for q, why in reasons.items():
        tile = block_2x2(*q)
        gens = store.active_map(layers.GENERATION, tile)
        if len(gens) < 4:
            missing = [list(t) for t in tile if t not in gens]
            report.skip(q, "", f"2×2 tile incomplete: no generation for {missing}")
            continue
        for layer in render_layers:
            renders = store.active_map(layer, tile)
            if layer != layers.RENDER and not renders:
                continue  # the store has no such layer here: nothing to say
            if len(renders) < 4:
                missing = [list(t) for t in tile if t not in renders]
                report.skip(q, layer, f"2×2 tile incomplete: no {layer} for {missing}")
                continue
            prov = {
                "source": "store",
                "quadrant": list(q),
                "tile": [list(t) for t in tile],
                "marked": list(why),
                "render_layer": layer,
                "render_sha256": {_key(t): renders[t].sha256 for t in tile},
                "generation_sha256": {_key(t): gens[t].sha256 for t in tile},
                "generation_version": {_key(t): gens[t].version for t in tile},
            }
            report.pairs.append(
                Pair(
                    q[0],
                    q[1],
                    layer,
                    _tile_images(store, renders, tile),
                    _tile_images(store, gens, tile),
                    prov,
                )
            )
    return report


def fresh_pairs(
    store: TileStore,
    backend: ImageBackend,
    quadrants: Iterable[Quadrant],
    selector: ReferenceSelector,
    *,
    prompt: str | None = None,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> PairsReport:
    """Send the 2×2 whitebox render of each quadrant's tile whole to ``backend`` with the style references.

    The template is the project's full-window infill (render under the red border); the answer is validated by
    ``extract_quadrants`` (size, red border, blank, ...) before it becomes a target. A quadrant without renders,
    or whose answer is refused, is skipped with the reason. ``prompt`` ``None``: the backend's own default.
    """
    report = PairsReport()
    text = prompt if prompt is not None else getattr(backend, "default_prompt", None) or STOCK_PROMPT
    for i, q in enumerate(quadrants):
        q = (int(q[0]), int(q[1]))
        tile = block_2x2(*q)
        renders = store.active_map(layers.RENDER, tile)
        if len(renders) < 4:
            missing = [list(t) for t in tile if t not in renders]
            report.skip(q, layers.RENDER, f"no render for {missing}: materialize the render first")
            continue
        imgs = {t: decode_rgb(store.get_blob(renders[t].sha256)) for t in tile}
        qpx = imgs[q].shape[0]
        step = Step(
            StepKind.BLOCK, q, tile, (), (q[0] * qpx, q[1] * qpx), PixelBox(0, 0, 2 * qpx, 2 * qpx), tile, qpx
        )
        try:
            template = build_template(step, render_rgb=_lookup(imgs), generated_rgb=lambda x, y: None)
            refs = selector.select(step, backend)
            result = backend.generate(
                GenerationRequest(
                    template_png=template.png,
                    prompt=text,
                    seed=seed + i,
                    style_refs=refs.pngs,
                    infill_box=template.infill_box,
                    origin_px=template.origin_px,
                )
            )
            out = extract_quadrants(step, template, result.image_png)
        except (BackendError, TemplateError) as e:
            report.skip(q, layers.RENDER, f"{type(e).__name__}: {e}")
            continue
        prov = {
            "source": "model",
            "model": f"{backend.name}:{backend.model_id}" if backend.model_id else backend.name,
            "quadrant": list(q),
            "tile": [list(t) for t in tile],
            "render_layer": layers.RENDER,
            "render_sha256": {_key(t): renders[t].sha256 for t in tile},
            "template_sha256": template.sha256,
            "style_refs": refs.provenance(),
            "result": result.provenance,  # backends never put secrets in provenance (ImageBackend contract)
        }
        report.pairs.append(
            Pair(q[0], q[1], layers.RENDER, png_bytes(stitch(imgs, tile)), png_bytes(stitch(out, tile)), prov)
        )
        if progress:
            progress(f"pair {q}: {prov['model']}")
    return report


def _lookup(imgs: dict[Quadrant, np.ndarray]) -> Callable[[int, int], np.ndarray | None]:
    return lambda x, y: imgs.get((x, y))


def _fingerprint(pairs: Sequence[Pair]) -> str:
    h = hashlib.sha256()
    for p in pairs:
        h.update(json.dumps([p.id, p.render_sha256, p.target_sha256, p.provenance], sort_keys=True).encode())
    return h.hexdigest()


def write_pairs(root: str | Path, set_name: str, report: PairsReport) -> WrittenPairs:
    """Write ``report``'s pairs as the next version of pair set ``set_name`` under ``root``/pairs."""
    if not report.pairs:
        reasons = "; ".join(f"{s['quadrant']}: {s['reason']}" for s in report.skipped[:5])
        raise DatasetError(f"no complete pair to write{' (' + reasons + ')' if reasons else ''}")
    pairs = sorted(report.pairs, key=lambda p: (p.y, p.x, p.id))

    def write(tmp: Path) -> dict[str, Any]:
        entries = []
        for p in pairs:
            for sha, png in ((p.render_sha256, p.render_png), (p.target_sha256, p.target_png)):
                if not (tmp / "images" / f"{sha}.png").exists():
                    atomic_write(tmp / "images" / f"{sha}.png", png, fsync=False)
            entries.append(
                {
                    "id": p.id,
                    "x": p.x,
                    "y": p.y,
                    "render_layer": p.render_layer,
                    "render": f"images/{p.render_sha256}.png",
                    "target": f"images/{p.target_sha256}.png",
                    "render_sha256": p.render_sha256,
                    "target_sha256": p.target_sha256,
                    "provenance": p.provenance,
                }
            )
        shown = pairs[:: max(1, len(pairs) // PREVIEW_PAIRS)][:PREVIEW_PAIRS]
        cells = [(f"{p.id}  render | generation", (p.render_png, p.target_png)) for p in shown]
        atomic_write(tmp / PREVIEW_NAME, grid_png(cells), fsync=False)
        return {"set": set_name, "pairs": entries, "skipped": report.skipped}

    w = _versioned.write_version(Path(root) / "pairs" / set_name, PAIRS_MANIFEST, _fingerprint(pairs), write)
    return WrittenPairs(w.path, w.version, len(pairs), w.reused, w.fingerprint)


def load_pairs(path: str | Path) -> list[Pair]:
    """The pairs of one pair-set version directory, every image checked against its recorded sha256."""
    path = Path(path)
    if not (path / PAIRS_MANIFEST).exists():
        raise DatasetError(
            f"{path} is not a pair set version (no {PAIRS_MANIFEST}); run `isonyc dataset pairs`"
        )
    out = []
    for e in _versioned.read_manifest(path, PAIRS_MANIFEST)["pairs"]:
        render, target = (path / e["render"]).read_bytes(), (path / e["target"]).read_bytes()
        for what, data in (("render", render), ("target", target)):
            if hashlib.sha256(data).hexdigest() != e[f"{what}_sha256"]:
                raise DatasetError(
                    f"{path / e[what]} is damaged (sha256 differs from {PAIRS_MANIFEST}); rebuild the pairs"
                )
        out.append(Pair(e["x"], e["y"], e["render_layer"], render, target, e["provenance"]))
    return out


def latest_pair_sets(root: str | Path) -> list[Path]:
    """The newest version of every pair set under ``root``/pairs, by set name."""
    base = Path(root) / "pairs"
    out = []
    if base.is_dir():
        for d in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found = _versioned.versions(d, PAIRS_MANIFEST)
            if found:
                out.append(found[-1][1])
    return out


def build_pairs(
    store: TileStore, training_dir: str | Path, *, passed: Iterable[Quadrant] = ()
) -> tuple[WrittenPairs, PairsReport]:
    """The store's pairs (marked quadrants, plus ``passed``) written as the next version of set ``store``."""
    report = collect_pairs(store, training_quadrants(store, passed))
    return write_pairs(training_dir, STORE_SET, report), report
