"""Helpers shared by the tiled-method tests: a cheap counting adapter and a window spy."""

from __future__ import annotations

import contextlib

import torch

import anysize
from anysize.models.base import Conditioning, ModelAdapter, PromptEmbeds


def generate_latents(adapter, method, h=128, w=128, steps=2, seed=3, prompt="a cat", callback=None, **opts):
    """Final latents of one quiet generation with ``method`` and its options."""
    return anysize.generate(adapter, prompt, height=h, width=w, steps=steps, seed=seed, method=method,
                            method_options=opts, output_type="latent", progress=False, callback=callback)


class FakeAdapter(ModelAdapter):
    """A network-free adapter: the output is a smooth function of the input and the window place,
    so call counts and window positions can be checked over many sizes in milliseconds."""

    family = "fake"

    def __init__(self, native: int = 16, patch: int = 1):
        self._native_latent = (native, native)
        self._patch = patch
        self.calls = 0

    vae_factor = 8
    latent_channels = 4
    prediction_type = "epsilon"

    @property
    def size_multiple(self) -> int:
        return 8 * self._patch

    @property
    def device(self):
        return torch.device("cpu")

    @property
    def dtype(self):
        return torch.float32

    def _forward(self, x, t, embeds, window):
        return 0.5 * x + 0.01 * (window.top + 2 * window.left) + embeds.embeds.mean(dim=(1, 2))[:, None, None, None]


def fake_cond(batch: int, cfg: bool) -> Conditioning:
    pos = PromptEmbeds(torch.arange(batch, dtype=torch.float32).reshape(batch, 1, 1) + 1)
    neg = PromptEmbeds(torch.zeros(batch, 1, 1)) if cfg else None
    return Conditioning(pos, neg, guidance_scale=3.0 if cfg else 1.0)


@contextlib.contextmanager
def spy_windows(adapter):
    """Record (step timestep, window, batch) for every network call of ``adapter``."""
    seen = []
    original = adapter.predict

    def predict(x, t, embeds, window=None):
        seen.append((float(t), window, x.shape[0]))
        return original(x, t, embeds, window)

    adapter.predict = predict
    try:
        yield seen
    finally:
        del adapter.predict
