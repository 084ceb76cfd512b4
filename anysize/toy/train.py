"""Train anysize's toy text-to-image model from scratch: ``python -m anysize.toy.train --out DIR``.

The result is a complete diffusers ``StableDiffusionPipeline`` folder (safetensors):

* tokenizer: a small byte-level BPE ``CLIPTokenizer`` whose vocabulary has every toy word whole;
* text encoder: a 4-layer ``CLIPTextModel`` (width 128), trained jointly with the U-Net;
* VAE: an ``AutoencoderKL`` with factor 4 (128 px images <-> 4 x 32 x 32 latents);
* U-Net: a ``UNet2DConditionModel`` with SD 1.5's block structure — four levels, cross-attention in
  the first three down blocks and the last three up blocks, two resnets per level, the same
  down/upsamplers and a cross-attention mid block — at small widths; native latent 32 x 32;
* scheduler: SD 1.5's noise schedule (scaled-linear betas 0.00085–0.012, 1000 steps, epsilon), with
  DPM-Solver++ as the default sampler.

Two stages, both on procedurally generated data (:mod:`anysize.toy.data`):

1. the VAE, on images (L1 + a small KL term);
2. the text encoder and U-Net on latents of a fixed set of images encoded once (epsilon prediction
   with the v-prediction loss's 1/alpha_bar weighting, 10 % empty captions for classifier-free
   guidance, an EMA of the U-Net and text-encoder weights).

Everything is seeded; the run is deterministic for a given device and thread count (unless
``--time-budget-min`` cuts it, which ties the learning-rate schedule to wall time). ``--workers N``
draws the images in N processes (the same images). ``--smoke`` trains a few steps of each stage in
seconds (used by the tests).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..models import MODEL_DEFAULTS_FILE
from .data import CENTRE_JITTER, NATIVE_SIZE, SIZE_RANGE, make_sample

#: latent factor of the toy VAE and its native latent side
VAE_FACTOR = 4
NATIVE_LATENT = NATIVE_SIZE // VAE_FACTOR
TOKEN_LENGTH = 16


@dataclass
class TrainConfig:
    out: str = "toy-model"
    seed: int = 0
    threads: int = 2
    device: str = "cpu"  # or "cuda"
    workers: int = 0  # processes drawing the procedural images (0: in the training process)
    # the toy world: object side range and centre jitter (fractions of the image side)
    object_size: tuple[float, float] = SIZE_RANGE
    centre_jitter: float = CENTRE_JITTER
    # stage 1: VAE
    vae_steps: int = 600
    vae_batch: int = 16
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # stage 2: text encoder + U-Net
    dataset_size: int = 20000
    unet_steps: int = 1500
    batch: int = 48
    lr: float = 1e-3
    warmup: int = 200
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    # "eps": plain epsilon MSE, dominated by low-noise steps where the prompt hardly matters;
    # "v": epsilon MSE weighted by 1/alpha_bar (= the v-prediction loss), which gives the high-noise
    # steps, where colour, shape and layout are decided, their share (weights normalised to mean 1)
    loss_weighting: str = "v"
    unet_channels: tuple[int, ...] = (32, 64, 128, 128)
    unet_heads: tuple[int, ...] = (1, 2, 4, 4)  # head width 32 everywhere (SD 1.5: 8 heads of 40-160)
    bf16: bool = True  # bf16 autocast: ~2.5x faster on CPUs with AVX512-BF16/AMX and on GPUs
    text_width: int = 128
    text_layers: int = 4
    log_every: int = 50
    save_every: int = 1000  # also write the pipeline every N U-Net steps (an interrupted run keeps it)
    # stop stage 2 when the whole run reaches this; the learning-rate schedule then follows whichever
    # is further along, steps or time, so a run cut short still ends with a decayed learning rate
    time_budget_s: float | None = None
    save_fp16: bool = True  # ship half-precision weights (about 20 MB); they load as fp32 by default
    default_steps: int = 20  # written to anysize.json: the sampling defaults of the trained model
    default_guidance: float = 7.5
    # continue from a pipeline this script saved: its VAE (not retrained), text encoder and U-Net
    init_from: str | None = None


SMOKE = dict(vae_steps=3, vae_batch=2, dataset_size=8, unet_steps=3, batch=4, warmup=1, log_every=1,
             unet_channels=(32, 32, 32, 32), unet_heads=(1, 1, 1, 1), text_width=32, text_layers=1, save_every=0)


# ---------------------------------------------------------------------------------------------- models


def build_tokenizer():
    from ..builders.tokenizers import tiny_clip_tokenizer

    tok = tiny_clip_tokenizer(num_merges=1000)  # 1000 merges: every toy word is one token
    tok.model_max_length = TOKEN_LENGTH
    return tok


def build_models(cfg: TrainConfig, tokenizer) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(cfg.seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=cfg.text_width, intermediate_size=cfg.text_width * 4,
        num_hidden_layers=cfg.text_layers, num_attention_heads=max(1, cfg.text_width // 32),
        max_position_embeddings=TOKEN_LENGTH, hidden_act="quick_gelu", projection_dim=cfg.text_width,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 64, 64), layers_per_block=1, latent_channels=4, norm_num_groups=16,
        sample_size=NATIVE_SIZE, scaling_factor=1.0,
    )
    unet = UNet2DConditionModel(
        sample_size=NATIVE_LATENT, in_channels=4, out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=tuple(cfg.unet_channels), layers_per_block=2, norm_num_groups=16 if min(cfg.unet_channels) % 16 == 0 else 8,
        cross_attention_dim=cfg.text_width, attention_head_dim=tuple(cfg.unet_heads),  # diffusers: = heads
        flip_sin_to_cos=True, freq_shift=0, act_fn="silu",
    )
    return {"text_encoder": text_encoder, "vae": vae, "unet": unet}


def load_models(folder: str | Path) -> dict:
    """The trainable components of a pipeline saved by this script, in float32, to train further."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise SystemExit(f"--init-from {folder}: not a pipeline folder saved by this script")
    return {
        "text_encoder": CLIPTextModel.from_pretrained(folder / "text_encoder", torch_dtype=torch.float32),
        "vae": AutoencoderKL.from_pretrained(folder / "vae", torch_dtype=torch.float32),
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", torch_dtype=torch.float32),
    }


def build_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        steps_offset=1, prediction_type="epsilon", algorithm_type="dpmsolver++", solver_order=2,
    )


# ---------------------------------------------------------------------------------------------- data


def _draw_images(job: tuple) -> tuple[np.ndarray, list[str]]:
    """Images ``start .. start + n - 1`` of the dataset ``seed``: (uint8 N x H x W x 3, captions)."""
    seed, start, n, size_range, centre_jitter = job
    imgs, caps = [], []
    for i in range(start, start + n):
        img, spec = make_sample(seed, i, size_range=size_range, centre_jitter=centre_jitter)
        imgs.append(img)
        caps.append(spec.caption)
    return np.stack(imgs), caps


class _ImageSource:
    """Batches of procedural images in order, drawn by a process pool when ``workers`` > 0.

    The pool is forked before the models touch the accelerator; results do not depend on it.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.pool = None
        make_sample(0, 0, size=8, size_range=tuple(cfg.object_size), centre_jitter=cfg.centre_jitter)  # validates
        if cfg.workers > 0:
            import multiprocessing as mp

            self.pool = mp.get_context("fork").Pool(cfg.workers)

    def batches(self, seed: int, starts_and_sizes):
        jobs = [(seed, a, n, tuple(self.cfg.object_size), self.cfg.centre_jitter) for a, n in starts_and_sizes]
        results = map(_draw_images, jobs) if self.pool is None else self.pool.imap(_draw_images, jobs)
        for imgs, caps in results:
            yield torch.from_numpy(imgs).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0), caps

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


def _autocast(cfg: TrainConfig):
    return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16, enabled=cfg.bf16)


def _lr_at(step: int, cfg_lr: float, warmup: int, total: int, time_progress: float = 0.0) -> float:
    if step < warmup:
        return cfg_lr * (step + 1) / warmup
    progress = min(1.0, max((step - warmup) / max(1, total - warmup), time_progress))
    return cfg_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))  # cosine to 10 %


class _Log:
    def __init__(self, out: Path):
        self.path = out / "train_log.jsonl"
        self.t0 = time.perf_counter()

    def __call__(self, **row):
        row["elapsed_s"] = round(time.perf_counter() - self.t0, 1)
        line = json.dumps(row)
        print(line, flush=True)
        with open(self.path, "a") as f:
            f.write(line + "\n")


# ---------------------------------------------------------------------------------------------- stage 1


def train_vae(vae, cfg: TrainConfig, log: _Log, images: _ImageSource) -> None:
    vae.train()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    stream = images.batches(cfg.seed + 1, ((step * cfg.vae_batch, cfg.vae_batch) for step in range(cfg.vae_steps)))
    for step, (x, _) in enumerate(stream):  # the VAE's own image stream
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.vae_lr, min(100, cfg.vae_steps // 10 + 1), cfg.vae_steps)
        x = x.to(cfg.device)
        with _autocast(cfg):
            post = vae.encode(x).latent_dist
            rec = vae.decode(post.sample()).sample
        l1 = (rec.float() - x).abs().mean()
        kl = post.kl().mean() / x[0].numel()
        loss = l1 + cfg.vae_kl_weight * kl * x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        if step % cfg.log_every == 0 or step == cfg.vae_steps - 1:
            log(stage="vae", step=step, l1=round(l1.item(), 5), kl=round(kl.item(), 5))
    vae.eval()


@torch.no_grad()
def encode_dataset(vae, cfg: TrainConfig, images: _ImageSource) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Posterior means and stds of ``dataset_size`` images (the U-Net's training set), and captions."""
    means, stds, captions = [], [], []
    chunks = ((start, min(64, cfg.dataset_size - start)) for start in range(0, cfg.dataset_size, 64))
    for x, caps in images.batches(cfg.seed, chunks):
        with _autocast(cfg):
            post = vae.encode(x.to(cfg.device)).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
        captions += caps
    return torch.cat(means), torch.cat(stds), captions


# ---------------------------------------------------------------------------------------------- stage 2


def _ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)


LOSS_WEIGHTINGS = ("eps", "v")


def loss_weights(alphas_cumprod: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-timestep weights of the epsilon MSE, normalised to mean 1 over the timesteps."""
    if kind == "eps":
        return torch.ones_like(alphas_cumprod)
    if kind == "v":
        w = 1.0 / alphas_cumprod
        return w / w.mean()
    raise ValueError(f"unknown loss weighting {kind!r}; valid choices: {', '.join(LOSS_WEIGHTINGS)}")


def train_unet(unet, text_encoder, tokenizer, data, scaling: float, cfg: TrainConfig, log: _Log,
               save=None, deadline: float | None = None):
    from diffusers import DDPMScheduler

    means, stds, captions = data
    dev = torch.device(cfg.device)
    noise_sched = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                beta_schedule="scaled_linear")
    # the whole training set lives on the training device; batches and noise are drawn there too
    alphas = noise_sched.alphas_cumprod.to(dev)
    weights = loss_weights(alphas, cfg.loss_weighting)
    means, stds = means.to(dev), stds.to(dev)
    ids = tokenizer(captions, padding="max_length", max_length=TOKEN_LENGTH, truncation=True,
                    return_tensors="pt").input_ids.to(dev)
    empty = tokenizer([""], padding="max_length", max_length=TOKEN_LENGTH, return_tensors="pt").input_ids.to(dev)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01, fused=dev.type == "cuda")
    ema_unet, ema_text = copy.deepcopy(unet).eval(), copy.deepcopy(text_encoder).eval()
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2)
    unet.train()
    text_encoder.train()
    running = None
    t_stage = time.perf_counter()
    for step in range(cfg.unet_steps):
        time_progress = 0.0
        if deadline is not None:
            time_progress = (time.perf_counter() - t_stage) / max(1e-9, deadline - t_stage)
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, cfg.lr, cfg.warmup, cfg.unet_steps, time_progress)
        idx = torch.randint(len(means), (cfg.batch,), generator=gen, device=dev)
        z0 = (means[idx] + stds[idx] * torch.randn(means[idx].shape, generator=gen, device=dev)) * scaling
        tok = ids[idx].clone()
        drop = torch.rand(cfg.batch, generator=gen, device=dev) < cfg.caption_dropout
        tok = torch.where(drop[:, None], empty, tok)
        t = torch.randint(0, 1000, (cfg.batch,), generator=gen, device=dev)
        noise = torch.randn(z0.shape, generator=gen, device=dev)
        a = alphas[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        with _autocast(cfg):
            cond = text_encoder(tok)[0]
            pred = unet(zt, t, encoder_hidden_states=cond).sample
        per_sample = F.mse_loss(pred.float(), noise, reduction="none").mean((1, 2, 3))
        loss = (weights[t] * per_sample).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        # EMA warm-up: short runs average over what they have
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))
        _ema_update(ema_unet, unet, decay)
        _ema_update(ema_text, text_encoder, decay)
        # kept on the device: reading a loss every step would wait for the accelerator every step
        running = loss.detach() if running is None else 0.98 * running + 0.02 * loss.detach()
        last = step == cfg.unet_steps - 1
        out_of_time = deadline is not None and time.perf_counter() > deadline
        if step % cfg.log_every == 0 or last or out_of_time:
            log(stage="unet", step=step, loss=round(loss.item(), 5), loss_avg=round(running.item(), 5),
                lr=round(opt.param_groups[0]["lr"], 6))
        if save is not None and cfg.save_every and step and step % cfg.save_every == 0:
            save(ema_unet, ema_text, steps_done=step + 1)
        if out_of_time:
            log(stage="unet", stopped_early_at=step + 1, reason="time budget")
            return ema_unet, ema_text, step + 1
    return ema_unet, ema_text, cfg.unet_steps


# ---------------------------------------------------------------------------------------------- saving


def save_pipeline(out: Path, tokenizer, text_encoder, vae, unet, info: dict) -> Path:
    """Write the StableDiffusionPipeline folder atomically (built beside ``out``, then renamed)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=build_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    if info.get("recipe", {}).get("save_fp16", False):
        pipe.to(torch.float16)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "anysize_toy.json").write_text(json.dumps(info, indent=2) + "\n")
    recipe = info.get("recipe", {})
    defaults = {k: recipe[k] for k in ("default_steps", "default_guidance") if k in recipe}
    (tmp / MODEL_DEFAULTS_FILE).write_text(json.dumps(defaults, indent=2) + "\n")
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old)
    else:
        os.rename(tmp, out)
    return out


# ---------------------------------------------------------------------------------------------- main


def train(cfg: TrainConfig) -> Path:
    torch.set_num_threads(cfg.threads)
    t_start = time.perf_counter()
    deadline = None if cfg.time_budget_s is None else t_start + cfg.time_budget_s
    out = Path(cfg.out)
    work = out.with_name(f".{out.name}.work")
    work.mkdir(parents=True, exist_ok=True)
    log = _Log(work)
    log(stage="start", config=asdict(cfg), torch=torch.__version__)

    images = _ImageSource(cfg)  # forked before the models touch the accelerator
    tokenizer = build_tokenizer()
    built = build_models(cfg, tokenizer) if cfg.init_from is None else load_models(cfg.init_from)
    models = {k: m.to(cfg.device) for k, m in built.items()}
    vae, unet, text_encoder = models["vae"], models["unet"], models["text_encoder"]
    log(stage="models", params={k: sum(p.numel() for p in m.parameters()) for k, m in models.items()},
        init_from=cfg.init_from)

    if cfg.init_from is None:
        train_vae(vae, cfg, log, images)
    vae.eval().requires_grad_(False)
    data = encode_dataset(vae, cfg, images)
    images.close()
    latent_std = data[0].std().item()
    if cfg.init_from is None:
        vae.register_to_config(scaling_factor=1.0 / latent_std)
    scaling = vae.config.scaling_factor  # a continued run keeps the scale its U-Net was trained with
    log(stage="latents", n=len(data[2]), std=round(latent_std, 5), scaling_factor=round(scaling, 5))

    previous = {}
    if cfg.init_from is not None and (Path(cfg.init_from) / "anysize_toy.json").is_file():
        previous = json.loads((Path(cfg.init_from) / "anysize_toy.json").read_text())

    def info(steps_done: int) -> dict:
        return {"recipe": asdict(cfg), "unet_steps_done": steps_done, "continued_from": previous or None,
                "train_seconds": round(time.perf_counter() - t_start, 1),
                "threads": cfg.threads, "device": cfg.device, "torch": torch.__version__}

    def save(ema_unet, ema_text, steps_done):
        cpu = [copy.deepcopy(m).cpu() for m in (ema_text, vae, ema_unet)]  # training goes on
        save_pipeline(out, tokenizer, *cpu, info(steps_done))
        log(stage="saved", path=str(out), steps_done=steps_done)

    ema_unet, ema_text, done = train_unet(unet, text_encoder, tokenizer, data, scaling, cfg, log, save, deadline)
    save(ema_unet, ema_text, done)
    shutil.copy(work / "train_log.jsonl", out / "train_log.jsonl")
    shutil.rmtree(work, ignore_errors=True)
    return out


def parse_args(argv=None) -> TrainConfig:
    ap = argparse.ArgumentParser(
        prog="python -m anysize.toy.train",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    defaults = TrainConfig()
    ap.add_argument("--out", default=defaults.out, help="folder of the trained pipeline (default: %(default)s)")
    ap.add_argument("--device", default=defaults.device, help="cpu or cuda (default: %(default)s)")
    for f in ("seed", "threads", "workers", "vae_steps", "vae_batch", "dataset_size", "unet_steps", "batch", "warmup",
              "log_every", "save_every"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=int, default=getattr(defaults, f))
    for f in ("vae_lr", "lr", "ema_decay", "caption_dropout"):
        ap.add_argument(f"--{f.replace('_', '-')}", type=float, default=getattr(defaults, f))
    ap.add_argument("--loss-weighting", choices=LOSS_WEIGHTINGS, default=defaults.loss_weighting,
                    help="eps: plain epsilon MSE; v: weighted by 1/alpha_bar like the v-prediction loss "
                    "(more weight on the high-noise steps that decide layout and colour) (default: %(default)s)")
    ap.add_argument("--object-size", type=float, nargs=2, metavar=("LOW", "HIGH"), default=list(defaults.object_size),
                    help="object side range as fractions of the image side (default: %(default)s)")
    ap.add_argument("--centre-jitter", type=float, default=defaults.centre_jitter,
                    help="largest offset of the object centre from the image centre, as a fraction of the side "
                    "(default: %(default)s)")
    ap.add_argument("--unet-channels", type=int, nargs=4, default=list(defaults.unet_channels))
    ap.add_argument("--unet-heads", type=int, nargs=4, default=list(defaults.unet_heads))
    ap.add_argument("--no-bf16", dest="bf16", action="store_false", help="train in float32 (slower)")
    ap.add_argument("--save-fp32", dest="save_fp16", action="store_false", help="save float32 weights (2x larger)")
    ap.add_argument("--default-steps", type=int, default=defaults.default_steps)
    ap.add_argument("--default-guidance", type=float, default=defaults.default_guidance)
    ap.add_argument("--time-budget-min", type=float, default=None,
                    help="stop the U-Net stage when the whole run reaches this many minutes; the learning rate then "
                    "decays with whichever is further along, steps or time")
    ap.add_argument("--init-from", metavar="DIR", default=None,
                    help="continue training a pipeline this script saved (its VAE is kept as it is; use another "
                    "--seed for fresh batches and images)")
    ap.add_argument("--smoke", action="store_true", help="a few steps of everything, tiny widths (seconds)")
    a = ap.parse_args(argv)
    values = {k: v for k, v in vars(a).items() if k not in ("smoke", "time_budget_min")}
    values["unet_channels"] = tuple(values["unet_channels"])
    values["unet_heads"] = tuple(values["unet_heads"])
    values["object_size"] = tuple(values["object_size"])
    values["time_budget_s"] = None if a.time_budget_min is None else a.time_budget_min * 60
    cfg = TrainConfig(**values)
    if a.smoke:
        cfg = TrainConfig(**{**asdict(cfg), **SMOKE})
    return cfg


def main(argv=None) -> int:
    cfg = parse_args(argv)
    path = train(cfg)
    print(f"saved {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
