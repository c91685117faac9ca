"""What a step sends besides its template: style references and anchors, prompts from files and area rules,
render preprocessing; through the real step code against a generateContent server on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest

from isonyc_dagster import layers
from isonyc_dagster.backends.base import GenerationRequest
from isonyc_dagster.backends.gemini import DEFAULT_PROMPT as GEMINI_PROMPT
from isonyc_dagster.backends.gemini import GeminiBackend
from isonyc_dagster.backends.pixelart import PixelArtBackend
from isonyc_dagster.backends.transport import HttpSettings
from isonyc_dagster.generate.plan import LatticePlan, raster_steps
from isonyc_dagster.generate.preprocess import preprocess_template, world_normal
from isonyc_dagster.generate.references import ReferenceMissing, ReferenceSelector
from isonyc_dagster.generate.rules import STOCK_PROMPT, StepRules, step_settings
from isonyc_dagster.generate.step import StepInputs, StepSettings, run_step
from isonyc_dagster.geo.config import ConfigError, ProjectConfig, load_project_config
from isonyc_dagster.geo.geometry import MapGeometry
from isonyc_dagster.geo.model_inputs import AreaRule, PreprocessConfig
from isonyc_dagster.geo.surfaces import BORDER_RGB, PALETTE
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.render import RenderResult
from isonyc_dagster.store.local import LocalTileStore
from tests.dagster_helpers import rect_bounds_geojson
from tests.fake_apis import FakeGemini

API_KEY = "AIzaSy-FAKE-GEMINI-KEY-model-inputs"
FAST = HttpSettings(timeout_s=5.0, connect_timeout_s=1.0, max_attempts=1)
Q = 32


def _render(x: int, y: int) -> RenderResult:
    rng = np.random.default_rng(1000 * (x + 50) + y + 57)
    surface = rng.integers(1, 6, (Q, Q), dtype=np.uint8)
    building = rng.integers(0, 3, (Q, Q), dtype=np.int32)
    height = rng.random((Q, Q), dtype=np.float32)
    return RenderResult(
        rgb=PALETTE[surface], surface=surface, building=building, height=height, origin_px=(x * Q, y * Q)
    )


def _tile(x: int, y: int) -> np.ndarray:
    return np.random.default_rng(77 * x + y).integers(0, 200, (Q, Q, 3), dtype=np.uint8)


def _generate(store: LocalTileStore, *keys: tuple[int, int]) -> None:
    for x, y in keys:
        store.put_tile(layers.GENERATION, x, y, png_bytes(_tile(x, y)), {"at": time.time()})
        time.sleep(0.002)  # distinct creation times: recency is a tie-break


def _sent_images(api: FakeGemini) -> list[bytes]:
    parts = api.requests[-1].json()["contents"][0]["parts"]
    return [base64.b64decode(p["inline_data"]["data"]) for p in parts if "inline_data" in p]


def _gemini(api: FakeGemini) -> GeminiBackend:
    return GeminiBackend(API_KEY, base_url=api.url, http=FAST, image_size=None)


def _step_at(x: int, y: int):
    return raster_steps(x, y, 1, 1, quadrant_px=Q)[0]


def _run(store, backend, step, selector, settings=None):
    inputs = StepInputs(store, stored=(), render=_render)
    settings = settings or StepSettings(prompt="p", generator_key="g", reuse_committed=False)
    refs = selector.select(step, backend)
    return run_step(store, backend, step, inputs, inputs.template(step), settings, seed=3, style_refs=refs)


@pytest.fixture()
def api():
    with FakeGemini(api_key=API_KEY) as server:
        yield server


# --- style references ---------------------------------------------------------------------------------------
def test_references_nearest_first_then_newest_and_hashes_in_provenance(tmp_path: Path, api) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    # (20,20) and (20,16) are both 2 away from (20,18), (20,16) generated last; (16,18) is 4 away; (30,30) far.
    _generate(store, (30, 30), (16, 18), (20, 20), (21, 20), (20, 21), (21, 21), (20, 16))
    for x, y in ((30, 30), (16, 18), (20, 20), (20, 16)):
        store.set_flags(x, y, reference=True)
    store.set_flags(21, 21, starred=True)  # starred is not a reference
    backend = _gemini(api)
    step = _step_at(20, 18)
    assert ReferenceSelector(store, count=3).nearest(step.quadrants, 3) == [(20, 16), (20, 20), (16, 18)]

    sel = ReferenceSelector(store, count=2)  # default K
    res = _run(store, backend, step, sel)
    sent = _sent_images(api)
    assert len(sent) == 3  # template + 2 references
    assert decode_rgb(sent[0]).shape == (2 * Q, 2 * Q, 3)
    assert np.array_equal(decode_rgb(sent[1]), _tile(20, 16))  # no complete 2×2 block: the quadrant alone
    # (20,20) has a complete 2×2 block with it top-left: the stitched generations, exactly
    want = np.concatenate(
        [
            np.concatenate([_tile(20, 20), _tile(21, 20)], 1),
            np.concatenate([_tile(20, 21), _tile(21, 21)], 1),
        ],
        0,
    )
    assert np.array_equal(decode_rgb(sent[2]), want)
    prov = res.provenance
    assert [r["key"] for r in prov["style_refs"]] == ["20,16", "20,20"]
    assert [r["sha256"] for r in prov["style_refs"]] == [hashlib.sha256(b).hexdigest() for b in sent[1:]]
    assert prov["style_refs_sha256"] == [r["sha256"] for r in prov["style_refs"]]  # what the backend sent
    assert prov["style_refs"][1]["tile"] == [[20, 20], [21, 20], [20, 21], [21, 21]]
    # a newer generation of (20,20) makes it the most recent of the two equally near references
    _generate(store, (20, 20))
    assert ReferenceSelector(store).nearest(step.quadrants, 2) == [(20, 20), (20, 16)]
    assert store.active(layers.GENERATION, 20, 18).provenance["style_refs"] == prov["style_refs"]


def test_a_step_never_gets_its_own_quadrant_and_unaccepted_references_are_skipped(tmp_path: Path) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    _generate(store, (5, 5), (9, 9))
    for x, y in ((5, 5), (9, 9), (6, 6)):  # (6,6) has no generation: not accepted
        store.set_flags(x, y, reference=True)
    assert ReferenceSelector(store, count=2).nearest(_step_at(5, 5).quadrants, 2) == [(9, 9)]


def _anchors(d: Path, n: int) -> Path:
    from PIL import Image

    d.mkdir()
    for i in range(n):
        Image.fromarray(np.full((40, 40, 3), 30 * i, np.uint8)).save(d / f"a{i}.jpg", quality=95)
    return d


def test_anchors_when_no_reference_and_one_line_error_before_any_call(tmp_path: Path, api) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    backend = _gemini(api)
    step = _step_at(0, 0)
    with pytest.raises(ReferenceMissing) as e:
        _run(store, backend, step, ReferenceSelector(store))
    msg = str(e.value)
    assert "isonyc reference add X Y" in msg and "anchors_dir" in msg and "\n" not in msg
    assert api.requests == []  # refused before any model call

    anchors = _anchors(tmp_path / "anchors", 4)
    sel = ReferenceSelector(store, count=2, anchors_dir=anchors)
    res = _run(store, backend, step, sel)
    sent = _sent_images(api)
    assert [r["key"] for r in res.provenance["style_refs"]] == ["a0.jpg", "a1.jpg"]
    assert all(b.startswith(b"\x89PNG") for b in sent[1:])  # JPEG anchors are sent as lossless PNG
    assert [r["sha256"] for r in res.provenance["style_refs"]] == [
        hashlib.sha256(b).hexdigest() for b in sent[1:]
    ]

    # once a reference exists it replaces the anchors
    _generate(store, (3, 3))
    store.set_flags(3, 3, reference=True)
    res = _run(store, backend, _step_at(1, 0), ReferenceSelector(store, count=2, anchors_dir=anchors))
    assert [r["key"] for r in res.provenance["style_refs"]] == ["3,3"]


def test_backends_without_references_get_none(tmp_path: Path) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    _generate(store, (3, 3))
    store.set_flags(3, 3, reference=True)
    sel = ReferenceSelector(store)
    assert not sel.select(_step_at(0, 0), PixelArtBackend())
    sel.check(PixelArtBackend())  # never requires one


# --- prompts and rules ----------------------------------------------------------------------------------------
def test_prompt_files_are_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "main.txt").write_text("draw it like 1999\n")
    (tmp_path / "p" / "neg.txt").write_text("no text")
    (tmp_path / "p" / "harbor.txt").write_text("water everywhere")
    rect_bounds_geojson(tmp_path / "harbor.geojson", 0, 0, 3, 3)
    _anchors(tmp_path / "anchors", 3)
    (tmp_path / "c.toml").write_text(
        'prompt_file = "p/main.txt"\nnegative_prompt_file = "p/neg.txt"\nanchors_dir = "anchors"\n'
        '[backends.gemini]\nprompt = "gemini style"\nmodel = "gemini-2.5-flash-image"\n'
        '[[rules]]\nname = "harbor"\narea = "harbor.geojson"\nprompt_file = "p/harbor.txt"\n'
    )
    cfg = load_project_config(tmp_path / "c.toml")
    assert cfg.prompt == "draw it like 1999" and cfg.negative_prompt == "no text"
    assert cfg.prompt_file is None and cfg.rules[0].prompt == "water everywhere"
    assert cfg.anchors_dir == str(tmp_path / "anchors")
    # the resolved config survives the JSON round trip Dagster's ProjectResource makes
    assert ProjectConfig.model_validate_json(cfg.model_dump_json()) == cfg


@pytest.mark.parametrize(
    ("toml", "needle"),
    [
        ('prompt_file = "nope.txt"\n', "prompt_file"),
        ('prompt = "a"\nprompt_file = "p.txt"\n', "not both"),
        ('[[rules]]\nquadrants = [0, 0, 1, 1]\nprompt_file = "gone.txt"\n', "rules[0].prompt_file"),
        ('[[rules]]\narea = "gone.geojson"\nprompt = "x"\n', "rules[0].area"),
        ("[[rules]]\nquadrants = [0, 0, 1, 1]\n", "at least one"),
        ('anchors_dir = "empty"\n', "anchors_dir"),
        ('[backends.gemini]\nsettings = {api_key = "k"}\n', "environment variables"),
    ],
)
def test_bad_prompt_config_is_one_clear_config_error(tmp_path: Path, toml: str, needle: str) -> None:
    (tmp_path / "p.txt").write_text("x")
    (tmp_path / "empty").mkdir()
    (tmp_path / "c.toml").write_text(toml)
    with pytest.raises(ConfigError) as e:
        load_project_config(tmp_path / "c.toml")
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_the_smallest_area_wins_ties_by_order_and_backend_defaults(tmp_path: Path) -> None:
    poly = rect_bounds_geojson(tmp_path / "poly.geojson", 0, 0, 5, 5)
    cfg = ProjectConfig.model_validate(
        {
            "backend": "gemini",
            "backends": {"gemini": {"negative_prompt": "no labels"}, "modal": {"prompt": "modal text"}},
            "rules": [
                {"name": "big", "quadrants": [0, 0, 9, 9], "prompt": "big"},
                {"name": "poly", "area": str(poly), "prompt": "poly", "backend": "modal"},
                {"name": "small-a", "quadrants": [3, 3, 4, 4], "model": "m-a"},
                {"name": "small-b", "quadrants": [3, 3, 4, 4], "prompt": "b"},
            ],
        }
    )
    rules = StepRules(cfg, MapGeometry(cfg.map))
    plan = LatticePlan.from_quadrants([(x, y) for x in range(12) for y in range(12)])
    block = plan.step_for_quadrant

    s = block(3, 3)  # inside all four: the two small ones tie, the first listed wins
    mi = rules.resolve(s)
    assert s.quadrants == ((3, 3), (4, 3), (3, 4), (4, 4))
    assert (mi.rule_label, mi.model, mi.backend) == ("rules[2] small-a", "m-a", "gemini")
    assert mi.prompt is None and mi.negative_prompt == "no labels"  # gemini's profile; prompt left to gemini
    assert mi.with_backend_default(GeminiBackend(API_KEY)).prompt == GEMINI_PROMPT

    mi = rules.resolve(block(0, 0))  # in poly (6×6) and big (10×10): poly is smaller
    assert (mi.rule_name, mi.backend, mi.prompt, mi.negative_prompt) == ("poly", "modal", "poly", "")

    mi = rules.resolve(block(6, 6))  # only in big
    assert (mi.rule_name, mi.prompt) == ("big", "big")
    mi = rules.resolve(block(9, 9))  # reaches beyond big: no rule, project defaults
    assert mi.rule_index is None and mi.prompt is None
    assert mi.with_backend_default(PixelArtBackend()).prompt == STOCK_PROMPT  # pixelart: as before


# --- preprocessing --------------------------------------------------------------------------------------------
def test_preprocessing_changes_only_the_infill_render_and_noise_follows_the_world(tmp_path: Path) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    _generate(store, (0, 0), (1, 0), (0, 1))
    inputs = StepInputs(store, stored=(), render=_render)
    step = raster_steps(0, 0, 2, 2, quadrant_px=Q)[3]  # (1,1) with context left/top/top-left
    t = inputs.template(step)
    assert preprocess_template(t, None) is t and preprocess_template(t, PreprocessConfig()) is t
    spec = PreprocessConfig(desaturation=0.6, noise=0.7, gamma_shift=0.8, noise_seed=5)
    p = preprocess_template(t, spec)
    x0, y0, x1, y1 = t.infill_box
    outside = np.ones(t.rgb.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(p.rgb[outside], t.rgb[outside])  # context untouched
    assert (p.rgb[y0 : y0 + 2, x0:x1] == BORDER_RGB).all()  # border intact
    inner = (slice(y0 + 2, y1 - 2), slice(x0 + 2, x1 - 2))
    assert not np.array_equal(p.rgb[inner], t.rgb[inner])
    assert p.sha256 == hashlib.sha256(p.png).hexdigest() and p.png != t.png
    # world-aligned: the same world pixels get the same noise from any window, and reruns agree
    a = world_normal(100, 200, 64, 64, 5)
    b = world_normal(132, 216, 64, 64, 5)
    assert np.array_equal(a[16:, 32:], b[:48, :32])
    assert not np.array_equal(world_normal(100, 200, 8, 8, 6), a[:8, :8])
    assert abs(float(a.mean())) < 0.05 and abs(float(a.std()) - 1) < 0.05
    assert np.array_equal(preprocess_template(t, spec).rgb, p.rgb)


def test_preprocessing_is_recorded_and_sent(tmp_path: Path, api) -> None:
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    spec = PreprocessConfig(desaturation=1.0, palette=["#000000", "#FFFFFF"], palette_strength=1.0)
    settings = StepSettings(prompt="p", generator_key="g", preprocess=spec, reuse_committed=False)
    anchors = _anchors(tmp_path / "anchors", 3)
    res = _run(store, _gemini(api), _step_at(0, 0), ReferenceSelector(store, anchors_dir=anchors), settings)
    sent = _sent_images(api)[0]
    x0, y0, x1, y1 = res.template.infill_box
    inner = decode_rgb(sent)[y0 + 2 : y1 - 2, x0 + 2 : x1 - 2]
    assert set(np.unique(inner)) <= {0, 255}  # grey, snapped to the black/white palette hint
    prov = res.provenance
    assert prov["preprocess"]["desaturation"] == 1.0 and prov["preprocess"]["palette"] == [
        "#000000",
        "#FFFFFF",
    ]
    assert (
        prov["template_sent_sha256"]
        == hashlib.sha256(sent).hexdigest()
        == hashlib.sha256(res.model_input_png).hexdigest()
    )
    assert prov["template_sha256"] == res.template.sha256  # the unprocessed template, for reuse checks
    assert store.get_blob(prov["template_sent_sha256"]) == sent


def test_default_settings_send_exactly_what_they_did_before(tmp_path: Path) -> None:
    """The offline backend with the default config: the output equals a direct call with the template as it was
    sent before (stock prompt, no negative prompt, no references, no preprocessing); provenance and key unchanged."""
    store = LocalTileStore(tmp_path / "store", tile_size=(Q, Q))
    _generate(store, (0, 0), (1, 0), (0, 1))
    inputs = StepInputs(store, stored=(), render=_render)
    step = raster_steps(0, 0, 2, 2, quadrant_px=Q)[3]
    t = inputs.template(step)
    cfg = ProjectConfig()
    backend = PixelArtBackend()
    mi = StepRules(cfg, MapGeometry(cfg.map)).resolve(step).with_backend_default(backend)
    settings = step_settings(mi, generator_key="gk")
    assert settings == StepSettings(prompt=cfg.prompt, generator_key="gk") and settings.key() == "gk"
    refs = ReferenceSelector(store).select(step, backend)
    res = run_step(store, backend, step, inputs, t, settings, seed=9, style_refs=refs)
    direct = backend.generate(
        GenerationRequest(
            t.png, prompt=cfg.prompt, seed=9, infill_box=t.infill_box, origin_px=t.origin_px, aux=t.aux
        )
    )
    assert res.output_png == direct.image_png
    new_keys = {"rule", "negative_prompt_sha256", "preprocess", "template_sent_sha256", "style_refs"}
    assert not new_keys & set(res.provenance) and res.provenance["generator_key"] == "gk"


def test_settings_key_changes_with_everything_sent(tmp_path: Path) -> None:
    base = StepSettings(prompt="p", generator_key="gk")
    keys = {
        base.key(),
        StepSettings(prompt="p", generator_key="gk", negative_prompt="n").key(),
        StepSettings(prompt="p", generator_key="gk", preprocess=PreprocessConfig(noise=0.5)).key(),
    }
    assert len(keys) == 3
    assert StepSettings(prompt="p", generator_key="gk", preprocess=PreprocessConfig()).key() == "gk"


def test_reference_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from isonyc_dagster.cli.main import main

    store = LocalTileStore(tmp_path / "store")
    store.put_tile(layers.GENERATION, 4, 5, png_bytes(np.zeros((512, 512, 3), np.uint8)), {})
    store.close()
    s = str(tmp_path / "store")
    assert main(["reference", "add", "4", "5", "--store", s]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["references"] == [
        {"x": 4, "y": 5, "generation_version": 1, "sha256": out["references"][0]["sha256"]}
    ]
    assert main(["reference", "add", "7", "7", "--store", s]) == 2
    err = capsys.readouterr().err
    assert "no generation" in err and err.count("\n") == 1
    assert main(["reference", "add", "4", "--store", s]) == 2
    assert "X Y pairs" in capsys.readouterr().err
    assert main(["reference", "list", "--store", s]) == 0
    assert [(r["x"], r["y"]) for r in json.loads(capsys.readouterr().out)["references"]] == [(4, 5)]
    assert main(["reference", "remove", "4", "5", "--store", s]) == 0
    assert json.loads(capsys.readouterr().out)["references"] == []


# --- through Dagster ------------------------------------------------------------------------------------------
def _range(a: str, b: str) -> dict[str, str]:
    return {"dagster/asset_partition_range_start": a, "dagster/asset_partition_range_end": b}


def test_gemini_through_dagster_gets_references_and_metadata(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api
) -> None:
    """Default Gemini settings through Dagster: with no reference the step fails before any call, saying how to
    add one; once a quadrant is marked, the step succeeds, the reference is sent and the metadata names it."""
    import dagster as dg

    from isonyc_dagster.cli.main import main
    from isonyc_dagster.defs.definitions import build_definitions
    from isonyc_dagster.project import Project
    from tests.dagster_helpers import project_config

    monkeypatch.setenv("ISONYC_GEMINI_API_KEY", API_KEY)
    monkeypatch.setenv("ISONYC_BACKEND_SETTINGS", json.dumps({"url": api.url, "max_attempts": 1}))
    cfg = project_config(tmp_path, 0, 0, 2, 2).model_copy(update={"backend": "gemini"})
    defs = build_definitions(cfg)
    store = Project(cfg).store
    (tmp_path / "dh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
        assert (
            defs.resolve_job_def("render_job")
            .execute_in_process(instance=instance, tags=_range("0|0", "2|2"))
            .success
        )
        blocks = defs.resolve_job_def("blocks_job")
        failed = blocks.execute_in_process(instance=instance, partition_key="0|0", raise_on_error=False)
        assert not failed.success and api.requests == []
        failures = [e for e in failed.all_events if e.event_type_value == "STEP_FAILURE"]
        assert "isonyc reference add X Y" in str(failures[0].event_specific_data)

        # an accepted tile elsewhere (imported, or generated earlier) marked as reference from the CLI
        store.put_tile(
            layers.GENERATION, 5, 0, png_bytes(np.full((512, 512, 3), 90, np.uint8)), {"imported": True}
        )
        assert main(["reference", "add", "5", "0", "--store", cfg.store]) == 0
        ok = blocks.execute_in_process(instance=instance, partition_key="0|0")
        assert ok.success and len(api.requests) == 1
        sent = _sent_images(api)
        mat = ok.asset_materializations_for_node("blocks")[0]
    prov = store.active(layers.GENERATION, 0, 0).provenance
    assert [r["key"] for r in prov["style_refs"]] == ["5,0"]
    assert prov["style_refs"][0]["sha256"] == hashlib.sha256(sent[1]).hexdigest()
    assert prov["prompt_sha256"] == hashlib.sha256(f"{GEMINI_PROMPT}\x00".encode()).hexdigest()
    meta = mat.metadata
    assert meta["style_refs"].value[0]["key"] == "5,0" and meta["rule"].value == "(none)"


def test_another_prompt_is_a_new_version_never_an_overwrite(tmp_path: Path) -> None:
    import dagster as dg

    from isonyc_dagster.defs.definitions import build_definitions
    from isonyc_dagster.project import Project
    from tests.dagster_helpers import project_config

    cfg = project_config(tmp_path, 0, 0, 1, 1)
    store = Project(cfg).store
    (tmp_path / "dh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
        defs = build_definitions(cfg)
        assert (
            defs.resolve_job_def("render_job")
            .execute_in_process(instance=instance, tags=_range("0|0", "1|1"))
            .success
        )
        for _ in range(2):  # the same settings again: reused, still version 1
            assert (
                defs.resolve_job_def("blocks_job")
                .execute_in_process(instance=instance, partition_key="0|0")
                .success
            )
        first = store.active(layers.GENERATION, 0, 0)
        assert [v.version for v in store.versions(layers.GENERATION, 0, 0)] == [1]
        for n, update in enumerate(
            [
                {"prompt": "a different prompt"},
                {
                    "prompt": "a different prompt",
                    "rules": [AreaRule(quadrants=(0, 0, 1, 1), prompt="rule prompt")],
                },
            ],
            start=2,
        ):
            defs = build_definitions(cfg.model_copy(update=update))
            run = defs.resolve_job_def("blocks_job").execute_in_process(
                instance=instance, partition_key="0|0"
            )
            assert run.success
            versions = store.versions(layers.GENERATION, 0, 0)
            assert [v.version for v in versions] == list(range(1, n + 1))
            assert (
                versions[-1].active
                and versions[-1].provenance["generator_key"] != first.provenance["generator_key"]
            )
        assert (
            versions[0].sha256 == first.sha256 and versions[0].provenance == first.provenance
        )  # kept intact
        assert versions[-1].provenance["rule"] == "rules[0]"
        meta = run.asset_materializations_for_node("blocks")[0].metadata
        assert meta["rule"].value == "rules[0]"
        assert meta["prompt_sha256"].value == hashlib.sha256(b"rule prompt\x00").hexdigest()


def test_an_area_rule_switches_backend_through_dagster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, api
) -> None:
    """The project runs the offline backend; a rule sends the block at 3|0 to Gemini (key from its env var, URL
    from [backends.gemini] settings, anchors as style images). The block at 0|0 never reaches the server."""
    import dagster as dg

    from isonyc_dagster.defs.definitions import build_definitions
    from isonyc_dagster.geo.model_inputs import BackendProfile
    from isonyc_dagster.project import Project
    from tests.dagster_helpers import project_config

    monkeypatch.setenv("ISONYC_GEMINI_API_KEY", API_KEY)
    anchors = _anchors(tmp_path / "anchors", 3)
    cfg = project_config(tmp_path, 0, 0, 4, 1).model_copy(
        update={
            "anchors_dir": str(anchors),
            "backends": {"gemini": BackendProfile(settings={"url": api.url, "max_attempts": 1})},
            "rules": [
                AreaRule(
                    name="east", quadrants=(3, 0, 4, 1), backend="gemini", model="gemini-2.5-flash-image"
                )
            ],
        }
    )
    defs = build_definitions(cfg)
    store = Project(cfg).store
    (tmp_path / "dh").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dh")) as instance:
        assert (
            defs.resolve_job_def("render_job")
            .execute_in_process(instance=instance, tags=_range("0|0", "4|1"))
            .success
        )
        run = defs.resolve_job_def("blocks_job").execute_in_process(
            instance=instance, tags=_range("0|0", "1|0")
        )
        assert run.success
    assert [r.path for r in api.requests] == ["/v1beta/models/gemini-2.5-flash-image:generateContent"]
    west, east = (
        store.active(layers.GENERATION, 0, 0).provenance,
        store.active(layers.GENERATION, 3, 0).provenance,
    )
    assert west["backend"] == "pixelart" and "rule" not in west and "style_refs" not in west
    assert east["backend"] == "gemini" and east["rule"] == "rules[0] east"
    assert [r["key"] for r in east["style_refs"]] == ["a0.jpg", "a1.jpg"]
    assert API_KEY not in json.dumps(east)


def test_a_rule_backends_secrets_are_bound_as_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets of backends an area rule may pick reach Dagster as EnvVars (resolved at run time, never shown
    in the UI), not read from os.environ inside the run."""
    import dagster as dg

    from isonyc_dagster.defs.resources import generator_resource

    monkeypatch.setenv("ISONYC_GEMINI_API_KEY", API_KEY)
    monkeypatch.setenv("ISONYC_MODAL_URL", "http://127.0.0.1:9/edit")
    res = generator_resource("pixelart")
    assert isinstance(res.gemini_api_key, dg.EnvVar) and res.gemini_api_key == "ISONYC_GEMINI_API_KEY"
    assert res.oxen_api_key is None and res.api_key is None
    assert json.loads(res.urls_json) == {"modal": "http://127.0.0.1:9/edit"}
    assert API_KEY not in res.model_dump_json()
    resolved = generator_resource("pixelart", resolve_env=True)
    assert resolved._rule_backend_settings("gemini") == {"api_key": API_KEY}


def test_the_pilot_sends_references_and_refuses_early_without(tmp_path: Path, api) -> None:
    from isonyc_dagster.generate.pilot import run_pilot

    project_store = LocalTileStore(tmp_path / "project", tile_size=(Q, Q))
    args = dict(render_tile=lambda x, y: _render(x, y).rgb, render_aux=lambda x, y: _render(x, y).aux())
    with pytest.raises(ReferenceMissing):
        run_pilot(
            0,
            0,
            2,
            1,
            1,
            4,
            tmp_path / "p0",
            _gemini(api),
            references=ReferenceSelector(project_store),
            **args,
        )
    assert api.requests == []
    _generate(project_store, (5, 0))
    project_store.set_flags(5, 0, reference=True)
    run_pilot(
        0, 0, 2, 1, 1, 4, tmp_path / "p1", _gemini(api), references=ReferenceSelector(project_store), **args
    )
    assert len(api.requests) == 2
    pilot_store = LocalTileStore(tmp_path / "p1" / "store", tile_size=(Q, Q))
    assert [r["key"] for r in pilot_store.active(layers.GENERATION, 1, 0).provenance["style_refs"]] == ["5,0"]
