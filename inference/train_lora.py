"""LoRA fine-tune of Qwen-Image-Edit on the omni infill dataset (issue 15), writing the adapter the server loads.

What one training step does (flow matching, as diffusers' Qwen-Image LoRA scripts do it, with the edit model's
conditioning as ``QwenImageEditPipeline`` feeds it at inference):

1. Once per example (cached on disk under ``<output>/cache``): the prompt is encoded by the Qwen2.5-VL text encoder
   *with the input template* (the edit pipeline's prompt template), and the template (condition) and the target are
   encoded by the VAE and normalised with the VAE's latent mean/std. The condition is sized like the pipeline sizes
   it (``calculate_dimensions(1024², ratio)``), the target at ``--resolution``.
2. A sigma is sampled (``--weighting-scheme``, uniform by default), the target latents are noised
   ``x_σ = (1-σ)·x₀ + σ·ε``, packed into 2×2 tokens and concatenated with the packed condition tokens along the
   sequence; the transformer predicts the velocity for all tokens and the loss is the MSE against ``ε - x₀`` on the
   *target* tokens only.
3. AdamW on the LoRA weights (peft ``LoraConfig`` on the transformer's attention projections), gradient
   clipping; ``--batch-size`` examples are accumulated per optimizer step.

bf16 weights on CUDA (LoRA weights and the optimizer in fp32), fp32 on the CPU. Every step's example choice, noise
and sigma derive from ``(seed, step)``, so a run resumed from a checkpoint continues exactly as if never stopped.

Output layout (``--output DIR``)::

    pytorch_lora_weights.safetensors   the adapter, saved by ``QwenImageEditPipeline.save_lora_weights``: exactly
                                       what ``inference/server.py`` loads (``LORA_WEIGHT_NAME``'s default)
    training.json                      settings, per-step losses, validation losses, dataset, timings
    loss.png                           the loss curve
    checkpoints/step-0000250/          the adapter in the same layout + optimizer.pt + state.json (the last
                                       ``--keep-checkpoints``); a killed run resumes from the newest
    cache/<key>.safetensors            encoded examples (text embeddings and latents)

Run locally on any CUDA device (or the CPU, slowly)::

    python -m inference.train_lora --dataset data/training/omni --output loras/my-lora --steps 2000

``--tiny`` swaps the 20B model for the tests' tiny random pipeline (``tests/tiny_qwen.py``, from a checkout): a
smoke run of the whole loop in seconds. On Modal (H100): ``inference/modal_train.py``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import random
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from isonyc_dagster.errors import IsonycError
from isonyc_dagster.training.dataset import Example, load_split

log = logging.getLogger("isonyc_train_lora")

#: The adapter's file name: the server's default ``LORA_WEIGHT_NAME``.
LORA_FILE = "pytorch_lora_weights.safetensors"
DEFAULT_MODEL = "Qwen/Qwen-Image-Edit"
#: The image stream's attention projections (what diffusers' Qwen-Image LoRA script adapts by default).
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
WEIGHTING_SCHEMES = ("none", "logit_normal", "mode", "sigma_sqrt", "cosmap")
#: The edit pipeline sizes its condition image to this many pixels whatever the template's size.
CONDITION_AREA = 1024 * 1024
#: Fixed sigmas of the validation loss (the same for every evaluation, so the numbers compare).
EVAL_SIGMAS = (0.25, 0.5, 0.75)
#: At most this many training examples in the fixed-noise "train_eval" loss (an overfitting gauge).
MAX_TRAIN_EVAL = 16
CHECKPOINTS = "checkpoints"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"


class TrainError(IsonycError, ValueError):
    """Training cannot start or continue: bad settings, an empty split, a checkpoint of other settings."""


@dataclass
class TrainConfig:
    """Everything a run depends on (written to ``training.json`` and each checkpoint's ``state.json``)."""

    dataset: str
    output: str
    steps: int = 1000
    rank: int = 16
    alpha: int | None = None  # None: = rank (scale 1)
    lr: float = 1e-4
    resolution: int = 1024
    batch_size: int = 1  # examples accumulated per optimizer step
    seed: int = 0
    checkpoint_every: int = 250
    validate_every: int = 250
    keep_checkpoints: int = 2
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-4
    weighting_scheme: str = "none"
    target_modules: tuple[str, ...] = DEFAULT_TARGETS
    gradient_checkpointing: bool = True
    model_id: str = DEFAULT_MODEL
    revision: str | None = None
    hf_cache_dir: str | None = None
    device: str | None = None  # None: cuda when available, else cpu
    #: Side of the (square) condition image; None = as the edit pipeline does (CONDITION_AREA).
    condition_side: int | None = None
    max_val_examples: int | None = None

    def check(self) -> None:
        """One clear line for each unusable setting."""
        problems = []
        if self.steps < 1:
            problems.append(f"--steps must be ≥ 1, got {self.steps}")
        if self.rank < 1:
            problems.append(f"--rank must be ≥ 1, got {self.rank}")
        if not self.lr > 0:
            problems.append(f"--lr must be > 0, got {self.lr}")
        for name, side in (("--resolution", self.resolution), ("--condition-side", self.condition_side)):
            if side is not None and (side < 32 or side % 32):
                problems.append(f"{name} must be a multiple of 32 and ≥ 32, got {side}")
        if self.batch_size < 1 or self.checkpoint_every < 1 or self.validate_every < 1:
            problems.append("--batch-size, --checkpoint-every and --validate-every must be ≥ 1")
        if self.keep_checkpoints < 1:
            problems.append(f"--keep-checkpoints must be ≥ 1, got {self.keep_checkpoints}")
        if self.weighting_scheme not in WEIGHTING_SCHEMES:
            problems.append(f"--weighting-scheme must be one of {', '.join(WEIGHTING_SCHEMES)}")
        if not self.target_modules:
            problems.append("--lora-layers is empty")
        if problems:
            raise TrainError("; ".join(problems))

    @property
    def lora_alpha(self) -> int:
        return self.alpha if self.alpha is not None else self.rank

    def adapter_key(self) -> dict[str, Any]:
        """The settings a checkpoint's weights depend on: resuming with others would mix two runs."""
        return {
            "model_id": self.model_id,
            "revision": self.revision,
            "rank": self.rank,
            "alpha": self.lora_alpha,
            "target_modules": list(self.target_modules),
            "resolution": self.resolution,
            "condition_side": self.condition_side,
        }


@dataclass
class Encoded:
    """One example, encoded: text embeddings (seq, dim) and mask, condition and target latents (C, 1, h, w)."""

    prompt_embeds: Any
    prompt_mask: Any
    cond: Any
    target: Any


@dataclass
class TrainResult:
    output: Path
    adapter: Path
    step: int
    resumed_from: int  # 0: a fresh run
    losses: list[float] = field(default_factory=list)  # per step, from step 1 (resumed steps included)
    evals: list[dict[str, float]] = field(default_factory=list)  # {"step", "train_eval", "val"}
    seconds: float = 0.0


StepHook = Callable[[int, float], None]


# --------------------------------------------------------------------------------------------------
# Model and data


def resolve_device(cfg: TrainConfig) -> tuple[str, Any]:
    """(device, weight dtype): bf16 on CUDA, fp32 elsewhere."""
    import torch

    device = cfg.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TrainError(f"--device {device}: no CUDA device here; use --device cpu")
    return device, torch.bfloat16 if device.startswith("cuda") else torch.float32


def load_pipeline(cfg: TrainConfig, dtype: Any) -> Any:
    """The base ``QwenImageEditPipeline`` (weights from the hub or a local directory), on the CPU."""
    from diffusers import QwenImageEditPipeline

    return QwenImageEditPipeline.from_pretrained(
        cfg.model_id, revision=cfg.revision, torch_dtype=dtype, cache_dir=cfg.hf_cache_dir
    )


def add_lora(transformer: Any, cfg: TrainConfig) -> list[Any]:
    """Freeze the transformer, add the trainable LoRA (fp32 weights); return its parameters."""
    import torch
    from peft import LoraConfig

    transformer.requires_grad_(False)
    transformer.add_adapter(
        LoraConfig(
            r=cfg.rank,
            lora_alpha=cfg.lora_alpha,
            init_lora_weights="gaussian",
            target_modules=list(cfg.target_modules),
        )
    )
    params = [p for p in transformer.parameters() if p.requires_grad]
    if not params:
        raise TrainError(f"--lora-layers {','.join(cfg.target_modules)} matched no layer of the transformer")
    for p in params:  # bf16 weights train badly: the adapter and its optimizer state stay fp32
        p.data = p.data.to(torch.float32)
    return params


def condition_size(cfg: TrainConfig, width: int, height: int) -> tuple[int, int]:
    """(width, height) of the condition image: what ``QwenImageEditPipeline`` resizes the template to."""
    if cfg.condition_side is not None:
        return cfg.condition_side, cfg.condition_side
    ratio = width / height
    w = math.sqrt(CONDITION_AREA * ratio)
    return round(w / 32) * 32, round(w / ratio / 32) * 32


def _check_example(i: int, ex: Example) -> None:
    if ex.input.size != ex.target.size:
        raise TrainError(
            f"example {i} ({ex.kind} at {ex.x},{ex.y}): input is {ex.input.size}, target {ex.target.size}; "
            "rebuild the dataset (both must have one size)"
        )
    if ex.input.width != ex.input.height:
        raise TrainError(
            f"example {i} is {ex.input.width}×{ex.input.height}; the trainer takes square examples"
        )


def _cache_key(cfg: TrainConfig, ex: Example) -> str:
    h = hashlib.sha256(json.dumps(cfg.adapter_key(), sort_keys=True).encode())
    for im in (ex.input, ex.target):
        h.update(f"{im.size}".encode())
        h.update(im.tobytes())
    h.update(ex.prompt.encode())
    return h.hexdigest()[:32]


def _vae_latents(pipe: Any, image: Image.Image, side: tuple[int, int], device: str) -> Any:
    """Normalised VAE latents (C, 1, h, w) of ``image`` at ``side``: the edit pipeline's own encoding."""
    w, h = side
    x = pipe.image_processor.preprocess(image, h, w).unsqueeze(2)
    x = x.to(device=device, dtype=pipe.vae.dtype)
    return pipe._encode_vae_image(x, generator=None)[0]  # argmax of the latent distribution, as at inference


def encode_examples(pipe: Any, examples: Sequence[Example], cfg: TrainConfig, device: str) -> list[Encoded]:
    """Encode (or read from the cache) every example; text encoder and VAE must be on ``device``."""
    import torch
    from safetensors.torch import load_file, save_file

    cache = Path(cfg.output) / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    out = []
    for i, ex in enumerate(examples):
        _check_example(i, ex)
        path = cache / f"{_cache_key(cfg, ex)}.safetensors"
        if not path.exists():
            cond_side = condition_size(cfg, *ex.input.size)
            cond_img = pipe.image_processor.resize(ex.input, cond_side[1], cond_side[0])
            target_img = pipe.image_processor.resize(ex.target, cfg.resolution, cfg.resolution)
            with torch.no_grad():
                embeds, mask = pipe.encode_prompt(prompt=[ex.prompt], image=cond_img, device=device)
                tensors = {
                    "prompt_embeds": embeds[0],
                    "prompt_mask": mask[0],
                    "cond": _vae_latents(pipe, cond_img, cond_side, device),
                    "target": _vae_latents(pipe, target_img, (cfg.resolution, cfg.resolution), device),
                }
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp))
            tmp.replace(path)
        t = load_file(str(path))
        out.append(Encoded(t["prompt_embeds"], t["prompt_mask"], t["cond"], t["target"]))
    return out


# --------------------------------------------------------------------------------------------------
# The loss


class FlowMatchingLoss:
    """The velocity MSE of the transformer on one encoded example at a given sigma (see the module doc)."""

    def __init__(self, pipe: Any, cfg: TrainConfig, device: str) -> None:
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.transformer = pipe.transformer
        if self.transformer.config.guidance_embeds:
            raise TrainError(
                f"{cfg.model_id} is guidance-distilled; the trainer supports Qwen-Image-Edit only"
            )
        # A copy: the training sigmas are the scheduler's unshifted table, as in diffusers' training scripts.
        self.scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
        self.pack = pipe._pack_latents
        self.cfg, self.device = cfg, device
        # the base weights' dtype (bf16 as loaded for CUDA; a given pipeline's own), not the fp32 LoRA's
        self.dtype = self.transformer.img_in.weight.dtype

    def sample_u(self, generator: Any) -> float:
        """The noise level of one training sample, in [0, 1), drawn per ``--weighting-scheme``."""
        from diffusers.training_utils import compute_density_for_timestep_sampling

        u = compute_density_for_timestep_sampling(
            weighting_scheme=self.cfg.weighting_scheme,
            batch_size=1,
            logit_mean=0.0,
            logit_std=1.0,
            mode_scale=1.29,
            generator=generator,
        )
        return float(u[0])

    def __call__(self, item: Encoded, noise: Any, u: float) -> Any:
        import torch
        from diffusers.training_utils import compute_loss_weighting_for_sd3

        n = self.scheduler.config.num_train_timesteps
        idx = min(int(u * n), n - 1)
        sigma = self.scheduler.sigmas[idx].to(self.device, torch.float32)
        timestep = self.scheduler.timesteps[idx].to(self.device, torch.float32)
        x0 = item.target.to(self.device, torch.float32)[None]  # (1, C, 1, h, w)
        cond = item.cond.to(self.device, self.dtype)[None]
        eps = noise.to(self.device, torch.float32)
        noisy = ((1.0 - sigma) * x0 + sigma * eps).to(self.dtype)
        c, h, w = x0.shape[1], x0.shape[3], x0.shape[4]
        ch, cw = cond.shape[3], cond.shape[4]
        tokens = self.pack(noisy, 1, c, h, w)
        hidden = torch.cat([tokens, self.pack(cond, 1, c, ch, cw)], dim=1)
        mask = item.prompt_mask.to(self.device)[None]
        pred = self.transformer(
            hidden_states=hidden,
            timestep=(timestep / 1000).expand(1).to(self.dtype),
            encoder_hidden_states=item.prompt_embeds.to(self.device, self.dtype)[None],
            encoder_hidden_states_mask=mask,
            img_shapes=[[(1, h // 2, w // 2), (1, ch // 2, cw // 2)]],
            txt_seq_lens=[int(mask.sum())],
            return_dict=False,
        )[0][:, : tokens.shape[1]]  # the target's tokens; the condition's are context only
        velocity = self.pack(eps - x0, 1, c, h, w)
        weight = compute_loss_weighting_for_sd3(self.cfg.weighting_scheme, sigmas=sigma)
        return (weight.float() * (pred.float() - velocity) ** 2).mean()

    def fixed_loss(self, items: Sequence[Encoded], seed: int) -> float:
        """Mean loss over ``items`` at :data:`EVAL_SIGMAS` with noise from ``seed``: the same draw every time."""
        import torch

        if not items:
            return float("nan")
        total = 0.0
        with torch.no_grad():
            for i, item in enumerate(items):
                g = torch.Generator().manual_seed(seed * 7919 + i)
                for u in EVAL_SIGMAS:
                    noise = torch.randn(item.target[None].shape, generator=g)
                    total += float(self(item, noise, u))
        return total / (len(items) * len(EVAL_SIGMAS))


# --------------------------------------------------------------------------------------------------
# Checkpoints and the adapter


def save_adapter(transformer: Any, directory: Path) -> Path:
    """The LoRA in the layout the server loads (``load_lora_weights(dir, weight_name=LORA_FILE)``)."""
    from diffusers import QwenImageEditPipeline
    from peft.utils import get_peft_model_state_dict

    QwenImageEditPipeline.save_lora_weights(
        directory,
        transformer_lora_layers=get_peft_model_state_dict(transformer),
        weight_name=LORA_FILE,
        safe_serialization=True,
        # rank, alpha and targets travel with the weights, so the server applies the trained scale
        transformer_lora_adapter_metadata=transformer.peft_config["default"].to_dict(),
    )
    return directory / LORA_FILE


def _publish_adapter(transformer: Any, output: Path) -> Path:
    """The final adapter, replaced whole: a kill while saving leaves the previous file, never half a file."""
    tmp = output / f".adapter.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.replace(save_adapter(transformer, tmp), output / LORA_FILE)
    shutil.rmtree(tmp, ignore_errors=True)
    return output / LORA_FILE


def _step_dirs(output: Path) -> list[tuple[int, Path]]:
    root = output / CHECKPOINTS
    found = []
    if root.is_dir():
        for p in root.iterdir():
            name = p.name
            if name.startswith("step-") and name[5:].isdigit() and (p / STATE_FILE).exists():
                found.append((int(name[5:]), p))
    return sorted(found)


def save_checkpoint(
    output: Path, step: int, transformer: Any, optimizer: Any, state: dict[str, Any], keep: int
) -> Path:
    """Write ``checkpoints/step-N`` whole (temp dir renamed into place) and drop all but the newest ``keep``."""
    import torch

    root = output / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".step-{step:07d}.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    save_adapter(transformer, tmp)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))  # last: its presence marks a whole checkpoint
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for _, old in _step_dirs(output)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def resume(output: Path, cfg: TrainConfig, transformer: Any, optimizer: Any) -> dict[str, Any] | None:
    """Load the newest checkpoint into ``transformer``'s LoRA and ``optimizer``; its state, or None."""
    import torch
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    for stale in (output / CHECKPOINTS).glob(".step-*"):  # half-written by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    found = _step_dirs(output)
    if not found:
        return None
    step, path = found[-1]
    state = json.loads((path / STATE_FILE).read_text())
    if state.get("adapter_key") != cfg.adapter_key():
        raise TrainError(
            f"{path} was trained with {state.get('adapter_key')}, not {cfg.adapter_key()}; use the same settings "
            "to resume, or another --output for a new run"
        )
    weights = {k.removeprefix("transformer."): v for k, v in load_file(str(path / LORA_FILE)).items()}
    result = set_peft_model_state_dict(transformer, weights, adapter_name="default")
    if getattr(result, "unexpected_keys", None):
        raise TrainError(
            f"{path}: LoRA weights do not fit the transformer ({result.unexpected_keys[:3]} ...)"
        )
    for p in transformer.parameters():
        if p.requires_grad:
            p.data = p.data.to(torch.float32)
    optimizer.load_state_dict(torch.load(path / OPTIMIZER_FILE, map_location="cpu", weights_only=True))
    log.info("resumed from %s (step %d)", path, step)
    return state


# --------------------------------------------------------------------------------------------------
# The run


def _prepare(
    cfg: TrainConfig, pipe: Any, train_ex: list[Example], val_ex: list[Example], device: str
) -> tuple[list[Encoded], list[Encoded]]:
    """Encode both splits on ``device``, then keep only the transformer (and VAE) there."""
    pipe.text_encoder.to(device)
    pipe.vae.to(device)
    train_items = encode_examples(pipe, train_ex, cfg, device)
    val_items = encode_examples(pipe, val_ex, cfg, device)
    pipe.text_encoder.to("cpu")  # ~16 GB in bf16: the transformer needs the room
    if device.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
    pipe.transformer.to(device)
    return train_items, val_items


def _record_eval(
    loss_fn: FlowMatchingLoss, train_items: list[Encoded], val_items: list[Encoded], step: int, seed: int
) -> dict[str, float]:
    loss_fn.transformer.eval()
    rec = {
        "step": step,
        "train_eval": loss_fn.fixed_loss(train_items[:MAX_TRAIN_EVAL], seed),
        "val": loss_fn.fixed_loss(val_items, seed),
    }
    loss_fn.transformer.train()
    log.info("step %d: fixed-noise loss train %.5f, validation %.5f", step, rec["train_eval"], rec["val"])
    return rec


def _train_step(
    loss_fn: FlowMatchingLoss,
    items: list[Encoded],
    params: list[Any],
    optimizer: Any,
    cfg: TrainConfig,
    step: int,
) -> float:
    """One optimizer step over ``batch_size`` examples; the draw depends on (seed, step) only."""
    import torch

    rng = random.Random(f"{cfg.seed}:{step}")
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for _ in range(cfg.batch_size):
        item = items[rng.randrange(len(items))]
        noise = torch.randn(item.target[None].shape, generator=gen)
        loss = loss_fn(item, noise, loss_fn.sample_u(gen)) / cfg.batch_size
        loss.backward()
        total += float(loss.detach())
    if not math.isfinite(total):
        raise TrainError(f"step {step}: the loss is {total}; lower --lr (now {cfg.lr})")
    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
    optimizer.step()
    return total


def train(
    cfg: TrainConfig,
    *,
    pipe: Any = None,
    on_step: StepHook | None = None,
    on_checkpoint: Callable[[Path], None] | None = None,
) -> TrainResult:
    """Train (or resume) per ``cfg``; ``pipe``: an already built ``QwenImageEditPipeline`` (the tests' tiny one).

    ``on_step(step, loss)`` runs after each step (an exception there stops the run like a kill would);
    ``on_checkpoint(path)`` after each checkpoint (Modal commits its volume there).
    """
    import torch

    cfg.check()
    started = time.monotonic()
    output = Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    device, dtype = resolve_device(cfg)
    train_ex = load_split(cfg.dataset, "train")  # before the model: a bad dataset fails in seconds
    if not train_ex:
        raise TrainError(f"{cfg.dataset} has no training examples; build the dataset first")
    val_ex = load_split(cfg.dataset, "validation")[: cfg.max_val_examples]
    if pipe is None:
        pipe = load_pipeline(cfg, dtype)
    pipe.text_encoder.requires_grad_(False)
    pipe.vae.requires_grad_(False)
    params = add_lora(pipe.transformer, cfg)
    if cfg.gradient_checkpointing:
        pipe.transformer.enable_gradient_checkpointing()
    train_items, val_items = _prepare(cfg, pipe, train_ex, val_ex, device)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = FlowMatchingLoss(pipe, cfg, device)
    state = resume(output, cfg, pipe.transformer, optimizer)
    start = int(state["step"]) if state else 0
    result = TrainResult(output, output / LORA_FILE, start, start)
    if state:
        result.losses, result.evals = list(state["losses"]), list(state["evals"])
    else:
        result.evals.append(_record_eval(loss_fn, train_items, val_items, 0, cfg.seed))
    pipe.transformer.train()
    for step in range(start + 1, cfg.steps + 1):
        result.losses.append(_train_step(loss_fn, train_items, params, optimizer, cfg, step))
        result.step = step
        if step % cfg.validate_every == 0 or step == cfg.steps:
            result.evals.append(_record_eval(loss_fn, train_items, val_items, step, cfg.seed))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            st = {
                "step": step,
                "adapter_key": cfg.adapter_key(),
                "losses": result.losses,
                "evals": result.evals,
            }
            path = save_checkpoint(output, step, pipe.transformer, optimizer, st, cfg.keep_checkpoints)
            if on_checkpoint:
                on_checkpoint(path)
        if on_step:
            on_step(step, result.losses[-1])
    _publish_adapter(pipe.transformer, output)
    result.seconds = time.monotonic() - started
    _write_report(cfg, result, len(train_ex), len(val_items))
    return result


def _write_report(cfg: TrainConfig, result: TrainResult, n_train: int, n_val: int) -> None:
    report = {
        "config": {**asdict(cfg), "target_modules": list(cfg.target_modules)},
        "examples": {"train": n_train, "validation": n_val},
        "steps": result.step,
        "resumed_from": result.resumed_from,
        "losses": result.losses,
        "evals": result.evals,
        "seconds_this_run": round(result.seconds, 2),
        "adapter": LORA_FILE,
    }
    (result.output / "training.json").write_text(json.dumps(report, indent=1))
    plot_losses(result.losses, result.evals, result.output / "loss.png", title=Path(cfg.output).name)


def plot_losses(
    losses: Sequence[float], evals: Sequence[dict[str, float]], path: Path, *, title: str = ""
) -> Path:
    """A plain PIL line chart: per-step loss (grey), its running mean (blue), fixed-noise train (green) and
    validation (orange) losses at their steps; log-free, y from 0 to the largest value."""
    w, h, m = 720, 400, 48
    im = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(im)
    series: list[tuple[list[tuple[float, float]], tuple[int, int, int]]] = []
    pts = [(i + 1.0, v) for i, v in enumerate(losses) if math.isfinite(v)]
    k = max(1, len(pts) // 20)
    mean = [
        (pts[i][0], sum(v for _, v in pts[max(0, i - k + 1) : i + 1]) / len(pts[max(0, i - k + 1) : i + 1]))
        for i in range(len(pts))
    ]
    series += [(pts, (190, 190, 190)), (mean, (30, 90, 200))]
    # validation first and wider: the train line stays visible on top where the two coincide
    for key, colour in (("val", (240, 150, 60)), ("train_eval", (30, 140, 50))):
        series.append(
            ([(float(e["step"]), e[key]) for e in evals if math.isfinite(e.get(key, math.nan))], colour)
        )
    xs = [x for s, _ in series for x, _ in s] or [0.0, 1.0]
    ys = [y for s, _ in series for _, y in s] or [0.0, 1.0]
    x0, x1, y1 = min(xs), max(max(xs), min(xs) + 1), max(max(ys), 1e-9)

    def xy(x: float, y: float) -> tuple[float, float]:
        return m + (x - x0) / (x1 - x0) * (w - 2 * m), h - m - y / y1 * (h - 2 * m)

    d.rectangle([m, m, w - m, h - m], outline=(0, 0, 0))
    d.text(
        (m, 12),
        f"{title}  loss per step (grey), running mean (blue), train fixed-noise (green), val (orange)",
        fill="black",
    )
    d.text((4, m - 6), f"{y1:.3g}", fill="black")
    d.text((4, h - m - 6), "0", fill="black")
    d.text((m, h - m + 8), f"step {x0:g}", fill="black")
    d.text((w - m - 60, h - m + 8), f"step {x1:g}", fill="black")
    for i, (s, colour) in enumerate(series):
        if len(s) > 1:
            d.line([xy(x, y) for x, y in s], fill=colour, width=5 if i == 2 else 2)
        for x, y in s if len(s) < 40 else ():
            px, py = xy(x, y)
            d.ellipse([px - 3, py - 3, px + 3, py + 3], outline=colour)
    im.save(path)
    return path


# --------------------------------------------------------------------------------------------------
# CLI


def tiny_pipeline() -> Any:
    """The tests' tiny random pipeline (``tests/tiny_qwen.py``; needs a checkout, run from its root)."""
    try:
        from tests.tiny_qwen import tiny_pipeline as build
    except ImportError as e:
        raise TrainError(
            f"--tiny needs tests/tiny_qwen.py from a checkout, run from its root ({e})"
        ) from None
    return build()


def build_parser() -> argparse.ArgumentParser:
    d = TrainConfig("", "")
    p = argparse.ArgumentParser(
        prog="python -m inference.train_lora",
        description="LoRA fine-tune of Qwen-Image-Edit on an omni dataset; writes the adapter the server loads.",
    )
    p.add_argument(
        "--dataset", required=True, help="omni dataset version dir (…/omni/v3) or its parent (newest)"
    )
    p.add_argument(
        "--output", required=True, help="run directory (adapter, checkpoints, cache); resumes if present"
    )
    p.add_argument("--steps", type=int, default=d.steps)
    p.add_argument("--rank", type=int, default=d.rank)
    p.add_argument("--alpha", type=int, default=None, help="LoRA alpha (default: = rank)")
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--resolution", type=int, default=d.resolution, help="target side in px (multiple of 32)")
    p.add_argument(
        "--condition-side", type=int, default=None, help="condition side (default: as the pipeline)"
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="examples accumulated per step")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every)
    p.add_argument("--validate-every", type=int, default=d.validate_every)
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints)
    p.add_argument("--max-val-examples", type=int, default=None)
    p.add_argument("--weighting-scheme", default=d.weighting_scheme, choices=WEIGHTING_SCHEMES)
    p.add_argument("--lora-layers", default=",".join(DEFAULT_TARGETS), help="comma-separated module names")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--model-id", default=DEFAULT_MODEL, help="hub id or local dir of the base pipeline")
    p.add_argument("--revision", default=None)
    p.add_argument("--hf-cache-dir", default=None)
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    p.add_argument(
        "--tiny", action="store_true", help="the tests' tiny random pipeline instead of --model-id"
    )
    return p


def config_from_args(a: argparse.Namespace) -> TrainConfig:
    return TrainConfig(
        dataset=a.dataset,
        output=a.output,
        steps=a.steps,
        rank=a.rank,
        alpha=a.alpha,
        lr=a.lr,
        resolution=a.resolution,
        condition_side=a.condition_side,
        batch_size=a.batch_size,
        seed=a.seed,
        checkpoint_every=a.checkpoint_every,
        validate_every=a.validate_every,
        keep_checkpoints=a.keep_checkpoints,
        max_val_examples=a.max_val_examples,
        weighting_scheme=a.weighting_scheme,
        target_modules=tuple(s.strip() for s in a.lora_layers.split(",") if s.strip()),
        gradient_checkpointing=a.gradient_checkpointing,
        model_id="tiny-random/qwen-image-edit" if a.tiny else a.model_id,
        revision=a.revision,
        hf_cache_dir=a.hf_cache_dir,
        device=a.device,
    )


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        cfg.check()
        res = train(cfg, pipe=tiny_pipeline() if args.tiny else None)
    except IsonycError as e:
        print(f"train_lora: error: {e}", file=sys.stderr)
        return 2
    last = res.evals[-1] if res.evals else {}
    print(
        f"trained {res.step} steps (from {res.resumed_from}) in {res.seconds:.1f} s: adapter {res.adapter}; "
        f"fixed-noise loss train {last.get('train_eval', float('nan')):.5f}, validation {last.get('val', float('nan')):.5f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
