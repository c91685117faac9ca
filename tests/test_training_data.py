"""Training data (issue 15): pairs from a real generated map, fresh pairs from a fake Gemini, the omni dataset's
kinds, split, determinism and size fix, and both on-disk formats read back by Hugging Face ``datasets``."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from isonyc_dagster import layers
from isonyc_dagster.backends.gemini import GeminiBackend
from isonyc_dagster.backends.pixelart import PixelArtBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.cli.main import main
from isonyc_dagster.generate.references import ReferenceSelector, block_2x2
from isonyc_dagster.generate.rules import STOCK_PROMPT
from isonyc_dagster.generate.step import StepInputs, StepSettings, run_step
from isonyc_dagster.generate.template import TemplateError, infill_template
from isonyc_dagster.geo.config import ConfigError, load_project_config
from isonyc_dagster.geo.model_inputs import PreprocessConfig
from isonyc_dagster.geo.surfaces import BORDER_RGB
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.project import Project
from isonyc_dagster.publish.deploy import open_target
from isonyc_dagster.store import open_store
from isonyc_dagster.training import omni
from isonyc_dagster.training.dataset import COLUMNS, load_split, read_index, upload_dataset
from isonyc_dagster.training.omni import KINDS, MIX, build_examples, build_omni, match_sizes, plan_kinds
from isonyc_dagster.training.pairs import (
    NoTrainingQuadrants,
    Pair,
    build_pairs,
    collect_pairs,
    fresh_pairs,
    load_pairs,
    write_pairs,
)
from tests.dagster_helpers import project_config
from tests.fake_apis import FakeGemini, gcs_emulator

API_KEY = "AIzaSy-FAKE-TRAINING-KEY-0123456789"
#: Quadrants marked for training on the 6×2 map: complete 2×2 tiles at x = 0..4, and x = 5 whose tile is not.
STARRED = [(0, 0), (2, 0), (4, 0), (5, 0)]
REFERENCES = [(1, 0), (3, 0)]
SETTINGS = {"seed": 0, "variants_per_pair": 5, "validation_fraction": 0.2, "split_block": 2}


def make_map(tmp: Path) -> Project:
    """A real 6×2-quadrant map: synthetic-city renders and the offline backend's generation, lattice order."""
    project = Project(project_config(tmp, 0, 0, 5, 1, training={"dir": str(tmp / "training"), **SETTINGS}))
    for q in sorted(project.quadrants.keys):
        project.store_render(*q)
    inputs = StepInputs(project.store, stored=set(project.quadrants.keys), render=project.render_quadrant)
    backend = PixelArtBackend()
    for step in sorted(project.plan, key=lambda s: s.wave):
        settings = StepSettings(prompt="p", generator_key="plain")
        run_step(project.store, backend, step, inputs, inputs.template(step), settings, seed=1)
    return project


def write_config(project: Project, path: Path) -> Path:
    cfg = project.config
    lines = [
        f'bounds = "{cfg.bounds}"',
        f'store = "{cfg.store}"',
        f'cache_dir = "{cfg.cache_dir}"',
        f'output_dir = "{cfg.output_dir}"',
        "[training]",
        f'dir = "{cfg.training.dir}"',
        *(f"{k} = {v}" for k, v in SETTINGS.items()),
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    p = make_map(tmp_path_factory.mktemp("training"))
    for x, y in STARRED:
        p.store.set_flags(x, y, starred=True)
    for x, y in REFERENCES:
        p.store.set_flags(x, y, reference=True)
    return p


@pytest.fixture(scope="module")
def built(project) -> dict:
    written, report = build_pairs(project.store, project.config.training.dir)
    result = build_omni(project.config.training.dir, prompt=project.config.prompt, **SETTINGS)
    return {"pairs": written, "report": report, "omni": result}


def _tile_rgb(store, layer: str, x: int, y: int) -> np.ndarray:
    return decode_rgb(store.get_tile(layer, x, y))


def test_pairs_are_the_2x2_tiles_of_marked_quadrants_with_provenance(project, built) -> None:
    report, store = built["report"], project.store
    assert sorted((p.x, p.y) for p in report.pairs) == [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]
    assert all(p.render_layer == layers.RENDER for p in report.pairs)  # this store has no photoreal layer
    (skip,) = report.skipped
    assert skip["quadrant"] == [5, 0] and "no generation for [[6, 0], [6, 1]]" in skip["reason"]
    pair = next(p for p in report.pairs if (p.x, p.y) == (1, 0))
    assert pair.provenance["marked"] == ["reference"]
    for t in block_2x2(1, 0):
        key = f"{t[0]},{t[1]}"
        assert pair.provenance["generation_sha256"][key] == store.active(layers.GENERATION, *t).sha256
        assert pair.provenance["render_sha256"][key] == store.active(layers.RENDER, *t).sha256
    # The 2×2 tile has the quadrant at top-left: its bottom-right quarter is quadrant (2, 1).
    assert np.array_equal(pair.target_rgb()[512:, 512:], _tile_rgb(store, layers.GENERATION, 2, 1))
    assert np.array_equal(pair.render_rgb()[:512, :512], _tile_rgb(store, layers.RENDER, 1, 0))
    # Written, then read back with every image checked against its hash.
    again = {p.id: p for p in load_pairs(built["pairs"].path)}
    assert again[pair.id].target_png == pair.target_png and again[pair.id].provenance == pair.provenance
    assert (built["pairs"].path / "preview.png").is_file()


def test_photoreal_pairs_where_the_store_has_the_layer(project, tmp_path) -> None:
    src, store = project.store, open_store(str(tmp_path / "store"))
    for x in range(3):
        for y in range(2):
            for layer in (layers.RENDER, layers.GENERATION):
                store.put_tile(layer, x, y, src.get_tile(layer, x, y))
            if x < 2:  # photoreal only for the tile of (0, 0): the tile of (1, 0) lacks its right column
                dim = (_tile_rgb(src, layers.RENDER, x, y) // 2).astype(np.uint8)
                store.put_tile(layers.PHOTOREAL, x, y, png_bytes(dim))
    report = collect_pairs(store, [(0, 0), (1, 0)])
    assert sorted(p.id for p in report.pairs) == ["x0_y0_photoreal", "x0_y0_render", "x1_y0_render"]
    (skip,) = report.skipped
    assert skip["render_layer"] == "photoreal" and "no photoreal for [[2, 0], [2, 1]]" in skip["reason"]
    photo = next(p for p in report.pairs if p.render_layer == layers.PHOTOREAL)
    assert np.array_equal(photo.render_rgb()[512:, :512], _tile_rgb(store, layers.PHOTOREAL, 0, 1))


def test_no_marked_quadrant_is_one_clear_error(tmp_path, capsys) -> None:
    store = open_store(str(tmp_path / "empty"))
    with pytest.raises(NoTrainingQuadrants, match=r"isonyc dataset star X Y.*isonyc reference add X Y"):
        build_pairs(store, tmp_path / "training")
    cfg = project_config(tmp_path, 0, 0, 1, 1).model_copy(update={"store": str(tmp_path / "empty")})
    path = tmp_path / "cfg.json"
    path.write_text(cfg.model_dump_json())
    assert main(["--config", str(path), "dataset", "pairs"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        "isonyc dataset pairs: error: no quadrant is marked for training"
    )


def test_split_is_by_area_each_kind_in_both_splits_and_rebuild_is_identical(project, built, tmp_path) -> None:
    res = built["omni"]
    rows = read_index(res.path)
    assert list(rows[0]) == list(COLUMNS)
    quads = {s: set() for s in ("train", "validation")}
    for r in rows:
        quads[r["split"]] |= set(block_2x2(r["x"], r["y"]))
    assert quads["train"] and quads["validation"] and not quads["train"] & quads["validation"]
    # split_block 2 on the 6×2 map: the tiles that straddle train and validation are dropped, and named.
    assert {(r["x"], r["y"]) for r in rows} | {tuple(d["quadrant"]) for d in res.dropped} == {
        (x, 0) for x in range(5)
    }
    for split in ("train", "validation"):
        assert set(res.counts[split]) == set(KINDS), res.counts
    assert sum(res.proportions.values()) == pytest.approx(1.0, abs=1e-3)
    # Same seed and pairs: the same version (nothing rewritten), and elsewhere exactly the same files.
    again = build_omni(project.config.training.dir, prompt=project.config.prompt, **SETTINGS)
    assert again.reused and again.path == res.path and again.fingerprint == res.fingerprint
    elsewhere = build_omni(
        tmp_path, prompt=project.config.prompt, pair_dirs=[built["pairs"].path], **SETTINGS
    )
    assert not elsewhere.reused and elsewhere.fingerprint == res.fingerprint
    assert (Path(elsewhere.path) / "index.parquet").read_bytes() == (
        Path(res.path) / "index.parquet"
    ).read_bytes()
    other_seed = build_omni(
        tmp_path, prompt=project.config.prompt, pair_dirs=[built["pairs"].path], **(SETTINGS | {"seed": 7})
    )
    assert other_seed.version == 2 and other_seed.fingerprint != res.fingerprint


def test_examples_are_templates_of_render_and_generation(project, built) -> None:
    pairs = {(p.x, p.y): p for p in built["report"].pairs}
    examples = load_split(built["omni"].path, "train") + load_split(built["omni"].path, "validation")
    assert {e.kind for e in examples} == set(KINDS)
    for e in examples:
        pair = pairs[(e.x, e.y)]
        inp, tgt = np.asarray(e.input), np.asarray(e.target)
        assert inp.shape == tgt.shape == (1024, 1024, 3) and e.prompt == STOCK_PROMPT
        assert np.array_equal(tgt, pair.target_rgb())
        red = np.all(inp == BORDER_RGB, axis=-1)
        ys, xs = np.nonzero(red)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        inside = np.zeros(red.shape, bool)
        inside[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2] = True
        assert np.array_equal(inp[inside], pair.render_rgb()[inside])
        outside = np.ones(red.shape, bool)
        outside[y0:y1, x0:x1] = False
        assert np.array_equal(inp[outside], tgt[outside])
        if e.kind == "full":
            assert (x0, y0, x1, y1) == (0, 0, 1024, 1024)
        if e.kind == "rect":
            assert min(x0, y0) >= omni.RECT_MARGIN and 1024 - max(x1, y1) >= omni.RECT_MARGIN


def test_both_formats_load_with_hugging_face_datasets(built, tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, cache = Path(built["omni"].path), str(tmp_path / "hf")
    index = datasets.load_dataset(
        "parquet", data_files=str(path / "index.parquet"), split="train", cache_dir=cache
    )
    assert index.column_names == list(COLUMNS) and len(index) == built["omni"].rows
    folder = datasets.load_dataset("imagefolder", data_dir=str(path), cache_dir=cache)
    assert set(folder) == {"train", "validation"}
    assert len(folder["train"]) + len(folder["validation"]) == built["omni"].rows
    first = folder["validation"][0]
    assert first["image"].size == first["target"].size == (1024, 1024)
    row = next(r for r in index if r["input_sha256"] == first["input_sha256"])
    with Image.open(path / row["input_image"]) as im:
        assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(first["image"].convert("RGB")))
    assert Counter(folder["validation"]["kind"]) == Counter(built["omni"].counts["validation"])


def test_kind_mix_on_hundreds_of_examples_respects_the_per_pair_caps() -> None:
    ids = [f"p{i}" for i in range(120)]
    plan = plan_kinds(ids, len(ids) * 5, np.random.default_rng(3))
    kinds = Counter(k for ks in plan.values() for k in ks)
    n = sum(kinds.values())
    assert n == 600
    for k, w in MIX.items():
        assert kinds[k] / n == pytest.approx(w, abs=0.005), (k, kinds)
    for ks in plan.values():
        c = Counter(ks)
        assert c["full"] <= 1 and c["middle"] <= 1 and c["quadrant"] <= 4 and c["half"] <= 4
    # Boxes of the random kinds stay in their ranges; quadrants and halves never repeat within a pair.
    rng = np.random.default_rng(0)
    for _ in range(300):
        r = omni.variant_box("rect", 1024, rng, set())
        x0, y0, x1, y1 = r.box
        w, h = x1 - x0, y1 - y0
        assert (
            0.24 <= w * h / 1024**2 <= 0.61
            and 0.49 <= w / h <= 2.05
            and min(x0, y0, 1024 - x1, 1024 - y1) >= 16
        )
        s = omni.variant_box("strip", 1024, rng, set())
        width = min(s.box[2] - s.box[0], s.box[3] - s.box[1])
        assert 0.25 * 1024 - 1 <= width <= 0.6 * 1024 + 1
    used: set[str] = set()
    subs = []
    for _ in range(4):
        v = omni.variant_box("half", 1024, rng, used)
        used.add(f"half:{v.sub}")
        subs.append(v.sub)
    assert sorted(subs) == ["bottom", "left", "right", "top"]


def test_size_mismatch_downscales_the_larger_nearest_neighbour(built) -> None:
    pair = built["report"].pairs[0]
    render, target = pair.render_rgb(), pair.target_rgb()
    big = np.repeat(np.repeat(render, 2, axis=0), 2, axis=1)  # a 2048² render (e.g. a 2K photoreal window)
    r, t = match_sizes(big, target)
    assert r.shape == t.shape == (1024, 1024, 3) and np.array_equal(r, render) and np.array_equal(t, target)
    r, t = match_sizes(render, np.repeat(np.repeat(target, 2, axis=0), 2, axis=1))
    assert np.array_equal(t, target)
    # A 1536² render has no exact 2× structure: nearest keeps the original colours, never blends new ones.
    odd = np.asarray(Image.fromarray(render).resize((1536, 1536), Image.Resampling.NEAREST))
    r, _ = match_sizes(odd, target)
    colours = {tuple(c) for c in render.reshape(-1, 3)}
    assert r.shape == (1024, 1024, 3) and {tuple(c) for c in r.reshape(-1, 3)} <= colours
    mismatched = Pair(pair.x, pair.y, pair.render_layer, png_bytes(big), pair.target_png, pair.provenance)
    settings = SETTINGS | {"variants_per_pair": 1}
    rows = build_examples([mismatched, *built["report"].pairs[1:]], prompt="p", **settings).rows
    assert {decode_rgb(x.input_png).shape for x in rows} == {(1024, 1024, 3)}
    with pytest.raises(Exception, match="square"):
        match_sizes(render[:, :900], target)


def test_render_preprocessing_as_at_inference_only_inside_the_infill(built) -> None:
    spec = PreprocessConfig(desaturation=1.0)
    pairs = built["report"].pairs
    rows = build_examples(pairs, prompt="p", preprocess=spec, **(SETTINGS | {"variants_per_pair": 1})).rows
    plain = build_examples(pairs, prompt="p", **(SETTINGS | {"variants_per_pair": 1})).rows
    for row, ref in zip(rows, plain, strict=True):
        inp, tgt, ref_inp = decode_rgb(row.input_png), decode_rgb(row.target_png), decode_rgb(ref.input_png)
        outside = np.all(ref_inp == tgt, axis=-1) & ~np.all(ref_inp == BORDER_RGB, axis=-1)
        assert np.array_equal(inp[outside], tgt[outside])
        inside = ~np.all(ref_inp == tgt, axis=-1) & ~np.all(ref_inp == BORDER_RGB, axis=-1)
        grey = inp[inside].astype(int)
        assert inside.any() and np.abs(grey - grey.mean(axis=-1, keepdims=True)).max() <= 1


def test_infill_template_for_any_rectangle() -> None:
    rng = np.random.default_rng(1)
    render = rng.integers(0, 200, (64, 64, 3), dtype=np.uint8)
    gen = rng.integers(0, 200, (64, 64, 3), dtype=np.uint8)
    out = infill_template(render, gen, (5, 9, 40, 30))
    red = np.all(out == BORDER_RGB, axis=-1)
    assert red[9, 5:40].all() and red[29, 5:40].all() and red[9:30, 5].all() and red[9:30, 39].all()
    assert np.array_equal(out[11:28, 7:38], render[11:28, 7:38]) and np.array_equal(out[40:], gen[40:])
    for bad in ((0, 0, 65, 10), (10, 10, 13, 40), (20, 5, 10, 30)):
        with pytest.raises(TemplateError, match="infill box"):
            infill_template(render, gen, bad)
    with pytest.raises(TemplateError, match="one size"):
        infill_template(render, gen[:32], (0, 0, 10, 10))


def test_fresh_pairs_from_gemini_with_style_references(project, tmp_path) -> None:
    fast = HttpSettings(timeout_s=5.0, connect_timeout_s=1.0, max_attempts=2, backoff_base_s=0.01)
    with FakeGemini(api_key=API_KEY) as api:
        backend = GeminiBackend(API_KEY, base_url=api.url, http=fast)
        report = fresh_pairs(
            project.store, backend, [(2, 0), (5, 0)], ReferenceSelector(project.store), seed=5
        )
        (req,) = api.api_requests("generateContent")
    (pair,) = report.pairs
    assert report.skipped[0]["quadrant"] == [5, 0] and "no render" in report.skipped[0]["reason"]
    body = req.json()
    images = [p for p in body["contents"][0]["parts"] if "inline_data" in p]
    assert len(images) == 2  # the template and reference (1, 0); (3, 0) lies in the tile being drawn
    prov = pair.provenance
    assert prov["source"] == "model" and prov["model"] == "gemini:gemini-3-pro-image-preview"
    assert [r["key"] for r in prov["style_refs"]] == ["1,0"]
    assert API_KEY not in json.dumps(prov)
    assert np.array_equal(
        pair.render_rgb(),
        np.vstack(
            [np.hstack([_tile_rgb(project.store, layers.RENDER, x, y) for x in (2, 3)]) for y in (0, 1)]
        ),
    )
    assert not np.all(pair.target_rgb() == BORDER_RGB, axis=-1).any()  # validated: no red border left
    written = write_pairs(tmp_path, "model-gemini", report)
    assert load_pairs(written.path)[0].id == "x2_y0_render_gemini-gemini-3-pro-image-preview"


def test_cli_star_pairs_from_model_and_build(project, tmp_path, capsys, monkeypatch) -> None:
    cfg = write_config(project, tmp_path / "isonyc.toml")
    assert load_project_config(cfg).training.split_block == 2
    assert main(["--config", str(cfg), "dataset", "star", "1", "1"]) == 0
    assert [1, 1] in json.loads(capsys.readouterr().out)["starred"]
    assert main(["--config", str(cfg), "dataset", "unstar", "1", "1"]) == 0
    assert [1, 1] not in json.loads(capsys.readouterr().out)["starred"]
    assert main(["--config", str(cfg), "dataset", "star", "9", "9"]) == 2
    assert "have no generation" in capsys.readouterr().err
    with FakeGemini(api_key=API_KEY) as api:
        monkeypatch.setenv("ISONYC_GEMINI_API_KEY", API_KEY)
        monkeypatch.setenv("ISONYC_BACKEND_SETTINGS", json.dumps({"url": api.url}))
        argv = ["--config", str(cfg), "dataset", "pairs", "--from-model", "gemini", "--quadrants", "0", "0"]
        assert main(argv) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["count"] == 1 and "/pairs/model-gemini/v1" in out["pairs"]
    assert main(["--config", str(cfg), "dataset", "build", "--seed", "3"]) == 0
    built = json.loads(capsys.readouterr().out)
    sets = [Path(s).parent.name for s in built["pair_sets"]]
    assert sets == ["model-gemini", "store"] and built["examples"] > 0


def test_upload_to_gcs_emulator(built) -> None:
    pytest.importorskip("gcp_storage_emulator")
    path = Path(built["omni"].path)
    with gcs_emulator("datasets") as (_url, client):
        sent = upload_dataset(path, open_target("gs://datasets/isonyc", gcs_client=client), prefix="omni/v1")
        names = {b.name for b in client.list_blobs("datasets")}
        index = client.bucket("datasets").blob("isonyc/omni/v1/index.parquet").download_as_bytes()
    files = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert sent == len(files) and names == {f"isonyc/omni/v1/{f}" for f in files}
    assert index == (path / "index.parquet").read_bytes()


def test_training_config_table(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[training]\ndir = "td"\nseed = 4\n')
    cfg = load_project_config(path)
    assert cfg.training.dir == str(tmp_path / "td") and cfg.training.seed == 4
    assert load_project_config(None).training is None
    path.write_text("[training]\nsplit = 3\n")
    with pytest.raises(ConfigError, match="training.split"):
        load_project_config(path)
    assert os.path.basename(cfg.training.dir) == "td"
