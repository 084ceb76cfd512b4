"""Tiny random-weight ControlNets that fit the tiny pipelines (offline, seconds).

Each is built with diffusers' own constructor from the tiny pipeline's denoiser
(``ControlNetModel.from_unet`` / ``ControlNetUnionModel.from_unet`` for the U-Nets,
``SD3ControlNetModel.from_transformer`` / ``FluxControlNetModel.from_transformer`` for the DiTs),
so its block layout is the denoiser's; the weights are drawn from ``seed`` (not copied), and every
parameter the library initialises to zero (the zero convolutions above all) is re-drawn small, so
the residuals really depend on the control image. Save one with ``save_pretrained`` and load it
with ``from_pretrained`` on the folder, like a downloaded one.
"""

from __future__ import annotations

import torch

from ..errors import InvalidArgumentError
from .parts import refill_zeros, seeded

__all__ = ["tiny_controlnet"]

#: the conditioning embedding of the tiny U-Net ControlNets for a VAE factor 8: 3 stride-2 stages
#: (a VAE of factor 4, the embedded toy model's, keeps the last 3 entries: 2 stages)
_EMBEDDING = (8, 8, 16, 16)


def _embedding(pipe) -> tuple[int, ...]:
    """The conditioning embedding's channels: one stride-2 stage per halving of the pipeline's VAE."""
    levels = len(pipe.vae.config.block_out_channels) if getattr(pipe, "vae", None) is not None else 4
    if not 2 <= levels <= len(_EMBEDDING):
        raise InvalidArgumentError(f"no tiny ControlNet for a VAE with {levels} levels")
    return _EMBEDDING[len(_EMBEDDING) - levels:]


def tiny_controlnet(pipe, *, seed: int = 1, union: bool = False):
    """A random ControlNet for the tiny pipeline ``pipe`` (its family's ControlNet class; a U-Net one
    downsamples its control image by the pipeline's VAE factor, 8, or 4 for the embedded toy model);
    ``union``: a ``ControlNetUnionModel`` (SDXL only). The caller's global RNG is left alone."""
    import diffusers

    name = type(pipe).__name__
    with seeded(seed, torch.device("cpu"), torch.float32):
        if hasattr(pipe, "unet"):
            is_xl = pipe.unet.config.get("addition_embed_type") == "text_time"
            if union and not is_xl:
                raise InvalidArgumentError(f"Union ControlNets exist for SDXL only, not for {name}")
            cls = diffusers.ControlNetUnionModel if union else diffusers.ControlNetModel
            net = cls.from_unet(pipe.unet, conditioning_embedding_out_channels=_embedding(pipe), load_weights_from_unet=False)
            if union:  # its control-type transformer is as wide as the first block (320 in the released one)
                width = pipe.unet.config.block_out_channels[0]
                net = cls.from_config(net.config, num_trans_channel=width, num_proj_channel=width)
        elif union:
            raise InvalidArgumentError(f"Union ControlNets exist for SDXL only, not for {name}")
        elif name.startswith("Flux"):
            cfg = pipe.transformer.config
            net = diffusers.FluxControlNetModel.from_transformer(
                pipe.transformer, num_layers=1, num_single_layers=1, attention_head_dim=cfg.attention_head_dim,
                num_attention_heads=cfg.num_attention_heads, load_weights_from_transformer=False,
            )
        elif name.startswith("StableDiffusion3"):
            # from_config, not from_transformer, which writes into the transformer's own config
            net = diffusers.SD3ControlNetModel.from_config(pipe.transformer.config, num_layers=1,
                                                          extra_conditioning_channels=0)
        else:
            raise InvalidArgumentError(f"no ControlNet for {name}")
    return refill_zeros(net)
