"""Stable Diffusion 1.x and 2.x (epsilon and v-prediction): a U-Net with one CLIP text encoder."""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import functools

from ..devices import upload
from ..lazy import lazy_module
from .base import Conditioning, ModelAdapter, PromptEmbeds, Window
from .control import CONTROL_INPUTS, CONTROL_POSITIVE, CONTROLS
from .control_pixels import FittingResidual

torch = lazy_module("torch")


@functools.lru_cache(maxsize=64)
def _union_type(n: int, mode: int, dtype, device):
    # the Union pipelines' one-hot control type, made and uploaded once per mode and device
    return upload(torch.zeros(n).scatter_(0, torch.tensor([mode]), 1).reshape(1, n), device, dtype)

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor


class UNetAdapter(ModelAdapter):
    """Shared by the U-Net families: the denoiser is ``pipe.unet``."""

    window_conditioned = False  # SD 1.x/2.x U-Nets see only the latents, not the window's place

    @property
    def network(self):
        return self.pipe.unet

    def _unet_kwargs(self, embeds: PromptEmbeds, window: Window, n: int) -> dict:
        return {}

    def _forward(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, window: Window) -> Tensor:
        kwargs = self._unet_kwargs(embeds, window, x.shape[0])
        inputs = embeds.extra.get(CONTROL_INPUTS)
        if inputs:
            kwargs.update(self._control_residuals(x, t, embeds, kwargs, inputs))
        return self._run_network(x, t, encoder_hidden_states=embeds.embeds, return_dict=False, **kwargs)[0]

    def _control_residuals(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, kwargs: dict, inputs) -> dict:
        """The summed residuals of the ControlNets acting on this call, as the diffusers ControlNet
        pipelines compute them (same latents, embeddings, added conditions; guess mode: the
        negative rows get none)."""
        controls = embeds.extra[CONTROLS]
        added = kwargs.get("added_cond_kwargs")
        down = mid = None
        for item, image in inputs:
            extra = dict(guess_mode=controls.guess_mode)
            if type(item.net).__name__ == "ControlNetUnionModel":  # one mode per control, as a one-hot type
                n = item.net.config.num_control_type
                kind = _union_type(n, item.mode, x.dtype, x.device).expand(x.shape[0], n)
                extra.update(control_type=kind, control_type_idx=[item.mode])
                image = [image]
            d, m = item.net(
                x.to(item.net.dtype), t, encoder_hidden_states=embeds.embeds, controlnet_cond=image,
                conditioning_scale=item.scale, added_cond_kwargs=added, return_dict=False, **extra,
            )
            if controls.guess_mode and CONTROL_POSITIVE in embeds.extra:
                keep = embeds.extra[CONTROL_POSITIVE].view(-1, 1, 1, 1)
                d, m = [r * keep.to(r.dtype) for r in d], m * keep.to(m.dtype)
            down = d if down is None else [a + b for a, b in zip(down, d)]
            mid = m if mid is None else mid + m
        # wrapped, so that residuals also fit a U-Net whose feature sizes a patch changed (RAU-Net)
        return {"down_block_additional_residuals": tuple(FittingResidual(r) for r in down),
                "mid_block_additional_residual": FittingResidual(mid)}


class SDAdapter(UNetAdapter):
    family = "sd1"
    default_guidance = 7.5
    default_steps = 50

    def _encode_prompt(self, prompts: Sequence[str], negative: Sequence[str] | None, *, guidance_scale: float) -> Conditioning:
        do_cfg = guidance_scale > 1.0
        pos, neg = self.pipe.encode_prompt(
            list(prompts), self.device, 1, do_cfg, negative_prompt=None if negative is None else list(negative)
        )
        return Conditioning(
            PromptEmbeds(pos), PromptEmbeds(neg) if do_cfg else None, guidance_scale=guidance_scale
        )


class SD2Adapter(SDAdapter):
    family = "sd2"


class SDX4UpscalerAdapter(SDAdapter):
    """``StableDiffusionUpscalePipeline`` (``stabilityai/stable-diffusion-x4-upscaler``): an SD 2.x-style
    U-Net with 7 input channels, the 4 latent channels followed by the low-resolution RGB image, and
    the low-res image's noise level as class label. The latent lives at the low-res image's size (VAE
    factor 4), so the output is 4x the image that conditions it.

    :meth:`condition_on_image` noises the low-res image *once* over the whole canvas with the
    pipeline's ``low_res_scheduler`` (as the stock pipeline does, drawing that noise before the
    latents); every network call then concatenates the crop of that image under its window, so a
    tiled method conditions each tile on exactly its part of the image.
    """

    family = "sd-x4-upscaler"
    default_guidance = 9.0  # the stock pipeline's defaults
    default_steps = 75
    default_noise_level = 20
    #: each window needs its own crop of the image: windows at different places never share a call
    window_conditioned = True
    #: generates only from an image (anysize.upscale), never from text alone
    needs_image = True

    @property
    def max_noise_level(self) -> int:
        return int(self.pipe.config.get("max_noise_level", 350))

    def check_noise_level(self, noise_level) -> int:
        from ..errors import InvalidArgumentError

        if isinstance(noise_level, bool) or not isinstance(noise_level, int) or not 0 <= noise_level <= self.max_noise_level:
            raise InvalidArgumentError(f"noise_level must be an integer in [0, {self.max_noise_level}], got {noise_level!r}")
        return noise_level

    def condition_on_image(self, cond: Conditioning, images: Tensor, noise_level: int, generators) -> Conditioning:
        """``cond`` plus the low-res ``images`` ((B, 3, h, w) in [-1, 1], h×w the latent size) noised to ``noise_level``."""
        import torch

        from ..errors import InvalidArgumentError

        self.check_noise_level(noise_level)
        if images.shape[0] != cond.batch:
            raise InvalidArgumentError(f"{images.shape[0]} images for {cond.batch} prompts")
        noise = self.initial_noise(tuple(images.shape), generators)
        level = torch.full((images.shape[0],), noise_level, dtype=torch.long, device=self.device)
        noisy = self.pipe.low_res_scheduler.add_noise(images.to(device=self.device, dtype=self.dtype), noise, level)

        def attach(e: PromptEmbeds | None) -> PromptEmbeds | None:
            if e is None:
                return None
            return PromptEmbeds(e.embeds, e.pooled, {**e.extra, "image": noisy, "noise_level": level}, e.unbatched)

        return Conditioning(attach(cond.positive), attach(cond.negative), cond.guidance_scale, cond.network_guidance)

    def _forward(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, window: Window) -> Tensor:
        import torch

        from ..errors import InvalidArgumentError

        if "image" not in embeds.extra:
            raise InvalidArgumentError(
                "the sd-x4-upscaler model needs a low-resolution image: use anysize.upscale or 'anysize upscale IMAGE'"
            )
        image = window.crop(embeds.extra["image"]).to(x.dtype)
        return self._run_network(
            torch.cat([x, image], dim=1), t, encoder_hidden_states=embeds.embeds,
            class_labels=embeds.extra["noise_level"], return_dict=False,
        )[0]
