"""SD 1.x and 2.x: ``StableDiffusionPipeline``, one CLIP text encoder, the 4-level U-Net; and the
x4 upscaler (tiny only).

=========  ==================================================  ====================================
family     tiny                                                reduced / full
=========  ==================================================  ====================================
``sd1``    U-Net 32/64/64/64, 2 layers, 8-wide heads,          SD 1.5: U-Net 320/640/1280/1280,
           CLIP-L 32 (quick GELU), PNDM, epsilon               8 heads, cross-attention 768,
                                                               PNDM, 512 px native
``sd2``    as ``sd1`` with head dims 2/4/4/4, linear           SD 2.1: head dims 5/10/20/20, linear
           projections, OpenCLIP (GELU, pads with "!"),        projections, upcast attention,
           DDIM, v-prediction                                  cross-attention 1024, DDIM,
                                                               v-prediction, 768 px native
=========  ==================================================  ====================================

Reduced U-Nets have 1 resnet/attention layer per block instead of 2.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from .parts import CLIP_L, OPENCLIP_H, clip_text, draw, finish, prediction_type_kwargs, sd_betas, vae
from .tokenizers import tiny_clip_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import diffusers

__all__ = ["build", "tiny_x4_upscaler_pipeline"]

_BLOCKS = dict(down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)

# what differs between the two families: tokenizer padding, text encoder, U-Net attention, scheduler
_FAMILY: dict[str, dict[str, Any]] = {
    "sd1": dict(
        pad_token="<|endoftext|>", text=CLIP_L, act="quick_gelu",
        unet={"tiny": dict(attention_head_dim=8, use_linear_projection=False),
              "real": dict(sample_size=64, attention_head_dim=8, use_linear_projection=False, upcast_attention=False)},
        scheduler=("PNDMScheduler", dict(skip_prk_steps=True, set_alpha_to_one=False)), prediction="epsilon",
    ),
    "sd2": dict(
        pad_token="!",  # OpenCLIP's tokenizer pads with "!" (id 0 in the real one)
        text=OPENCLIP_H, act="gelu",
        unet={"tiny": dict(attention_head_dim=(2, 4, 4, 4), use_linear_projection=True),
              "real": dict(sample_size=96, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
                           upcast_attention=True)},
        scheduler=("DDIMScheduler", dict(clip_sample=False, set_alpha_to_one=False)), prediction="v_prediction",
    ),
}


def _unet_kwargs(family: str, profile: str) -> dict[str, Any]:
    spec = _FAMILY[family]
    if profile == "tiny":
        return dict(sample_size=16, in_channels=4, out_channels=4, **_BLOCKS, block_out_channels=(32, 64, 64, 64),
                    layers_per_block=2, norm_num_groups=32, cross_attention_dim=spec["text"].tiny,
                    flip_sin_to_cos=True, freq_shift=0, act_fn="silu", **spec["unet"]["tiny"])
    return dict(in_channels=4, out_channels=4, **_BLOCKS, block_out_channels=(320, 640, 1280, 1280),
                layers_per_block=1 if profile == "reduced" else 2, cross_attention_dim=spec["text"].real,
                norm_num_groups=32, **spec["unet"]["real"])


def build(family: str, profile: str, *, device: torch.device, prediction_type: str | None = None, **_: Any):
    """The ``StableDiffusionPipeline`` of ``family`` (``sd1`` or ``sd2``) at ``profile``."""
    import diffusers
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    spec = _FAMILY[family]
    tokenizer = tiny_clip_tokenizer(pad_token=spec["pad_token"])
    text_encoder, unet, autoencoder = draw(
        profile, device,
        text=lambda: clip_text(tokenizer, spec["text"], profile, act=spec["act"]),
        denoiser=lambda: UNet2DConditionModel(**_unet_kwargs(family, profile)),
        vae=lambda: vae(profile, latent_channels=4, scaling_factor=0.18215),
    )
    scheduler_class, scheduler_kwargs = spec["scheduler"]
    scheduler = getattr(diffusers, scheduler_class)(
        **sd_betas(), **scheduler_kwargs, **prediction_type_kwargs(profile, prediction_type, spec["prediction"]),
    )
    return StableDiffusionPipeline(
        vae=autoencoder, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def tiny_x4_upscaler_pipeline(*, seed: int = 0) -> "diffusers.StableDiffusionUpscalePipeline":
    """A tiny random-weight ``StableDiffusionUpscalePipeline`` with the layout of
    ``stabilityai/stable-diffusion-x4-upscaler``: a 7-channel U-Net (4 latent + 3 low-res RGB) whose
    class embedding takes the noise level (1000 classes), a VAE of factor 4 (scaling 0.08333), a
    v-prediction DDIM scheduler with the upscaler's betas, a DDPM ``low_res_scheduler`` and
    ``max_noise_level`` 350. Native latent (= low-res) size 16, i.e. 64 px output tiles."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline
    from diffusers import UNet2DConditionModel

    from .parts import seeded

    cpu = torch.device("cpu")
    with seeded(seed, cpu, torch.float32):
        tokenizer = tiny_clip_tokenizer(pad_token="!")
        text_encoder, unet, autoencoder = draw(
            "tiny", cpu,
            text=lambda: clip_text(tokenizer, OPENCLIP_H, "tiny", act="gelu"),
            denoiser=lambda: UNet2DConditionModel(
                sample_size=16, in_channels=7, out_channels=4,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=16,
                cross_attention_dim=OPENCLIP_H.tiny, attention_head_dim=8, use_linear_projection=True,
                num_class_embeds=1000, act_fn="silu",
            ),
            vae=lambda: finish(AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 16, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=8, sample_size=64, scaling_factor=0.08333,
            ), "tiny"),
        )
        betas = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
        scheduler = DDIMScheduler(**betas, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                                  steps_offset=1)
        low_res = DDPMScheduler(**betas, variance_type="fixed_small", clip_sample=False)
        pipe = StableDiffusionUpscalePipeline(
            vae=autoencoder, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=low_res,
            scheduler=scheduler, safety_checker=None, watermarker=None, feature_extractor=None, max_noise_level=350,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
