"""SDXL: a U-Net with two CLIP text encoders, pooled text embedding and size/crop time ids.

A window of the canvas is conditioned as a crop of the whole image: original size = canvas,
crop top-left = the window's offset, target size = the window (all in pixels), so tiled methods
tell SDXL where each tile sits, as DemoFusion and the SDXL paper's crop conditioning intend. For the
full canvas this gives (H, W, 0, 0, H, W), the stock pipeline's default.
"""

from __future__ import annotations

import functools
from typing import Sequence

from ..devices import upload
from ..lazy import lazy_module
from .base import Conditioning, PromptEmbeds, Window
from .sd import UNetAdapter

torch = lazy_module("torch")


@functools.lru_cache(maxsize=256)
def _time_ids(ids: tuple, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    # built and uploaded once per window set, not at every network call (the U-Net only reads it)
    return upload(torch.tensor(ids, dtype=dtype), device)

class SDXLAdapter(UNetAdapter):
    family = "sdxl"
    window_conditioned = True  # the crop coordinates in the time ids
    per_sample_windows = True  # ... which are per sample, so windows at different places share a call
    default_guidance = 5.0
    default_steps = 50

    def _encode_prompt(self, prompts: Sequence[str], negative: Sequence[str] | None, *, guidance_scale: float) -> Conditioning:
        do_cfg = guidance_scale > 1.0
        pos, neg, pooled, neg_pooled = self.pipe.encode_prompt(
            list(prompts),
            device=self.device,
            num_images_per_prompt=1,
            do_classifier_free_guidance=do_cfg,
            negative_prompt=None if negative is None else list(negative),
        )
        return Conditioning(
            PromptEmbeds(pos, pooled),
            PromptEmbeds(neg, neg_pooled) if do_cfg else None,
            guidance_scale=guidance_scale,
        )

    def time_ids(self, window: Window | Sequence[Window], n: int, dtype: torch.dtype,
                 device: torch.device | None = None) -> torch.Tensor:
        """(n, 6) size and crop ids: one window for all n, or one window per sample."""
        f = self.vae_factor
        windows = [window] * n if isinstance(window, Window) else list(window)
        ids = tuple((w.canvas[0] * f, w.canvas[1] * f, w.top * f, w.left * f, w.height * f, w.width * f) for w in windows)
        return _time_ids(ids, dtype, torch.device(device or self.device))

    def _unet_kwargs(self, embeds: PromptEmbeds, window: Window, n: int) -> dict:
        return {
            "added_cond_kwargs": {
                "text_embeds": embeds.pooled,
                "time_ids": self.time_ids(window, n, embeds.embeds.dtype, embeds.embeds.device),
            }
        }
