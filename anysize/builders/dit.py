"""The DiT families: SD3 (``StableDiffusion3Pipeline``, MMDiT, CLIP-L + CLIP-G + T5) and FLUX
(``FluxPipeline``, MMDiT + single-stream blocks, CLIP-L + T5), both flow matching.

=========  =================================================  ========================================
family     tiny                                               full (reduced)
=========  =================================================  ========================================
``sd3``    2 joint blocks, 2 heads x 16, joint attention 96,  SD3-medium: 24 (2) joint blocks, 24
           pooled 80, patch 2, positions for 768 px           heads x 64, joint attention 4096,
                                                              pooled 2048, patch 2, 1024 px native
``flux``   1 double + 2 single blocks, 2 heads x 16, RoPE     FLUX.1-dev: 19 + 38 (1 + 2) blocks,
           axes 4/6/6                                         24 heads x 128, RoPE axes 16/56/56
=========  =================================================  ========================================

``guidance_embeds`` (FLUX): True is FLUX.1-dev-like (guidance-distilled), False schnell-like.
"""

from __future__ import annotations

from typing import Any

import torch

from .parts import CLIP_L, OPENCLIP_G, T5_XXL, clip_text, draw, t5_encoder, vae
from .tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

__all__ = ["build_flux", "build_sd3"]

# per profile: sample_size, joint blocks, heads, head width, positional table side (patches)
_SD3 = {"tiny": (16, 2, 2, 16, 48), "reduced": (128, 2, 24, 64, 192), "full": (128, 24, 24, 64, 192)}
# per profile: double blocks, single blocks, heads, head width, RoPE axes (sum to the head width)
_FLUX = {"tiny": (1, 2, 2, 16, (4, 6, 6)), "reduced": (1, 2, 24, 128, (16, 56, 56)),
         "full": (19, 38, 24, 128, (16, 56, 56))}


def build_sd3(family: str, profile: str, *, device: torch.device, **_: Any):
    """The ``StableDiffusion3Pipeline`` at ``profile``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    sample_size, layers, heads, head_dim, pos_max = _SD3[profile]
    tokenizer = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = tiny_clip_tokenizer(pad_token="!")
    tokenizer_3 = tiny_t5_tokenizer()
    (text_encoder, text_encoder_2, text_encoder_3), transformer, autoencoder = draw(
        profile, device,
        text=lambda: (clip_text(tokenizer, CLIP_L, profile, act="quick_gelu", projection=True),
                      clip_text(tokenizer_2, OPENCLIP_G, profile, act="gelu", projection=True),
                      t5_encoder(tokenizer_3, profile)),
        denoiser=lambda: SD3Transformer2DModel(
            sample_size=sample_size, patch_size=2, in_channels=16, num_layers=layers, attention_head_dim=head_dim,
            num_attention_heads=heads,
            # CLIP-L ++ CLIP-G hidden states are zero-padded to the T5 width and stacked with T5's
            joint_attention_dim=T5_XXL.of(profile), caption_projection_dim=heads * head_dim,
            pooled_projection_dim=CLIP_L.of(profile) + OPENCLIP_G.of(profile), out_channels=16,
            # the positional table covers pos_embed_max_size patches per side (tiny: 48 * 2 * 8 = 768 px)
            pos_embed_max_size=pos_max,
        ),
        vae=lambda: vae(profile, latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant_convs=False),
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=autoencoder, text_encoder=text_encoder, tokenizer=tokenizer, text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3,
    )


def build_flux(family: str, profile: str, *, device: torch.device, guidance_embeds: bool = True, **_: Any):
    """The ``FluxPipeline`` at ``profile``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    layers, single, heads, head_dim, axes = _FLUX[profile]
    tokenizer = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = tiny_t5_tokenizer()
    (text_encoder, text_encoder_2), transformer, autoencoder = draw(
        profile, device,
        text=lambda: (clip_text(tokenizer, CLIP_L, profile, act="quick_gelu"), t5_encoder(tokenizer_2, profile)),
        denoiser=lambda: FluxTransformer2DModel(
            patch_size=1, in_channels=64,  # 16 latent channels packed 2x2
            num_layers=layers, num_single_layers=single, attention_head_dim=head_dim, num_attention_heads=heads,
            joint_attention_dim=T5_XXL.of(profile), pooled_projection_dim=CLIP_L.of(profile),
            guidance_embeds=guidance_embeds, axes_dims_rope=axes,
        ),
        vae=lambda: vae(profile, latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, quant_convs=False),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=autoencoder, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer,
    )
