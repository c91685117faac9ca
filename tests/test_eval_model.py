"""``benchmarks/eval_model.py`` against the real inference server app (``create_app``) under uvicorn on 127.0.0.1:
the tiny random Qwen-Image-Edit pipeline with a LoRA (``QwenLoraPipeline``, as on Modal) versus a "perfect" model (a
pipeline that answers each template's target: the calibration reference) on a tiny omni dataset's validation split.
The scores are finite, the perfect model wins where it must, and every metric can fail (answers that keep the red
border, blank answers, repainted context).
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from benchmarks.eval_model import infill_box, main, score_answer, summarise
from inference.server import EditRequest, create_app
from isonyc_dagster.generate.seams import QA_THRESHOLD
from isonyc_dagster.generate.template import draw_red_border
from isonyc_dagster.images import png_bytes
from isonyc_dagster.training.dataset import Example, Row, load_split, write_dataset
from tests.fake_apis import serve_asgi

SIDE = 64


def pair(box: tuple[int, int, int, int], seed: int) -> tuple[bytes, bytes]:
    """(template, target): the target is one continuous textured "generation"; the template is the target with a
    darker "render" inside ``box`` under the 2 px red border, as the omni dataset builds them."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    target = np.stack([(xx * 3) % 200 + 20, (yy * 5) % 180 + 30, ((xx + yy) * 2) % 160 + 40], -1)
    target = np.clip(target + rng.integers(-6, 7, target.shape), 0, 254).astype(np.uint8)
    x0, y0, x1, y1 = box
    template = target.copy()
    template[y0:y1, x0:x1] = template[y0:y1, x0:x1] // 2 + 60
    draw_red_border(template, box)
    return png_bytes(template), png_bytes(target)


def rows() -> list[Row]:
    """Three held-out examples (one with the infill at the image edge) and one training example."""
    boxes = [(16, 16, 48, 48), (0, 16, 32, 48), (24, 8, 56, 40), (16, 16, 48, 48)]
    kinds = ["rect", "half", "rect", "rect"]
    return [
        Row(*pair(box, i), "fill in", kind, i, 0, "train" if i == 3 else "validation", 0)
        for i, (box, kind) in enumerate(zip(boxes, kinds, strict=True))
    ]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("omni"), rows()).path


def _key(image: Image.Image) -> str:
    return hashlib.sha256(np.asarray(image.convert("RGB")).tobytes()).hexdigest()


class PerfectPipeline:
    """Answers each known template with its target: the best any model can score (calibration)."""

    model_id, lora = "perfect", "none"

    def __init__(self, examples: list[Example]) -> None:
        self.targets = {_key(e.input): e.target for e in examples}

    def __call__(self, image: Image.Image, req: EditRequest, seed: int) -> Image.Image:
        return self.targets[_key(image)]


@pytest.fixture(scope="module")
def tiny_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    pytest.importorskip("torch")
    pytest.importorskip("diffusers")
    pytest.importorskip("peft")
    from inference.server import QwenLoraPipeline
    from tests.tiny_qwen import LORA_FILE, tiny_pipeline, write_random_lora

    lora_dir = tmp_path_factory.mktemp("loras") / "tiny-random-lora"
    write_random_lora(lora_dir)
    pipeline = QwenLoraPipeline(
        "tiny-random/qwen-image-edit",
        None,
        lora_dir,
        LORA_FILE,
        cache_dir="unused",
        pipe=tiny_pipeline(),
        device="cpu",
    )
    with serve_asgi(create_app(pipeline)) as url:
        yield f"{url}/edit_b64"


def test_the_perfect_model_beats_the_tiny_random_one_on_the_held_out_split(
    dataset, tiny_url, tmp_path, capsys
):
    perfect = PerfectPipeline(load_split(dataset, "validation"))
    with serve_asgi(create_app(perfect)) as url:
        out = tmp_path / "eval.json"
        argv = [
            "--dataset",
            str(dataset),
            "--endpoint",
            tiny_url,
            "--compare",
            f"{url}/edit_b64",
            "--steps",
            "2",
        ]
        assert main([*argv, "--json", str(out)]) == 0
    table = capsys.readouterr().out
    report = json.loads(out.read_text())
    tiny, best, targets = (report["summary"][k]["all"] for k in (tiny_url, f"{url}/edit_b64", "targets"))
    assert tiny["n"] == best["n"] == 3 and tiny["errors"] == best["errors"] == 0
    assert all(math.isfinite(tiny[m]) for m in ("ssim", "seam", "seam_fail", "red", "blank", "ctx_mae"))
    assert best["ssim"] == pytest.approx(1.0) and tiny["ssim"] < 0.9
    assert best["red"] == best["blank"] == 0.0 and best["seam"] <= QA_THRESHOLD
    assert best["seam"] == pytest.approx(
        targets["seam"]
    )  # the perfect answer placed in its context is the target
    assert best["ctx_mae"] < tiny["ctx_mae"]  # the target keeps the context; a random model repaints it
    assert set(report["summary"][tiny_url]) == {"all", "rect", "half"}
    # The table names both models and which one is better per metric.
    lines = table.splitlines()
    assert tiny_url in lines[1] and f"{url}/edit_b64" in lines[1] and lines[1].endswith("better")
    ssim_row = next(line for line in lines if line.startswith("all (3)"))
    assert f"A: {tiny_url}" in lines[1] and f"B: {url}/edit_b64" in lines[1]
    assert ssim_row.split()[-1] == "B"  # the perfect model has the better SSIM


def test_each_metric_can_fail(dataset):
    examples = load_split(dataset, "validation")
    scores = {
        "target": [score_answer(e, np.asarray(e.target)) for e in examples],
        "echo": [
            score_answer(e, np.asarray(e.input)) for e in examples
        ],  # the template back, red border and all
        "flat": [score_answer(e, np.full((SIDE, SIDE, 3), 128, np.uint8)) for e in examples],
    }
    s = {k: summarise(v) for k, v in scores.items()}
    assert s["target"]["red"] == 0.0 and s["echo"]["red"] == 1.0
    assert s["target"]["blank"] == 0.0 and s["flat"]["blank"] == 1.0
    assert s["target"]["ssim"] == pytest.approx(1.0) and max(s["flat"]["ssim"], s["echo"]["ssim"]) < 0.6
    assert s["flat"]["seam"] > QA_THRESHOLD >= s["target"]["seam"]  # a grey box in textured context is a seam
    assert s["echo"]["ctx_mae"] == 0.0 and s["flat"]["ctx_mae"] > 20
    # The half example's infill touches the left edge: three context sides, not four.
    half = next(e for e in examples if e.kind == "half")
    assert infill_box(np.asarray(half.input)) == (0, 16, 32, 48)


def test_bad_input_is_one_line(tmp_path, capsys):
    assert main(["--dataset", str(tmp_path), "--endpoint", "http://127.0.0.1:9/edit_b64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("eval_model: error: ") and "\n" not in err
    ds = write_dataset(tmp_path / "omni", rows()).path
    assert main(["--dataset", str(ds), "--endpoint", "ftp://nowhere"]) == 2
    assert "http(s) URL" in capsys.readouterr().err
