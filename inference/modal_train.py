"""The LoRA trainer (``inference/train_lora.py``) on one Modal H100, on the inference server's volume.

The run directory is ``/data/loras/<lora id>/`` on volume ``ISONYC_LORA_VOLUME``: exactly where ``server.py`` loads
``LORA_MODEL_ID=<lora id>`` from, so a finished run is served without copying anything. Datasets go under
``/data/datasets/``; the base model is cached in ``/data/hf`` (shared with the server)::

    modal volume put isonyc-lora-vol data/training/omni/v3 /datasets/omni/v3
    modal run inference/modal_train.py --dataset omni/v3 --lora-id nyc-omni-v3 --steps 2000
    LORA_MODEL_ID=nyc-omni-v3 modal deploy inference/server.py

Every checkpoint is committed to the volume; a preempted or failed container is retried and the trainer resumes from
the newest checkpoint (running the same ``modal run`` again does the same). Settings read at launch:
``ISONYC_LORA_VOLUME`` (``isonyc-lora-vol``), ``ISONYC_TRAIN_APP`` (``isonyc-train-lora``), ``ISONYC_TRAIN_GPU``
(``H100``), ``BASE_MODEL`` (``Qwen/Qwen-Image-Edit``), ``BASE_MODEL_REVISION`` (latest).

Like ``server.py``, the Modal app is built only when Modal loads this file; importing it elsewhere defines the
helpers only (no ``modal`` import).
"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict
from pathlib import PurePosixPath
from typing import Any

from inference.train_lora import DEFAULT_MODEL, TrainConfig, TrainError

VOLUME_ROOT = PurePosixPath("/data")


def train_settings() -> dict[str, str]:
    """Launch-time settings, baked into the image so the container sees what was launched."""
    return {
        "ISONYC_LORA_VOLUME": os.environ.get("ISONYC_LORA_VOLUME", "isonyc-lora-vol"),
        "ISONYC_TRAIN_APP": os.environ.get("ISONYC_TRAIN_APP", "isonyc-train-lora"),
        "ISONYC_TRAIN_GPU": os.environ.get("ISONYC_TRAIN_GPU", "H100"),
        "BASE_MODEL": os.environ.get("BASE_MODEL", DEFAULT_MODEL),
        "BASE_MODEL_REVISION": os.environ.get("BASE_MODEL_REVISION", ""),
    }


def remote_paths(dataset: str, lora_id: str) -> tuple[str, str]:
    """(dataset dir, run dir) on the volume for ``dataset`` (relative to ``/data/datasets``) and ``lora_id``."""
    rel = PurePosixPath(dataset)
    if not dataset or rel.is_absolute() or ".." in rel.parts:
        raise TrainError(
            f"--dataset {dataset!r}: give a path relative to /datasets on the volume, e.g. omni/v3"
        )
    if not lora_id or "/" in lora_id or lora_id.startswith("."):
        raise TrainError(
            f"--lora-id {lora_id!r}: give a folder name (the server's LORA_MODEL_ID), e.g. nyc-omni-v3"
        )
    return str(VOLUME_ROOT / "datasets" / rel), str(VOLUME_ROOT / "loras" / lora_id)


def remote_config(dataset: str, lora_id: str, settings: dict[str, str], **options: Any) -> dict[str, Any]:
    """The :class:`TrainConfig` (as a dict) the container runs; ``options`` are ``TrainConfig`` fields."""
    ds, out = remote_paths(dataset, lora_id)
    cfg = TrainConfig(
        dataset=ds,
        output=out,
        model_id=settings["BASE_MODEL"],
        revision=settings["BASE_MODEL_REVISION"] or None,
        hf_cache_dir=str(VOLUME_ROOT / "hf"),
        device="cuda",
        **options,
    )
    cfg.check()  # locally, before a GPU starts
    return asdict(cfg)


def _modal_wanted() -> bool:
    # server.py's test, not imported from there: with modal loaded, importing server.py builds the server's app.
    return "modal" in sys.modules and os.environ.get("ISONYC_MODAL_BUILD", "1") != "0"


if _modal_wanted():
    from pathlib import Path

    import modal

    _settings = train_settings()
    app = modal.App(
        _settings["ISONYC_TRAIN_APP"],
        image=modal.Image.debian_slim(python_version="3.11")
        .pip_install_from_requirements(str(Path(__file__).with_name("requirements.txt")))
        .pip_install("pyarrow==21.0.0")  # the dataset's Parquet index (the server does not need it)
        .env(_settings)
        .add_local_python_source("inference", "isonyc_dagster"),
    )
    _volume = modal.Volume.from_name(_settings["ISONYC_LORA_VOLUME"])

    @app.function(
        gpu=_settings["ISONYC_TRAIN_GPU"],
        volumes={str(VOLUME_ROOT): _volume},
        memory=98304,  # the bf16 pipeline (~58 GB) is loaded on the CPU first
        timeout=24 * 3600,
        retries=modal.Retries(
            max_retries=3, initial_delay=30.0
        ),  # each retry resumes from the last checkpoint
    )
    def train_remote(config: dict[str, Any]) -> dict[str, Any]:
        from inference.train_lora import train

        _volume.reload()
        config["target_modules"] = tuple(config["target_modules"])
        res = train(TrainConfig(**config), on_checkpoint=lambda _path: _volume.commit())
        _volume.commit()
        return {
            "step": res.step,
            "resumed_from": res.resumed_from,
            "adapter": str(res.adapter),
            "evals": res.evals,
        }

    @app.local_entrypoint()
    def main(
        dataset: str,
        lora_id: str,
        steps: int = 1000,
        rank: int = 16,
        lr: float = 1e-4,
        resolution: int = 1024,
        batch_size: int = 1,
        checkpoint_every: int = 250,
        validate_every: int = 250,
        seed: int = 0,
    ) -> None:
        config = remote_config(
            dataset,
            lora_id,
            _settings,
            steps=steps,
            rank=rank,
            lr=lr,
            resolution=resolution,
            batch_size=batch_size,
            checkpoint_every=checkpoint_every,
            validate_every=validate_every,
            seed=seed,
        )
        result = train_remote.remote(config)
        last = result["evals"][-1] if result["evals"] else {}
        print(
            f"{lora_id}: {result['step']} steps (resumed from {result['resumed_from']}); "
            f"validation loss {last.get('val')}; serve it with LORA_MODEL_ID={lora_id} modal deploy inference/server.py"
        )
