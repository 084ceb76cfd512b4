"""The composition benchmark: generate n toy-world prompts with a method at a size, analyse each image.

Prompt i is the caption of toy dataset item i (seed ``prompt_seed``), generated with seed ``seed + i``,
so any single image can be regenerated alone. Images are generated in batches; the metrics come from
:func:`anysize.toy.composition.analyse` and :func:`~anysize.toy.composition.summarise`.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from ..errors import InvalidArgumentError
from .composition import ImageAnalysis, analyse, summarise


def toy_prompts(n: int, prompt_seed: int = 0) -> list[str]:
    from .data import make_sample

    return [make_sample(prompt_seed, i, size=8)[1].caption for i in range(n)]


def cell_config(adapter, *, method: str, width: int | None, height: int | None, n: int, seed: int = 0,
                prompt_seed: int = 0, steps: int | None = None, guidance: float | None = None,
                method_options: dict[str, Any] | None = None) -> dict[str, Any]:
    """What identifies one cell of the benchmark (a method at a size with these settings): the
    ``config`` of its result, and what ``eval composition --resume`` matches a saved cell on."""
    nh, nw = adapter.native_size
    return {
        "method": method, "method_options": dict(method_options or {}), "width": width or nw, "height": height or nh,
        "n": n, "seed": seed, "prompt_seed": prompt_seed, "steps": steps or adapter.default_steps,
        "guidance": adapter.default_guidance if guidance is None else guidance,
        "model": getattr(adapter, "source", ""), "native_size": [nw, nh],
    }


def composition_benchmark(
    adapter,
    *,
    method: str = "direct",
    width: int | None = None,
    height: int | None = None,
    n: int = 64,
    seed: int = 0,
    prompt_seed: int = 0,
    steps: int | None = None,
    guidance: float | None = None,
    batch: int = 8,
    method_options: dict[str, Any] | None = None,
    progress: bool = True,
    resume_from: dict[str, Any] | None = None,
    on_batch: Callable[[dict[str, Any]], None] | None = None,
) -> dict:
    """Run the benchmark; returns a JSON-ready dict: config, summary and per-image analyses.

    ``on_batch(partial)`` gets, after every batch but the last, the cell so far: ``{"config",
    "partial": {"images", "network_calls", "seconds"}}``; given back as ``resume_from``, the run goes
    on from the next image (image i is prompt i with seed + i whatever the batching, so the images
    are the ones a whole run makes), and the summary's time covers the batches of both runs.
    """
    from .. import api
    from ..progress import run_progress

    if n < 1 or batch < 1:
        raise InvalidArgumentError(f"n and batch must be positive, got n={n}, batch={batch}")
    config = cell_config(adapter, method=method, width=width, height=height, n=n, seed=seed, prompt_seed=prompt_seed,
                         steps=steps, guidance=guidance, method_options=method_options)
    width, height, nh = config["width"], config["height"], config["native_size"][1]
    prompts = toy_prompts(n, prompt_seed)
    done = (resume_from or {}).get("partial") or {"images": [], "network_calls": 0, "seconds": 0.0}
    if len(done["images"]) >= n or [i.get("seed") for i in done["images"]] != [seed + i for i in range(len(done["images"]))]:
        raise InvalidArgumentError(f"the partial cell to resume does not continue images 0.. of {n} with seeds from {seed}")
    records = list(done["images"])
    analyses = [ImageAnalysis.from_dict(r) for r in records]
    calls, seconds = done["network_calls"], done["seconds"]
    # within a job's bar (eval composition's, over all its cells) the cell counts there, else in its own
    with run_progress("", progress, total=n, initial=len(records), unit="img", leave=True) as bar:
        bar.part(n - len(records), f"{method} {width}x{height}")
        for start in range(len(records), n, batch):
            t0 = time.perf_counter()
            chunk = prompts[start:start + batch]
            result = api.generate(
                adapter, chunk, width=width, height=height, method=method, steps=steps, guidance=guidance,
                seed=[seed + start + i for i in range(len(chunk))], progress=False, method_options=method_options,
            )
            calls += result.network_calls
            for i, (image, prompt) in enumerate(zip(result.images, chunk)):
                analyses.append(analyse(image, prompt, native_size=nh))
                records.append(dict(prompt=prompt, seed=seed + start + i, **analyses[-1].to_dict()))
            seconds += time.perf_counter() - t0
            bar.update(len(chunk))
            if on_batch is not None and len(records) < n:
                on_batch({"config": config, "partial": {"images": list(records), "network_calls": calls,
                                                        "seconds": round(seconds, 4)}})
    summary = {**summarise(analyses), "seconds_per_image": round(seconds / n, 3), "network_calls": calls}
    if resume_from is not None:
        summary["resumed_at_image"] = len(done["images"])
    return {"config": config, "summary": summary, "images": records}


SUMMARY_COLUMNS = (
    ("objects", "mean_objects", "{:.2f}"),
    ("one object", "single_object_rate", "{:.0%}"),
    ("duplicated", "duplication_rate", "{:.0%}"),
    ("empty", "empty_rate", "{:.0%}"),
    ("fidelity", "fidelity_rate", "{:.0%}"),
    ("colour ok", "colour_match_rate", "{:.0%}"),
    ("shape ok", "shape_match_rate", "{:.0%}"),
    ("s/img", "seconds_per_image", "{:.2f}"),
)


def format_table(results: list[dict]) -> str:
    """A markdown table, one row per benchmark result."""
    head = ["method", "size", "n"] + [c[0] for c in SUMMARY_COLUMNS]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    notes = []
    for r in results:
        c = r["config"]
        cells = [c["method"], f"{c['width']}x{c['height']}", str(c["n"])]
        if "not_run" in r:  # refused at these settings, or failed during the run: says why below the table
            notes.append(f"{len(notes) + 1}. {c['method']} at {c['width']}x{c['height']}: {r['not_run']}")
            cells += [f"not run ({len(notes)})"] + [""] * (len(SUMMARY_COLUMNS) - 1)
        else:
            s = r["summary"]
            cells += [fmt.format(s[key]) if s.get(key) is not None else "-" for _, key, fmt in SUMMARY_COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + ([""] + notes if notes else []))


def format_method_size_table(results: list[dict]) -> str:
    """A markdown table with a row per method and a column per size: "one object / duplicated" shares
    (the field's comparison table, on the toy world); a cell not asked for is "-", one that did not
    run (refused or failed, see :func:`format_table`) is "not run"."""
    sizes = list(dict.fromkeys(f"{r['config']['width']}x{r['config']['height']}" for r in results))
    rows: dict[str, dict[str, str]] = {}
    for r in results:
        c = r["config"]
        s = r.get("summary")
        rows.setdefault(c["method"], {})[f"{c['width']}x{c['height']}"] = (
            "not run" if "not_run" in r else f"{s['single_object_rate']:.0%} / {s['duplication_rate']:.0%}")
    head = ["method (one object / duplicated)"] + sizes
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method, cells in rows.items():
        lines.append("| " + " | ".join([method] + [cells.get(size, "-") for size in sizes]) + " |")
    return "\n".join(lines)
