"""The tiny, randomly initialised Qwen-Image-Edit stack shared by the model tests: every component built from a
config (no download), seeded, the VAE's 8× scale kept. Used by ``test_inference_tiny.py`` (server round trip),
``test_train_lora.py`` (the LoRA trainer) and ``test_eval_model.py`` (the evaluation), and by
``python -m inference.train_lora --tiny`` (a smoke run of the trainer from a checkout).

Needs the ``ml`` extra (torch, diffusers, transformers, peft); importing this module imports torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

#: Qwen2-VL's special tokens that the edit pipeline's prompt template and processor use.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
Z_DIM = 4  # latent channels (the real VAE has 16)
LORA_FILE = "pytorch_lora_weights.safetensors"


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (256 byte tokens, no merges) plus Qwen2-VL's special tokens, built locally."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return Qwen2TokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", pad_token="<|endoftext|>", unk_token=None
    )


def tiny_processor(tokenizer: Any) -> Any:
    """Qwen2-VL's processor without its video half (whose processor needs torchvision, absent here)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
        attributes = ["image_processor", "tokenizer"]

        def __init__(self, image_processor: Any, tokenizer: Any) -> None:
            self.image_token, self.video_token = "<|image_pad|>", "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer)

    # The vision tower sees the template at ≤ 112² (64 patches of 14²), not at 1024².
    images = Qwen2VLImageProcessor(
        min_pixels=56 * 56, max_pixels=112 * 112, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    return ImageOnlyQwen2VLProcessor(images, tokenizer)


def tiny_transformer() -> Any:
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(0)
    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * Z_DIM,
        out_channels=Z_DIM,
        num_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=16,
        guidance_embeds=False,
        axes_dims_rope=(8, 4, 4),
    )


def tiny_pipeline() -> Any:
    """QwenImageEditPipeline with every component tiny and random (seeded), the VAE's 8× scale kept."""
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageEditPipeline
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    vocab_size = len(tokenizer)
    config = Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "rope_theta": 1e6,
            "vocab_size": vocab_size,
        },
        vision_config={
            "depth": 2,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": 16,
        },
        hidden_size=16,
        vocab_size=vocab_size,
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(
        base_dim=4,
        z_dim=Z_DIM,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],  # three downsamplings: 8×, like the real VAE
        latents_mean=[0.0] * Z_DIM,
        latents_std=[1.0] * Z_DIM,
    )
    pipe = QwenImageEditPipeline(
        transformer=tiny_transformer(),
        vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=tiny_processor(tokenizer),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def write_random_lora(lora_dir: Path) -> Path:
    """A rank-4 LoRA on the transformer's attention and output projections, random (non-zero) A and B, saved
    the way diffusers' training scripts save one (``save_lora_weights``), i.e. what the server loads."""
    from diffusers import QwenImageEditPipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    transformer = tiny_transformer()
    torch.manual_seed(1)
    transformer.add_adapter(
        LoraConfig(
            r=4,
            lora_alpha=32,  # scale 8: a strong adapter, so that its effect shows through the tiny VAE
            init_lora_weights=False,  # peft's default zero B would make the adapter a no-op
            target_modules=["to_q", "to_k", "to_v", "to_out.0", "proj_out"],
        )
    )
    layers = get_peft_model_state_dict(transformer)
    assert layers, "the LoRA has no weights"
    QwenImageEditPipeline.save_lora_weights(
        lora_dir, transformer_lora_layers=layers, weight_name=LORA_FILE, safe_serialization=True
    )
    return lora_dir / LORA_FILE
