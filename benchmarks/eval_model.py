"""Evaluate an edit model (an ``edit_b64`` endpoint: ``inference/server.py`` with a LoRA) on the omni dataset's
held-out validation split, or compare two endpoints (two LoRAs) on exactly the same examples and seeds.

For every validation example the template is sent through the project's :class:`ModalBackend` (the client the
pipeline uses) and the answer is scored against the example's target:

- **ssim** — SSIM of the answer's infill against the target's infill (``stylesearch.metrics.ssim``, Gaussian window,
  mean over RGB). The infill is the rectangle outlined by the template's red border (every omni kind is one
  rectangle), so the mask is that crop. 1 = identical.
- **seam** — ``generate.seams.qa_seam_score`` (the QA check's score, 0 = invisible) on each side of the infill that
  touches context, measured where the map would see it: the answer's infill pasted into the template's context (the
  pipeline keeps the context it sent and crops the infill). The worst side counts (``seams.aggregate``);
  ``seam_fail`` is the share of examples above ``QA_THRESHOLD``. ``full`` examples have no context edge.
- **red** — share of answers whose infill keeps more than ``qa.MAX_RED_PX`` red-border pixels (``qa.red_pixels``).
- **blank** — share of answers whose infill fails the QA ``not_blank`` check (``qa.assess``).
- **ctx_mae** — mean absolute change (grey levels) of the context outside the infill: what the model repainted
  that it should have kept (informative; the pipeline discards it).
- **errors** — examples the endpoint failed to answer (after the client's retries); they are left out of the means.

The ``targets`` reference row scores the targets themselves (ssim 1; their own seams are the floor to expect).

    export ISONYC_MODAL_KEY=wk-... ISONYC_MODAL_SECRET=ws-...        # when the endpoints need proxy auth
    python benchmarks/eval_model.py --dataset data/training/omni --endpoint https://…-web.modal.run/edit_b64 \\
        [--compare https://…other-lora…/edit_b64] [--steps 14] [--seed 0] [--limit 50] [--json eval.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from isonyc_dagster.backends.base import BackendError, GenerationRequest
from isonyc_dagster.backends.modal import ModalBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.errors import IsonycError
from isonyc_dagster.generate.qa import MAX_RED_PX, assess, red_pixels
from isonyc_dagster.generate.seams import QA_THRESHOLD, aggregate, qa_seam_score
from isonyc_dagster.generate.template import red_mask
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.stylesearch.metrics import ssim
from isonyc_dagster.training.dataset import Example, load_split

#: Summary metrics, in table order: name → True when higher is better.
METRICS: dict[str, bool] = {
    "ssim": True,
    "seam": False,
    "seam_fail": False,
    "red": False,
    "blank": False,
    "ctx_mae": False,
    "errors": False,
}


@dataclass(frozen=True)
class Score:
    """One answer's scores (``seam`` None: the infill touches no context)."""

    kind: str
    ssim: float
    seam: float | None
    red_px: int
    blank: bool
    ctx_mae: float


def infill_box(template: np.ndarray) -> tuple[int, int, int, int]:
    """The infill rectangle (x0, y0, x1, y1), exclusive end: the bounding box of the template's red border."""
    m = red_mask(template)
    if not m.any():
        raise ValueError("the template has no red border: not an omni template")
    ys, xs = np.nonzero(m)
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def context_seams(image: np.ndarray, box: tuple[int, int, int, int]) -> dict[str, float]:
    """QA seam score of each side of ``box`` that has at least 2 px of context beyond it."""
    x0, y0, x1, y1 = box
    h, w = image.shape[:2]
    inner = image[y0:y1, x0:x1]
    out = {}
    if x0 >= 2:
        out["left"] = qa_seam_score(image[y0:y1, :x0], inner, "lr")
    if w - x1 >= 2:
        out["right"] = qa_seam_score(inner, image[y0:y1, x1:], "lr")
    if y0 >= 2:
        out["top"] = qa_seam_score(image[:y0, x0:x1], inner, "tb")
    if h - y1 >= 2:
        out["bottom"] = qa_seam_score(inner, image[y1:, x0:x1], "tb")
    return out


def score_answer(example: Example, answer: np.ndarray) -> Score:
    """Score a model's answer (H, W, 3 uint8) to ``example``'s template against its target."""
    template = np.asarray(example.input.convert("RGB"))
    target = np.asarray(example.target.convert("RGB"))
    if answer.shape != template.shape:
        raise ValueError(f"answer is {answer.shape}, template {template.shape}")
    x0, y0, x1, y1 = box = infill_box(template)
    infill = answer[y0:y1, x0:x1]
    placed = template.copy()  # what the map gets: the context sent, the answer's infill
    placed[y0:y1, x0:x1] = infill
    seams = context_seams(placed, box)
    context = np.ones(template.shape[:2], bool)
    context[y0:y1, x0:x1] = False
    diff = np.abs(answer.astype(np.int16) - template.astype(np.int16)).mean(-1)
    return Score(
        kind=example.kind,
        ssim=ssim(infill, target[y0:y1, x0:x1]),
        seam=aggregate(seams) if seams else None,
        red_px=red_pixels(infill),
        blank=not assess(infill).blank_ok,
        ctx_mae=float(diff[context].mean()) if context.any() else 0.0,
    )


def summarise(scores: Sequence[Score | None]) -> dict[str, float]:
    """Means and rates over the answered examples (``None`` = an error); NaN where nothing applies."""
    ok = [s for s in scores if s is not None]
    seams = [s.seam for s in ok if s.seam is not None]

    def mean(values: Sequence[float]) -> float:
        return float(np.mean(values)) if len(values) else math.nan

    return {
        "n": float(len(scores)),
        "ssim": mean([s.ssim for s in ok]),
        "seam": mean(seams),
        "seam_fail": mean([float(v > QA_THRESHOLD) for v in seams]),
        "red": mean([float(s.red_px > MAX_RED_PX) for s in ok]),
        "blank": mean([float(s.blank) for s in ok]),
        "ctx_mae": mean([s.ctx_mae for s in ok]),
        "errors": float(len(scores) - len(ok)),
    }


def summary_by_kind(scores: Sequence[Score | None], kinds: Sequence[str]) -> dict[str, dict[str, float]]:
    """``all`` plus one summary per kind present (in first-seen order)."""
    out = {"all": summarise(scores)}
    for kind in dict.fromkeys(kinds):
        out[kind] = summarise([s for s, k in zip(scores, kinds, strict=True) if k == kind])
    return out


def evaluate(
    examples: Sequence[Example],
    generate: Callable[[Example, int], np.ndarray],
    *,
    seed: int = 0,
    concurrency: int = 1,
) -> list[Score | None]:
    """Score ``generate(example, seed + i)`` for every example; a ``BackendError`` scores None (an error)."""

    def one(i: int) -> Score | None:
        try:
            return score_answer(examples[i], generate(examples[i], seed + i))
        except BackendError as e:
            print(f"example {i} ({examples[i].kind}): {e}", file=sys.stderr)
            return None

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(one, range(len(examples))))


def endpoint_generator(backend: ModalBackend) -> Callable[[Example, int], np.ndarray]:
    def generate(example: Example, seed: int) -> np.ndarray:
        template = png_bytes(np.asarray(example.input.convert("RGB")))
        res = backend.generate(GenerationRequest(template, prompt=example.prompt, seed=seed))
        return decode_rgb(res.image_png)

    return generate


def _fmt(v: float) -> str:
    return "—" if math.isnan(v) else f"{v:.3f}"


def format_table(columns: dict[str, dict[str, dict[str, float]]], reference: str = "targets") -> str:
    """Rows = kind × metric, one column per scored set (name → kind → metric → value); with two models besides
    ``reference``, a last column names the better one."""
    names = list(columns)
    models = [n for n in names if n != reference]
    kinds = list(next(iter(columns.values())))
    tag = {n: chr(ord("A") + i) for i, n in enumerate(models)} if len(models) > 1 else {}
    head = ["kind", "metric", *(f"{tag[n]}: {n}" if n in tag else n for n in names)]
    head += ["better"] if tag else []
    rows = [head]
    for kind in kinds:
        n = int(columns[names[0]][kind]["n"])
        for metric, higher in METRICS.items():
            values = [columns[name][kind][metric] for name in names]
            row = [f"{kind} ({n})" if metric == "ssim" else "", metric, *map(_fmt, values)]
            if len(models) > 1:
                real = [
                    (columns[n][kind][metric], n) for n in models if not math.isnan(columns[n][kind][metric])
                ]
                best = (max if higher else min)(real)[0] if real else math.nan
                winners = [name for v, name in real if v == best]
                row.append(tag[winners[0]] if len(winners) == 1 else "=")
            rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def make_backend(url: str, args: argparse.Namespace) -> ModalBackend:
    key, secret = os.environ.get("ISONYC_MODAL_KEY"), os.environ.get("ISONYC_MODAL_SECRET")
    return ModalBackend(
        url,
        token_id=key or None,
        token_secret=secret or None,
        steps=args.steps,
        http=HttpSettings(
            timeout_s=args.timeout, max_attempts=args.attempts, max_concurrency=args.concurrency
        ),
    )


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset", required=True, help="omni dataset version dir, or its parent (newest version)"
    )
    p.add_argument("--endpoint", required=True, help="edit_b64 URL of the model to evaluate")
    p.add_argument(
        "--compare", default=None, help="edit_b64 URL of a second model, scored on the same examples"
    )
    p.add_argument("--split", default="validation", choices=("validation", "train"))
    p.add_argument("--steps", type=int, default=14)
    p.add_argument("--seed", type=int, default=0, help="example i is generated with seed + i (both models)")
    p.add_argument("--limit", type=int, default=None, help="only the first N examples")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--attempts", type=int, default=3)
    p.add_argument("--json", default=None, help="write every score and the summaries here")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        examples = load_split(args.dataset, args.split)[: args.limit]
        if not examples:
            raise ValueError(f"{args.dataset} has no {args.split} examples")
        kinds = [e.kind for e in examples]
        urls = [args.endpoint] + ([args.compare] if args.compare else [])
        backends = [make_backend(u, args) for u in urls]
    except (IsonycError, ValueError) as e:
        print(f"eval_model: error: {e}", file=sys.stderr)
        return 2
    scores: dict[str, list[Score | None]] = {
        "targets": [score_answer(e, np.asarray(e.target.convert("RGB"))) for e in examples]
    }
    for url, backend in zip(urls, backends, strict=True):
        try:
            scores[url] = evaluate(
                examples, endpoint_generator(backend), seed=args.seed, concurrency=args.concurrency
            )
        finally:
            backend.close()
    columns = {name: summary_by_kind(s, kinds) for name, s in scores.items()}
    print(
        f"{len(examples)} {args.split} examples of {args.dataset}, seeds {args.seed}..{args.seed + len(examples) - 1}"
    )
    print(format_table(columns))
    if args.json:
        report: dict[str, Any] = {
            "dataset": str(args.dataset),
            "split": args.split,
            "seed": args.seed,
            "summary": columns,
            "scores": {n: [asdict(s) if s else None for s in v] for n, v in scores.items()},
        }
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
