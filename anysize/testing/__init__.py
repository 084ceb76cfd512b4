"""Offline test fixtures: tiny random-weight diffusers pipelines for every supported family."""

from anysize.testing.pipelines import FAMILIES, PREDICTION_TYPES, save_tiny_pipeline, tiny_pipeline
from anysize.testing.pipelines import tiny_x4_upscaler_pipeline
from anysize.testing.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

__all__ = [
    "FAMILIES",
    "PREDICTION_TYPES",
    "save_tiny_pipeline",
    "tiny_clip_tokenizer",
    "tiny_pipeline",
    "tiny_t5_tokenizer",
    "tiny_x4_upscaler_pipeline",
]
