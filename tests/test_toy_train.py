"""A few-step training smoke run: the trainer writes a complete SD 1.5-structured pipeline that loads
through the real from_pretrained path and generates. Full training never runs here."""

from __future__ import annotations

import json
from dataclasses import asdict

import pytest
import torch

import anysize
from anysize.errors import InvalidArgumentError
from anysize.toy.train import NATIVE_LATENT, SMOKE, TrainConfig, parse_args, train

SD15_DOWN = ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
SD15_UP = ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3


@pytest.fixture(scope="module")
def smoke_model(tmp_path_factory):
    out = tmp_path_factory.mktemp("toy") / "model"
    cfg = TrainConfig(**{**asdict(TrainConfig()), **SMOKE, "out": str(out), "threads": 1})
    return train(cfg)


def test_smoke_run_writes_a_loadable_sd15_structured_pipeline(smoke_model):
    index = json.loads((smoke_model / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert list(smoke_model.glob("unet/*.safetensors")) and not list(smoke_model.rglob("*.bin"))
    info = json.loads((smoke_model / "anysize_toy.json").read_text())
    assert info["unet_steps_done"] == SMOKE["unet_steps"]
    assert (smoke_model / "train_log.jsonl").is_file()
    from safetensors import safe_open

    with safe_open(str(next(smoke_model.glob("unet/*.safetensors"))), "pt") as f:  # shipped in half precision
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}

    adapter = anysize.load(smoke_model)
    unet = adapter.network
    assert adapter.dtype == torch.float32  # half-precision files load as fp32 unless asked
    assert (adapter.default_steps, adapter.default_guidance) == (20, 7.5)  # from anysize.json
    assert adapter.family == "sd1"
    assert tuple(unet.config.down_block_types) == SD15_DOWN and tuple(unet.config.up_block_types) == SD15_UP
    assert unet.config.layers_per_block == 2 and unet.config.mid_block_type == "UNetMidBlock2DCrossAttn"
    assert adapter.vae_factor == 4 and adapter.native_latent_size == (NATIVE_LATENT, NATIVE_LATENT)
    assert adapter.native_size == (128, 128)
    # the VAE's scaling factor was fitted to the latents (not SD's 0.18215 or the placeholder 1.0)
    assert adapter.vae.config.scaling_factor not in (1.0, 0.18215)

    result = anysize.generate(adapter, "a red circle on a white background", steps=2, seed=0, progress=False)
    assert result.image.size == (128, 128)
    again = anysize.generate(adapter, "a red circle on a white background", steps=2, seed=0, progress=False)
    assert result.image.tobytes() == again.image.tobytes()


def test_trainer_options_parse():
    cfg = parse_args(["--out", "x", "--unet-steps", "7", "--lr", "0.0005", "--time-budget-min", "2", "--no-bf16"])
    assert cfg.out == "x" and cfg.unet_steps == 7 and cfg.lr == 0.0005 and cfg.time_budget_s == 120 and not cfg.bf16
    smoke = parse_args(["--smoke"])
    assert smoke.unet_steps == SMOKE["unet_steps"] and smoke.unet_channels == SMOKE["unet_channels"]


def test_continue_training_keeps_the_vae_and_records_the_parent(smoke_model, tmp_path):
    out = tmp_path / "continued"
    cfg = TrainConfig(**{**asdict(TrainConfig()), **SMOKE, "out": str(out), "threads": 1, "seed": 1,
                         "init_from": str(smoke_model)})
    train(cfg)
    info = json.loads((out / "anysize_toy.json").read_text())
    assert info["continued_from"]["unet_steps_done"] == SMOKE["unet_steps"]
    assert '"stage": "vae"' not in (out / "train_log.jsonl").read_text()  # the VAE is not retrained
    parent, child = anysize.load(smoke_model), anysize.load(out)
    assert child.vae.config.scaling_factor == parent.vae.config.scaling_factor
    for a, b in zip(parent.vae.parameters(), child.vae.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, b) for a, b in zip(parent.network.parameters(), child.network.parameters()))
    assert parse_args(["--init-from", "x"]).init_from == "x"


def test_loss_weightings():
    from diffusers import DDPMScheduler

    from anysize.toy.train import loss_weights

    a = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    assert torch.equal(loss_weights(a, "eps"), torch.ones(1000))
    v = loss_weights(a, "v")
    assert v.mean().item() == pytest.approx(1.0)
    assert bool((v[1:] > v[:-1]).all())  # noisier steps weigh more
    assert v[999] / v[0] == pytest.approx(a[0] / a[999])  # exactly the v-prediction loss's 1/alpha_bar
    with pytest.raises(ValueError, match="valid choices: eps, v"):
        loss_weights(a, "snr")
    assert parse_args(["--loss-weighting", "v"]).loss_weighting == "v"


def test_image_workers_draw_the_same_batches_in_the_same_order():
    from anysize.toy.train import _ImageSource

    jobs = [(0, 3), (3, 2), (40, 4)]
    cfg = TrainConfig(object_size=(0.4, 0.5), centre_jitter=0.03)
    inline = _ImageSource(cfg)
    pooled = _ImageSource(TrainConfig(**{**asdict(cfg), "workers": 2}))
    try:
        for (xa, ca), (xb, cb) in zip(inline.batches(5, jobs), pooled.batches(5, jobs), strict=True):
            assert ca == cb and torch.equal(xa, xb)
            assert xa.dtype == torch.float32 and -1 <= xa.min() and xa.max() <= 1
    finally:
        pooled.close()
    with pytest.raises(InvalidArgumentError, match="object size range"):
        _ImageSource(TrainConfig(object_size=(0.6, 0.3)))
    cfg = parse_args(["--workers", "3", "--object-size", "0.4", "0.7", "--centre-jitter", "0.05"])
    assert cfg.workers == 3 and cfg.object_size == (0.4, 0.7) and cfg.centre_jitter == 0.05


def test_learning_rate_follows_steps_or_time_whichever_is_further():
    from anysize.toy.train import _lr_at

    assert _lr_at(0, 1.0, 10, 100) == pytest.approx(0.1)  # warm-up
    assert _lr_at(10, 1.0, 10, 100) == pytest.approx(1.0)  # cosine from the top ...
    assert _lr_at(99, 1.0, 10, 100) == pytest.approx(0.1, abs=1e-3)  # ... to 10 %
    # a time budget that is 90 % spent at step 20 of 100 puts the schedule near its end
    assert _lr_at(20, 1.0, 10, 100, time_progress=0.9) == pytest.approx(_lr_at(91, 1.0, 10, 100), rel=1e-6)
    assert _lr_at(20, 1.0, 10, 100, time_progress=2.0) == pytest.approx(0.1)  # never below the floor
    assert _lr_at(50, 1.0, 10, 100, time_progress=0.1) == _lr_at(50, 1.0, 10, 100)  # steps lead
