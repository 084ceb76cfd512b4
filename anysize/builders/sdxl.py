"""SDXL: ``StableDiffusionXLPipeline``, two CLIP text encoders, the 3-level U-Net with
``text_time`` micro-conditioning.

=========  ====================================================  ==================================
profile    U-Net                                                 text encoders
=========  ====================================================  ==================================
tiny       32/64/64, transformer depth 1/1/2, head dims 2/4/4,   CLIP-L 32 + OpenCLIP-G 48 (pooled)
           time ids 6x8 + pooled 48, 128 px native
full       SDXL base: 320/640/1280, transformer depth 1/2/10,    CLIP-L 768 + OpenCLIP-bigG 1280
           head dims 5/10/20, cross-attention 2048, time ids
           6x256 + pooled 1280, 1024 px native
reduced    as full with 1 layer per block, transformer depth 1/1/2
=========  ====================================================  ==================================
"""

from __future__ import annotations

from typing import Any

import torch

from .parts import CLIP_L, OPENCLIP_G, clip_text, draw, prediction_type_kwargs, sd_betas, vae
from .tokenizers import tiny_clip_tokenizer

__all__ = ["build"]


def _unet_kwargs(profile: str) -> dict[str, Any]:
    if profile == "tiny":
        time_embed = 8
        size = dict(sample_size=16, block_out_channels=(32, 64, 64), layers_per_block=2,
                    transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4),
                    flip_sin_to_cos=True, freq_shift=0, act_fn="silu")
    else:
        time_embed = 256
        reduced = profile == "reduced"
        size = dict(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=1 if reduced else 2,
                    transformer_layers_per_block=(1, 1, 2) if reduced else (1, 2, 10), attention_head_dim=(5, 10, 20))
    return dict(
        in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=32, cross_attention_dim=CLIP_L.of(profile) + OPENCLIP_G.of(profile),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_embed,
        # 6 micro-conditioning ids (original size, crop top-left, target size) + pooled G text
        projection_class_embeddings_input_dim=6 * time_embed + OPENCLIP_G.of(profile),
        **size,
    )


def build(family: str, profile: str, *, device: torch.device, prediction_type: str | None = None, **_: Any):
    """The ``StableDiffusionXLPipeline`` at ``profile``."""
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = tiny_clip_tokenizer(pad_token="!")
    (text_encoder, text_encoder_2), unet, autoencoder = draw(
        profile, device,
        text=lambda: (clip_text(tokenizer, CLIP_L, profile, act="quick_gelu"),
                      clip_text(tokenizer_2, OPENCLIP_G, profile, act="gelu", projection=True)),
        denoiser=lambda: UNet2DConditionModel(**_unet_kwargs(profile)),
        vae=lambda: vae(profile, latent_channels=4, scaling_factor=0.13025),
    )
    tiny_extras = dict(interpolation_type="linear", use_karras_sigmas=False) if profile == "tiny" else {}
    scheduler = EulerDiscreteScheduler(
        **sd_betas(), timestep_spacing="leading", **tiny_extras,
        **prediction_type_kwargs(profile, prediction_type, "epsilon"),
    )
    return StableDiffusionXLPipeline(
        vae=autoencoder, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler, force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
