"""Real-sized denoisers with random weights, built offline in code, for ``anysize bench``.

Timing a method needs the real network's shape (channel widths, attention heads, token counts,
cross-attention widths), not its trained weights. Each builder here constructs the denoiser of a
released model from its published configuration with random weights, and wraps it in the stock
diffusers pipeline of its family, so :func:`anysize.generate` runs it like the real model:

==========  ====================  ==============================================================
name        pipeline              denoiser configuration (full)
==========  ====================  ==============================================================
``sd1.5``   StableDiffusion       U-Net 320/640/1280/1280, 2 layers per block, 8 heads,
                                  cross-attention 768, 512 px native
``sd2.1``   StableDiffusion       U-Net 320/640/1280/1280, head dims 5/10/20/20, linear
                                  projections, cross-attention 1024, v-prediction, 768 px native
``sdxl``    StableDiffusionXL     U-Net 320/640/1280, transformer depth 1/2/10, head dims
                                  5/10/20, cross-attention 2048, text_time addition embeddings
                                  (6x256 + 1280), 1024 px native
``sd3``     StableDiffusion3      SD3-medium MMDiT: 24 joint blocks, 24 heads x 64, joint
                                  attention 4096, pooled 2048, patch 2, 1024 px native
``flux``    Flux                  FLUX.1-dev: 19 double + 38 single blocks, 24 heads x 128,
                                  RoPE axes 16/56/56, guidance embedding, 1024 px native
==========  ====================  ==============================================================

``reduced=True`` (for CPUs) keeps every width and head count but cuts the depth: the U-Nets get 1
resnet/attention layer per block (SDXL's transformer depth 1/2/10 becomes 1/1/2), SD3 keeps 2 of
its 24 joint blocks, FLUX 1 double and 2 single blocks. Denoiser parameters, full -> reduced: SD 1.5
860M -> 579M, SD 2.1 866M -> 583M, SDXL 2567M -> 575M, SD3 2028M -> 159M, FLUX 11901M -> 687M
(a test checks the configurations). A reduced network's time per call is
therefore a lower bound on the real one's, but the way it scales with the image size (tokens,
attention) is the real architecture's.

Only the denoiser is real-sized. The text encoders are the real classes with the real *output*
widths (CLIP-L 768, OpenCLIP-H 1024, OpenCLIP-bigG 1280, T5-XXL 4096) but one layer each, and the
VAE is a tiny 4-level one with the real latent channels (4 or 16) and factor 8. So a timed
``anysize.generate`` call is: prompt encoding (negligible), the whole denoising loop (the real
cost), and a VAE decode (small here, large for the real VAE at high resolutions).

``toy`` is the embedded default model (:mod:`anysize.toy`), with its trained weights.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from ..errors import UnknownChoiceError

__all__ = ["ARCHITECTURES", "build_pipeline", "describe"]

#: name -> one-line description (what the bench table says)
ARCHITECTURES: dict[str, str] = {
    "toy": "anysize's embedded toy model (trained SD 1.5-structured U-Net, 128 px native)",
    "sd1.5": "SD 1.5 U-Net (860M params), random weights, 512 px native",
    "sd2.1": "SD 2.1 U-Net (866M params), random weights, v-prediction, 768 px native",
    "sdxl": "SDXL base U-Net (2.57B params), random weights, 1024 px native",
    "sd3": "SD3-medium MMDiT (2.03B params), random weights, 1024 px native",
    "flux": "FLUX.1-dev transformer (11.9B params), random weights, 1024 px native",
}


# ------------------------------------------------------------------------------------------ small parts


def _clip_text(tokenizer, hidden: int, *, act: str, projection: int | None = None):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, projection_dim=projection or hidden,
        num_hidden_layers=1, num_attention_heads=hidden // 64, max_position_embeddings=77, hidden_act=act,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return cls(config).eval()


def _t5(tokenizer, d_model: int = 4096):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=64, d_ff=64, num_layers=1, num_decoder_layers=0,
        num_heads=2, feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config).eval()


def _vae(latent_channels: int, scaling_factor: float, shift_factor: float | None = None, quant: bool = True):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8, latent_channels=latent_channels,
        scaling_factor=scaling_factor, shift_factor=shift_factor, use_quant_conv=quant, use_post_quant_conv=quant,
        force_upcast=True,
    ).eval()


def _sd_scheduler() -> dict[str, Any]:
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1)


def _sd_unet(*, sample_size: int, head_dim, cross: int, linear: bool, layers: int, upcast: bool = False):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=(320, 640, 1280, 1280), layers_per_block=layers, attention_head_dim=head_dim,
        cross_attention_dim=cross, use_linear_projection=linear, upcast_attention=upcast, norm_num_groups=32,
    )


# ------------------------------------------------------------------------------------------ families


def _sd15(reduced: bool, device: torch.device):
    from diffusers import PNDMScheduler, StableDiffusionPipeline

    from ..builders.tokenizers import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(pad_token="<|endoftext|>")
    with device:  # the big network is drawn where it will run
        unet = _sd_unet(sample_size=64, head_dim=8, cross=768, linear=False, layers=1 if reduced else 2)
    return StableDiffusionPipeline(
        vae=_vae(4, 0.18215), text_encoder=_clip_text(tok, 768, act="quick_gelu"), tokenizer=tok, unet=unet,
        scheduler=PNDMScheduler(**_sd_scheduler(), skip_prk_steps=True, set_alpha_to_one=False),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _sd21(reduced: bool, device: torch.device):
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ..builders.tokenizers import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(pad_token="!")
    with device:
        unet = _sd_unet(sample_size=96, head_dim=(5, 10, 20, 20), cross=1024, linear=True,
                        layers=1 if reduced else 2, upcast=True)
    return StableDiffusionPipeline(
        vae=_vae(4, 0.18215), text_encoder=_clip_text(tok, 1024, act="gelu"), tokenizer=tok, unet=unet,
        scheduler=DDIMScheduler(**_sd_scheduler(), clip_sample=False, set_alpha_to_one=False,
                                prediction_type="v_prediction"),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def _sdxl(reduced: bool, device: torch.device):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from ..builders.tokenizers import tiny_clip_tokenizer

    tok, tok2 = tiny_clip_tokenizer(pad_token="<|endoftext|>"), tiny_clip_tokenizer(pad_token="!")
    with device:
        unet = _sdxl_unet(reduced)
    return StableDiffusionXLPipeline(
        vae=_vae(4, 0.13025), text_encoder=_clip_text(tok, 768, act="quick_gelu"),
        text_encoder_2=_clip_text(tok2, 1280, act="gelu", projection=1280), tokenizer=tok, tokenizer_2=tok2,
        unet=unet, scheduler=EulerDiscreteScheduler(**_sd_scheduler(), timestep_spacing="leading"),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )


def _sdxl_unet(reduced: bool):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(320, 640, 1280), layers_per_block=1 if reduced else 2,
        transformer_layers_per_block=(1, 1, 2) if reduced else (1, 2, 10), attention_head_dim=(5, 10, 20),
        cross_attention_dim=2048, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816, norm_num_groups=32,
    )


def _sd3(reduced: bool, device: torch.device):
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    from ..builders.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

    tok, tok2, tok3 = tiny_clip_tokenizer(pad_token="<|endoftext|>"), tiny_clip_tokenizer(pad_token="!"), tiny_t5_tokenizer()
    with device:
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=2 if reduced else 24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192,
        )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_vae(16, 1.5305, 0.0609, quant=False),
        text_encoder=_clip_text(tok, 768, act="quick_gelu", projection=768), tokenizer=tok,
        text_encoder_2=_clip_text(tok2, 1280, act="gelu", projection=1280), tokenizer_2=tok2,
        text_encoder_3=_t5(tok3), tokenizer_3=tok3,
    )


def _flux(reduced: bool, device: torch.device):
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    from ..builders.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

    tok, tok2 = tiny_clip_tokenizer(pad_token="<|endoftext|>"), tiny_t5_tokenizer()
    with device:
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1 if reduced else 19, num_single_layers=2 if reduced else 38,
            attention_head_dim=128, num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
            guidance_embeds=True, axes_dims_rope=(16, 56, 56),
        )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return FluxPipeline(
        scheduler=scheduler, vae=_vae(16, 0.3611, 0.1159, quant=False),
        text_encoder=_clip_text(tok, 768, act="quick_gelu"), tokenizer=tok, text_encoder_2=_t5(tok2),
        tokenizer_2=tok2, transformer=transformer,
    )


_BUILDERS: dict[str, Callable[[bool, torch.device], Any]] = {
    "sd1.5": _sd15, "sd2.1": _sd21, "sdxl": _sdxl, "sd3": _sd3, "flux": _flux,
}


def build_pipeline(name: str, *, reduced: bool = False, device: str | torch.device = "cpu",
                   dtype: torch.dtype = torch.float32, seed: int = 0):
    """The pipeline of architecture ``name`` (see :data:`ARCHITECTURES`), on ``device`` in ``dtype``.

    Random weights are drawn on ``device`` in ``dtype`` directly (no CPU or fp32 copy of a multi-GB
    model) from ``seed``; the caller's global RNG state and default dtype are left untouched. ``toy`` loads the embedded model instead.
    """
    if name not in ARCHITECTURES:
        raise UnknownChoiceError("architecture", name, ARCHITECTURES)
    if name == "toy":
        from diffusers import DiffusionPipeline

        from ..defaults import default_model_path

        pipe = DiffusionPipeline.from_pretrained(str(default_model_path()), torch_dtype=dtype).to(device)
    else:
        device = torch.device(device)
        default = torch.get_default_dtype()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            if device.type == "cuda":
                torch.cuda.manual_seed(seed)
            torch.set_default_dtype(dtype)  # drawn in the final dtype: FLUX in bf16 never exists in fp32
            try:
                pipe = _BUILDERS[name](reduced, device)
            finally:
                torch.set_default_dtype(default)
        pipe.to(device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe(name: str, reduced: bool) -> str:
    text = ARCHITECTURES[name]
    return text + (", reduced depth" if reduced and name != "toy" else "")
