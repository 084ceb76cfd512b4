"""``anysize bench``: time every registered method on real architectures, as ratios to ``direct``.

For each architecture (:data:`ARCHITECTURES`: the toy model, or the real SD 1.5 / SD 2.1 / SDXL /
SD3 / FLUX denoisers with random weights, built by :mod:`anysize.builders` at their ``full`` or
``reduced`` profile) and each size, every method that supports the
model generates the same prompt and seed with :func:`anysize.generate`; the methods alternate
(:func:`anysize.eval.timing.alternate`: one untimed warm-up each, device synchronised, order
reversed every other round), so each method's median time divided by ``direct``'s median from the
same rounds is free of slow machine drift. Per method and size the bench records:

* ``seconds``: median wall-clock seconds of one whole-image generation (prompt encoding, the
  denoising loop, VAE decode; see :mod:`anysize.builders` for which parts are real-sized);
* ``ratio_to_direct``: that median over ``direct``'s;
* ``network_calls``: denoiser evaluations per image (``adapter.calls``; a CFG call on [uncond;
  cond] counts 2), e.g. ``steps x 2`` for ``direct`` with classifier-free guidance;
* ``peak_memory_mib``: CUDA allocator peak on a GPU, else the process's peak RSS during the run
  (which includes the weights).

This is a tool: nothing in the library imports it.
"""

from __future__ import annotations

import gc
import re
import time
from typing import Any, Sequence

from .errors import InvalidArgumentError, InvalidSizeError, UnknownChoiceError, check_choice
from .eval.timing import alternate, machine
from .lazy import lazy_module

torch = lazy_module("torch")  # `anysize bench --help` reads ARCHITECTURES without paying for torch

__all__ = ["ARCHITECTURES", "BENCH_PROMPT", "VAES", "bench", "build_adapter", "build_architecture", "describe", "format_table",
           "parse_bench_size"]

BENCH_PROMPT = "a red triangle on a blue background"

#: name -> one-line description (what the bench table says)
ARCHITECTURES: dict[str, str] = {
    "toy": "anysize's embedded toy model (trained SD 1.5-structured U-Net, 128 px native)",
    "sd1.5": "SD 1.5 U-Net (860M params), random weights, 512 px native",
    "sd2.1": "SD 2.1 U-Net (866M params), random weights, v-prediction, 768 px native",
    "sdxl": "SDXL base U-Net (2.57B params), random weights, 1024 px native",
    "sd3": "SD3-medium MMDiT (2.03B params), random weights, 1024 px native",
    "flux": "FLUX.1-dev transformer (11.9B params), random weights, 1024 px native",
}

_SCALE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*x\s*$", re.IGNORECASE)
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


def parse_bench_size(text: str, native: tuple[int, int] | None = None, multiple: int = 1):
    """``"native"``, ``"2x"`` (times the native side, rounded to the model's multiple) or ``"WxH"``.

    Returns (width, height); with ``native`` None only checks the syntax and returns None for the
    relative forms.
    """
    t = text.strip().lower()
    if t == "native":
        return None if native is None else (native[1], native[0])
    m = _SCALE_RE.match(t)
    if m:
        f = float(m.group(1))
        if f <= 0:
            raise InvalidSizeError(f"size {text!r}: the scale must be positive")
        if native is None:
            return None
        h, w = (max(multiple, round(v * f / multiple) * multiple) for v in native)
        return w, h
    m = _SIZE_RE.match(t)
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise InvalidSizeError(
            f"size {text!r} is not 'native', a scale like '2x' (times the native side) or WIDTHxHEIGHT like 512x512"
        )
    return int(m.group(1)), int(m.group(2))


def build_architecture(name: str, *, reduced: bool = False, device: str | torch.device = "cpu",
                       dtype: torch.dtype | None = None, seed: int = 0):
    """The pipeline of architecture ``name`` (see :data:`ARCHITECTURES`), on ``device`` in ``dtype``
    (default float32): :func:`anysize.builders.build_pipeline` at the ``reduced`` or ``full`` profile,
    weights drawn from ``seed``; ``toy`` loads the embedded model instead."""
    dtype = torch.float32 if dtype is None else dtype
    if name not in ARCHITECTURES:
        raise UnknownChoiceError("architecture", name, ARCHITECTURES)
    if name != "toy":
        from .builders import build_pipeline

        return build_pipeline(name, "reduced" if reduced else "full", seed=seed, device=device, dtype=dtype)
    from diffusers import DiffusionPipeline

    from .defaults import default_model_path

    pipe = DiffusionPipeline.from_pretrained(str(default_model_path()), torch_dtype=dtype).to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def describe(name: str, reduced: bool) -> str:
    text = ARCHITECTURES[name]
    return text + (", reduced depth" if reduced and name != "toy" else "")


#: ``build_adapter(vae=...)``: the builders' small stand-in VAE, or one of the released layout
VAES = ("stand-in", "released")


def build_adapter(name: str, *, reduced: bool, device: str | torch.device = "cpu",
                  dtype: torch.dtype | None = None, vae: str = "stand-in"):
    """The model adapter of architecture ``name`` (the toy loads with its folder defaults), in
    ``dtype`` (default float32).

    ``vae="released"`` swaps the builders' small stand-in VAE for one of the released layout with
    random weights (:func:`anysize.builders.parts.released_vae`), for figures where the decode's
    time or memory matters; the toy model has its own trained VAE and takes only the default."""
    from .models import adapt

    dtype = torch.float32 if dtype is None else dtype
    check_choice("vae", vae, VAES)
    if name == "toy":
        if vae != "stand-in":
            raise InvalidArgumentError("the toy model has its own trained VAE; vae='released' is for the real architectures")
        from . import api

        return api.load(None, dtype=dtype, device=str(device))
    pipe = build_architecture(name, reduced=reduced, device=device, dtype=dtype)
    if vae == "released":
        from .builders.parts import released_vae

        pipe.vae = released_vae(pipe.vae, device=device, dtype=dtype)
    return adapt(pipe)


def _methods_for(adapter, methods: Sequence[str] | None, height: int, width: int,
                 steps: int, baseline: bool = True) -> tuple[list[str], dict[str, str]]:
    from . import methods as registry
    from .errors import AnysizeError

    names = list(methods) if methods else registry.names()
    if baseline:
        if "direct" in names:
            names.remove("direct")
        names.insert(0, "direct")  # the baseline of every ratio
    usable, skipped = [], {}
    for n in names:
        try:
            registry.create(n).check(adapter, height, width, steps)
        except AnysizeError as e:
            skipped[n] = str(e)
            continue
        usable.append(n)
    return usable, skipped


def bench_one(adapter, *, methods: Sequence[str] | None, width: int, height: int, steps: int,
              guidance: float | None = None, repeats: int = 3, warmup: int = 1, seed: int = 0,
              prompt: str = BENCH_PROMPT, baseline: bool = True, warmup_steps: int | None = None) -> dict[str, Any]:
    """Time the methods on one adapter at one size; returns a JSON-ready record.

    ``baseline=False`` does not add ``direct``: ``ratio_to_direct`` is then None unless ``direct``
    is among ``methods``. ``warmup_steps`` (default ``steps``): the steps of the untimed warm-up
    runs; a run's first-use costs (kernels, allocator growth) are per tensor shape, which a shorter
    schedule of the same method at the same size meets as well.
    """
    from . import api

    adapter.check_size(height, width)
    names, skipped = _methods_for(adapter, methods, height, width, steps, baseline)
    if baseline and "direct" not in names:  # the baseline itself cannot run: nothing to compare
        raise InvalidArgumentError(f"direct cannot run at {width}x{height}: {skipped['direct']}")
    if not names:
        raise InvalidArgumentError(f"none of the methods can run at {width}x{height}: "
                                   + "; ".join(f"{n}: {why}" for n, why in skipped.items()))
    warm_steps = steps if warmup_steps is None else warmup_steps
    if warmup and warm_steps != steps:
        from . import methods as registry
        from .errors import AnysizeError

        for n in names:  # a method that cannot run the shorter warm-up is refused before any timing
            try:
                registry.create(n).check(adapter, height, width, warm_steps)
            except AnysizeError as e:
                raise InvalidArgumentError(f"warm-up of {warm_steps} steps: {n} cannot run it ({e})") from None
    calls: dict[str, list[int]] = {n: [] for n in names}

    def run(n, k=steps, record=True):
        def go():
            r = api.generate(adapter, prompt, width=width, height=height, method=n, steps=k, guidance=guidance,
                             seed=seed, progress=False, output_type="np")
            if record:
                calls[n].append(r.network_calls)
            return r

        return go

    warmups = None if warm_steps == steps else {n: run(n, warm_steps, record=False) for n in names}
    t = alternate({n: run(n) for n in names}, repeats=repeats, warmup=warmup, device=adapter.device, warmups=warmups,
                  drop_out_of_memory=True)
    for n, why in t.failed.items():  # too big for the device: a 'not run' row, the others timed as usual
        skipped[n] = f"failed during the run: {why}"
    names = [n for n in names if n not in t.failed]
    base = t.median("direct") if "direct" in names else None
    rows = []
    for n in names:
        if len(set(calls[n])) != 1:  # a method must be deterministic in its work
            raise RuntimeError(f"{n} made a different number of network calls per run: {calls[n]}")
        rows.append({
            "method": n,
            "seconds": round(t.median(n), 4),
            "seconds_all": [round(s, 4) for s in t.seconds[n]],
            "ratio_to_direct": None if base is None else round(t.median(n) / base, 3),
            "network_calls": calls[n][0],
            "peak_memory_mib": round(t.peak_mib(n), 1),
        })
    return {"width": width, "height": height, "steps": steps, "memory": t.memory_kind, "methods": rows,
            "skipped": skipped}


def parse_versus(text: str) -> tuple[str, str]:
    """``"A:B"`` (time of method A over method B's, from the same rounds) -> (A, B)."""
    from . import methods as registry

    a, sep, b = text.partition(":")
    if not sep or not a or not b or a == b:
        raise InvalidArgumentError(f"--versus {text!r} must be two different methods as A:B, e.g. scalediff:demofusion")
    for name in (a, b):
        if name not in registry.METHODS:
            raise UnknownChoiceError("method", name, registry.names())
    return a, b


def versus_rows(record: dict[str, Any], pairs: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
    """For each (A, B) that both ran: A's median seconds over B's (the medians of the same alternating
    rounds, as the ratios to direct), and the network calls of each."""
    by = {m["method"]: m for m in record["methods"]}
    return [{"method": a, "baseline": b, "ratio": round(by[a]["seconds"] / by[b]["seconds"], 3),
             "network_calls": [by[a]["network_calls"], by[b]["network_calls"]]}
            for a, b in pairs if a in by and b in by]


def bench(
    architectures: Sequence[str] = ("toy",),
    *,
    sizes: Sequence[str] = ("native",),
    methods: Sequence[str] | None = None,
    steps: int = 4,
    guidance: float | None = None,
    repeats: int = 3,
    warmup: int = 1,
    reduced: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    seed: int = 0,
    versus: Sequence[tuple[str, str]] = (),
    baseline: bool = True,
    warmup_steps: int | None = None,
    vae: str = "stand-in",
    compile: bool = False,
    sdpa: str = "auto",
    progress=None,
) -> dict[str, Any]:
    """Run the bench; returns ``{"machine", "config", "results": [...]}`` (one result per arch × size).

    ``versus``: pairs (A, B) whose time ratio A / B each result also gives (both are added to
    ``methods`` when that is a list). ``baseline=False``: ``direct`` is not added (see
    :func:`bench_one`, also for ``warmup_steps``). ``vae``: the builders' stand-in VAE or one of the
    released layout (:func:`build_adapter`). ``compile`` / ``sdpa``: every adapter's runtime settings
    (:meth:`~anysize.models.base.ModelAdapter.set_runtime`); with compile the warm-up runs are where
    each shape compiles, so the timed runs are the compiled steady state."""
    from .models.runtime import check_compile, check_sdpa

    dtype = torch.float32 if dtype is None else dtype
    check_choice("vae", vae, VAES)
    check_compile(compile)
    check_sdpa(sdpa)
    for a in architectures:
        if a not in ARCHITECTURES:
            raise UnknownChoiceError("architecture", a, ARCHITECTURES)
    for s in sizes:
        parse_bench_size(s)
    if steps < 1 or repeats < 1 or warmup < 0:
        raise InvalidArgumentError(f"steps and repeats must be positive and warmup >= 0, got {steps}, {repeats}, {warmup}")
    if warmup_steps is not None and warmup_steps < 1:
        raise InvalidArgumentError(f"warmup_steps must be a positive integer, got {warmup_steps}")
    if not baseline and not methods and not versus:
        raise InvalidArgumentError("without the baseline, name the methods to time (methods or versus)")
    if methods is not None or not baseline:
        methods = list(dict.fromkeys([*(methods or ()), *(m for pair in versus for m in pair)]))
    results = []
    for a in architectures:
        t0 = time.perf_counter()
        adapter = build_adapter(a, reduced=reduced, device=device, dtype=dtype, vae=vae)
        build_s = time.perf_counter() - t0
        if compile or sdpa != "auto":
            adapter.set_runtime(compile=compile, sdpa=sdpa)
        params = sum(p.numel() for p in adapter.network.parameters())
        for s in sizes:
            w, h = parse_bench_size(s, adapter.native_size, adapter.size_multiple)
            if progress:
                progress(f"{a} {w}x{h}")
            rec = bench_one(adapter, methods=methods, width=w, height=h, steps=steps, guidance=guidance,
                            repeats=repeats, warmup=warmup, seed=seed, baseline=baseline, warmup_steps=warmup_steps)
            if versus:
                rec["versus"] = versus_rows(rec, versus)
            results.append({"architecture": a, "description": describe(a, reduced), "denoiser_params": params,
                            "native_size": list(adapter.native_size)[::-1], "build_seconds": round(build_s, 1),
                            **rec})
        del adapter
        gc.collect()  # the next architecture's memory figures start from a clean process
    return {
        "machine": machine(device),
        "config": {"architectures": list(architectures), "sizes": list(sizes), "methods": methods or "all registered",
                   "versus": [list(p) for p in versus], "baseline": "direct" if baseline else None, "steps": steps,
                   "guidance": guidance, "repeats": repeats, "warmup": warmup,
                   "warmup_steps": steps if warmup_steps is None else warmup_steps, "reduced": reduced, "vae": vae,
                   "dtype": str(dtype).replace("torch.", ""), "compile": compile, "sdpa": sdpa, "seed": seed, "prompt": BENCH_PROMPT,
                   "timed": "anysize.generate end to end: prompt encoding, denoising loop, VAE decode"},
        "results": results,
    }


def _warmup_steps_note(cfg: dict[str, Any]) -> str:
    k = cfg.get("warmup_steps", cfg["steps"])
    return "" if k == cfg["steps"] or not cfg["warmup"] else f" of {k} steps"


def format_table(report: dict[str, Any]) -> str:
    """A Markdown table: one row per architecture × size × method."""
    head = ["architecture", "size", "method", "s/image", "× direct", "network calls", "peak MiB"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for r in report["results"]:
        for m in r["methods"]:
            lines.append("| " + " | ".join([
                r["architecture"], f"{r['width']}x{r['height']}", m["method"], f"{m['seconds']:.3f}",
                "–" if m["ratio_to_direct"] is None else f"{m['ratio_to_direct']:.2f}", str(m["network_calls"]),
                f"{m['peak_memory_mib']:.0f}",
            ]) + " |")
        for name, why in r.get("skipped", {}).items():  # a method that cannot run at these settings says why
            lines.append(f"| {r['architecture']} | {r['width']}x{r['height']} | {name} | not run¹ | | | |")
            notes.append(f"¹ {name} at {r['width']}x{r['height']}: {why}")
    for r in report["results"]:
        for v in r.get("versus", []):
            a, b = v["network_calls"]
            notes.append(f"{r['architecture']} {r['width']}x{r['height']}: {v['method']} takes {v['ratio']:.3f}x the time "
                         f"of {v['baseline']} ({1 / v['ratio']:.1f}x faster; {a} vs {b} network calls per image)")
    mach = report["machine"]
    where = mach.get("gpu") or f"{mach['cpu']} ({mach['torch_threads']} torch threads)"
    cfg = report["config"]
    if any(m["ratio_to_direct"] is None for r in report["results"] for m in r["methods"]):
        notes.append("× direct: – where direct was not run (--no-baseline without direct in --methods, or direct "
                     "failed during the run)")
    lines.append("")
    lines += notes + ([""] if notes else [])
    real = any(r["architecture"] != "toy" for r in report["results"])
    depth = f"{'reduced-depth' if cfg['reduced'] else 'full-depth'} random-weight denoisers; " if real else ""
    if real and cfg.get("vae") == "released":
        depth += "random VAE of the released layout; "
    runtime = "".join([", torch.compile" if cfg.get("compile") else "",
                       f", SDPA {cfg['sdpa']}" if cfg.get("sdpa", "auto") != "auto" else ""])
    lines.append(f"Machine: {where}; torch {mach['torch']}, diffusers {mach['diffusers']}; {cfg['dtype']}{runtime}, "
                 f"{cfg['steps']} steps, median of {cfg['repeats']} alternating runs after {cfg['warmup']} warm-up"
                 f"{_warmup_steps_note(cfg)}; "
                 f"{depth}peak memory = {'CUDA allocator' if 'gpu' in mach else 'process RSS'}.")
    return "\n".join(lines)
