"""The parts every family's builder shares: seeding, the draw order, CLIP and T5 text encoders, the
small VAE, the Stable Diffusion betas.

A part is built for a *profile*: ``tiny`` (everything small) or ``reduced`` / ``full`` (real-sized;
only the denoiser's depth differs, see :mod:`anysize.builders`). In the real-sized profiles the
text encoders have the released models' output widths but one layer each, and the VAE is the tiny
4-level one with the real latent channels, so the denoiser dominates every timing.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, NamedTuple

import torch

__all__ = [
    "CLIP_L", "OPENCLIP_G", "OPENCLIP_H", "PROFILES", "T5_XXL", "Width", "clip_text", "draw", "finish",
    "prediction_type_kwargs", "refill_zeros", "released_vae", "sd_betas", "seeded", "t5_encoder", "vae",
]

PROFILES = ("tiny", "reduced", "full")

_REINIT_STD = 0.02


class Width(NamedTuple):
    """A text encoder's output width in the tiny profile, and in the real-sized ones (the released model's)."""

    tiny: int
    real: int

    def of(self, profile: str) -> int:
        return self.tiny if profile == "tiny" else self.real


# "L" imitates OpenAI CLIP ViT-L/14 (SD1, SDXL/SD3 first encoder, FLUX), "H" OpenCLIP ViT-H (SD2),
# "G" OpenCLIP bigG (SDXL/SD3 second encoder). The tiny T5 is wider than tiny L + G so that SD3
# really pads the concatenated CLIP features up to the T5 width.
CLIP_L = Width(32, 768)
OPENCLIP_H = Width(32, 1024)
OPENCLIP_G = Width(48, 1280)
T5_XXL = Width(96, 4096)


@contextlib.contextmanager
def seeded(seed: int, device: torch.device, dtype: torch.dtype) -> Iterator[None]:
    """Draw from ``seed`` in ``dtype``; the caller's global RNG state (CPU, and ``device`` if it is a
    GPU) and default dtype are restored afterwards."""
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        if device.type == "cuda":
            torch.cuda.manual_seed(seed)
        torch.set_default_dtype(dtype)  # drawn in the final dtype: FLUX in bf16 never exists in fp32
        try:
            yield
        finally:
            torch.set_default_dtype(default)


@torch.no_grad()
def refill_zeros(model: torch.nn.Module) -> torch.nn.Module:
    """Re-draw every all-zero parameter tensor (zero-initialised biases, norm shifts, output
    layers) with small random values, so that no path through the network is a constant."""
    for param in model.parameters():
        if not param.any():
            param.normal_(0.0, _REINIT_STD)
    return model.eval()


def finish(model: torch.nn.Module, profile: str) -> torch.nn.Module:
    """A text encoder or VAE as the profile has it: tiny ones get their all-zero parameters re-drawn
    (every output depends on every input); all are in eval mode."""
    return refill_zeros(model) if profile == "tiny" else model.eval()


def draw(profile: str, device: torch.device, *, text: Callable[[], Any], denoiser: Callable[[], Any],
         vae: Callable[[], Any]) -> tuple[Any, Any, Any]:
    """Build a pipeline's three parts in the order that fixes its weights for a seed, and return
    them as (text encoders, denoiser, VAE).

    Tiny: text encoders, denoiser, VAE, all on the CPU (the same weights for every device), every
    all-zero parameter of the denoiser re-drawn. Real-sized: the denoiser first, drawn on ``device``
    (no CPU copy of a multi-GB model), then the VAE and the text encoders.
    """
    if profile == "tiny":
        texts = text()
        net = refill_zeros(denoiser())
        return texts, net, vae()
    with device:
        net = denoiser()
    small = vae()
    return text(), net, small


def clip_text(tokenizer, width: Width, profile: str, *, act: str, projection: bool = False):
    """A CLIP text encoder (with the pooled projection for ``projection``): tiny, two layers of
    ``width.tiny``; real-sized, one layer of the released width."""
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    hidden = width.of(profile)
    if profile == "tiny":
        shape = dict(intermediate_size=37 if hidden == CLIP_L.tiny else 2 * hidden, num_hidden_layers=2,
                     num_attention_heads=4)
    else:
        shape = dict(intermediate_size=64, num_hidden_layers=1, num_attention_heads=hidden // 64)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, projection_dim=hidden, max_position_embeddings=77,
        hidden_act=act, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, **shape,
    )
    cls = CLIPTextModelWithProjection if projection else CLIPTextModel
    return finish(cls(config), profile)


def t5_encoder(tokenizer, profile: str):
    """A T5 v1.1 encoder (gated-GELU, the XXL encoder SD3 and FLUX use): tiny, two layers of
    ``T5_XXL.tiny``; real-sized, one layer of the real width 4096."""
    from transformers import T5Config, T5EncoderModel

    if profile == "tiny":
        d = T5_XXL.tiny
        shape = dict(d_kv=d // 4, d_ff=2 * d, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                     relative_attention_max_distance=32, dropout_rate=0.0)
    else:
        d = T5_XXL.real
        shape = dict(d_kv=64, d_ff=64, num_layers=1, num_heads=2)
    config = T5Config(
        vocab_size=len(tokenizer), d_model=d, num_decoder_layers=0, feed_forward_proj="gated-gelu",
        is_encoder_decoder=False, use_cache=False, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id, **shape,
    )
    return finish(T5EncoderModel(config), profile)


def vae(profile: str, *, latent_channels: int, scaling_factor: float, shift_factor: float | None = None,
        quant_convs: bool = True):
    """The small 4-level ``AutoencoderKL`` (factor 8) with the family's latent channels and scaling;
    the same in every profile but for the tiny one's 128 px ``sample_size``."""
    from diffusers import AutoencoderKL

    tiny = dict(in_channels=3, out_channels=3, act_fn="silu", sample_size=128, mid_block_add_attention=True)
    return finish(AutoencoderKL(
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=latent_channels,
        norm_num_groups=8,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        force_upcast=True,
        use_quant_conv=quant_convs,
        use_post_quant_conv=quant_convs,
        **(tiny if profile == "tiny" else {}),
    ), profile)


#: the released SD 1.x / 2.x / SDXL / SD3 / FLUX autoencoders' layout (all five share it)
RELEASED_VAE_LAYOUT = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32)


def released_vae(stand_in, *, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """An ``AutoencoderKL`` of the released layout (:data:`RELEASED_VAE_LAYOUT`: 83.7M parameters,
    the decoder 49.5M) with random weights drawn from ``seed``, taking everything else from the
    small ``stand_in`` the builders put in a pipeline (latent channels, scaling and shift factors,
    quant convs, ``force_upcast``), so a pipeline's decode and encode cost what the real VAE's do.
    Drawn directly on ``device`` in ``dtype`` (random weights: timing and memory only)."""
    from diffusers import AutoencoderKL

    config = {k: v for k, v in dict(stand_in.config).items() if not k.startswith("_")}
    config.update(RELEASED_VAE_LAYOUT)
    device = torch.device(device)
    with seeded(seed, device, dtype), device:
        return AutoencoderKL.from_config(config).eval()


def sd_betas() -> dict[str, Any]:
    """The noise schedule of SD 1.x, 2.x and SDXL."""
    return dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                steps_offset=1)


def prediction_type_kwargs(profile: str, requested: str | None, default: str) -> dict[str, str]:
    """The scheduler's ``prediction_type`` argument: always named in the tiny profile; in the
    real-sized ones only where it is not the schedulers' default ``epsilon``."""
    chosen = requested or default
    return {"prediction_type": chosen} if profile == "tiny" or chosen != "epsilon" else {}
