"""The opt-in runtime settings of an adapter: ``torch.compile`` of the denoiser and the SDPA kernel.

Dynamo traces a U-Net in Python, which takes seconds per graph even for a tiny one, and inductor's
C++ kernels minutes on a shared CPU; so the compiled tests run on a two-block U-Net
(:func:`_small_sd`) through a counting backend (dynamo's real tracing and guards, each graph run
as traced, and counted), and the one inductor test runs only with ``ANYSIZE_INDUCTOR_TEST=1``.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

import anysize
from anysize.errors import InvalidArgumentError, UnknownChoiceError
from anysize.models import adapt
from anysize.models.runtime import RECOMPILE_LIMIT, Runtime

STEPS = 2
NATIVE = 64  # px: latent 8 with the tiny VAE's factor 8


class CountingBackend:
    """A torch.compile backend that runs each graph as dynamo traced it and records its first input's shape."""

    __name__ = "counting"

    def __init__(self):
        self.graphs: list[tuple] = []

    def __call__(self, gm, example_inputs):
        shapes = [tuple(x.shape) for x in example_inputs if isinstance(x, torch.Tensor) and x.dim() == 4]
        self.graphs.append(shapes[0] if shapes else ())
        return gm.forward


def _small_sd(seed: int = 0):
    """The tiny SD 1.x pipeline with a smaller U-Net of the same kind: two cross-attention blocks of
    two layers, enough for HiDiffusion (a down-sampler in block 0, two attentions in block 1)."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from anysize.builders import tiny_pipeline

    pipe = tiny_pipeline("sd1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=NATIVE // 8, in_channels=4, out_channels=4,
            down_block_types=("CrossAttnDownBlock2D",) * 2, up_block_types=("CrossAttnUpBlock2D",) * 2,
            block_out_channels=(16, 32), layers_per_block=2, norm_num_groups=8, attention_head_dim=4,
            cross_attention_dim=pipe.unet.config.cross_attention_dim,
        ).eval()
    small = StableDiffusionPipeline(**{**pipe.components, "unet": unet})
    small.set_progress_bar_config(disable=True)
    return small


@pytest.fixture(scope="module")
def small():
    return _small_sd()


def _run(adapter, method="direct", size=NATIVE, **kw):
    return anysize.generate(adapter, "a red circle", width=size, height=size, method=method, steps=STEPS, seed=1,
                            output_type="latent", progress=False, **kw)


def _close(a, b, tol=1e-5):
    return (a.images - b.images).abs().max().item() <= tol


# ------------------------------------------------------------------------------------------ settings


def test_default_runtime_is_eager_and_auto(small):
    adapter = adapt(small)
    assert adapter.runtime == Runtime() and adapter.runtime.is_default
    assert adapter._compiled_call is None
    assert "runtime" not in _run(adapter).config  # a default run's config is what it was before


def test_bad_settings_are_one_line_errors_naming_the_choices(small):
    adapter = adapt(small)
    with pytest.raises(UnknownChoiceError) as e:
        adapter.set_runtime(sdpa="fast")
    assert str(e.value) == "unknown sdpa backend 'fast'; valid choices: auto, flash, efficient, cudnn, math"
    with pytest.raises(InvalidArgumentError, match="compile must be True or False, got 'yes'"):
        adapter.set_runtime(compile="yes")
    assert adapter.runtime == Runtime()  # a refused setting changes nothing
    with pytest.raises(UnknownChoiceError, match="valid choices: auto, flash"):
        anysize.load("/nonexistent/model", sdpa="Flash")  # checked before the folder is even looked at
    with pytest.raises(InvalidArgumentError, match="compile needs the weights on the device"):
        anysize.load("/nonexistent/model", compile=True, offload="model")


def test_a_kernel_this_device_cannot_run_is_refused_with_torch_reason(small):
    # torch 2.13 on a CPU runs SDPA's math and flash kernels (fp32/fp16/bf16), not efficient or cudnn
    adapter = adapt(small)
    for name in ("efficient", "cudnn"):
        with pytest.raises(InvalidArgumentError) as e:
            adapter.set_runtime(sdpa=name)
        msg = str(e.value)
        assert "\n" not in msg and msg.startswith(f"sdpa backend '{name}' cannot run on cpu in float32 (")
        assert msg.endswith("usable here: auto, flash, math")
    assert adapter.runtime.sdpa == "auto"
    for name in ("flash", "math"):
        assert adapter.set_runtime(sdpa=name).sdpa == name


def test_sdpa_math_and_flash_match_the_default_and_are_recorded(small, tmp_path):
    adapter = adapt(small)
    ref = _run(adapter)
    for name in ("math", "flash"):
        adapter.set_runtime(sdpa=name)
        out = _run(adapter)
        # another kernel rounds the softmax differently: 7.6e-6 alone, above 1e-5 in a loaded xdist
        # worker, on latents up to 6.5 in size (the flash kernel is the CPU default: 0 there)
        assert _close(out, ref, tol=1e-4), name
        assert out.config["runtime"] == {"compile": False, "sdpa": name}
    adapter.set_runtime(sdpa="auto")
    assert torch.equal(_run(adapter).images, ref.images)  # back to exactly the default path


def test_the_kernel_choice_reaches_the_attention_calls(small, monkeypatch):
    # the probe of set_runtime passes for flash on a CPU; what proves the context is open around the
    # network is that restricting to a kernel torch refuses here fails inside the run
    from anysize.models import runtime

    adapter = adapt(small)
    adapter.set_runtime(sdpa="math")
    monkeypatch.setitem(runtime.SDPA_BACKENDS, "math", "EFFICIENT_ATTENTION")
    with pytest.raises(RuntimeError, match="No viable backend"):
        _run(adapter)


def test_default_png_is_byte_identical_after_the_settings_are_turned_off(small, tmp_path):
    adapter = adapt(small)

    def png(name):
        r = anysize.generate(adapter, "a red circle", width=NATIVE, height=NATIVE, steps=1, seed=1, progress=False)
        return r.save(tmp_path / name).read_bytes()

    before = png("before.png")
    adapter.set_runtime(compile=True, sdpa="math", compile_backend=CountingBackend())
    adapter.set_runtime(compile=False, sdpa="auto")
    assert adapter._compiled_call is None
    assert png("after.png") == before


# ------------------------------------------------------------------------------------------ compiled
# one compiled adapter for all: each graph dynamo traces costs seconds, so no test traces one twice


@pytest.fixture(scope="module")
def lora_folder(small, tmp_path_factory):
    return _lora_folder(small, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="module")
def eager_refs(small, lora_folder):
    """Eager latents of every compiled scenario, from an adapter that is never compiled."""
    adapter = adapt(small)
    return {
        "direct": _run(adapter),
        "fstd": _run(adapter, "fstd", 2 * NATIVE),
        "hidiffusion": _run(adapter, "hidiffusion", 2 * NATIVE),
        "direct-2x": _run(adapter, "direct", 2 * NATIVE),
        "lora": _run(adapter, lora=str(lora_folder)),
    }


@pytest.fixture(scope="module")
def compiled(small):
    """An adapter over the same network, compiled with a counting backend, and the backend."""
    adapter = adapt(small)
    backend = CountingBackend()
    adapter.set_runtime(compile=True, compile_backend=backend)
    return adapter, backend


def test_compiled_direct_and_fstd_match_eager_and_compile_once_per_shape(compiled, eager_refs):
    import torch._dynamo

    adapter, backend = compiled
    assert torch._dynamo.config.recompile_limit >= RECOMPILE_LIMIT
    out = _run(adapter)
    assert _close(out, eager_refs["direct"])
    assert backend.graphs == [(2, 4, 8, 8)]  # [uncond; cond] at the native latent, once for both steps
    assert _close(_run(adapter), eager_refs["direct"]) and len(backend.graphs) == 1  # a second run reuses it
    tiled = _run(adapter, "fstd", 2 * NATIVE)
    assert _close(tiled, eager_refs["fstd"])
    shapes = set(backend.graphs[1:])
    assert len(backend.graphs) == 1 + len(shapes)  # each new tile batch shape compiled once, for every step
    assert all(s[-2:] == (8, 8) for s in shapes)
    n = len(backend.graphs)
    assert _close(_run(adapter, "fstd", 2 * NATIVE), eager_refs["fstd"]) and len(backend.graphs) == n
    assert out.config["runtime"] == {"compile": True, "sdpa": "auto", "compile_backend": "counting"}


def test_the_kernel_choice_is_part_of_each_compiled_graph(monkeypatch):
    # on a one-attention module (tracing a U-Net costs seconds): each kernel its own graph, and the
    # kernel restricted inside the graph, so a graph never runs another choice's kernel
    from anysize.models import runtime

    class Attend(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = torch.nn.Linear(64, 64)

        def forward(self, x):
            return torch.nn.functional.scaled_dot_product_attention(self.q(x), x, x)

    module, x = Attend(), torch.randn(1, 2, 16, 64)
    backend = CountingBackend()
    call = runtime.compiled_caller(Runtime(compile=True, compile_backend=backend))
    with torch.no_grad():
        for name in ("math", "flash", "math"):
            torch.testing.assert_close(call(module, name, (x,), {}), module(x))
        assert len(backend.graphs) == 2
        monkeypatch.setitem(runtime.SDPA_BACKENDS, "cudnn", "EFFICIENT_ATTENTION")  # torch refuses it on a CPU
        with pytest.raises(Exception, match="No viable backend|fake tensor"):
            call(module, "cudnn", (x,), {})


def test_metadata_records_the_settings(compiled, tmp_path):
    from anysize.output import infotext, parse_infotext, read_metadata, read_parameters

    adapter, _ = compiled  # the native shape: the graph of the test above, or one new one
    result = anysize.generate(adapter, "a red circle", width=NATIVE, height=NATIVE, steps=1, seed=1, progress=False)
    path = result.save(tmp_path / "x.png")
    assert read_metadata(path)["runtime"] == {"compile": True, "sdpa": "auto", "compile_backend": "counting"}
    params = parse_infotext(read_parameters(path))["params"]
    assert params["Compile"] == "counting" and "SDPA" not in params
    text = infotext({**result.config, "runtime": {"compile": False, "sdpa": "math"}})
    assert parse_infotext(text)["params"]["SDPA"] == "math" and "Compile" not in parse_infotext(text)["params"]


def test_compiled_patched_and_unpatched_runs_each_match_eager(compiled, eager_refs):
    # HiDiffusion swaps processors, hooks the U-Net and replaces a down-sampler's forward while open;
    # dynamo's guards must see each change (and its undoing) and never reuse a graph of the other state
    adapter, backend = compiled
    assert _close(_run(adapter, "direct", 2 * NATIVE), eager_refs["direct-2x"])
    plain = len(backend.graphs)
    assert _close(_run(adapter, "hidiffusion", 2 * NATIVE), eager_refs["hidiffusion"])
    assert len(backend.graphs) > plain  # the patched network is traced anew
    # the patch's graph breaks (its seeded window shifts are drawn eagerly) split the network into
    # pieces compiled one by one, and a piece the other state also runs (a resnet, an up-sampler) may
    # meet a new shape or guard in the next run of either state; from the next round on, all are kept
    for _ in range(2):
        before = len(backend.graphs)
        assert _close(_run(adapter, "direct", 2 * NATIVE), eager_refs["direct-2x"])  # unpatched again
        assert _close(_run(adapter, "hidiffusion", 2 * NATIVE), eager_refs["hidiffusion"])
    assert len(backend.graphs) == before


def _lora_folder(pipe, folder, seed=0):
    import copy

    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    unet = copy.deepcopy(pipe.unet)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # few targets: every peft layer is Python that dynamo traces
        inject_adapter_in_model(LoraConfig(r=2, lora_alpha=2, init_lora_weights="gaussian", target_modules=["to_q"]),
                                unet)
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    type(pipe).save_lora_weights(str(folder), unet_lora_layers=layers, safe_serialization=True)
    return folder


def test_compiled_runs_with_a_lora_and_after_removing_it_match_eager(compiled, eager_refs, lora_folder):
    adapter, _ = compiled
    assert not _close(eager_refs["direct"], eager_refs["lora"])  # the LoRA changes the result: the test can fail
    assert _close(_run(adapter), eager_refs["direct"])
    assert _close(_run(adapter, lora=str(lora_folder)), eager_refs["lora"])
    assert _close(_run(adapter), eager_refs["direct"])


def test_compiled_runs_with_a_controlnet_match_eager(small, compiled):
    # the ControlNet runs eagerly; its residuals enter the compiled U-Net wrapped (FittingResidual)
    from PIL import Image

    from anysize.builders.controlnet import tiny_controlnet

    net = tiny_controlnet(small)
    image = Image.fromarray(np.random.default_rng(5).integers(0, 256, (NATIVE, NATIVE, 3), dtype=np.uint8))
    control = anysize.Control(net, image, 0.8)
    ref = _run(adapt(small), control=control)
    assert not _close(ref, _run(adapt(small)))  # the control changes the result: the test can fail
    adapter, _ = compiled
    assert _close(_run(adapter, control=control), ref)


@pytest.mark.skipif(not os.environ.get("ANYSIZE_INDUCTOR_TEST"),
                    reason="inductor compiles C++ kernels: minutes on a shared CPU; set ANYSIZE_INDUCTOR_TEST=1")
def test_inductor_compiled_direct_matches_eager(small, eager_refs):
    adapter = adapt(small)
    adapter.set_runtime(compile=True)
    out = _run(adapter)
    # inductor fuses normalisations and reorders reductions: fp32 rounding, not bit equality
    np.testing.assert_allclose(out.images.numpy(), eager_refs["direct"].images.numpy(), atol=1e-3)
    assert out.config["runtime"] == {"compile": True, "sdpa": "auto", "compile_backend": "inductor"}


# ------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("command", [["generate", "a cat"], ["upscale", "in.png", "--scale", "2"],
                                     ["batch", "jobs.jsonl", "--out", "o"], ["app"], ["bench"], ["demo"]])
def test_every_command_takes_and_checks_sdpa(command, capsys, tmp_path, monkeypatch):
    from anysize import cli

    monkeypatch.chdir(tmp_path)
    rc = cli.main([*command, "--sdpa", "fast"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert err[-1] == "anysize: error: unknown sdpa backend 'fast'; valid choices: auto, flash, efficient, cudnn, math"
    assert cli.main([*command, "--compile", "--offload", "model", "--device", "cpu"] if command[0] != "bench"
                    else [*command, "--compile", "--warmup", "0"]) != 0
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--compile needs" in last, last


def test_generate_records_sdpa_and_compile_in_the_png(capsys, tmp_path, monkeypatch):
    from anysize import cli
    from anysize.builders import save_tiny_pipeline
    from anysize.output import read_metadata, read_parameters

    model = save_tiny_pipeline("sd1", tmp_path / "m")
    monkeypatch.chdir(tmp_path)
    args = ["generate", "a cat", "--model", str(model), "--steps", "1", "--size", "128x128", "--quiet"]
    assert cli.main([*args, "--out", "plain.png"]) == 0
    assert cli.main([*args, "--sdpa", "math", "--out", "math.png"]) == 0, capsys.readouterr().err
    assert "runtime" not in read_metadata("plain.png") and "SDPA" not in read_parameters("plain.png")
    assert read_metadata("math.png")["runtime"] == {"compile": False, "sdpa": "math"}
    assert "SDPA: math" in read_parameters("math.png")
