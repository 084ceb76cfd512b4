"""Tiny, random-weight, architecture-faithful diffusers pipelines built offline in code.

Each family uses the same pipeline class, model classes, block types, conditioning paths,
tokenizer classes and scheduler configuration as the real checkpoint it imitates; only the widths
and depths are small, so a full generation at 128x128 px takes a fraction of a second on a CPU.

=========  ============================  ==========================================================
family     pipeline                      imitates
=========  ============================  ==========================================================
``sd1``    StableDiffusionPipeline       SD 1.5 (CLIP-L text encoder, PNDM, epsilon)
``sd2``    StableDiffusionPipeline       SD 2.1 (OpenCLIP-H, linear projections, DDIM, v-pred)
``sdxl``   StableDiffusionXLPipeline     SDXL base (two CLIP encoders, text_time conditioning)
``sd3``    StableDiffusion3Pipeline      SD3 medium (MMDiT, CLIP-L + CLIP-G + T5, flow matching)
``flux``   FluxPipeline                  FLUX.1-dev / -schnell (MMDiT + single blocks, CLIP-L + T5)
=========  ============================  ==========================================================

Every UNet / VAE / transformer has a native latent size of 16x16 (128x128 px, VAE factor 8).
Weights are float32 on the CPU and a deterministic function of ``seed``; the caller's global torch
RNG state is left untouched. Parameters that the libraries initialise to all-zeros (biases, norm
shifts, ...) are re-drawn with small random values so that every output depends on every input.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any, Callable

import torch

from anysize.errors import InvalidArgumentError, UnknownChoiceError
from anysize.builders.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import diffusers

__all__ = ["FAMILIES", "PREDICTION_TYPES", "save_tiny_pipeline", "tiny_pipeline"]

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")

#: ``prediction_type`` values accepted for the noise-prediction (UNet) families.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

_UNET_FAMILIES = ("sd1", "sd2", "sdxl")

# Widths of the tiny text encoders. "L" imitates OpenAI CLIP ViT-L/14 (SD1, SDXL/SD3 first
# encoder, FLUX), "G" the larger OpenCLIP encoders (SD2, SDXL/SD3 second encoder). The T5 width is
# larger than L + G so that SD3 really pads the concatenated CLIP features up to the T5 width.
_CLIP_L_HIDDEN = 32
_CLIP_G_HIDDEN = 48
_T5_HIDDEN = 96

_REINIT_STD = 0.02


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


@torch.no_grad()
def _fill_zero_parameters(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw every all-zero parameter tensor (zero-initialised biases, norm shifts, output
    layers) with small random values, so that no path through the network is a constant."""
    for param in model.parameters():
        if not param.any():
            param.normal_(0.0, _REINIT_STD)
    return model.eval()


def _clip_text_config(tokenizer, *, hidden: int, hidden_act: str):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=37 if hidden == _CLIP_L_HIDDEN else 2 * hidden,
        projection_dim=hidden,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        hidden_act=hidden_act,
        layer_norm_eps=1e-5,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def _clip_text_model(tokenizer, *, hidden: int = _CLIP_L_HIDDEN, hidden_act: str = "quick_gelu",
                     with_projection: bool = False):
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _fill_zero_parameters(cls(_clip_text_config(tokenizer, hidden=hidden, hidden_act=hidden_act)))


def _t5_encoder(tokenizer, *, d_model: int = _T5_HIDDEN):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer),
        d_model=d_model,
        d_kv=d_model // 4,
        d_ff=2 * d_model,
        num_layers=2,
        num_decoder_layers=0,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",  # T5 v1.1 (the XXL encoder SD3 and FLUX use)
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return _fill_zero_parameters(T5EncoderModel(config))


def _vae(*, latent_channels: int, scaling_factor: float, shift_factor: float | None = None,
         quant_convs: bool = True, force_upcast: bool = True):
    from diffusers import AutoencoderKL

    return _fill_zero_parameters(
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(8, 16, 16, 16),
            layers_per_block=1,
            act_fn="silu",
            latent_channels=latent_channels,
            norm_num_groups=8,
            sample_size=128,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
            force_upcast=force_upcast,
            use_quant_conv=quant_convs,
            use_post_quant_conv=quant_convs,
            mid_block_add_attention=True,
        )
    )


def _sd_scheduler_kwargs() -> dict[str, Any]:
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
    )


def _sd_unet(*, cross_attention_dim: int, attention_head_dim, use_linear_projection: bool):
    from diffusers import UNet2DConditionModel

    return _fill_zero_parameters(
        UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
            block_out_channels=(32, 64, 64, 64),
            layers_per_block=2,
            norm_num_groups=32,
            cross_attention_dim=cross_attention_dim,
            attention_head_dim=attention_head_dim,
            use_linear_projection=use_linear_projection,
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
        )
    )


# ----------------------------------------------------------------------------------------------
# families
# ----------------------------------------------------------------------------------------------


def _build_sd1(prediction_type: str | None, **_: Any):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    tokenizer = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    text_encoder = _clip_text_model(tokenizer, hidden=_CLIP_L_HIDDEN, hidden_act="quick_gelu")
    unet = _sd_unet(cross_attention_dim=_CLIP_L_HIDDEN, attention_head_dim=8, use_linear_projection=False)
    vae = _vae(latent_channels=4, scaling_factor=0.18215)
    scheduler = PNDMScheduler(
        **_sd_scheduler_kwargs(),
        skip_prk_steps=True,
        set_alpha_to_one=False,
        prediction_type=prediction_type or "epsilon",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sd2(prediction_type: str | None, **_: Any):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    tokenizer = tiny_clip_tokenizer(pad_token="!")  # OpenCLIP tokenizer pads with "!" (id 0 in the real one)
    text_encoder = _clip_text_model(tokenizer, hidden=_CLIP_L_HIDDEN, hidden_act="gelu")
    unet = _sd_unet(cross_attention_dim=_CLIP_L_HIDDEN, attention_head_dim=(2, 4, 4, 4), use_linear_projection=True)
    vae = _vae(latent_channels=4, scaling_factor=0.18215)
    scheduler = DDIMScheduler(
        **_sd_scheduler_kwargs(),
        clip_sample=False,
        set_alpha_to_one=False,
        prediction_type=prediction_type or "v_prediction",
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def _build_sdxl(prediction_type: str | None, **_: Any):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = tiny_clip_tokenizer(pad_token="!")
    text_encoder = _clip_text_model(tokenizer, hidden=_CLIP_L_HIDDEN, hidden_act="quick_gelu")
    text_encoder_2 = _clip_text_model(tokenizer_2, hidden=_CLIP_G_HIDDEN, hidden_act="gelu", with_projection=True)
    addition_time_embed_dim = 8
    unet = _fill_zero_parameters(
        UNet2DConditionModel(
            sample_size=16,
            in_channels=4,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 64, 64),
            layers_per_block=2,
            transformer_layers_per_block=(1, 1, 2),
            norm_num_groups=32,
            attention_head_dim=(2, 4, 4),
            cross_attention_dim=_CLIP_L_HIDDEN + _CLIP_G_HIDDEN,
            use_linear_projection=True,
            addition_embed_type="text_time",
            addition_time_embed_dim=addition_time_embed_dim,
            # 6 micro-conditioning ids (original size, crop top-left, target size) + pooled G text
            projection_class_embeddings_input_dim=6 * addition_time_embed_dim + text_encoder_2.config.projection_dim,
            flip_sin_to_cos=True,
            freq_shift=0,
            act_fn="silu",
        )
    )
    vae = _vae(latent_channels=4, scaling_factor=0.13025, force_upcast=True)
    scheduler = EulerDiscreteScheduler(
        **_sd_scheduler_kwargs(),
        timestep_spacing="leading",
        interpolation_type="linear",
        use_karras_sigmas=False,
        prediction_type=prediction_type or "epsilon",
    )
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )


def _build_sd3(**_: Any):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = tiny_clip_tokenizer(pad_token="!")
    tokenizer_3 = tiny_t5_tokenizer()
    text_encoder = _clip_text_model(tokenizer, hidden=_CLIP_L_HIDDEN, hidden_act="quick_gelu", with_projection=True)
    text_encoder_2 = _clip_text_model(tokenizer_2, hidden=_CLIP_G_HIDDEN, hidden_act="gelu", with_projection=True)
    text_encoder_3 = _t5_encoder(tokenizer_3)
    transformer = _fill_zero_parameters(
        SD3Transformer2DModel(
            sample_size=16,
            patch_size=2,
            in_channels=16,
            num_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            # CLIP-L ++ CLIP-G hidden states (80) are zero-padded to the T5 width and stacked with T5's
            joint_attention_dim=_T5_HIDDEN,
            caption_projection_dim=2 * 16,
            pooled_projection_dim=text_encoder.config.projection_dim + text_encoder_2.config.projection_dim,
            out_channels=16,
            # the positional table covers pos_embed_max_size patches per side: 48 * 2 * 8 = 768 px
            pos_embed_max_size=48,
        )
    )
    vae = _vae(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609, quant_convs=False)
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0)
    return StableDiffusion3Pipeline(
        transformer=transformer,
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        text_encoder_3=text_encoder_3,
        tokenizer_3=tokenizer_3,
    )


def _build_flux(guidance_embeds: bool = True, **_: Any):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder = _clip_text_model(tokenizer, hidden=_CLIP_L_HIDDEN, hidden_act="quick_gelu")
    text_encoder_2 = _t5_encoder(tokenizer_2)
    transformer = _fill_zero_parameters(
        FluxTransformer2DModel(
            patch_size=1,
            in_channels=64,  # 16 latent channels packed 2x2
            num_layers=1,
            num_single_layers=2,
            attention_head_dim=16,
            num_attention_heads=2,
            joint_attention_dim=_T5_HIDDEN,
            pooled_projection_dim=_CLIP_L_HIDDEN,
            guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim
        )
    )
    vae = _vae(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, quant_convs=False)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000,
        shift=3.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=1.15,
        base_image_seq_len=256,
        max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        text_encoder_2=text_encoder_2,
        tokenizer_2=tokenizer_2,
        transformer=transformer,
    )


_BUILDERS: dict[str, Callable[..., Any]] = {
    "sd1": _build_sd1,
    "sd2": _build_sd2,
    "sdxl": _build_sdxl,
    "sd3": _build_sd3,
    "flux": _build_flux,
}


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------


def tiny_pipeline(
    family: str,
    *,
    seed: int = 0,
    prediction_type: str | None = None,
    guidance_embeds: bool = True,
) -> "diffusers.DiffusionPipeline":
    """Build a tiny random-weight pipeline of ``family`` (one of :data:`FAMILIES`).

    ``seed`` fixes every weight; the caller's global torch RNG state is restored afterwards.
    ``prediction_type`` overrides the scheduler's (``sd1``/``sdxl`` default ``"epsilon"``, ``sd2``
    ``"v_prediction"``; use ``"epsilon"`` for an SD 2.x-base-like model); it must be ``None`` for
    the flow-matching families. ``guidance_embeds`` only affects ``flux`` (True: FLUX.1-dev-like
    guidance-distilled, False: schnell-like).
    """
    if family not in _BUILDERS:
        raise UnknownChoiceError("family", family, FAMILIES)
    if prediction_type is not None:
        if family not in _UNET_FAMILIES:
            raise InvalidArgumentError(
                f"prediction_type cannot be set for the flow-matching family {family!r}; "
                f"it applies only to {', '.join(_UNET_FAMILIES)}"
            )
        if prediction_type not in PREDICTION_TYPES:
            raise UnknownChoiceError("prediction_type", prediction_type, PREDICTION_TYPES)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        pipe = _BUILDERS[family](prediction_type=prediction_type, guidance_embeds=guidance_embeds)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(family: str, path: str | pathlib.Path, **kwargs: Any) -> pathlib.Path:
    """Build :func:`tiny_pipeline` ``(family, **kwargs)`` and ``save_pretrained`` it (safetensors)
    into ``path``, which is created if needed. Returns ``path`` as a :class:`pathlib.Path`."""
    path = pathlib.Path(path)
    pipe = tiny_pipeline(family, **kwargs)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


# ----------------------------------------------------------------------------------------------
# the image-conditioned x4 upscaler (not a text-to-image family, so not in FAMILIES)
# ----------------------------------------------------------------------------------------------


def tiny_x4_upscaler_pipeline(*, seed: int = 0) -> "diffusers.StableDiffusionUpscalePipeline":
    """A tiny random-weight ``StableDiffusionUpscalePipeline`` with the layout of
    ``stabilityai/stable-diffusion-x4-upscaler``: a 7-channel U-Net (4 latent + 3 low-res RGB) whose
    class embedding takes the noise level (1000 classes), a VAE of factor 4 (scaling 0.08333), a
    v-prediction DDIM scheduler with the upscaler's betas, a DDPM ``low_res_scheduler`` and
    ``max_noise_level`` 350. Native latent (= low-res) size 16, i.e. 64 px output tiles."""
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline
    from diffusers import UNet2DConditionModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tokenizer = tiny_clip_tokenizer(pad_token="!")
        text_encoder = _clip_text_model(tokenizer, hidden=_CLIP_L_HIDDEN, hidden_act="gelu")
        unet = _fill_zero_parameters(UNet2DConditionModel(
            sample_size=16,
            in_channels=7,
            out_channels=4,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            block_out_channels=(32, 32, 64),
            layers_per_block=1,
            norm_num_groups=16,
            cross_attention_dim=_CLIP_L_HIDDEN,
            attention_head_dim=8,
            use_linear_projection=True,
            num_class_embeds=1000,
            act_fn="silu",
        ))
        vae = _fill_zero_parameters(AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 3,
            up_block_types=("UpDecoderBlock2D",) * 3,
            block_out_channels=(8, 16, 16),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=64,
            scaling_factor=0.08333,
        ))
        betas = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
        scheduler = DDIMScheduler(**betas, prediction_type="v_prediction", clip_sample=False, set_alpha_to_one=False,
                                  steps_offset=1)
        low_res = DDPMScheduler(**betas, variance_type="fixed_small", clip_sample=False)
        pipe = StableDiffusionUpscalePipeline(
            vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, low_res_scheduler=low_res,
            scheduler=scheduler, safety_checker=None, watermarker=None, feature_extractor=None, max_noise_level=350,
        )
    pipe.set_progress_bar_config(disable=True)
    return pipe
