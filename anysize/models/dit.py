"""The Diffusion-Transformer families, SD3 and FLUX.1 (flow matching, rectified-flow velocity).

Both take latents as patch tokens with positions. A window of a larger canvas keeps its canvas
position: FLUX gets position ids offset by the window's place (RoPE sees true coordinates); SD3
gets the slice of its learned position table where the window sits in the centred canvas. For
the whole canvas both reduce to the stock pipelines exactly.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import TYPE_CHECKING, Sequence

import numpy as np

from ..devices import upload
from ..errors import InvalidArgumentError
from ..lazy import lazy_module
from .base import Conditioning, ModelAdapter, PromptEmbeds, Window
from .control import CONTROL_INPUTS

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor

torch = lazy_module("torch")


def _flow_shift_mu(scheduler, image_seq_len: int, default_max_shift: float) -> float:
    """The resolution-dependent shift of the flow schedule (diffusers' ``calculate_shift``)."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    cfg = scheduler.config
    return calculate_shift(
        image_seq_len,
        cfg.get("base_image_seq_len", 256),
        cfg.get("max_image_seq_len", 4096),
        cfg.get("base_shift", 0.5),
        cfg.get("max_shift", default_max_shift),
    )


@functools.lru_cache(maxsize=256)
def _position_ids(top: int, left: int, h: int, w: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    ids = torch.zeros(h, w, 3)
    ids[..., 1] += torch.arange(h)[:, None] + top
    ids[..., 2] += torch.arange(w)[None, :] + left
    return upload(ids.reshape(h * w, 3), device, dtype)

class DiTAdapter(ModelAdapter):
    scheduler_kind = "flow"

    @property
    def network(self):
        return self.pipe.transformer

    @property
    def patch(self) -> int:
        return 2

    @property
    def size_multiple(self) -> int:
        return self.vae_factor * self.patch

    def _check_window(self, window: Window) -> None:
        if window.top % self.patch or window.left % self.patch:
            raise InvalidArgumentError(
                f"{self.family} windows must start on multiples of {self.patch} latent pixels, got {window}"
            )

    def img2img_skipped_steps(self, steps: int, strength: float) -> int:
        # the SD3 / FLUX img2img pipelines round the skipped part down, not the kept part
        return int(max(steps - min(steps * strength, steps), 0))

    @property
    def control_factor(self) -> int:
        return 1  # the DiT ControlNets take the VAE-encoded control image, one latent pixel per pixel

    def control_canvas(self, item, canvas: tuple[int, int]) -> Tensor:
        """(1, C, H, W): the control image resized to the canvas (as the pipelines' image processor
        does, normalised to [-1, 1]) and VAE-encoded, the posterior's mean (the pipelines draw a
        sample: from the global RNG for SD3), scaled as the family's ControlNet pipeline scales it."""
        from diffusers.image_processor import VaeImageProcessor

        f = self.vae_factor
        processor = VaeImageProcessor(vae_scale_factor=f * self.patch)
        pixels = processor.preprocess(item.image, height=canvas[0] * f, width=canvas[1] * f)
        latents = self.encode(pixels, sample=False)
        if item.net.config.get("force_zeros_for_pooled_projection", False):  # InstantX SD3: no shift
            cfg = self.vae.config
            latents = latents + (cfg.get("shift_factor", None) or 0.0) * cfg.scaling_factor
        return latents.to(device=self.device, dtype=item.net.dtype)

    def _accepts_sigmas(self, scheduler) -> bool:
        import inspect

        return "sigmas" in inspect.signature(scheduler.set_timesteps).parameters


class SD3Adapter(DiTAdapter):
    family = "sd3"
    default_guidance = 7.0
    default_steps = 28

    @property
    def patch(self) -> int:
        return self.network.config.patch_size

    def _encode_prompt(self, prompts: Sequence[str], negative: Sequence[str] | None, *, guidance_scale: float) -> Conditioning:
        do_cfg = guidance_scale > 1.0
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            list(prompts), None, None, device=self.device, num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg, negative_prompt=None if negative is None else list(negative),
        )
        return Conditioning(
            PromptEmbeds(pos, pooled), PromptEmbeds(neg, neg_pooled) if do_cfg else None, guidance_scale=guidance_scale
        )

    def set_timesteps(self, scheduler, steps: int, latent_hw: tuple[int, int]) -> Tensor:
        kwargs = {}
        if scheduler.config.get("use_dynamic_shifting", False):
            seq = (latent_hw[0] // self.patch) * (latent_hw[1] // self.patch)
            kwargs["mu"] = _flow_shift_mu(scheduler, seq, 1.16)
        scheduler.set_timesteps(steps, device=self.device, **kwargs)
        return scheduler.timesteps

    @contextlib.contextmanager
    def _positions(self, window: Window, pe=None):
        """Give the window the part of SD3's position table (``pe``, default the transformer's; a
        ControlNet has its own) where it sits in the centred canvas."""
        pe = self.network.pos_embed if pe is None else pe
        m = pe.pos_embed_max_size
        p = self.patch
        ch, cw = window.canvas[0] // p, window.canvas[1] // p
        if m is None or (window.height, window.width) == tuple(window.canvas):
            yield  # the stock centred crop is exactly right
            return
        if ch > m or cw > m:
            warnings.warn(
                f"canvas of {ch}x{cw} patches exceeds SD3's position table ({m}); windows get centred positions",
                stacklevel=3,
            )
            yield
            return
        top = (m - ch) // 2 + window.top // p
        left = (m - cw) // 2 + window.left // p

        def cropped(height, width):
            h, w = height // p, width // p
            table = pe.pos_embed.reshape(1, m, m, -1)[:, top : top + h, left : left + w, :]
            return table.reshape(1, -1, table.shape[-1])

        pe.cropped_pos_embed = cropped
        try:
            yield
        finally:
            del pe.cropped_pos_embed

    def check_positions(self, height: int, width: int, remedy: str = "a tiling method") -> None:
        m = self.network.pos_embed.pos_embed_max_size
        limit = None if m is None else m * self.patch * self.vae_factor
        if limit is not None and max(height, width) > limit:
            raise InvalidArgumentError(
                f"SD3's position table covers {limit} px per side, and a whole-canvas call at {width}x{height} needs more: "
                f"use at most {limit} px per side, or {remedy}"
            )

    def _forward(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, window: Window) -> Tensor:
        self._check_window(window)
        m = self.network.pos_embed.pos_embed_max_size
        if m is not None and max(window.height, window.width) // self.patch > m:
            raise InvalidArgumentError(
                f"a {window.height * self.vae_factor}x{window.width * self.vae_factor} px window exceeds SD3's "
                f"position table ({m * self.patch * self.vae_factor} px per side): use a tiling method"
            )
        timestep = torch.as_tensor(t, device=x.device).expand(x.shape[0])
        residuals = None
        for item, image in embeds.extra.get(CONTROL_INPUTS) or ():
            # as the SD3 ControlNet pipeline calls it (InstantX: zero pooled projection; SD3.5: no text)
            net = item.net
            pooled = torch.zeros_like(embeds.pooled) if net.config.force_zeros_for_pooled_projection else embeds.pooled
            text = embeds.embeds if net.config.joint_attention_dim is not None else None
            places = self._positions(window, net.pos_embed) if net.pos_embed is not None else contextlib.nullcontext()
            with places:
                samples = net(hidden_states=x, timestep=timestep, encoder_hidden_states=text, pooled_projections=pooled,
                              controlnet_cond=image.to(x.dtype), conditioning_scale=item.scale, return_dict=False)[0]
            residuals = samples if residuals is None else [a + b for a, b in zip(residuals, samples)]
        extra = {} if residuals is None else {"block_controlnet_hidden_states": residuals}
        with self._positions(window):
            return self._run_network(
                hidden_states=x,
                timestep=timestep,
                encoder_hidden_states=embeds.embeds,
                pooled_projections=embeds.pooled,
                return_dict=False,
                **extra,
            )[0]


class FluxAdapter(DiTAdapter):
    family = "flux"
    default_guidance = 3.5
    default_steps = 28

    def _default_native_latent(self) -> tuple[int, int]:
        # FLUX.1 was trained around 1024 px; the transformer config does not record it
        n = getattr(self.pipe, "default_sample_size", 128)
        return n, n

    @property
    def distilled_guidance(self) -> bool:
        return bool(self.network.config.get("guidance_embeds", False))

    def _encode_prompt(self, prompts: Sequence[str], negative: Sequence[str] | None, *, guidance_scale: float) -> Conditioning:
        if negative is not None and any(negative):
            raise InvalidArgumentError(
                "FLUX.1 is guidance-distilled and takes no negative prompt here; drop --negative"
            )
        embeds, pooled, text_ids = self.pipe.encode_prompt(list(prompts), None, device=self.device, num_images_per_prompt=1)
        extra = {"text_ids": text_ids}
        if self.distilled_guidance:
            # distilled guidance is an input of the network, carried per sample with the prompt
            extra["guidance"] = torch.full([embeds.shape[0]], float(guidance_scale), device=embeds.device)
        return Conditioning(
            PromptEmbeds(embeds, pooled, extra, frozenset({"text_ids"})),
            None,
            guidance_scale=1.0,
            network_guidance=guidance_scale if self.distilled_guidance else None,
        )

    def set_timesteps(self, scheduler, steps: int, latent_hw: tuple[int, int]) -> Tensor:
        sigmas = np.linspace(1.0, 1 / steps, steps)
        if scheduler.config.get("use_flow_sigmas", False) or not self._accepts_sigmas(scheduler):
            sigmas = None
        seq = (latent_hw[0] // 2) * (latent_hw[1] // 2)
        kwargs = {"mu": _flow_shift_mu(scheduler, seq, 1.15)} if scheduler.config.get("use_dynamic_shifting", False) else {}
        if sigmas is None:
            scheduler.set_timesteps(steps, device=self.device, **kwargs)
        else:
            scheduler.set_timesteps(sigmas=sigmas, device=self.device, **kwargs)
        return scheduler.timesteps

    def position_ids(self, window: Window, device: torch.device | None = None) -> Tensor:
        """(h/2·w/2, 3) ids (0, row, col) of the window's tokens in canvas coordinates; one tensor
        per place, size, device and dtype, made and uploaded once (the transformer only reads it)."""
        return _position_ids(window.top // 2, window.left // 2, window.height // 2, window.width // 2,
                             torch.device(device or self.device), self.dtype)

    @staticmethod
    def pack(x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // 2) * (w // 2), c * 4)

    @staticmethod
    def unpack(x: Tensor, h: int, w: int) -> Tensor:
        b, _, d = x.shape
        c = d // 4
        x = x.view(b, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, h, w)

    def _forward(self, x: Tensor, t: Tensor, embeds: PromptEmbeds, window: Window) -> Tensor:
        self._check_window(window)
        n, _, h, w = x.shape
        timestep = torch.as_tensor(t, device=x.device).expand(n).to(x.dtype)
        guidance = embeds.extra.get("guidance")
        packed, ids = self.pack(x), self.position_ids(window, x.device)  # x.device: cheaper than the pipeline's
        extra, blocks, singles = {}, None, None
        for item, image in embeds.extra.get(CONTROL_INPUTS) or ():  # as the FLUX ControlNet pipeline calls it
            net = item.net
            b, s = net(
                hidden_states=packed, controlnet_cond=self.pack(image.to(x.dtype)), conditioning_scale=item.scale,
                timestep=timestep / 1000, guidance=guidance if net.config.guidance_embeds else None,
                pooled_projections=embeds.pooled, encoder_hidden_states=embeds.embeds,
                txt_ids=embeds.extra["text_ids"], img_ids=ids, return_dict=False,
            )
            blocks = b if blocks is None else [p + q for p, q in zip(blocks, b)]
            singles = s if singles is None else (None if s is None else [p + q for p, q in zip(singles, s)])
        if blocks is not None:
            extra = {"controlnet_block_samples": blocks, "controlnet_single_block_samples": singles,
                     "controlnet_blocks_repeat": False}
        out = self._run_network(
            hidden_states=packed,
            timestep=timestep / 1000,
            guidance=guidance,
            pooled_projections=embeds.pooled,
            encoder_hidden_states=embeds.embeds,
            txt_ids=embeds.extra["text_ids"],
            img_ids=ids,
            return_dict=False,
            **extra,
        )[0]
        return self.unpack(out, h, w)
