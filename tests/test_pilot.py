"""The seam pilot, offline: a deterministic world-aligned test backend and a synthetic render."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster.backends.base import BackendError, GenerationRequest, GenerationResult, ImageBackend
from isonyc_dagster.backends.modal import ModalBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.generate.candidates import candidate_seeds, generate_candidates
from isonyc_dagster.generate.pilot import run_pilot
from isonyc_dagster.generate.template import draw_red_border
from isonyc_dagster.images import png_bytes
from tests.fake_apis import serve_asgi

T = 64  # tile size in these tests (production: 512)


def world(x0: int, y0: int, w: int, h: int) -> np.ndarray:
    """'Finished pixel art' of the whole map as a function of world pixels: 8 px blocks + roads.

    Nothing in it lines up with the 64 px tile grid (an edge exactly on a tile boundary would look like
    a seam to any local measure; see the seams module).
    """
    ys, xs = np.mgrid[y0 : y0 + h, x0 : x0 + w]
    block = (((xs + 4) // 8) * 7 + ((ys + 4) // 8) * 13) % 5  # block edges at 4 mod 8
    img = np.stack([60 + block * 30, 80 + block * 20, 100 + block * 10], -1)
    img[((xs + 20) % 64) < 3] = (90, 90, 95)  # roads: edges at 44/47 mod 64
    img[((ys + 20) % 32) < 3] = (90, 90, 95)
    return img.astype(np.uint8)


def render_tile(x: int, y: int) -> np.ndarray:
    """A 'whitebox render' of tile (x, y): the same world, greyed (what a renderer would show)."""
    img = world(x * T, y * T, T, T).astype(int)
    return (img.mean(-1, keepdims=True).repeat(3, -1) * 0.8 + 30).astype(np.uint8)


def tone_offset(seed: int) -> int:
    """Each seed's colour drift; seeds for one tile cover 0, 12, 24, 36 in a tile-dependent order."""
    return ((seed * 3 + seed // 4) % 4) * 12


class WorldBackend(ImageBackend):
    """Paints the true world into the infill, shifted by a seed-dependent tone: only offset 0 is seamless."""

    name = "world-test"
    model_id = "world-v1"

    def __init__(self, fail_at: int | None = None) -> None:
        self.requests: list[GenerationRequest] = []
        self.fail_at = fail_at

    def generate(self, request: GenerationRequest) -> GenerationResult:
        self.requests.append(request)
        if self.fail_at is not None and len(self.requests) > self.fail_at:
            raise BackendError("world-test: endpoint down", retryable=True)
        tpl = np.array(Image.open(io.BytesIO(request.template_png)).convert("RGB"))
        x0, y0, x1, y1 = request.infill_box
        red = (tpl[..., 0] == 255) & (tpl[..., 1] == 0) & (tpl[..., 2] == 0)
        assert red[y0, x0:x1].all() and red[y0 + 1, x0:x1].all() and red[y0:y1, x1 - 1].all()  # 2 px border
        assert not red[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2].any()
        ox, oy = request.origin_px
        out = tpl.copy()
        painted = world(ox + x0, oy + y0, x1 - x0, y1 - y0).astype(int) + tone_offset(request.seed)
        out[y0:y1, x0:x1] = np.clip(painted, 0, 255).astype(np.uint8)
        prov = {
            "backend": self.name,
            "model_id": self.model_id,
            "seed": request.seed,
            "attempts": 1,
            "latency_s": 0.0,
            "prompt_sha256": request.prompt_sha256,
        }
        return GenerationResult(png_bytes(out), prov)


def load(path) -> np.ndarray:
    return np.array(Image.open(path).convert("RGB"))


def test_pilot_picks_the_seamless_candidate_and_writes_everything(tmp_path):
    backend = WorldBackend()
    report = run_pilot(2, -1, 3, 2, 4, 8, tmp_path, backend, render_tile)
    assert report["status"] == "done" and report["neighbour_mode"] == "left+top"
    assert [(t["x"], t["y"]) for t in report["tiles"]] == [(2, -1), (3, -1), (4, -1), (2, 0), (3, 0), (4, 0)]
    first = report["tiles"][0]
    assert first["chosen"] == 0 and first["scores"] == {}  # nothing accepted to compare with yet
    base = tone_offset(first["chosen_seed"])
    for t in report["tiles"][1:]:
        cands = t["candidates"]
        assert len(cands) == 4 and len({c["seed"] for c in cands}) == 4
        # the chosen candidate continues the accepted tiles' tone; the others were scored worse
        assert tone_offset(t["chosen_seed"]) == base
        chosen = cands[t["chosen"]]
        assert chosen["score"] < 1.0 and not t["over_threshold"]
        assert all(c["score"] > chosen["score"] + 3 for c in cands if c["index"] != t["chosen"])
        assert set(t["scores"]) == (
            {"left", "top"} if t["x"] > 2 and t["y"] > -1 else {"left"} if t["x"] > 2 else {"top"}
        )
        assert chosen["model_id"] == "world-v1" and chosen["attempts"] == 1 and chosen["fallbacks"] == []
    # files: accepted tiles, every candidate, templates, mosaic, heatmap, report
    mosaic = load(tmp_path / "mosaic.png")
    assert mosaic.shape == (2 * T, 3 * T, 3)
    for t in report["tiles"]:
        x, y = t["x"], t["y"]
        tile = load(tmp_path / "tiles" / f"{x}_{y}.png")
        col, row = x - 2, y + 1
        assert np.array_equal(mosaic[row * T : (row + 1) * T, col * T : (col + 1) * T], tile)
        for c in t["candidates"]:
            assert (tmp_path / c["file"]).exists()
        assert np.array_equal(load(tmp_path / t["candidates"][t["chosen"]]["file"]), tile)
    assert load(tmp_path / "seam_heatmap.png").shape == mosaic.shape
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    s = report["summary"]
    assert s["tiles"] == 6 and s["edges"] == 7 and s["model_calls"] == 24 and s["edges_over_threshold"] == 0


def test_template_shows_accepted_neighbours_and_pads_with_render(tmp_path):
    backend = WorldBackend()
    run_pilot(0, 0, 2, 2, 1, 8, tmp_path, backend, render_tile)
    tpl = load(tmp_path / "candidates" / "1_1" / "template.png")
    assert tpl.shape == (2 * T, 2 * T, 3)
    assert np.array_equal(tpl[:T, :T], load(tmp_path / "tiles" / "0_0.png"))  # top-left: accepted
    assert np.array_equal(tpl[:T, T:], load(tmp_path / "tiles" / "1_0.png"))  # top: accepted
    assert np.array_equal(tpl[T:, :T], load(tmp_path / "tiles" / "0_1.png"))  # left: accepted
    inner = tpl[T + 2 : 2 * T - 2, T + 2 : 2 * T - 2]
    assert np.array_equal(inner, render_tile(1, 1)[2:-2, 2:-2])  # infill: render inside the red border
    first = load(tmp_path / "candidates" / "0_0" / "template.png")
    assert np.array_equal(first[:T, :T], render_tile(-1, -1))  # nothing accepted yet: render padding
    req = backend.requests[3]
    assert req.infill_box == (T, T, 2 * T, 2 * T) and req.origin_px == (0, 0)


def test_failure_leaves_partial_report_and_raises(tmp_path):
    with pytest.raises(BackendError, match="all 2 candidates failed.*endpoint down"):
        run_pilot(0, 0, 2, 2, 2, 8, tmp_path, WorldBackend(fail_at=5), render_tile)
    report = json.loads((tmp_path / "report.json").read_text())
    # calls 1-5 succeed: tiles (0,0) and (1,0) complete; (0,1) keeps its one good candidate (the failed
    # one is recorded with its error); both candidates of (1,1) fail and the pilot stops there.
    assert report["status"] == "failed" and report["error"].startswith("tile (1, 1): all 2 candidates failed")
    tiles = report["tiles"]
    assert [(t["x"], t["y"]) for t in tiles] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert tiles[2]["chosen"] == 0 and "endpoint down" in tiles[2]["candidates"][1]["error"]
    assert "file" not in tiles[2]["candidates"][1] and "chosen" not in tiles[3]
    assert (tmp_path / "tiles" / "0_1.png").exists() and not (tmp_path / "tiles" / "1_1.png").exists()
    assert not (tmp_path / "mosaic.png").exists()
    with pytest.raises(FileExistsError, match="already holds a pilot"):
        run_pilot(0, 0, 1, 1, 1, 8, tmp_path, WorldBackend(), render_tile)


def test_bad_arguments_are_clear(tmp_path):
    with pytest.raises(ValueError, match="neighbour_mode 'all' is not supported"):
        run_pilot(0, 0, 1, 1, 1, 8, tmp_path, WorldBackend(), render_tile, neighbour_mode="all")
    with pytest.raises(ValueError, match="k \\(candidates per tile\\) must be >= 1"):
        run_pilot(0, 0, 1, 1, 0, 8, tmp_path, WorldBackend(), render_tile)
    with pytest.raises(ValueError, match=r"must return a square \(T, T, 3\) uint8 array"):
        run_pilot(0, 0, 1, 1, 1, 8, tmp_path, WorldBackend(), lambda x, y: np.zeros((4, 5)))
    with pytest.raises(ValueError, match="overlap_px .* at most half the tile"):
        run_pilot(0, 0, 1, 1, 1, 40, tmp_path, WorldBackend(), render_tile)


def test_candidates_keep_failures_and_pick_best():
    class FlakyWorld(WorldBackend):
        def generate(self, request):
            if request.seed == 2:
                raise BackendError("world-test: HTTP 503 after 5 attempts", retryable=True)
            return super().generate(request)

    backend = FlakyWorld()
    window = np.zeros((2 * T, 2 * T, 3), np.uint8)
    window[T:, T:] = render_tile(1, 1)
    draw_red_border(window, (T, T, 2 * T, 2 * T))
    req = GenerationRequest(png_bytes(window), infill_box=(T, T, 2 * T, 2 * T), origin_px=(0, 0))

    def split(png: bytes) -> dict:
        return {(1, 1): np.array(Image.open(io.BytesIO(png)))[T:, T:]}

    ctx = {(0, 1): world(0, T, T, T) + 12}  # accepted left neighbour drawn with tone 12
    cs = generate_candidates(backend, req, 4, split=split, context=ctx, seeds=[0, 1, 2, 3], parallel=2)
    assert tone_offset(cs.best.seed) == 12 and cs.best.score < 1.0
    assert [c.seed for c in cs.candidates] == [0, 1, 2, 3]
    failed = cs.candidates[2]
    assert not failed.ok and failed.retryable and "HTTP 503" in failed.error and failed.score is None
    assert all(c.score > cs.best.score for c in cs.candidates if c.ok and c is not cs.best)
    assert candidate_seeds(3, 10) == [10, 11, 12] and len(set(candidate_seeds(5, None))) == 5
    with pytest.raises(ValueError, match="distinct"):
        generate_candidates(backend, req, 2, split=split, context=ctx, seeds=[1, 1])


def test_pilot_end_to_end_through_modal_client_and_inference_app(tmp_path):
    """The whole remote path on 127.0.0.1: pilot → ModalBackend → FastAPI inference app → tiny pipeline."""
    from inference.server import create_app

    class WorldPipeline:
        model_id, lora = "world-pipeline", "world-lora@sha256:1"

        def __call__(self, image, req, seed):
            arr = np.array(image)
            red = (arr[..., 0] == 255) & (arr[..., 1] == 0) & (arr[..., 2] == 0)
            ys, xs = np.nonzero(red)
            y0, x0 = ys.min(), xs.min()
            # The pipeline does not know the world position: it continues the texture of its left/top context.
            arr[y0:, x0:] = (
                arr[y0 - T : y0, x0 - T : x0] if seed % 2 == 0 else 255 - arr[y0 - T : y0, x0 - T : x0]
            )
            return Image.fromarray(arr)

    with serve_asgi(create_app(WorldPipeline())) as url:
        backend = ModalBackend(f"{url}/edit_b64", http=HttpSettings(timeout_s=10, max_attempts=2))
        report = run_pilot(0, 0, 2, 1, 2, 4, tmp_path, backend, render_tile, base_seed=100)
    assert report["status"] == "done" and report["summary"]["model_calls"] == 4
    second = report["tiles"][1]
    assert second["candidates"][0]["model_id"] == "world-pipeline"
    # the inverted candidate (odd seed) has the worse seam and is not chosen
    assert second["chosen_seed"] % 2 == 0
    scores = {c["seed"] % 2: c["score"] for c in second["candidates"]}
    assert scores[1] > scores[0]
