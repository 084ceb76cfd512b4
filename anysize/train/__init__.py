"""Training tools: ARAD multi-aspect LoRA fine-tuning (the toy model's trainer lives in anysize.toy)."""
