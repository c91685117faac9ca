"""Style search over the pixel-art backend: StyleParams, converters, renderer API, data, inverse CNN, CMA-ES, judges.

Real components throughout: real NYC geodata (read in place from ../shared/geodata) through the real loaders and
whitebox renderer, the real backend, a real HTTP server on 127.0.0.1 for the renderer API and a real HTTP server
on 127.0.0.1 speaking Google's generateContent format for the judge.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter, deque
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import numpy as np
import pytest

from isonyc_dagster.backends.base import BackendConfigError, GenerationRequest
from isonyc_dagster.backends.pixelart import PixelArtBackend, StyleParams
from isonyc_dagster.backends.pixelart.params import load_style
from isonyc_dagster.backends.transport import CallFailed, HttpSettings
from isonyc_dagster.geodata.load import load_city
from isonyc_dagster.images import decode_rgb, png_bytes
from isonyc_dagster.render import Renderer, RenderResult
from isonyc_dagster.stylesearch.api import RasterClient, start_raster_server
from isonyc_dagster.stylesearch.data import generate_dataset, load_dataset
from isonyc_dagster.stylesearch.explore import SeedPool, explore, unguided
from isonyc_dagster.stylesearch.fit import fit
from isonyc_dagster.stylesearch.judge import ModelJudge, OfflineJudge, parse_judge_text
from isonyc_dagster.stylesearch.metrics import ssim, style_distance
from isonyc_dagster.stylesearch.scene import Scene
from isonyc_dagster.stylesearch.space import (
    SPACE,
    StyleSearchError,
    reconstruct_params,
    stratified_params,
    to_prefixed,
    to_style_params,
)
from tests.conftest import geodata_file

CITICORP = (40.7585, -73.9702)
#: sha256 of the pixels the backend drew for the 512² window below before StyleParams existed (git HEAD's
#: frozen-dataclass StyleParams): the default style must reproduce them bit for bit.
ORIGINAL_DEFAULT_SHA256 = "b0893404e90e0267234ef532182390212d83baafaf1fa3c1135094951492c26a"


@pytest.fixture(scope="module")
def window(geometry) -> RenderResult:
    files = [
        f"buildings:{geodata_file('midtown_east_buildings_doitt.geojson')}",
        f"parks:{geodata_file('midtown_east_parks_nycparks.geojson')}",
        f"roads:{geodata_file('midtown_east_roads_osm.geojson')}",
        f"land:{geodata_file('midtown_east_land_nybb.geojson')}",
    ]
    r = Renderer(load_city(geometry, files, land=None), geometry)
    loc = geometry.locate(*CITICORP)
    ox, oy = (loc["quadrant"]["x"] - 1) * 512, (loc["quadrant"]["y"] - 1) * 512
    return r.render_window(ox + 256, oy + 256, 512, 512)


@pytest.fixture(scope="module")
def scene(window) -> Scene:
    return Scene.most_varied(window, 96)


@pytest.fixture(scope="module")
def small_scene(window) -> Scene:
    return Scene.most_varied(window, 64)


def _generate(
    res: RenderResult,
    params: StyleParams | None = None,
    box: tuple[int, int, int, int] | None = None,
    template: np.ndarray | None = None,
) -> np.ndarray:
    be = PixelArtBackend(params=params)
    req = GenerationRequest(
        template_png=png_bytes(res.rgb if template is None else template),
        infill_box=box,
        origin_px=res.origin_px,
        aux={"surface": res.surface, "building": res.building, "height": res.height},
    )
    return be.generate_array(req)[0]


# --- StyleParams in the backend ---------------------------------------------------------------------------


def test_default_style_reproduces_the_original_backend_bit_for_bit(window):
    out = _generate(window)
    assert hashlib.sha256(out.tobytes()).hexdigest() == ORIGINAL_DEFAULT_SHA256
    # An explicit default and the flat dict of the default are the same style.
    assert np.array_equal(_generate(window, StyleParams.model_validate(StyleParams().as_dict())), out)


@pytest.fixture(scope="module")
def street(geometry, window) -> RenderResult:
    """A 352² window east of the Citigroup Center with a street (lane marks), shop fronts and several materials."""
    files = [
        f"buildings:{geodata_file('midtown_east_buildings_doitt.geojson')}",
        f"roads:{geodata_file('midtown_east_roads_osm.geojson')}",
        f"land:{geodata_file('midtown_east_land_nybb.geojson')}",
    ]
    return Renderer(load_city(geometry, files, land=None), geometry).render_window(4640, -1056, 352, 352)


def test_every_searchable_knob_changes_the_look(street):
    window = street
    base = _generate(window)
    has_park = bool((window.surface == 3).any())
    unchanged = []
    for name in SPACE.cont + SPACE.cats + SPACE.bools:
        info = SPACE.info[name]
        if info["kind"] == "cat":
            value: Any = next(c for c in info["choices"] if c != info["default"])
        elif info["kind"] == "bool":
            value = not info["default"]
        else:
            lo, hi = info["bounds"]
            value = hi if info["default"] - lo < (hi - lo) / 2 else lo
        if np.array_equal(_generate(window, StyleParams(**{name: value})), base):
            unchanged.append(name)
    # Trees need a park in the window; the few shop fronts in view here happen to be of awning-less buildings.
    assert set(unchanged) <= {"awnings"} | (set() if has_park else {"tree_density", "tree_sprites"}), (
        unchanged
    )
    assert _generate(window, StyleParams(awnings=False)).shape == base.shape


def test_styled_output_stays_seam_free(window):
    """A styled step continuing styled context agrees with one big styled generation (colours are world-aligned)."""
    style = StyleParams(
        palette="warm", hue_shift_deg=12.0, texture_noise=0.08, dither=0.6, outline_mode="thick"
    )
    full = _generate(window, style)
    template = full.copy()
    template[128:384, 128:384] = window.rgb[128:384, 128:384]
    step = _generate(window, style, box=(128, 128, 384, 384), template=template)
    inner = (slice(160, 352), slice(160, 352))  # away from the infill edge (the backend's documented margin)
    assert np.mean(np.all(step[inner] == full[inner], axis=-1)) > 0.999


def test_invalid_style_is_one_clear_error(tmp_path):
    with pytest.raises(BackendConfigError, match="window_density"):
        PixelArtBackend(params={"window_density": 3.0})
    with pytest.raises(BackendConfigError, match="unknown pixel-art style parameter"):
        StyleParams.parse({"colour": 1})
    bad = tmp_path / "style.json"
    bad.write_text("{not json")
    with pytest.raises(BackendConfigError, match="not readable JSON"):
        load_style(bad)
    with pytest.raises(BackendConfigError, match="does not exist"):
        load_style(tmp_path / "missing.json")


def test_project_style_enters_the_generator_identity_and_the_backend(tmp_path):
    from isonyc_dagster.defs.resources import GeneratorResource, generator_resource, project_style
    from isonyc_dagster.geo.config import load_project_config

    (tmp_path / "style.json").write_text(json.dumps({"palette": "warm", "window_density": 0.7}))
    (tmp_path / "project.toml").write_text('style = "style.json"\n')
    cfg = load_project_config(tmp_path / "project.toml")
    assert cfg.style == str(tmp_path / "style.json")  # relative to the config file
    style = project_style(cfg)
    assert style == {"palette": "warm", "window_density": 0.7}

    plain = generator_resource("pixelart")
    styled = generator_resource("pixelart", style=style)
    default_styled = generator_resource("pixelart", style=project_style(load_project_config(None)))
    prompt = "p"
    assert default_styled.identity(prompt) == plain.identity(prompt)  # the default look keeps existing keys
    assert styled.identity(prompt) != plain.identity(prompt)
    assert styled.identity_for("pixelart", "m", prompt) != plain.identity_for("pixelart", "m", prompt)
    other = generator_resource("pixelart", style={"palette": "cool"})
    assert other.identity(prompt) != styled.identity(prompt)
    backend = styled.build(cfg.map)
    assert isinstance(backend, PixelArtBackend) and backend.params == StyleParams(
        palette="warm", window_density=0.7
    )
    # Explicit backend settings override the style file's values.
    over = GeneratorResource(settings_json='{"params": {"palette": "cool"}}', style_json=json.dumps(style))
    built = over.build(cfg.map)
    assert isinstance(built, PixelArtBackend)
    assert built.params.palette == "cool" and built.params.window_density == 0.7


# --- key formats, sampling, reconstruction ------------------------------------------------------------------


def test_flat_and_prefixed_keys_round_trip_exactly():
    rng = np.random.default_rng(7)
    styles = stratified_params(300, seed=3)
    for i, p in enumerate(styles):
        p = p.model_copy(update={"seed": int(rng.integers(0, 2**31 - 1))}) if i % 3 == 0 else p
        pre = to_prefixed(p)
        assert (
            set(pre) == set(SPACE.prefixed_to_flat) and "Windows.density" in pre and "Palette.family" in pre
        )
        back = to_style_params(pre)
        assert back == p and to_prefixed(back) == pre
        assert to_prefixed(p.as_dict()) == pre  # flat dict input too
    assert to_prefixed(StyleParams())["Windows.density"] == 1.0
    with pytest.raises(StyleSearchError, match="unknown prefixed style key"):
        to_style_params({"Windows.colour": 1})
    with pytest.raises(StyleSearchError, match="window_density"):
        to_style_params({"Windows.density": 7})


def test_stratified_sampling_balances_every_categorical_value():
    styles = stratified_params(37, seed=11)
    for name in SPACE.cats + SPACE.bools:
        counts = Counter(getattr(s, name) for s in styles)
        values = SPACE.choices.get(name, [False, True])
        assert set(counts) == set(values), name
        assert max(counts.values()) - min(counts.values()) <= 1, (name, counts)
    lo = np.array([min(getattr(s, n) for s in styles) for n in SPACE.cont])
    hi = np.array([max(getattr(s, n) for s in styles) for n in SPACE.cont])
    assert np.all(lo >= SPACE.lo) and np.all(hi <= SPACE.hi) and np.all(hi - lo > 0.5 * (SPACE.hi - SPACE.lo))
    assert stratified_params(5, seed=1) == stratified_params(5, seed=1)


def test_reconstruct_params_always_gives_valid_styles():
    rng = np.random.default_rng(0)
    base = StyleParams(seed=99)
    for _ in range(200):
        cont = rng.normal(0.5, 2.0, len(SPACE.cont))
        cont[rng.integers(len(cont))] = np.nan
        cats = [rng.normal(0, 3, k) for k in SPACE.cat_sizes]
        bools = rng.normal(0, 3, len(SPACE.bools))
        p = reconstruct_params(cont, cats, bools, base=base)
        assert p.seed == 99  # fixed values come from the base
        for n, c in zip(SPACE.cats, cats, strict=True):
            assert getattr(p, n) == SPACE.choices[n][int(np.argmax(c))]
        for n, b in zip(SPACE.bools, bools, strict=True):
            assert getattr(p, n) == bool(b > 0)
        for i, n in enumerate(SPACE.cont):
            assert SPACE.lo[i] <= getattr(p, n) <= SPACE.hi[i]
    with pytest.raises(StyleSearchError, match="do not fit the search space"):
        reconstruct_params([0.5], [], [])
    enc = SPACE.encode(StyleParams(palette="muted", awnings=False, window_density=0.5))
    assert SPACE.decode(enc).palette == "muted" and SPACE.decode(enc).awnings is False
    assert SPACE.decode(enc).window_density == pytest.approx(0.5, abs=1e-6)


# --- renderer API and data ------------------------------------------------------------------------------------


def test_raster_api_answers_png_and_422_for_invalid_parameters(small_scene):
    with start_raster_server(small_scene) as server:
        assert server.url.startswith("http://127.0.0.1:")
        r = httpx.post(f"{server.url}/api/raster", json={"palette": "cool", "window_density": 0.5})
        assert r.status_code == 200 and r.headers["content-type"] == "image/png"
        img = decode_rgb(r.content)
        assert img.shape == (64, 64, 3)
        assert np.array_equal(img, small_scene.render(StyleParams(palette="cool", window_density=0.5)))
        bad = httpx.post(f"{server.url}/api/raster", json={"window_density": 5})
        assert bad.status_code == 422 and "window_density" in bad.json()["error"]
        assert "less than or equal to 1" in bad.json()["error"]
        unknown = httpx.post(f"{server.url}/api/raster", json={"colour": "red"})
        assert unknown.status_code == 422 and "unknown" in unknown.json()["error"]
        notjson = httpx.post(
            f"{server.url}/api/raster", content=b"{oops", headers={"Content-Type": "application/json"}
        )
        assert notjson.status_code == 422 and "not JSON" in notjson.json()["error"]
        listed = httpx.post(f"{server.url}/api/raster", json=[1, 2])
        assert listed.status_code == 422 and "expected an object" in listed.json()["error"]
        info = httpx.get(f"{server.url}/api/params").json()
        assert info["window_density"]["group"] == "Windows" and info["palette"]["kind"] == "cat"
        client = RasterClient(server.url)
        with pytest.raises(StyleSearchError, match="HTTP 422"):
            client.raster({"saturation": 9})
        client.close()


def test_data_generation_writes_balanced_pairs_and_resumes(small_scene, tmp_path):
    with start_raster_server(small_scene) as server:
        stats = generate_dataset(tmp_path, 10, server.url, seed=2)
        assert stats["new_pairs"] == 10 and stats["pairs_per_s"] > 0
        again = generate_dataset(tmp_path, 10, server.url, seed=2)
        assert again["new_pairs"] == 0
    assert sorted(p.name for p in (tmp_path / "images").iterdir())[0] == "000000.png"
    images, targets = load_dataset(tmp_path)
    assert images.shape == (10, 64, 64, 3) and len(targets) == 10
    params = json.loads((tmp_path / "params" / "000003.json").read_text())
    assert np.array_equal(images[3], small_scene.render(StyleParams(**params)))
    for name, counts in stats["counts"].items():
        assert max(counts.values()) - min(counts.values()) <= 1, name
    with pytest.raises(StyleSearchError, match="no pairs"):
        load_dataset(tmp_path / "empty")


# --- inverse model --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(small_scene, tmp_path_factory):
    pytest.importorskip("torch")
    from isonyc_dagster.stylesearch.model import train_inverse

    d = tmp_path_factory.mktemp("style-train")
    with start_raster_server(small_scene) as server:
        generate_dataset(d, 240, server.url, seed=5)
    images, targets = load_dataset(d)
    meta = train_inverse(images, targets, d / "model.pt", epochs=6, width=8, batch_size=24, lr=3e-3, seed=0)
    return d, meta


def test_tiny_training_run_loss_falls(trained):
    d, meta = trained
    hist = meta["history"]
    assert len(hist) == 6 and (d / "model.pt").exists()
    assert hist[-1]["train_loss"] < 0.85 * hist[0]["train_loss"]
    assert all(np.isfinite(h["val_loss"]) for h in hist)


def test_inverse_model_predicts_valid_params_and_refuses_bad_input(trained, small_scene, tmp_path):
    from isonyc_dagster.stylesearch.model import InverseModel

    d, _ = trained
    model = InverseModel.load(d / "model.pt")
    preds = model.predict(
        np.stack([small_scene.render(StyleParams()), small_scene.render(StyleParams(palette="warm"))])
    )
    assert len(preds) == 2 and all(isinstance(p, StyleParams) for p in preds)
    with pytest.raises(StyleSearchError, match="takes 64×64"):
        model.predict(np.zeros((1, 32, 32, 3), np.uint8))
    (tmp_path / "broken.pt").write_bytes(b"not a model")
    with pytest.raises(StyleSearchError, match="unreadable"):
        InverseModel.load(tmp_path / "broken.pt")
    with pytest.raises(StyleSearchError, match="train one"):
        InverseModel.load(tmp_path / "missing.pt")


# --- CMA-ES ---------------------------------------------------------------------------------------------------


def test_cma_es_recovers_known_continuous_parameters(scene):
    pytest.importorskip("cma")
    known = StyleParams(hue_shift_deg=18.0, saturation=1.35, brightness=0.85, outline_strength=0.4)
    target = scene.render(known)
    assert ssim(scene.render(StyleParams()), target) < 0.95
    r = fit(target, scene, StyleParams(), generations=30, popsize=10, style_weight=0.0, sweep=False, polish=2)
    assert r.best_ssim > 0.98 and r.ssim_by_generation[-1] <= r.best_ssim
    # Hue is the least determined: most of the palette is grey, where a hue shift barely shows.
    assert r.best.hue_shift_deg == pytest.approx(18.0, abs=10.0)
    assert r.best.saturation == pytest.approx(1.35, abs=0.15)
    assert r.best.brightness == pytest.approx(0.85, abs=0.06)
    assert r.best.outline_strength == pytest.approx(0.4, abs=0.2)


# --- judges ---------------------------------------------------------------------------------------------------


def test_offline_judge_is_deterministic_and_prefers_the_reference_style(scene):
    refs = [scene.render(StyleParams(palette="warm", dither=0.5))]
    judge = OfflineJudge(refs)
    near = scene.render(StyleParams(palette="warm", dither=0.45))
    far = scene.render(StyleParams(palette="cool", saturation=0.4, brightness=1.3))
    assert judge.score(near).score == judge.score(near).score
    assert judge.score(refs[0]).score == 10.0
    assert judge.score(near).score > judge.score(far).score
    assert style_distance(refs[0], near) < style_distance(refs[0], far)


class _FakeJudge:
    """generateContent on 127.0.0.1: pops one behaviour per request ("429", "malformed", "schema", or a score)."""

    def __init__(self, behaviours: list[Any]) -> None:
        self.queue: deque[Any] = deque(behaviours)
        self.requests: list[dict[str, Any]] = []
        fake = self

        class H(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                b = fake.queue.popleft() if fake.queue else 9.5
                if b == "429":
                    self._send(
                        429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED"}}, {"Retry-After": "0"}
                    )
                elif b == "malformed":
                    self._send(
                        200, {"candidates": [{"content": {"parts": [{"text": "I think it is nice!"}]}}]}
                    )
                elif b == "schema":
                    self._send(200, {"candidates": "nope"})
                else:
                    text = "```json\n" + json.dumps({"score": b, "reason": "warm palette"}) + "\n```"
                    self._send(200, {"candidates": [{"content": {"parts": [{"text": text}]}}]})

            def _send(self, status: int, obj: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(obj).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_judge() -> Iterator[Any]:
    servers: list[_FakeJudge] = []

    def make(behaviours: list[Any]) -> _FakeJudge:
        servers.append(_FakeJudge(behaviours))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


_FAST = HttpSettings(max_attempts=4, backoff_base_s=0.0, backoff_max_s=0.0)


def test_gemini_judge_retries_429_and_malformed_answers(fake_judge, small_scene):
    server = fake_judge(["429", "malformed", "schema", 9.5])
    ref = small_scene.render(StyleParams(palette="warm"))
    judge = ModelJudge([ref], kind="gemini", api_key="sk-secret-123", base_url=server.url, http=_FAST)
    s = judge.score(small_scene.render(StyleParams()))
    assert s.score == 9.5 and s.reason == "warm palette"
    assert len(server.requests) == 4
    req = server.requests[-1]
    assert req["path"] == "/v1beta/models/gemini-2.5-flash:generateContent"
    assert req["headers"]["x-goog-api-key"] == "sk-secret-123" and "sk-secret-123" not in req["path"]
    parts = req["body"]["contents"][0]["parts"]
    images = [p for p in parts if "inline_data" in p]
    assert len(images) == 2  # the reference, then the candidate
    assert np.array_equal(decode_rgb(__import__("base64").b64decode(images[0]["inline_data"]["data"])), ref)
    judge.close()


def test_judge_gives_up_with_one_clear_line_on_persistent_garbage(fake_judge, small_scene):
    server = fake_judge(["malformed"] * 10)
    judge = ModelJudge(
        [small_scene.whitebox], kind="gemini", api_key="sk-secret-123", base_url=server.url, http=_FAST
    )
    with pytest.raises(CallFailed, match="unusable answer") as e:
        judge.score(small_scene.render(StyleParams()))
    assert "sk-secret-123" not in str(e.value) and len(server.requests) == 4
    judge.close()
    with pytest.raises(StyleSearchError, match="ISONYC_GEMINI_API_KEY"):
        ModelJudge([small_scene.whitebox], kind="gemini", api_key=None)


def test_vertex_judge_uses_a_bearer_token(fake_judge, small_scene):
    server = fake_judge(["429", 7])
    judge = ModelJudge(
        [small_scene.whitebox],
        kind="vertex",
        project="proj",
        location="us-central1",
        endpoint=server.url,
        token_provider=lambda: "tok-abc",
        http=_FAST,
    )
    assert judge.score(small_scene.render(StyleParams())).score == 7.0
    req = server.requests[-1]
    assert (
        req["path"]
        == "/v1/projects/proj/locations/us-central1/publishers/google/models/gemini-2.5-flash:generateContent"
    )
    assert req["headers"]["Authorization"] == "Bearer tok-abc"
    judge.close()


def test_parse_judge_text_refuses_out_of_range_scores():
    assert parse_judge_text('{"score": 8}').score == 8.0
    for bad in ('{"score": 11}', '{"score": true}', '{"reason": "x"}', "no json", '{"score": "9"}'):
        with pytest.raises(ValueError):
            parse_judge_text(bad)


# --- judged exploration -----------------------------------------------------------------------------------------


def test_exploration_closes_the_loop_through_the_seed_pool(small_scene, tmp_path):
    pytest.importorskip("cma")
    refs = [small_scene.render(StyleParams(brightness=1.2, saturation=1.3))]
    # Scaled so that the default look scores ~8 and only styles nearer the reference reach 9.
    d0 = OfflineJudge(refs, same_style_distance=1.0).distance(small_scene.render(StyleParams()))
    judge = OfflineJudge(refs, same_style_distance=d0 / 1.1)
    assert 7.5 < judge.score(small_scene.render(StyleParams())).score < 9.0
    pool = SeedPool(tmp_path / "seed_pool.json")
    r = explore(small_scene, judge, pool, generations=16, popsize=6, threshold=9.0, rng_seed=0)
    assert r.hits >= 1 and r.pooled == r.hits and not r.started_from_pool
    assert len(pool.entries) == r.pooled and pool.entries[0]["score"] >= 9.0
    saved = json.loads((tmp_path / "seed_pool.json").read_text())
    assert saved == pool.entries
    again = explore(
        small_scene, judge, SeedPool(tmp_path / "seed_pool.json"), generations=1, popsize=4, rng_seed=2
    )
    assert again.started_from_pool and again.scores[0] >= 9.0  # later runs start from the pool
    base = unguided(small_scene, judge, budget=8, threshold=9.0)
    assert base.evaluations == 8 and len(base.scores) == 8
    (tmp_path / "bad.json").write_text('{"x": 1}')
    with pytest.raises(StyleSearchError, match="seed pool"):
        SeedPool(tmp_path / "bad.json")


def test_exploration_inverts_hits_with_the_cnn(trained, small_scene, tmp_path):
    pytest.importorskip("cma")
    from isonyc_dagster.stylesearch.model import InverseModel

    d, _ = trained
    refs = [small_scene.render(StyleParams())]
    judge = OfflineJudge(refs, same_style_distance=1.0)  # lenient: most candidates near the start score ≥ 9
    pool = SeedPool(tmp_path / "pool.json")
    r = explore(small_scene, judge, pool, generations=2, popsize=4, inverse=InverseModel.load(d / "model.pt"))
    assert r.hits >= 1 and len(pool.entries) == 2 * r.hits
    assert sum(e["inverted"] for e in pool.entries) == r.hits  # each hit and its CNN inversion


# --- CLI --------------------------------------------------------------------------------------------------------


def test_cli_data_fit_and_explore_on_the_demo_project(tmp_path, capsys):
    pytest.importorskip("cma")
    from isonyc_dagster.cli.main import main

    work = tmp_path / "style"
    assert main(["style", "data", "--n", "6", "--size", "64", "--dir", str(work)]) == 0
    text = capsys.readouterr().out
    assert json.loads(text[text.index("{\n") :])["new_pairs"] == 6
    assert len(list((work / "images").glob("*.png"))) == 6 and (work / "scene.npz").exists()
    # A "mock-up": one of the pairs, at map scale already.
    ref = tmp_path / "mockup.png"
    ref.write_bytes((work / "images" / "000002.png").read_bytes())
    capsys.readouterr()
    assert (
        main(
            [
                "style",
                "fit",
                str(ref),
                "--dir",
                str(work),
                "--no-model",
                "--scale",
                "1",
                "--generations",
                "3",
                "--popsize",
                "4",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{\n") :])
    assert summary["results"][0]["reference"] == "mockup" and summary["results"][0]["ssim"] > 0
    style = load_style(work / "style.json")  # usable as `style = ".../style.json"` in the project config
    assert isinstance(style, StyleParams) and (work / "report" / "fit.html").exists()
    assert (
        main(
            [
                "style",
                "explore",
                "--refs",
                str(ref),
                "--scale",
                "1",
                "--dir",
                str(work),
                "--generations",
                "1",
                "--popsize",
                "4",
                "--baseline",
                "3",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    summary = json.loads(text[text.index("{\n") :])
    assert summary["judge"] == "offline" and summary["unguided"]["evaluations"] == 3
    # Bad input: one line, exit 2.
    assert main(["style", "fit", str(tmp_path / "missing.png"), "--dir", str(work), "--no-model"]) == 2
    assert "isonyc style fit: error: reference image" in capsys.readouterr().err
    assert main(["style", "train", "--dir", str(tmp_path / "empty"), "--size", "64"]) == 2


# --- Dagster ----------------------------------------------------------------------------------------------------


def test_style_pairs_asset_materializes_the_data_phase(tmp_path):
    import dagster as dg

    from isonyc_dagster.defs.assets.style import style_pairs
    from isonyc_dagster.defs.resources import ProjectResource
    from tests.dagster_helpers import project_config

    cfg = project_config(tmp_path, 0, 0, 1, 1)
    res = dg.materialize(
        [style_pairs],
        resources={"project": ProjectResource.for_config(cfg)},
        run_config={"ops": {"style_pairs": {"config": {"n": 5, "size": 48}}}},
    )
    assert res.success
    meta = res.get_asset_materialization_events()[0].materialization.metadata
    assert meta["pairs"].value == 5 and meta["new_pairs"].value == 5 and meta["scene_px"].value == 48
    work = tmp_path / "style"
    assert len(list((work / "params").glob("*.json"))) == 5 and (work / "scene.npz").exists()
