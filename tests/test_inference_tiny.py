"""The real inference stack, tiny: a randomly initialised Qwen-Image-Edit pipeline built from configs (no
downloaded weights) with a random LoRA written here, loaded by ``inference/server.py``'s own
:class:`QwenLoraPipeline`, served by its FastAPI app under uvicorn on 127.0.0.1 and called through the
project's :class:`ModalBackend` with a 1024² template.

Runs on the CPU wherever the ``ml`` extra (torch, diffusers, transformers, peft) is installed
(``scripts/setup.sh test`` installs it); the ``cuda`` variant runs the same on a CUDA device and is
skipped without one.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from inference.server import QwenLoraPipeline, create_app  # noqa: E402
from isonyc_dagster.backends.base import GenerationRequest  # noqa: E402
from isonyc_dagster.backends.modal import ModalBackend  # noqa: E402
from isonyc_dagster.backends.transport import HttpSettings  # noqa: E402
from isonyc_dagster.images import decode_rgb  # noqa: E402
from tests.fake_apis import make_template, serve_asgi  # noqa: E402
from tests.tiny_qwen import LORA_FILE, tiny_pipeline, write_random_lora  # noqa: E402

STEPS = 2

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=[
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ],
    ),
]


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("loras") / "tiny-random-lora"
    assert write_random_lora(path).stat().st_size > 0
    return path


@pytest.fixture(scope="module", params=DEVICES)
def served(request: pytest.FixtureRequest, lora_dir: Path) -> Iterator[tuple[str, QwenLoraPipeline]]:
    pipeline = QwenLoraPipeline(
        "tiny-random/qwen-image-edit",
        None,
        lora_dir,
        LORA_FILE,
        cache_dir="unused",
        pipe=tiny_pipeline(),
        device=request.param,
    )
    with serve_asgi(create_app(pipeline)) as url:
        yield url, pipeline


def test_tiny_qwen_edit_with_lora_round_trips_a_1024_template(served, lora_dir):
    url, pipeline = served
    template = make_template(1024)[0]
    backend = ModalBackend(f"{url}/edit_b64", steps=STEPS, http=HttpSettings(timeout_s=300, max_attempts=1))

    def generate(seed: int) -> bytes:
        res = backend.generate(GenerationRequest(template, seed=seed, prompt="fill in the outlined section"))
        p = res.provenance
        assert p["seed"] == seed and p["seed_confirmed"] is True and p["steps"] == STEPS
        assert p["model_id"] == "tiny-random/qwen-image-edit@main"
        assert p["lora"].startswith(f"tiny-random-lora/{LORA_FILE}@sha256:")
        assert p["output_format"] == "PNG" and p["lossy_output"] is False
        return res.image_png

    first = generate(7)
    out = decode_rgb(first)
    assert out.shape == (1024, 1024, 3)
    assert out.std() > 1.0  # a real decoded image, not a constant
    assert generate(7) == first  # deterministic under a fixed seed

    # The LoRA is active: the same request with the adapter at weight 0 gives another image.
    pipeline.pipe.set_adapters([QwenLoraPipeline.ADAPTER], adapter_weights=[0.0])
    try:
        without = decode_rgb(generate(7))
    finally:
        pipeline.pipe.set_adapters([QwenLoraPipeline.ADAPTER], adapter_weights=[1.0])
    diff = np.abs(without.astype(int) - out.astype(int))
    # Measured: ~45 % of the pixels change, by up to ~18 levels (the random VAE decoder damps a lot).
    changed = float((diff > 0).any(axis=-1).mean())
    assert changed > 0.1 and diff.max() >= 4, (
        f"the LoRA at weight 0 changed {changed:.1%} of the pixels, by at most {diff.max()} levels: "
        "is it applied?"
    )
    backend.close()
