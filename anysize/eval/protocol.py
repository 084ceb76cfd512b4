"""The fixed settings of the scoring protocol (no torch: ``anysize eval metrics --help`` prints them)."""

from __future__ import annotations

from pathlib import Path

#: version of the scoring protocol written into every metrics.json: bump it whenever a change (resize,
#: crop sampling, KID subsets, feature network, CLIP scale) would change a score, so scores are only
#: compared within one version
PROTOCOL_VERSION = "anysize-eval/1"
#: the shipped 32-prompt smoke set (JSONL rows {"id", "prompt", "seed"})
DEFAULT_MANIFEST = Path(__file__).resolve().parent / "prompts" / "smoke32.jsonl"
CLIP_MODEL = "openai/clip-vit-large-patch14"
CLIP_SCALE = "100 * max(cosine(image, text), 0) (torchmetrics CLIPScore)"
RESIZE = "PIL bicubic with antialiasing to the feature network's input (clean-fid 'clean' resize)"
METRICS = ("fid_r", "kid_r", "fid_c", "kid_c", "is", "clip", "fid_b", "kid_b")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
KID_MAX_SUBSET = 1000
