"""The omni infill dataset: from pairs, templates of six kinds with the original's mix (anchor §4.7).

Kinds, on a pair's S×S window (S = 1024 for 512 px quadrants); the infill gets the render, the rest the generation:

- ``full`` (20 %): the whole window;
- ``quadrant`` (20 %): one of the four S/2 quadrants (TL, TR, BL, BR);
- ``half`` (20 %): the left, right, top or bottom half;
- ``middle`` (15 %): the centred band of 50 % width, vertical or horizontal;
- ``strip`` (10 %): a full-length band of 25–60 % width at a random offset, vertical or horizontal;
- ``rect`` (15 %): a rectangle of 25–60 % of the area, aspect 0.5–2, at least 16 px from the edges.

Each input is ``generate.template.infill_template`` (render inside a 2 px #FF0000 border, generated pixels
outside), the target is the generation, the prompt the project's. Render and generation of a pair are brought to
one size by downscaling the larger with nearest-neighbour (pixel art keeps its pixels; the original resized both
with LANCZOS and mismatched sizes slipped through).

Per pair, as in the original: at most one ``full`` and one ``middle``, and no quadrant or half twice. Everything
follows from the seed. The train/validation split is by area: the plane is cut into ``split_block``² quadrant
blocks, whole blocks go to validation (in a seeded order) until the wanted share of pairs is held out, and a pair
(a 2×2 tile) belongs to a split only when all its blocks do: tiles that straddle both are dropped, so no quadrant is
in both splits. Kinds are allotted per split by quota (largest remainder on the mix), so each split has the mix and
every kind (each split gets at least six examples).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from isonyc_dagster.generate.plan import Quadrant
from isonyc_dagster.generate.preprocess import preprocess_pixels, preprocess_provenance
from isonyc_dagster.generate.references import block_2x2
from isonyc_dagster.generate.template import PNG_COMPRESS_LEVEL, infill_template
from isonyc_dagster.geo.model_inputs import PreprocessConfig
from isonyc_dagster.images import png_bytes
from isonyc_dagster.training.dataset import SPLITS, DatasetError, Row, counts, write_dataset
from isonyc_dagster.training.pairs import Pair, latest_pair_sets, load_pairs
from isonyc_dagster.training.preview import grid_png

KINDS: tuple[str, ...] = ("full", "quadrant", "half", "middle", "strip", "rect")
#: The issue's mix (the original's weights were full .20, quadrant .18, half .17, middle .15, strip .10, rect .20).
MIX: dict[str, float] = {
    "full": 0.20,
    "quadrant": 0.20,
    "half": 0.20,
    "middle": 0.15,
    "strip": 0.10,
    "rect": 0.15,
}
#: Examples of a kind one pair may have (None: any): a second full or middle would repeat the first exactly.
CAPS: dict[str, int | None] = {"full": 1, "quadrant": 4, "half": 4, "middle": 1, "strip": None, "rect": None}
RECT_MARGIN = 16
#: The preview grid written beside the index (a dozen examples of all kinds).
PREVIEW_NAME = "preview.png"
STRIP_RANGE = (0.25, 0.60)
RECT_AREA = (0.25, 0.60)
RECT_ASPECT = (0.5, 2.0)


@dataclass(frozen=True)
class Variant:
    kind: str
    sub: str  # e.g. "TL", "left", "V"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive) in window pixels


@dataclass
class OmniBuild:
    """The examples and what the build decided."""

    rows: list[Row] = field(default_factory=list)
    dropped: list[dict[str, Any]] = field(default_factory=list)  # pairs straddling the split
    split_of: dict[Quadrant, str] = field(default_factory=dict)

    def proportions(self) -> dict[str, float]:
        n = len(self.rows) or 1
        c = Counter(r.kind for r in self.rows)
        return {k: round(c[k] / n, 4) for k in KINDS}


def quotas(n: int, mix: dict[str, float] = MIX) -> dict[str, int]:
    """``n`` examples shared out by ``mix`` (largest remainder); with ``n >= len(mix)`` every kind gets one."""
    total = sum(mix.values())
    exact = {k: n * w / total for k, w in mix.items()}
    out = {k: int(v) for k, v in exact.items()}
    for k in sorted(mix, key=lambda k: (-(exact[k] - out[k]), list(mix).index(k)))[: n - sum(out.values())]:
        out[k] += 1
    if n >= len(mix):
        for k in mix:
            if out[k] == 0:
                out[max(out, key=lambda j: (out[j], -list(mix).index(j)))] -= 1
                out[k] = 1
    return out


def _rank(seed: int, *parts: object) -> str:
    return hashlib.sha256(":".join(map(str, (seed, *parts))).encode()).hexdigest()


def split_by_area(
    tiles: Sequence[Quadrant], *, seed: int, block: int, validation_fraction: float
) -> tuple[dict[Quadrant, str], list[Quadrant]]:
    """Each tile's split (tiles = top-left quadrants of 2×2 tiles) and the tiles dropped for straddling both.

    ``DatasetError`` when the tiles cannot be split (all in one block, or every split empties one side).
    """
    uniq = sorted(set(tiles))
    blocks_of = {t: {(qx // block, qy // block) for qx, qy in block_2x2(*t)} for t in uniq}
    order = sorted({b for bs in blocks_of.values() for b in bs}, key=lambda b: _rank(seed, "block", *b))
    want = max(1, round(validation_fraction * len(uniq)))

    def tally(val: set[tuple[int, int]]) -> tuple[int, int]:
        n_val = sum(1 for bs in blocks_of.values() if bs <= val)
        n_train = sum(1 for bs in blocks_of.values() if not bs & val)
        return n_val, n_train

    val: set[tuple[int, int]] = set()
    n_val, n_train = 0, len(uniq)
    for b in order:
        if n_val >= want:
            break
        nv, nt = tally(val | {b})
        if nt == 0 or (n_val and abs(nv - want) > abs(n_val - want)):
            continue  # never empty train; never move farther from the wanted share once something is held out
        val.add(b)
        n_val, n_train = nv, nt
    if n_val == 0 or n_train == 0:
        raise DatasetError(
            f"cannot split {len(uniq)} pair(s) by area into train and validation with split_block={block}: mark "
            "quadrants in more than one area of the map, or lower [training] split_block"
        )
    split: dict[Quadrant, str] = {}
    dropped: list[Quadrant] = []
    for t, bs in blocks_of.items():
        if bs <= val:
            split[t] = "validation"
        elif not bs & val:
            split[t] = "train"
        else:
            dropped.append(t)
    return split, dropped


def plan_kinds(pair_ids: Sequence[str], n: int, rng: np.random.Generator) -> dict[str, list[str]]:
    """Share ``quotas(n)`` out over pairs: least-loaded first (seeded ties), respecting ``CAPS``."""
    q = quotas(n)
    rank = {pid: int(r) for pid, r in zip(pair_ids, rng.permutation(len(pair_ids)), strict=True)}
    load = dict.fromkeys(pair_ids, 0)
    have: dict[str, Counter[str]] = {pid: Counter() for pid in pair_ids}
    out: dict[str, list[str]] = {pid: [] for pid in pair_ids}
    for kind in sorted(KINDS, key=lambda k: (CAPS[k] is None, CAPS[k] or 0)):  # tightest caps first
        cap = CAPS[kind]
        for _ in range(q[kind]):
            free = [p for p in pair_ids if cap is None or have[p][kind] < cap]
            if not free:
                break  # only with more variants per pair than the caps allow (the config forbids that)
            p = min(free, key=lambda p: (load[p], have[p][kind], rank[p]))
            out[p].append(kind)
            load[p] += 1
            have[p][kind] += 1
    return {p: sorted(ks, key=KINDS.index) for p, ks in out.items()}


def variant_box(kind: str, size: int, rng: np.random.Generator, used: set[str]) -> Variant:
    """The infill of one example of ``kind`` on a ``size``² window (``used``: sub-kinds this pair already has)."""
    s, h = size, size // 2
    if kind == "full":
        return Variant(kind, "full", (0, 0, s, s))
    if kind in ("quadrant", "half"):
        boxes = (
            {"TL": (0, 0, h, h), "TR": (h, 0, s, h), "BL": (0, h, h, s), "BR": (h, h, s, s)}
            if kind == "quadrant"
            else {"left": (0, 0, h, s), "right": (h, 0, s, s), "top": (0, 0, s, h), "bottom": (0, h, s, s)}
        )
        free = [k for k in boxes if f"{kind}:{k}" not in used] or list(boxes)
        sub = free[int(rng.integers(len(free)))]
        return Variant(kind, sub, boxes[sub])
    if kind == "middle":
        a, b = s // 4, s - s // 4
        vertical = bool(rng.integers(2))
        return Variant(kind, "V" if vertical else "H", (a, 0, b, s) if vertical else (0, a, s, b))
    if kind == "strip":
        w = int(round(rng.uniform(*STRIP_RANGE) * s))
        off = int(rng.integers(0, s - w + 1))
        vertical = bool(rng.integers(2))
        return Variant(
            kind, "V" if vertical else "H", (off, 0, off + w, s) if vertical else (0, off, s, off + w)
        )
    if kind == "rect":
        area = rng.uniform(*RECT_AREA) * s * s
        aspect = float(np.exp(rng.uniform(np.log(RECT_ASPECT[0]), np.log(RECT_ASPECT[1]))))
        inner = s - 2 * RECT_MARGIN
        w = min(inner, int(round((area * aspect) ** 0.5)))
        hh = min(inner, int(round((area / aspect) ** 0.5)))
        x0 = RECT_MARGIN + int(rng.integers(0, inner - w + 1))
        y0 = RECT_MARGIN + int(rng.integers(0, inner - hh + 1))
        return Variant(kind, "rect", (x0, y0, x0 + w, y0 + hh))
    raise DatasetError(f"unknown example kind {kind!r}; one of {KINDS}")


def match_sizes(render: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Render and target at one size: the larger is downscaled to the smaller with nearest-neighbour.

    Both must be square (a 2×2 tile); anything else is refused rather than distorted.
    """
    for what, a in (("render", render), ("generation", target)):
        if a.ndim != 3 or a.shape[0] != a.shape[1]:
            raise DatasetError(f"pair {what} is {a.shape[1]}×{a.shape[0]}, expected a square 2×2 tile")
    n = min(render.shape[0], target.shape[0])

    def down(a: np.ndarray) -> np.ndarray:
        if a.shape[0] == n:
            return a
        return np.asarray(Image.fromarray(a).resize((n, n), Image.Resampling.NEAREST))

    return down(render), down(target)


def _pair_rng(seed: int, pair: Pair) -> np.random.Generator:
    return np.random.default_rng([seed, int(_rank(seed, "pair", pair.id)[:15], 16)])


def build_examples(
    pairs: Sequence[Pair],
    *,
    prompt: str,
    seed: int = 0,
    variants_per_pair: int = 5,
    validation_fraction: float = 0.2,
    split_block: int = 4,
    preprocess: PreprocessConfig | None = None,
) -> OmniBuild:
    """Every example of the dataset, in a deterministic order (split, then pair, then kind).

    ``preprocess``: the render preprocessing the model will get at inference (``generate.preprocess``), applied to
    the inputs' render pixels; ``None`` or inactive leaves them untouched.
    """
    if not pairs:
        raise DatasetError(
            "no pairs to build examples from: run `isonyc dataset pairs` (or materialize training_pairs)"
        )
    ids = [p.id for p in pairs]
    if len(set(ids)) != len(ids):
        dup = sorted(i for i, c in Counter(ids).items() if c > 1)
        raise DatasetError(f"pair ids {dup[:5]} occur in more than one pair set; remove the duplicate set")
    split, dropped = split_by_area(
        [(p.x, p.y) for p in pairs], seed=seed, block=split_block, validation_fraction=validation_fraction
    )
    build = OmniBuild(split_of=split)
    build.dropped = [
        {"quadrant": list(t), "reason": "its 2×2 tile straddles train and validation"} for t in dropped
    ]
    for si, name in enumerate(SPLITS):
        members = sorted((p for p in pairs if split.get((p.x, p.y)) == name), key=lambda p: (p.y, p.x, p.id))
        n = max(len(members) * variants_per_pair, len(KINDS))
        plan = plan_kinds([p.id for p in members], n, np.random.default_rng([seed, si]))
        for p in members:
            build.rows.extend(_pair_rows(p, plan[p.id], name, prompt, seed, preprocess))
    return build


def _pair_rows(
    pair: Pair, kinds: list[str], split: str, prompt: str, seed: int, preprocess: PreprocessConfig | None
) -> list[Row]:
    render, target = match_sizes(pair.render_rgb(), pair.target_rgb())
    if preprocess is not None and preprocess.active:
        # per pixel (noise keyed by world pixel): the whole render preprocessed = each infill preprocessed
        q = target.shape[0] // 2
        render = preprocess_pixels(render, preprocess, origin=(pair.x * q, pair.y * q))
    target_png = png_bytes(target, compress_level=PNG_COMPRESS_LEVEL)
    rng = _pair_rng(seed, pair)
    used: set[str] = set()
    rows = []
    for kind in kinds:
        v = variant_box(kind, target.shape[0], rng, used)
        used.add(f"{kind}:{v.sub}")
        tmpl = infill_template(render, target, v.box)
        rows.append(
            Row(
                png_bytes(tmpl, compress_level=PNG_COMPRESS_LEVEL),
                target_png,
                prompt,
                kind,
                pair.x,
                pair.y,
                split,
                seed,
            )
        )
    return rows


def preview_grid(rows: Sequence[Row], *, per_kind: int = 2, cell: int = 256) -> bytes:
    """A PNG grid of ``per_kind`` examples of every kind (input | target), from several pairs and both splits."""
    picked: list[Row] = []
    for kind in KINDS:
        of_kind = [r for r in rows if r.kind == kind]  # evenly spaced: several pairs and both splits
        n = min(per_kind, len(of_kind))
        picked += [of_kind[(2 * i + 1) * len(of_kind) // (2 * n)] for i in range(n)]
    cells = [
        (f"{r.kind} {r.split} ({r.x},{r.y})  input | target", (r.input_png, r.target_png)) for r in picked
    ]
    return grid_png(cells, cell=cell)


@dataclass(frozen=True)
class OmniResult:
    """A built dataset version and its figures (for CLI output and asset metadata)."""

    path: str
    version: int
    reused: bool
    rows: int
    counts: dict[str, dict[str, int]]
    proportions: dict[str, float]
    dropped: list[dict[str, Any]]
    pair_sets: list[str]
    fingerprint: str

    def summary(self) -> dict[str, Any]:
        return {
            "dataset": self.path,
            "version": self.version,
            "reused": self.reused,
            "examples": self.rows,
            "counts": self.counts,
            "proportions": self.proportions,
            "dropped_pairs": len(self.dropped),
            "pair_sets": self.pair_sets,
        }


def build_omni(
    training_dir: str | Path,
    *,
    prompt: str,
    seed: int = 0,
    variants_per_pair: int = 5,
    validation_fraction: float = 0.2,
    split_block: int = 4,
    pair_dirs: Sequence[str | Path] | None = None,
    preprocess: PreprocessConfig | None = None,
) -> OmniResult:
    """Build the omni dataset from pair sets (default: the newest version of each under ``training_dir``) and
    write it as the next version of ``<training_dir>/omni`` (or reuse the newest one when identical)."""
    dirs = [Path(d) for d in pair_dirs] if pair_dirs is not None else latest_pair_sets(training_dir)
    if not dirs:
        raise DatasetError(
            f"no training pairs under {training_dir}: make them first (`isonyc dataset pairs`, or materialize "
            "training_pairs)"
        )
    pairs = [p for d in dirs for p in load_pairs(d)]
    build = build_examples(
        pairs,
        prompt=prompt,
        seed=seed,
        variants_per_pair=variants_per_pair,
        validation_fraction=validation_fraction,
        split_block=split_block,
        preprocess=preprocess,
    )
    extra = {
        "seed": seed,
        "variants_per_pair": variants_per_pair,
        "validation_fraction": validation_fraction,
        "split_block": split_block,
        "mix": MIX,
        "proportions": build.proportions(),
        "pair_sets": [str(d) for d in dirs],
        "pairs": len(pairs),
        "dropped": build.dropped,
        "prompt_sha256": hashlib.sha256(prompt.encode()).hexdigest(),
        "preprocess": preprocess_provenance(preprocess),
    }
    w = write_dataset(
        Path(training_dir) / "omni", build.rows, extra=extra, files={PREVIEW_NAME: preview_grid(build.rows)}
    )
    return OmniResult(
        str(w.path),
        w.version,
        w.reused,
        w.rows,
        counts(build.rows),
        build.proportions(),
        build.dropped,
        [str(d) for d in dirs],
        w.fingerprint,
    )
