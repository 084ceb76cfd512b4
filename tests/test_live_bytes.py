"""anysize.eval.live_bytes and benchmarks/gpu_memory/activation_peak.py: the activation peak of a network
call from shapes alone, checked against hand counts and against the same call on real CPU tensors."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from anysize.eval.live_bytes import FlashAttentionMemory, LiveBytes, module_bytes

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_memory" / "activation_peak.py"


def activation_peak():
    spec = importlib.util.spec_from_file_location("activation_peak", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_live_bytes_counts_allocations_while_they_live(device):
    x = torch.zeros(1, 4, 64, 64, device=device)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1, device=device)
    one = 8 * 64 * 64 * 4  # an 8-channel 64² float32 map
    with torch.no_grad(), LiveBytes() as m:
        a = conv(x)
        b = a.relu()
        del a  # freed: the next allocation reuses its share of the peak
        view = b.view(-1)  # a view allocates nothing
        b.mul_(2)  # nor does an in-place op
        c = b + 1
        assert m.live == 2 * one
    assert (m.peak, m.allocations) == (2 * one, 3)
    del b, c, view
    assert m.live == 0  # weights and inputs made before the region are not the region's


def test_flash_attention_memory_has_no_score_matrix():
    q = torch.empty(2, 8, 4096, 64, device="meta", dtype=torch.float16)
    with torch.no_grad(), LiveBytes() as math:
        F.scaled_dot_product_attention(q, q, q)
    with torch.no_grad(), FlashAttentionMemory(), LiveBytes() as flash:
        out = F.scaled_dot_product_attention(query=q, key=q, value=q[..., :32])  # keywords, as diffusers calls it
    assert out.shape == (2, 8, 4096, 32)
    assert flash.peak == 2 * 8 * 4096 * 32 * 2 + 2 * 8 * 4096 * 4  # the output and a float32 log-sum-exp
    assert math.peak > 2 * 8 * 4096 * 4096 * 2  # the math form holds the 4096 x 4096 scores


@pytest.mark.parametrize("family", ["sd1", "sdxl", "flux"])
def test_the_meta_estimate_is_the_same_calls_peak_on_real_tensors(family):
    from anysize.builders import tiny_pipeline
    from anysize.models import adapt

    real = adapt(tiny_pipeline(family))
    meta = adapt(tiny_pipeline(family).to("meta"))
    c = real.latent_channels
    x, t = torch.randn(1, c, 48, 64), torch.tensor(500.0 if real.scheduler_kind == "diffusion" else 0.5)
    peaks = []
    for adapter, dev in ((real, "cpu"), (meta, "meta")):
        cond = adapter.encode_prompt(["a cat"], None, guidance_scale=7.5)
        xd, td = x.to(dev), t.to(dev)  # the inputs exist before the call, as in a run
        with torch.no_grad(), FlashAttentionMemory(), LiveBytes() as m:
            out = adapter.predict(xd, td, cond.positive)
        assert out.shape == x.shape
        peaks.append(m.peak)
    # the same tensors, allocated and freed in the same order (meta only adds a few scalar conversions)
    assert peaks[1] == pytest.approx(peaks[0], rel=0.01)


def test_module_bytes_counts_a_shared_parameter_once():
    lin = torch.nn.Linear(10, 10, device="meta", dtype=torch.float16)
    net = torch.nn.Sequential(lin, lin)
    assert module_bytes(net) == (100 + 10) * 2


def test_the_script_rows_batch_and_size_scaling(tmp_path):
    ap = activation_peak()
    out = tmp_path / "ap.json"
    report = ap.main(["--archs", "sdxl", "flux", "--reduced", "--sizes", "512x512", "1024x1024", "--batch", "1", "2",
                      "--npa", "--out", str(out)])
    rows = {(r["arch"], r["width"], r["batch"], r["npa"]): r["peak_bytes"] for r in report["rows"]}
    # FLUX has no CFG call to batch; NPA is estimated on the U-Nets only
    assert sorted(k for k in rows if k[0] == "flux") == [("flux", 512, 1, False), ("flux", 1024, 1, False)]
    assert ("sdxl", 1024, 2, True) in rows
    for w in (512, 1024):
        assert rows[("sdxl", w, 2, False)] == pytest.approx(2 * rows[("sdxl", w, 1, False)], rel=0.05)
    # the convolutions' maps dominate: 4x the area, about 4x the activations
    assert 3.5 < rows[("sdxl", 1024, 1, False)] / rows[("sdxl", 512, 1, False)] < 4.5
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    md = out.with_suffix(".md").read_text()
    assert "| sdxl | 1024x1024 | CFG batched (2), NPA |" in md and "| flux | 512x512 | one call (1, no CFG) |" in md
    assert report["weights_bytes"]["sdxl"]["vae"] > 100 * 2**20  # the released VAE layout, counted (fp16)
