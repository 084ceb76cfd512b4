"""ARAD training's settings, declared once (no torch: ``anysize train-arad --help`` prints them)."""

from __future__ import annotations

from dataclasses import dataclass

from ..buckets import RULES
from ..options import REQUIRED, Options, option

MIXED_PRECISION = ("no", "fp16", "bf16")
DEFAULT_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
LORA_FILE = "pytorch_lora_weights.safetensors"
FAMILIES = ("sd1", "sd2", "sdxl")


@dataclass
class AradConfig(Options):
    LABEL = "train-arad"

    data: str = option(REQUIRED, "image folder with .txt captions, or a .jsonl/.csv manifest", kind="path")
    out: str = option(REQUIRED, "output folder (LoRA, checkpoints, log)", kind="path")
    model: str | None = option(None, "hub id or local diffusers folder", kind="str",
                               unset="the embedded default (toy) model")
    family: str | None = option(None, "model family", choices=FAMILIES, unset="detected")
    steps: int = option(10_000, "optimizer steps", low=1)
    batch: int = option(8, "images per step per device", low=1)
    lr: float = option(1e-4, "Adam learning rate, constant", low=0.0, low_open=True)
    rank: int = option(4, "LoRA rank", low=1)
    alpha: float | None = option(None, "LoRA alpha", kind="float", low=0.0, low_open=True, unset="the rank")
    targets: tuple[str, ...] = option(DEFAULT_TARGETS, "U-Net modules that get LoRA", kind="strings")
    grad_accum: int = option(1, "gradient accumulation steps", low=1)
    mixed_precision: str = option("no", "mixed precision (fp16/bf16 on a GPU)", choices=MIXED_PRECISION)
    caption_dropout: float = option(0.1, "share of empty captions, for classifier-free guidance",
                                    low=0.0, high=1.0, high_open=True)
    grad_clip: float = option(1.0, "max gradient norm (0: off)", low=0.0)
    checkpoint_every: int = option(500, "steps between checkpoints", low=1, unit="steps")
    keep_checkpoints: int = option(2, "newest checkpoints kept", low=1)
    seed: int = option(0, "seed of the whole run")
    buckets: str | None = option(None, "your own buckets in pixels, WxH,WxH,...", kind="str",
                                 unset="the paper's nine, scaled to the native size")
    bucket_rule: str = option("paper", "nearest H/W ratio (paper, Algorithm 1) or nearest log-ratio", choices=RULES)
    min_side: int | None = option(None, "skip images whose shorter side is below this", kind="int", low=0, unit="px",
                                  unset="half the model's native side")
    workers: int = option(0, "image-loading processes", low=0)
    device: str | None = option(None, "cpu to force the CPU", choices=("cpu",), unset="what accelerate picks")
    resume: bool = option(True, "resume from the latest checkpoint in out")
    log_every: int = option(10, "steps between log lines", low=1, unit="steps")
    progress: bool = option(True, "a progress bar")
