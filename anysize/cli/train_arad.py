"""``anysize train-arad``: fine-tune a LoRA on multi-aspect images (ARAD, Any-Size-Diffusion stage I)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import InvalidArgumentError
from .console import EXIT_OK, library_output
from .model_options import add_model_options

HELP = "fine-tune a LoRA on multi-aspect images (ARAD, Any-Size-Diffusion stage I)"

EPILOG = """\
examples:
  anysize train-arad data/laion-aesthetic --model stabilityai/stable-diffusion-2-1-base --out arad-sd21 \\
      --mixed-precision fp16
  anysize train-arad toy-multi --out arad-toy --steps 600 --batch 8     # the embedded toy model, on a CPU
"""


def configure(p: argparse.ArgumentParser) -> None:
    from ..buckets import PAPER_BUCKETS, RULES
    from ..train.config import DEFAULT_TARGETS, MIXED_PRECISION, AradConfig

    d = AradConfig(data="", out="")
    table = ", ".join(str(b) for b in PAPER_BUCKETS)
    p.formatter_class, p.epilog = argparse.RawDescriptionHelpFormatter, EPILOG
    p.description = f"""\
Fine-tune an SD 1.x / 2.x / SDXL model with a LoRA on image-caption pairs of many aspect ratios
(ARAD, Algorithm 1 of the Any-Size-Diffusion paper), so it composes well at non-square sizes.

Each image goes to the ratio-size bucket nearest its height/width ratio (default: the paper's
nine, scaled from a 512-px model to the model's native side:
  {table}),
is resized to cover it and cropped to it (random crop), and every batch holds one bucket. Defaults are the paper's
(Adam, lr 1e-4, batch 8, 10000 steps, constant LR) with LoRA rank 4 on the attention projections.

DATA is a folder of images with sidecar captions (cat.png + cat.txt, recursive) or a .jsonl/.csv
manifest with an image path (image / file_name / path, relative to the manifest) and a caption
(caption / text / prompt), optionally width/height. Unreadable images, missing captions and
images below --min-side are skipped and counted, never fatal.

Checkpoints (LoRA + optimizer + step) go to OUT/checkpoints every --checkpoint-every steps; running
the same command again resumes from the latest one, exactly (batches, crops, noise and caption
dropout depend only on the seed and the step). The result, OUT/pytorch_lora_weights.safetensors,
is a diffusers LoRA: pipe.load_lora_weights(OUT), or anysize generate --method asd --set arad_lora=OUT.

Several GPUs or nodes: run it through accelerate (distributed data parallel; --batch is per GPU):
  accelerate launch --multi_gpu --num_processes 8 -m anysize train-arad DATA --model M --out OUT
  accelerate launch --num_machines 2 --machine_rank R --main_process_ip HOST --num_processes 16 \\
      -m anysize train-arad DATA --model M --out OUT
  torchrun --nproc_per_node 4 -m anysize train-arad DATA --out OUT --device cpu   # CPU processes (gloo)"""
    p.add_argument("data", help="image folder with .txt captions, or a .jsonl/.csv manifest")
    p.add_argument("--out", required=True, help="output folder (LoRA, checkpoints, log)")
    add_model_options(p)
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps (default: %(default)s)")
    p.add_argument("--batch", type=int, default=d.batch, help="images per step per GPU (default: %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr, help="Adam learning rate, constant (default: %(default)s)")
    p.add_argument("--rank", type=int, default=d.rank, help="LoRA rank (default: %(default)s)")
    p.add_argument("--alpha", type=float, default=None, help="LoRA alpha (default: the rank)")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS),
                   help="U-Net modules that get LoRA, comma-separated (default: %(default)s)")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum, help="gradient accumulation steps (default: %(default)s)")
    p.add_argument("--mixed-precision", default=d.mixed_precision, metavar="P",
                   help=f"{', '.join(MIXED_PRECISION)} (default: %(default)s; fp16/bf16 on a GPU)")
    p.add_argument("--caption-dropout", type=float, default=d.caption_dropout,
                   help="share of empty captions, for classifier-free guidance (default: %(default)s)")
    p.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm, 0 = off (default: %(default)s)")
    p.add_argument("--buckets", default=None, metavar="WxH,...",
                   help="your own buckets in pixels, e.g. 512x512,768x512,512x768 (default: the paper's nine, scaled)")
    p.add_argument("--bucket-rule", default=d.bucket_rule, metavar="R",
                   help=f"{', '.join(RULES)}: nearest H/W ratio (paper, Algorithm 1) or nearest log-ratio (default: %(default)s)")
    p.add_argument("--min-side", type=int, default=None, metavar="PX",
                   help="skip images whose shorter side is below PX (default: half the native side)")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps (default: %(default)s)")
    p.add_argument("--keep-checkpoints", type=int, default=d.keep_checkpoints, help="newest kept (default: %(default)s)")
    p.add_argument("--no-resume", action="store_true", help="start afresh even if OUT has checkpoints")
    p.add_argument("--seed", type=int, default=d.seed, help="seed of the whole run (default: %(default)s)")
    p.add_argument("--workers", type=int, default=d.workers, help="image-loading processes (default: %(default)s)")
    p.add_argument("--device", default=None, help="cpu to force the CPU (default: what accelerate picks)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train.arad import AradConfig, parse_targets, train_arad

    if args.device not in (None, "cpu"):
        raise InvalidArgumentError("--device takes only 'cpu'; GPUs are chosen by accelerate (accelerate launch / CUDA_VISIBLE_DEVICES)")
    cfg = AradConfig(
        data=args.data, out=args.out, model=args.model, family=args.family, steps=args.steps, batch=args.batch, lr=args.lr,
        rank=args.rank, alpha=args.alpha, targets=parse_targets(args.targets), grad_accum=args.grad_accum,
        mixed_precision=args.mixed_precision, caption_dropout=args.caption_dropout, grad_clip=args.grad_clip,
        checkpoint_every=args.checkpoint_every, keep_checkpoints=args.keep_checkpoints, seed=args.seed,
        buckets=args.buckets, bucket_rule=args.bucket_rule, min_side=args.min_side, workers=args.workers,
        device=args.device, resume=not args.no_resume, progress=not args.quiet,
    )
    cfg.validate()
    if not Path(args.data).exists():
        raise InvalidArgumentError(f"dataset {args.data} does not exist")
    with library_output(True):
        lora = train_arad(cfg)
    print(lora)
    return EXIT_OK


