"""Stable Diffusion 1.x and 2.x (epsilon and v-prediction): a U-Net with one CLIP text encoder."""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from .base import Conditioning, ModelAdapter, PromptEmbeds, Window


class UNetAdapter(ModelAdapter):
    """Shared by the U-Net families: the denoiser is ``pipe.unet``."""

    window_conditioned = False  # SD 1.x/2.x U-Nets see only the latents, not the window's place

    @property
    def network(self):
        return self.pipe.unet

    def _unet_kwargs(self, embeds: PromptEmbeds, window: Window, n: int) -> dict:
        return {}

    def _forward(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, window: Window) -> Tensor:
        return self.network(
            x,
            t,
            encoder_hidden_states=embeds.embeds,
            return_dict=False,
            **self._unet_kwargs(embeds, window, x.shape[0]),
        )[0]


class SDAdapter(UNetAdapter):
    family = "sd1"
    default_guidance = 7.5
    default_steps = 50

    def encode_prompt(self, prompts: Sequence[str], negative: Sequence[str] | None, *, guidance_scale: float) -> Conditioning:
        do_cfg = guidance_scale > 1.0
        pos, neg = self.pipe.encode_prompt(
            list(prompts), self.device, 1, do_cfg, negative_prompt=None if negative is None else list(negative)
        )
        return Conditioning(
            PromptEmbeds(pos), PromptEmbeds(neg) if do_cfg else None, guidance_scale=guidance_scale
        )


class SD2Adapter(SDAdapter):
    family = "sd2"
