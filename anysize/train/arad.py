"""ARAD: multi-aspect-ratio LoRA fine-tuning (Any-Size-Diffusion stage I; Algorithm 1 of the paper).

Any SD 1.x / 2.x / SDXL pipeline gets a LoRA on its U-Net attention projections, trained with the
model's own loss (ε or v) on images resized to cover and cropped to the nearest of the ratio–size
buckets (:mod:`anysize.buckets`: the paper's nine, scaled to the model's native size, or the
user's). Every batch holds one bucket, so latents in a batch share a shape. Paper settings are the
defaults: Adam, lr 1e-4, batch 8, 10k steps, constant LR; rank 4 on to_q/to_k/to_v/to_out.0, 10 %
caption dropout and grad-norm clipping 1.0 are the spec's recommendations (the paper names none).

Reproducible and resumable by construction: the bucket, the images, their crops, the caption
dropout, the timesteps and the noise of every micro-step are functions of (seed, micro-step, rank)
alone, so a run resumed from a checkpoint (LoRA weights + optimizer + step) continues exactly as
if it had never stopped. Buckets are drawn in proportion to their sizes from the same generator
on every rank (all ranks train the same bucket at a step, on different images): distributed data
parallel through ``accelerate launch``, which also supplies mixed precision and gradient
accumulation. ``--batch`` is per device; the global batch is batch × processes × grad_accum.

Output: ``pytorch_lora_weights.safetensors`` in the diffusers LoRA format (``pipe.load_lora_weights``
and ``anysize generate --method asd --set arad_lora=OUT``), ``arad.json`` (config, bucket counts, skipped
entries, timing) and ``train_log.jsonl``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ..buckets import parse_buckets, scaled_buckets
from ..errors import InvalidArgumentError
from .config import DEFAULT_TARGETS, FAMILIES, LORA_FILE, MIXED_PRECISION, AradConfig  # noqa: F401  (re-exported)
from .data import BucketedImages, scan


# ------------------------------------------------------------------------------------------ sampling


def _seed_of(*keys: int) -> int:
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0] >> 1)


def draw_batch(data: BucketedImages, micro_step: int, per_rank: int, world: int, seed: int) -> tuple[int, list[int]]:
    """(bucket, entry indices of every rank, rank-major) for one micro-step; a pure function.

    The bucket is drawn with probability proportional to its number of entries; images within it
    without replacement when it has enough (else with replacement).
    """
    rng = np.random.default_rng([seed, micro_step, 0xA7AD])
    keys = sorted(data.by_bucket)
    sizes = np.array([len(data.by_bucket[k]) for k in keys], dtype=np.float64)
    bucket = keys[int(rng.choice(len(keys), p=sizes / sizes.sum()))]
    members = data.by_bucket[bucket]
    n = per_rank * world
    pick = rng.choice(len(members), size=n, replace=len(members) < n)
    return bucket, [members[int(i)] for i in pick]


class _StepBatches(torch.utils.data.Dataset):
    """Item k = this rank's batch of micro-step ``start + k`` (a DataLoader may build them in workers)."""

    def __init__(self, data: BucketedImages, cfg: AradConfig, start: int, total: int, rank: int, world: int):
        self.data, self.cfg, self.start, self.total, self.rank, self.world = data, cfg, start, total, rank, world

    def __len__(self) -> int:
        return self.total - self.start

    def __getitem__(self, k: int) -> dict:
        micro = self.start + k
        cfg = self.cfg
        bucket, picks = draw_batch(self.data, micro, cfg.batch, self.world, cfg.seed)
        mine = picks[self.rank * cfg.batch:(self.rank + 1) * cfg.batch]
        images, captions = [], []
        for j, index in enumerate(mine):
            rng = np.random.default_rng([cfg.seed, micro, self.rank, j, 0xC0])
            img, caption = self.data.load(index, rng, random_crop=True)
            images.append(img)
            captions.append("" if rng.random() < cfg.caption_dropout else caption)
        return {"pixels": torch.stack(images), "captions": captions, "bucket": bucket, "micro": micro,
                "skipped_at_load": dict(self.data.skipped)}


# ------------------------------------------------------------------------------------------ LoRA


def add_lora(unet, cfg: AradConfig) -> list[torch.nn.Parameter]:
    """Freeze the U-Net and add a peft LoRA adapter; returns the trainable (float32) parameters."""
    try:
        from peft import LoraConfig
    except ImportError:
        raise InvalidArgumentError("ARAD training needs peft: pip install 'anysize[train]' (or pip install peft)") from None
    unet.requires_grad_(False)
    lora = LoraConfig(r=cfg.rank, lora_alpha=cfg.alpha or cfg.rank, init_lora_weights="gaussian",
                      target_modules=list(cfg.targets))
    try:
        # peft draws the initial LoRA A matrices from the global RNG: seed it, and restore it after
        cuda = [unet.device] if unet.device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(cfg.seed)  # seeds the CUDA generator too
            unet.add_adapter(lora)
    except ValueError as e:
        raise InvalidArgumentError(f"cannot put LoRA on targets {list(cfg.targets)}: {e}") from None
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:  # trainable weights stay float32 under mixed precision
        p.data = p.data.float()
    return params


def lora_state(unet) -> dict[str, torch.Tensor]:
    from peft.utils import get_peft_model_state_dict

    return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(unet).items()}


def save_lora(pipe, unet, folder: Path) -> Path:
    """The LoRA in the diffusers format, loadable by ``pipe.load_lora_weights(folder)``."""
    from diffusers.utils import convert_state_dict_to_diffusers

    layers = convert_state_dict_to_diffusers(lora_state(unet))
    type(pipe).save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)
    return folder / LORA_FILE


# ------------------------------------------------------------------------------------------ checkpoints


def _checkpoints(out: Path) -> list[Path]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    done = [p for p in root.glob("step-*") if (p / "state.json").is_file()]
    return sorted(done, key=lambda p: int(p.name.split("-")[1]))


def _save_checkpoint(out: Path, step: int, unet, optimizer, scaler, log_tail: dict, keep: int) -> Path:
    """LoRA weights + optimizer (+ grad scaler) + step, written to a temporary folder then renamed."""
    from safetensors.torch import save_file

    root = out / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(lora_state(unet), str(tmp / "lora.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scaler": None if scaler is None else scaler.state_dict()},
               tmp / "optimizer.pt")
    (tmp / "state.json").write_text(json.dumps({"step": step, **log_tail}, indent=1))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    for old in _checkpoints(out)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _load_checkpoint(folder: Path, unet, optimizer, scaler) -> dict:
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(unet, load_file(str(folder / "lora.safetensors")))
    if getattr(result, "unexpected_keys", None):
        raise InvalidArgumentError(f"checkpoint {folder} does not match this LoRA configuration")
    states = torch.load(folder / "optimizer.pt", map_location="cpu", weights_only=False)
    optimizer.load_state_dict(states["optimizer"])
    if scaler is not None and states.get("scaler") is not None:
        scaler.load_state_dict(states["scaler"])
    return json.loads((folder / "state.json").read_text())


# ------------------------------------------------------------------------------------------ training


def _training_scheduler(adapter):
    """The DDPM noise table of the model's own scheduler config (its training noise)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(adapter.scheduler.config)


def _config_json(cfg: AradConfig) -> dict[str, Any]:
    d = dataclasses.asdict(cfg)
    d["targets"] = list(cfg.targets)
    return d


def train_arad(cfg: AradConfig) -> Path:
    """Run (or resume) ARAD fine-tuning; returns the saved LoRA file."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from .. import load
    from ..models import Window

    cfg.validate()
    out = Path(cfg.out)
    accelerator = Accelerator(
        mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
        cpu=cfg.device == "cpu",
    )
    rank, world = accelerator.process_index, accelerator.num_processes
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and world == 1:  # each process would train alone and all would write to one folder
        raise InvalidArgumentError(
            f"{launched} processes were launched but accelerate set up no distributed training; "
            "without GPUs pass --device cpu (gloo backend)"
        )
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    if not cfg.resume and (_checkpoints(out) or (out / LORA_FILE).exists()):
        raise InvalidArgumentError(f"{out} already holds a run; resume it, or choose another output folder")
    adapter = load(cfg.model, family=cfg.family, dtype=weight_dtype, device=str(accelerator.device))
    if adapter.family not in FAMILIES:
        raise InvalidArgumentError(f"ARAD trains U-Net models ({', '.join(FAMILIES)}), not {adapter.family}")
    native = max(adapter.native_size)
    buckets = parse_buckets(cfg.buckets, adapter.size_multiple) if cfg.buckets else scaled_buckets(native, adapter.size_multiple)
    min_side = native // 2 if cfg.min_side is None else cfg.min_side
    data = scan(cfg.data, buckets, min_side=min_side, rule=cfg.bucket_rule)

    pipe, unet = adapter.pipe, adapter.network
    for module in (pipe.vae, getattr(pipe, "text_encoder", None), getattr(pipe, "text_encoder_2", None)):
        if module is not None:
            module.requires_grad_(False)
    params = add_lora(unet, cfg)
    optimizer = torch.optim.Adam(params, lr=cfg.lr)  # the paper's optimiser; constant LR
    model, optimizer = accelerator.prepare(unet, optimizer)
    scaler = getattr(accelerator, "scaler", None)
    noise_table = _training_scheduler(adapter)
    prediction = adapter.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise InvalidArgumentError(f"ARAD trains epsilon or v-prediction models, not {prediction}")

    start = 0
    if cfg.resume and _checkpoints(out):
        latest = _checkpoints(out)[-1]
        start = _load_checkpoint(latest, unet, optimizer, scaler)["step"]
        if accelerator.is_main_process and cfg.progress:
            print(f"resuming from {latest} (step {start})")
    if start >= cfg.steps and (out / LORA_FILE).is_file():
        return out / LORA_FILE

    loader = torch.utils.data.DataLoader(
        _StepBatches(data, cfg, start * cfg.grad_accum, cfg.steps * cfg.grad_accum, rank, world),
        batch_size=None, shuffle=False, num_workers=cfg.workers,
    )
    log_path = out / "train_log.jsonl"
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    step, losses, load_skips = start, [], {}
    bar = tqdm(total=cfg.steps, initial=start, desc="arad", disable=not (cfg.progress and accelerator.is_main_process))
    model.train()
    for item in loader:
        micro = item["micro"]
        load_skips = item["skipped_at_load"]
        pixels = item["pixels"].to(accelerator.device)
        g = torch.Generator("cpu").manual_seed(_seed_of(cfg.seed, micro, rank, 0x5EED))
        with torch.no_grad():
            latents = adapter.encode(pixels, generator=g, tiled=False).to(weight_dtype)
            embeds = adapter.encode_prompt(item["captions"], None, guidance_scale=1.0).positive
        n, _, h, w = latents.shape
        noise = torch.randn(latents.shape, generator=g, dtype=torch.float32).to(latents.device, weight_dtype)
        t = torch.randint(0, noise_table.config.num_train_timesteps, (n,), generator=g).to(latents.device)
        noisy = noise_table.add_noise(latents, noise, t)
        target = noise if prediction == "epsilon" else noise_table.get_velocity(latents, noise, t)
        with accelerator.accumulate(model), accelerator.autocast():
            # through the prepared (DDP) module, with the family's extra inputs (SDXL time ids)
            extra = adapter._unet_kwargs(embeds, Window.full(h, w), n)
            pred = model(noisy, t, encoder_hidden_states=embeds.embeds, return_dict=False, **extra)[0]
            loss = torch.nn.functional.mse_loss(pred.float(), target.float())
            accelerator.backward(loss)
            if accelerator.sync_gradients and cfg.grad_clip > 0:
                accelerator.clip_grad_norm_(params, cfg.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if not accelerator.sync_gradients:
            continue
        step += 1
        bar.update()
        if step % cfg.log_every == 0 or step == cfg.steps:
            mean = sum(losses) / len(losses)
            bar.set_postfix(loss=f"{mean:.4f}")
            if accelerator.is_main_process:
                with log_path.open("a") as f:
                    f.write(json.dumps({"step": step, "loss": mean, "bucket": str(buckets[item["bucket"]]),
                                        "seconds": round(time.perf_counter() - started, 2)}) + "\n")
            losses = []
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            accelerator.wait_for_everyone()
            if accelerator.is_main_process:
                _save_checkpoint(out, step, unet, optimizer, scaler, {"config": _config_json(cfg)}, cfg.keep_checkpoints)
    bar.close()
    accelerator.wait_for_everyone()
    lora_file = out / LORA_FILE
    if accelerator.is_main_process:
        lora_file = save_lora(pipe, accelerator.unwrap_model(model), out)
        info = {
            "config": _config_json(cfg), "model": adapter.describe(), "source": getattr(adapter, "source", None),
            "buckets": [str(b) for b in buckets], "entries_per_bucket": data.counts(),
            "skipped": {**dict(data.skipped), **load_skips}, "resumed_from": start or None,
            "seconds_this_run": round(time.perf_counter() - started, 2), "processes": world,
        }
        (out / "arad.json").write_text(json.dumps(info, indent=1, default=str))
    return lora_file


def parse_targets(text: str | Sequence[str]) -> tuple[str, ...]:
    if isinstance(text, str):
        text = text.split(",")
    return tuple(t.strip() for t in text if t.strip())
