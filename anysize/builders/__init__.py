"""Pipelines built in code, offline, with random weights: every supported family at three sizes.

Each family is built with the same pipeline class, model classes, block types, conditioning paths,
tokenizer classes and scheduler configuration as the released checkpoint it imitates
(:mod:`~anysize.builders.sd`, :mod:`~anysize.builders.sdxl`, :mod:`~anysize.builders.dit`), at one
of three *profiles*:

``tiny``
    Every part small: a native latent size of 16x16 (128x128 px, VAE factor 8), so a whole
    generation at 128 px takes a fraction of a second on a CPU. The tests run on these. FLUX is
    the exception: its pipeline fixes 1024 px (no config of it records a native size), so
    ``adapt(pipe, native_size=16)`` (latent px) gives the tiny one its 128 px. Parameters
    that the libraries initialise to all-zeros (biases, norm shifts, ...) are re-drawn with small
    random values, so that every output depends on every input.
``full``
    The released model's denoiser configuration (SD 1.5 860M, SD 2.1 866M, SDXL 2567M, SD3-medium
    2028M, FLUX.1-dev 11901M parameters) at its native size, for timing methods on the real
    network's shape (channel widths, attention heads, token counts, cross-attention widths):
    ``anysize bench`` and ``benchmarks/``.
``reduced``
    The full widths and head counts with less depth, for CPUs: U-Nets get 1 resnet/attention layer
    per block (SDXL's transformer depth 1/2/10 becomes 1/1/2), SD3 keeps 2 of its 24 joint blocks,
    FLUX 1 double and 2 single blocks (SD 1.5 579M, SD 2.1 583M, SDXL 575M, SD3 159M, FLUX 687M).
    A reduced network's time per call is a lower bound on the real one's, but the way it scales
    with the image size (tokens, attention) is the real architecture's.

In the real-sized profiles only the denoiser is real-sized: the text encoders are the real classes
with the real *output* widths (CLIP-L 768, OpenCLIP-H 1024, OpenCLIP-bigG 1280, T5-XXL 4096) but
one layer each, and the VAE is a tiny 4-level one with the real latent channels (4 or 16). So a
timed :func:`anysize.generate` call is prompt encoding (negligible), the denoising loop (the real
cost) and a VAE decode (small here, large for the real VAE at high resolutions).

=========  ============================  ==========================================================
family     pipeline                      imitates
=========  ============================  ==========================================================
``sd1``    StableDiffusionPipeline       SD 1.5 (CLIP-L text encoder, PNDM, epsilon)
``sd2``    StableDiffusionPipeline       SD 2.1 (OpenCLIP-H, linear projections, DDIM, v-pred)
``sdxl``   StableDiffusionXLPipeline     SDXL base (two CLIP encoders, text_time conditioning)
``sd3``    StableDiffusion3Pipeline      SD3 medium (MMDiT, CLIP-L + CLIP-G + T5, flow matching)
``flux``   FluxPipeline                  FLUX.1-dev / -schnell (MMDiT + single blocks, CLIP-L + T5)
=========  ============================  ==========================================================

The released models' names ``sd1.5`` and ``sd2.1`` (:data:`ALIASES`) name ``sd1`` and ``sd2``.
Weights are a deterministic function of ``seed``; the caller's global torch RNG state and default
dtype are left untouched. The tokenizers (:mod:`~anysize.builders.tokenizers`) are the real
``transformers`` classes with small vocabularies learnt in code.
"""

from __future__ import annotations

import pathlib
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InvalidArgumentError, UnknownChoiceError
from . import dit, sd, sdxl
from .parts import PROFILES, seeded
from .sd import tiny_x4_upscaler_pipeline
from .tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

if TYPE_CHECKING:  # pragma: no cover
    import diffusers

__all__ = [
    "ALIASES",
    "FAMILIES",
    "PREDICTION_TYPES",
    "PROFILES",
    "build_pipeline",
    "save_tiny_pipeline",
    "tiny_clip_tokenizer",
    "tiny_pipeline",
    "tiny_t5_tokenizer",
    "tiny_x4_upscaler_pipeline",
]

FAMILIES = ("sd1", "sd2", "sdxl", "sd3", "flux")

#: the released models' names for two families (``anysize bench`` uses them)
ALIASES = {"sd1.5": "sd1", "sd2.1": "sd2"}

#: ``prediction_type`` values accepted for the noise-prediction (UNet) families.
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")

_UNET_FAMILIES = ("sd1", "sd2", "sdxl")

_BUILDERS = {"sd1": sd.build, "sd2": sd.build, "sdxl": sdxl.build, "sd3": dit.build_sd3, "flux": dit.build_flux}


def build_pipeline(
    family: str,
    profile: str = "tiny",
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    prediction_type: str | None = None,
    guidance_embeds: bool = True,
) -> "diffusers.DiffusionPipeline":
    """The pipeline of ``family`` (one of :data:`FAMILIES` or :data:`ALIASES`) at ``profile`` (one
    of :data:`PROFILES`), on ``device`` in ``dtype``, its weights drawn from ``seed``.

    Real-sized denoisers are drawn on ``device`` in ``dtype`` directly (no CPU or fp32 copy of a
    multi-GB model); tiny pipelines are drawn on the CPU, so they are the same on every device.
    ``prediction_type`` overrides the scheduler's (``sd1``/``sdxl`` default ``"epsilon"``, ``sd2``
    ``"v_prediction"``; use ``"epsilon"`` for an SD 2.x-base-like model); it must be ``None`` for
    the flow-matching families. ``guidance_embeds`` only affects ``flux`` (True: FLUX.1-dev-like
    guidance-distilled, False: schnell-like).
    """
    name = ALIASES.get(family, family)
    if name not in _BUILDERS:
        raise UnknownChoiceError("family", family, FAMILIES)
    if profile not in PROFILES:
        raise UnknownChoiceError("profile", profile, PROFILES)
    if prediction_type is not None:
        if name not in _UNET_FAMILIES:
            raise InvalidArgumentError(
                f"prediction_type cannot be set for the flow-matching family {family!r}; "
                f"it applies only to {', '.join(_UNET_FAMILIES)}"
            )
        if prediction_type not in PREDICTION_TYPES:
            raise UnknownChoiceError("prediction_type", prediction_type, PREDICTION_TYPES)
    device = torch.device(device)
    with seeded(seed, device, dtype):
        pipe = _BUILDERS[name](name, profile, device=device, prediction_type=prediction_type,
                               guidance_embeds=guidance_embeds)
    pipe.to(device=device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_pipeline(
    family: str,
    *,
    seed: int = 0,
    prediction_type: str | None = None,
    guidance_embeds: bool = True,
) -> "diffusers.DiffusionPipeline":
    """:func:`build_pipeline` ``(family, "tiny")``: float32 on the CPU, native size 128x128 px (FLUX:
    1024 px, as every FLUX pipeline; see the module doc)."""
    return build_pipeline(family, "tiny", seed=seed, prediction_type=prediction_type, guidance_embeds=guidance_embeds)


def save_tiny_pipeline(family: str, path: str | pathlib.Path, **kwargs: Any) -> pathlib.Path:
    """Build :func:`tiny_pipeline` ``(family, **kwargs)`` and ``save_pretrained`` it (safetensors)
    into ``path``, which is created if needed. Returns ``path`` as a :class:`pathlib.Path`."""
    path = pathlib.Path(path)
    pipe = tiny_pipeline(family, **kwargs)
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path, safe_serialization=True)
    return path
