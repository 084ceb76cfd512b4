"""Pipelines built in code, offline, with random weights: tiny ones of every family, and their tokenizers."""

from anysize.builders.pipelines import FAMILIES, PREDICTION_TYPES, save_tiny_pipeline, tiny_pipeline
from anysize.builders.pipelines import tiny_x4_upscaler_pipeline
from anysize.builders.tokenizers import tiny_clip_tokenizer, tiny_t5_tokenizer

__all__ = [
    "FAMILIES",
    "PREDICTION_TYPES",
    "save_tiny_pipeline",
    "tiny_clip_tokenizer",
    "tiny_pipeline",
    "tiny_t5_tokenizer",
    "tiny_x4_upscaler_pipeline",
]
