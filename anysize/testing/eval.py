"""Offline stand-ins for the evaluation networks: a small image feature network (for FID/KID/IS)
and a tiny random CLIP model with its processor (for the CLIP score), built in code in milliseconds.

They have the interfaces of the real ones (:class:`anysize.eval.metrics.InceptionExtractor` and
``transformers.CLIPModel`` + ``CLIPProcessor``), so tests exercise the real metric code paths
without downloading Inception or CLIP weights. Their numbers mean nothing beyond the tests.
"""

from __future__ import annotations

import torch

__all__ = ["TinyFeatureNet", "tiny_clip"]


class TinyFeatureNet(torch.nn.Module):
    """A fixed random conv net: uint8 (N, 3, S, S) -> (features (N, dim), logits (N, classes)).

    Features are channel means and standard deviations of two conv stages, so they respond to
    brightness, colour and texture; weights are a deterministic function of ``seed``.
    """

    name = "tiny random conv net (anysize.testing.eval)"

    def __init__(self, dim: int = 16, classes: int = 10, input_size: int = 32, seed: int = 0):
        super().__init__()
        self.input_size = input_size
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv1 = torch.nn.Conv2d(3, dim // 4, 3, stride=2)
            self.conv2 = torch.nn.Conv2d(dim // 4, dim // 4, 3, stride=2)
            self.head = torch.nn.Linear(dim, classes)
        self.eval()

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if images.dtype != torch.uint8:
            raise TypeError(f"expected uint8 images, got {images.dtype}")
        x = images.float() / 127.5 - 1
        a = torch.tanh(self.conv1(x))
        b = torch.tanh(self.conv2(a))
        feats = torch.cat([a.mean((2, 3)), a.std((2, 3)), b.mean((2, 3)), b.std((2, 3))], 1)
        return feats, self.head(feats)


def tiny_clip(seed: int = 0, image_size: int = 32):
    """A factory for torchmetrics ``CLIPScore``: returns ``() -> (CLIPModel, CLIPProcessor)``, tiny and random."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    from ..builders.tokenizers import tiny_clip_tokenizer

    def make():
        tok = tiny_clip_tokenizer(pad_token="<|endoftext|>")
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                             num_attention_heads=4, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
                             eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id),
            vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                               image_size=image_size, patch_size=8),
            projection_dim=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPModel(config).eval()
        processor = CLIPProcessor(
            image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                               crop_size={"height": image_size, "width": image_size}),
            tokenizer=tok,
        )
        return model, processor

    make.name = f"tiny random CLIP (anysize.testing.eval, seed {seed})"
    return make
