"""The LoRA trainer (``inference/train_lora.py``) on the tiny random Qwen-Image-Edit pipeline (``tests/tiny_qwen.py``)
over a tiny omni dataset written with the dataset module's own writer: the loss is finite and falls on a repeated
batch, the adapter loads into the server's :class:`QwenLoraPipeline` exactly (same losses as the trained model) and
changes what the server answers, and a run killed mid-way resumes from its newest checkpoint and continues exactly as
an uninterrupted run. The ``cuda`` variant runs the same on a CUDA device and is skipped without one.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")
pytest.importorskip("peft")

from inference.server import QwenLoraPipeline, create_app  # noqa: E402
from inference.train_lora import (  # noqa: E402
    LORA_FILE,
    FlowMatchingLoss,
    TrainConfig,
    TrainError,
    encode_examples,
    main,
    train,
)
from isonyc_dagster.backends.base import GenerationRequest  # noqa: E402
from isonyc_dagster.backends.modal import ModalBackend  # noqa: E402
from isonyc_dagster.backends.transport import HttpSettings  # noqa: E402
from isonyc_dagster.images import decode_rgb  # noqa: E402
from isonyc_dagster.training.dataset import Row, load_split, write_dataset  # noqa: E402
from tests.fake_apis import edit_template, make_template, serve_asgi  # noqa: E402
from tests.tiny_qwen import tiny_pipeline  # noqa: E402

SIDE = 64  # template, target and condition side: the 8× VAE gives 8×8 latents, 4×4 tokens
STEPS = 30

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")],
    ),
]


def tiny_rows(n_train: int, n_val: int, side: int = SIDE) -> list[Row]:
    """Templates with a red-bordered render box and their "generations" (the box repainted, context kept)."""
    rows = []
    for i in range(n_train + n_val):
        tpl, _ = make_template(side, seed=i)
        split = "train" if i < n_train else "validation"
        rows.append(
            Row(tpl, edit_template(tpl, seed=i + 1), "fill in the outlined section", "rect", i, 0, split, 0)
        )
    return rows


def config(dataset: Path, output: Path, device: str, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "steps": STEPS,
        "rank": 8,
        "alpha": 32,  # scale 4: a tiny model learns visibly in a few steps
        "lr": 1e-2,
        "resolution": SIDE,
        "condition_side": SIDE,  # the pipeline's own 1024² condition costs ~3 s a step on a CPU
        "checkpoint_every": 10,
        "validate_every": 10,
        "device": device,
    }
    return TrainConfig(str(dataset), str(output), **{**base, **kw})


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # one training example: every step sees the same batch (only noise and sigma change)
    return write_dataset(tmp_path_factory.mktemp("omni"), tiny_rows(1, 1)).path


@pytest.fixture(scope="module", params=DEVICES)
def trained(request: pytest.FixtureRequest, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    cfg = config(dataset, tmp_path_factory.mktemp("run") / "tiny-lora", request.param)
    return cfg, train(cfg, pipe=tiny_pipeline())


def test_loss_is_finite_and_falls_on_a_repeated_batch(trained):
    cfg, res = trained
    assert res.step == STEPS and res.resumed_from == 0 and len(res.losses) == STEPS
    assert all(math.isfinite(v) for v in res.losses)
    # The fixed-noise loss (same noise and sigmas each time) on the one training example: measured 1.53 → 1.10.
    first, last = res.evals[0]["train_eval"], res.evals[-1]["train_eval"]
    assert [e["step"] for e in res.evals] == [0, 10, 20, 30]
    assert last < 0.85 * first, f"fixed-noise loss {first:.4f} → {last:.4f}: not learning"
    assert np.mean(res.losses[-10:]) < np.mean(res.losses[:10])
    report = json.loads((res.output / "training.json").read_text())
    assert report["losses"] == res.losses and report["examples"] == {"train": 1, "validation": 1}
    assert (res.output / "loss.png").stat().st_size > 0
    kept = sorted(p.name for p in (res.output / "checkpoints").iterdir())
    assert kept == ["step-0000020", "step-0000030"]  # keep_checkpoints=2


def test_adapter_round_trips_into_the_server_exactly(trained, dataset):
    cfg, res = trained
    pipeline = QwenLoraPipeline(
        "tiny-random/qwen-image-edit",
        None,
        res.output,
        LORA_FILE,
        cache_dir="unused",
        pipe=tiny_pipeline(),
        device=cfg.device,
    )
    loaded = pipeline.pipe.transformer.peft_config[QwenLoraPipeline.ADAPTER]
    assert (loaded.r, loaded.lora_alpha) == (8, 32)  # the trained scale, from the saved metadata
    # The server's transformer gives the trained model's fixed-noise loss: same weights, keys and scale.
    device = cfg.device
    items = encode_examples(pipeline.pipe, load_split(dataset, "train"), cfg, device)  # from the run's cache
    loss = FlowMatchingLoss(pipeline.pipe, cfg, device)
    tol = 2e-2 if device == "cuda" else 1e-5
    assert loss.fixed_loss(items, cfg.seed) == pytest.approx(res.evals[-1]["train_eval"], rel=tol)
    pipeline.pipe.set_adapters([QwenLoraPipeline.ADAPTER], adapter_weights=[0.0])
    try:  # weight 0 is the base model, i.e. the untrained LoRA of step 0 (B = 0)
        assert loss.fixed_loss(items, cfg.seed) == pytest.approx(res.evals[0]["train_eval"], rel=tol)
    finally:
        pipeline.pipe.set_adapters([QwenLoraPipeline.ADAPTER], adapter_weights=[1.0])


def test_adapter_changes_what_the_server_answers(trained):
    cfg, res = trained
    pipeline = QwenLoraPipeline(
        "tiny-random/qwen-image-edit",
        None,
        res.output,
        LORA_FILE,
        cache_dir="unused",
        pipe=tiny_pipeline(),
        device=cfg.device,
    )
    template = make_template(SIDE, seed=0)[0]
    with serve_asgi(create_app(pipeline)) as url:
        backend = ModalBackend(f"{url}/edit_b64", steps=2, http=HttpSettings(timeout_s=300, max_attempts=1))

        def answer() -> np.ndarray:
            res = backend.generate(GenerationRequest(template, seed=3, prompt="fill in the outlined section"))
            assert res.provenance["lora"].startswith(f"tiny-lora/{LORA_FILE}@sha256:")
            return decode_rgb(res.image_png)

        tuned = answer()
        pipeline.pipe.set_adapters([QwenLoraPipeline.ADAPTER], adapter_weights=[0.0])
        base = answer()
        backend.close()
    diff = np.abs(tuned.astype(int) - base.astype(int))
    assert tuned.shape == (SIDE, SIDE, 3)
    assert (diff > 0).any(axis=-1).mean() > 0.1, "the trained LoRA does not change the server's output"


class Killed(Exception):
    pass


def test_a_killed_run_resumes_from_its_newest_checkpoint_exactly(dataset, tmp_path):
    base = tiny_pipeline()
    kw = {"steps": 6, "checkpoint_every": 2, "validate_every": 100, "gradient_checkpointing": False}
    reference = train(config(dataset, tmp_path / "straight", "cpu", **kw), pipe=base)

    def kill_after_5(step: int, loss: float) -> None:
        if step == 5:
            raise Killed

    cfg = config(dataset, tmp_path / "killed", "cpu", **kw)
    with pytest.raises(Killed):
        train(cfg, pipe=tiny_pipeline(), on_step=kill_after_5)
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").iterdir()) == [
        "step-0000002",
        "step-0000004",
    ]
    assert not (tmp_path / "killed" / LORA_FILE).exists()  # no adapter from an unfinished run

    resumed = train(cfg, pipe=tiny_pipeline())
    assert resumed.resumed_from == 4 and resumed.step == 6
    # Steps 5 and 6 redone from the step-4 checkpoint: the same draws, weights and optimizer state.
    assert resumed.losses == pytest.approx(reference.losses, rel=1e-6)
    assert resumed.evals[-1]["train_eval"] == pytest.approx(reference.evals[-1]["train_eval"], rel=1e-6)

    with pytest.raises(TrainError, match="use the same settings to resume"):
        train(config(dataset, tmp_path / "killed", "cpu", **{**kw, "rank": 4}), pipe=tiny_pipeline())


def test_cli_refuses_bad_input_with_one_line(tmp_path, capsys):
    assert main(["--dataset", str(tmp_path / "nothing"), "--output", str(tmp_path / "o"), "--tiny"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("train_lora: error: ") and "no index.parquet" in err and "\n" not in err
    assert main(["--dataset", ".", "--output", str(tmp_path / "o"), "--resolution", "100"]) == 2
    assert "--resolution must be a multiple of 32" in capsys.readouterr().err


def test_the_modal_app_imports_without_modal_and_maps_paths_on_the_volume():
    import inference.modal_train as mt

    assert not hasattr(mt, "app")  # built only when Modal loads the file
    settings = {**mt.train_settings(), "BASE_MODEL": "Qwen/Qwen-Image-Edit", "BASE_MODEL_REVISION": ""}
    cfg = mt.remote_config("omni/v3", "nyc-omni", settings, steps=10, rank=4)
    assert (cfg["dataset"], cfg["output"]) == ("/data/datasets/omni/v3", "/data/loras/nyc-omni")
    assert (
        cfg["hf_cache_dir"] == "/data/hf" and cfg["model_id"] == "Qwen/Qwen-Image-Edit" and cfg["steps"] == 10
    )
    for dataset, lora_id in (("../etc", "x"), ("/abs", "x"), ("omni/v3", "a/b"), ("omni/v3", "")):
        with pytest.raises(TrainError):
            mt.remote_paths(dataset, lora_id)
    with pytest.raises(TrainError, match="--resolution"):
        mt.remote_config("omni/v3", "x", settings, resolution=1000)
