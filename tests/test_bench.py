"""anysize bench: timing harness, exact network-call counts, real-architecture builders, CLI."""

from __future__ import annotations

import json

import pytest
import torch

import anysize
from anysize import bench, cli
from anysize.errors import InvalidArgumentError, InvalidSizeError, UnknownChoiceError
from anysize.eval import timing
from anysize.models import adapt

# direct with classifier-free guidance calls the network on [uncond; cond]: 2 evaluations per step
CFG_FACTOR = {"sd1": 2, "sd2": 2, "sdxl": 2, "sd3": 2, "flux": 1}  # FLUX.1-dev: distilled guidance, no CFG


# network evaluations per image for 3 steps: the SD 1.5 PNDM (PLMS) scheduler evaluates its first
# timestep twice (diffusers gives it steps + 1 timesteps); every other scheduler one per step
SCHEDULER_EVALS = {"sd1": 4, "sd2": 3, "sdxl": 3, "sd3": 3, "flux": 3}


@pytest.mark.parametrize("family", sorted(CFG_FACTOR))
def test_direct_network_calls_are_steps_times_cfg(tiny, family):
    from anysize.schedulers import make_scheduler

    adapter = adapt(tiny(family))
    assert len(adapter.set_timesteps(make_scheduler(adapter, None), 3, (16, 16))) == SCHEDULER_EVALS[family]
    rec = bench.bench_one(adapter, methods=["direct"], width=128, height=128, steps=3, repeats=1, warmup=0)
    (row,) = [m for m in rec["methods"] if m["method"] == "direct"]
    assert row["network_calls"] == SCHEDULER_EVALS[family] * CFG_FACTOR[family]
    assert row["ratio_to_direct"] == 1.0
    assert row["seconds"] > 0 and row["peak_memory_mib"] > 0


def test_guidance_one_halves_the_calls(tiny):
    adapter = adapt(tiny("sd1"))
    rec = bench.bench_one(adapter, methods=["direct"], width=128, height=128, steps=3, guidance=1.0,
                          repeats=1, warmup=0)
    assert rec["methods"][0]["network_calls"] == SCHEDULER_EVALS["sd1"]


def test_every_registered_method_is_benched_and_direct_comes_first(tiny):
    from anysize import methods

    adapter = adapt(tiny("sd1"))
    rec = bench.bench_one(adapter, methods=None, width=128, height=128, steps=2, repeats=1, warmup=0)
    benched = [m["method"] for m in rec["methods"]]
    assert benched[0] == "direct"
    assert sorted(benched + list(rec["skipped"])) == methods.names()


def test_alternate_interleaves_and_reverses():
    order = []
    t = timing.alternate({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert len(t.seconds["a"]) == 3 and len(t.peak_bytes["b"]) == 3


def test_alternate_drops_a_candidate_out_of_memory_and_times_the_others():
    order = []

    def big():
        order.append("b")
        if len(order) > 2:  # its warm-up fits, its first timed run does not
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 8.00 GiB\nmore detail")
        return "B"

    t = timing.alternate({"a": lambda: order.append("a") or "A", "b": big}, repeats=3, warmup=1,
                         drop_out_of_memory=True)
    assert order == ["a", "b", "a", "b", "a", "a"]  # b leaves the rounds after its failure
    assert t.failed == {"b": "CUDA out of memory. Tried to allocate 8.00 GiB"}
    assert list(t.seconds) == ["a"] and len(t.seconds["a"]) == 3 and "b" not in t.results
    # without the switch (and for any other error) the failure is the caller's
    order.clear()
    with pytest.raises(torch.OutOfMemoryError):
        timing.alternate({"a": lambda: order.append("a"), "b": big}, repeats=3, warmup=1)
    with pytest.raises(ZeroDivisionError):
        timing.alternate({"a": lambda: 1 / 0}, repeats=1, warmup=0, drop_out_of_memory=True)


def test_bench_keeps_the_table_when_a_method_runs_out_of_memory(tiny, monkeypatch):
    from anysize.methods import METHODS
    from anysize.methods.direct import Direct

    class TooBig(Direct):
        name = "test-too-big"
        summary = "out of memory on every run (test only)"

        def predict(self, ctx, x_in):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")

    monkeypatch.setitem(METHODS, TooBig.name, TooBig)
    adapter = adapt(tiny("sd1"))
    rec = bench.bench_one(adapter, methods=["test-too-big", "fstd"], width=128, height=128, steps=2, repeats=2,
                          warmup=1)
    assert [m["method"] for m in rec["methods"]] == ["direct", "fstd"]
    assert rec["skipped"]["test-too-big"].startswith(
        "failed during the run: out of memory on cpu generating 1 128x128 image with test-too-big (CUDA out of memory.")
    table = bench.format_table({"results": [{"architecture": "tiny", **rec}], "machine": timing.machine(), "config": {
        "steps": 2, "repeats": 2, "warmup": 1, "reduced": True, "dtype": "float32"}})
    assert "| tiny | 128x128 | test-too-big | not run¹ | | | |" in table
    assert "¹ test-too-big at 128x128: failed during the run: out of memory" in table


def test_peak_memory_sees_an_allocation():
    with timing.PeakMemory("cpu") as small:
        pass
    with timing.PeakMemory("cpu") as big:
        x = torch.ones(64 * 2**20, dtype=torch.uint8)  # 64 MiB, touched
        x += 1
    assert big.kind == "rss" and big.peak_bytes > 0
    if big.reset:  # Linux: each region measures its own peak
        assert big.peak_bytes - small.peak_bytes > 32 * 2**20


def test_bench_sizes():
    assert bench.parse_bench_size("native", (128, 256), 8) == (256, 128)
    assert bench.parse_bench_size("2x", (128, 128), 8) == (256, 256)
    assert bench.parse_bench_size("1.5x", (100, 100), 8) == (152, 152)
    assert bench.parse_bench_size("320x192") == (320, 192)
    for bad in ("0x", "abc", "0x128", "-2x"):
        with pytest.raises(InvalidSizeError):
            bench.parse_bench_size(bad)


def test_unknown_architecture():
    with pytest.raises(UnknownChoiceError, match="sd1.5"):
        bench.bench(["sd9"])


@pytest.mark.parametrize("reduced", [True, False])
def test_real_architecture_configs(reduced):
    """The published configurations, built on the meta device (no memory, no time)."""
    from anysize.bench import build_architecture as build_pipeline

    def net(name):
        pipe = build_pipeline(name, reduced=reduced, device="meta")
        return pipe, (pipe.unet if hasattr(pipe, "unet") else pipe.transformer).config

    pipe, c = net("sd1.5")
    assert (tuple(c.block_out_channels), c.attention_head_dim, c.cross_attention_dim) == ((320, 640, 1280, 1280), 8, 768)
    assert c.layers_per_block == (1 if reduced else 2) and not c.use_linear_projection
    assert adapt(pipe).native_size == (512, 512)
    pipe, c = net("sd2.1")
    assert (tuple(c.attention_head_dim), c.cross_attention_dim, c.use_linear_projection) == ((5, 10, 20, 20), 1024, True)
    assert pipe.scheduler.config.prediction_type == "v_prediction" and adapt(pipe).native_size == (768, 768)
    pipe, c = net("sdxl")
    assert (tuple(c.block_out_channels), c.cross_attention_dim, c.addition_embed_type) == ((320, 640, 1280), 2048, "text_time")
    assert tuple(c.transformer_layers_per_block) == ((1, 1, 2) if reduced else (1, 2, 10))
    assert c.projection_class_embeddings_input_dim == 6 * 256 + 1280 and adapt(pipe).native_size == (1024, 1024)
    pipe, c = net("sd3")
    assert (c.num_attention_heads, c.attention_head_dim, c.joint_attention_dim, c.pooled_projection_dim) == (24, 64, 4096, 2048)
    assert c.num_layers == (2 if reduced else 24) and adapt(pipe).native_size == (1024, 1024)
    pipe, c = net("flux")
    assert (c.num_attention_heads, c.attention_head_dim, tuple(c.axes_dims_rope), c.guidance_embeds) == (24, 128, (16, 56, 56), True)
    assert (c.num_layers, c.num_single_layers) == ((1, 2) if reduced else (19, 38))
    assert adapt(pipe).native_size == (1024, 1024)


# denoiser parameters in millions: the published sizes (860M, 865M, 2.6B, 2B, 12B) and the reduced ones
PARAMS_M = {"sd1.5": (860, 579), "sd2.1": (866, 583), "sdxl": (2567, 575), "sd3": (2028, 159), "flux": (11901, 687)}


def test_architectures_are_drawn_in_the_requested_dtype():
    from anysize.bench import build_architecture as build_pipeline

    pipe = build_pipeline("sd3", reduced=True, device="meta", dtype=torch.bfloat16)
    assert pipe.transformer.dtype == torch.bfloat16 and torch.get_default_dtype() == torch.float32


@pytest.mark.parametrize("name", sorted(PARAMS_M))
def test_real_architecture_sizes(name):
    from anysize.bench import build_architecture as build_pipeline

    for reduced, expected in zip((False, True), PARAMS_M[name]):
        pipe = build_pipeline(name, reduced=reduced, device="meta")
        net = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        assert round(sum(p.numel() for p in net.parameters()) / 1e6) == expected


def test_bench_cli_writes_json_and_markdown(capsys, tmp_path):
    out = tmp_path / "b.json"
    rc = cli.main(["bench", "--arch", "toy", "--size", "native", "--steps", "2", "--repeats", "1",
                   "--methods", "direct", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(out.read_text())
    (res,) = report["results"]
    assert res["architecture"] == "toy" and res["width"] == 128
    assert res["methods"][0]["network_calls"] == 2 * 2
    md = out.with_suffix(".md").read_text()
    assert "| toy | 128x128 | direct |" in md and "Machine:" in md
    assert "| toy | 128x128 | direct |" in captured.out
    # no overwrite without --force
    rc = cli.main(["bench", "--arch", "toy", "--steps", "1", "--repeats", "1", "--out", str(out)])
    assert rc == 2 and "--force" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["bench", "--arch", "sd9"], "unknown architecture 'sd9'; valid choices: flux, sd1.5"),
    (["bench", "--methods", "nope"], "unknown method 'nope'"),
    (["bench", "--size", "big"], "is not 'native'"),
    (["bench", "--steps", "0"], "--steps must be a positive integer"),
    (["bench", "--repeats", "0"], "--repeats must be a positive integer"),
    (["bench", "--out", "x.txt"], "must end in .json"),
    (["bench", "--versus", "scalediff"], "must be two different methods as A:B"),
    (["bench", "--versus", "scalediff:nope"], "unknown method 'nope'"),
    (["bench", "--vae", "real"], "unknown vae 'real'; valid choices: released, stand-in"),
    (["bench", "--vae", "released"], "--vae released is for the real architectures"),
])
def test_bench_cli_bad_input(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(bench, "build_adapter", lambda *a, **k: pytest.fail("loaded a model"))
    rc = cli.main(args)
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1


def test_ratios_and_calls_of_another_method(tiny, monkeypatch):
    """A registered method that evaluates the network twice per step: 2x the calls; its own ratio row."""
    from anysize.methods import registry
    from anysize.methods.base import Method

    class Twice(Method):
        name = "twice-test"
        summary = "direct, evaluated twice per step (test only)"

        def predict(self, ctx, x_in):
            ctx.adapter.predict_guided(x_in, ctx.t, ctx.cond)
            return ctx.adapter.predict_guided(x_in, ctx.t, ctx.cond)

    class SD3Only(Method):
        name = "sd3-only-test"
        summary = "refuses other families (test only)"
        families = ("sd3",)

    monkeypatch.setitem(registry.METHODS, Twice.name, Twice)
    monkeypatch.setitem(registry.METHODS, SD3Only.name, SD3Only)
    adapter = adapt(tiny("sdxl"))
    rec = bench.bench_one(adapter, methods=None, width=128, height=128, steps=2, repeats=2, warmup=0)
    rows = {m["method"]: m for m in rec["methods"]}
    assert rows["twice-test"]["network_calls"] == 2 * rows["direct"]["network_calls"] == 2 * 2 * 2
    # no timing claims in unit tests: only that the ratio is this method's median over direct's
    assert len(rows["twice-test"]["seconds_all"]) == 2
    ratio = rows["twice-test"]["seconds"] / rows["direct"]["seconds"]
    assert rows["twice-test"]["ratio_to_direct"] == pytest.approx(ratio, rel=0.02)
    assert "sd3-only-test" in rec["skipped"] and "supports sd3" in rec["skipped"]["sd3-only-test"]
    table = bench.format_table({"results": [{"architecture": "tiny-sdxl", **rec}], "machine": timing.machine(),
                                "config": {"dtype": "float32", "steps": 2, "repeats": 2, "warmup": 1, "reduced": True}})
    assert "| tiny-sdxl | 128x128 | twice-test |" in table


def test_a_method_that_cannot_run_at_the_settings_says_why_and_the_others_are_measured(tiny):
    """Issue 24.1: a method that cannot run at the settings used to abort the whole bench (there:
    scalediff at 2 steps; here asd at 1 step, whose stage II at strength 0.5 would run none)."""
    adapter = adapt(tiny("sd1"))
    rec = bench.bench_one(adapter, methods=["direct", "asd", "fstd"], width=256, height=256, steps=1,
                          repeats=1, warmup=0)
    assert [m["method"] for m in rec["methods"]] == ["direct", "fstd"]
    assert "strength 0.5 of 1 steps runs no step" in rec["skipped"]["asd"]
    table = bench.format_table({"results": [{"architecture": "tiny", **rec}], "config": {
        "reduced": True, "dtype": "float32", "steps": 1, "repeats": 1, "warmup": 0},
        "machine": {"cpu": "x", "torch_threads": 1, "torch": "t", "diffusers": "d"}})
    assert "| tiny | 256x256 | asd | not run¹ |" in table and "¹ asd at 256x256: strength 0.5" in table
    # and generate refuses the same settings before any work (no prompt encoded, no network call)
    calls = adapter.calls
    with pytest.raises(InvalidArgumentError, match="runs no step"):
        anysize.generate(adapter, "a cat", width=256, height=256, steps=1, method="asd", progress=False)
    assert adapter.calls == calls


def test_versus_is_the_ratio_of_two_methods_from_the_same_rounds(capsys, tmp_path):
    out = tmp_path / "v.json"
    rc = cli.main(["bench", "--arch", "toy", "--size", "native", "--steps", "1", "--repeats", "2", "--warmup", "0",
                   "--methods", "direct", "--versus", "fstd:multidiffusion", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    (res,) = json.loads(out.read_text())["results"]
    rows = {m["method"]: m for m in res["methods"]}
    assert sorted(rows) == ["direct", "fstd", "multidiffusion"]  # both sides of the pair were added and timed
    (v,) = res["versus"]
    assert (v["method"], v["baseline"]) == ("fstd", "multidiffusion")
    assert v["ratio"] == pytest.approx(rows["fstd"]["seconds"] / rows["multidiffusion"]["seconds"], rel=0.01)
    assert v["network_calls"] == [rows["fstd"]["network_calls"], rows["multidiffusion"]["network_calls"]]
    assert f"toy 128x128: fstd takes {v['ratio']:.3f}x the time of multidiffusion" in captured.out


def test_no_baseline_times_only_the_methods_asked_and_gives_no_ratios(tiny):
    adapter = adapt(tiny("sd1"))
    rec = bench.bench_one(adapter, methods=["fstd"], width=128, height=128, steps=2, repeats=1, warmup=0,
                          baseline=False)
    (row,) = rec["methods"]
    assert row["method"] == "fstd" and row["ratio_to_direct"] is None and row["network_calls"] > 0
    table = bench.format_table({"results": [{"architecture": "tiny", **rec}], "config": {
        "reduced": True, "dtype": "float32", "steps": 2, "repeats": 1, "warmup": 0},
        "machine": {"cpu": "x", "torch_threads": 1, "torch": "t", "diffusers": "d"}})
    assert "| tiny | 128x128 | fstd |" in table and "| – |" in table and "--no-baseline" in table
    # direct named explicitly still gives the ratios, from the same rounds
    rec = bench.bench_one(adapter, methods=["fstd", "direct"], width=128, height=128, steps=2, repeats=1, warmup=0,
                          baseline=False)
    assert [m["method"] for m in rec["methods"]] == ["fstd", "direct"]
    assert all(m["ratio_to_direct"] is not None for m in rec["methods"])


def test_no_baseline_refuses_nothing_to_time(tiny):
    adapter = adapt(tiny("sd1"))
    with pytest.raises(InvalidArgumentError, match="none of the methods can run"):
        bench.bench_one(adapter, methods=["asd"], width=256, height=256, steps=1, repeats=1, warmup=0, baseline=False)
    with pytest.raises(InvalidArgumentError, match="name the methods"):
        bench.bench(["toy"], baseline=False)


def test_warmup_steps_run_the_warmup_with_their_own_steps(tiny, monkeypatch):
    import anysize.api

    adapter = adapt(tiny("sd1"))
    seen = []
    real = anysize.api.generate
    monkeypatch.setattr(anysize.api, "generate", lambda *a, **k: seen.append(k["steps"]) or real(*a, **k))
    rec = bench.bench_one(adapter, methods=["fstd"], width=128, height=128, steps=3, repeats=2, warmup=1,
                          baseline=False, warmup_steps=1)
    assert seen == [1, 3, 3]
    # the warm-up's network calls are not the timed runs' (recording them would fail the determinism check)
    assert rec["methods"][0]["network_calls"] == (3 + 1) * 2  # PNDM: steps + 1 evaluations, CFG
    # a method that cannot run the shorter warm-up is refused before anything is timed
    seen.clear()
    with pytest.raises(InvalidArgumentError, match="warm-up of 1 steps: asd"):
        bench.bench_one(adapter, methods=["asd"], width=256, height=256, steps=4, repeats=1, warmup=1,
                        baseline=False, warmup_steps=1)
    assert seen == []


def test_alternate_warmups_replace_the_candidates_in_the_warmup_only():
    order = []
    t = timing.alternate({"a": lambda: order.append("a") or "A"}, repeats=2, warmup=1,
                         warmups={"a": lambda: order.append("a-warm")})
    assert order == ["a-warm", "a", "a"] and t.results["a"] == "A"


def test_bench_cli_no_baseline(capsys, tmp_path):
    out = tmp_path / "n.json"
    rc = cli.main(["bench", "--arch", "toy", "--size", "native", "--steps", "2", "--repeats", "1", "--warmup", "1",
                   "--warmup-steps", "1", "--methods", "fstd", "--no-baseline", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    report = json.loads(out.read_text())
    assert report["config"]["baseline"] is None and report["config"]["warmup_steps"] == 1
    (res,) = report["results"]
    assert [m["method"] for m in res["methods"]] == ["fstd"] and res["methods"][0]["ratio_to_direct"] is None
    assert "| toy | 128x128 | fstd |" in captured.out and "after 1 warm-up of 1 steps" in captured.out
    rc = cli.main(["bench", "--no-baseline", "--out", str(tmp_path / "m.json")])
    assert rc == 2 and "--no-baseline needs --methods" in capsys.readouterr().err
    rc = cli.main(["bench", "--warmup-steps", "0", "--out", str(tmp_path / "m.json")])
    assert rc == 2 and "--warmup-steps must be a positive integer" in capsys.readouterr().err


def test_the_released_vae_replaces_the_stand_in_with_the_real_layout(tiny, monkeypatch):
    pipe = tiny("sdxl")
    stand_in = pipe.vae
    monkeypatch.setattr(bench, "build_architecture", lambda *a, **k: pipe)
    adapter = bench.build_adapter("sdxl", reduced=True, vae="released")
    vae = adapter.vae
    assert vae is not stand_in and adapter.pipe.vae is vae
    assert tuple(vae.config.block_out_channels) == (128, 256, 512, 512) and vae.config.layers_per_block == 2
    assert round(sum(p.numel() for p in vae.parameters()) / 1e5) == 837  # the released SDXL VAE: 83.65M
    for key in ("latent_channels", "scaling_factor", "force_upcast", "use_quant_conv"):
        assert vae.config[key] == stand_in.config[key]
    assert adapter.vae_factor == 8 and sum(p.numel() for p in stand_in.parameters()) < 1e6
    with pytest.raises(InvalidArgumentError, match="own trained VAE"):
        bench.build_adapter("toy", reduced=True, vae="released")
    with pytest.raises(UnknownChoiceError, match="stand-in"):
        bench.build_adapter("sdxl", reduced=True, vae="real")
def test_bench_sets_and_records_the_runtime_settings(tiny, monkeypatch, capsys, tmp_path):
    built = []

    def build_adapter(name, **kw):
        built.append(adapt(tiny("sd1"), native_size=16))
        return built[-1]

    monkeypatch.setattr(bench, "build_adapter", build_adapter)
    report = bench.bench(["sd1.5"], sizes=["native"], methods=["direct"], steps=1, repeats=1, warmup=0, sdpa="math")
    assert built[0].runtime.sdpa == "math" and not built[0].runtime.compile
    assert (report["config"]["compile"], report["config"]["sdpa"]) == (False, "math")
    assert "float32, SDPA math, 1 steps" in bench.format_table(report)
    with pytest.raises(InvalidArgumentError, match="valid choices: auto, flash, efficient, cudnn, math"):
        bench.bench(["sd1.5"], sdpa="fastest")
    assert len(built) == 1  # refused before any architecture is built
    assert cli.main(["bench", "--compile", "--warmup", "0", "--out", str(tmp_path / "b.json")]) != 0
    assert "--compile needs --warmup 1 or more" in capsys.readouterr().err
