"""Time inside modules (anysize.eval.module_timing) and the two studies built on it and on PeakMemory:
benchmarks/network_share (issue 23, goal 4) and benchmarks/gpu_memory (goal 5), on the CPU."""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from anysize.eval.module_timing import ModuleTimer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def script(study: str):
    spec = importlib.util.spec_from_file_location(study, BENCHMARKS / study / f"{study}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Sleeps(nn.Module):
    def __init__(self, seconds: float, inner: nn.Module | None = None, fail: bool = False):
        super().__init__()
        self.seconds, self.inner, self.fail = seconds, inner, fail

    def forward(self, x):
        time.sleep(self.seconds)
        if self.inner is not None:
            x = self.inner(x)
        if self.fail:
            raise ValueError("cut short")
        return x


class Owner:
    def decode(self, x):
        time.sleep(0.01)
        return x


def no_hooks(*modules: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in modules)


def test_outermost_calls_are_timed_once_and_everything_is_removed_afterwards():
    inner = Sleeps(0.01)
    outer = Sleeps(0.02, inner)  # outer calls inner, both in the group: inner is not counted again
    other = Sleeps(0.01)
    owner = Owner()
    entered = []
    timer = ModuleTimer("cpu", on_inside=entered.append)
    timer.add_modules("network", [outer, inner, None]).add_modules("vae", [other]).add_method("vae_call", owner, "decode")
    x = torch.zeros(1)
    with timer:
        time.sleep(0.02)  # before the first module call
        outer(x)
        owner.decode(x)  # between module calls: a method group is not "inside"
        outer(x)
        other(x)
        time.sleep(0.02)  # after the last
    secs = timer.seconds()
    assert timer.calls == {"network": 2, "vae": 1, "vae_call": 1}
    assert 0.06 <= secs["network"] < timer.region_seconds()
    assert secs["vae"] >= 0.01 and secs["vae_call"] >= 0.01
    assert entered == [True, False] * 3  # once per outermost module call; methods are not "inside"
    split = timer.outside_split()
    assert split["before"] >= 0.02 and split["after"] >= 0.02 and split["between"] >= 0.01  # owner.decode's sleep
    inside = secs["network"] + secs["vae"]
    assert sum(split.values()) == pytest.approx(timer.region_seconds() - inside)
    # nothing left behind: hooks removed, the method is the class's again
    assert no_hooks(outer, inner, other) and "decode" not in vars(owner)
    outer(x)
    assert timer.calls["network"] == 2
    with pytest.raises(RuntimeError, match="one region"):
        timer.__enter__()


def test_a_call_that_raises_still_closes_its_interval_and_an_error_removes_the_hooks():
    failing = Sleeps(0.01, fail=True)
    timer = ModuleTimer("cpu").add_modules("vae", [failing])
    with pytest.raises(ValueError), timer:
        for _ in range(2):
            try:
                failing(torch.zeros(1))  # as the tiled VAE's statistics pass cuts a decoder forward short
            except ValueError:
                pass
        raise ValueError("the region itself fails")
    assert timer.calls == {"vae": 2} and timer.seconds()["vae"] >= 0.02 and no_hooks(failing)


@pytest.fixture(scope="module")
def toy_adapter():
    import anysize

    return anysize.load(None)


@pytest.fixture
def toy_once(toy_adapter, monkeypatch):
    """The scripts' model builds, served by one loaded toy model."""
    from anysize import bench

    def build(name, **kw):
        assert name == "toy" and kw.get("vae", "stand-in") == "stand-in"
        return toy_adapter

    monkeypatch.setattr(bench, "build_adapter", build)
    return toy_adapter


def test_network_share_on_the_toy_model(tmp_path, toy_once):
    ns = script("network_share")
    out = tmp_path / "ns.json"
    report = ns.main(["--arch", "toy", "--size", "128x128", "--steps", "1", "--warmup", "0", "--methods", "direct",
                      "imax", "--profile-outside", "3", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert "flux" in report["skipped"]["imax"]  # a method that cannot run: a row saying why, not a crash
    (row,) = report["methods"]
    # the toy model's DPM-Solver++: 1 U-Net call for 1 step, on [uncond; cond] (2 evaluations)
    assert row["method"] == "direct" and row["network_forwards"] == 1 and row["network_evaluations"] == 2
    assert row["vae_forwards"] == 2 and row["vae_calls"] == 1  # one untiled decode: post_quant_conv, decoder
    assert 0 < row["network_s"] and 0 < row["vae_s"] <= row["vae_call_s"]
    assert 0 < row["share_pct"] < 100
    assert row["outside_s"] == pytest.approx(row["wall_s"] - row["network_s"] - row["vae_s"], abs=2e-4)
    parts = row["outside_before_s"] + row["outside_between_s"] + row["outside_after_s"]
    assert parts == pytest.approx(row["region_s"] - row["network_s"] - row["vae_s"], abs=1e-3)
    assert len(row["outside_top"]) == 3 and all(t["own_s"] >= 0 for t in row["outside_top"])
    md = out.with_suffix(".md").read_text()
    assert "| direct |" in md and "| imax | not run:" in md and "Host time outside the modules, direct" in md
    assert no_hooks(toy_once.network, toy_once.vae.decoder) and "decode" not in vars(toy_once)


def test_network_share_keeps_the_table_when_a_method_runs_out_of_memory(tmp_path, monkeypatch, toy_once):
    ns = script("network_share")
    real = ns.api.generate

    def out_of_memory_for_fstd(*a, **k):
        if k.get("method") == "fstd":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(ns.api, "generate", out_of_memory_for_fstd)
    out = tmp_path / "ns.json"
    report = ns.main(["--arch", "toy", "--size", "128x128", "--steps", "1", "--warmup", "0", "--methods", "fstd",
                      "direct", "--out", str(out)])
    assert [r["method"] for r in report["methods"]] == ["direct"]  # the method after the failure still ran
    assert report["skipped"]["fstd"].startswith("failed during the run: OutOfMemoryError: CUDA out of memory")
    assert json.loads(out.read_text()) == json.loads(json.dumps(report))
    assert "| fstd | not run: failed during the run: OutOfMemoryError" in out.with_suffix(".md").read_text()
    assert no_hooks(toy_once.network, toy_once.vae.decoder)

    def broken(*a, **k):
        raise ValueError("a bug")  # anything else is a bug: it raises

    monkeypatch.setattr(ns.api, "generate", broken)
    with pytest.raises(ValueError, match="a bug"):
        ns.main(["--arch", "toy", "--size", "128x128", "--steps", "1", "--warmup", "0", "--methods", "direct"])
    assert no_hooks(toy_once.network, toy_once.vae.decoder)


def test_gpu_memory_rows_and_an_out_of_memory_row(tmp_path, monkeypatch, toy_once):
    gm = script("gpu_memory")
    real = gm.api.generate

    def out_of_memory_for_multidiffusion(*a, **k):
        if k.get("method") == "multidiffusion":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real(*a, **k)

    monkeypatch.setattr(gm.api, "generate", out_of_memory_for_multidiffusion)
    out = tmp_path / "gm.json"
    report = gm.main(["--arch", "toy", "--size", "128x128", "--methods", "fstd", "multidiffusion", "--steps", "2",
                      "--dtype", "fp32", "--upscale-to", "256x256", "--upscale-from", "64", "--out", str(out)])
    gen, oom, up = report["rows"]
    assert gen["what"] == "fstd" and gen["error"] is None and gen["image_size"] == [128, 128]
    assert oom["error"].startswith("OutOfMemoryError: CUDA out of memory") and "network_calls" not in oom
    assert up["error"] is None and up["image_size"] == [256, 256]  # the next row ran, from a clean state
    assert up["network_calls"] == 4  # 1 step of 4 at strength 0.4, 2x2 tiles, no CFG without a prompt
    assert all(r["peak_mib"] > 0 and r["peak_kind"] == "rss" for r in report["rows"])
    md = out.with_suffix(".md").read_text()
    assert "| fstd upscale from 64² | 256x256 |" in md and "OutOfMemoryError" in md
    with pytest.raises(SystemExit):
        gm.main(["--arch", "toy", "--methods"])  # nothing to measure


def test_gpu_memory_limit_caps_the_cuda_allocator_only(capsys):
    gm = script("gpu_memory")
    with pytest.raises(SystemExit):
        gm.main(["--arch", "toy", "--methods", "fstd", "--memory-limit", "24", "--device", "cpu"])
    assert "--memory-limit caps the CUDA allocator: it needs --device cuda" in capsys.readouterr().err
